"""open: openat and openat2, one record per call at the syscall's exit, with the result, the path the kernel
was given and the file it opened.

The path is copied at the syscall's entry (kestrel_raw/programs/entry.py) and read again at its exit: the
record carries the entry copy, what the kernel acted on; when the two differ another thread rewrote the
caller's buffer during the call, and the record says so (TOCTOU).  When the entry copy failed (its page was
not in memory yet, which a syscall faults in but a program cannot), the exit read stands, flagged
LATE_READ.  For a successful open the file behind the new fd is walked back to its absolute path
(kestrel_raw/programs/resolve.py): that is what the kernel opened, whatever the caller's memory says.

The other arguments come from the task's saved registers (``ProgramBuilder.pt_regs``), which user code
cannot change during the call.
"""
from __future__ import annotations

from kestrel_raw.asm import BPF_ADD, BPF_DW, BPF_JEQ, BPF_JGT, BPF_JLE, BPF_JNE, BPF_JSGT, BPF_JSLT, BPF_W
from kestrel_raw.asm import R0, R1, R2, R3, R8, R9, R10, alu64_imm, alu64_reg, call, ja, jmp_imm, jmp_reg, label
from kestrel_raw.asm import ldx_mem
from kestrel_raw.asm import R6, R7, mov64_imm, mov64_reg, stx_mem
from kestrel_raw.programs import entry, filter
from kestrel_raw.programs.builder import SLOT_B, SLOT_TASK, STAT_READ_FAULT, TAIL_OPEN_FINISH, ProgramBuilder
from kestrel_raw.programs.resolve import build_resolved_path
from kestrel_raw.programs.strings import string_length
from kestrel_raw.spec import FLAG_FAULT, FLAG_LATE_READ, FLAG_TOCTOU, OPEN, OPEN_SYSCALL_OPENAT

MAX_PATH = OPEN.path.type.max
# One more byte than the longest path kept, plus the NUL: a return of PATH_READ means "longer than the
# limit", so a path of exactly the limit is still told apart from a longer one.
PATH_READ = entry.STRING_READ
OPEN_HOW_SIZE = 24  # struct open_how { u64 flags; u64 mode; u64 resolve; }: the record's flags, mode, resolve
MARKERS = {0: entry.MARK_OPENAT, 1: entry.MARK_OPENAT2}


