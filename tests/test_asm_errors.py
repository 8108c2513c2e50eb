"""Every way to misuse the assembler is a named AsmError subclass whose message says what and where."""
from __future__ import annotations

import re
import struct

import pytest

from kestrel_raw.asm import *  # noqa: F403
from kestrel_raw.asm import (
    DanglingLabelError, DuplicateLabelError, Instruction, InvalidInstructionError, JumpRangeError,
    LabelError, TruncatedProgramError, UndefinedLabelError, UnknownHelperError, UnknownMapError, assemble,
    disassemble, format_program,
)
from kestrel_raw.errors import AsmError


def test_error_hierarchy() -> None:
    for cls in (InvalidInstructionError, TruncatedProgramError, LabelError, UndefinedLabelError,
                DuplicateLabelError, DanglingLabelError, JumpRangeError, UnknownMapError, UnknownHelperError):
        assert issubclass(cls, AsmError)
    for cls in (UndefinedLabelError, DuplicateLabelError, DanglingLabelError):
        assert issubclass(cls, LabelError)


# --- labels -------------------------------------------------------------------------------------------


def test_undefined_label_names_the_instruction_and_the_label() -> None:
    prog = [mov64_imm(R0, 0), jmp_imm(BPF_JEQ, R0, 0, "out"), label("other"), exit_insn()]
    with pytest.raises(UndefinedLabelError) as info:
        assemble(prog)
    assert str(info.value) == (
        "instruction 1 (if r0 == 0x0 goto <out>) jumps to label 'out', which is not defined "
        "(labels defined: 'other'); add label('out') before the instruction to jump to"
    )


def test_duplicate_label_names_both_places() -> None:
    prog = [label("a"), mov64_imm(R0, 0), label("a"), exit_insn()]
    with pytest.raises(DuplicateLabelError, match=re.escape(
            "label 'a' is defined twice: before instruction 0 and before instruction 1")):
        assemble(prog)


def test_duplicate_label_on_the_same_instruction() -> None:
    with pytest.raises(DuplicateLabelError, match="label 'x' is defined twice"):
        assemble([label("x"), label("x"), exit_insn()])


def test_label_at_the_end_names_nothing() -> None:
    with pytest.raises(DanglingLabelError, match="label 'end' is at the end of the program"):
        assemble([ja("end"), exit_insn(), label("end")])


def test_jump_out_of_16_bit_range() -> None:
    far = [jmp_imm(BPF_JEQ, R0, 0, "far")] + [mov64_imm(R0, 0)] * 32768 + [label("far"), exit_insn()]
    with pytest.raises(JumpRangeError) as info:
        assemble(far)
    assert str(info.value).startswith(
        "instruction 0 (if r0 == 0x0 goto <far>) jumps to label 'far' (instruction 32769), 32768 slots away; "
        "a jump offset is a signed 16-bit number (-32768..32767)"
    )
    # One less is the largest forward jump.
    ok = [ja("far")] + [mov64_imm(R0, 0)] * 32767 + [label("far"), exit_insn()]
    assert assemble(ok)[:8] == bytes.fromhex("0500ff7f00000000")  # goto pc+32767


def test_backward_jump_range_edge() -> None:
    prog = [label("top")] + [mov64_imm(R0, 0)] * 32767 + [ja("top")]
    assert assemble(prog)[-8:] == bytes.fromhex("0500008000000000")  # goto pc-32768
    with pytest.raises(JumpRangeError, match="-32769 slots away"):
        assemble([label("top")] + [mov64_imm(R0, 0)] * 32768 + [ja("top")])


def test_gotol_takes_32_bit_distances() -> None:
    gotol = Instruction(BPF_JMP32 | BPF_JA, target="far")
    data = assemble([gotol] + [mov64_imm(R0, 0)] * 40000 + [label("far"), exit_insn()])
    assert data[:8] == bytes.fromhex("06000000409c0000")  # gotol pc+40000


