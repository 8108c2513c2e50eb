"""Syscall arguments copied at the syscall's entry, so that the events say what the kernel acted on.

An argument in the caller's memory (a path, a sockaddr) can be rewritten by another thread while the
syscall runs: read at the exit, it may name something the kernel never touched (TOCTOU).  The kernel
copies such an argument right after the sys_enter tracepoint; an entry program copies it there too, into
the thread's slot of a task storage map (``kr_entry``), and the exit program takes it from there:

- the exit program reads the argument again from user memory and compares: a difference means someone
  rewrote it during the syscall (the record's TOCTOU flag), and the event carries the entry copy;
- an entry read that failed (the page was not in memory yet: a user pointer into an untouched page reads
  as -EFAULT before the syscall faults it in) or a missing entry (the syscall began before the collector
  attached) leaves the exit read, flagged LATE_READ.

The slot of a thread: ``marker`` (which syscall armed it; 0 once the exit took it), ``rc`` (the read's
result: a string's length with its NUL, a sockaddr's length, or -errno), then the bytes.  A thread is in
one syscall at a time, so one slot serves every syscall.  Task storage belongs to the task: the kernel
frees a thread's slot when the thread exits, and takes the memory only for threads that made such a call
(about 4 KiB each, charged to the collector's memory cgroup).
"""
from __future__ import annotations

from kestrel_raw.asm import BPF_ADD, BPF_AND, BPF_DW, BPF_JEQ, BPF_JGE, BPF_JGT, BPF_JNE, BPF_LSH, BPF_RSH
from kestrel_raw.asm import BPF_SUB, BPF_W, R0, R1, R2, R3, R4, R5, R8, R10, alu64_imm, alu64_reg
from kestrel_raw.asm import call, ja, jmp_imm, jmp_reg, label, ld_map_fd, ldx_mem, mov32_reg, mov64_imm
from kestrel_raw.asm import mov64_reg, st_mem, stx_mem
from kestrel_raw.kernel.uapi import BPF_LOCAL_STORAGE_GET_F_CREATE
from kestrel_raw.programs import filter
from kestrel_raw.programs.builder import SLOT_TASK, ProgramBuilder
from kestrel_raw.spec import MAX_PATH, MAX_SOCKADDR, Kind

MAP_ENTRY = "kr_entry"  # BPF_MAP_TYPE_TASK_STORAGE: one slot per thread, created on the thread's first call

# The slot's layout.
ENTRY_MARKER = 0  # u32
ENTRY_RC = 4  # s32
ENTRY_DATA = 8
# A string read takes at most MAX_PATH + 2 bytes (see open.PATH_READ); the compare reads whole 8-byte words
# up to 8 bytes past the last one it needs.
ENTRY_DATA_SIZE = MAX_PATH + 2 + 14
ENTRY_VALUE_SIZE = ENTRY_DATA + ENTRY_DATA_SIZE
STRING_READ = MAX_PATH + 2  # bytes a path read may take: one more than the limit, plus the NUL

# Markers: which syscall's entry filled the slot.
MARK_OPENAT = 1
MARK_OPENAT2 = 2
MARK_CONNECT = 3



def task_slot(b: ProgramBuilder, create: bool, missing: str, map_name: str = MAP_ENTRY) -> None:
    """r0 = this thread's slot of the task storage ``map_name`` (created when ``create``); jump to ``missing``
    when there is none.  Needs the BTF task pointer in SLOT_TASK."""
    b.emit(
        ld_map_fd(R1, map_name),
        ldx_mem(BPF_DW, R2, R10, SLOT_TASK),
        mov64_imm(R3, 0),
        mov64_imm(R4, BPF_LOCAL_STORAGE_GET_F_CREATE if create else 0),
        call("task_storage_get"),
        jmp_imm(BPF_JEQ, R0, 0, missing),
    )


def build_string_entry(b: ProgramBuilder, fmt, kind: Kind, arg: str, marker: int) -> list:
    """sys_enter_<syscall>: copy the string argument ``arg`` (a tracefs format field: the user pointer) into
    the thread's slot; not for an event of ``kind`` the filters drop on the task's keys alone."""
    b.prologue(filtered=False)
    filter.apply_early(b, kind, build_header=True, count=False)
    b.emit(call("get_current_task_btf"), stx_mem(BPF_DW, R10, R0, SLOT_TASK))
    task_slot(b, create=True, missing="out")
    b.emit(mov64_reg(R8, R0), st_mem(BPF_W, R8, ENTRY_MARKER, marker), mov64_reg(R1, R8),
           alu64_imm(BPF_ADD, R1, ENTRY_DATA), mov64_imm(R2, STRING_READ))
    b.load_ctx(R3, fmt.field(arg))
    b.emit(call("probe_read_user_str"), stx_mem(BPF_W, R8, R0, ENTRY_RC))
    return b.epilogue()


