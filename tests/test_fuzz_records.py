"""Fuzz: parse_record + normalize (+ encode_event) raise nothing but RecordError, and finish promptly."""
from __future__ import annotations

import json
import struct

from hypothesis import HealthCheck, given, settings, strategies as st

from kestrel_raw.errors import RecordError
from kestrel_raw.codec.events import normalize
from kestrel_raw.codec.jsonl import encode_event
from kestrel_raw.codec.records import KIND_CONNECT, KIND_EXEC, KIND_EXIT, KIND_OPEN, parse_record

# deadline: a hang or a pathological slow path fails the example instead of stalling the run.
FUZZ = settings(max_examples=1000, deadline=500, suppress_health_check=[HealthCheck.too_slow])


def run_pipeline(data: bytes) -> None:
    try:
        rec = parse_record(data)
    except RecordError:
        return
    event = normalize(rec, 1_700_000_000_000_000_000)
    line = encode_event(event)
    # Always strict UTF-8 JSON.
    obj = json.loads(line.decode("utf-8"))
    json.dumps(obj, ensure_ascii=False).encode("utf-8")


@FUZZ
@given(st.binary(max_size=400))
def test_arbitrary_bytes(data):
    run_pipeline(data)


@FUZZ
@given(st.sampled_from([KIND_EXEC, KIND_OPEN, KIND_CONNECT, KIND_EXIT, 0, 5, 0xFFFF]), st.binary(max_size=600))
def test_kind_then_arbitrary_bytes(kind, rest):
    run_pipeline(struct.pack("<H", kind) + rest)


@st.composite
def corrupted(draw):
    kind = draw(st.sampled_from([KIND_EXEC, KIND_OPEN, KIND_CONNECT, KIND_EXIT]))
    fixed = {KIND_EXEC: 80, KIND_OPEN: 96, KIND_CONNECT: 80, KIND_EXIT: 72}[kind]
    b = bytearray(draw(st.binary(min_size=fixed, max_size=fixed + 300)))
    struct.pack_into("<H", b, 0, kind)
    lengths = {KIND_EXEC: [64, 68], KIND_OPEN: [84], KIND_CONNECT: [72, 76], KIND_EXIT: []}[kind]
    for off in lengths:
        # near-valid lengths hit the boundary checks; huge ones hit the limits
        value = draw(st.one_of(st.integers(0, len(b) - fixed + 2), st.integers(0, 2**32 - 1)))
        struct.pack_into("<I", b, off, value)
    return bytes(b)


@FUZZ
@given(corrupted())
def test_valid_shapes_with_corrupted_lengths(data):
    run_pipeline(data)
