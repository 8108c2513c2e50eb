"""The eBPF instruction set as Python values: builders, an assembler with labels, a disassembler.

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
``UndefinedLabelError``, ``DuplicateLabelError``, ``DanglingLabelError``, ``JumpRangeError``,
``UnknownMapError``, ``UnknownHelperError``, ``TruncatedProgramError``.  Maps given to ``assemble`` that
the program does not use are ignored.
"""
from __future__ import annotations

from .builders import Label as Label
from .builders import R0 as R0
from .builders import R1 as R1
from .builders import R2 as R2
from .builders import R3 as R3
from .builders import R4 as R4
from .builders import R5 as R5
from .builders import R6 as R6
from .builders import R7 as R7
from .builders import R8 as R8
from .builders import R9 as R9
from .builders import R10 as R10
from .builders import Reg as Reg
from .builders import alu32_imm as alu32_imm
from .builders import alu32_reg as alu32_reg
from .builders import alu64_imm as alu64_imm
from .builders import alu64_reg as alu64_reg
from .builders import atomic_op as atomic_op
from .builders import bswap as bswap
from .builders import call as call
from .builders import endian as endian
from .builders import exit_insn as exit_insn
from .builders import helper_id as helper_id
from .builders import ja as ja
from .builders import jmp32_imm as jmp32_imm
from .builders import jmp32_reg as jmp32_reg
from .builders import jmp_imm as jmp_imm
from .builders import jmp_reg as jmp_reg
from .builders import label as label
from .builders import ld_imm64 as ld_imm64
from .builders import ld_map_fd as ld_map_fd
from .builders import ld_map_value as ld_map_value
from .builders import ldx_mem as ldx_mem
from .builders import mov32_imm as mov32_imm
from .builders import mov32_reg as mov32_reg
from .builders import mov64_imm as mov64_imm
from .builders import mov64_reg as mov64_reg
from .builders import neg32 as neg32
from .builders import neg64 as neg64
from .builders import st_mem as st_mem
from .builders import stx_mem as stx_mem
from .errors import DanglingLabelError as DanglingLabelError
from .errors import DuplicateLabelError as DuplicateLabelError
from .errors import InvalidInstructionError as InvalidInstructionError
from .errors import JumpRangeError as JumpRangeError
from .errors import LabelError as LabelError
from .errors import TruncatedProgramError as TruncatedProgramError
from .errors import UndefinedLabelError as UndefinedLabelError
from .errors import UnknownHelperError as UnknownHelperError
from .errors import UnknownMapError as UnknownMapError
from .helpers import HELPER_NAMES as HELPER_NAMES
from .helpers import HELPERS as HELPERS
from .instruction import Instruction as Instruction
from .opcode import *  # noqa: F403  (the BPF_* constants, named as the kernel names them)
from .opcode import __all__ as _opcode_all
from .program import assemble as assemble
from .program import disassemble as disassemble
from .program import format_program as format_program
from .program import resolve as resolve

__all__ = [
    "R0", "R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8", "R9", "R10", "Reg",
    "Instruction", "Label", "label", "assemble", "disassemble", "format_program", "resolve",
    "mov64_imm", "mov64_reg", "mov32_imm", "mov32_reg", "alu64_imm", "alu64_reg", "alu32_imm", "alu32_reg",
    "neg64", "neg32", "endian", "bswap", "ld_imm64", "ld_map_fd", "ld_map_value", "ldx_mem", "stx_mem",
    "st_mem", "atomic_op", "jmp_imm", "jmp_reg", "jmp32_imm", "jmp32_reg", "ja", "call", "exit_insn",
    "helper_id", "HELPERS", "HELPER_NAMES",
    "InvalidInstructionError", "TruncatedProgramError", "LabelError", "UndefinedLabelError",
    "DuplicateLabelError", "DanglingLabelError", "JumpRangeError", "UnknownMapError", "UnknownHelperError",
    *_opcode_all,
]