def test_unresolved_instruction_cannot_be_encoded_alone() -> None:
    with pytest.raises(UndefinedLabelError, match="not resolved"):
        ja("x").encode()
    with pytest.raises(UnknownMapError, match="not resolved to a file descriptor"):
        ld_map_fd(R1, "m").encode()


def test_program_items_must_be_instructions_or_labels() -> None:
    with pytest.raises(InvalidInstructionError, match="item 1 of the program is 'exit'"):
        assemble([mov64_imm(R0, 0), "exit"])


# --- maps and helpers ---------------------------------------------------------------------------------


def test_unknown_map() -> None:
    with pytest.raises(UnknownMapError) as info:
        assemble([ld_map_fd(R1, "events"), exit_insn()], maps={"other": 3})
    assert str(info.value) == (
        "instruction 0 (r1 = map[events]) refers to map 'events', which assemble() was not given "
        "(maps given: 'other'); pass maps={'events': fd}"
    )
    with pytest.raises(UnknownMapError, match=r"\(maps given: none\)"):
        assemble([ld_map_value(R1, "cfg", 0), exit_insn()])


def test_unused_maps_are_fine_and_fd_objects_are_accepted() -> None:
    class FakeFD:
        def fileno(self) -> int:
            return 6

    data = assemble([ld_map_fd(R1, "events"), exit_insn()], maps={"events": FakeFD(), "spare": 99})
    assert data[:16] == bytes.fromhex("18110000060000000000000000000000")  # r1 = map[fd:6]


def test_bad_fd_value() -> None:
    with pytest.raises(UnknownMapError, match="not an open file descriptor"):
        assemble([ld_map_fd(R1, "events")], maps={"events": -1})


@pytest.mark.parametrize("name", ["ringbuf_reserv", "bpf_nope", "", "BPF_FUNC_ringbuf_reserve"])
def test_unknown_helper_name(name: str) -> None:
    with pytest.raises(UnknownHelperError, match=re.escape(f"unknown helper {name!r}: not in enum bpf_func_id")):
        call(name)


@pytest.mark.parametrize("helper_id", [0, 212, -1, True])
def test_unknown_helper_id(helper_id) -> None:
    with pytest.raises(UnknownHelperError, match=r"ids of enum bpf_func_id are 1\.\.211"):
        call(helper_id)


