"""connect: the destination address as passed, and the result, at the syscall's exit.

connect(fd, uservaddr, addrlen): the arguments come from the task's saved registers.

The sockaddr is copied raw (at most sizeof(struct sockaddr_storage)) and decoded in user space, where a
hostile address (NULL, a too-short addrlen, an unknown family) costs a counted flag, not a verifier path.
"""
from __future__ import annotations

from kestrel_raw.asm import BPF_ADD, BPF_DW, BPF_JEQ, BPF_JGT, R0, R1, R2, R3, R8, R9, R10
from kestrel_raw.asm import alu64_imm, call, ja, jmp_imm, label, ldx_mem, mov32_reg, mov64_imm, mov64_reg, stx_mem
from kestrel_raw.programs.builder import SLOT_A, STAT_READ_FAULT, ProgramBuilder
from kestrel_raw.spec import CONNECT, FLAG_FAULT

MAX_SOCKADDR = CONNECT.addr.type.max


def build(b: ProgramBuilder, fmt, layout) -> list:
    arg = layout.syscall_args
    b.prologue()
    b.scratch()
    b.header(CONNECT, layout)
    b.pt_regs(R9)
    clamp_done = b.label("clamped")
    too_long = b.label("too_long")
    b.fill(CONNECT.ret, fmt)
    b.fill(CONNECT.fd, layout=layout, regs=R9)
    b.emit(ldx_mem(BPF_DW, R2, R9, arg[CONNECT.addrlen.source.index]))
    b.store(CONNECT.addrlen, R2)
    b.emit(
        # addrlen is a C int: one unsigned 32-bit compare clamps it and also catches a negative one.
        mov32_reg(R2, R2),
        jmp_imm(BPF_JGT, R2, MAX_SOCKADDR, too_long),
        ja(clamp_done),
    )
    b.emit(label(too_long), mov64_imm(R2, MAX_SOCKADDR), label(clamp_done))
    b.emit(
        stx_mem(BPF_DW, R10, R2, SLOT_A),
        mov64_reg(R1, R8),
        alu64_imm(BPF_ADD, R1, CONNECT.addr.offset),
        ldx_mem(BPF_DW, R3, R9, arg[1]),
        call("probe_read_user"),
        mov64_reg(R9, R0),
    )
    read_ok = b.label("read_ok")
    have_len = b.label("have_len")
    b.emit(jmp_imm(BPF_JEQ, R9, 0, read_ok))
    b.set_flag(FLAG_FAULT)
    b.count(CONNECT, STAT_READ_FAULT)
    b.emit(mov64_imm(R1, 0), ja(have_len), label(read_ok), ldx_mem(BPF_DW, R1, R10, SLOT_A), label(have_len))
    b.store(CONNECT.addr_len, R1)
    b.size_from(R1, CONNECT.addr.offset)
    b.submit(CONNECT)
    return b.epilogue()
