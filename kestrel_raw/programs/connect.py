"""connect: the destination address as passed, and the result, joined from enter and exit.

The sockaddr is copied raw (at most sizeof(struct sockaddr_storage)) and decoded in user space, where a
hostile address (NULL, a too-short addrlen, an unknown family) costs a counted flag, not a verifier path.
"""
from __future__ import annotations

from .. import wire
from ..asm import BPF_ADD, BPF_DW, BPF_JEQ, BPF_JGT, BPF_W, R0, R1, R2, R3, R8, R9, R10
from ..asm import alu64_imm, call, ja, jmp_imm, label, ldx_mem, mov32_reg, mov64_imm, mov64_reg, stx_mem
from .builder import MAP_PENDING_CONNECT, SLOT_A, SLOT_PENDING_VALUE, STAT_READ_FAULT, ProgramBuilder

KIND = wire.KIND_CONNECT

P_ADDR = 0
P_ADDRLEN = 8
P_FD = 16


def build_enter(b: ProgramBuilder, fmt) -> list:
    b.prologue()
    v = SLOT_PENDING_VALUE
    b.load_ctx(R1, fmt.field("uservaddr"))
    b.emit(stx_mem(BPF_DW, R10, R1, v + P_ADDR))
    b.load_ctx(R1, fmt.field("addrlen"))
    b.emit(stx_mem(BPF_DW, R10, R1, v + P_ADDRLEN))
    b.load_ctx(R1, fmt.field("fd"))
    b.emit(stx_mem(BPF_DW, R10, R1, v + P_FD))
    # Bytes 24..39 of the pending value are unused; the map copies all 40, so they must be initialised.
    b.emit(mov64_imm(R1, 0), stx_mem(BPF_DW, R10, R1, v + 24), stx_mem(BPF_DW, R10, R1, v + 32))
    b.pending_store(MAP_PENDING_CONNECT, KIND)
    return b.epilogue()


def build_exit(b: ProgramBuilder, fmt, layout) -> list:
    b.prologue(filtered=False)
    b.pending_lookup(MAP_PENDING_CONNECT, KIND)
    b.scratch()
    b.header(KIND, layout)
    clamp_done = b.label("clamped")
    too_long = b.label("too_long")
    b.load_ctx(R1, fmt.field("ret"))
    b.emit(
        stx_mem(BPF_W, R8, R1, wire.CONNECT_RET),
        ldx_mem(BPF_DW, R1, R9, P_FD),
        stx_mem(BPF_W, R8, R1, wire.CONNECT_FD),
        ldx_mem(BPF_DW, R2, R9, P_ADDRLEN),
        stx_mem(BPF_W, R8, R2, wire.CONNECT_ADDRLEN),
        # addrlen is a C int: one unsigned 32-bit compare clamps it and also catches a negative one.
        mov32_reg(R2, R2),
        jmp_imm(BPF_JGT, R2, wire.MAX_SOCKADDR, too_long),
        ja(clamp_done),
    )
    b.emit(label(too_long), mov64_imm(R2, wire.MAX_SOCKADDR), label(clamp_done))
    b.emit(
        stx_mem(BPF_DW, R10, R2, SLOT_A),
        mov64_reg(R1, R8),
        alu64_imm(BPF_ADD, R1, wire.CONNECT_ADDR),
        ldx_mem(BPF_DW, R3, R9, P_ADDR),
        call("probe_read_user"),
        mov64_reg(R9, R0),
    )
    b.pending_delete(MAP_PENDING_CONNECT)
    read_ok = b.label("read_ok")
    have_len = b.label("have_len")
    b.emit(jmp_imm(BPF_JEQ, R9, 0, read_ok))
    b.set_flag(wire.FLAG_FAULT)
    b.count(KIND, STAT_READ_FAULT)
    b.emit(mov64_imm(R1, 0), ja(have_len), label(read_ok), ldx_mem(BPF_DW, R1, R10, SLOT_A), label(have_len))
    b.emit(stx_mem(BPF_W, R8, R1, wire.CONNECT_ADDR_LEN))
    b.size_from(R1, wire.CONNECT_ADDR)
    b.submit(KIND)
    return b.epilogue()
