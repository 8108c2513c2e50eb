"""The eBPF instruction set as Python values: builders, an assembler with labels, disassemblers, digests.

Build a program from the builders (named and ordered as the kernel's include/linux/filter.h macros),
with labels instead of hand-counted jump offsets and map names instead of fds::

    from kestrel_raw.asm import *

    prog = [
        mov64_reg(R6, R1),                      # r6 = ctx
        ld_map_fd(R1, "events"),                # r1 = &events (fd filled in by assemble)
        mov64_imm(R2, 64),                      # size
        mov64_imm(R3, 0),                       # flags
        call("ringbuf_reserve"),                # r0 = bpf_ringbuf_reserve(r1, r2, r3)
        jmp_imm(BPF_JEQ, R0, 0, "out"),         # if (!r0) goto out
        ldx_mem(BPF_DW, R1, R6, 16),
        stx_mem(BPF_DW, R0, R1, 0),
        mov64_reg(R1, R0), mov64_imm(R2, 0), call("ringbuf_submit"),
        label("out"),
        mov64_imm(R0, 0),
        exit_insn(),
    ]
    code = assemble(prog, maps={"events": ringbuf_fd})   # bytes for BPF_PROG_LOAD
    print(format_program(prog))                           # "   0: (bf) r6 = r1" ...
    assert disassemble(code)[0] == mov64_reg(R6, R1)

``Instruction`` values are immutable and checked when made: an opcode the kernel does not define raises
``InvalidInstructionError``, on build and on decode.  ``str(insn)`` is the kernel's disassembly text
(``r1 = *(u64 *)(r6 +16)``).  Assembly errors are ``kestrel_raw.errors.AsmError`` subclasses:
``UndefinedLabelError``, ``DuplicateLabelError``, ``DanglingLabelError``, ``DanglingCommentError``,
``JumpRangeError``, ``UnknownMapError``, ``UnknownHelperError``, ``TruncatedProgramError``.  Maps given
to ``assemble`` that the program does not use are ignored.

Annotations (``annotate.py``): a listing can say what each block does and where each constant that
depends on the kernel's layout came from, without changing a byte of the program.  A ``comment(text)``
item heads the instructions after it (like a label, it names the next instruction); ``annotate(insn,
comment=..., provenance=...)`` notes the same on one instruction; a constant wrapped as ``Sourced(value,
provenance)`` notes its provenance on every instruction built from it::

    parent = Sourced(1280, btf_member("task_struct.real_parent", type_id=172))   # from BTF at load time
    filename = Sourced(8, tracefs_field("sched", "sched_process_exec", "__data_loc_filename"))
    prog = [
        comment("read task->real_parent"),
        ldx_mem(BPF_DW, R1, R1, parent),
        comment("the filename's __data_loc"),
        ldx_mem(BPF_W, R2, R6, filename),
        annotate(mov64_imm(R0, 0), comment="return 0"),
        exit_insn(),
    ]
    print(format_program(prog))
    # ; read task->real_parent
    #    0: (79) r1 = *(u64 *)(r1 +1280)            ; btf task_struct.real_parent (type id 172)
    # ; the filename's __data_loc
    #    1: (61) r2 = *(u32 *)(r6 +8)               ; tracefs sched:sched_process_exec __data_loc_filename
    # ; return 0
    #    2: (b7) r0 = 0
    #    3: (95) exit
    listing_json(prog)     # [{"index": 0, "bytes": "7911000500000000", "text": ..., "comments": [...],
                           #   "provenance": [{"source": "btf", "name": ..., "type_id": 172}]}, ...]

Digests (``digest.py``): ``program_digest(code)`` gives the SHA-256 that pins a program's bytes (map fds
zeroed, since they change from run to run) and the tag the kernel will report for it (``prog_tag``).

The kernel's side (``xlated.py``, ``kallsyms.py``): ``format_xlated(prog.xlated(), KernelSymbols.load())``
prints the code the kernel keeps after verification exactly as ``bpftool prog dump xlated`` does (calls
named through /proc/kallsyms, ``map[id:N]``, the per-CPU address move); ``disassemble_xlated`` gives
each instruction as an ``XlatedInstruction`` with what it is (``kind``), the called function and the map id.
"""
from __future__ import annotations

