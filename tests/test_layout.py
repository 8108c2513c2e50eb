"""Where the programs find syscall arguments at syscall exit: the per-architecture register table, with
offsets from BTF (kestrel_raw/programs/layout.py)."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from kestrel_raw.errors import BTFError
from kestrel_raw.programs.layout import (
    CALL_ARG_REGS, SYSCALL_ARG_REGS, KernelLayout, call_arg_offsets, call_ret_offset, syscall_arg_offsets,
)


class _PtRegs:
    """A BTF stand-in that knows one struct pt_regs: member name -> (offset, size)."""

    def __init__(self, members: dict[str, tuple[int, int]]) -> None:
        self.members = members

    def member(self, struct: str, name: str):
        assert struct == "pt_regs"
        if name not in self.members:
            raise BTFError(f"struct pt_regs has no member {name!r}")
        offset, size = self.members[name]
        return SimpleNamespace(offset=offset, size=size)


# arm64's struct pt_regs (arch/arm64/include/asm/ptrace.h): regs[31], sp, pc, pstate, then orig_x0.
ARM64 = _PtRegs({"regs": (0, 31 * 8), "sp": (248, 8), "pc": (256, 8), "pstate": (264, 8), "orig_x0": (272, 8)})
# x86_64's (arch/x86/include/asm/ptrace.h): r15 r14 r13 r12 bp bx r11 r10 r9 r8 ax cx dx si di orig_ax ...
X86_64 = _PtRegs({name: (8 * i, 8) for i, name in enumerate(
    "r15 r14 r13 r12 bp bx r11 r10 r9 r8 ax cx dx si di orig_ax ip cs flags sp ss".split())})


def test_x86_64_arguments_are_di_si_dx_r10_r8_r9():
    assert syscall_arg_offsets(X86_64, "x86_64") == (112, 104, 96, 56, 72, 64)


def test_arm64_first_argument_is_orig_x0_not_x0():
    # x0 holds the return value by the time sys_exit fires.
    assert syscall_arg_offsets(ARM64, "aarch64") == (272, 8, 16, 24, 32, 40)


def test_x86_64_function_arguments_are_di_si_dx_cx_r8_r9_and_ax_returns():
    # The C calling convention: the fourth argument is in rcx (the syscall convention's r10 holds it there).
    assert call_arg_offsets(X86_64, "x86_64") == (112, 104, 96, 88, 72, 64)
    assert call_ret_offset(X86_64, "x86_64") == 80


def test_arm64_function_arguments_are_x0_to_x5_and_x0_returns():
    # At a uprobe x0 still holds the first argument (no syscall has overwritten it); at the return, the result.
    assert call_arg_offsets(ARM64, "aarch64") == (0, 8, 16, 24, 32, 40)
    assert call_ret_offset(ARM64, "aarch64") == 0


def test_unknown_machine_says_what_to_add():
    with pytest.raises(BTFError, match=r"no function call register table for 'riscv64' \(known: aarch64, x86_64\)"):
        call_arg_offsets(X86_64, "riscv64")
    with pytest.raises(BTFError, match=r"no function return register table for 'riscv64' \(known: aarch64, x86_64\)"):
        call_ret_offset(X86_64, "riscv64")
    with pytest.raises(BTFError, match=r"no syscall register table for 'riscv64' \(known: aarch64, x86_64\)"):
        syscall_arg_offsets(X86_64, "riscv64")


def test_register_of_the_wrong_size_is_refused():
    with pytest.raises(BTFError, match="pt_regs.di has 4 bytes, not the 8 of a register"):
        syscall_arg_offsets(_PtRegs({**X86_64.members, "di": (112, 4)}), "x86_64")
    with pytest.raises(BTFError, match="pt_regs.regs has 16 bytes: no element 2 of 8 bytes"):
        syscall_arg_offsets(_PtRegs({**ARM64.members, "regs": (0, 16)}), "aarch64")


@pytest.mark.kernel
def test_this_kernel_has_its_registers_in_btf():
    from kestrel_raw.btf import BTF

    machine = os.uname().machine
    if machine not in SYSCALL_ARG_REGS:
        pytest.fail(f"kestrel-raw has no syscall register table for {machine}")
    btf = BTF.load()
    layout = KernelLayout.from_btf(btf)
    assert len(layout.syscall_args) == 6 and len(set(layout.syscall_args)) == 6
    assert all(off % 8 == 0 and off + 8 <= btf.size_of("pt_regs") for off in layout.syscall_args)
    assert machine in CALL_ARG_REGS and len(set(layout.call_args)) == 6
    assert all(off % 8 == 0 and off + 8 <= btf.size_of("pt_regs") for off in (*layout.call_args, layout.call_ret))
