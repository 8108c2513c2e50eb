"""perf_event_open(2) for tracepoints and for kprobe/uprobe events (the dynamic PMUs), and the perf ioctls
that attach and switch a BPF program."""
from __future__ import annotations

import errno
import os

from kestrel_raw.kernel import syscall
from kestrel_raw.errors import SetupError, bpf_error
from kestrel_raw.kernel.fd import FD
from kestrel_raw.kernel.uapi import (
    PERF_EVENT_IOC_DISABLE, PERF_EVENT_IOC_ENABLE, PERF_EVENT_IOC_SET_BPF, PERF_FLAG_FD_CLOEXEC,
    PERF_TYPE_TRACEPOINT, PMU_DEVICES, PerfEventAttr,
)


def tracepoint_attr(tp_id: int) -> bytearray:
    """The packed ``perf_event_attr`` for a tracepoint event: type, size and the tracepoint id as config.

    No sampling is asked for: a BPF program on a tracepoint event runs from the tracepoint itself, before
    (and regardless of) perf's sampling.  Every flag bit is clear: the event is enabled when it is created.
    """
    return PerfEventAttr.pack(type=PERF_TYPE_TRACEPOINT, size=PerfEventAttr.size, config=tp_id)


def tracepoint_event(tp_id: int, cpu: int = 0) -> FD:
    """Open a perf event on tracepoint ``tp_id`` for every process (pid -1) on ``cpu``.

    With pid -1 the kernel needs one cpu; the event still fires for the tracepoint on every CPU once a BPF
    program is attached to it, because the program hangs off the tracepoint, not off this cpu's event.
    """
    attr = tracepoint_attr(tp_id)
    try:
        fd = syscall.perf_event_open(attr, -1, cpu, -1, PERF_FLAG_FD_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ENOENT or e.errno == errno.EINVAL:
            raise bpf_error("perf_event_open", e.errno,
                            f"the kernel has no tracepoint with id {tp_id} (ids differ between boots: read it "
                            f"from tracefs events/<group>/<name>/id)") from None
        raise
    return FD(fd)


def pmu_type(pmu: str, devices: str = PMU_DEVICES) -> int:
    """The perf type number of a dynamic PMU ("kprobe", "uprobe"), from sysfs; SetupError when the kernel
    has none (for kprobes: a kernel built without CONFIG_KPROBE_EVENTS, as this one may be)."""
    path = os.path.join(devices, pmu, "type")
    try:
        with open(path) as f:
            return int(f.read())
    except FileNotFoundError:
        raise SetupError(f"this kernel has no {pmu} PMU ({path} is absent): {pmu} programs cannot be attached "
                         f"here (the kernel needs CONFIG_{pmu.upper()}_EVENTS)") from None
    except (OSError, ValueError) as e:
        raise SetupError(f"cannot read the {pmu} PMU's type from {path}: {e}") from None


def retprobe_bit(pmu: str, devices: str = PMU_DEVICES) -> int:
    """The config bit that makes a kprobe/uprobe event a return probe: .../format/retprobe says "config:N"."""
    path = os.path.join(devices, pmu, "format", "retprobe")
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError as e:
        raise SetupError(f"cannot read {path}, which says how to ask the {pmu} PMU for a return probe: "
                         f"{e.strerror or e}") from None
    field, _, bit = text.partition(":")
    if field != "config" or not bit.isdigit():
        raise SetupError(f"{path} says {text!r}, not the config:N this reader knows")
    return int(bit)


def probe_event(pmu: str, target: bytes, offset: int, retprobe: bool, pid: int = -1,
                devices: str = PMU_DEVICES) -> FD:
    """A kprobe or uprobe perf event (libbpf's perf_event_open_probe): ``target`` is the kernel function's
    name (kprobe) or the binary's path (uprobe), ``offset`` the offset from the function (kprobe) or in the
    file (uprobe).  With ``pid`` -1 the event is for every process (on cpu 0, which the kernel needs; the
    program runs on every CPU).  The target string is read by the kernel during the call only."""
    ptype = pmu_type(pmu, devices)
    config = 1 << retprobe_bit(pmu, devices) if retprobe else 0
    name = bytearray(target + b"\0")
    with syscall.pinned(name) as name_ptr:
        attr = PerfEventAttr.pack(type=ptype, size=PerfEventAttr.size, config=config, config1=name_ptr,
                                  config2=offset)
        try:
            fd = syscall.perf_event_open(attr, pid, 0 if pid == -1 else -1, -1, PERF_FLAG_FD_CLOEXEC)
        except OSError as e:
            what = "function" if pmu == "kprobe" else "binary"
            hint = (f"the kernel cannot place a {pmu} at {what} {target.decode(errors='replace')!r} + 0x{offset:x}"
                    if e.errno in (errno.ENOENT, errno.EINVAL) else "")
            raise bpf_error(f"perf_event_open ({pmu})", e.errno, hint) from None
    return FD(fd)


def ioc_set_bpf(perf_fd: int, prog_fd: int) -> None:
    """PERF_EVENT_IOC_SET_BPF: attach a program to the event (the pre-5.15 way, with no link)."""
    syscall.ioctl(perf_fd, PERF_EVENT_IOC_SET_BPF, prog_fd, op="PERF_EVENT_IOC_SET_BPF")


def ioc_enable(perf_fd: int) -> None:
    syscall.ioctl(perf_fd, PERF_EVENT_IOC_ENABLE, 0, op="PERF_EVENT_IOC_ENABLE")


def ioc_disable(perf_fd: int) -> None:
    syscall.ioctl(perf_fd, PERF_EVENT_IOC_DISABLE, 0, op="PERF_EVENT_IOC_DISABLE")