def build(b: ProgramBuilder, fmt, layout, syscall: int) -> list:
    """sys_exit_openat / sys_exit_openat2.  openat(dfd, filename, flags, mode); openat2(dfd, filename, how,
    usize)."""
    arg = layout.syscall_args
    b.prologue()
    filter.apply_early(b, OPEN, build_header=True, count=True)  # before the header, the copies and the walk
    b.scratch()
    b.header(OPEN, layout)
    b.pt_regs(R9)
    b.fill(OPEN.ret, fmt)
    b.fill(OPEN.dfd, layout=layout, regs=R9)
    b.store_imm(OPEN.syscall, syscall)
    b.store_imm(OPEN._pad1, 0)
    b.store_imm(OPEN.resolved_len, 0)
    if syscall == OPEN_SYSCALL_OPENAT:
        b.fill(OPEN.flags, layout=layout, regs=R9)
        b.fill(OPEN.mode, layout=layout, regs=R9)
        b.store_imm(OPEN.resolve, 0)
    else:
        if (OPEN.mode.offset - OPEN.flags.offset, OPEN.resolve.offset - OPEN.mode.offset) != (8, 8):
            raise ValueError("openat2 copies struct open_how {u64 flags, mode, resolve} onto the record's flags, "
                             "mode and resolve: they must be adjacent u64s")
        args_done = b.label("args_done")
        within = b.label("within_usize")
        b.store_imm(OPEN.flags, 0)
        b.store_imm(OPEN.mode, 0)
        b.store_imm(OPEN.resolve, 0)
        b.emit(
            # Only the caller's usize bytes of open_how are read (a smaller struct is refused with EINVAL,
            # but its bytes are what the caller passed); what is not read stays 0.  (The registers are the
            # caller's, but the struct is in its memory: read at the exit, like the path's second read.)
            ldx_mem(BPF_DW, R2, R9, arg[3]),
            jmp_imm(BPF_JLE, R2, OPEN_HOW_SIZE, within),
            mov64_imm(R2, OPEN_HOW_SIZE),
            label(within),
            mov64_reg(R1, R8),
            alu64_imm(BPF_ADD, R1, OPEN.flags.offset),
            ldx_mem(BPF_DW, R3, R9, arg[2]),
            call("probe_read_user"),
            # An unreadable open_how (NULL, say) reads as zeros, and flags 0 is O_RDONLY: flag it, so the
            # zeros are not taken for what the caller asked.
            jmp_imm(BPF_JEQ, R0, 0, args_done),
        )
        b.set_flag(FLAG_FAULT)
        b.count(OPEN, STAT_READ_FAULT)
        b.emit(label(args_done))

    # The path as the caller's memory holds it now, at the exit.
    b.emit(
        mov64_reg(R1, R8),
        alu64_imm(BPF_ADD, R1, OPEN.path.offset),
        mov64_imm(R2, PATH_READ),
        ldx_mem(BPF_DW, R3, R9, arg[1]),
        call("probe_read_user_str"),
        mov64_reg(R9, R0),  # the registers are no longer needed: r9 = the read's result from here on
    )
    # ... and as the kernel was given it, at the entry.
    no_entry, entry_failed, differ, have_rc = (b.label(x) for x in ("no_entry", "entry_failed", "differ",
                                                                    "have_rc"))
    entry.take(b, MARKERS[syscall], SLOT_B, no_entry)
    b.emit(
        ldx_mem(BPF_DW, R0, R10, SLOT_B),
        ldx_mem(BPF_W, R1, R0, entry.ENTRY_RC),
        jmp_imm(BPF_JSGT, R1, PATH_READ, entry_failed),  # never: a string read returns at most its size
        jmp_imm(BPF_JSLT, R1, 0, entry_failed),
        jmp_reg(BPF_JNE, R1, R9, differ),
    )
    entry.compare(b, SLOT_B, OPEN.path.offset, R9, PATH_READ, differ, have_rc)
    b.emit(label(differ))
    b.set_flag(FLAG_TOCTOU)
    b.emit(ldx_mem(BPF_DW, R0, R10, SLOT_B), ldx_mem(BPF_W, R9, R0, entry.ENTRY_RC),
           jmp_imm(BPF_JGT, R9, PATH_READ, have_rc))  # never
    entry.copy_in(b, SLOT_B, OPEN.path.offset, R9, PATH_READ)
    b.emit(ja(have_rc), label(entry_failed), label(no_entry), jmp_imm(BPF_JSLT, R9, 0, have_rc))
    b.set_flag(FLAG_LATE_READ)
    b.emit(label(have_rc))

    string_length(b, OPEN, R9, MAX_PATH)
    b.store(OPEN.path_len, R9)

    # The rest (the opened file's path, the submit) in a program of its own: verified with this one, the
    # walk's paths multiply past the verifier's limit.  Without it (an empty slot), the record goes as is.
    b.tail_call(TAIL_OPEN_FINISH)
    _submit(b)
    return b.epilogue()


def build_finish(b: ProgramBuilder, fmt, layout) -> list:
    """The open programs' second half, reached by tail call with the record in this CPU's scratch value:
    resolved_path for a successful open, then the submit."""
    b.emit(mov64_reg(R6, R1), call("get_current_pid_tgid"), mov64_reg(R7, R0))  # what submit needs
    b.scratch()
    b.emit(call("get_current_task_btf"), stx_mem(BPF_DW, R10, R0, SLOT_TASK))
    build_resolved_path(b, layout, OPEN, OPEN.ret, OPEN.resolved_path)
    _submit(b)
    return b.epilogue()


def _submit(b: ProgramBuilder) -> None:
    b.emit(ldx_mem(BPF_W, R1, R8, OPEN.path_len.offset), ldx_mem(BPF_W, R2, R8, OPEN.resolved_len.offset),
           jmp_imm(BPF_JGT, R1, MAX_PATH, "out"), jmp_imm(BPF_JGT, R2, MAX_PATH, "out"),  # never
           alu64_reg(BPF_ADD, R1, R2))
    b.size_from(R1, OPEN.path.offset)
    b.submit(OPEN)
