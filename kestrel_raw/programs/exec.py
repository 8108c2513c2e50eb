"""exec: each execve/execveat.  A successful one at sched_process_exec, with the file name and the argv the
new program sees, its capabilities and its context (kestrel_raw/programs/context.py: the new executable,
the working directory, the namespaces); a failed one at the syscall's exit, with what the caller passed
(copied at the syscall's entry) and the errno.

FLAG_TRUNCATED: the argument area was longer than MAX_ARGS, or the file name longer than MAX_FILENAME - 1.

At sched:sched_process_exec the new image is in place: comm is the new one, and ``current->mm`` is the new
mm, whose argument area [arg_start, arg_end) holds argv as NUL-separated strings, already written by the
kernel (so the pages are present).  The file name is the tracepoint's ``__data_loc char[] filename``:
a u32 holding (length << 16 | offset from the start of the record).
"""
from __future__ import annotations

from kestrel_raw.asm import BPF_ADD, BPF_AND, BPF_B, BPF_DW, BPF_JEQ, BPF_JGE, BPF_JGT, BPF_JNE, BPF_JSGE, BPF_JSGT
from kestrel_raw.asm import BPF_JSLT, BPF_LSH, BPF_OR, BPF_RSH, BPF_SUB, BPF_W, R0, R1, R2, R3, R4, R6, R7, R8, R9, R10
from kestrel_raw.asm import alu64_imm, alu64_reg, call, ja, jmp_imm, jmp_reg, label, ldx_mem, mov64_imm
from kestrel_raw.asm import mov32_reg, mov64_reg
from kestrel_raw.asm import st_mem, stx_mem
from kestrel_raw.programs.builder import (
    SLOT_A, SLOT_B, SLOT_C, SLOT_D, SLOT_E, SLOT_SIZE, SLOT_TASK, STAT_READ_FAULT, TAIL_EXEC_EXE, ProgramBuilder,
    put,
)
from kestrel_raw.programs.context import fill_context, submit_record, zero_context
from kestrel_raw.spec import EXEC, FLAG_FAULT, FLAG_LATE_READ, FLAG_TRUNCATED

MAX_FILENAME = EXEC.filename.type.max
MAX_ARGS = EXEC.args.type.max
ARG_START = "task_struct.mm.arg_start"
ARG_END = "task_struct.mm.arg_end"


def build(b: ProgramBuilder, fmt, layout) -> list:
    b.prologue()
    b.scratch()
    b.header(EXEC, layout)
    b.store_imm(EXEC.ret, 0)
    b.read_btf([EXEC.caps_effective, EXEC.caps_permitted], layout)
    fill_context(b, EXEC, layout)

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
    )
    # The executable's and the working directory's paths, in two tail-called programs (context.py); the
    # record goes as it is only if they are missing.
    b.tail_call(TAIL_EXEC_EXE)
    submit_record(b, EXEC)
    return b.epilogue()


# --- failed execs: the arguments copied at the syscall's entry, reported at its exit when it failed ---------
#
# A failed execve has no new program for sched_process_exec to show: what the caller passed is copied at
# sys_enter_execve(at) into a slot of MAP_EXEC_ENTRY, and sys_exit_execve(at) reports it with the errno when
# the call failed.
#
# The slots are an array made once (EXEC_SLOTS of them, the thread id picking one), not task storage: a
# task storage value is allocated the first time a thread asks for it, and for the ~12 KiB these need that
# cost ~25 us per exec here (~10 us even below 4 KiB: measured with bpf_stats), more than the whole exec
# program; an array's values exist from the start, the entry writes straight into one.  Two threads whose
# ids share a slot and exec at the same time: the later entry takes it, and the earlier exec's exit, finding
# another thread's id there, reads what the caller passed again at the exit (flagged LATE_READ), as for an
# exec that began before the collector attached.

