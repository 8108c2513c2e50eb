"""The BTF parser on a hand-encoded blob: every kind, bitfields both ways, anonymous members, lookups.

The blob is written word by word below (struct btf_type = name_off, info, size|type, then the kind's
records), so each expectation can be checked against the bytes by reading them.
"""
from __future__ import annotations

import os
import struct
import subprocess
import sys

import pytest

from kestrel_raw.btf import BTF, BTFError, Member, format_aggregate, format_raw
from kestrel_raw.btf.kinds import BTF_KIND_FUNC, BTF_KIND_STRUCT, BTF_KIND_TYPEDEF

STRINGS = (b"\0int\0unsigned int\0char\0task\0pid\0flags\0parent\0mm\0lo\0hi\0count\0arg_start\0"
           b"old_bits\0name\0u64\0bits3\0long long unsigned int\0long int\0color\0RED\0BLUE\0big\0SMALL\0"
           b"HUGE\0later\0a\0do_it\0counter\0.data\0double\0tag1\0user\0signal\0live\0atomic\0task_t\0")


def s(name: str) -> int:
    """Offset of ``name`` in STRINGS."""
    return STRINGS.index(b"\0" + name.encode() + b"\0") + 1


def info(kind: int, vlen: int = 0, kflag: int = 0) -> int:
    return kflag << 31 | kind << 24 | vlen


INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FUNC_PROTO, VAR, \
    DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(1, 20)

TYPES: list[tuple[int, ...]] = [
    # [1] INT 'int': size 4, encoding word SIGNED << 24 | offset 0 << 16 | 32 bits
    (s("int"), info(INT), 4, 0x01000020),
    # [2] INT 'unsigned int'
    (s("unsigned int"), info(INT), 4, 0x00000020),
    # [3] INT 'char', encoding CHAR
    (s("char"), info(INT), 1, 0x02000008),
    # [4] PTR -> 5
    (0, info(PTR), 5),
    # [5] STRUCT 'task' size 32, kind_flag: offsets carry bitfield size << 24 | bit offset
    (s("task"), info(STRUCT, 4, 1), 32,
     s("pid"), 1, 0,
     s("flags"), 2, 3 << 24 | 32,        # unsigned int flags:3 at bit 32
     0, 6, 64,                           # anonymous union at byte 8
     s("parent"), 4, 192),
    # [6] UNION (anon) size 16
    (0, info(UNION, 2), 16,
     s("mm"), 7, 0,
     0, 8, 0),                           # anonymous struct inside the anonymous union
    # [7] PTR -> 9
    (0, info(PTR), 9),
    # [8] STRUCT (anon) size 16, no kind_flag
    (0, info(STRUCT, 2), 16,
     s("lo"), 10, 0,
     s("hi"), 10, 64),
    # [9] STRUCT 'mm' size 40, no kind_flag: the bitfield is told by its INT type (id 12)
    (s("mm"), info(STRUCT, 4), 40,
     s("count"), 11, 0,
     s("arg_start"), 10, 64,
     s("old_bits"), 12, 128,
     s("name"), 15, 192),
    # [10] TYPEDEF 'u64' -> 13
    (s("u64"), info(TYPEDEF), 13),
    # [11] CONST -> 1
    (0, info(CONST), 1),
    # [12] INT 'bits3' size 4, bit offset 2, 3 bits (the pre-kind_flag bitfield encoding)
    (s("bits3"), info(INT), 4, 0x00020003),
    # [13] INT 'long long unsigned int' size 8
    (s("long long unsigned int"), info(INT), 8, 0x00000040),
    # [14] INT 'long int' size 8 SIGNED: gives the pointer size
    (s("long int"), info(INT), 8, 0x01000040),
    # [15] ARRAY char[16], index type 2
    (0, info(ARRAY), 0, 3, 2, 16),
    # [16] ENUM 'color' size 4, kind_flag: signed values
    (s("color"), info(ENUM, 2, 1), 4,
     s("RED"), 0xFFFFFFFF,
     s("BLUE"), 2),
    # [17] ENUM64 'big' size 8, unsigned: (name, lo32, hi32)
    (s("big"), info(ENUM64, 2), 8,
     s("SMALL"), 1, 0,
     s("HUGE"), 0, 0xFFFFFFFF),
    # [18] FWD 'later', kind_flag: a union
    (s("later"), info(FWD, 0, 1), 0),
    # [19] VOLATILE -> 2
    (0, info(VOLATILE), 2),
    # [20] RESTRICT -> 4
    (0, info(RESTRICT), 4),
    # [21] FUNC_PROTO returns int: (int a, ...)
    (0, info(FUNC_PROTO, 2), 1,
     s("a"), 1,
     0, 0),
    # [22] FUNC 'do_it' -> 21, linkage global (in vlen)
    (s("do_it"), info(FUNC, 1), 21),
    # [23] VAR 'counter' int, linkage 1 (global allocated)
    (s("counter"), info(VAR), 1, 1),
    # [24] DATASEC '.data' size 8: counter at 0, 4 bytes
    (s(".data"), info(DATASEC, 1), 8,
     23, 0, 4),
    # [25] FLOAT 'double'
    (s("double"), info(FLOAT), 8),
    # [26] DECL_TAG 'tag1' on do_it, component_idx -1
    (s("tag1"), info(DECL_TAG), 22, 0xFFFFFFFF),
    # [27] TYPE_TAG 'user' -> int
    (s("user"), info(TYPE_TAG), 1),
    # [28] STRUCT 'signal' size 8: an embedded struct at byte 4
    (s("signal"), info(STRUCT, 1), 8,
     s("live"), 29, 32),
    # [29] STRUCT 'atomic' size 4
    (s("atomic"), info(STRUCT, 1), 4,
     s("counter"), 1, 0),
    # [30] TYPEDEF 'task_t' -> 5
    (s("task_t"), info(TYPEDEF), 5),
    # [31] FUNC 'mm' -> 21, static: shares its name with struct mm
    (s("mm"), info(FUNC, 0), 21),
]


