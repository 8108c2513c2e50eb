"""Attaching programs: classic tracepoints, kprobes and uprobes through perf_event_open, raw tracepoints and
BTF-typed programs (tp_btf, fentry, fexit) through bpf(2)."""
from __future__ import annotations

import errno
import os

from kestrel_raw.kernel import bpf, perf
from kestrel_raw.errors import BPFError
from kestrel_raw.kernel.fd import FD
from kestrel_raw.kernel.tracefs import tracepoint_id
from kestrel_raw.kernel.uapi import BPF_PERF_EVENT

# LINK_CREATE on a perf event exists since 5.15; older kernels (or a kernel that refuses it for this
# program type) answer with one of these, and the ioctls do the same job without a link fd.
ENOTSUPP = 524  # kernel-internal errno (include/linux/errno.h) that bpf(2) can return; Python has no name for it
_LINK_CREATE_REFUSED = (errno.EINVAL, ENOTSUPP, errno.EOPNOTSUPP, errno.ENOSYS)


class Link:
    """An attachment.  Owns the fds that keep it alive (the bpf link and/or the perf event); closing them
    detaches the program.  ``kind`` says how it was made: ``"perf_link"``, ``"perf_ioctl"``, ``"raw_tp"``."""

    def __init__(self, kind: str, link_fd: FD | None = None, perf_fd: FD | None = None, target: str = "") -> None:
        self.kind = kind
        self.target = target
        self._link = link_fd
        self._perf = perf_fd

    @property
    def fd(self) -> int:
        """The bpf link fd, or the perf event fd when attached through the ioctls (-1 once closed)."""
        holder = self._link if self._link is not None else self._perf
        return holder.fd if holder is not None else -1

    @property
    def perf_fd(self) -> int:
        return self._perf.fd if self._perf is not None else -1

    @property
    def closed(self) -> bool:
        return all(h is None or h.closed for h in (self._link, self._perf))

    def fileno(self) -> int:
        if self.fd < 0:
            raise ValueError("I/O on a closed link")
        return self.fd

    def info(self) -> bpf.LinkInfo | None:
        """The kernel's link info (id, type, prog_id); None for an ioctl attachment, which has no link."""
        return bpf.link_info(self._link.fileno()) if self._link is not None else None

    def close(self) -> None:
        # The link first: it holds the program on the event; then the event itself.
        for holder in (self._link, self._perf):
            if holder is not None:
                holder.close()

    def __enter__(self) -> "Link":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Link({self.kind}, {self.target!r}, fd={self.fd})"


def attach_tracepoint(program, group: str, name: str, tracefs: str | None = None, cpu: int = 0,
                      force_ioctl: bool = False) -> Link:
    """Attach ``program`` (BPF_PROG_TYPE_TRACEPOINT) to tracepoint ``group:name``.

    The tracepoint id comes from tracefs (``tracefs`` is its mount point; by default it is found, and
    mounted when absent).  Opens a perf event on the tracepoint, then links the program to it with BPF_LINK_CREATE; a kernel that
    refuses the link (before 5.15) gets PERF_EVENT_IOC_SET_BPF instead.  Either way the event is enabled and
    the returned ``Link`` owns both fds.  ``force_ioctl`` skips the link (as on a pre-5.15 kernel).
    """
    tp_id = tracepoint_id(group, name, tracefs=tracefs)
    event = perf.tracepoint_event(tp_id, cpu=cpu)
    return _attach_perf(program, event, f"{group}:{name}", force_ioctl)


def _attach_perf(program, event: FD, target: str, force_ioctl: bool = False) -> Link:
    """Link ``program`` to an open perf event (BPF_LINK_CREATE, else the ioctls), enabling it; the Link owns
    the event.  ``force_ioctl`` skips the link (as on a pre-5.15 kernel)."""
    try:
        try:
            if force_ioctl:
                raise BPFError("BPF_LINK_CREATE", errno.EINVAL, "not tried: force_ioctl")
            link = bpf.link_create(program.fileno(), event.fileno(), BPF_PERF_EVENT)
        except BPFError as e:
            if e.errno not in _LINK_CREATE_REFUSED:
                raise
            perf.ioc_set_bpf(event.fileno(), program.fileno())
            perf.ioc_enable(event.fileno())
            return Link("perf_ioctl", perf_fd=event, target=target)
        try:
            perf.ioc_enable(event.fileno())
        except BaseException:
            link.close()
            raise
        return Link("perf_link", link_fd=link, perf_fd=event, target=target)
    except BaseException:
        event.close()
        raise


def attach_uprobe(program, binary: str, offset: int, retprobe: bool = False, pid: int = -1) -> Link:
    """Attach ``program`` (BPF_PROG_TYPE_KPROBE) at file offset ``offset`` of ``binary`` (an executable or
    shared library; kestrel_raw.elf's ``symbol_file_offset`` gives a function's), for every process (pid
    -1) or one; ``retprobe`` at the function's return instead."""
    event = perf.probe_event("uprobe", os.fsencode(binary), offset, retprobe, pid)
    kind = "uretprobe" if retprobe else "uprobe"
    return _attach_perf(program, event, f"{kind}:{binary}+0x{offset:x}")


def attach_kprobe(program, function: str, offset: int = 0, retprobe: bool = False) -> Link:
    """Attach ``program`` (BPF_PROG_TYPE_KPROBE) to kernel function ``function`` (+ ``offset``), or to its
    return.  SetupError on a kernel without kprobes (no kprobe PMU)."""
    event = perf.probe_event("kprobe", function.encode(), offset, retprobe)
    kind = "kretprobe" if retprobe else "kprobe"
    return _attach_perf(program, event, f"{kind}:{function}" + (f"+0x{offset:x}" if offset else ""))


def attach_btf_program(program, target: str = "") -> Link:
    """Attach a BTF-typed program (tp_btf, fentry, fexit: BPF_PROG_TYPE_TRACING, loaded with the target's
    attach_btf_id) where it was loaded for: BPF_RAW_TRACEPOINT_OPEN with no name."""
    return Link("tracing", link_fd=bpf.raw_tracepoint_open(None, program.fileno()), target=target)


def attach_raw_tracepoint(program, name: str) -> Link:
    """Attach ``program`` (BPF_PROG_TYPE_RAW_TRACEPOINT) to raw tracepoint ``name`` (``sys_enter``...)."""
    return Link("raw_tp", link_fd=bpf.raw_tracepoint_open(name, program.fileno()), target=name)


def attach_tp_btf(program, target: str = "") -> Link:
    """Attach ``program`` (BPF_PROG_TYPE_TRACING, expected_attach_type BPF_TRACE_RAW_TP) to the raw
    tracepoint its load named through BTF (attach_btf_id); ``target`` only names it in the Link."""
    return Link("tp_btf", link_fd=bpf.raw_tracepoint_open(None, program.fileno()), target=target)