# --- impossible instructions, on build -----------------------------------------------------------------


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Instruction(BPF_ST | BPF_DW | BPF_ATOMIC, 1, 0, 0, BPF_XCHG),
     "opcode 0xda (BPF_ST | BPF_DW | BPF_ATOMIC): BPF_ST has no mode BPF_ATOMIC; atomics are BPF_STX | BPF_ATOMIC"),
    (lambda: Instruction(BPF_JMP32 | BPF_JA | BPF_X),
     "opcode 0x0e (BPF_JMP32 | BPF_JA | BPF_X): BPF_JA takes no source operand (must be BPF_K)"),
    (lambda: Instruction(BPF_JMP32 | BPF_CALL, imm=1),
     "opcode 0x86 (BPF_JMP32 | BPF_CALL | BPF_K): BPF_CALL exists only in class BPF_JMP"),
    (lambda: Instruction(BPF_JMP32 | BPF_EXIT),
     "opcode 0x96 (BPF_JMP32 | BPF_EXIT | BPF_K): BPF_EXIT exists only in class BPF_JMP"),
    (lambda: Instruction(BPF_ALU64 | 0xE0, 1),
     "opcode 0xe7 (BPF_ALU64 | op 0xe0 | BPF_K): 0xe0 is not an ALU operation"),
    (lambda: Instruction(BPF_JMP | 0xF0),
     "opcode 0xf5 (BPF_JMP | op 0xf0 | BPF_K): 0xf0 is not a jump operation (BPF_JCOND may_goto is not supported)"),
    (lambda: Instruction(BPF_STX | BPF_B | BPF_ATOMIC, 1, 2, 0, BPF_ADD),
     "opcode 0xd3 (BPF_STX | BPF_B | BPF_ATOMIC): atomic operations exist for BPF_W and BPF_DW only"),
    (lambda: Instruction(BPF_STX | BPF_DW | BPF_ATOMIC, 1, 2, 0, BPF_SUB),
     "opcode 0xdb (BPF_STX | BPF_DW | BPF_ATOMIC): imm 0x10 is not an atomic operation (BPF_ADD, BPF_OR, "
     "BPF_AND, BPF_XOR, BPF_ADD | BPF_FETCH, BPF_OR | BPF_FETCH, BPF_AND | BPF_FETCH, BPF_XOR | BPF_FETCH, "
     "BPF_XCHG, BPF_CMPXCHG)"),
    (lambda: Instruction(BPF_ALU64 | BPF_END | BPF_TO_BE, 1, 0, 0, 16),
     "opcode 0xdf (BPF_ALU64 | BPF_END | BPF_X): BPF_ALU64 | BPF_END is the unconditional bswap; "
     "it has no byte-order bit"),
    (lambda: Instruction(BPF_ALU | BPF_END, 1, 0, 0, 8),
     "opcode 0xd4 (BPF_ALU | BPF_END | BPF_K): byte swap width (imm) must be 16, 32 or 64, is 8"),
    (lambda: Instruction(BPF_ALU64 | BPF_NEG | BPF_X, 1, 2),
     "opcode 0x8f (BPF_ALU64 | BPF_NEG | BPF_X): BPF_NEG takes no source operand (must be BPF_K)"),
    (lambda: Instruction(BPF_ALU64 | BPF_MOV | BPF_K, 1, 2, 0, 5),
     "opcode 0xb7 (BPF_ALU64 | BPF_MOV | BPF_K): src must be 0, is 2"),
    (lambda: Instruction(BPF_ALU64 | BPF_MOV | BPF_X, 1, 2, 8, 0),
     "opcode 0xbf (BPF_ALU64 | BPF_MOV | BPF_X): off must be 0, is 8; signed div/mod and movsx (cpu v4) "
     "are not supported"),
    # Forms found only in the kernel's xlated code: the message points there, and blames no cpu v4 feature.
    (lambda: Instruction(BPF_ALU64 | BPF_MOV | BPF_X, 0, 0, -1, 0),
     "opcode 0xbf (BPF_ALU64 | BPF_MOV | BPF_X): off -1 (BPF_ADDR_PERCPU) makes this the per-CPU address "
     "move that the verifier writes into the code it keeps; a program cannot load it.  Decode the kernel's "
     "xlated code with kestrel_raw.asm.disassemble_xlated"),
    (lambda: Instruction(BPF_JMP | BPF_CALL, 0, 0, 0, -66720),
     "opcode 0x85 (BPF_JMP | BPF_CALL | BPF_K): helper id (imm) must be positive, is -66720; in the kernel's "
     "xlated code a call's imm is the function's address minus __bpf_call_base: decode that with "
     "kestrel_raw.asm.disassemble_xlated"),
    (lambda: Instruction(BPF_LDX | BPF_W | BPF_MEM, 1, 2, 0, 7),
     "opcode 0x61 (BPF_LDX | BPF_W | BPF_MEM): imm must be 0, is 7"),
    (lambda: Instruction(BPF_LDX | BPF_W | BPF_MEMSX, 1, 2),
     "opcode 0x81 (BPF_LDX | BPF_W | BPF_MEMSX): sign-extending loads (BPF_MEMSX, cpu v4) are not supported"),
    (lambda: Instruction(BPF_ST | BPF_W | BPF_MEM, 1, 2),
     "opcode 0x62 (BPF_ST | BPF_W | BPF_MEM): src must be 0, is 2"),
    (lambda: Instruction(BPF_LD | BPF_W | BPF_ABS),
     "opcode 0x20 (BPF_LD | BPF_W | BPF_ABS): legacy packet loads (BPF_ABS, BPF_IND) are not supported"),
    (lambda: Instruction(BPF_LD | BPF_W | BPF_IMM),
     "opcode 0x00 (BPF_LD | BPF_W | BPF_IMM): the only BPF_LD instruction is BPF_LD | BPF_IMM | BPF_DW (ld_imm64)"),
    (lambda: Instruction(BPF_LD | BPF_IMM | BPF_DW, 1, 5),
     "opcode 0x18 (BPF_LD | BPF_DW | BPF_IMM): ld_imm64 src 5 is not supported "
     "(0, BPF_PSEUDO_MAP_FD 1, BPF_PSEUDO_MAP_VALUE 2, BPF_PSEUDO_BTF_ID 3, BPF_PSEUDO_FUNC 4)"),
    (lambda: Instruction(BPF_LD | BPF_IMM | BPF_DW, 1, BPF_PSEUDO_MAP_FD, 0, 1 << 32 | 5),
     "opcode 0x18 (BPF_LD | BPF_DW | BPF_IMM): ld_imm64 with BPF_PSEUDO_MAP_FD holds a map fd: "
     "the high 32 bits must be 0"),
    (lambda: Instruction(BPF_JMP | BPF_JEQ | BPF_K, 1, 2, 0, 0),
     "opcode 0x15 (BPF_JMP | BPF_JEQ | BPF_K): src must be 0, is 2"),
    (lambda: Instruction(BPF_JMP | BPF_JEQ | BPF_X, 1, 2, 0, 3),
     "opcode 0x1d (BPF_JMP | BPF_JEQ | BPF_X): imm must be 0, is 3"),
    (lambda: Instruction(BPF_JMP | BPF_JA, 0, 0, 0, 5),
     "opcode 0x05 (BPF_JMP | BPF_JA | BPF_K): imm must be 0, is 5"),
    (lambda: Instruction(BPF_JMP | BPF_CALL, 0, 3, 0, 5),
     "opcode 0x85 (BPF_JMP | BPF_CALL | BPF_K): src 3 of a call is none of: 0 (a helper), BPF_PSEUDO_CALL 1 "
     "(a bpf-to-bpf call), BPF_PSEUDO_KFUNC_CALL 2 (a kfunc)"),
    (lambda: Instruction(BPF_JMP | BPF_CALL, 1, 1, 0, 5),
     "opcode 0x85 (BPF_JMP | BPF_CALL | BPF_K): dst must be 0, is 1"),
    (lambda: Instruction(BPF_JMP | BPF_CALL, 0, 2, 0, -1),
     "opcode 0x85 (BPF_JMP | BPF_CALL | BPF_K): a kfunc call's imm is a BTF id, which is not negative; is -1"),
    (lambda: Instruction(BPF_ALU64 | BPF_MOV | BPF_X, 11, 1),
     "opcode 0xbf (BPF_ALU64 | BPF_MOV | BPF_X): dst register 11 is not a register (r0..r10)"),
    (lambda: Instruction(BPF_ALU64 | BPF_MOV | BPF_X, 1, 11),
     "opcode 0xbf (BPF_ALU64 | BPF_MOV | BPF_X): src register 11 is not a register (r0..r10)"),
    (lambda: Instruction(BPF_ALU64 | BPF_MOV | BPF_K, 1, 0, 0, 1 << 31),
     "opcode 0xb7 (BPF_ALU64 | BPF_MOV | BPF_K): imm 2147483648 does not fit in a signed 32-bit field"),
    (lambda: Instruction(BPF_LDX | BPF_W | BPF_MEM, 1, 2, 1 << 15),
     "opcode 0x61 (BPF_LDX | BPF_W | BPF_MEM): off 32768 does not fit in a signed 16-bit field"),
    (lambda: Instruction(256), "opcode 256 does not fit in a byte"),
    (lambda: Instruction(BPF_ALU64 | BPF_MOV | BPF_X, 1, 2, target="x"),
     "opcode 0xbf (BPF_ALU64 | BPF_MOV | BPF_X): only a jump can have a target label; "
     "this instruction has target 'x'"),
    (lambda: Instruction(BPF_JMP | BPF_JA, off=3, target="x"),
     "opcode 0x05 (BPF_JMP | BPF_JA | BPF_K): a jump to label 'x' must leave its offset 0 for assemble() "
     "to fill in"),
    (lambda: Instruction(BPF_LD | BPF_IMM | BPF_DW, 1, 0, map_name="m"),
     "opcode 0x18 (BPF_LD | BPF_DW | BPF_IMM): only ld_imm64 with src BPF_PSEUDO_MAP_FD or "
     "BPF_PSEUDO_MAP_VALUE can name a map"),
    (lambda: Instruction(BPF_ALU64, dst=True), "Instruction.dst must be an int, not True"),
])
def test_impossible_instruction_is_refused_when_built(make, message: str) -> None:
    with pytest.raises(InvalidInstructionError) as info:
        make()
    assert str(info.value) == message


