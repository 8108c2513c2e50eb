"""Fuzz: parse_record + normalize (+ encode_event) raise nothing but RecordError, and finish promptly."""
from __future__ import annotations

import json
import struct

from hypothesis import HealthCheck, given, settings, strategies as st

from helpers import FIXED, KIND_CONNECT, KIND_EXEC, KIND_EXIT, KIND_OPEN, LENGTH_FIELDS, with_kind
from kestrel_raw.codec.jsonl import encode_event, encode_record
from kestrel_raw.codec.normalize import event_from_raw, normalize
from kestrel_raw.codec.records import parse_record
from kestrel_raw.errors import RecordError

# deadline: a hang or a pathological slow path fails the example instead of stalling the run.
FUZZ = settings(max_examples=1000, deadline=500, suppress_health_check=[HealthCheck.too_slow])


def run_pipeline(data: bytes) -> None:
    wall = 1_700_000_000_000_000_000
    try:
        rec = parse_record(data)
    except RecordError:
        # the hot paths refuse it too
        for hot in (event_from_raw, encode_record):
            try:
                hot(data, wall)
            except RecordError:
                continue
            raise AssertionError(f"{hot.__name__} took a record parse_record refused")
        return
    event = normalize(rec, wall)
    line = encode_event(event)
    assert event_from_raw(data, wall) == event and encode_record(data, wall) == line
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
    run_pipeline(with_kind(kind, rest))


@st.composite
def corrupted(draw):
    kind = draw(st.sampled_from([KIND_EXEC, KIND_OPEN, KIND_CONNECT, KIND_EXIT]))
    fixed = FIXED[kind]
    b = bytearray(with_kind(kind, draw(st.binary(min_size=fixed, max_size=fixed + 300))))
    for off in LENGTH_FIELDS[kind]:
        # near-valid lengths hit the boundary checks; huge ones hit the limits
        value = draw(st.one_of(st.integers(0, len(b) - fixed + 2), st.integers(0, 2**32 - 1)))
        struct.pack_into("<I", b, off, value)
    return bytes(b)


@FUZZ
@given(corrupted())
def test_valid_shapes_with_corrupted_lengths(data):
    run_pipeline(data)
