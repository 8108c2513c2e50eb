"""The struct fast path (parse_record) agrees with the construct oracle (parse_record_construct)."""
from __future__ import annotations

import struct

from hypothesis import given, settings, strategies as st

from kestrel_raw.errors import RecordError
from kestrel_raw.codec.records import (
    ARGS_MAX, KIND_CONNECT, KIND_EXEC, KIND_EXIT, KIND_OPEN, PATH_MAX, SOCKADDR_MAX, build_record,
    parse_record, parse_record_construct, struct_format, HEADER, EXEC_FIXED,
)

u16 = st.integers(0, 2**16 - 1)
u32 = st.integers(0, 2**32 - 1)
i32 = st.integers(-2**31, 2**31 - 1)
u64 = st.integers(0, 2**64 - 1)
comm = st.binary(max_size=16)

common = st.fixed_dictionaries({
    "flags": u16, "cpu": u32, "ts_ns": u64, "start_ns": u64, "pid": u32, "tid": u32, "ppid": u32,
    "uid": u32, "gid": u32, "reserved": u32, "comm": comm,
})


@st.composite
def records(draw):
    kind = draw(st.sampled_from([KIND_EXEC, KIND_OPEN, KIND_CONNECT, KIND_EXIT]))
    fields = draw(common)
    if kind == KIND_EXEC:
        fields.update(filename=draw(st.binary(max_size=300)), args=draw(st.binary(max_size=ARGS_MAX)),
                      args_total=draw(u32), reserved2=draw(u32))
    elif kind == KIND_OPEN:
        fields.update(ret=draw(i32), dfd=draw(i32), open_flags=draw(u64), mode=draw(u32),
                      path=draw(st.binary(max_size=PATH_MAX)), syscall=draw(u32), reserved2=draw(u32))
    elif kind == KIND_CONNECT:
        fields.update(ret=draw(i32), fd=draw(i32), addrlen=draw(u32), addr=draw(st.binary(max_size=SOCKADDR_MAX)))
    else:
        fields.update(exit_code=draw(i32), reserved2=draw(u32))
    pad = draw(st.binary(max_size=16))
    return build_record(kind, **fields) + pad


def outcome(parse, data):
    try:
        return parse(data)
    except RecordError:
        return RecordError


def agree(data):
    fast = outcome(parse_record, data)
    slow = outcome(parse_record_construct, data)
    assert fast == slow
    return fast


@settings(max_examples=400)
@given(records())
def test_agree_on_valid_records(data):
    rec = agree(data)
    assert rec is not RecordError


LENGTH_OFFSETS = {KIND_EXEC: (64, 68), KIND_OPEN: (84,), KIND_CONNECT: (76,), KIND_EXIT: ()}


@settings(max_examples=400)
@given(records(), st.data())
def test_agree_on_corrupted_lengths_and_truncation(data, draw):
    b = bytearray(data)
    kind = b[0]
    for off in LENGTH_OFFSETS[kind]:
        if draw.draw(st.booleans()):
            struct.pack_into("<I", b, off, draw.draw(st.one_of(u32, st.integers(0, 5000))))
    cut = draw.draw(st.integers(0, len(b)))
    agree(bytes(b[:cut]))
    agree(bytes(b))


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_agree_on_arbitrary_bytes(data):
    agree(data)


def test_agree_on_every_kind_example():
    for kind, extra in [(KIND_EXEC, dict(filename=b"/bin/true", args=b"true\0", args_total=5)),
                        (KIND_OPEN, dict(path=b"/x", ret=-2, dfd=-100)),
                        (KIND_CONNECT, dict(addr=b"\x0a\x00\x00\x50" + bytes(24), addrlen=28)),
                        (KIND_EXIT, dict(exit_code=9))]:
        data = build_record(kind, pid=7, comm=b"t", **extra)
        assert parse_record(data) == parse_record_construct(data)
        assert parse_record(data).pid == 7


def test_generated_format_refuses_unknown_constructs():
    import construct as cs
    import pytest
    with pytest.raises(TypeError, match="only little-endian"):
        struct_format(cs.Struct("x" / cs.Int32ub))
    with pytest.raises(TypeError, match="fast path only knows"):
        struct_format(cs.Struct("x" / cs.CString("utf8")))
    assert struct_format(HEADER, EXEC_FIXED) == "<HHLQQLLLLLL16sLLLL"


def test_pinned_formats_are_what_the_schema_derives():
    from kestrel_raw.codec import schema as record_schema, records

    assert records.HEADER_FORMAT.format == record_schema.struct_format(record_schema.HEADER)
    for kind, fixed in record_schema.FIXED_STRUCTS.items():
        assert records.FIXED_FORMATS[kind].format == record_schema.struct_format(record_schema.HEADER, fixed)


def test_the_hot_path_does_not_import_construct():
    import subprocess
    import sys

    code = ("import sys, kestrel_raw.codec.records, kestrel_raw.codec.jsonl, kestrel_raw.codec.events; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'construct'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