from kestrel_raw.asm.annotate import Comment
from kestrel_raw.asm.annotate import Note
from kestrel_raw.asm.annotate import Provenance
from kestrel_raw.asm.annotate import Sourced
from kestrel_raw.asm.annotate import btf_member
from kestrel_raw.asm.annotate import comment
from kestrel_raw.asm.annotate import tracefs_field
from kestrel_raw.asm.builders import Label
from kestrel_raw.asm.builders import R0
from kestrel_raw.asm.builders import R1
from kestrel_raw.asm.builders import R2
from kestrel_raw.asm.builders import R3
from kestrel_raw.asm.builders import R4
from kestrel_raw.asm.builders import R5
from kestrel_raw.asm.builders import R6
from kestrel_raw.asm.builders import R7
from kestrel_raw.asm.builders import R8
from kestrel_raw.asm.builders import R9
from kestrel_raw.asm.builders import R10
from kestrel_raw.asm.builders import Reg
from kestrel_raw.asm.builders import alu32_imm
from kestrel_raw.asm.builders import alu32_reg
from kestrel_raw.asm.builders import alu64_imm
from kestrel_raw.asm.builders import alu64_reg
from kestrel_raw.asm.builders import atomic_op
from kestrel_raw.asm.builders import bswap
from kestrel_raw.asm.builders import call
from kestrel_raw.asm.builders import endian
from kestrel_raw.asm.builders import exit_insn
from kestrel_raw.asm.builders import helper_id
from kestrel_raw.asm.builders import ja
from kestrel_raw.asm.builders import jmp32_imm
from kestrel_raw.asm.builders import jmp32_reg
from kestrel_raw.asm.builders import jmp_imm
from kestrel_raw.asm.builders import jmp_reg
from kestrel_raw.asm.builders import label
from kestrel_raw.asm.builders import ld_imm64
from kestrel_raw.asm.builders import ld_map_fd
from kestrel_raw.asm.builders import ld_map_value
from kestrel_raw.asm.builders import ldx_mem
from kestrel_raw.asm.builders import mov32_imm
from kestrel_raw.asm.builders import mov32_reg
from kestrel_raw.asm.builders import mov64_imm
from kestrel_raw.asm.builders import mov64_reg
from kestrel_raw.asm.builders import neg32
from kestrel_raw.asm.builders import neg64
from kestrel_raw.asm.builders import st_mem
from kestrel_raw.asm.builders import stx_mem
from kestrel_raw.asm.digest import ProgramDigest
from kestrel_raw.asm.digest import prog_tag
from kestrel_raw.asm.digest import program_digest
from kestrel_raw.asm.digest import tag_hash_for
from kestrel_raw.asm.errors import DanglingCommentError
from kestrel_raw.asm.errors import DanglingLabelError
from kestrel_raw.asm.errors import DuplicateLabelError
from kestrel_raw.asm.errors import InvalidInstructionError
from kestrel_raw.asm.errors import JumpRangeError
from kestrel_raw.asm.errors import LabelError
from kestrel_raw.asm.errors import TruncatedProgramError
from kestrel_raw.asm.errors import UndefinedLabelError
from kestrel_raw.asm.errors import UnknownHelperError
from kestrel_raw.asm.errors import UnknownMapError
from kestrel_raw.asm.helpers import HELPER_NAMES
from kestrel_raw.asm.helpers import HELPERS
from kestrel_raw.asm.instruction import Instruction
from kestrel_raw.asm.instruction import annotate
from kestrel_raw.asm.kallsyms import KernelSymbols
from kestrel_raw.asm.opcode import *  # noqa: F403  (the BPF_* constants, named as the kernel names them)
from kestrel_raw.asm.opcode import __all__ as _opcode_all
from kestrel_raw.asm.program import assemble
from kestrel_raw.asm.program import disassemble
from kestrel_raw.asm.program import format_program
from kestrel_raw.asm.program import listing_json
from kestrel_raw.asm.program import resolve
from kestrel_raw.asm.xlated import XlatedInstruction
from kestrel_raw.asm.xlated import disassemble_xlated
from kestrel_raw.asm.xlated import format_xlated

__all__ = [
    "R0", "R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8", "R9", "R10", "Reg",
    "Instruction", "Label", "label", "assemble", "disassemble", "format_program", "resolve",
    "mov64_imm", "mov64_reg", "mov32_imm", "mov32_reg", "alu64_imm", "alu64_reg", "alu32_imm", "alu32_reg",
    "neg64", "neg32", "endian", "bswap", "ld_imm64", "ld_map_fd", "ld_map_value", "ldx_mem", "stx_mem",
    "st_mem", "atomic_op", "jmp_imm", "jmp_reg", "jmp32_imm", "jmp32_reg", "ja", "call", "exit_insn",
    "helper_id", "HELPERS", "HELPER_NAMES",
    "comment", "Comment", "annotate", "Note", "Provenance", "Sourced", "btf_member", "tracefs_field",
    "listing_json", "program_digest", "ProgramDigest", "prog_tag", "tag_hash_for",
    "disassemble_xlated", "format_xlated", "XlatedInstruction", "KernelSymbols",
    "InvalidInstructionError", "TruncatedProgramError", "LabelError", "UndefinedLabelError",
    "DuplicateLabelError", "DanglingLabelError", "DanglingCommentError", "JumpRangeError", "UnknownMapError",
    "UnknownHelperError",
    *_opcode_all,
]
