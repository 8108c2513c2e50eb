"""C structures of the kernel's uapi as data: named fields at C offsets, packed into and read from bytes.

A ``Layout`` is declared once, member by member in the kernel's order with the kernel's names and types
(kernel/uapi.py holds the ones this package uses).  Offsets follow C's natural alignment, as GCC lays out the
uapi structs on the architectures kestrel-raw supports (x86_64 and arm64, both little-endian, where
``__aligned_u64`` is a plain u64): each member at a multiple of its alignment, the whole rounded up to the
largest.  Bit fields are declared with their storage unit (``Bits``) and packed explicitly, least significant
bit first, as GCC packs them on little-endian targets.  A union member is one member with several names.

Pure: the ``struct`` module only, so that anything that needs a kernel layout (tests, the BPF programs) can
import it without ctypes.  Only kernel/syscall.py turns a packed layout into a pointer for the kernel.
"""
from __future__ import annotations

import struct
from collections.abc import Iterable


class Scalar:
    """A fixed-size integer type: ``__u32``, ``__s32``, ``__aligned_u64`` ..."""

    def __init__(self, c_name: str, code: str) -> None:
        self.c_name = c_name
        self.codec = struct.Struct("<" + code)
        self.size = self.align = self.codec.size
        self.bits = 8 * self.size

    def __repr__(self) -> str:
        return self.c_name


U8 = Scalar("__u8", "B")
U16 = Scalar("__u16", "H")
U32 = Scalar("__u32", "I")
S32 = Scalar("__s32", "i")
U64 = Scalar("__u64", "Q")


class Bytes:
    """A byte array, ``__u8 tag[8]``: packed from at most its size in bytes (zero-padded), read as ``bytes`` of
    exactly its size."""

    def __init__(self, size: int, c_name: str = "__u8") -> None:
        self.c_name = f"{c_name}[{size}]"
        self.codec = struct.Struct(f"{size}s")
        self.size = size
        self.align = 1

    def __repr__(self) -> str:
        return self.c_name


class Chars(Bytes):
    """A NUL-padded string, ``char map_name[BPF_OBJ_NAME_LEN]``: read back up to its first NUL."""

    def __init__(self, size: int) -> None:
        super().__init__(size, "char")


class Bits:
    """Bit fields sharing one storage unit, ``__u64 disabled:1, inherit:1, ...``: (name, width) pairs from the
    least significant bit; a name of None is an unnamed (reserved) field.  The widths fill the unit."""

    def __init__(self, unit: Scalar, fields: Iterable[tuple[str | None, int]]) -> None:
        self.unit = unit
        self.fields = tuple(fields)
        total = sum(width for _, width in self.fields)
        if total != unit.bits:
            raise ValueError(f"bit fields of {total} bits in a {unit.bits}-bit {unit.c_name}")
        self.size, self.align = unit.size, unit.align

    def __repr__(self) -> str:
        return f"{self.unit.c_name} bit fields"


class Field:
    """One named member of a layout: where it is, how big, and (for a bit field) which bits of its unit."""

    __slots__ = ("name", "offset", "size", "type", "bit_offset", "bit_size")

    def __init__(self, name: str, offset: int, type_: Scalar | Bytes | Bits, bit_offset: int = 0,
                 bit_size: int = 0) -> None:
        self.name = name
        self.offset = offset
        self.size = type_.size
        self.type = type_
        self.bit_offset = bit_offset  # from the least significant bit of the storage unit
        self.bit_size = bit_size      # 0: not a bit field

    @property
    def end(self) -> int:
        return self.offset + self.size

    def __repr__(self) -> str:
        bits = f", bits {self.bit_offset}+{self.bit_size}" if self.bit_size else ""
        return f"Field({self.name!r}, offset {self.offset}, {self.type!r}{bits})"


# A member: its name (a tuple of names for a union of same-typed members, None for an anonymous Bits unit)
# and its type.
Member = tuple[str | tuple[str, ...] | None, Scalar | Bytes | Bits]


