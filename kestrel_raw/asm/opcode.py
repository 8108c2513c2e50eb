"""Opcode parts of the eBPF instruction set, named and valued as in include/uapi/linux/bpf.h and bpf_common.h.

An instruction is 8 bytes (``struct bpf_insn``)::

    byte   0        1             2..3         4..7
         +--------+------+------+------------+--------------------+
         | opcode | src  | dst  | off (s16)  | imm (s32)          |
         +--------+------+------+------------+--------------------+
                   hi 4b  lo 4b   little-endian on every host we support (x86_64, arm64)

The opcode byte has two layouts, chosen by its low three bits (the class)::

    ALU, ALU64, JMP, JMP32          LD, LDX, ST, STX
      7  6  5  4  3   2  1  0         7  6  5   4  3   2  1  0
    +-----------+---+--------+      +--------+------+--------+
    |  op (4)   |src| class  |      |mode (3)|size 2| class  |
    +-----------+---+--------+      +--------+------+--------+

``src`` is BPF_K (use imm) or BPF_X (use the src register); for BPF_END in class ALU the same bit selects
BPF_TO_LE / BPF_TO_BE.  Atomic operations (BPF_STX | BPF_ATOMIC) carry their operation in imm, using the ALU
op values, optionally or-ed with BPF_FETCH.  BPF_LD | BPF_IMM | BPF_DW (ld_imm64) takes two 8-byte slots;
the second slot holds only the high 32 bits of the constant in its imm.
"""
from __future__ import annotations

# Instruction classes (3 bits).
BPF_LD = 0x00
BPF_LDX = 0x01
BPF_ST = 0x02
BPF_STX = 0x03
BPF_ALU = 0x04
BPF_JMP = 0x05
BPF_JMP32 = 0x06
BPF_ALU64 = 0x07

# Sizes of LD/LDX/ST/STX (2 bits, at bit 3).
BPF_W = 0x00
BPF_H = 0x08
BPF_B = 0x10
BPF_DW = 0x18

# Modes of LD/LDX/ST/STX (3 bits, at bit 5).  BPF_ABS, BPF_IND and BPF_MEMSX exist in the uapi; this
# assembler names them only to reject them with a clear message.
BPF_IMM = 0x00
BPF_ABS = 0x20
BPF_IND = 0x40
BPF_MEM = 0x60
BPF_MEMSX = 0x80
BPF_ATOMIC = 0xC0

# Source operand (1 bit, at bit 3) of ALU, ALU64, JMP, JMP32.
BPF_K = 0x00
BPF_X = 0x08

# ALU operations (4 bits, at bit 4).
BPF_ADD = 0x00
BPF_SUB = 0x10
BPF_MUL = 0x20
BPF_DIV = 0x30
BPF_OR = 0x40
BPF_AND = 0x50
BPF_LSH = 0x60
BPF_RSH = 0x70
BPF_NEG = 0x80
BPF_MOD = 0x90
BPF_XOR = 0xA0
BPF_MOV = 0xB0
BPF_ARSH = 0xC0
BPF_END = 0xD0

# Byte-order conversions: the source bit of BPF_ALU | BPF_END.
BPF_TO_LE = 0x00
BPF_TO_BE = 0x08

# Jump operations (4 bits, at bit 4).
BPF_JA = 0x00
BPF_JEQ = 0x10
BPF_JGT = 0x20
BPF_JGE = 0x30
BPF_JSET = 0x40
BPF_JNE = 0x50
BPF_JSGT = 0x60
BPF_JSGE = 0x70
BPF_CALL = 0x80
BPF_EXIT = 0x90
BPF_JLT = 0xA0
BPF_JLE = 0xB0
BPF_JSLT = 0xC0
BPF_JSLE = 0xD0

# Atomic operations, in imm of BPF_STX | BPF_ATOMIC.  BPF_FETCH is a flag, not an operation by itself.
BPF_FETCH = 0x01
BPF_XCHG = 0xE0 | BPF_FETCH
BPF_CMPXCHG = 0xF0 | BPF_FETCH

# src_reg of ld_imm64: how the verifier reads the constant.
BPF_PSEUDO_MAP_FD = 1  # imm is a map fd; the register gets the map pointer
BPF_PSEUDO_MAP_VALUE = 2  # imm is a map fd, the second imm an offset; the register gets &value[0] + offset
BPF_PSEUDO_BTF_ID = 3  # imm is a kernel variable's BTF id, the second imm its BTF object's fd (0: vmlinux)
BPF_PSEUDO_FUNC = 4  # imm is a subprogram's offset in instructions; the register gets its address (callbacks)
BPF_PSEUDO_MAP_IDX_VALUE = 5  # as MAP_VALUE, by index into the load's fd_array (not built here)

# src_reg of BPF_JMP | BPF_CALL: what imm means.  0: a helper by id.
BPF_PSEUDO_CALL = 1  # a bpf-to-bpf call: imm is the callee's offset in instructions from the next one
BPF_PSEUDO_KFUNC_CALL = 2  # a kernel function: imm is its BTF id

