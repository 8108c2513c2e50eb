"""Bad records through the collector's real poller: a kernel ring buffer, RingBufReader, poll_ring.

tests/test_fuzz_records.py proves parse_record + normalize + encode_event raise nothing but RecordError on
arbitrary bytes and on valid shapes with corrupted lengths.  This file proves the promise where it matters:
the poller that runs those functions keeps running.  Records are written into a real BPF ring buffer by
the kernel-side producer of tests/helpers.py (``ringbuf_output`` of bytes the test chooses), read by the
collector's batch poller (``kestrel_raw.collector.poll.poll_ring``) through a ``RingBufReader``, one at a
time, and the test checks that each was counted (delivered or a parse error), that good records after bad
ones arrive exact, and that every delivered event encodes to a strict UTF-8 JSON line.
"""
from __future__ import annotations

import base64
import json
import random
import struct

import pytest
import trio

from kestrel_raw.collector import KestrelCollector
from kestrel_raw.collector.deliver import cache_only
from kestrel_raw.collector.poll import poll_ring
from kestrel_raw.config import CollectorConfig
from kestrel_raw.codec.jsonl import encode_event
from kestrel_raw.maps.ringbuf import RingBufReader

from helpers import (
    FIXED, KIND_CONNECT, KIND_EXEC, KIND_EXIT, KIND_FORK, KIND_OPEN, KIND_PROC, LENGTH_FIELDS, MAX_PAYLOAD, Producer,
    connect_bytes,
    exec_bytes, exit_bytes, header, open_bytes, with_kind,
)

pytestmark = pytest.mark.kernel


def set_u32(data: bytes, offset: int, value: int) -> bytes:
    b = bytearray(data)
    struct.pack_into("<I", b, offset, value)
    return bytes(b)


HOSTILE_PATH = b'/tmp/\n"\\\xff\x01'
ABSTRACT = b"\x01\x00\x00kr\xff\x00x"

GOOD = [  # (record, the JSON line's exact values)
    (open_bytes(path=HOSTILE_PATH, pad=b"\0" * 5), {"path": HOSTILE_PATH}),
    (open_bytes(path=b"/etc/x\0after-nul"), {"path": b"/etc/x"}),  # the kernel string ends at its NUL
    (exec_bytes(filename=b"/bin/\xc3", args=b"a\0\xff\n\0"), {"filename": b"/bin/\xc3", "argv": [b"a", b"\xff\n"]}),
    (exec_bytes(args=b"cut-sho", args_total=5000), {"argv": [b"cut-sho"], "truncated": True}),
    (connect_bytes(addr=ABSTRACT, addrlen=len(ABSTRACT)), {"daddr": b"@kr\xff\x00x", "family": b"AF_UNIX"}),
    (connect_bytes(addrlen=0xFFFFFFFF), {"daddr": b"127.0.0.1", "dport": 8080}),
    (exit_bytes(-1) + b"trailing", {"exit_code": 255, "signal": 127}),
    (open_bytes(flags=3), {"truncated": True, "fault": True}),
]

BAD = [
    b"",
    b"\x01",
    with_kind(0, bytes(100)),
    with_kind(9, bytes(100)),
    with_kind(KIND_FORK, bytes(100)),  # shorter than a fork record's fixed part
    with_kind(0xFFFF, bytes(100)),
    *[rec[:FIXED[kind] - 1] for kind, rec in
      [(KIND_EXEC, exec_bytes()), (KIND_OPEN, open_bytes()), (KIND_CONNECT, connect_bytes()),
       (KIND_EXIT, exit_bytes())]],
    exec_bytes()[:-1],  # args one byte short of args_len
    open_bytes()[:-1],
    connect_bytes()[:-1],
    set_u32(exec_bytes(), LENGTH_FIELDS[KIND_EXEC][0], 4097),
    set_u32(exec_bytes(), LENGTH_FIELDS[KIND_EXEC][1], 0xFFFFFFFF),
    set_u32(exec_bytes(), LENGTH_FIELDS[KIND_EXEC][0], 0x80000000),
    set_u32(exec_bytes(), LENGTH_FIELDS[KIND_EXEC][3], 1),  # a cwd beyond the record
    set_u32(open_bytes(), LENGTH_FIELDS[KIND_OPEN][0], 4097),
    set_u32(open_bytes(), LENGTH_FIELDS[KIND_OPEN][0], 0xFFFFFFFF),
    set_u32(open_bytes(), LENGTH_FIELDS[KIND_OPEN][1], 4097),
    set_u32(connect_bytes(), LENGTH_FIELDS[KIND_CONNECT][0], 129),
    header(KIND_OPEN),  # a bare header
]


