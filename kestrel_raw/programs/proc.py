"""The internal proc record (spec.PROC): a process's context after a syscall that changed it, for the process
cache in user space, which then carries it for the process's events (the working directory, the
namespaces, the nodename) instead of every record.

One program per syscall, at its exit, for a successful call only: chdir, fchdir, chroot (the working
directory, and the root it is shown from), unshare (namespaces, and with CLONE_FS a working directory of the
thread's own), setns (a mount namespace brings its root and working directory), sethostname (the nodename
of every process in the UTS namespace: the record says which namespace).  The record carries the whole
context block (kestrel_raw/programs/context.py); its working directory is walked in a tail-called program.
"""
from __future__ import annotations

from kestrel_raw.asm import R1, jmp_imm
from kestrel_raw.asm import BPF_JNE
from kestrel_raw.programs.builder import TAIL_PROC_CWD, ProgramBuilder
from kestrel_raw.programs.context import fill_context, submit_record
from kestrel_raw.spec import PROC, PROC_SYSCALLS

# syscall name -> the record's syscall value
SYSCALL_CODES = {name: code for code, name in PROC_SYSCALLS.items()}


def build(b: ProgramBuilder, fmt, layout, syscall: str) -> list:
    b.prologue()
    b.load_ctx(R1, fmt.field("ret"))
    b.emit(jmp_imm(BPF_JNE, R1, 0, "out"))  # these return 0 on success
    b.scratch()
    b.header(PROC, layout)
    b.store_imm(PROC.syscall, SYSCALL_CODES[syscall])
    b.store_imm(PROC._pad1, 0)
    fill_context(b, PROC, layout)
    b.tail_call(TAIL_PROC_CWD)
    submit_record(b, PROC)
    return b.epilogue()
