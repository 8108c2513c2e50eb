"""open: openat and openat2, joined from the syscall's enter and exit.

Enter saves the arguments in ``pending_open`` keyed by pid_tgid; exit reads the path and emits one record
with the result.  The path is read at exit, not at enter: a user pointer into a page the process has not
touched yet reads as -EFAULT at syscall entry, and the syscall itself faults the page in.
"""
from __future__ import annotations

from .. import wire
from ..asm import BPF_ADD, BPF_DW, BPF_JEQ, BPF_JGT, BPF_JSGT, BPF_W, R0, R1, R2, R3, R8, R9, R10
from ..asm import alu64_imm, call, ja, jmp_imm, label, ldx_mem, mov64_imm, mov64_reg, st_mem, stx_mem
from .builder import MAP_PENDING_OPEN, SLOT_PENDING_VALUE, STAT_READ_FAULT, ProgramBuilder

KIND = wire.KIND_OPEN

# The pending value (40 bytes at SLOT_PENDING_VALUE): filename pointer, flags (openat) or the struct
# open_how pointer (openat2), mode, dfd, syscall.
P_FILENAME = 0
P_FLAGS_OR_HOW = 8
P_MODE = 16
P_DFD = 24
P_SYSCALL = 32

# One more byte than the longest path kept, plus the NUL: a return of PATH_READ means "longer than
# MAX_PATH", so a path of exactly MAX_PATH bytes is still told apart from a longer one.
PATH_READ = wire.MAX_PATH + 2


def build_enter(b: ProgramBuilder, fmt, syscall: int) -> list:
    """sys_enter_openat / sys_enter_openat2: remember the arguments until the exit."""
    b.prologue()
    v = SLOT_PENDING_VALUE
    b.load_ctx(R1, fmt.field("filename"))
    b.emit(stx_mem(BPF_DW, R10, R1, v + P_FILENAME))
    if syscall == wire.OPEN_SYSCALL_OPENAT:
        b.load_ctx(R1, fmt.field("flags"))
        b.emit(stx_mem(BPF_DW, R10, R1, v + P_FLAGS_OR_HOW))
        b.load_ctx(R1, fmt.field("mode"))
        b.emit(stx_mem(BPF_DW, R10, R1, v + P_MODE))
    else:
        b.load_ctx(R1, fmt.field("how"))
        b.emit(stx_mem(BPF_DW, R10, R1, v + P_FLAGS_OR_HOW), st_mem(BPF_DW, R10, v + P_MODE, 0))
    b.load_ctx(R1, fmt.field("dfd"))
    b.emit(stx_mem(BPF_DW, R10, R1, v + P_DFD), st_mem(BPF_DW, R10, v + P_SYSCALL, syscall))
    b.pending_store(MAP_PENDING_OPEN, KIND)
    return b.epilogue()


def build_exit(b: ProgramBuilder, fmt, layout) -> list:
    """sys_exit_openat / sys_exit_openat2: one record with the path, the arguments and the result."""
    b.prologue(filtered=False)
    b.pending_lookup(MAP_PENDING_OPEN, KIND)
    b.scratch()
    b.header(KIND, layout)
    b.load_ctx(R1, fmt.field("ret"))
    b.emit(
        stx_mem(BPF_W, R8, R1, wire.OPEN_RET),
        ldx_mem(BPF_DW, R1, R9, P_DFD),
        stx_mem(BPF_W, R8, R1, wire.OPEN_DFD),
        ldx_mem(BPF_W, R1, R9, P_SYSCALL),
        stx_mem(BPF_W, R8, R1, wire.OPEN_SYSCALL),
        st_mem(BPF_W, R8, wire.OPEN_RESERVED, 0),
    )
    openat2 = b.label("openat2")
    args_done = b.label("args_done")
    b.emit(
        jmp_imm(BPF_JEQ, R1, wire.OPEN_SYSCALL_OPENAT2, openat2),
        ldx_mem(BPF_DW, R1, R9, P_FLAGS_OR_HOW),
        stx_mem(BPF_DW, R8, R1, wire.OPEN_FLAGS),
        ldx_mem(BPF_DW, R1, R9, P_MODE),
        stx_mem(BPF_W, R8, R1, wire.OPEN_MODE),
        ja(args_done),
        label(openat2),
        # struct open_how { u64 flags; u64 mode; ... }: its two first members land on OPEN_FLAGS and
        # OPEN_MODE (mode's high half spills into OPEN_PATH_LEN, written below).
        mov64_reg(R1, R8),
        alu64_imm(BPF_ADD, R1, wire.OPEN_FLAGS),
        mov64_imm(R2, 16),
        ldx_mem(BPF_DW, R3, R9, P_FLAGS_OR_HOW),
        call("probe_read_user"),
        # An unreadable open_how (NULL, say) reads as zeros, and flags 0 is O_RDONLY: flag it, so the
        # zeros are not taken for what the caller asked.
        jmp_imm(BPF_JEQ, R0, 0, args_done),
    )
    b.set_flag(wire.FLAG_FAULT)
    b.count(KIND, STAT_READ_FAULT)
    b.emit(
        label(args_done),
        # The path.
        mov64_reg(R1, R8),
        alu64_imm(BPF_ADD, R1, wire.OPEN_PATH),
        mov64_imm(R2, PATH_READ),
        ldx_mem(BPF_DW, R3, R9, P_FILENAME),
        call("probe_read_user_str"),
        mov64_reg(R9, R0),  # the pending entry is no longer needed
    )
    b.pending_delete(MAP_PENDING_OPEN)
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
