"""open: openat and openat2, one record per call at the syscall's exit, with the result.

The arguments come from the task's saved registers (``ProgramBuilder.pt_regs``), and the path is read
then, as libbpf-tools' opensnoop does: a user pointer into a page the process has not touched yet reads
as -EFAULT at syscall entry, while by the exit the syscall itself has faulted the page in.  (The path is
the caller's buffer, read after the kernel's own copy: a thread that rewrites it in between can make the
two differ, as with any tracer that reads user memory.)
"""
from __future__ import annotations

from kestrel_raw.asm import BPF_ADD, BPF_DW, BPF_JEQ, BPF_JGT, BPF_JLE, BPF_JSGT, R0, R1, R2, R3, R8, R9
from kestrel_raw.asm import alu64_imm, call, ja, jmp_imm, label, ldx_mem, mov64_imm, mov64_reg
from kestrel_raw.programs.builder import STAT_READ_FAULT, ProgramBuilder
from kestrel_raw.spec import FLAG_FAULT, FLAG_TRUNCATED, OPEN, OPEN_SYSCALL_OPENAT

# One more byte than the longest path kept, plus the NUL: a return of PATH_READ means "longer than the
# limit", so a path of exactly the limit is still told apart from a longer one.
MAX_PATH = OPEN.path.type.max
PATH_READ = MAX_PATH + 2


def build(b: ProgramBuilder, fmt, layout, syscall: int) -> list:
    """sys_exit_openat / sys_exit_openat2: one record with the path, the arguments and the result.

    openat(dfd, filename, flags, mode); openat2(dfd, filename, how, usize).
    """
    arg = layout.syscall_args
    b.prologue()
    b.scratch()
    b.header(OPEN, layout)
    b.pt_regs(R9)
    b.fill(OPEN.ret, fmt)
    b.fill(OPEN.dfd, layout=layout, regs=R9)
    b.store_imm(OPEN.syscall, syscall)
    b.store_imm(OPEN._pad1, 0)
    if syscall == OPEN_SYSCALL_OPENAT:
        b.fill(OPEN.flags, layout=layout, regs=R9)
        b.fill(OPEN.mode, layout=layout, regs=R9)
    else:
        args_done = b.label("args_done")
        within = b.label("within_usize")
        if (OPEN.mode.offset - OPEN.flags.offset, OPEN.path_len.offset - OPEN.mode.offset) != (8, 4):
            raise ValueError("openat2 copies struct open_how {u64 flags; u64 mode} onto the record's flags and "
                             "mode: they must be adjacent, mode's high half spilling onto path_len")
        b.store_imm(OPEN.flags, 0)
        b.store_imm(OPEN.mode, 0)
        b.emit(
            # struct open_how { u64 flags; u64 mode; ... }: its two first members land on the record's flags
            # and mode (mode's high half spills into path_len, written below).  Only the caller's usize
            # bytes of it are read (a smaller struct is refused with EINVAL, but its bytes are what the
            # caller passed); what is not read stays 0.
            ldx_mem(BPF_DW, R2, R9, arg[3]),
            jmp_imm(BPF_JLE, R2, 16, within),
            mov64_imm(R2, 16),
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
    b.emit(
        # The path.
        mov64_reg(R1, R8),
        alu64_imm(BPF_ADD, R1, OPEN.path.offset),
        mov64_imm(R2, PATH_READ),
        ldx_mem(BPF_DW, R3, R9, arg[1]),
        call("probe_read_user_str"),
        mov64_reg(R9, R0),  # the registers are no longer needed
    )
    long_path = b.label("long")
    have_len = b.label("have_len")
    done_len = b.label("done_len")
    # r9 < 0: unreadable (a NULL or bad pointer).  r9 == 0: an empty string on older kernels, whose
    # strncpy_from_user_nofault does not count the NUL of an empty string (seen on Debian's 6.1 and 6.12).
    b.emit(jmp_imm(BPF_JSGT, R9, 0, have_len), mov64_imm(R1, 0), jmp_imm(BPF_JEQ, R9, 0, done_len))
    b.set_flag(FLAG_FAULT)
    b.count(OPEN, STAT_READ_FAULT)
    b.emit(mov64_imm(R1, 0), ja(done_len), label(have_len))
    b.emit(jmp_imm(BPF_JGT, R9, MAX_PATH + 1, long_path), mov64_reg(R1, R9), alu64_imm(BPF_ADD, R1, -1))
    b.emit(ja(done_len), label(long_path))
    b.set_flag(FLAG_TRUNCATED)
    b.emit(mov64_imm(R1, MAX_PATH), label(done_len))
    b.store(OPEN.path_len, R1)
    b.size_from(R1, OPEN.path.offset)
    b.submit(OPEN)
    return b.epilogue()