MAP_EXEC_ENTRY = "kr_exec_entry"  # BPF_MAP_TYPE_ARRAY, EXEC_SLOTS values
EXEC_SLOTS = 128  # a power of two: slot = tid & (EXEC_SLOTS - 1)
MAX_ARGC = 64  # argv pointers followed; a longer argv is flagged TRUNCATED
XE_TID = 0  # u32: the thread whose exec filled the slot (0: free)
XE_NAME_RC = 4  # s32: the file name read's result (length with its NUL, or -errno)
XE_ARGS_LEN = 8  # u32: bytes of argument strings copied (each with its NUL)
XE_FLAGS = 12  # u32: FLAG_TRUNCATED, FLAG_FAULT
XE_NAME = 24
# The file name is read with room for one byte more than a record keeps: a name that fills it is longer
# than PATH_MAX (the kernel refused it: ENAMETOOLONG), kept cut and flagged TRUNCATED.
XE_NAME_READ = MAX_FILENAME + 1
XE_ARGS = XE_NAME + MAX_FILENAME + 8
# The verifier checks a variable-sized copy at a variable offset against the largest offset plus the largest
# size, not their sum: the area after XE_ARGS is twice the arguments' limit.
XE_VALUE_SIZE = XE_ARGS + 2 * MAX_ARGS
# execve(filename, argv, envp), execveat(dfd, filename, argv, envp, flags): which argument is which
EXEC_ARGS = {"execve": (0, 1), "execveat": (1, 2)}


def _exec_slot(b: ProgramBuilder) -> None:
    """r9 = this thread's slot (jumps to out when the lookup fails: never, for an array)."""
    b.emit(mov64_reg(R1, R7), alu64_imm(BPF_AND, R1, EXEC_SLOTS - 1))
    b.array_lookup(MAP_EXEC_ENTRY)
    b.emit(mov64_reg(R9, R0))


def _slot_flag(b: ProgramBuilder, flag: int) -> None:
    b.emit(ldx_mem(BPF_W, R1, R9, XE_FLAGS), alu64_imm(BPF_OR, R1, flag), stx_mem(BPF_W, R9, R1, XE_FLAGS))