class Layout:
    """A C struct: ``members`` are (name, type) in declaration order; a tuple of names declares a union of
    same-typed members (``("value", "next_key")``), None an anonymous storage unit of ``Bits``.

    ``pack(**values)`` gives a zeroed bytearray of ``size`` bytes with the named fields set (every other byte
    zero: what the kernel expects of the fields a caller does not use); ``unpack(buf)`` reads every field back.
    """

    def __init__(self, c_name: str, members: Iterable[Member]) -> None:
        self.c_name = c_name
        self.fields: dict[str, Field] = {}
        offset = align = 0
        for names, type_ in members:
            offset = -(-offset // type_.align) * type_.align
            align = max(align, type_.align)
            if isinstance(type_, Bits):
                if names is not None:
                    raise ValueError(f"{c_name}: a Bits unit is anonymous; its fields carry the names")
                bit = 0
                for name, width in type_.fields:
                    if name is not None:
                        self._add(Field(name, offset, type_, bit, width))
                    bit += width
            else:
                for name in (names,) if isinstance(names, str) else names:
                    self._add(Field(name, offset, type_))
            offset += type_.size
        self.size = -(-offset // align) * align if align else 0
        # The names of union members (fields that share their offset with another): pack sets one of each.
        at: dict[int, list[str]] = {}
        for f in self.fields.values():
            if not f.bit_size:
                at.setdefault(f.offset, []).append(f.name)
        self._union_names = frozenset(n for names in at.values() if len(names) > 1 for n in names)

    def _add(self, field: Field) -> None:
        if field.name in self.fields:
            raise ValueError(f"{self.c_name}: two members named {field.name!r}")
        self.fields[field.name] = field

    def field(self, name: str) -> Field:
        try:
            return self.fields[name]
        except KeyError:
            raise KeyError(f"{self.c_name} has no field {name!r} (it has {', '.join(self.fields)})") from None

    def offsetof(self, name: str) -> int:
        return self.field(name).offset

    def offsetofend(self, name: str) -> int:
        """Where ``name`` ends: the size to pass for a command whose last field is ``name``."""
        return self.field(name).end

    def pack(self, **values: int | bytes) -> bytearray:
        buf = bytearray(self.size)
        units: dict[int, tuple[Bits, int]] = {}
        for name, value in values.items():
            f = self.fields.get(name) or self.field(name)
            if f.bit_size:
                if not isinstance(value, int) or not 0 <= value < 1 << f.bit_size:
                    raise ValueError(f"{self.c_name}.{name}: {value!r} does not fit in {f.bit_size} bit(s)")
                unit, bits = units.get(f.offset, (f.type, 0))
                units[f.offset] = unit, bits | value << f.bit_offset
                continue
            if isinstance(f.type, Bytes) and (not isinstance(value, (bytes, bytearray)) or len(value) > f.size):
                raise ValueError(f"{self.c_name}.{name}: needs at most {f.size} bytes, got {value!r}")
            try:
                f.type.codec.pack_into(buf, f.offset, value)
            except struct.error:
                raise ValueError(f"{self.c_name}.{name}: {value!r} does not fit in {f.type.c_name}") from None
        for offset, (unit, bits) in units.items():
            unit.unit.codec.pack_into(buf, offset, bits)
        if len(values) > 1 and not self._union_names.isdisjoint(values):
            self._check_one_name_per_union(values)
        return buf

    def _check_one_name_per_union(self, values: dict) -> None:
        seen: dict[int, str] = {}
        for name in values:
            if name in self._union_names:
                offset = self.fields[name].offset
                if offset in seen:
                    raise ValueError(f"{self.c_name}: {seen[offset]} and {name} are one union member; set one")
                seen[offset] = name

    def get(self, buf: bytes | bytearray | memoryview, name: str) -> int | bytes:
        """The value of field ``name`` in ``buf`` (a packed layout, e.g. an attr the kernel wrote back into)."""
        return self._read(buf, self.field(name))

    def unpack(self, buf: bytes | bytearray | memoryview) -> dict[str, int | bytes]:
        """Every field's value, by name (each union member under each of its names)."""
        if len(buf) < self.size:
            raise ValueError(f"{self.c_name} is {self.size} bytes, got {len(buf)}")
        return {name: self._read(buf, f) for name, f in self.fields.items()}

    @staticmethod
    def _read(buf: bytes | bytearray | memoryview, f: Field) -> int | bytes:
        if f.bit_size:
            (unit,) = f.type.unit.codec.unpack_from(buf, f.offset)
            return unit >> f.bit_offset & ((1 << f.bit_size) - 1)
        (value,) = f.type.codec.unpack_from(buf, f.offset)
        if isinstance(f.type, Chars):
            return value.split(b"\0", 1)[0]
        return value

    def __repr__(self) -> str:
        return f"Layout({self.c_name!r}, {self.size} bytes)"
