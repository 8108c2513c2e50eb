"""fork: each new process (and, with ``--threads``, each new thread), at sched_process_fork.

A tp_btf program (BPF_PROG_TYPE_TRACING, attached to the raw tracepoint through its BTF type
``btf_trace_sched_process_fork``): its context is the tracepoint's arguments, ``(struct task_struct
*parent, struct task_struct *child)``, BTF-typed, so the child's fields are plain loads.  The classic
tracepoint gives only the child's pid and comm (whose fields are char[16] on 6.1 and 6.12 and __data_loc on
6.18), not the child's thread group or start time, which its entity_key is made from.

The record's header describes the child (``ProgramBuilder.header(subject=...)``): pid its tgid, tid its
pid, start_ns its start time (so the event's entity_key is the child's), ppid and parent_start_ns its real
parent.  It goes into the child's ring (``submit`` picks the ring by the record's pid), ahead of anything the
child does: the tracepoint fires before the child is first woken.  A new process's record carries its
context (kestrel_raw/programs/context.py): the namespaces and nodename read from the child (a clone can make
new ones), the executable and working directory walked from the parent, which the child has at this moment.
A thread's carries none: it shares its process's.
"""
from __future__ import annotations

from kestrel_raw.asm import BPF_DW, BPF_JEQ, BPF_W, R0, R1, R2, R6, R7, R10, call, ja, jmp_reg, label, ldx_mem, mov64_reg
from kestrel_raw.asm import stx_mem
from kestrel_raw.programs.builder import MAP_FORK_TAILS, SLOT_SUBJECT, TAIL_FORK_EXE, ProgramBuilder
from kestrel_raw.programs.context import fill_context, submit_record, zero_context
from kestrel_raw.spec import FORK, FORK_THREAD

BTF_TARGET = "sched_process_fork"  # the tracepoint, whose BTF typedef btf_trace_<name> is the attach target
CTX_CHILD = 8  # the tracepoint's second argument: struct task_struct *child (ctx is an array of u64)


def build(b: ProgramBuilder, fmt, layout) -> list:
    # The filter is the child's (the record's subject): a child of a collector is reported like any other
    # process, a thread of one (the check after attaching starts one) is the collector's own.
    pid_off = layout.offset("task_struct.pid", 4)
    tgid_off = layout.offset("task_struct.tgid", 4)
    b.emit(mov64_reg(R6, R1), call("get_current_pid_tgid"), mov64_reg(R7, R0),
           ldx_mem(BPF_DW, R1, R6, CTX_CHILD), stx_mem(BPF_DW, R10, R1, SLOT_SUBJECT),
           ldx_mem(BPF_W, R1, R1, tgid_off))
    b.skip_filtered("out", tgid_loaded=True)
    process = b.label("process")
    b.emit(ldx_mem(BPF_DW, R1, R10, SLOT_SUBJECT), ldx_mem(BPF_W, R2, R1, pid_off), ldx_mem(BPF_W, R1, R1, tgid_off),
           jmp_reg(BPF_JEQ, R1, R2, process))
    if b.threads:
        b.scratch()
        b.header(FORK, layout, subject=SLOT_SUBJECT)
        b.store_imm(FORK.fork_flags, FORK_THREAD)
        b.store_imm(FORK._pad1, 0)
        zero_context(b, FORK)
        submit_record(b, FORK)
    b.emit(ja("out"))  # a thread, without --threads: nothing
    b.emit(label(process))
    b.scratch()
    b.header(FORK, layout, subject=SLOT_SUBJECT)
    b.store_imm(FORK.fork_flags, 0)
    b.store_imm(FORK._pad1, 0)
    fill_context(b, FORK, layout, subject=SLOT_SUBJECT)
    b.tail_call(TAIL_FORK_EXE, MAP_FORK_TAILS)
    submit_record(b, FORK)
    return b.epilogue()
