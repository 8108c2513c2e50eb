"""Decoded BTF types: immutable values.

One ``Type`` class carries every kind; the fields that a kind does not have are ``None`` or empty.  The
raw words stay reachable (``size``, ``type``, ``vlen``, ``kind_flag``) so that a dump can print exactly
what the blob holds.
"""
from __future__ import annotations

from dataclasses import dataclass

from kestrel_raw.btf.kinds import KIND_NAMES


@dataclass(frozen=True, slots=True)
class PathHop:
    """One load of ``BTF.path_hops``: ``size`` bytes at ``offset`` in struct ``type_name`` (BTF id
    ``type_id``), reached through ``members`` (the path's names this hop covers: embedded members, then
    the member read)."""
    offset: int
    size: int
    type_id: int
    type_name: str
    members: tuple[str, ...]

    @property
    def dotted(self) -> str:
        """``"task_struct.real_parent"``: where the offset was read in BTF."""
        return ".".join((self.type_name or f"(anon) [{self.type_id}]", *self.members))


@dataclass(frozen=True, slots=True)
class Member:
    """A struct or union member, or the answer of ``BTF.member``.

    ``offset`` is in bytes (``bit_offset // 8``), ``size`` is the byte size of the member's type (for a
    bitfield: of the storage type it is declared with), ``bit_offset`` counts from the start of the
    outermost struct asked about (anonymous members' offsets are added in), ``bit_size`` is the bitfield
    width, 0 when the member is not a bitfield, ``type`` the member's type id.
    """
    name: str
    offset: int
    size: int
    bit_offset: int
    bit_size: int
    type: int

    @property
    def is_bitfield(self) -> bool:
        return self.bit_size != 0


@dataclass(frozen=True, slots=True)
class IntEncoding:
    """The word after an INT: ``encoding`` (BTF_INT_SIGNED/CHAR/BOOL bits), ``offset`` and ``bits``."""
    encoding: int
    offset: int
    bits: int


@dataclass(frozen=True, slots=True)
class ArrayInfo:
    type: int
    index_type: int
    nelems: int


@dataclass(frozen=True, slots=True)
class Enumerator:
    """An ENUM or ENUM64 value, already sign-interpreted by the enum's kind_flag (set: signed)."""
    name: str
    value: int


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    type: int


@dataclass(frozen=True, slots=True)
class VarSecinfo:
    type: int
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class Type:
    """One BTF type.

    ``size`` is set for INT, STRUCT, UNION, ENUM, ENUM64, DATASEC and FLOAT; ``type`` (the referenced id)
    for PTR, TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG, FUNC, FUNC_PROTO (return type), VAR and DECL_TAG.
    ``linkage`` is a FUNC's (from vlen) or a VAR's.  ``name`` is "" for an anonymous type.
    """
    id: int
    kind: int
    name: str
    kind_flag: bool
    vlen: int
    size: int | None = None
    type: int | None = None
    int_encoding: IntEncoding | None = None
    array: ArrayInfo | None = None
    members: tuple[Member, ...] = ()
    enumerators: tuple[Enumerator, ...] = ()
    params: tuple[Param, ...] = ()
    secinfos: tuple[VarSecinfo, ...] = ()
    linkage: int | None = None
    component_idx: int | None = None

    @property
    def kind_name(self) -> str:
        """The kind as bpftool prints it: "STRUCT", "FUNC_PROTO"..."""
        return KIND_NAMES[self.kind]

    def __str__(self) -> str:
        return f"[{self.id}] {self.kind_name} '{self.name or '(anon)'}'"


VOID = Type(id=0, kind=0, name="void", kind_flag=False, vlen=0)
