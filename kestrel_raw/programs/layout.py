"""Kernel struct layouts the programs need, taken from BTF at load time (this project's CO-RE).

Each entry is a dotted BTF path; ``BTF.path`` turns it into hops, one per pointer dereference, and the
programs read each hop with ``bpf_probe_read_kernel``.  Nothing here is an offset: offsets differ on every
kernel and architecture (task_struct.real_parent is 1280 on 6.18, 2432 on Debian's 6.1).
"""
from __future__ import annotations

from dataclasses import dataclass

Hops = tuple[tuple[int, int], ...]  # ((offset, size), ...): read `size` bytes at base + offset, per hop

# The paths, named for what the programs read through them.
PATHS = {
    "ppid": "task_struct.real_parent.tgid",
    "start_time": "task_struct.group_leader.start_time",
    "arg_start": "task_struct.mm.arg_start",
    "arg_end": "task_struct.mm.arg_end",
    "exit_code": "task_struct.exit_code",
    "signal_live": "task_struct.signal.live.counter",
}


@dataclass(frozen=True)
class KernelLayout:
    ppid: Hops
    start_time: Hops
    arg_start: Hops
    arg_end: Hops
    exit_code: Hops
    signal_live: Hops

    @classmethod
    def from_btf(cls, btf) -> "KernelLayout":
        return cls(**{name: tuple(tuple(h) for h in btf.path(path)) for name, path in PATHS.items()})