def _copy_args(b: ProgramBuilder, filename_ptr, argv_ptr) -> None:
    """Into the slot at r9: the file name and up to MAX_ARGC argument strings (MAX_ARGS bytes in all) from
    the caller's memory; ``filename_ptr(reg)`` and ``argv_ptr(reg)`` emit the loads of the user pointers."""
    loop, full, fault, done, got, cut_done = (b.label(x) for x in ("arg", "full", "fault", "done", "got", "cut"))
    b.emit(mov64_reg(R1, R7), stx_mem(BPF_W, R9, R1, XE_TID), st_mem(BPF_W, R9, XE_ARGS_LEN, 0),
           st_mem(BPF_W, R9, XE_FLAGS, 0))
    filename_ptr(R3)
    b.emit(mov64_reg(R1, R9), alu64_imm(BPF_ADD, R1, XE_NAME), mov64_imm(R2, XE_NAME_READ),
           call("probe_read_user_str"), stx_mem(BPF_W, R9, R0, XE_NAME_RC))
    argv_ptr(R1)
    # The loop's counter is on the stack, a known value in each turn (the verifier tells the turns apart);
    # the copy's position is in the map value, unknown to it, bounded by a check (so the turns' states
    # prune: see resolve.py).
    b.emit(
        stx_mem(BPF_DW, R10, R1, SLOT_A),
        st_mem(BPF_DW, R10, SLOT_C, 0),
        label(loop),
        ldx_mem(BPF_DW, R3, R10, SLOT_C),
        jmp_imm(BPF_JGE, R3, MAX_ARGC, full),
        alu64_imm(BPF_LSH, R3, 3),
        ldx_mem(BPF_DW, R1, R10, SLOT_A),
        alu64_reg(BPF_ADD, R3, R1),
        mov64_reg(R1, R10),
        alu64_imm(BPF_ADD, R1, SLOT_B),
        mov64_imm(R2, 8),
        call("probe_read_user"),  # argv[i]
        jmp_imm(BPF_JNE, R0, 0, fault),
        ldx_mem(BPF_DW, R3, R10, SLOT_B),
        jmp_imm(BPF_JEQ, R3, 0, done),  # the NULL that ends argv
        ldx_mem(BPF_W, R4, R9, XE_ARGS_LEN),
        jmp_imm(BPF_JGE, R4, MAX_ARGS, full),
        mov64_reg(R1, R9),
        alu64_imm(BPF_ADD, R1, XE_ARGS),
        alu64_reg(BPF_ADD, R1, R4),
        mov64_imm(R2, MAX_ARGS),
        alu64_reg(BPF_SUB, R2, R4),
        stx_mem(BPF_DW, R10, R2, SLOT_D),  # the room left: a string that fills it was cut
        call("probe_read_user_str"),
        jmp_imm(BPF_JSLT, R0, 0, fault),
        ldx_mem(BPF_DW, R2, R10, SLOT_D),
        jmp_reg(BPF_JNE, R0, R2, cut_done),
    )
    b.emit(stx_mem(BPF_DW, R10, R0, SLOT_D))
    _slot_flag(b, FLAG_TRUNCATED)
    b.emit(
        ldx_mem(BPF_DW, R0, R10, SLOT_D),
        label(cut_done),
        jmp_imm(BPF_JSGT, R0, 0, got),
        # 0: an empty string on kernels whose strncpy_from_user_nofault does not count its NUL (6.1, 6.12)
        ldx_mem(BPF_W, R4, R9, XE_ARGS_LEN),
        jmp_imm(BPF_JGE, R4, MAX_ARGS, full),
        mov64_reg(R1, R9),
        alu64_imm(BPF_ADD, R1, XE_ARGS),
        alu64_reg(BPF_ADD, R1, R4),
        st_mem(BPF_B, R1, 0, 0),
        mov64_imm(R0, 1),
        label(got),
        ldx_mem(BPF_W, R4, R9, XE_ARGS_LEN),
        alu64_reg(BPF_ADD, R4, R0),
        stx_mem(BPF_W, R9, R4, XE_ARGS_LEN),
        ldx_mem(BPF_DW, R3, R10, SLOT_C),
        alu64_imm(BPF_ADD, R3, 1),
        stx_mem(BPF_DW, R10, R3, SLOT_C),
        ja(loop),
        label(full),
    )
    _slot_flag(b, FLAG_TRUNCATED)
    b.emit(ja(done), label(fault))
    _slot_flag(b, FLAG_FAULT)
    b.emit(label(done))


def build_entry(b: ProgramBuilder, fmt, filename: str = "filename", argv: str = "argv") -> list:
    """sys_enter_execve / sys_enter_execveat: what the caller passed, into the thread's slot."""
    b.prologue()
    _exec_slot(b)
    _copy_args(b, lambda reg: b.load_ctx(reg, fmt.field(filename)), lambda reg: b.load_ctx(reg, fmt.field(argv)))
    return b.epilogue()


