"""exit: one record per process exit (the last thread of the group), with the raw exit code.

``group_dead`` is in sched_process_exit's format from 6.18 on; before that, the same fact is
``task->signal->live == 0``: do_exit() decrements it before the tracepoint fires.
"""
from __future__ import annotations

from kestrel_raw.codec import wire
from kestrel_raw.asm import BPF_JEQ, BPF_JNE, BPF_W, R1, R8, R10, jmp_imm, ldx_mem, st_mem
from kestrel_raw.programs.builder import SLOT_A, SLOT_TASK, ProgramBuilder

KIND = wire.KIND_EXIT


def build(b: ProgramBuilder, fmt, layout) -> list:
    b.prologue()
    if fmt.has_field("group_dead"):
        b.load_ctx(R1, fmt.field("group_dead"))
        b.emit(jmp_imm(BPF_JEQ, R1, 0, "out"))
        b.scratch()
        b.header(KIND, layout)
    else:
        b.scratch()
        b.header(KIND, layout)
        b.load_kernel_chain(layout.signal_live, R10, SLOT_A, base_slot=SLOT_TASK)
        b.emit(ldx_mem(BPF_W, R1, R10, SLOT_A), jmp_imm(BPF_JNE, R1, 0, "out"))
    b.load_kernel_chain(layout.exit_code, R8, wire.EXIT_CODE)
    b.emit(st_mem(BPF_W, R8, wire.EXIT_RESERVED, 0))
    b.size_const(wire.EXIT_SIZE)
    b.submit(KIND)
    return b.epilogue()
