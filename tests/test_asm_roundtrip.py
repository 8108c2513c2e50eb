"""Properties: every valid instruction of every class survives encode -> decode, and decode accepts only
bytes it can reproduce exactly (an invalid combination is an error, never a silent value)."""
from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from kestrel_raw.asm import *  # noqa: F403
from kestrel_raw.asm import Instruction, assemble, disassemble
from kestrel_raw.errors import AsmError

regs = st.integers(0, 10)
s16 = st.integers(-(1 << 15), (1 << 15) - 1)
s32 = st.integers(-(1 << 31), (1 << 31) - 1)
s64 = st.integers(-(1 << 63), (1 << 63) - 1)
sizes = st.sampled_from([BPF_B, BPF_H, BPF_W, BPF_DW])
binary_alu = st.sampled_from([BPF_ADD, BPF_SUB, BPF_MUL, BPF_DIV, BPF_OR, BPF_AND, BPF_LSH, BPF_RSH,
                              BPF_MOD, BPF_XOR, BPF_MOV, BPF_ARSH])
cond_jmp = st.sampled_from([BPF_JEQ, BPF_JGT, BPF_JGE, BPF_JSET, BPF_JNE, BPF_JSGT, BPF_JSGE, BPF_JLT,
                            BPF_JLE, BPF_JSLT, BPF_JSLE])
atomics = st.sampled_from([BPF_ADD, BPF_OR, BPF_AND, BPF_XOR, BPF_ADD | BPF_FETCH, BPF_OR | BPF_FETCH,
                           BPF_AND | BPF_FETCH, BPF_XOR | BPF_FETCH, BPF_XCHG, BPF_CMPXCHG])
alu_class = st.sampled_from([BPF_ALU, BPF_ALU64])
jmp_class = st.sampled_from([BPF_JMP, BPF_JMP32])

alu_k = st.builds(lambda c, o, d, i: Instruction(c | o | BPF_K, d, 0, 0, i), alu_class, binary_alu, regs, s32)
alu_x = st.builds(lambda c, o, d, s: Instruction(c | o | BPF_X, d, s), alu_class, binary_alu, regs, regs)
neg = st.builds(lambda c, d: Instruction(c | BPF_NEG, d), alu_class, regs)
end = st.builds(lambda order, d, bits: Instruction(BPF_ALU | BPF_END | order, d, 0, 0, bits),
                st.sampled_from([BPF_TO_LE, BPF_TO_BE]), regs, st.sampled_from([16, 32, 64]))
bswaps = st.builds(lambda d, bits: Instruction(BPF_ALU64 | BPF_END, d, 0, 0, bits),
                   regs, st.sampled_from([16, 32, 64]))
jmp_k = st.builds(lambda c, o, d, off, i: Instruction(c | o | BPF_K, d, 0, off, i), jmp_class, cond_jmp, regs, s16, s32)
jmp_x = st.builds(lambda c, o, d, s, off: Instruction(c | o | BPF_X, d, s, off), jmp_class, cond_jmp, regs, regs, s16)
jas = st.builds(lambda off: Instruction(BPF_JMP | BPF_JA, off=off), s16)
gotols = st.builds(lambda imm: Instruction(BPF_JMP32 | BPF_JA, imm=imm), s32)
calls = st.builds(lambda i: Instruction(BPF_JMP | BPF_CALL, imm=i), st.integers(1, (1 << 31) - 1))
exits = st.just(Instruction(BPF_JMP | BPF_EXIT))
ld_plain = st.builds(lambda d, i: Instruction(BPF_LD | BPF_IMM | BPF_DW, d, 0, 0, i), regs, s64)
ld_fd = st.builds(lambda d, fd: Instruction(BPF_LD | BPF_IMM | BPF_DW, d, BPF_PSEUDO_MAP_FD, 0, fd),
                  regs, st.integers(0, (1 << 31) - 1))
ld_value = st.builds(lambda d, fd, off: ld_map_value(d, fd, off), regs, st.integers(0, (1 << 31) - 1),
                     st.integers(0, (1 << 32) - 1))
ldx = st.builds(lambda sz, d, s, off: Instruction(BPF_LDX | sz | BPF_MEM, d, s, off), sizes, regs, regs, s16)
stx = st.builds(lambda sz, d, s, off: Instruction(BPF_STX | sz | BPF_MEM, d, s, off), sizes, regs, regs, s16)
st_ = st.builds(lambda sz, d, off, i: Instruction(BPF_ST | sz | BPF_MEM, d, 0, off, i), sizes, regs, s16, s32)
atomic = st.builds(lambda sz, a, d, s, off: Instruction(BPF_STX | sz | BPF_ATOMIC, d, s, off, a),
                   st.sampled_from([BPF_W, BPF_DW]), atomics, regs, regs, s16)

