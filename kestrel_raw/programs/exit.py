"""exit: one record per process exit (the last thread of the group), with the raw exit code.

``group_dead`` is in sched_process_exit's format from 6.18 on; before that, the same fact is
``task->signal->live == 0``: do_exit() decrements it before the tracepoint fires.
"""
from __future__ import annotations

from kestrel_raw.asm import BPF_JEQ, BPF_JNE, BPF_W, R1, R10, jmp_imm, ldx_mem
from kestrel_raw.programs.builder import SLOT_A, SLOT_TASK, ProgramBuilder
from kestrel_raw.spec import EXIT

SIGNAL_LIVE = "task_struct.signal.live.counter"


def build(b: ProgramBuilder, fmt, layout) -> list:
    b.prologue()
    if fmt.has_field("group_dead"):
        b.load_ctx(R1, fmt.field("group_dead"))
        b.emit(jmp_imm(BPF_JEQ, R1, 0, "out"))
        b.scratch()
        b.header(EXIT, layout)
    else:
        b.scratch()
        b.header(EXIT, layout)
        b.load_kernel_chain(layout.hops(SIGNAL_LIVE), R10, SLOT_A, base_slot=SLOT_TASK)
        b.emit(ldx_mem(BPF_W, R1, R10, SLOT_A), jmp_imm(BPF_JNE, R1, 0, "out"))
    b.fill(EXIT.exit_code, layout=layout)
    b.store_imm(EXIT._pad1, 0)
    b.size_const(EXIT.fixed_size)
    b.submit(EXIT)
    return b.epilogue()
