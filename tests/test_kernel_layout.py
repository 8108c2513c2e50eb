"""kernel/layout.py: C layouts as data (offsets by C's alignment rules, unions, bit fields, packing checks)."""
from __future__ import annotations

import pytest

from kestrel_raw.kernel.layout import S32, U8, U16, U32, U64, Bits, Bytes, Chars, Layout


def test_members_sit_at_their_natural_alignment_and_the_size_rounds_up():
    lay = Layout("struct t", [("a", U8), ("b", U16), ("c", U32), ("d", U8), ("e", U64), ("f", U32)])
    assert {n: (f.offset, f.size) for n, f in lay.fields.items()} == {
        "a": (0, 1), "b": (2, 2), "c": (4, 4), "d": (8, 1), "e": (16, 8), "f": (24, 4)}
    assert lay.size == 32  # rounded up to the u64's alignment, as sizeof() is
    assert lay.offsetofend("f") == 28
    assert Layout("struct n", [("name", Chars(16)), ("x", U32)]).size == 20  # char arrays align to 1


def test_pack_zeroes_what_is_not_set_and_unpack_reads_it_back():
    lay = Layout("struct t", [("a", U32), ("b", U64), ("c", S32), ("tag", Bytes(3)), ("name", Chars(6))])
    buf = lay.pack(a=1, c=-1, name=b"ab")
    assert type(buf) is bytearray
    assert buf == bytes.fromhex("01000000 00000000" "0000000000000000" "ffffffff" "000000" "616200000000"
                                "000000")  # padded to 32, the u64's multiple
    assert lay.unpack(buf) == {"a": 1, "b": 0, "c": -1, "tag": b"\0\0\0", "name": b"ab"}
    assert lay.get(buf, "c") == -1


def test_a_union_member_answers_to_each_name_but_is_set_once():
    lay = Layout("struct t", [("fd", U32), (("value", "next_key"), U64)])
    assert lay.field("value").offset == lay.field("next_key").offset == 8
    assert lay.get(lay.pack(next_key=7), "value") == 7
    with pytest.raises(ValueError, match="struct t: value and next_key are one union member; set one"):
        lay.pack(value=1, next_key=2)


def test_bit_fields_pack_from_the_least_significant_bit():
    lay = Layout("struct t", [("x", U32), (None, Bits(U64, [("a", 1), ("b", 2), (None, 5), ("c", 56)]))])
    assert (lay.field("b").offset, lay.field("b").bit_offset, lay.field("b").bit_size) == (8, 1, 2)
    buf = lay.pack(a=1, b=2, c=1)
    assert buf[8:16] == (1 | 2 << 1 | 1 << 8).to_bytes(8, "little")
    assert lay.unpack(buf) == {"x": 0, "a": 1, "b": 2, "c": 1}  # the unnamed bits have no name to read
    with pytest.raises(ValueError, match=r"struct t\.b: 4 does not fit in 2 bit\(s\)"):
        lay.pack(b=4)
    with pytest.raises(ValueError, match="bit fields of 63 bits in a 64-bit __u64"):
        Bits(U64, [("a", 63)])


def test_packing_refuses_what_would_not_fit_instead_of_truncating():
    lay = Layout("struct t", [("x", U32), ("name", Chars(4))])
    with pytest.raises(ValueError, match=r"struct t\.x: 4294967296 does not fit in __u32"):
        lay.pack(x=1 << 32)
    with pytest.raises(ValueError, match=r"struct t\.x: -1 does not fit in __u32"):
        lay.pack(x=-1)
    with pytest.raises(ValueError, match=r"struct t\.name: needs at most 4 bytes, got b'kestrel'"):
        lay.pack(name=b"kestrel")
    with pytest.raises(KeyError, match="struct t has no field 'y' .it has x, name."):
        lay.pack(y=1)
    with pytest.raises(ValueError, match="struct t is 8 bytes, got 7"):
        lay.unpack(bytes(7))


def test_names_are_unique():
    with pytest.raises(ValueError, match="struct t: two members named 'a'"):
        Layout("struct t", [("a", U32), (("b", "a"), U32)])
