"""Record parsing: the documented wire format (docs/architecture.md "Records"), pinned byte for byte."""
from __future__ import annotations

import struct

import pytest

from helpers import COMMON, connect_bytes, exec_bytes, exit_bytes, fork_bytes, header, open_bytes, proc_bytes
from kestrel_raw.codec.records import (
    FIXED_FORMATS, RECORD_CLASSES, ConnectRecord, ExecRecord, ExitRecord, OpenRecord, pack_record, parse_record,
)
from kestrel_raw.codec.schema import RECORD_STRUCTS, build_record, parse_record_construct
from kestrel_raw.errors import RecordError

KIND_EXEC, KIND_OPEN, KIND_CONNECT, KIND_EXIT, KIND_FORK, KIND_PROC = 1, 2, 3, 4, 5, 250
KIND_SHELL_COMMAND, KIND_DNS_QUERY = 50, 51
PARSERS = [parse_record, parse_record_construct]
BUILDERS = [build_record, pack_record]


def test_fixed_part_sizes_follow_the_table():
    assert {k: f.size for k, f in FIXED_FORMATS.items()} == {KIND_EXEC: 224, KIND_OPEN: 144, KIND_CONNECT: 136,
                                                            KIND_EXIT: 104, KIND_FORK: 200, KIND_PROC: 200,
                                                            KIND_SHELL_COMMAND: 104, KIND_DNS_QUERY: 288}
    assert FIXED_FORMATS[KIND_OPEN].format == "<QHHLQQQLLLLLLLLLL16sllQQQLLLL"
    assert FIXED_FORMATS[KIND_CONNECT].format == "<QHHLQQQLLLLLLLLLL16sllLLHH4s16s"
    assert FIXED_FORMATS[KIND_FORK].format == "<QHHLQQQLLLLLLLLLL16sLLLLLLLLLL64s"


@pytest.mark.parametrize("build", BUILDERS)
@pytest.mark.parametrize("name, offset, size", [
    ("ts_ns", 0, 8), ("header_flags", 10, 2), ("cpu", 12, 4), ("start_ns", 16, 8), ("parent_start_ns", 24, 8),
    ("cgroup_id", 32, 8), ("pid", 40, 4), ("tid", 44, 4), ("ppid", 48, 4), ("uid", 52, 4), ("gid", 56, 4),
    ("euid", 60, 4), ("egid", 64, 4), ("auid", 68, 4), ("sessionid", 72, 4), ("tty", 76, 4),
])
def test_header_offsets(build, name, offset, size):
    value = 0x0102030405060708 & ((1 << (8 * size)) - 1)
    data = build(KIND_EXIT, **{name: value})
    assert data[8:10] == b"\x04\x00"  # the kind
    assert data[offset:offset + size] == value.to_bytes(size, "little")


@pytest.mark.parametrize("build", BUILDERS)
@pytest.mark.parametrize("kind, name, offset, size", [
    (KIND_EXEC, "filename_len", 96, 4), (KIND_EXEC, "args_len", 100, 4), (KIND_EXEC, "args_total", 104, 4),
    (KIND_EXEC, "ret", 108, 4), (KIND_EXEC, "caps_effective", 112, 8), (KIND_EXEC, "caps_permitted", 120, 8),
    (KIND_EXEC, "pidns", 128, 4), (KIND_EXEC, "mntns", 132, 4), (KIND_EXEC, "netns", 136, 4),
    (KIND_EXEC, "utsns", 140, 4), (KIND_EXEC, "ctx_flags", 144, 4), (KIND_EXEC, "exe_len", 148, 4),
    (KIND_EXEC, "cwd_len", 152, 4),
    (KIND_OPEN, "ret", 96, 4), (KIND_OPEN, "dfd", 100, 4), (KIND_OPEN, "flags", 104, 8),
    (KIND_OPEN, "mode", 112, 8), (KIND_OPEN, "resolve", 120, 8), (KIND_OPEN, "path_len", 128, 4),
    (KIND_OPEN, "syscall", 132, 4), (KIND_OPEN, "resolved_len", 136, 4),
    (KIND_CONNECT, "ret", 96, 4), (KIND_CONNECT, "fd", 100, 4), (KIND_CONNECT, "addrlen", 104, 4),
    (KIND_CONNECT, "addr_len", 108, 4), (KIND_CONNECT, "sk_family", 112, 2), (KIND_CONNECT, "sk_dport", 114, 2),
    (KIND_EXIT, "exit_code", 96, 4),
    (KIND_FORK, "fork_flags", 96, 4), (KIND_FORK, "pidns", 104, 4), (KIND_FORK, "utsns", 116, 4),
    (KIND_FORK, "ctx_flags", 120, 4), (KIND_FORK, "exe_len", 124, 4), (KIND_FORK, "cwd_len", 128, 4),
    (KIND_PROC, "syscall", 96, 4), (KIND_PROC, "netns", 112, 4), (KIND_PROC, "cwd_len", 128, 4),
])
def test_kind_offsets(build, kind, name, offset, size):
    value = 0x0A0B0C0D0E0F1011 & ((1 << (8 * size - 1)) - 1) if name not in (
        "filename_len", "args_len", "path_len", "addr_len", "resolved_len", "exe_len", "cwd_len") else 0
    # Length fields are checked by building zero-length variable parts and pinning the zero.
    data = build(kind, **{name: value})
    assert data[offset:offset + size] == value.to_bytes(size, "little")


