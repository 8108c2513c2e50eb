"""Builders named and ordered as the macros of include/linux/filter.h (``BPF_MOV64_IMM`` -> ``mov64_imm``).

Where the kernel takes a jump offset, these take a *target*: a label name (``str``, resolved by
``assemble``) or an int offset in slots.  Each builder checks that its arguments fit the operation it
names (an ALU builder refuses a jump op, a size must be BPF_B/H/W/DW...), so a wrong constant cannot
silently turn into another opcode.

Immediates: 64-bit operations sign-extend their 32-bit imm, so ``mov64_imm`` and ``jmp_imm`` accept only
-2**31..2**31-1 (``mov64_imm(r, 0xffffffff)`` would load -1; use ``ld_imm64``).  32-bit operations and
sub-word stores accept 0..2**32-1 as well, and store it as the same bits.
"""
from __future__ import annotations

import dataclasses
import enum

from kestrel_raw.asm import opcode as op
from kestrel_raw.asm.annotate import Sourced, note_of
from kestrel_raw.asm.errors import InvalidInstructionError, UnknownHelperError
from kestrel_raw.asm.helpers import HELPER_NAMES, HELPERS
from kestrel_raw.asm.instruction import S32, U32_MASK, Instruction, to_signed


class Reg(enum.IntEnum):
    """BPF_REG_0..BPF_REG_10.  r0 return value, r1-r5 arguments (r1 = ctx on entry), r6-r9 callee-saved,
    r10 read-only frame pointer."""

    R0 = 0
    R1 = 1
    R2 = 2
    R3 = 3
    R4 = 4
    R5 = 5
    R6 = 6
    R7 = 7
    R8 = 8
    R9 = 9
    R10 = 10


R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = Reg


@dataclasses.dataclass(frozen=True)
class Label:
    """A marker in an instruction list: names the instruction that follows it."""

    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidInstructionError(f"a label name must be a non-empty str, not {self.name!r}")

    def __str__(self) -> str:
        return f"{self.name}:"


def label(name: str) -> Label:
    """A marker that names the NEXT instruction in the list; several labels may name the same one."""
    return Label(name)


# --- argument checks ----------------------------------------------------------------------------------


