"""exec: each successful execve/execveat, with the file name and the argv the new program sees.

FLAG_TRUNCATED: the argument area was longer than MAX_ARGS, or the file name longer than MAX_FILENAME - 1.

At sched:sched_process_exec the new image is in place: comm is the new one, and ``current->mm`` is the new
mm, whose argument area [arg_start, arg_end) holds argv as NUL-separated strings, already written by the
kernel (so the pages are present).  The file name is the tracepoint's ``__data_loc char[] filename``:
a u32 holding (length << 16 | offset from the start of the record).
"""
from __future__ import annotations

from kestrel_raw.asm import BPF_ADD, BPF_AND, BPF_DW, BPF_JEQ, BPF_JGT, BPF_JSGT, BPF_RSH, BPF_SUB, R0, R1, R2, R3
from kestrel_raw.asm import R6, R8, R9, R10, alu64_imm, alu64_reg, call, ja, jmp_imm, label, ldx_mem, mov64_imm
from kestrel_raw.asm import mov64_reg, stx_mem
from kestrel_raw.programs.builder import SLOT_A, SLOT_B, SLOT_SIZE, STAT_READ_FAULT, ProgramBuilder, put
from kestrel_raw.spec import EXEC, FLAG_FAULT, FLAG_TRUNCATED

MAX_FILENAME = EXEC.filename.type.max
MAX_ARGS = EXEC.args.type.max
ARG_START = "task_struct.mm.arg_start"
ARG_END = "task_struct.mm.arg_end"


def build(b: ProgramBuilder, fmt, layout) -> list:
    b.prologue()
    b.scratch()
    b.header(EXEC, layout)

    # File name: copy it out of the tracepoint record (ctx + offset), at most MAX_FILENAME bytes.  It can
    # be longer than PATH_MAX: execveat(dirfd, "<4095-byte relative path>") names the file
    # "/dev/fd/<dirfd>/<path>".  The __data_loc length (NUL included) says so: flag the cut.
    name_ok = b.label("name_ok")
    name_cut = b.label("name_cut")
    name_read = b.label("name_read")
    b.load_ctx(R3, fmt.field("filename"))
    b.emit(
        mov64_reg(R2, R3),
        alu64_imm(BPF_RSH, R2, 16),
        jmp_imm(BPF_JGT, R2, MAX_FILENAME, name_cut),
        ja(name_read),
        label(name_cut),
    )
    b.set_flag(FLAG_TRUNCATED)  # clobbers r1 only: r3 still holds the __data_loc
    b.emit(
        label(name_read),
        alu64_imm(BPF_AND, R3, 0xFFFF),
        alu64_reg(BPF_ADD, R3, R6),
        mov64_reg(R1, R8),
        alu64_imm(BPF_ADD, R1, EXEC.filename.offset),
        mov64_imm(R2, MAX_FILENAME),
        call("probe_read_kernel_str"),
        # r0 = length with the NUL, or < 0.  filename_len = r0 - 1, bounded for the verifier.
        mov64_reg(R9, R0),
        jmp_imm(BPF_JSGT, R9, 0, name_ok),
        mov64_imm(R9, 1),
        label(name_ok),
        alu64_imm(BPF_ADD, R9, -1),
        jmp_imm(BPF_JGT, R9, MAX_FILENAME - 1, "out"),
    )
    b.store(EXEC.filename_len, R9)

    # Argument area of the new mm.
    b.load_kernel_chain(layout.hops(ARG_START), R10, SLOT_A)
    b.load_kernel_chain(layout.hops(ARG_END), R10, SLOT_B)
    clamp = b.label("clamp")
    have_total = b.label("have_total")
    read = b.label("read")
    truncate = b.label("truncate")
    b.emit(
        ldx_mem(BPF_DW, R2, R10, SLOT_B),
        ldx_mem(BPF_DW, R1, R10, SLOT_A),
        alu64_reg(BPF_SUB, R2, R1),
        # A hostile or half-built mm could give arg_end < arg_start: that is 0 bytes, not 2**64.
        jmp_imm(BPF_JGT, R2, 0x7FFFFFFF, clamp),
        ja(have_total),
        label(clamp),
        mov64_imm(R2, 0),
        label(have_total),
        put(EXEC.args_total, R2),
        jmp_imm(BPF_JGT, R2, MAX_ARGS, truncate),
        ja(read),
    )
    b.emit(label(truncate))
    b.set_flag(FLAG_TRUNCATED)
    b.emit(
        mov64_imm(R2, MAX_ARGS),
        label(read),
        stx_mem(BPF_DW, R10, R2, SLOT_SIZE),  # args length, until the read succeeds
        mov64_reg(R1, R8),
        alu64_imm(BPF_ADD, R1, EXEC.filename.offset),
        alu64_reg(BPF_ADD, R1, R9),
        ldx_mem(BPF_DW, R3, R10, SLOT_A),
        call("probe_read_user"),
    )
    args_ok = b.label("args_ok")
    args_done = b.label("args_done")
    b.emit(jmp_imm(BPF_JEQ, R0, 0, args_ok))
    b.set_flag(FLAG_FAULT)
    b.count(EXEC, STAT_READ_FAULT)
    b.emit(
        mov64_imm(R1, 0),
        ja(args_done),
        label(args_ok),
        ldx_mem(BPF_DW, R1, R10, SLOT_SIZE),
        label(args_done),
        put(EXEC.args_len, R1),
        alu64_reg(BPF_ADD, R1, R9),
    )
    b.size_from(R1, EXEC.filename.offset)
    b.submit(EXEC)
    return b.epilogue()
