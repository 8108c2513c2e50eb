"""Golden bytes: each builder's exact encoding, with the kernel's text for it beside it (cilium style).

Every row checks three things: the builder encodes to the bytes, the bytes decode to the same value,
and str() of the value is the kernel/bpftool text.
"""
from __future__ import annotations

import pytest

from kestrel_raw.asm import *  # noqa: F403
from kestrel_raw.asm import Instruction, assemble, disassemble, format_program

GOLDEN = [
    # ALU64, imm and reg sources
    (mov64_reg(R6, R1), "bf16000000000000", "r6 = r1"),
    (mov64_imm(R0, 0), "b700000000000000", "r0 = 0"),
    (mov64_imm(R2, -1), "b7020000ffffffff", "r2 = -1"),
    (alu64_imm(BPF_ADD, R1, 8), "0701000008000000", "r1 += 8"),
    (alu64_reg(BPF_ADD, R1, R2), "0f21000000000000", "r1 += r2"),
    (alu64_imm(BPF_SUB, R1, 8), "1701000008000000", "r1 -= 8"),
    (alu64_reg(BPF_SUB, R1, R2), "1f21000000000000", "r1 -= r2"),
    (alu64_imm(BPF_MUL, R3, 3), "2703000003000000", "r3 *= 3"),
    (alu64_reg(BPF_MUL, R3, R4), "2f43000000000000", "r3 *= r4"),
    (alu64_imm(BPF_DIV, R3, 10), "370300000a000000", "r3 /= 10"),
    (alu64_reg(BPF_DIV, R3, R4), "3f43000000000000", "r3 /= r4"),
    (alu64_imm(BPF_OR, R1, 1), "4701000001000000", "r1 |= 1"),
    (alu64_reg(BPF_OR, R1, R2), "4f21000000000000", "r1 |= r2"),
    (alu64_imm(BPF_AND, R1, 0xFF), "57010000ff000000", "r1 &= 255"),
    (alu64_reg(BPF_AND, R1, R2), "5f21000000000000", "r1 &= r2"),
    (alu64_imm(BPF_LSH, R1, 32), "6701000020000000", "r1 <<= 32"),
    (alu64_reg(BPF_LSH, R1, R2), "6f21000000000000", "r1 <<= r2"),
    (alu64_imm(BPF_RSH, R1, 32), "7701000020000000", "r1 >>= 32"),
    (alu64_reg(BPF_RSH, R1, R2), "7f21000000000000", "r1 >>= r2"),
    (neg64(R1), "8701000000000000", "r1 = -r1"),
    (alu64_imm(BPF_MOD, R3, 10), "970300000a000000", "r3 %= 10"),
    (alu64_reg(BPF_MOD, R3, R4), "9f43000000000000", "r3 %= r4"),
    (alu64_imm(BPF_XOR, R1, -2), "a7010000feffffff", "r1 ^= -2"),
    (alu64_reg(BPF_XOR, R1, R1), "af11000000000000", "r1 ^= r1"),
    (alu64_imm(BPF_ARSH, R1, 32), "c701000020000000", "r1 s>>= 32"),
    (alu64_reg(BPF_ARSH, R1, R2), "cf21000000000000", "r1 s>>= r2"),
    (bswap(R1, 16), "d701000010000000", "r1 = bswap16 r1"),
    (bswap(R1, 64), "d701000040000000", "r1 = bswap64 r1"),
    # ALU (32-bit): w registers; u32 immediates are taken as their bits
    (mov32_imm(R1, 0xFFFFFFFF), "b4010000ffffffff", "w1 = -1"),
    (mov32_reg(R1, R2), "bc21000000000000", "w1 = w2"),
    (alu32_imm(BPF_ADD, R1, 1), "0401000001000000", "w1 += 1"),
    (alu32_reg(BPF_MUL, R1, R2), "2c21000000000000", "w1 *= w2"),
    (alu32_imm(BPF_RSH, R9, 3), "7409000003000000", "w9 >>= 3"),
    (alu32_reg(BPF_ARSH, R9, R0), "cc09000000000000", "w9 s>>= w0"),
    (neg32(R1), "8401000000000000", "w1 = -w1"),
    (endian(BPF_TO_BE, R1, 16), "dc01000010000000", "r1 = be16 r1"),
    (endian(BPF_TO_BE, R2, 64), "dc02000040000000", "r2 = be64 r2"),
    (endian(BPF_TO_LE, R1, 32), "d401000020000000", "r1 = le32 r1"),
    # ld_imm64: two slots, the second holding the high half
    (ld_imm64(R1, 0x1122334455667788), "18010000887766550000000044332211", "r1 = 0x1122334455667788"),
    (ld_imm64(R0, -1), "18000000ffffffff00000000ffffffff", "r0 = 0xffffffffffffffff"),
    (ld_map_fd(R1, 5), "18110000050000000000000000000000", "r1 = map[fd:5]"),
    (ld_map_value(R2, 7, 8), "18220000070000000000000008000000", "r2 = map[fd:7][0]+8"),
    # LDX / STX / ST, every size
    (ldx_mem(BPF_DW, R1, R6, 16), "7961100000000000", "r1 = *(u64 *)(r6 +16)"),
    (ldx_mem(BPF_W, R2, R1, -4), "6112fcff00000000", "r2 = *(u32 *)(r1 -4)"),
    (ldx_mem(BPF_H, R3, R1, 2), "6913020000000000", "r3 = *(u16 *)(r1 +2)"),
    (ldx_mem(BPF_B, R4, R1, 0), "7114000000000000", "r4 = *(u8 *)(r1 +0)"),
    (stx_mem(BPF_DW, R10, R1, -8), "7b1af8ff00000000", "*(u64 *)(r10 -8) = r1"),
    (stx_mem(BPF_W, R10, R1, -4), "631afcff00000000", "*(u32 *)(r10 -4) = r1"),
    (stx_mem(BPF_H, R0, R7, 2), "6b70020000000000", "*(u16 *)(r0 +2) = r7"),
    (stx_mem(BPF_B, R0, R7, 1), "7370010000000000", "*(u8 *)(r0 +1) = r7"),
    (st_mem(BPF_DW, R10, -16, -1), "7a0af0ffffffffff", "*(u64 *)(r10 -16) = -1"),
    (st_mem(BPF_W, R10, -4, 0), "620afcff00000000", "*(u32 *)(r10 -4) = 0"),
    (st_mem(BPF_H, R0, 0, 1), "6a00000001000000", "*(u16 *)(r0 +0) = 1"),
    (st_mem(BPF_B, R0, 3, 255), "72000300ff000000", "*(u8 *)(r0 +3) = 255"),
    # atomics (BPF_STX | BPF_ATOMIC), op in imm
    (atomic_op(BPF_DW, BPF_ADD, R1, R2, 0), "db21000000000000", "lock *(u64 *)(r1 +0) += r2"),
    (atomic_op(BPF_W, BPF_ADD, R1, R2, 4), "c321040000000000", "lock *(u32 *)(r1 +4) += r2"),
    (atomic_op(BPF_DW, BPF_OR, R1, R2, 0), "db21000040000000", "lock *(u64 *)(r1 +0) |= r2"),
    (atomic_op(BPF_DW, BPF_AND, R1, R2, 0), "db21000050000000", "lock *(u64 *)(r1 +0) &= r2"),
    (atomic_op(BPF_W, BPF_XOR, R1, R2, 0), "c3210000a0000000", "lock *(u32 *)(r1 +0) ^= r2"),
    (atomic_op(BPF_DW, BPF_ADD | BPF_FETCH, R1, R0, 0), "db01000001000000",
     "r0 = atomic64_fetch_add((u64 *)(r1 +0), r0)"),
    (atomic_op(BPF_W, BPF_OR | BPF_FETCH, R1, R3, 0), "c331000041000000",
     "r3 = atomic_fetch_or((u32 *)(r1 +0), r3)"),
    (atomic_op(BPF_DW, BPF_AND | BPF_FETCH, R1, R3, -8), "db31f8ff51000000",
     "r3 = atomic64_fetch_and((u64 *)(r1 -8), r3)"),
    (atomic_op(BPF_DW, BPF_XOR | BPF_FETCH, R1, R3, 0), "db310000a1000000",
     "r3 = atomic64_fetch_xor((u64 *)(r1 +0), r3)"),
    (atomic_op(BPF_DW, BPF_XCHG, R1, R2, 8), "db210800e1000000", "r2 = atomic64_xchg((u64 *)(r1 +8), r2)"),
    (atomic_op(BPF_W, BPF_CMPXCHG, R1, R2, -8), "c321f8fff1000000",
     "r0 = atomic_cmpxchg((u32 *)(r1 -8), r0, r2)"),
    # JMP: every conditional, imm and reg
    (jmp_imm(BPF_JEQ, R0, 0, 5), "1500050000000000", "if r0 == 0x0 goto pc+5"),
    (jmp_reg(BPF_JEQ, R1, R2, 1), "1d21010000000000", "if r1 == r2 goto pc+1"),
    (jmp_imm(BPF_JGT, R1, 10, 1), "250101000a000000", "if r1 > 0xa goto pc+1"),
    (jmp_reg(BPF_JGT, R1, R2, -2), "2d21feff00000000", "if r1 > r2 goto pc-2"),
    (jmp_imm(BPF_JGE, R1, 1, 1), "3501010001000000", "if r1 >= 0x1 goto pc+1"),
    (jmp_reg(BPF_JGE, R1, R2, 1), "3d21010000000000", "if r1 >= r2 goto pc+1"),
    (jmp_imm(BPF_JSET, R1, 4, 1), "4501010004000000", "if r1 & 0x4 goto pc+1"),
    (jmp_reg(BPF_JSET, R1, R2, 1), "4d21010000000000", "if r1 & r2 goto pc+1"),
    (jmp_imm(BPF_JNE, R1, -1, 1), "55010100ffffffff", "if r1 != 0xffffffff goto pc+1"),
    (jmp_reg(BPF_JNE, R1, R2, 1), "5d21010000000000", "if r1 != r2 goto pc+1"),
    (jmp_imm(BPF_JSGT, R1, -1, 1), "65010100ffffffff", "if r1 s> 0xffffffff goto pc+1"),
    (jmp_reg(BPF_JSGT, R1, R2, 1), "6d21010000000000", "if r1 s> r2 goto pc+1"),
    (jmp_imm(BPF_JSGE, R1, 0, 1), "7501010000000000", "if r1 s>= 0x0 goto pc+1"),
    (jmp_reg(BPF_JSGE, R1, R2, 1), "7d21010000000000", "if r1 s>= r2 goto pc+1"),
    (jmp_imm(BPF_JLT, R1, 4096, 1), "a501010000100000", "if r1 < 0x1000 goto pc+1"),
    (jmp_reg(BPF_JLT, R1, R2, 1), "ad21010000000000", "if r1 < r2 goto pc+1"),
    (jmp_imm(BPF_JLE, R1, 2, 1), "b501010002000000", "if r1 <= 0x2 goto pc+1"),
    (jmp_reg(BPF_JLE, R1, R2, 1), "bd21010000000000", "if r1 <= r2 goto pc+1"),
    (jmp_imm(BPF_JSLT, R1, 0, 1), "c501010000000000", "if r1 s< 0x0 goto pc+1"),
    (jmp_reg(BPF_JSLT, R1, R2, 1), "cd21010000000000", "if r1 s< r2 goto pc+1"),
    (jmp_imm(BPF_JSLE, R1, 0, 1), "d501010000000000", "if r1 s<= 0x0 goto pc+1"),
    (jmp_reg(BPF_JSLE, R1, R2, 1), "dd21010000000000", "if r1 s<= r2 goto pc+1"),
    (ja(-1), "0500ffff00000000", "goto pc-1"),
    (ja(0), "0500000000000000", "goto pc+0"),
    (call("ringbuf_reserve"), "8500000083000000", "call bpf_ringbuf_reserve#131"),
    (call(1), "8500000001000000", "call bpf_map_lookup_elem#1"),
    (exit_insn(), "9500000000000000", "exit"),
    # JMP32: w registers, u32 immediates
    (jmp32_imm(BPF_JNE, R1, 0xFFFFFFFF, 1), "56010100ffffffff", "if w1 != 0xffffffff goto pc+1"),
    (jmp32_reg(BPF_JSLT, R1, R2, 3), "ce21030000000000", "if w1 s< w2 goto pc+3"),
    (jmp32_imm(BPF_JEQ, R0, 0, -4), "1600fcff00000000", "if w0 == 0x0 goto pc-4"),
    (jmp32_reg(BPF_JGE, R3, R4, 2), "3e43020000000000", "if w3 >= w4 goto pc+2"),
    (jmp32_imm(BPF_JSET, R0, 1, 1), "4600010001000000", "if w0 & 0x1 goto pc+1"),
    # gotol (JMP32 | JA, cpu v4): the offset is in imm
    (Instruction(BPF_JMP32 | BPF_JA, imm=70000), "0600000070110100", "gotol pc+70000"),
]


