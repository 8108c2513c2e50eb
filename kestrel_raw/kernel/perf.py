"""perf_event_open(2) for tracepoints, and the perf ioctls that attach and switch a BPF program."""
from __future__ import annotations

import errno

from kestrel_raw.kernel import syscall
from kestrel_raw.errors import bpf_error
from kestrel_raw.kernel.fd import FD
from kestrel_raw.kernel.uapi import (
    PERF_EVENT_IOC_DISABLE, PERF_EVENT_IOC_ENABLE, PERF_EVENT_IOC_SET_BPF, PERF_FLAG_FD_CLOEXEC,
    PERF_TYPE_TRACEPOINT, PerfEventAttr,
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


def ioc_set_bpf(perf_fd: int, prog_fd: int) -> None:
    """PERF_EVENT_IOC_SET_BPF: attach a program to the event (the pre-5.15 way, with no link)."""
    syscall.ioctl(perf_fd, PERF_EVENT_IOC_SET_BPF, prog_fd, op="PERF_EVENT_IOC_SET_BPF")


def ioc_enable(perf_fd: int) -> None:
    syscall.ioctl(perf_fd, PERF_EVENT_IOC_ENABLE, 0, op="PERF_EVENT_IOC_ENABLE")


def ioc_disable(perf_fd: int) -> None:
    syscall.ioctl(perf_fd, PERF_EVENT_IOC_DISABLE, 0, op="PERF_EVENT_IOC_DISABLE")