def build_failed(b: ProgramBuilder, fmt, layout, syscall: str = "execve") -> list:
    """sys_exit_execve / sys_exit_execveat: a failed exec's record from the thread's slot (a successful
    one's is sched_process_exec's), or, when the slot is not this exec's, from the caller's memory now (the
    exec failed: it is still the caller's), flagged LATE_READ.  The slot is freed either way."""
    b.prologue()
    _exec_slot(b)
    free, late, ours, name_ok, name_len = (b.label(x) for x in ("free", "late", "ours", "name_ok", "name_len"))
    b.load_ctx(R1, fmt.field("ret"))
    b.emit(jmp_imm(BPF_JSGE, R1, 0, free), stx_mem(BPF_DW, R10, R1, SLOT_E),
           ldx_mem(BPF_W, R1, R9, XE_TID), mov32_reg(R2, R7),
           jmp_reg(BPF_JEQ, R1, R2, ours))
    # Not this exec's (another thread's with an id that shares the slot, or none: the exec began before the
    # collector attached): read the arguments again from the caller's registers and memory.
    b.emit(call("get_current_task_btf"), stx_mem(BPF_DW, R10, R0, SLOT_TASK))
    b.pt_regs(R6)  # the tracepoint's ctx is not needed any more: its ret is on the stack
    name_arg, argv_arg = (layout.syscall_args[i] for i in EXEC_ARGS[syscall])
    _copy_args(b, lambda reg: b.emit(ldx_mem(BPF_DW, reg, R6, name_arg)),
               lambda reg: b.emit(ldx_mem(BPF_DW, reg, R6, argv_arg)))
    b.emit(ldx_mem(BPF_W, R1, R9, XE_FLAGS), alu64_imm(BPF_OR, R1, FLAG_LATE_READ), stx_mem(BPF_W, R9, R1, XE_FLAGS))
    b.emit(label(ours), stx_mem(BPF_DW, R10, R9, SLOT_A))
    b.scratch()
    b.header(EXEC, layout)
    b.emit(ldx_mem(BPF_DW, R9, R10, SLOT_A), ldx_mem(BPF_DW, R1, R10, SLOT_E))
    b.store(EXEC.ret, R1)
    b.read_btf([EXEC.caps_effective, EXEC.caps_permitted], layout)
    zero_context(b, EXEC)
    b.emit(ldx_mem(BPF_W, R1, R9, XE_FLAGS), alu64_imm(BPF_AND, R1, FLAG_TRUNCATED | FLAG_FAULT | FLAG_LATE_READ))
    b.store(EXEC.header_flags, R1)
    # The file name: rc is its length with the NUL (<= 0: unreadable, no name; the whole read: too long).
    b.emit(ldx_mem(BPF_W, R2, R9, XE_NAME_RC), jmp_imm(BPF_JSGT, R2, 0, name_ok))
    b.set_flag(FLAG_FAULT)
    b.emit(mov64_imm(R2, 1), label(name_ok), jmp_imm(BPF_JNE, R2, XE_NAME_READ, name_len))
    b.set_flag(FLAG_TRUNCATED)  # clobbers r1 only
    b.emit(label(name_len), alu64_imm(BPF_ADD, R2, -1),
           jmp_imm(BPF_JGT, R2, MAX_FILENAME, free))  # never: bounds it for the verifier
    b.store(EXEC.filename_len, R2)
    b.emit(mov64_reg(R1, R8), alu64_imm(BPF_ADD, R1, EXEC.filename.offset), mov64_reg(R3, R9),
           alu64_imm(BPF_ADD, R3, XE_NAME), call("probe_read_kernel"),
           # the arguments, after the file name
           ldx_mem(BPF_W, R2, R9, XE_ARGS_LEN), jmp_imm(BPF_JGT, R2, MAX_ARGS, free))
    b.store(EXEC.args_len, R2)
    b.store(EXEC.args_total, R2)
    b.emit(ldx_mem(BPF_W, R1, R8, EXEC.filename_len.offset), jmp_imm(BPF_JGT, R1, MAX_FILENAME, free),
           alu64_imm(BPF_ADD, R1, EXEC.filename.offset), alu64_reg(BPF_ADD, R1, R8), mov64_reg(R3, R9),
           alu64_imm(BPF_ADD, R3, XE_ARGS), call("probe_read_kernel"))
    submit_record(b, EXEC)
    b.emit(ldx_mem(BPF_DW, R9, R10, SLOT_A))
    b.emit(label(free), ldx_mem(BPF_W, R1, R9, XE_TID), mov32_reg(R2, R7),
           jmp_reg(BPF_JNE, R1, R2, "out"), st_mem(BPF_W, R9, XE_TID, 0))
    return b.epilogue()