def _int(value, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInstructionError(f"{what} must be an int, not {value!r}")
    # A Sourced constant goes on as it is, so that the instruction notes where it came from.
    return value if isinstance(value, Sourced) else int(value)


def _imm(value, what: str, *, unsigned_ok: bool) -> int:
    """A 32-bit immediate; with ``unsigned_ok`` a u32 is taken as the same bits."""
    value = _int(value, what)
    if S32[0] <= value <= S32[1]:
        return value
    if unsigned_ok and 0 <= value <= U32_MASK:
        bits = to_signed(value, 32)  # the same 32 bits, so the same constant and the same provenance
        return Sourced(bits, value.provenance) if isinstance(value, Sourced) else bits
    accepted = "-2**31..2**32-1" if unsigned_ok else "-2**31..2**31-1 (it is sign-extended to 64 bits; use ld_imm64)"
    raise InvalidInstructionError(f"{what} {value} is out of range; accepted: {accepted}")


def _one_of(value, table: dict | frozenset, what: str, names: dict) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value not in table:
        choices = ", ".join(names[k] for k in sorted(table))
        raise InvalidInstructionError(f"{what} {value!r} is not one of {choices}")
    return int(value)


def _size(size) -> int:
    return _one_of(size, op.SIZE_NAMES, "size", op.SIZE_NAMES)


def _alu_op(alu_op) -> int:
    return _one_of(alu_op, op.BINARY_ALU_OPS, "ALU op", op.ALU_OP_NAMES)


def _cond_op(jmp_op) -> int:
    return _one_of(jmp_op, op.COND_JMP_OPS, "conditional jump op", op.JMP_OP_NAMES)


def _jump(code: int, dst: int, src: int, imm: int, target: str | int) -> Instruction:
    if isinstance(target, str):
        return Instruction(code, dst, src, 0, imm, target=target)
    return Instruction(code, dst, src, _int(target, "jump offset"), imm)


# --- ALU ----------------------------------------------------------------------------------------------


def alu64_imm(alu_op: int, dst: int, imm: int) -> Instruction:
    """``dst op= imm`` on 64 bits (BPF_ALU64_IMM)."""
    return Instruction(op.BPF_ALU64 | _alu_op(alu_op) | op.BPF_K, dst, 0, 0, _imm(imm, "imm", unsigned_ok=False))


def alu64_reg(alu_op: int, dst: int, src: int) -> Instruction:
    """``dst op= src`` on 64 bits (BPF_ALU64_REG)."""
    return Instruction(op.BPF_ALU64 | _alu_op(alu_op) | op.BPF_X, dst, src)


def alu32_imm(alu_op: int, dst: int, imm: int) -> Instruction:
    """``wdst op= imm`` on 32 bits, upper half zeroed (BPF_ALU32_IMM)."""
    return Instruction(op.BPF_ALU | _alu_op(alu_op) | op.BPF_K, dst, 0, 0, _imm(imm, "imm", unsigned_ok=True))


def alu32_reg(alu_op: int, dst: int, src: int) -> Instruction:
    """``wdst op= wsrc`` on 32 bits (BPF_ALU32_REG)."""
    return Instruction(op.BPF_ALU | _alu_op(alu_op) | op.BPF_X, dst, src)


def mov64_imm(dst: int, imm: int) -> Instruction:
    """``dst = imm`` sign-extended (BPF_MOV64_IMM)."""
    return alu64_imm(op.BPF_MOV, dst, imm)


def mov64_reg(dst: int, src: int) -> Instruction:
    """``dst = src`` (BPF_MOV64_REG)."""
    return alu64_reg(op.BPF_MOV, dst, src)


def mov32_imm(dst: int, imm: int) -> Instruction:
    """``wdst = imm``, upper half zeroed (BPF_MOV32_IMM)."""
    return alu32_imm(op.BPF_MOV, dst, imm)


def mov32_reg(dst: int, src: int) -> Instruction:
    """``wdst = wsrc``, upper half zeroed (BPF_MOV32_REG)."""
    return alu32_reg(op.BPF_MOV, dst, src)


def neg64(dst: int) -> Instruction:
    """``dst = -dst`` (BPF_ALU64 | BPF_NEG)."""
    return Instruction(op.BPF_ALU64 | op.BPF_NEG | op.BPF_K, dst)


def neg32(dst: int) -> Instruction:
    """``wdst = -wdst`` (BPF_ALU | BPF_NEG)."""
    return Instruction(op.BPF_ALU | op.BPF_NEG | op.BPF_K, dst)


def endian(byte_order: int, dst: int, bits: int) -> Instruction:
    """Convert the low ``bits`` (16, 32, 64) of dst to ``BPF_TO_LE``/``BPF_TO_BE`` and zero-extend
    (BPF_ENDIAN).  On a little-endian host ``BPF_TO_LE`` only truncates."""
    order = _one_of(byte_order, {op.BPF_TO_LE: 0, op.BPF_TO_BE: 0}, "byte order",
                    {op.BPF_TO_LE: "BPF_TO_LE", op.BPF_TO_BE: "BPF_TO_BE"})
    return Instruction(op.BPF_ALU | op.BPF_END | order, dst, 0, 0, _int(bits, "bits"))


def bswap(dst: int, bits: int) -> Instruction:
    """Unconditional byte swap of the low ``bits`` of dst (BPF_ALU64 | BPF_END, cpu v4: Linux 6.6+)."""
    return Instruction(op.BPF_ALU64 | op.BPF_END | op.BPF_K, dst, 0, 0, _int(bits, "bits"))


# --- loads and stores ---------------------------------------------------------------------------------


def ld_imm64(dst: int, imm64: int) -> Instruction:
    """``dst = imm64`` (BPF_LD_IMM64): two slots.  Accepts -2**63..2**64-1; stored signed."""
    value = _int(imm64, "imm64")
    if not -(1 << 63) <= value < (1 << 64):
        raise InvalidInstructionError(f"imm64 {value} does not fit in 64 bits")
    return Instruction(op.LD_IMM64, dst, 0, 0, to_signed(value, 64), note=note_of(value))


def _map_ref(map_ref: str | int) -> tuple[str | None, int]:
    if isinstance(map_ref, str):
        return map_ref, 0
    fd = _int(map_ref, "map (a name or an fd)")
    if not 0 <= fd <= S32[1]:
        raise InvalidInstructionError(f"map fd {fd} is not a file descriptor")
    return None, fd


def ld_map_fd(dst: int, map_name: str | int) -> Instruction:
    """``dst = &map`` (BPF_LD_MAP_FD).  A name is resolved by ``assemble(maps=...)``; an int is an fd."""
    name, fd = _map_ref(map_name)
    return Instruction(op.LD_IMM64, dst, op.BPF_PSEUDO_MAP_FD, 0, fd, map_name=name)


def ld_map_value(dst: int, map_name: str | int, offset: int = 0) -> Instruction:
    """``dst = &map_value[0] + offset`` of an array map with one element (BPF_LD_MAP_VALUE)."""
    name, fd = _map_ref(map_name)
    offset = _int(offset, "offset")
    if not 0 <= offset <= U32_MASK:
        raise InvalidInstructionError(f"map value offset {offset} must be 0..2**32-1")
    return Instruction(op.LD_IMM64, dst, op.BPF_PSEUDO_MAP_VALUE, 0, to_signed(offset << 32 | fd, 64),
                       map_name=name, note=note_of(offset))


def ldx_mem(size: int, dst: int, src: int, off: int) -> Instruction:
    """``dst = *(size *)(src + off)`` (BPF_LDX_MEM)."""
    return Instruction(op.BPF_LDX | _size(size) | op.BPF_MEM, dst, src, _int(off, "off"))


def stx_mem(size: int, dst: int, src: int, off: int) -> Instruction:
    """``*(size *)(dst + off) = src`` (BPF_STX_MEM)."""
    return Instruction(op.BPF_STX | _size(size) | op.BPF_MEM, dst, src, _int(off, "off"))


def st_mem(size: int, dst: int, off: int, imm: int) -> Instruction:
    """``*(size *)(dst + off) = imm`` (BPF_ST_MEM).  For BPF_DW the imm is sign-extended."""
    size = _size(size)
    value = _imm(imm, "imm", unsigned_ok=size != op.BPF_DW)
    return Instruction(op.BPF_ST | size | op.BPF_MEM, dst, 0, _int(off, "off"), value)


def atomic_op(size: int, atomic: int, dst: int, src: int, off: int) -> Instruction:
    """Atomic ``*(size *)(dst + off) op= src`` (BPF_ATOMIC_OP).  ``atomic`` is BPF_ADD/AND/OR/XOR, each
    optionally ``| BPF_FETCH`` (the old value goes to src), BPF_XCHG, or BPF_CMPXCHG (compares with r0; the
    old value goes to r0).  Size BPF_W or BPF_DW."""
    atomic = _one_of(atomic, op.ATOMIC_OP_NAMES, "atomic op", op.ATOMIC_OP_NAMES)
    return Instruction(op.BPF_STX | _size(size) | op.BPF_ATOMIC, dst, src, _int(off, "off"), atomic)


# --- jumps --------------------------------------------------------------------------------------------


def jmp_imm(jmp_op: int, dst: int, imm: int, target: str | int) -> Instruction:
    """``if dst op imm goto target``, 64-bit compare with imm sign-extended (BPF_JMP_IMM)."""
    return _jump(op.BPF_JMP | _cond_op(jmp_op) | op.BPF_K, dst, 0, _imm(imm, "imm", unsigned_ok=False), target)


def jmp_reg(jmp_op: int, dst: int, src: int, target: str | int) -> Instruction:
    """``if dst op src goto target`` (BPF_JMP_REG)."""
    return _jump(op.BPF_JMP | _cond_op(jmp_op) | op.BPF_X, dst, src, 0, target)


def jmp32_imm(jmp_op: int, dst: int, imm: int, target: str | int) -> Instruction:
    """``if wdst op imm goto target``, 32-bit compare (BPF_JMP32_IMM)."""
    return _jump(op.BPF_JMP32 | _cond_op(jmp_op) | op.BPF_K, dst, 0, _imm(imm, "imm", unsigned_ok=True), target)


def jmp32_reg(jmp_op: int, dst: int, src: int, target: str | int) -> Instruction:
    """``if wdst op wsrc goto target`` (BPF_JMP32_REG)."""
    return _jump(op.BPF_JMP32 | _cond_op(jmp_op) | op.BPF_X, dst, src, 0, target)


def ja(target: str | int) -> Instruction:
    """``goto target`` (BPF_JMP_A)."""
    return _jump(op.BPF_JMP | op.BPF_JA | op.BPF_K, 0, 0, 0, target)


def helper_id(helper: str | int) -> int:
    """The id of a helper named with or without ``bpf_`` (``"ringbuf_reserve"``, ``"bpf_ringbuf_reserve"``),
    or given by id; ``UnknownHelperError`` when the kernel's ``enum bpf_func_id`` has no such helper."""
    if isinstance(helper, str):
        name = helper[4:] if helper.startswith("bpf_") and helper[4:] in HELPERS else helper
        if name not in HELPERS:
            raise UnknownHelperError(
                f"unknown helper {helper!r}: not in enum bpf_func_id (names as in the kernel, with or "
                f"without the bpf_ prefix, e.g. 'ringbuf_reserve'; see kestrel_raw.asm.HELPERS)"
            )
        return HELPERS[name]
    if isinstance(helper, int) and not isinstance(helper, bool) and helper in HELPER_NAMES:
        return int(helper)
    raise UnknownHelperError(
        f"unknown helper {helper!r}: ids of enum bpf_func_id are 1..{max(HELPER_NAMES)}"
    )


def call(helper: str | int) -> Instruction:
    """Call a helper by name or id (BPF_EMIT_CALL).  Arguments in r1-r5, result in r0; r1-r5 are clobbered."""
    return Instruction(op.BPF_JMP | op.BPF_CALL | op.BPF_K, 0, 0, 0, helper_id(helper))


def exit_insn() -> Instruction:
    """Return r0 (BPF_EXIT_INSN)."""
    return Instruction(op.BPF_JMP | op.BPF_EXIT | op.BPF_K)