# One strategy per instruction kind; every class of the uapi is covered.
KINDS = {
    "alu_k": alu_k, "alu_x": alu_x, "neg": neg, "end": end, "bswap": bswaps,
    "jmp_k": jmp_k, "jmp_x": jmp_x, "ja": jas, "gotol": gotols, "call": calls, "exit": exits,
    "ld_imm64": ld_plain, "ld_map_fd": ld_fd, "ld_map_value": ld_value,
    "ldx": ldx, "stx": stx, "st": st_, "atomic": atomic,
}
any_insn = st.one_of(*KINDS.values())


@given(st.data())
@settings(max_examples=5)
def test_kinds_cover_every_class(data: st.DataObject) -> None:
    classes = {BPF_CLASS(data.draw(kind).opcode) for kind in KINDS.values()}
    assert classes == {BPF_LD, BPF_LDX, BPF_ST, BPF_STX, BPF_ALU, BPF_JMP, BPF_JMP32, BPF_ALU64}


@given(any_insn)
@settings(max_examples=2000)
def test_decode_encode_is_identity(insn: Instruction) -> None:
    data = insn.encode()
    assert len(data) == 8 * insn.size
    assert Instruction.decode(data) == insn
    assert disassemble(data) == [insn]
    assert str(insn)  # every valid instruction has a text


@given(st.lists(any_insn, max_size=40))
@settings(max_examples=300)
def test_programs_round_trip(program: list[Instruction]) -> None:
    data = assemble(program)
    assert disassemble(data) == program
    assert assemble(disassemble(data)) == data


# Opcodes chosen to include every defined one and many undefined ones; fields drawn so that both valid
# and invalid combinations (reserved fields non-zero, registers > 10) occur.
@given(st.integers(0, 255), st.integers(0, 255), s16 | st.just(0), s32 | st.sampled_from([0, 1, 16, 0xE1]),
       st.binary(min_size=8, max_size=8))
@settings(max_examples=3000)
def test_decode_accepts_only_what_it_reproduces(code: int, regs_byte: int, off: int, imm: int, tail: bytes) -> None:
    data = struct.pack("<BBhi", code, regs_byte, off, imm) + tail
    try:
        insns = Instruction.decode(data)
    except AsmError:
        return
    assert insns.encode() == data[: 8 * insns.size]


@given(st.binary(min_size=0, max_size=64))
@settings(max_examples=1000)
def test_random_bytes_either_fail_or_round_trip(data: bytes) -> None:
    try:
        insns = disassemble(data)
    except AsmError:
        return
    assert assemble(insns) == data


# The exact set of opcodes this assembler accepts, written out from the uapi rules (not derived from the
# code under test): ALU/ALU64 ops with K and X, NEG, END (ALU: LE/BE; ALU64: bswap), JMP and JMP32
# conditionals with K and X, JA (JMP32: gotol), CALL and EXIT only in JMP, ld_imm64, LDX/ST/STX MEM in four
# sizes, STX ATOMIC in W and DW.
_BIN = [0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x90, 0xA0, 0xB0, 0xC0]
_COND = [0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0xA0, 0xB0, 0xC0, 0xD0]
EXPECTED_VALID = (
    {0x04 | o | s for o in _BIN for s in (0x00, 0x08)} | {0x84, 0xD4, 0xDC}
    | {0x07 | o | s for o in _BIN for s in (0x00, 0x08)} | {0x87, 0xD7}
    | {0x05 | o | s for o in _COND for s in (0x00, 0x08)} | {0x05, 0x85, 0x95}
    | {0x06 | o | s for o in _COND for s in (0x00, 0x08)} | {0x06}
    | {0x18}
    | {0x61, 0x69, 0x71, 0x79} | {0x62, 0x6A, 0x72, 0x7A} | {0x63, 0x6B, 0x73, 0x7B} | {0xC3, 0xDB}
)


def _accepted(code: int) -> bool:
    # A field combination valid for each kind: all zero; imm 16 for END; imm 1 for CALL.
    for imm in (0, 16, 1):
        try:
            Instruction.decode(struct.pack("<BBhi", code, 0, 0, imm) + bytes(8))
            return True
        except AsmError:
            pass
    return False


def test_exactly_the_defined_opcodes_are_accepted() -> None:
    accepted = {code for code in range(256) if _accepted(code)}
    assert len(EXPECTED_VALID) == 24 + 3 + 24 + 2 + 22 + 3 + 22 + 1 + 1 + 4 + 4 + 4 + 2
    assert sorted(accepted - EXPECTED_VALID) == []
    assert sorted(EXPECTED_VALID - accepted) == []