@pytest.mark.parametrize(("insn", "hexbytes", "text"), GOLDEN, ids=[g[2] for g in GOLDEN])
def test_golden_bytes_and_text(insn: Instruction, hexbytes: str, text: str) -> None:
    data = bytes.fromhex(hexbytes)
    assert insn.encode() == data
    assert disassemble(data) == [insn]
    assert str(insn) == text
    assert insn.size == len(data) // 8


def test_helper_names_with_and_without_prefix_are_the_same_call() -> None:
    assert call("ringbuf_reserve") == call("bpf_ringbuf_reserve") == call(131)
    assert call("bpf_ringbuf_reserve").encode() == bytes.fromhex("8500000083000000")


def test_symbolic_map_loads_print_their_name_and_take_the_fd_at_assembly() -> None:
    fd_load = ld_map_fd(R1, "events")
    value_load = ld_map_value(R2, "config", 16)
    assert str(fd_load) == "r1 = map[events]"
    assert str(value_load) == "r2 = map[config][0]+16"
    data = assemble([fd_load, value_load], maps={"events": 5, "config": 9, "unused": 12})
    assert data == bytes.fromhex(
        "1811000005000000" "0000000000000000"  # r1 = map[fd:5]
        "1822000009000000" "0000000010000000"  # r2 = map[fd:9][0]+16
    )