@pytest.mark.parametrize("build", BUILDERS)
def test_builders_match_hand_built_bytes(build):
    common = {k: v for k, v in COMMON.items() if k != "header_flags"}
    assert build(KIND_OPEN, **common, ret=3, dfd=-100, flags=0o2000000, mode=0o644,
                 path=b"/etc/passwd") == open_bytes()
    assert build(KIND_EXIT, **common, exit_code=0x0300) == exit_bytes()
    assert exit_bytes().hex() == (
        "7bca9a3b00000000" "0400" "0000" "03000000" "583e0f0000000000" "f877080000000000" "0100000000000000"
        "92100000" "93100000" "01000000" "e8030000" "64000000" "e8030000" "64000000" "e8030000" "07000000"
        "02008008" "63617400000000000000000000000000" "00030000" "00000000")
    ctx = dict(pidns=4026531836, mntns=4026531841, netns=4026531840, utsns=4026531838, ctx_flags=1,
               hostname=b"host")
    assert build(KIND_FORK, **common, fork_flags=0, exe=b"/bin/sh", cwd=b"/", **ctx) == fork_bytes(
        ctx=ctx, exe=b"/bin/sh", cwd=b"/")
    assert build(KIND_PROC, **common, syscall=3, cwd=b"/tmp", **ctx) == proc_bytes(syscall=3, ctx=ctx, cwd=b"/tmp")


def test_builders_refuse_unknown_fields():
    for build in BUILDERS:
        with pytest.raises(TypeError, match=r"unknown fields for a open record: \['bogus'\]"):
            build(KIND_OPEN, bogus=1)


@pytest.mark.parametrize("parse", PARSERS)
def test_exec_record(parse):
    ctx = dict(pidns=1, mntns=2, netns=3, utsns=4, ctx_flags=3, hostname=b"box")
    rec = parse(exec_bytes(pad=b"\0" * 5, ret=-2, caps_effective=1 << 40, caps_permitted=3, ctx=ctx,
                           exe=b"/usr/bin/ls", cwd=b"/tmp"))
    assert rec == ExecRecord(**COMMON, filename=b"/bin/ls", args=b"ls\0-l\0/tmp\0", args_total=11, ret=-2,
                             caps_effective=1 << 40, caps_permitted=3, **ctx, exe=b"/usr/bin/ls", cwd=b"/tmp")
    assert rec.kind == KIND_EXEC and rec.truncated is False and rec.fault is False


@pytest.mark.parametrize("parse", PARSERS)
def test_exec_truncated_by_total_or_flag(parse):
    assert parse(exec_bytes(args=b"a\0b", args_total=9000)).truncated is True
    assert parse(exec_bytes(flags=1)).truncated is True


@pytest.mark.parametrize("parse", PARSERS)
def test_open_record(parse):
    rec = parse(open_bytes(flags=2, syscall=1, resolve=4, resolved=b"/etc/passwd\xff"))
    assert rec == OpenRecord(**{**COMMON, "header_flags": 2}, ret=3, dfd=-100, flags=0o2000000, mode=0o644,
                             resolve=4, path=b"/etc/passwd", syscall=1, resolved_path=b"/etc/passwd\xff")
    assert rec.fault is True and rec.truncated is False


@pytest.mark.parametrize("parse", PARSERS)
def test_strings_are_cut_at_nul(parse):
    rec = parse(open_bytes(path=b"/tmp/x\0garbage"))
    assert rec.path == b"/tmp/x"
    assert parse(exec_bytes(filename=b"/bin/sh\0")).filename == b"/bin/sh"
    full = header(KIND_EXIT, comm=b"0123456789abcdef") + struct.pack("<iI", 0, 0)
    assert parse(full).comm == b"0123456789abcdef"


@pytest.mark.parametrize("parse", PARSERS)
def test_connect_record(parse):
    rec = parse(connect_bytes())
    assert rec == ConnectRecord(**COMMON, ret=-111, fd=5, addrlen=16, sk_family=0, sk_dport=0, sk_daddr=bytes(4),
                                sk_daddr6=bytes(16), addr=b"\x02\x00\x1f\x90\x7f\x00\x00\x01" + bytes(8))


