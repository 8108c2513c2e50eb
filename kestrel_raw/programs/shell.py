"""shell_command: the line an interactive bash read, at the return of bash's ``readline`` (a uretprobe, as
libbpf-tools' bashreadline).

readline returns a ``char *`` (malloc'd by readline, in bash's own memory; NULL at the end of input) that
bash then executes: the line is bash's, not an argument another thread of someone else could rewrite, and
it is copied once, at the return, before bash runs it.  No event for NULL (nothing was read) nor for an
empty line.  ``bash -c 'read -e'`` reads with readline too, and is reported the same way.

The probe is on the bash binary's ``readline`` symbol (bash links its own copy of GNU readline: the symbol is
in its .dynsym), for every process running that file (kestrel_raw/probes/targets.py finds it).

The check after attaching (kestrel_raw/collector/selfcheck.py) cannot make the collector's own process call
bash's readline, so the collector runs a bash that does (kestrel_raw/collector/shellcheck.py) and puts its
tgid in MAP_CHECK: this program counts that process's runs as its own (and reports nothing of it).  The
lookup costs every readline return one array lookup: a line typed, not a syscall.
"""
from __future__ import annotations

from kestrel_raw.asm import BPF_ADD, BPF_JEQ, BPF_JGT, R0, R1, R2, R3, R8, R9, alu64_imm, call
from kestrel_raw.asm import BPF_JNE, BPF_RSH, BPF_W, R6, R7, R10, ja, jmp_imm, jmp_reg, label, ld_map_fd, ldx_mem
from kestrel_raw.asm import mov64_imm, mov64_reg, st_mem
from kestrel_raw.programs.builder import SLOT_ARRAY_KEY, ProgramBuilder
from kestrel_raw.programs.strings import string_length
from kestrel_raw.spec import MAX_COMMAND, SHELL_COMMAND

# BPF_MAP_TYPE_ARRAY, one u32: the tgid of the collector's check process (0: none).
MAP_CHECK = "kr_check"

# Bytes a line read may take: one more than the limit (to see that it is longer), plus the NUL.
LINE_READ = MAX_COMMAND + 2


def build(b: ProgramBuilder, fmt, layout) -> list:
    """The uretprobe on readline: r6 = the registers at its return."""
    kind = SHELL_COMMAND
    checked = b.label("checked")
    b.emit(
        mov64_reg(R6, R1),
        call("get_current_pid_tgid"),
        mov64_reg(R7, R0),
        st_mem(BPF_W, R10, SLOT_ARRAY_KEY, 0),
        ld_map_fd(R1, MAP_CHECK),
        mov64_reg(R2, R10),
        alu64_imm(BPF_ADD, R2, SLOT_ARRAY_KEY),
        call("map_lookup_elem"),
        jmp_imm(BPF_JEQ, R0, 0, checked),
        ldx_mem(BPF_W, R1, R0, 0),
        mov64_reg(R2, R7),
        alu64_imm(BPF_RSH, R2, 32),
        jmp_reg(BPF_JNE, R1, R2, checked),
        ja("self" if b.self_index is not None else "out"),
        label(checked),
    )
    b.skip_filtered("out")
    b.load_call(R9, kind.line.source, layout)  # r9 = the line (char *), NULL at the end of input
    b.emit(jmp_imm(BPF_JEQ, R9, 0, "out"))
    b.scratch()
    b.header(kind, layout)
    b.emit(
        mov64_reg(R1, R8),
        alu64_imm(BPF_ADD, R1, kind.line.offset),
        mov64_imm(R2, LINE_READ),
        mov64_reg(R3, R9),
        call("probe_read_user_str"),  # r0 = bytes with the NUL, or -errno
    )
    string_length(b, kind, R0, MAX_COMMAND, empty="out")  # an empty line: nothing to report
    b.store(kind.line_len, R9)
    b.store_imm(kind._pad1, 0)
    b.emit(jmp_imm(BPF_JGT, R9, MAX_COMMAND, "out"))  # never: bounds r9 for the verifier
    b.size_from(R9, kind.line.offset)
    b.submit(kind)
    return b.epilogue()