def corrupted(rng: random.Random) -> bytes:
    """A valid record of a random kind with random bytes, its length fields then set near or far off."""
    kind = rng.choice(list(FIXED))
    body = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300)))
    b = bytearray(with_kind(kind, bytes(rng.getrandbits(8) for _ in range(FIXED[kind]))) + body)
    for off in LENGTH_FIELDS[kind]:
        near = rng.randrange(0, len(body) + 3)
        struct.pack_into("<I", b, off, rng.choice([near, rng.getrandbits(32), 4096, 4097, 128, 129]))
    return bytes(b)


def _parses(raw: bytes) -> bool:
    from kestrel_raw.codec.records import parse_record
    from kestrel_raw.errors import RecordError
    try:
        parse_record(raw)
        return True
    except RecordError:
        return False


def exact(obj: dict, key: str):
    if key == "argv":
        return [base64.b64decode(a) for a in obj["argv_b64"]] if "argv_b64" in obj else \
            [a.encode() for a in obj["argv"]]
    if key + "_b64" in obj:
        return base64.b64decode(obj[key + "_b64"])
    v = obj[key]
    return v.encode() if isinstance(v, str) else v


@pytest.fixture
def prod():
    p = Producer()
    try:
        yield p
    finally:
        p.close()


async def run_poller(prod: Producer, records: list[bytes]):
    """Feed ``records`` one at a time through the real poller; (events, the collector's stats)."""
    assert all(len(r) <= MAX_PAYLOAD for r in records)
    tx, rx = trio.open_memory_channel(len(records) + 1)
    # Every event type, so that each good record is an event (the internal proc records are none).
    col = KestrelCollector(tx, CollectorConfig(poll_interval=0.01, event_types=["exec", "open", "connect", "exit",
                                                                                     "fork"]))
    with RingBufReader(prod.rb) as reader:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll_ring, reader, col._delivery, col.config)
            for i, raw in enumerate(records):
                prod.output(raw)
                with trio.fail_after(5):  # a poller that died or stalled fails here
                    while col.stats().records < i + 1:
                        await trio.sleep(0.002)
            nursery.cancel_scope.cancel()
    tx.close()
    events = [ev async for ev in rx]
    return events, col.stats()


async def test_bad_records_are_counted_and_good_ones_after_them_arrive_exact(prod):
    records, expected = [], []
    for i, bad in enumerate(BAD):  # each bad record followed by a good one
        good, values = GOOD[i % len(GOOD)]
        records += [bad, good]
        expected.append(values)
    events, stats = await run_poller(prod, records)
    assert stats.records == len(records)
    assert stats.parse_errors == len(BAD)
    assert len(events) == len(BAD)
    for ev, values in zip(events, expected):
        obj = json.loads(encode_event(ev).decode("utf-8"))
        got = {k: exact(obj, k) for k in values}
        assert got == values


async def test_random_corruptions_never_stop_the_poller(prod):
    rng = random.Random(20240604)
    records = [corrupted(rng) for _ in range(400)] + [GOOD[0][0]]
    events, stats = await run_poller(prod, records)
    assert stats.records == len(records)
    # A well-formed internal record is consumed (by the context provider: NO_CONTEXT here), not an event; so
    # is one whose header says a filter dropped it (FLAG_FILTERED, FLAG_RATE_LIMITED: for the process cache).
    internal = sum(1 for r in records if _parses(r) and (r[8] == KIND_PROC or cache_only(r)))
    assert stats.parse_errors + len(events) + internal == len(records)
    # every path taken, not one trivially (a random header often carries the cache-only flags)
    assert stats.parse_errors > 100 and len(events) > 10 and internal > 10
    for ev in events:
        line = encode_event(ev)
        json.dumps(json.loads(line.decode("utf-8")), ensure_ascii=False).encode("utf-8")  # strict UTF-8
    assert exact(json.loads(encode_event(events[-1])), "path") == HOSTILE_PATH  # the last, good, arrived
