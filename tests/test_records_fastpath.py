"""The struct fast path (parse_record) agrees with the construct oracle (parse_record_construct)."""
from __future__ import annotations

import struct

from hypothesis import given, settings, strategies as st

from helpers import records
from kestrel_raw import spec
from kestrel_raw.codec.records import parse_record
from kestrel_raw.codec.schema import build_record, parse_record_construct, struct_format
from kestrel_raw.errors import RecordError

u32 = st.integers(0, 2**32 - 1)
KIND_EXEC, KIND_OPEN, KIND_CONNECT, KIND_EXIT = 1, 2, 3, 4


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


# Where each kind's length fields are (from the spec: this test is about the parsers' agreement, not the
# layout, which tests/test_records.py pins by hand).
LENGTH_OFFSETS = {k.id: tuple(getattr(k, v.type.length).offset for v in k.var) for k in spec.KINDS.values()}
KIND_AT = spec.EXEC.kind.offset


@settings(max_examples=400)
@given(records(), st.data())
def test_agree_on_corrupted_lengths_and_truncation(data, draw):
    b = bytearray(data)
    kind = b[KIND_AT]
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


def test_fast_formats_are_what_the_construct_schema_derives():
    from kestrel_raw.codec import records, schema

    for kind, fixed in schema.FIXED_STRUCTS.items():
        assert records.FIXED_FORMATS[kind].format == struct_format(fixed)
    assert struct_format(schema.HEADER_STRUCT) == "<QHHLQQQLLLLLLLLLL16s"


def test_the_hot_path_does_not_import_construct():
    import subprocess
    import sys

    code = ("import sys, kestrel_raw.codec.records, kestrel_raw.codec.jsonl, kestrel_raw.codec.normalize; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'construct'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