# A realistic tracepoint program: reserve a ring-buffer record, fill pid/tgid and a timestamp, count the
# event in an array map with an atomic add, submit.
REALISTIC = [
    mov64_reg(R6, R1),                              # r6 = ctx
    ld_map_fd(R1, "events"),
    mov64_imm(R2, 24),
    mov64_imm(R3, 0),
    call("ringbuf_reserve"),
    jmp_imm(BPF_JEQ, R0, 0, "out"),
    mov64_reg(R7, R0),                              # r7 = record
    call("get_current_pid_tgid"),
    stx_mem(BPF_DW, R7, R0, 0),
    call("ktime_get_ns"),
    stx_mem(BPF_DW, R7, R0, 8),
    ldx_mem(BPF_W, R1, R6, 8),                      # a u32 field of the tracepoint context
    endian(BPF_TO_BE, R1, 32),
    stx_mem(BPF_W, R7, R1, 16),
    st_mem(BPF_W, R7, 20, 0),
    ld_map_value(R1, "counters", 8),
    mov64_imm(R2, 1),
    atomic_op(BPF_DW, BPF_ADD, R1, R2, 0),
    mov64_reg(R1, R7),
    mov64_imm(R2, 0),
    call("ringbuf_submit"),
    label("out"),
    mov64_imm(R0, 0),
    exit_insn(),
]