@pytest.mark.parametrize(("make", "message"), [
    (lambda: alu64_imm(BPF_NEG, R1, 0), "ALU op 128 is not one of BPF_ADD, BPF_SUB"),
    (lambda: alu64_imm(BPF_JEQ | BPF_X, R1, 0), "ALU op 24 is not one of"),
    (lambda: ldx_mem(64, R1, R2, 0), "size 64 is not one of BPF_W, BPF_H, BPF_B, BPF_DW"),
    (lambda: ldx_mem(True, R1, R2, 0), "size True is not one of"),
    (lambda: jmp_imm(BPF_CALL, R1, 0, "x"), "conditional jump op 128 is not one of BPF_JEQ"),
    (lambda: jmp_imm(BPF_JA, R1, 0, "x"), "conditional jump op 0 is not one of"),
    (lambda: atomic_op(BPF_DW, BPF_SUB, R1, R2, 0), "atomic op 16 is not one of BPF_ADD"),
    (lambda: atomic_op(BPF_H, BPF_ADD, R1, R2, 0), "atomic operations exist for BPF_W and BPF_DW only"),
    (lambda: endian(1, R1, 16), "byte order 1 is not one of BPF_TO_LE, BPF_TO_BE"),
    (lambda: bswap(R1, 24), "byte swap width (imm) must be 16, 32 or 64, is 24"),
    (lambda: mov64_imm(R1, 0xFFFFFFFF), "imm 4294967295 is out of range; accepted: -2**31..2**31-1 "
                                         "(it is sign-extended to 64 bits; use ld_imm64)"),
    (lambda: jmp_imm(BPF_JEQ, R1, 1 << 31, 0), "imm 2147483648 is out of range"),
    (lambda: mov32_imm(R1, 1 << 32), "imm 4294967296 is out of range; accepted: -2**31..2**32-1"),
    (lambda: st_mem(BPF_DW, R10, -8, 0xFFFFFFFF), "imm 4294967295 is out of range"),
    (lambda: ld_imm64(R1, 1 << 64), "imm64 18446744073709551616 does not fit in 64 bits"),
    (lambda: ld_map_value(R1, "m", -1), "map value offset -1 must be 0..2**32-1"),
    (lambda: ld_map_fd(R1, -3), "map fd -3 is not a file descriptor"),
    (lambda: ja(1.5), "jump offset must be an int, not 1.5"),
    (lambda: label(""), "a label name must be a non-empty str"),
    (lambda: mov64_reg(R1, 12), "src register 12 is not a register (r0..r10)"),
])
def test_builders_refuse_wrong_arguments(make, message: str) -> None:
    with pytest.raises(InvalidInstructionError, match=re.escape(message)):
        make()


