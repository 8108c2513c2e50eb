"""Whole programs: label and map resolution, assembly to bytes, disassembly, bpftool-style listings."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from kestrel_raw.asm.annotate import Comment, Note
from kestrel_raw.asm.builders import Label
from kestrel_raw.asm.errors import (
    DanglingCommentError, DanglingLabelError, DuplicateLabelError, InvalidInstructionError, JumpRangeError,
    TruncatedProgramError, UndefinedLabelError, UnknownMapError,
)
from kestrel_raw.asm.instruction import INSN_SIZE, S16, S32, U32_MASK, Instruction, _is_gotol, to_signed

Item = Instruction | Label | Comment


def resolve(items: Iterable[Item], maps: Mapping[str, int] | None = None, *,
            resolve_maps: bool = True) -> list[Instruction]:
    """The instructions of ``items`` with labels placed and jump offsets filled in.

    Offsets count 8-byte slots from the slot after the jump (ld_imm64 takes two).  With ``resolve_maps``
    each map name is replaced by its fd from ``maps``; names in ``maps`` that no instruction uses are
    ignored, so one map table can serve several programs.  A ``comment()`` item becomes a block comment
    in the note of the instruction after it.
    """
    insns: list[Instruction] = []
    slots: list[int] = []
    labels: dict[str, tuple[int, int]] = {}  # name -> (instruction index, slot) of the instruction it names
    pending: list[Label] = []
    comments: list[str] = []
    slot = 0
    for position, item in enumerate(items):
        if isinstance(item, Comment):
            comments.append(item.text)
            continue
        if isinstance(item, Label):
            if item.name in labels or any(p.name == item.name for p in pending):
                first = labels[item.name][0] if item.name in labels else len(insns)
                raise DuplicateLabelError(
                    f"label {item.name!r} is defined twice: before instruction {first} and before "
                    f"instruction {len(insns)}; label names must be unique in a program"
                )
            pending.append(item)
            continue
        if not isinstance(item, Instruction):
            raise InvalidInstructionError(
                f"item {position} of the program is {item!r}, neither an Instruction, a label() nor a comment()"
            )
        for mark in pending:
            labels[mark.name] = (len(insns), slot)
        pending.clear()
        if comments:
            item = dataclasses.replace(item, note=Note(tuple(comments)).merged(item.note))
            comments.clear()
        insns.append(item)
        slots.append(slot)
        slot += item.size
    if pending:
        names = ", ".join(repr(p.name) for p in pending)
        raise DanglingLabelError(
            f"label {names} is at the end of the program (after instruction {len(insns) - 1}) and names no "
            f"instruction; a label names the instruction that follows it"
        )
    if comments:
        texts = ", ".join(repr(c) for c in comments)
        raise DanglingCommentError(
            f"comment {texts} is at the end of the program (after instruction {len(insns) - 1}) and heads no "
            f"instruction; a comment() describes the instructions that follow it"
        )

    out = []
    for index, insn in enumerate(insns):
        if insn.target is not None:
            insn = _place_jump(index, slots[index], insn, labels)
        if resolve_maps and insn.map_name is not None:
            insn = _place_map(index, insn, maps or {})
        out.append(insn)
    return out


def _place_jump(index: int, slot: int, insn: Instruction, labels: dict[str, tuple[int, int]]) -> Instruction:
    name = insn.target
    if name not in labels:
        known = ", ".join(repr(n) for n in sorted(labels)) or "none"
        raise UndefinedLabelError(
            f"instruction {index} ({insn}) jumps to label {name!r}, which is not defined "
            f"(labels defined: {known}); add label({name!r}) before the instruction to jump to"
        )
    target_index, target_slot = labels[name]
    distance = target_slot - (slot + 1)
    gotol = _is_gotol(insn.opcode)
    lo, hi = S32 if gotol else S16
    if not lo <= distance <= hi:
        bits = 32 if gotol else 16
        raise JumpRangeError(
            f"instruction {index} ({insn}) jumps to label {name!r} (instruction {target_index}), "
            f"{distance} slots away; a jump offset is a signed {bits}-bit number ({lo}..{hi}); "
            f"split the program or jump in steps"
        )
    if gotol:
        return dataclasses.replace(insn, imm=distance, target=None)
    return dataclasses.replace(insn, off=distance, target=None)


def _place_map(index: int, insn: Instruction, maps: Mapping[str, int]) -> Instruction:
    name = insn.map_name
    if name not in maps:
        given = ", ".join(repr(n) for n in sorted(maps)) or "none"
        raise UnknownMapError(
            f"instruction {index} ({insn}) refers to map {name!r}, which assemble() was not given "
            f"(maps given: {given}); pass maps={{{name!r}: fd}}"
        )
    fd = maps[name]
    if isinstance(fd, bool) or not isinstance(fd, int):
        fd = getattr(fd, "fd", fd)  # allow objects carrying their fd (a Map, an FD)
        fd = fd.fileno() if hasattr(fd, "fileno") else fd
    if isinstance(fd, bool) or not isinstance(fd, int) or not 0 <= fd <= S32[1]:
        raise UnknownMapError(f"map {name!r} has fd {maps[name]!r}, which is not an open file descriptor")
    return dataclasses.replace(insn, imm=to_signed((insn.imm & ~U32_MASK) | fd, 64), map_name=None)


def assemble(insns: Iterable[Item], maps: Mapping[str, int] | None = None) -> bytes:
    """The bytes of a program: labels resolved, map names replaced by the fds in ``maps``.

    ``maps`` maps each name used by ``ld_map_fd``/``ld_map_value`` to an fd (an int, or an object with
    ``fileno()``).  An unknown name raises ``UnknownMapError``; extra, unused names are fine.
    """
    return b"".join(insn.encode() for insn in resolve(insns, maps))


def disassemble(data: bytes | bytearray | memoryview) -> list[Instruction]:
    """The instructions in ``data``; the inverse of ``assemble`` for a program with numeric references.

    Raises ``TruncatedProgramError`` when the bytes end inside an instruction and
    ``InvalidInstructionError`` (naming the slot) for bytes that are not an instruction.
    """
    view = memoryview(data).cast("B")
    if len(view) % INSN_SIZE:
        raise TruncatedProgramError(
            f"{len(view)} bytes are not a whole number of {INSN_SIZE}-byte instructions"
        )
    out = []
    slot = 0
    while slot * INSN_SIZE < len(view):
        insn = Instruction.decode(view, slot)
        out.append(insn)
        slot += insn.size
    return out


def insn_line(slot: int, opcode: int, text: str) -> str:
    """One line of a listing as bpftool prints it (``printf("% 4d: (%02x) %s")``): ``   0: (bf) r6 = r1``."""
    return f"{slot: 4d}: ({opcode:02x}) {text}"


# Column at which a trailing comment (the provenance of a constant) starts, when the line is shorter.
NOTE_COLUMN = 44


def format_program(insns: Iterable[Item] | bytes) -> str:
    """A numbered listing as ``bpftool prog dump xlated`` prints it, one line per instruction:
    ``   0: (bf) r6 = r1``.  Numbers are slots (an ld_imm64 takes two).  Jumps to labels are shown as
    resolved offsets; map names stay symbolic (``r1 = map[events]``).  Bytes are disassembled first.

    Notes (``kestrel_raw.asm.annotate``) are printed as bpftool prints source lines: a block comment as a
    ``; text`` line before the instruction it heads, the provenance of a constant as a trailing
    ``; btf task_struct.real_parent (type id 172)``.
    """
    lines = []
    for slot, insn in _slots(insns):
        note = insn.note
        if note:
            lines.extend(f"; {text}" for text in note.comments)
        line = insn_line(slot, insn.opcode, str(insn))
        if note and note.provenance:
            line = f"{line:<{NOTE_COLUMN}}  ; " + "; ".join(str(p) for p in note.provenance)
        lines.append(line)
    return "\n".join(lines)


def listing_json(insns: Iterable[Item] | bytes, maps: Mapping[str, int] | None = None) -> list[dict]:
    """The listing for tools: one JSON-ready object per instruction, in program order::

        {"index": 1, "bytes": "1811000000000000" "0000000000000000", "text": "r1 = map[events]",
         "map": "events", "comments": ["reserve a ring record"], "provenance": []}

    ``index`` is the slot (as in ``format_program``), ``bytes`` the instruction's bytes in hex (16 digits,
    32 for ld_imm64), ``text`` the disassembly, ``comments`` the block comments that head it and
    ``provenance`` the sources of its constants (``{"source", "name", "type_id"}``).  A map load named
    by ``map`` has the fd from ``maps`` in its bytes, or 0 when ``maps`` does not give it (the bytes the
    kernel's tag is computed over, see ``kestrel_raw.asm.digest``).
    """
    out = []
    for slot, insn in _slots(insns):
        row: dict = {"index": slot}
        name = insn.map_name
        if name is None:
            row["bytes"] = insn.encode().hex()
        elif maps and name in maps:
            row["bytes"] = _place_map(slot, insn, maps).encode().hex()
        else:
            row["bytes"] = dataclasses.replace(insn, map_name=None).encode().hex()  # fd 0
        row["text"] = str(insn)
        if name is not None:
            row["map"] = name
        note = insn.note or Note()
        row["comments"] = list(note.comments)
        row["provenance"] = [p.to_json() for p in note.provenance]
        out.append(row)
    return out


def _slots(insns: Iterable[Item] | bytes) -> list[tuple[int, Instruction]]:
    if isinstance(insns, (bytes, bytearray, memoryview)):
        resolved = disassemble(insns)
    else:
        resolved = resolve(insns, resolve_maps=False)
    out = []
    slot = 0
    for insn in resolved:
        out.append((slot, insn))
        slot += insn.size
    return out