REALISTIC_LISTING = """\
   0: (bf) r6 = r1
   1: (18) r1 = map[events]
   3: (b7) r2 = 24
   4: (b7) r3 = 0
   5: (85) call bpf_ringbuf_reserve#131
   6: (15) if r0 == 0x0 goto pc+16
   7: (bf) r7 = r0
   8: (85) call bpf_get_current_pid_tgid#14
   9: (7b) *(u64 *)(r7 +0) = r0
  10: (85) call bpf_ktime_get_ns#5
  11: (7b) *(u64 *)(r7 +8) = r0
  12: (61) r1 = *(u32 *)(r6 +8)
  13: (dc) r1 = be32 r1
  14: (63) *(u32 *)(r7 +16) = r1
  15: (62) *(u32 *)(r7 +20) = 0
  16: (18) r1 = map[counters][0]+8
  18: (b7) r2 = 1
  19: (db) lock *(u64 *)(r1 +0) += r2
  20: (bf) r1 = r7
  21: (b7) r2 = 0
  22: (85) call bpf_ringbuf_submit#132
  23: (b7) r0 = 0
  24: (95) exit"""


def test_realistic_program_listing() -> None:
    assert format_program(REALISTIC) == REALISTIC_LISTING


def test_realistic_program_bytes_disassemble_to_the_same_listing_with_fds() -> None:
    data = assemble(REALISTIC, maps={"events": 3, "counters": 4})
    assert len(data) == 25 * 8
    expected = (REALISTIC_LISTING.replace("map[events]", "map[fd:3]")
                .replace("map[counters][0]+8", "map[fd:4][0]+8"))
    assert format_program(data) == expected
    assert format_program(disassemble(data)) == expected
    assert assemble(disassemble(data)) == data


def test_labels_forward_backward_and_shared() -> None:
    prog = [
        label("top"),
        label("also_top"),
        mov64_imm(R0, 0),                           # slot 0
        ld_imm64(R1, 1),                            # slots 1-2: a jump over it counts two slots
        jmp_imm(BPF_JGT, R0, 3, "done"),            # slot 3 -> slot 7: pc+3
        alu64_imm(BPF_ADD, R0, 1),                  # slot 4
        jmp32_reg(BPF_JNE, R0, R1, "top"),          # slot 5 -> slot 0: pc-6
        ja("also_top"),                             # slot 6 -> slot 0: pc-7
        label("done"),
        exit_insn(),                                # slot 7
    ]
    assert format_program(prog).splitlines()[2:5] == [
        "   3: (25) if r0 > 0x3 goto pc+3",
        "   4: (07) r0 += 1",
        "   5: (5e) if w0 != w1 goto pc-6",
    ]
    data = assemble(prog)
    assert data[3 * 8:4 * 8] == bytes.fromhex("2500030003000000")  # if r0 > 0x3 goto pc+3
    assert data[5 * 8:6 * 8] == bytes.fromhex("5e10faff00000000")  # if w0 != w1 goto pc-6
    assert data[6 * 8:7 * 8] == bytes.fromhex("0500f9ff00000000")  # goto pc-7


def test_symbolic_jump_prints_its_label() -> None:
    assert str(jmp_imm(BPF_JEQ, R0, 0, "out")) == "if r0 == 0x0 goto <out>"
    assert str(ja("loop")) == "goto <loop>"
