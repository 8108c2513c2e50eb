"""Annotations: where an instruction came from, carried beside it and never in its bytes.

An instruction may carry a ``Note`` (as cilium/ebpf's ``Instruction.Metadata`` carries a ``Source``):

- block comments, which head the instruction: a ``comment("reserve a ring record")`` item in the list
  names the instruction that follows it, as a ``label()`` does; ``format_program`` prints it as a
  ``; reserve a ring record`` line before that instruction;
- provenances, one per constant of the instruction that depends on the kernel's layout: the BTF member
  path and type id, or the tracefs format field, it was read from (``Provenance``); ``format_program``
  prints them as a trailing ``; btf task_struct.real_parent (type id 172)``.

A note changes neither the bytes, nor equality, nor the hash of an instruction: a program assembles to
the same bytes with or without its notes, and ``disassemble(assemble(p)) == p`` still holds.

A constant can also carry its provenance itself: ``Sourced(1280, btf_member("task_struct.real_parent",
172))`` is the int 1280 everywhere, and a builder given it (``ldx_mem(BPF_DW, R1, R1, offset)``) notes the
provenance on the instruction it makes.  Arithmetic on a ``Sourced`` gives a plain int (a derived value
is no longer the value that was read): annotate such an instruction with ``annotate``.
"""
from __future__ import annotations

import dataclasses

from kestrel_raw.asm.errors import InvalidInstructionError


@dataclasses.dataclass(frozen=True)
class Provenance:
    """Where a constant came from: ``source`` is the place it was read (``"btf"``, ``"tracefs"``, or
    another short word), ``name`` what was read there (a BTF member path, a tracepoint field), and
    ``type_id`` the BTF type id the path starts from, when there is one."""

    source: str
    name: str
    type_id: int | None = None

    def __post_init__(self) -> None:
        for what in ("source", "name"):
            value = getattr(self, what)
            if not isinstance(value, str) or not value or "\n" in value:
                raise InvalidInstructionError(f"Provenance.{what} must be a non-empty one-line str, not {value!r}")
        if self.type_id is not None and (not isinstance(self.type_id, int) or isinstance(self.type_id, bool)
                                         or self.type_id < 0):
            raise InvalidInstructionError(f"Provenance.type_id must be a BTF type id (int >= 0), not {self.type_id!r}")

    def __str__(self) -> str:
        text = f"{self.source} {self.name}"
        return text if self.type_id is None else f"{text} (type id {self.type_id})"

    def to_json(self) -> dict:
        return {"source": self.source, "name": self.name, "type_id": self.type_id}


def btf_member(path: str, type_id: int | None = None) -> Provenance:
    """A constant read from BTF: ``path`` is the dotted member path (``"task_struct.real_parent"``),
    ``type_id`` the id of the type it starts from (``task_struct``'s)."""
    return Provenance("btf", path, type_id)


def tracefs_field(group: str, event: str, field: str) -> Provenance:
    """A constant read from a tracepoint's tracefs format (``events/GROUP/EVENT/format``), for ``field``."""
    return Provenance("tracefs", f"{group}:{event} {field}")


class Sourced(int):
    """An int that remembers where it came from (``provenance``); equal to, and used as, the plain int."""

    provenance: Provenance

    def __new__(cls, value: int, provenance: Provenance) -> "Sourced":
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidInstructionError(f"Sourced value must be an int, not {value!r}")
        if not isinstance(provenance, Provenance):
            raise InvalidInstructionError(f"Sourced provenance must be a Provenance, not {provenance!r}")
        self = super().__new__(cls, value)
        self.provenance = provenance
        return self

    def __repr__(self) -> str:
        return f"Sourced({int(self)}, {self.provenance!s})"

    def __reduce__(self):  # copy and pickle keep the provenance (int's own would drop it)
        return (Sourced, (int(self), self.provenance))


@dataclasses.dataclass(frozen=True)
class Note:
    """What an instruction carries besides its fields: block comments that head it, and the provenance
    of its constants."""

    comments: tuple[str, ...] = ()
    provenance: tuple[Provenance, ...] = ()

    def __post_init__(self) -> None:
        for text in self.comments:
            _check_comment(text)
        for p in self.provenance:
            if not isinstance(p, Provenance):
                raise InvalidInstructionError(f"a provenance must be a Provenance, not {p!r}")

    def __bool__(self) -> bool:
        return bool(self.comments or self.provenance)

    def merged(self, other: "Note | None") -> "Note":
        """This note with ``other``'s comments after its own and its new provenances added."""
        if not other:
            return self
        extra = tuple(p for p in other.provenance if p not in self.provenance)
        return Note(self.comments + other.comments, self.provenance + extra)


@dataclasses.dataclass(frozen=True)
class Comment:
    """A marker in an instruction list: a block comment that heads the instruction after it."""

    text: str

    def __post_init__(self) -> None:
        _check_comment(self.text)

    def __str__(self) -> str:
        return f"; {self.text}"


def comment(text: str) -> Comment:
    """A block comment for the NEXT instruction in the list (what the block starting there does)."""
    return Comment(text)


def _check_comment(text) -> None:
    if not isinstance(text, str) or not text.strip() or "\n" in text:
        raise InvalidInstructionError(f"a comment must be a non-empty one-line str, not {text!r}")


def note_of(*values) -> Note | None:
    """The note of the ``Sourced`` values among ``values`` (None when there is none)."""
    found: list[Provenance] = []
    for value in values:
        p = getattr(value, "provenance", None) if isinstance(value, Sourced) else None
        if p is not None and p not in found:
            found.append(p)
    return Note(provenance=tuple(found)) if found else None
