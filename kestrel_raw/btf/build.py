"""Building a small BTF blob: the types a map needs described (local storage maps require BTF key and value
type ids).  Pure: bytes out, loaded into the kernel with ``kestrel_raw.kernel.bpf.btf_load``.

    b = BTFBuilder()
    int_id = b.int("int", 4, signed=True)
    value_id = b.struct("kr_value", [("data", b.array(b.int("char", 1), 4096))])
    blob = b.encode()

The encoding is include/uapi/linux/btf.h's: header, type section, string section (the first string is "").
"""
from __future__ import annotations

import struct

from kestrel_raw.btf.kinds import (
    BTF_HEADER_SIZE, BTF_KIND_ARRAY, BTF_KIND_INT, BTF_KIND_STRUCT, BTF_MAGIC, BTF_VERSION,
)

BTF_INT_SIGNED = 1 << 0  # the INT word's encoding bits (BTF_INT_SIGNED, BTF_INT_CHAR, BTF_INT_BOOL)


class BTFBuilder:
    """Types added in order get ids 1, 2, ...; ``encode()`` gives the blob."""

    def __init__(self) -> None:
        self._types: list[bytes] = []
        self._strings = bytearray(b"\0")
        self._offsets: dict[str, int] = {"": 0}
        self._sizes: dict[int, int] = {}
        self._ints: dict[tuple[str, int, bool], int] = {}

    def _str(self, name: str) -> int:
        off = self._offsets.get(name)
        if off is None:
            off = self._offsets[name] = len(self._strings)
            self._strings += name.encode() + b"\0"
        return off

    def _add(self, name: str, kind: int, vlen: int, size_or_type: int, extra: bytes, size: int) -> int:
        self._types.append(struct.pack("<III", self._str(name), kind << 24 | vlen, size_or_type) + extra)
        type_id = len(self._types)
        self._sizes[type_id] = size
        return type_id

    def size_of(self, type_id: int) -> int:
        return self._sizes[type_id]

    def int(self, name: str, size: int, signed: bool = False) -> int:
        """An INT of ``size`` bytes (1, 2, 4, 8)."""
        if size not in (1, 2, 4, 8):
            raise ValueError(f"BTF int {name!r}: size {size} is not 1, 2, 4 or 8")
        key = (name, size, signed)
        if key not in self._ints:  # one type per int: asking again gives its id
            word = (BTF_INT_SIGNED if signed else 0) << 24 | size * 8
            self._ints[key] = self._add(name, BTF_KIND_INT, 0, size, struct.pack("<I", word), size)
        return self._ints[key]

    def array(self, elem: int, nelems: int, index_type: int | None = None) -> int:
        """An ARRAY of ``nelems`` ``elem``; the index type defaults to a 4-byte unsigned int."""
        if index_type is None:
            index_type = self.int("unsigned int", 4)
        return self._add("", BTF_KIND_ARRAY, 0, 0, struct.pack("<III", elem, index_type, nelems),
                         self._sizes[elem] * nelems)

    def struct(self, name: str, members: list[tuple[str, int]]) -> int:
        """A STRUCT of ``members`` (name, type id) laid end to end, no padding (give members that need none)."""
        extra, offset = b"", 0
        for mname, mtype in members:
            extra += struct.pack("<III", self._str(mname), mtype, offset * 8)
            offset += self._sizes[mtype]
        return self._add(name, BTF_KIND_STRUCT, len(members), offset, extra, offset)

    def encode(self) -> bytes:
        types = b"".join(self._types)
        header = struct.pack("<HBBIIIII", BTF_MAGIC, BTF_VERSION, 0, BTF_HEADER_SIZE, 0, len(types), len(types),
                             len(self._strings))
        return header + types + bytes(self._strings)