def build_sockaddr_entry(b: ProgramBuilder, fmt, kind: Kind, marker: int) -> list:
    """sys_enter_connect: copy the sockaddr (at most sizeof(struct sockaddr_storage), as many bytes as
    addrlen says) into the thread's slot; rc = the bytes copied, or -errno.  Not for an event of ``kind`` the
    filters drop on the task's keys alone."""
    b.prologue(filtered=False)
    filter.apply_early(b, kind, build_header=True, count=False)
    b.emit(call("get_current_task_btf"), stx_mem(BPF_DW, R10, R0, SLOT_TASK))
    task_slot(b, create=True, missing="out")
    clamped, fits = b.label("clamped"), b.label("fits")
    b.emit(mov64_reg(R8, R0), st_mem(BPF_W, R8, ENTRY_MARKER, marker))
    b.load_ctx(R2, fmt.field("addrlen"))
    b.emit(
        # addrlen is a C int: one unsigned 32-bit compare clamps it and also catches a negative one.
        mov32_reg(R2, R2),
        jmp_imm(BPF_JGT, R2, MAX_SOCKADDR, clamped),
        ja(fits),
    )
    b.emit(label(clamped), mov64_imm(R2, MAX_SOCKADDR), label(fits),
           stx_mem(BPF_W, R8, R2, ENTRY_RC), mov64_reg(R1, R8), alu64_imm(BPF_ADD, R1, ENTRY_DATA))
    b.load_ctx(R3, fmt.field("uservaddr"))
    read_ok = b.label("read_ok")
    b.emit(call("probe_read_user"), jmp_imm(BPF_JEQ, R0, 0, read_ok), stx_mem(BPF_W, R8, R0, ENTRY_RC),
           label(read_ok))
    return b.epilogue()


def take(b: ProgramBuilder, marker: int, slot: int, none: str) -> None:
    """In an exit program: *(r10 + slot) = this thread's slot if the entry of this syscall armed it (and
    disarm it: a later call whose entry was not seen must not find it); else jump to ``none``."""
    task_slot(b, create=False, missing=none)
    b.emit(
        ldx_mem(BPF_W, R1, R0, ENTRY_MARKER),
        jmp_imm(BPF_JNE, R1, marker, none),
        st_mem(BPF_W, R0, ENTRY_MARKER, 0),
        stx_mem(BPF_DW, R10, R0, slot),
    )


def compare(b: ProgramBuilder, slot: int, record_off: int, n: int, max_n: int, differ: str, same: str) -> None:
    """Jump to ``same`` when the ``n`` bytes (n a register, at most ``max_n``) at record + record_off equal
    the slot's data (the slot pointer in ``slot``), else to ``differ``.  Word by word: a bounded loop of at
    most max_n / 8 turns, then the last partial word under a mask.  r0-r5 are clobbered; r6 and r8 kept."""
    loop, tail = b.label("cmp_loop"), b.label("cmp_tail")
    b.emit(
        jmp_imm(BPF_JGT, n, max_n, differ),  # never, but it bounds n for the verifier
        mov64_reg(R2, n),
        alu64_imm(BPF_RSH, R2, 3),  # r2: whole words
        mov64_reg(R5, n),
        alu64_imm(BPF_AND, R5, 7),  # r5: bytes of the last, partial word
        ldx_mem(BPF_DW, R0, R10, slot),
        alu64_imm(BPF_ADD, R0, ENTRY_DATA),  # r0: the entry copy
        mov64_imm(R1, 0),  # r1: the word index
        label(loop),
        jmp_reg(BPF_JGE, R1, R2, tail),
        *_words(R1, record_off),
        jmp_reg(BPF_JNE, R3, R4, differ),
        alu64_imm(BPF_ADD, R1, 1),
        ja(loop),
        label(tail),
        jmp_imm(BPF_JEQ, R5, 0, same),
        *_words(R2, record_off),
        # mask = (1 << 8 * r5) - 1: the bytes up to and with the NUL (the rest of the word is stale)
        alu64_imm(BPF_LSH, R5, 3),
        mov64_imm(R1, 1),
        alu64_reg(BPF_LSH, R1, R5),
        alu64_imm(BPF_SUB, R1, 1),
        alu64_reg(BPF_AND, R3, R1),
        alu64_reg(BPF_AND, R4, R1),
        jmp_reg(BPF_JNE, R3, R4, differ),
        ja(same),
    )


def _words(index: int, record_off: int) -> tuple:
    """r4 = the record's word ``index`` (a register) from record_off, r3 = the entry copy's (r0 points at it)."""
    return (
        mov64_reg(R3, index),
        alu64_imm(BPF_LSH, R3, 3),
        mov64_reg(R4, R8),
        alu64_imm(BPF_ADD, R4, record_off),
        alu64_reg(BPF_ADD, R4, R3),
        ldx_mem(BPF_DW, R4, R4, 0),
        alu64_reg(BPF_ADD, R3, R0),
        ldx_mem(BPF_DW, R3, R3, 0),
    )


def copy_in(b: ProgramBuilder, slot: int, record_off: int, n: int, max_n: int) -> None:
    """record + record_off = the slot's first ``n`` bytes (n a register, at most max_n).  r0-r5 clobbered."""
    done = b.label("copied")
    b.emit(
        mov64_reg(R2, n),
        jmp_imm(BPF_JGT, R2, max_n, done),  # never, but it bounds the size for the verifier
        mov64_reg(R1, R8),
        alu64_imm(BPF_ADD, R1, record_off),
        ldx_mem(BPF_DW, R3, R10, slot),
        alu64_imm(BPF_ADD, R3, ENTRY_DATA),
        call("probe_read_kernel"),
        label(done),
    )


__all__ = ["MAP_ENTRY", "ENTRY_VALUE_SIZE", "MARK_OPENAT", "MARK_OPENAT2", "MARK_CONNECT", "STRING_READ",
           "build_string_entry", "build_sockaddr_entry", "take", "compare", "copy_in"]
