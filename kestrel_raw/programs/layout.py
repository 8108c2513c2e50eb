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

Every offset given out carries where it was read (``kestrel_raw.asm.Sourced``: the BTF member path and the
id of the struct it is in), so that a program's listing can say where each layout constant came from
(``kestrel-raw disasm``).  A ``Sourced`` is the plain int everywhere else: the bytes do not change.
``annotate=False`` gives plain ints (the check that annotations change no byte builds both ways).
``call_args`` and ``call_ret`` are where a *function's* arguments and return value sit in ``struct pt_regs``
at a uprobe or kprobe (the program's ctx): the architecture's C calling convention, which differs from its
syscall convention (x86_64 passes the fourth argument in rcx, not r10; libbpf's PT_REGS_PARMn / PT_REGS_RC).
Valid at the function's first instruction (a uprobe or kprobe on the symbol) for the arguments, and at its
return (a uretprobe or kretprobe) for the return value only: by then the argument registers hold whatever
the function left in them.
"""
from __future__ import annotations

import os

from kestrel_raw.asm.annotate import Sourced, btf_member
from kestrel_raw.errors import BTFError

Hops = tuple[tuple[int, int], ...]  # ((offset, size), ...): read `size` bytes at base + offset, per hop

# struct pt_regs members holding syscall arguments 0..5 at syscall exit, by os.uname().machine.  arm64
# overwrites x0 with the return value; the kernel keeps the first argument in orig_x0 for exactly this
# (syscall restart and tracers).  "regs[n]" is element n of the array member.
SYSCALL_ARG_REGS = {
    "x86_64": ("di", "si", "dx", "r10", "r8", "r9"),
    "aarch64": ("orig_x0", "regs[1]", "regs[2]", "regs[3]", "regs[4]", "regs[5]"),
}


# struct pt_regs members holding a C function's integer/pointer arguments 0..5 (x86_64: the System V ABI's
# rdi rsi rdx rcx r8 r9; arm64: AAPCS64's x0..x7, of which the first 6 are kept here) and its return value.
CALL_ARG_REGS = {
    "x86_64": ("di", "si", "dx", "cx", "r8", "r9"),
    "aarch64": ("regs[0]", "regs[1]", "regs[2]", "regs[3]", "regs[4]", "regs[5]"),
}
CALL_RET_REG = {"x86_64": "ax", "aarch64": "regs[0]"}


def syscall_arg_offsets(btf, machine: str | None = None) -> tuple[int, ...]:
    """Offsets in struct pt_regs of syscall arguments 0..5 on ``machine`` (default: this one)."""
    return _reg_offsets(btf, SYSCALL_ARG_REGS, "syscall", machine)


def call_arg_offsets(btf, machine: str | None = None) -> tuple[int, ...]:
    """Offsets in struct pt_regs of a function call's arguments 0..5 on ``machine`` (default: this one)."""
    return _reg_offsets(btf, CALL_ARG_REGS, "function call", machine)


def call_ret_offset(btf, machine: str | None = None) -> int:
    """Offset in struct pt_regs of a function's return value on ``machine`` (default: this one)."""
    return _reg_offsets(btf, {m: (reg,) for m, reg in CALL_RET_REG.items()}, "function return", machine)[0]


def _reg_offsets(btf, table: dict[str, tuple[str, ...]], what: str, machine: str | None) -> tuple[int, ...]:
    machine = machine or os.uname().machine
    regs = table.get(machine)
    if regs is None:
        raise BTFError(f"no {what} register table for {machine!r} (known: {', '.join(sorted(table))}); "
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
    ``syscall_args`` for the syscall argument registers, ``call_args``/``call_ret`` for a function's at a
    uprobe or kprobe.  With ``annotate`` (the default) each offset is a ``Sourced`` int naming the BTF member
    it was read from."""

    def __init__(self, btf, machine: str | None = None, annotate: bool = True) -> None:
        self._btf = btf
        self._hops: dict[str, Hops] = {}
        self.annotate = annotate
        args = syscall_arg_offsets(btf, machine)
        if annotate:
            regs = SYSCALL_ARG_REGS[machine or os.uname().machine]
            pt_regs = btf.find("pt_regs").id
            args = tuple(Sourced(off, btf_member(f"pt_regs.{reg}", pt_regs)) for off, reg in zip(args, regs))
        self.syscall_args: tuple[int, ...] = args
        self.call_args: tuple[int, ...] = call_arg_offsets(btf, machine)
        self.call_ret: int = call_ret_offset(btf, machine)

    @classmethod
    def from_btf(cls, btf, machine: str | None = None, annotate: bool = True) -> "KernelLayout":
        return cls(btf, machine, annotate)

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
            if self.annotate:
                hops = tuple((Sourced(h.offset, btf_member(h.dotted, h.type_id)), h.size)
                             for h in self._btf.path_hops(path))
            else:
                hops = tuple(tuple(h) for h in self._btf.path(path))
            self._hops[path] = hops
        return hops
