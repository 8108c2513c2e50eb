"""Each malformed-header and malformed-type-section check raises its own BTFError message."""
from __future__ import annotations

import struct

import pytest

from kestrel_raw.btf import BTF, BTFError, parse_header

# Smallest valid blob: one INT 'a' (name at 1), string section "\0a\0".
TYPE = struct.pack("<4I", 1, 1 << 24, 4, 0x01000020)
STRS = b"\0a\0"


def hdr(magic=0xEB9F, version=1, flags=0, hdr_len=24, type_off=0, type_len=len(TYPE), str_off=len(TYPE),
        str_len=len(STRS)) -> bytes:
    return struct.pack("<HBBIIIII", magic, version, flags, hdr_len, type_off, type_len, str_off, str_len)


def test_minimal_blob_parses():
    btf = BTF.parse(hdr() + TYPE + STRS)
    assert len(btf) == 1 and btf.find("a").size == 4


@pytest.mark.parametrize("data, message", [
    (b"\x9f\xeb\x01\x00" + bytes(10),
     r"^BTF header not found: 14 bytes of data, struct btf_header needs 24; the data is not raw BTF"),
    (hdr(magic=0x1234) + TYPE + STRS, r"^Invalid BTF magic: 0x1234 \(expected 0xeb9f\); the data is not raw BTF"),
    (hdr(version=2) + TYPE + STRS, r"^Unsupported BTF version: 2 \(this reader knows version 1\)"),
    (hdr(flags=1) + TYPE + STRS, r"^Unsupported BTF flags: 0x1 \(no flag is defined\)"),
    (hdr(hdr_len=20) + TYPE + STRS, r"^BTF header len 20 smaller than struct btf_header \(24\)"),
    (hdr(hdr_len=100) + TYPE + STRS, r"^BTF header len 100 larger than data size 43; "),
    (hdr(hdr_len=28) + b"\1\0\0\0" + TYPE + STRS,
     r"^Unsupported BTF header: bytes 24\.\.28 past struct btf_header are not zero"),
    (hdr(str_len=4) + TYPE + STRS, r"^Invalid BTF total size: 43 \(the string section ends at 44\); "),
    (hdr(type_len=20) + TYPE + STRS,
     r"^Invalid BTF data sections layout: type data at 0 \+ 20, strings data at 16 \+ 3; "),
    (hdr(type_off=2, type_len=12, str_off=16) + TYPE + STRS,
     r"^BTF type section is not aligned to 4 bytes: type_off 2; "),
    (hdr(type_len=14) + TYPE + STRS, r"^BTF type section length 14 is not a multiple of 4"),
    (hdr(str_len=0) + TYPE + STRS, r"^Invalid BTF string section: it is empty"),
    (hdr() + TYPE + b"xa\0", r"^Invalid BTF string section: it does not start with the empty string "
                             r"\(first byte 0x78\)"),
    (hdr() + TYPE + b"\0ab", r"^Invalid BTF string section: its last string is not NUL-terminated"),
])
def test_header_checks(data, message):
    with pytest.raises(BTFError, match=message):
        parse_header(data)
    with pytest.raises(BTFError, match=message):
        BTF.parse(data)


def test_swapped_magic_is_big_endian_not_an_error():
    be = struct.pack(">HBBIIIII", 0xEB9F, 1, 0, 24, 0, 16, 16, 3) + struct.pack(">4I", 1, 1 << 24, 4,
                                                                               0x01000020) + STRS
    assert parse_header(be).byteorder == "big"
    assert BTF.parse(be).find("a").int_encoding.bits == 32


@pytest.mark.parametrize("types, message", [
    (struct.pack("<3I", 1, 0, 4), r"^Invalid BTF kind 0 at type id 1 \(byte 0 of the type section\)"),
    (struct.pack("<3I", 1, 20 << 24, 4), r"^Invalid BTF kind 20 at type id 1 .*from a newer kernel"),
    # A STRUCT announcing 2 members but holding one.
    (struct.pack("<6I", 1, 4 << 24 | 2, 4, 1, 0, 0),
     r"^BTF type section truncated: type id 1 runs to byte 36 past the section's end \(24\)"),
    # A second type cut after its first word.
    (TYPE + struct.pack("<I", 1), r"^BTF type section truncated: type id 2 starts at byte 16"),
])
def test_type_section_checks(types, message):
    data = hdr(type_len=len(types), str_off=len(types)) + types + STRS
    with pytest.raises(BTFError, match=message):
        BTF.parse(data)


def test_name_offset_past_strings():
    bad = struct.pack("<4I", 99, 1 << 24, 4, 0x01000020)
    btf = BTF.parse(hdr() + bad + STRS)
    with pytest.raises(BTFError, match=r"^Invalid BTF string offset 99: the string section is 3 bytes"):
        btf.type_by_id(1)


def test_load_missing_file(tmp_path):
    with pytest.raises(BTFError, match=r"^cannot read BTF from .*/nope: no such file"):
        BTF.load(str(tmp_path / "nope"))