def blob(types=TYPES, strings: bytes = STRINGS, order: str = "<") -> bytes:
    body = b"".join(struct.pack(f"{order}{len(t)}I", *t) for t in types)
    header = struct.pack(f"{order}HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(body), len(body), len(strings))
    return header + body + strings


@pytest.fixture(scope="module")
def btf() -> BTF:
    return BTF.parse(blob())


def test_header_bytes_are_pinned():
    data = blob()
    # magic 0xeb9f LE, version 1, flags 0, hdr_len 24, type_off 0, type_len, str_off = type_len, str_len
    type_len = sum(4 * len(t) for t in TYPES)
    assert data[:24] == bytes.fromhex("9feb0100" "18000000" "00000000") + struct.pack(
        "<III", type_len, type_len, len(STRINGS))
    h = BTF.parse(data).header
    assert (h.magic, h.version, h.flags, h.hdr_len, h.type_off, h.type_len, h.str_off, h.str_len,
            h.byteorder) == (0xEB9F, 1, 0, 24, 0, type_len, type_len, len(STRINGS), "little")


RAW = """\
[1] INT 'int' size=4 bits_offset=0 nr_bits=32 encoding=SIGNED
[2] INT 'unsigned int' size=4 bits_offset=0 nr_bits=32 encoding=(none)
[3] INT 'char' size=1 bits_offset=0 nr_bits=8 encoding=CHAR
[4] PTR '(anon)' type_id=5
[5] STRUCT 'task' size=32 vlen=4
\t'pid' type_id=1 bits_offset=0
\t'flags' type_id=2 bits_offset=32 bitfield_size=3
\t'(anon)' type_id=6 bits_offset=64
\t'parent' type_id=4 bits_offset=192
[6] UNION '(anon)' size=16 vlen=2
\t'mm' type_id=7 bits_offset=0
\t'(anon)' type_id=8 bits_offset=0
[7] PTR '(anon)' type_id=9
[8] STRUCT '(anon)' size=16 vlen=2
\t'lo' type_id=10 bits_offset=0
\t'hi' type_id=10 bits_offset=64
[9] STRUCT 'mm' size=40 vlen=4
\t'count' type_id=11 bits_offset=0
\t'arg_start' type_id=10 bits_offset=64
\t'old_bits' type_id=12 bits_offset=128
\t'name' type_id=15 bits_offset=192
[10] TYPEDEF 'u64' type_id=13
[11] CONST '(anon)' type_id=1
[12] INT 'bits3' size=4 bits_offset=2 nr_bits=3 encoding=(none)
[13] INT 'long long unsigned int' size=8 bits_offset=0 nr_bits=64 encoding=(none)
[14] INT 'long int' size=8 bits_offset=0 nr_bits=64 encoding=SIGNED
[15] ARRAY '(anon)' type_id=3 index_type_id=2 nr_elems=16
[16] ENUM 'color' encoding=SIGNED size=4 vlen=2
\t'RED' val=-1
\t'BLUE' val=2
[17] ENUM64 'big' encoding=UNSIGNED size=8 vlen=2
\t'SMALL' val=1ULL
\t'HUGE' val=18446744069414584320ULL
[18] FWD 'later' fwd_kind=union
[19] VOLATILE '(anon)' type_id=2
[20] RESTRICT '(anon)' type_id=4
[21] FUNC_PROTO '(anon)' ret_type_id=1 vlen=2
\t'a' type_id=1
\t'(anon)' type_id=0
[22] FUNC 'do_it' type_id=21 linkage=global
[23] VAR 'counter' type_id=1, linkage=global
[24] DATASEC '.data' size=8 vlen=1
\ttype_id=23 offset=0 size=4 (VAR 'counter')
[25] FLOAT 'double' size=8
[26] DECL_TAG 'tag1' type_id=22 component_idx=-1
[27] TYPE_TAG 'user' type_id=1
[28] STRUCT 'signal' size=8 vlen=1
\t'live' type_id=29 bits_offset=32
[29] STRUCT 'atomic' size=4 vlen=1
\t'counter' type_id=1 bits_offset=0
[30] TYPEDEF 'task_t' type_id=5
[31] FUNC 'mm' type_id=21 linkage=static
"""


def test_raw_dump_of_every_kind(btf):
    assert len(btf) == 31
    assert "".join(format_raw(btf, t) + "\n" for t in btf) == RAW


def test_big_endian_blob_reads_the_same():
    be = BTF.parse(blob(order=">"))
    assert be.header.byteorder == "big"
    assert "".join(format_raw(be, t) + "\n" for t in be) == RAW


def test_decoded_values(btf):
    t = btf.type_by_id(1)
    assert (t.kind_name, t.name, t.size, t.int_encoding.encoding, t.int_encoding.bits) == ("INT", "int", 4, 1, 32)
    assert btf.type_by_id(15).array.nelems == 16
    assert [(e.name, e.value) for e in btf.type_by_id(16).enumerators] == [("RED", -1), ("BLUE", 2)]
    assert btf.type_by_id(17).enumerators[1].value == 0xFFFFFFFF00000000
    assert btf.type_by_id(22).linkage == 1 and btf.type_by_id(23).linkage == 1
    assert btf.type_by_id(26).component_idx == -1
    assert btf.type_by_id(24).secinfos[0].size == 4
    assert [(p.name, p.type) for p in btf.type_by_id(21).params] == [("a", 1), ("", 0)]
    assert btf.type_by_id(0).name == "void"
    with pytest.raises(BTFError, match=r"^no BTF type id 32: ids run 0\.\.31"):
        btf.type_by_id(32)


def test_bitfields_both_encodings(btf):
    # kind_flag: size in the member's offset word.
    assert btf.member("task", "flags") == Member("flags", 4, 4, 32, 3, 2)
    # no kind_flag: INT 'bits3' (offset 2, 3 bits) at member bit 128 -> bits 130..132.
    assert btf.member("mm", "old_bits") == Member("old_bits", 16, 4, 130, 3, 12)
    assert not btf.member("mm", "arg_start").is_bitfield


def test_anonymous_members_add_their_offsets(btf):
    # task -> (anon union at byte 8) -> mm, and -> (anon struct at 0 of it) -> hi at 8.
    assert btf.member("task", "mm") == Member("mm", 8, 8, 64, 0, 7)
    assert btf.member("task", "hi") == Member("hi", 16, 8, 128, 0, 10)
    assert btf.member("task", "parent") == Member("parent", 24, 8, 192, 0, 4)
    assert btf.member("task_t", "pid").offset == 0   # through a typedef


def test_path_hops(btf):
    assert btf.path("task.mm.arg_start") == [(8, 8), (8, 8)]
    assert btf.path("task.parent.pid") == [(24, 8), (0, 4)]
    assert btf.path("task.parent.parent.hi") == [(24, 8), (24, 8), (16, 8)]
    assert btf.path("signal.live.counter") == [(4, 4)]
    assert btf.path("mm.name") == [(24, 16)]


@pytest.mark.parametrize("dotted, message", [
    ("task.pid.x", r"^task\.pid has type int: only a struct, a union or a pointer to one can be gone through to reach 'x'$"),
    ("task.flags", r"^task\.flags is a 3-bit bitfield"),
    ("task", r"^path 'task' must be 'type\.member"),
    ("task..pid", r"^path 'task\.\.pid' must be"),
    ("task.pdi", r"^struct task has no member 'pdi' \(anonymous members searched too\) in BTF from <bytes>; "
                 r"close matches: pid$"),
])
def test_path_errors(btf, dotted, message):
    with pytest.raises(BTFError, match=message):
        btf.path(dotted)


def test_sizes(btf):
    assert btf.size_of("task") == 32
    assert btf.size_of("task_t") == 32
    assert btf.size_of("u64") == 8
    assert btf.size_of(15) == 16          # char[16]
    assert btf.size_of(4) == 8            # pointer: sizeof(long int)
    assert btf.size_of(11) == 4           # const int
    assert btf.size_of(19) == 4           # volatile unsigned int
    assert btf.size_of(27) == 4           # type tag
    assert btf.size_of("counter") == 4    # var
    assert btf.pointer_size == 8
    with pytest.raises(BTFError, match=r"^BTF type \[21\] FUNC_PROTO '\(anon\)' has no size"):
        btf.size_of(21)
    with pytest.raises(BTFError, match=r"has no size"):
        btf.size_of("later")


def test_find_prefers_aggregates_and_takes_a_kind(btf):
    assert btf.find("mm").kind == BTF_KIND_STRUCT
    assert btf.find("mm", kind="func").id == 31
    assert btf.find("mm", kind=BTF_KIND_FUNC).id == 31
    assert btf.find("task_t").kind == BTF_KIND_TYPEDEF
    assert [t.id for t in btf.find_all("mm")] == [9, 31]
    with pytest.raises(BTFError, match=r"^no union type named 'mm' in BTF from <bytes>: that name is a func and a struct$"):
        btf.find("mm", kind="union")
    with pytest.raises(BTFError, match=r"^no type named 'tsak' in BTF from <bytes>; close matches: task"):
        btf.find("tsak")
    with pytest.raises(BTFError, match=r"^no type named 'zzzz' in BTF from <bytes>$"):
        btf.find("zzzz")
    with pytest.raises(BTFError, match=r"^unknown BTF kind 'class'; use one of int, ptr"):
        btf.find("mm", kind="class")


def test_enums(btf):
    assert btf.enum_values("color") == {"RED": -1, "BLUE": 2}
    assert btf.enum_value("big", "HUGE") == 0xFFFFFFFF00000000
    with pytest.raises(BTFError, match=r"^enum color has no value 'BLEU' in BTF from <bytes>; close matches: BLUE$"):
        btf.enum_value("color", "BLEU")
    with pytest.raises(BTFError, match=r"is not an enum"):
        btf.enum_values(5)


def test_member_errors(btf):
    with pytest.raises(BTFError, match=r"^BTF type \[1\] INT 'int' is not a struct or union \(it resolves to a int\)"):
        btf.member("int", "x")
    with pytest.raises(BTFError, match=r"has no member 'lo ' .*close matches: lo$"):
        btf.member("task", "lo ")


C_TASK = """\
struct task {
\tint pid; /* offset: 0, size: 4 */
\tunsigned int flags: 3; /* offset: 4, bit_offset: 32, bits: 3 */
\tunion {
\t\tstruct mm *mm; /* offset: 8, size: 8 */
\t\tstruct {
\t\t\tu64 lo; /* offset: 8, size: 8 */
\t\t\tu64 hi; /* offset: 16, size: 8 */
\t\t}; /* offset: 8, size: 16 */
\t}; /* offset: 8, size: 16 */
\tstruct task *parent; /* offset: 24, size: 8 */
}; /* size: 32 */"""


def test_c_format(btf):
    assert format_aggregate(btf, btf.find("task")) == C_TASK
    assert btf.type_name(15) == "char [16]"
    assert btf.type_name(20) == "struct task * restrict"  # spaced as libbpf spaces a qualified pointer
    assert btf.type_name(22) == "int do_it(int a, ...)"
    assert btf.type_name(11) == "const int"


def _tool(*args: str, cwd) -> "subprocess.CompletedProcess[str]":
    tool = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "btfdump.py")
    return subprocess.run([sys.executable, tool, *args], cwd=cwd, capture_output=True, text=True)


