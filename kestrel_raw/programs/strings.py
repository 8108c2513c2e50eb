"""The length of a string a ``bpf_probe_read_{user,kernel}_str`` copied, from what the helper returned.

One rule for every program that copies a string (open's path, shell_command's line, dns_query's names), so
that an empty string, a failed read and a cut string are told the same way everywhere.
"""
from __future__ import annotations

from kestrel_raw.asm import BPF_JEQ, BPF_JGT, BPF_JSLT, BPF_SUB, R9, alu64_imm, ja, jmp32_imm, jmp_imm, label
from kestrel_raw.asm import mov64_imm, mov64_reg
from kestrel_raw.programs.builder import STAT_READ_FAULT, ProgramBuilder
from kestrel_raw.spec import FLAG_FAULT, FLAG_TRUNCATED, Kind


def string_length(b: ProgramBuilder, kind: Kind, rc: int, limit: int, *, rc32: bool = False,
                  empty: str | None = None) -> None:
    """r9 = the length, without its NUL, of a string whose read returned ``rc`` (a register; r9 may be it):

    - rc < 0, the read failed: FLAG_FAULT set, STAT_READ_FAULT counted, length 0;
    - rc 0: length 0.  An empty string on the kernels whose strncpy_from_user_nofault does not count the NUL
      of an empty string (Debian's 6.1 and 6.12; 6.18 returns 1), or nothing was read (a NULL pointer the
      caller did not follow);
    - rc - 1 longer than ``limit``: FLAG_TRUNCATED, length ``limit`` (the read takes ``limit`` + 2 bytes so
      that a string of exactly ``limit`` bytes is told apart from a longer one).

    ``rc32``: ``rc`` holds the return as a u32 (stored, then loaded back): its sign is bit 31, so it is
    tested with a 32-bit jump.  ``empty``: a label to jump to, instead of going on with length 0, when the
    string is empty and the read did not fail.  Clobbers r0-r5.
    """
    fault, cut, done = b.label("str_fault"), b.label("str_cut"), b.label("str_len")
    if rc != R9:
        b.emit(mov64_reg(R9, rc))
    b.emit((jmp32_imm if rc32 else jmp_imm)(BPF_JSLT, R9, 0, fault),
           jmp_imm(BPF_JEQ, R9, 0, empty or done),
           alu64_imm(BPF_SUB, R9, 1))
    if empty is not None:
        b.emit(jmp_imm(BPF_JEQ, R9, 0, empty))
    b.emit(jmp_imm(BPF_JGT, R9, limit, cut), ja(done), label(cut))
    b.set_flag(FLAG_TRUNCATED)
    b.emit(mov64_imm(R9, limit), ja(done), label(fault))
    b.set_flag(FLAG_FAULT)
    b.count(kind, STAT_READ_FAULT)
    b.emit(mov64_imm(R9, 0), label(done))
