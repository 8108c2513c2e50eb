"""Kernel struct layouts the programs need, taken from BTF at load time (this project's CO-RE).

Programs name what they read by dotted BTF paths (the spec's ``Btf`` sources, and a program's own reads such
as ``task_struct.mm.arg_start``); ``KernelLayout.hops`` turns a path into hops, one per pointer
dereference, and the programs load each hop straight from the BTF-typed task pointer
(``bpf_get_current_task_btf``), so the verifier checks every offset against the same BTF.  Nothing here is
an offset: offsets differ on every kernel and architecture (task_struct.real_parent is 1280 on 6.18, 2432 on
Debian's 6.1).

``syscall_args`` are where a syscall's arguments sit in the task's saved user registers (``struct
pt_regs``, reached with ``bpf_task_pt_regs``) when the syscall returns: which register carries which
argument is the architecture's syscall convention (libbpf's bpf_tracing.h encodes the same table as
PT_REGS_PARMn_SYSCALL); the offsets of those registers come from BTF.
"""
from __future__ import annotations

import os

from kestrel_raw.errors import BTFError

Hops = tuple[tuple[int, int], ...]  # ((offset, size), ...): read `size` bytes at base + offset, per hop

# struct pt_regs members holding syscall arguments 0..5 at syscall exit, by os.uname().machine.  arm64
# overwrites x0 with the return value; the kernel keeps the first argument in orig_x0 for exactly this
# (syscall restart and tracers).  "regs[n]" is element n of the array member.
SYSCALL_ARG_REGS = {
    "x86_64": ("di", "si", "dx", "r10", "r8", "r9"),
    "aarch64": ("orig_x0", "regs[1]", "regs[2]", "regs[3]", "regs[4]", "regs[5]"),
}


def syscall_arg_offsets(btf, machine: str | None = None) -> tuple[int, ...]:
    """Offsets in struct pt_regs of syscall arguments 0..5 on ``machine`` (default: this one)."""
    machine = machine or os.uname().machine
    regs = SYSCALL_ARG_REGS.get(machine)
    if regs is None:
        raise BTFError(f"no syscall register table for {machine!r} (known: {', '.join(sorted(SYSCALL_ARG_REGS))}); "
                       "add its calling convention to kestrel_raw/programs/layout.py")
    offsets = []
    for reg in regs:
        name, _, index = reg.partition("[")
        m = btf.member("pt_regs", name)
        if index:
            elem = int(index.rstrip("]"))
            if (elem + 1) * 8 > m.size:
                raise BTFError(f"pt_regs.{name} has {m.size} bytes: no element {elem} of 8 bytes")
            offsets.append(m.offset + 8 * elem)
        else:
            if m.size != 8:
                raise BTFError(f"pt_regs.{name} has {m.size} bytes, not the 8 of a register")
            offsets.append(m.offset)
    return tuple(offsets)


class KernelLayout:
    """The running kernel's layouts, from its BTF: ``hops(path)`` for a BTF path (resolved once, kept),
    ``syscall_args`` for the syscall argument registers."""

    def __init__(self, btf, machine: str | None = None) -> None:
        self._btf = btf
        self._hops: dict[str, Hops] = {}
        self.syscall_args: tuple[int, ...] = syscall_arg_offsets(btf, machine)

    @classmethod
    def from_btf(cls, btf, machine: str | None = None) -> "KernelLayout":
        return cls(btf, machine)

    def offset(self, path: str, size: int | None = None) -> int:
        """The byte offset of ``path``, a member reached without dereferencing a pointer
        (``dentry.d_name.len``); ``size``: the member's size must be that (the program reads that many)."""
        hops = self.hops(path)
        if len(hops) != 1:
            raise BTFError(f"{path}: a member of the struct itself was expected, the path goes through "
                           f"{len(hops) - 1} pointer(s)")
        offset, got = hops[0]
        if size is not None and got != size:
            raise BTFError(f"{path} is {got} bytes in this kernel's BTF; the program reads {size}")
        return offset

    def size_of(self, struct_name: str) -> int:
        """sizeof(struct ``struct_name``) in this kernel (an array's element stride)."""
        return self._btf.size_of(self._btf.find(struct_name, "struct"))

    def type_id(self, name: str, kind: str) -> int:
        """The BTF type id of ``name`` (``"btf_trace_sched_process_fork"``, ``"typedef"``): a tp_btf
        program's attach target."""
        return self._btf.find(name, kind).id

    def hops(self, path: str) -> Hops:
        """The loads that read ``path`` (``"task_struct.real_parent.tgid"``); BTFError when this kernel's BTF
        has no such member."""
        hops = self._hops.get(path)
        if hops is None:
            hops = self._hops[path] = tuple(tuple(h) for h in self._btf.path(path))
        return hops