def test_tool_on_a_file(tmp_path):
    path = tmp_path / "blob.btf"
    path.write_bytes(blob())
    assert _tool("--file", str(path), "--raw", cwd=tmp_path).stdout == RAW
    assert _tool("--file", str(path), "--raw", "17", "color", cwd=tmp_path).stdout == (
        "[17] ENUM64 'big' encoding=UNSIGNED size=8 vlen=2\n\t'SMALL' val=1ULL\n"
        "\t'HUGE' val=18446744069414584320ULL\n"
        "[16] ENUM 'color' encoding=SIGNED size=4 vlen=2\n\t'RED' val=-1\n\t'BLUE' val=2\n")
    assert _tool("--file", str(path), "task", cwd=tmp_path).stdout == C_TASK + "\n"
    assert _tool("--file", str(path), "task.mm.arg_start", "signal.live.counter", cwd=tmp_path).stdout == (
        "task.mm.arg_start: 2 loads, one per pointer dereference; the last is a u64\n"
        "  1. offset 8, size 8\n"
        "  2. offset 8, size 8\n"
        "signal.live.counter: offset 4, size 4 (int)\n")
    assert _tool("--file", str(path), "mm", "--kind", "func", cwd=tmp_path).stdout == (
        "[31] FUNC 'mm' type_id=21 linkage=static\n")
    bad = _tool("--file", str(path), "task.pdi", cwd=tmp_path)
    assert (bad.returncode, bad.stdout) == (1, "")
    assert bad.stderr == ("btfdump.py: error: struct task has no member 'pdi' (anonymous members searched too) "
                          f"in BTF from {path}; close matches: pid\n")
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x7fELF" + bytes(40))
    assert _tool("--file", str(junk), "--raw", cwd=tmp_path).stderr.startswith(
        "btfdump.py: error: Invalid BTF magic: 0x457f (expected 0xeb9f)")


def test_tool_help_says_what_the_formats_are(tmp_path):
    out = _tool("--help", cwd=tmp_path).stdout
    assert "/* offset: N, size: M */" in out and "format raw" in out and "--file PATH" in out


def test_btf_imports_neither_ctypes_nor_trio(tmp_path):
    import subprocess
    import sys
    code = ("import sys, kestrel_raw.btf, kestrel_raw.btf.cformat, kestrel_raw.btf.raw; "
            "print(sorted(m for m in ('ctypes', 'trio') if m in sys.modules))")
    import os
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True)
    assert out.stdout == "[]\n"
