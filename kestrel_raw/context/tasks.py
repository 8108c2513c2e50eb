"""Every process's exact start time, read from the kernel by a BPF task iterator.

The kernel events' ``entity_key`` is ``entity_key(pid, task->group_leader->start_time)``, where
``start_time`` is CLOCK_MONOTONIC in ns (since 5.5; it was boot-based before).  /proc cannot give that
value: /proc/PID/stat's ``starttime`` is ``task->start_boottime`` (CLOCK_BOOTTIME, plus the reader's time
namespace offset) divided down to clock ticks (USER_HZ, 100 a second: 10 ms), and the two clocks differ by
the time the machine spent suspended before the process started.  A key computed from /proc would
therefore never equal the kernel's.  So the process table (proctable.py) takes each process's start time
from this iterator, which reads ``start_time`` itself, exactly as the event programs do.

The program is a ``bpf_iter_task`` iterator (BPF_PROG_TYPE_TRACING, attach type BPF_TRACE_ITER; 5.8+, no
trampoline, so it runs where fentry is refused): for each task that leads its thread group (``pid ==
tgid``) it writes one 24-byte row with ``bpf_seq_write``::

    u32 tgid, u32 ppid (real_parent->tgid, as /proc/PID/stat has it), u64 start_time, u64 start_boottime

Member offsets come from the kernel's BTF at load time.  ``start_boottime`` lets a caller tie a row to the
/proc entry it read (same tick count: the same incarnation of the pid) and is what the tests check the
relationship above with.  Loading needs CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN): call it before the
collector drops its privileges.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from kestrel_raw.asm import (
    BPF_ADD, BPF_DW, BPF_JEQ, BPF_JNE, BPF_W, R0, R1, R2, R3, R6, R7, R10, Sourced, alu64_imm, btf_member, call,
    comment, exit_insn, jmp_imm, jmp_reg, label, ldx_mem, mov64_imm, mov64_reg, stx_mem,
)
from kestrel_raw.btf import BTF

ROW = struct.Struct("<IIQQ")
ITER_TARGET = "bpf_iter_task"       # the kernel function whose BTF id names the iterator target
PROG_NAME = "kr_tasks"
# struct bpf_iter__task { struct bpf_iter_meta *meta; struct task_struct *task; }, and bpf_iter_meta's first
# member is the seq_file: offsets from BTF like the rest (checked by the tests).
_CTX = "bpf_iter__task"


@dataclass(frozen=True, slots=True)
class TaskStart:
    """One thread-group leader as the iterator saw it."""
    tgid: int
    ppid: int
    start_ns: int        # task->start_time: CLOCK_MONOTONIC ns, what the events' entity_key is made from
    boottime_ns: int     # task->start_boottime: CLOCK_BOOTTIME ns, what /proc/PID/stat's starttime counts

    def stat_ticks(self, clk_tck: int) -> int:
        """The ``starttime`` /proc/PID/stat shows for this task (outside any time namespace)."""
        return self.boottime_ns * clk_tck // 1_000_000_000


def _offset(btf: BTF, struct_name: str, member: str) -> Sourced:
    t = btf.find(struct_name, "struct")
    return Sourced(btf.member(t, member).offset, btf_member(f"{struct_name}.{member}", t.id))


def task_iter_insns(btf: BTF) -> list:
    """The iterator program, with its kernel layout constants from ``btf`` (annotated with where from)."""
    task_at = _offset(btf, _CTX, "task")
    meta_at = _offset(btf, _CTX, "meta")
    seq_at = _offset(btf, "bpf_iter_meta", "seq")
    pid, tgid = _offset(btf, "task_struct", "pid"), _offset(btf, "task_struct", "tgid")
    parent = _offset(btf, "task_struct", "real_parent")
    start, boot = _offset(btf, "task_struct", "start_time"), _offset(btf, "task_struct", "start_boottime")
    row = -ROW.size
    return [
        mov64_reg(R6, R1),
        comment("the task; NULL once, after the last"),
        ldx_mem(BPF_DW, R7, R6, task_at),
        jmp_imm(BPF_JEQ, R7, 0, "out"),
        comment("thread-group leaders only: one row per process"),
        ldx_mem(BPF_W, R1, R7, pid),
        ldx_mem(BPF_W, R2, R7, tgid),
        jmp_reg(BPF_JNE, R1, R2, "out"),
        stx_mem(BPF_W, R10, R2, row),
        comment("ppid = task->real_parent->tgid"),
        ldx_mem(BPF_DW, R1, R7, parent),
        ldx_mem(BPF_W, R1, R1, tgid),
        stx_mem(BPF_W, R10, R1, row + 4),
        comment("the start times"),
        ldx_mem(BPF_DW, R1, R7, start),
        stx_mem(BPF_DW, R10, R1, row + 8),
        ldx_mem(BPF_DW, R1, R7, boot),
        stx_mem(BPF_DW, R10, R1, row + 16),
        comment("bpf_seq_write(ctx->meta->seq, row, sizeof row)"),
        ldx_mem(BPF_DW, R1, R6, meta_at),
        ldx_mem(BPF_DW, R1, R1, seq_at),
        mov64_reg(R2, R10),
        alu64_imm(BPF_ADD, R2, row),
        mov64_imm(R3, ROW.size),
        call("seq_write"),
        label("out"),
        mov64_imm(R0, 0),
        exit_insn(),
    ]


def parse_rows(data: bytes) -> dict[int, TaskStart]:
    """The rows the iterator wrote, by tgid.  A length that is not a whole number of rows is a bug: raise."""
    if len(data) % ROW.size:
        raise ValueError(f"task iterator output is {len(data)} bytes, not a multiple of its {ROW.size}-byte row")
    return {row[0]: TaskStart(*row) for row in ROW.iter_unpack(data)}


def read_task_starts(btf: BTF | None = None) -> dict[int, TaskStart]:
    """Every process's (thread-group leader's) start times and parent, from one pass of the iterator.

    Loads the program, attaches it, reads the iterator to its end, and closes everything.  Raises
    ``BPFError``/``VerifierError`` when the kernel refuses (no CAP_BPF/CAP_PERFMON, or a kernel before 5.8).
    """
    from kestrel_raw.kernel import bpf
    from kestrel_raw.kernel.prog import Program
    from kestrel_raw.kernel.uapi import BPF_PROG_TYPE_TRACING, BPF_TRACE_ITER

    btf = btf or BTF.load()
    target = btf.find(ITER_TARGET, "func")
    with Program(task_iter_insns(btf), prog_type=BPF_PROG_TYPE_TRACING, name=PROG_NAME,
                 expected_attach_type=BPF_TRACE_ITER, attach_btf_id=target.id) as prog:
        with bpf.link_create(prog.fd, 0, BPF_TRACE_ITER) as link, bpf.iter_create(link.fd) as it:
            chunks = []
            while chunk := os.read(it.fd, 1 << 16):
                chunks.append(chunk)
    return parse_rows(b"".join(chunks))


__all__ = ["ROW", "TaskStart", "parse_rows", "read_task_starts", "task_iter_insns"]