def test_unsigned_immediates_of_32_bit_operations_keep_their_bits() -> None:
    assert mov32_imm(R1, 0xFFFFFFFF) == mov32_imm(R1, -1)
    assert jmp32_imm(BPF_JEQ, R1, 0x80000000, 0) == jmp32_imm(BPF_JEQ, R1, -(1 << 31), 0)
    assert st_mem(BPF_W, R10, -4, 0xFFFFFFFF).imm == -1
    assert ld_imm64(R1, 0xFFFF_FFFF_FFFF_FFFF) == ld_imm64(R1, -1)


# --- impossible instructions, on decode ----------------------------------------------------------------


@pytest.mark.parametrize(("hexbytes", "message"), [
    ("da01000000e10000", "slot 0: opcode 0xda (BPF_ST | BPF_DW | BPF_ATOMIC): BPF_ST has no mode BPF_ATOMIC"),
    ("0e00000000000000", "slot 0: opcode 0x0e (BPF_JMP32 | BPF_JA | BPF_X): BPF_JA takes no source operand"),
    ("bfb1000000000000", "slot 0: opcode 0xbf (BPF_ALU64 | BPF_MOV | BPF_X): src register 11 is not a register"),
    ("b70c000000000000", "slot 0: opcode 0xb7 (BPF_ALU64 | BPF_MOV | BPF_K): dst register 12 is not a register"),
    ("9500000001000000", "slot 0: opcode 0x95 (BPF_JMP | BPF_EXIT | BPF_K): imm must be 0, is 1"),
])
def test_impossible_bytes_are_refused_when_decoded(hexbytes: str, message: str) -> None:
    with pytest.raises(InvalidInstructionError) as info:
        disassemble(bytes.fromhex(hexbytes))
    assert str(info.value).startswith(message)


