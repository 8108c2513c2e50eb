"""Writing a CO-RE result into an instruction, as libbpf's ``bpf_core_patch_insn`` does.

ALU/ALU64 with an immediate: the immediate.  LDX/ST/STX: the offset, and the load or store size when the
field's size changed (only for pointers and unsigned integers, whose zero-extension keeps the value).
ld_imm64: the 64-bit constant.  A poisoned relocation (no target) turns the instruction into a call to the
helper 0xbad2310 ("bad relo"): dead code the verifier drops, or a rejection naming that instruction.
Before writing, the instruction must hold the value the compiler assumed (``validate``), so that a
relocation record and its instruction that disagree are an error, never a silent mispatch.
"""
from __future__ import annotations

import struct

from kestrel_raw.asm import opcode as op
from kestrel_raw.btf.core import CoreResult

INSN = struct.Struct("<BBhi")
# The invalid helper id libbpf writes into a poisoned instruction (0xbad2310, "bad relo").
POISON_HELPER_ID = 195896080
_BYTES_TO_SIZE = {1: op.BPF_B, 2: op.BPF_H, 4: op.BPF_W, 8: op.BPF_DW}
_S16_MAX = (1 << 15) - 1
_U64 = (1 << 64) - 1


class PatchError(Exception):
    """The instruction does not fit the relocation; the message says how (the caller adds the context)."""


def _read(buf: bytearray, slot: int) -> tuple[int, int, int, int, int]:
    code, regs, off, imm = INSN.unpack_from(buf, slot * 8)
    return code, regs & 0x0F, regs >> 4, off, imm


def poison(buf: bytearray, slot: int) -> tuple[str, ...]:
    """Turn the instruction (both halves of an ld_imm64) into the invalid helper call; libbpf's log lines."""
    done = []
    if buf[slot * 8] == op.LD_IMM64:
        # the second half too, or the verifier would complain of "unknown opcode 00" instead
        INSN.pack_into(buf, (slot + 1) * 8, op.BPF_JMP | op.BPF_CALL, 0, 0, POISON_HELPER_ID)
        done.append(f"substituting insn #{slot + 1} w/ invalid insn")
    INSN.pack_into(buf, slot * 8, op.BPF_JMP | op.BPF_CALL, 0, 0, POISON_HELPER_ID)
    done.append(f"substituting insn #{slot} w/ invalid insn")
    return tuple(done)


def patch(buf: bytearray, slot: int, res: CoreResult) -> tuple[str, ...]:
    """Apply ``res`` to the instruction at ``slot`` of ``buf`` in place.  Returns what was done as the lines
    of libbpf's debug log would say it, without their "prog 'p': relo #n: " prefix ("patched insn #10
    (ALU/ALU64) imm 0 -> 44", "substituting insn #95 w/ invalid insn"), so that the two can be compared."""
    if res.poison:
        return poison(buf, slot)
    code, dst, src, off, imm = _read(buf, slot)
    cls = op.BPF_CLASS(code)
    orig, new = res.orig_val, res.new_val
    if cls in (op.BPF_ALU, op.BPF_ALU64):
        if op.BPF_SRC(code) != op.BPF_K:
            raise PatchError(f"ALU instruction with a register operand (code 0x{code:02x}) cannot take a constant")
        if res.validate and imm & 0xFFFFFFFF != orig & 0xFFFFFFFF:
            raise PatchError(f"unexpected (ALU/ALU64) value: got {imm & 0xFFFFFFFF}, expected {orig} -> {new}")
        INSN.pack_into(buf, slot * 8, code, dst | src << 4, off, _s32(new))
        return (f"patched insn #{slot} (ALU/ALU64) imm {imm & _U64} -> {new & _U64}",)
    if cls in (op.BPF_LDX, op.BPF_ST, op.BPF_STX):
        if res.validate and off != orig:
            raise PatchError(f"unexpected (LDX/ST/STX) value: got {off}, expected {orig} -> {new}")
        if new > _S16_MAX:
            raise PatchError(f"(LDX/ST/STX) value too big: {new} does not fit a 16-bit offset")
        if res.fail_memsz_adjust:
            # libbpf: "accesses field incorrectly. Make sure you are accessing pointers, unsigned integers, or
            # fields of matching type and size."  It poisons rather than read a wrongly sized signed value.
            return poison(buf, slot)
        done = [f"patched insn #{slot} (LDX/ST/STX) off {off & _U64} -> {new}"]
        if res.new_sz != res.orig_sz:
            size = op.SIZE_BYTES[op.BPF_SIZE(code)]
            if size != res.orig_sz:
                raise PatchError(f"(LDX/ST/STX) unexpected mem size: got {size}, expected {res.orig_sz}")
            if res.new_sz not in _BYTES_TO_SIZE:
                raise PatchError(f"(LDX/ST/STX) invalid new mem size: {res.new_sz}")
            code = op.BPF_MODE(code) | _BYTES_TO_SIZE[res.new_sz] | cls
            done.append(f"patched insn #{slot} (LDX/ST/STX) mem_sz {res.orig_sz} -> {res.new_sz}")
        INSN.pack_into(buf, slot * 8, code, dst | src << 4, new, imm)
        return tuple(done)
    if cls == op.BPF_LD:
        if (code != op.LD_IMM64 or src != 0 or off != 0 or (slot + 2) * 8 > len(buf)
                or any(_read(buf, slot + 1)[:4])):
            raise PatchError("(LDIMM64) has unexpected form")
        hi = _read(buf, slot + 1)[4]
        value = (imm & 0xFFFFFFFF) | (hi & 0xFFFFFFFF) << 32
        if res.validate and value != orig & 0xFFFFFFFFFFFFFFFF:
            raise PatchError(f"unexpected (LDIMM64) value: got {value}, expected {orig} -> {new}")
        INSN.pack_into(buf, slot * 8, code, dst, 0, _s32(new))
        INSN.pack_into(buf, (slot + 1) * 8, 0, 0, 0, _s32(new >> 32))
        return (f"patched insn #{slot} (LDIMM64) imm64 {value} -> {new & _U64}",)
    raise PatchError(f"trying to relocate unrecognized insn, code:0x{code:x}, src:0x{src:x}, dst:0x{dst:x}, "
                     f"off:0x{off & 0xFFFF:x}, imm:0x{imm & 0xFFFFFFFF:x}")


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >> 31 else v
