"""``BtfEditor``: a BTF blob as words that can be changed and added to, then encoded again.

What a loader does to an object's .BTF before the kernel sees it (libbpf's ``btf_fixup_datasec``, the
extern fix-ups of ``bpf_object__collect_externs``, ``bpf_object__sanitize_btf``) are edits of a few words
in place (a DATASEC's size, a VAR's linkage, a kind replaced by another of the same length) and, at most, a
type or a string added at the end.  Types keep their ids: each is its own list of u32 words, in the order of
``struct btf_type`` (name_off, info, size|type) then the kind's records.  Little-endian blobs only (what
clang writes for BPF on the architectures kestrel-raw runs on).  Pure.
"""
from __future__ import annotations

import struct
from array import array

from kestrel_raw.btf.header import parse_header
from kestrel_raw.btf.kinds import BTF_HEADER_SIZE, BTF_MAGIC, BTF_VERSION, EXTRA_WORDS, WORDS_PER_VLEN
from kestrel_raw.errors import BTFError


class BtfEditor:
    """A mutable copy of a BTF blob.  ``types[i]`` are the words of type id ``i`` (``types[0]`` is void, an
    empty list); ``strings`` the string section.  ``encode()`` gives the blob back."""

    def __init__(self, data: bytes, source: str = "<bytes>") -> None:
        hdr = parse_header(data)
        if hdr.byteorder != "little":
            raise BTFError(f"{source}: big-endian BTF cannot be edited here")
        words = array("I")
        words.frombytes(bytes(data[hdr.type_start:hdr.type_start + hdr.type_len]))
        self.types: list[list[int]] = [[]]
        i = 0
        while i < len(words):
            info = words[i + 1]
            kind, vlen = info >> 24 & 0x1F, info & 0xFFFF
            n = 3 + EXTRA_WORDS[kind] + vlen * WORDS_PER_VLEN[kind]
            self.types.append(list(words[i:i + n]))
            i += n
        self.strings = bytearray(data[hdr.str_start:hdr.str_start + hdr.str_len])

    def __len__(self) -> int:
        return len(self.types) - 1

    def kind(self, type_id: int) -> int:
        return self.types[type_id][1] >> 24 & 0x1F

    def vlen(self, type_id: int) -> int:
        return self.types[type_id][1] & 0xFFFF

    def kflag(self, type_id: int) -> bool:
        return bool(self.types[type_id][1] >> 31)

    def name(self, type_id: int) -> str:
        return self.string(self.types[type_id][0])

    def string(self, offset: int) -> str:
        end = self.strings.index(0, offset)
        return self.strings[offset:end].decode("utf-8", "replace")

    def add_string(self, s: str) -> int:
        """The offset of ``s`` in the string section, added at its end when it is not there yet."""
        raw = s.encode() + b"\0"
        at = self.strings.find(raw)
        while at > 0 and self.strings[at - 1] != 0:      # a suffix of a longer string is no match
            at = self.strings.find(raw, at + 1)
        if at >= 0:
            return at
        at = len(self.strings)
        self.strings += raw
        return at

    def add_type(self, words: list[int]) -> int:
        """Append a type (its words); returns its id."""
        self.types.append(list(words))
        return len(self.types) - 1

    def find(self, name: str, kind: int) -> int:
        """The first id of a type of ``kind`` named ``name``, 0 when there is none."""
        for i in range(1, len(self.types)):
            if self.kind(i) == kind and self.name(i) == name:
                return i
        return 0

    def encode(self) -> bytes:
        body = array("I", [w for t in self.types for w in t]).tobytes()
        hdr = struct.pack("<HBBIIIII", BTF_MAGIC, BTF_VERSION, 0, BTF_HEADER_SIZE, 0, len(body), len(body),
                          len(self.strings))
        return hdr + body + bytes(self.strings)