@pytest.mark.parametrize("parse", PARSERS)
def test_exit_record(parse):
    assert parse(exit_bytes(-1)) == ExitRecord(**COMMON, exit_code=-1)


def test_memoryview_and_bytearray_inputs():
    data = open_bytes()
    assert parse_record(memoryview(data)) == parse_record(bytearray(data)) == parse_record(data)
    assert type(parse_record(memoryview(data)).path) is bytes


@pytest.mark.parametrize("parse", PARSERS)
@pytest.mark.parametrize("data, message", [
    (b"", "too short to hold its kind"),
    (b"\x02", "too short to hold its kind"),
    (bytes(9), "too short to hold its kind"),
    (header(9), "record kind 9 is unknown \\(known: 1 exec, 2 open, 3 connect, 4 exit, 5 fork, 50 shell_command, "
               "51 dns_query, 250 proc\\)"),
    (header(0), "record kind 0 is unknown"),
])
def test_malformed_header(parse, data, message):
    with pytest.raises(RecordError, match=message):
        parse(data)


@pytest.mark.parametrize("parse", PARSERS)
@pytest.mark.parametrize("data", [
    open_bytes()[:143],                # fixed part cut
    exit_bytes()[:103],
    fork_bytes()[:199],
    fork_bytes(exe=b"/x")[:-1],
    header(KIND_EXEC),                 # header alone
    open_bytes()[:-1],                 # path one byte short
    exec_bytes()[:-1],                 # args one byte short
    connect_bytes()[:-1],
])
def test_short_records(parse, data):
    with pytest.raises(RecordError):
        parse(data)


def test_short_record_messages():
    with pytest.raises(RecordError, match=r"open record is 143 bytes, shorter than its 144-byte fixed part"):
        parse_record(open_bytes()[:143])
    with pytest.raises(RecordError, match=r"open record path and resolved_path ends at byte 155, beyond the "
                                          r"154-byte record"):
        parse_record(open_bytes()[:-1])


def _set_u32(data: bytes, offset: int, value: int) -> bytes:
    b = bytearray(data)
    struct.pack_into("<I", b, offset, value)
    return bytes(b)


@pytest.mark.parametrize("parse", PARSERS)
def test_length_limits(parse):
    big = b"x" * 4097
    with pytest.raises(RecordError, match="args_len is 4097, above the limit 4096" if parse is parse_record
                       else "exec record is malformed"):
        parse(exec_bytes(args=big))
    with pytest.raises(RecordError):
        parse(exec_bytes(filename=big))
    with pytest.raises(RecordError):
        parse(open_bytes(path=big))
    with pytest.raises(RecordError):
        parse(connect_bytes(addr=bytes(129)))
    # At the limits they parse.
    assert parse(exec_bytes(args=b"y" * 4096)).args == b"y" * 4096
    assert parse(open_bytes(path=b"p" * 4096)).path == b"p" * 4096
    assert parse(connect_bytes(addr=bytes(128))).addr == bytes(128)


@pytest.mark.parametrize("parse", PARSERS)
def test_length_field_beyond_record(parse):
    with pytest.raises(RecordError):
        parse(_set_u32(open_bytes(), 128, 12))         # path_len 12, 11 bytes present
    with pytest.raises(RecordError):
        parse(_set_u32(exec_bytes(), 96, 4000))        # filename_len
    with pytest.raises(RecordError):
        parse(_set_u32(exec_bytes(), 152, 1))          # cwd_len
    with pytest.raises(RecordError):
        parse(_set_u32(connect_bytes(), 108, 17))      # addr_len


def test_all_kinds_have_a_struct():
    assert sorted(RECORD_STRUCTS) == [1, 2, 3, 4, 5, 50, 51, 250]


@pytest.mark.parametrize("parse", PARSERS)
def test_fork_and_proc_records(parse):
    ctx = dict(pidns=11, mntns=12, netns=13, utsns=14, ctx_flags=1, hostname=b"h")
    rec = parse(fork_bytes(thread=True, ctx=ctx, exe=b"/bin/sh", cwd=b"/root"))
    assert rec == RECORD_CLASSES[KIND_FORK](**COMMON, fork_flags=1, **ctx, exe=b"/bin/sh", cwd=b"/root")
    assert rec.thread is True
    rec = parse(proc_bytes(syscall=5, ctx=ctx, cwd=b"/"))
    assert rec == RECORD_CLASSES[KIND_PROC](**COMMON, syscall=5, **ctx, exe=b"", cwd=b"/")
