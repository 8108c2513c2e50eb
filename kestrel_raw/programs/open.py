"""open: openat and openat2, one record per call at the syscall's exit, with the result.

The arguments come from the task's saved registers (``ProgramBuilder.pt_regs``), and the path is read
then, as libbpf-tools' opensnoop does: a user pointer into a page the process has not touched yet reads
as -EFAULT at syscall entry, while by the exit the syscall itself has faulted the page in.  (The path is
the caller's buffer, read after the kernel's own copy: a thread that rewrites it in between can make the
two differ, as with any tracer that reads user memory.)
"""
from __future__ import annotations

from kestrel_raw.codec import wire
from kestrel_raw.asm import (
    BPF_ADD, BPF_DW, BPF_JEQ, BPF_JGT, BPF_JLE, BPF_JSGT, BPF_W, R0, R1, R2, R3, R8, R9,
)
from kestrel_raw.asm import (
    alu64_imm, call, ja, jmp_imm, label, ldx_mem, mov64_imm, mov64_reg, st_mem, stx_mem,
)
from kestrel_raw.programs.builder import STAT_READ_FAULT, ProgramBuilder

KIND = wire.KIND_OPEN

# One more byte than the longest path kept, plus the NUL: a return of PATH_READ means "longer than
# MAX_PATH", so a path of exactly MAX_PATH bytes is still told apart from a longer one.
PATH_READ = wire.MAX_PATH + 2


def build(b: ProgramBuilder, fmt, layout, syscall: int) -> list:
    """sys_exit_openat / sys_exit_openat2: one record with the path, the arguments and the result.

    openat(dfd, filename, flags, mode); openat2(dfd, filename, how, usize).
    """
    arg = layout.syscall_args
    b.prologue()
    b.scratch()
    b.header(KIND, layout)
    b.pt_regs(R9)
    b.load_ctx(R1, fmt.field("ret"))
    b.emit(
        stx_mem(BPF_W, R8, R1, wire.OPEN_RET),
        ldx_mem(BPF_DW, R1, R9, arg[0]),
        stx_mem(BPF_W, R8, R1, wire.OPEN_DFD),
        st_mem(BPF_W, R8, wire.OPEN_SYSCALL, syscall),
        st_mem(BPF_W, R8, wire.OPEN_RESERVED, 0),
    )
    if syscall == wire.OPEN_SYSCALL_OPENAT:
        b.emit(
            ldx_mem(BPF_DW, R1, R9, arg[2]),
            stx_mem(BPF_DW, R8, R1, wire.OPEN_FLAGS),
            ldx_mem(BPF_DW, R1, R9, arg[3]),
            stx_mem(BPF_W, R8, R1, wire.OPEN_MODE),
        )
    else:
        args_done = b.label("args_done")
        within = b.label("within_usize")
        b.emit(
            # struct open_how { u64 flags; u64 mode; ... }: its two first members land on OPEN_FLAGS and
            # OPEN_MODE (mode's high half spills into OPEN_PATH_LEN, written below).  Only the caller's
            # usize bytes of it are read (a smaller struct is refused with EINVAL, but its bytes are what
            # the caller passed); what is not read stays 0.
            st_mem(BPF_DW, R8, wire.OPEN_FLAGS, 0),
            st_mem(BPF_W, R8, wire.OPEN_MODE, 0),
            ldx_mem(BPF_DW, R2, R9, arg[3]),
            jmp_imm(BPF_JLE, R2, 16, within),
            mov64_imm(R2, 16),
            label(within),
            mov64_reg(R1, R8),
            alu64_imm(BPF_ADD, R1, wire.OPEN_FLAGS),
            ldx_mem(BPF_DW, R3, R9, arg[2]),
            call("probe_read_user"),
            # An unreadable open_how (NULL, say) reads as zeros, and flags 0 is O_RDONLY: flag it, so the
            # zeros are not taken for what the caller asked.
            jmp_imm(BPF_JEQ, R0, 0, args_done),
        )
        b.set_flag(wire.FLAG_FAULT)
        b.count(KIND, STAT_READ_FAULT)
        b.emit(label(args_done))
    b.emit(
        # The path.
        mov64_reg(R1, R8),
        alu64_imm(BPF_ADD, R1, wire.OPEN_PATH),
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
    b.set_flag(wire.FLAG_FAULT)
    b.count(KIND, STAT_READ_FAULT)
    b.emit(mov64_imm(R1, 0), ja(done_len), label(have_len))
    b.emit(jmp_imm(BPF_JGT, R9, wire.MAX_PATH + 1, long_path), mov64_reg(R1, R9), alu64_imm(BPF_ADD, R1, -1))
    b.emit(ja(done_len), label(long_path))
    b.set_flag(wire.FLAG_TRUNCATED)
    b.emit(mov64_imm(R1, wire.MAX_PATH), label(done_len))
    b.emit(stx_mem(BPF_W, R8, R1, wire.OPEN_PATH_LEN))
    b.size_from(R1, wire.OPEN_PATH)
    b.submit(KIND)
    return b.epilogue()
