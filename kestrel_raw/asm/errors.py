"""Errors of the assembler and disassembler; all are ``kestrel_raw.errors.AsmError``."""
from __future__ import annotations

from kestrel_raw.errors import AsmError


class InvalidInstructionError(AsmError, ValueError):
    """An opcode combination the kernel does not define, or a field out of its range or not zero where the
    kernel requires zero ("uses reserved fields" in the verifier).  Raised when building and decoding."""


class TruncatedProgramError(AsmError, ValueError):
    """Bytes to decode end inside an instruction (not a multiple of 8, or half an ld_imm64)."""


class LabelError(AsmError):
    """Base of the label errors."""


class UndefinedLabelError(LabelError):
    """A jump names a label that no ``label()`` in the program defines."""


class DuplicateLabelError(LabelError):
    """Two ``label()`` markers in one program carry the same name."""


class DanglingLabelError(LabelError):
    """A ``label()`` is the last item of the program: it names no instruction."""


class DanglingCommentError(AsmError):
    """A ``comment()`` is the last item of the program: it heads no instruction."""


class JumpRangeError(AsmError):
    """A jump's distance does not fit its offset field (signed 16 bits; signed 32 bits for gotol)."""


class UnknownMapError(AsmError, KeyError):
    """An instruction refers to a map name that ``assemble(maps=...)`` was not given."""

    def __str__(self) -> str:  # KeyError's str() would quote the message.
        return str(self.args[0])


class UnknownHelperError(AsmError, KeyError):
    """``call()`` names a helper that is not in ``enum bpf_func_id``."""

    def __str__(self) -> str:
        return str(self.args[0])