def test_decode_error_names_the_slot() -> None:
    data = bytes.fromhex("b700000000000000" "1801000001000000" "0000000000000000" "e700000000000000")
    with pytest.raises(InvalidInstructionError, match=r"^slot 3: opcode 0xe7"):
        disassemble(data)


def test_second_half_of_ld_imm64_must_be_empty() -> None:
    data = bytes.fromhex("1801000001000000" "b700000000000000")
    with pytest.raises(InvalidInstructionError, match=re.escape(
            "slot 1: second half of ld_imm64 must have opcode, registers and offset 0, has opcode 0xb7")):
        disassemble(data)


def test_truncated_input() -> None:
    with pytest.raises(TruncatedProgramError, match="12 bytes are not a whole number of 8-byte instructions"):
        disassemble(bytes(12))
    half = bytes.fromhex("b700000000000000" "1801000001000000")
    with pytest.raises(TruncatedProgramError, match=re.escape(
            "slot 1: ld_imm64 takes two slots (16 bytes), only 8 bytes are left")):
        disassemble(half)
    with pytest.raises(TruncatedProgramError):
        Instruction.decode(b"\x95\x00")
    assert disassemble(b"") == []


def test_format_program_reports_label_errors_too() -> None:
    with pytest.raises(UndefinedLabelError):
        format_program([ja("nowhere")])
    with pytest.raises(InvalidInstructionError):
        format_program(struct.pack("<BBhi", 0xFF, 0, 0, 0))


def test_linked_object_calls_and_loads_decode_and_print():
    """What a linked BPF object holds (kestrel_raw.bpfobj): bpf-to-bpf calls, kfunc calls, a callback's
    subprogram address and a typed ksym's BTF id; printed as the kernel's disassembler prints them."""
    from kestrel_raw.asm import opcode as op
    raw = (bytes([0x85, 0x10, 0, 0]) + (-7).to_bytes(4, "little", signed=True)        # call pc-7
           + bytes([0x85, 0x20, 0, 0]) + (1234).to_bytes(4, "little")                  # kfunc btf id 1234
           + bytes([0x18, 0x42, 0, 0]) + (3).to_bytes(4, "little") + bytes(8)          # r2 = subprog[+3]
           + bytes([0x18, 0x31, 0, 0]) + (99).to_bytes(4, "little") + bytes(8))        # r1 = btf_id[99]
    insns = [Instruction.decode(raw, 0), Instruction.decode(raw, 1), Instruction.decode(raw, 2),
             Instruction.decode(raw, 4)]
    assert [str(i) for i in insns] == ["call pc-7", "call kernel-function#1234", "r2 = subprog[+3]",
                                       "r1 = btf_id[99]"]
    assert insns[0].src == op.BPF_PSEUDO_CALL and insns[2].src == op.BPF_PSEUDO_FUNC
    assert b"".join(i.encode() for i in insns) == raw