# Forms only the verifier writes, in the code the kernel keeps (include/linux/filter.h), decoded by
# xlated.py: off of BPF_ALU64 | BPF_MOV | BPF_X that makes it the per-CPU address move
# (BPF_MOV64_PERCPU_REG, Linux 6.8+), and the mode of BPF_ST that makes it the speculation barrier.
BPF_ADDR_PERCPU = -1
BPF_NOSPEC = 0xC0


def BPF_CLASS(code: int) -> int:
    return code & 0x07


def BPF_SIZE(code: int) -> int:
    return code & 0x18


def BPF_MODE(code: int) -> int:
    return code & 0xE0


def BPF_OP(code: int) -> int:
    return code & 0xF0


def BPF_SRC(code: int) -> int:
    return code & 0x08


# Names, for messages and the disassembler.
CLASS_NAMES = {
    BPF_LD: "BPF_LD", BPF_LDX: "BPF_LDX", BPF_ST: "BPF_ST", BPF_STX: "BPF_STX",
    BPF_ALU: "BPF_ALU", BPF_JMP: "BPF_JMP", BPF_JMP32: "BPF_JMP32", BPF_ALU64: "BPF_ALU64",
}
SIZE_NAMES = {BPF_W: "BPF_W", BPF_H: "BPF_H", BPF_B: "BPF_B", BPF_DW: "BPF_DW"}
SIZE_BYTES = {BPF_B: 1, BPF_H: 2, BPF_W: 4, BPF_DW: 8}
MODE_NAMES = {
    BPF_IMM: "BPF_IMM", BPF_ABS: "BPF_ABS", BPF_IND: "BPF_IND", BPF_MEM: "BPF_MEM",
    BPF_MEMSX: "BPF_MEMSX", BPF_ATOMIC: "BPF_ATOMIC",
}
ALU_OP_NAMES = {
    BPF_ADD: "BPF_ADD", BPF_SUB: "BPF_SUB", BPF_MUL: "BPF_MUL", BPF_DIV: "BPF_DIV", BPF_OR: "BPF_OR",
    BPF_AND: "BPF_AND", BPF_LSH: "BPF_LSH", BPF_RSH: "BPF_RSH", BPF_NEG: "BPF_NEG", BPF_MOD: "BPF_MOD",
    BPF_XOR: "BPF_XOR", BPF_MOV: "BPF_MOV", BPF_ARSH: "BPF_ARSH", BPF_END: "BPF_END",
}
JMP_OP_NAMES = {
    BPF_JA: "BPF_JA", BPF_JEQ: "BPF_JEQ", BPF_JGT: "BPF_JGT", BPF_JGE: "BPF_JGE", BPF_JSET: "BPF_JSET",
    BPF_JNE: "BPF_JNE", BPF_JSGT: "BPF_JSGT", BPF_JSGE: "BPF_JSGE", BPF_CALL: "BPF_CALL",
    BPF_EXIT: "BPF_EXIT", BPF_JLT: "BPF_JLT", BPF_JLE: "BPF_JLE", BPF_JSLT: "BPF_JSLT", BPF_JSLE: "BPF_JSLE",
}
# Conditional jumps: every jump op but JA, CALL and EXIT.
COND_JMP_OPS = frozenset(JMP_OP_NAMES) - {BPF_JA, BPF_CALL, BPF_EXIT}
# ALU ops that take an operand (everything but NEG and END, which have their own forms).
BINARY_ALU_OPS = frozenset(ALU_OP_NAMES) - {BPF_NEG, BPF_END}
ATOMIC_OP_NAMES = {
    BPF_ADD: "BPF_ADD", BPF_OR: "BPF_OR", BPF_AND: "BPF_AND", BPF_XOR: "BPF_XOR",
    BPF_ADD | BPF_FETCH: "BPF_ADD | BPF_FETCH", BPF_OR | BPF_FETCH: "BPF_OR | BPF_FETCH",
    BPF_AND | BPF_FETCH: "BPF_AND | BPF_FETCH", BPF_XOR | BPF_FETCH: "BPF_XOR | BPF_FETCH",
    BPF_XCHG: "BPF_XCHG", BPF_CMPXCHG: "BPF_CMPXCHG",
}

# The one two-slot opcode.
LD_IMM64 = BPF_LD | BPF_IMM | BPF_DW


def describe(code: int) -> str:
    """``0xbf`` -> ``'0xbf (BPF_ALU64 | BPF_MOV | BPF_X)'``: an opcode spelled out for error messages."""
    cls = BPF_CLASS(code)
    if cls in (BPF_ALU, BPF_ALU64, BPF_JMP, BPF_JMP32):
        ops = ALU_OP_NAMES if cls in (BPF_ALU, BPF_ALU64) else JMP_OP_NAMES
        op = ops.get(BPF_OP(code), f"op 0x{BPF_OP(code):02x}")
        parts = [CLASS_NAMES[cls], op, "BPF_X" if BPF_SRC(code) else "BPF_K"]
    else:
        mode = MODE_NAMES.get(BPF_MODE(code), f"mode 0x{BPF_MODE(code):02x}")
        parts = [CLASS_NAMES[cls], SIZE_NAMES[BPF_SIZE(code)], mode]
    return f"0x{code:02x} ({' | '.join(parts)})"


# Every kernel-named constant and macro (BPF_*); ``from kestrel_raw.asm import *`` re-exports these.
__all__ = sorted(name for name in globals() if name.startswith("BPF_"))
