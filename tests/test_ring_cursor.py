"""The pure ring-buffer cursor on memory built here: no kernel, no mmap.

``FakeRing`` plays the kernel's producer (kernel/bpf/ringbuf.c): it reserves a record by writing its header
with the BUSY bit and advancing ``producer_pos``, then commits (clears BUSY) or discards (sets DISCARD).
The data area is a ``2 * size`` bytearray whose halves are kept equal, as the kernel's double mapping
makes them, so a record that wraps is contiguous.
"""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kestrel_raw.errors import RecordError
from kestrel_raw.maps.ring import (
    BPF_RINGBUF_BUSY_BIT, BPF_RINGBUF_DISCARD_BIT, BPF_RINGBUF_HDR_SZ, ReplayRing, RingCursor,
    RingStatistics, roundup_len,
)


class FakeRing:
    def __init__(self, size: int, start: int = 0) -> None:
        self.size = size
        self.consumer = bytearray(struct.pack("<Q", start))
        self.producer = bytearray(struct.pack("<Q", start))
        self.data = bytearray(2 * size)

    @property
    def prod_pos(self) -> int:
        return struct.unpack("<Q", self.producer)[0]

    @property
    def cons_pos(self) -> int:
        return struct.unpack("<Q", self.consumer)[0]

    def put(self, pos: int, raw: bytes) -> None:
        for i, b in enumerate(raw):
            idx = (pos + i) & (self.size - 1)
            self.data[idx] = b
            self.data[idx + self.size] = b

    def header(self, pos: int, hdr_len: int) -> None:
        self.put(pos, struct.pack("<II", hdr_len, 0))

    def reserve(self, length: int) -> int:
        pos = self.prod_pos
        assert pos - self.cons_pos + roundup_len(length) <= self.size, "producer would overrun the consumer"
        self.header(pos, length | BPF_RINGBUF_BUSY_BIT)
        self.producer[:] = struct.pack("<Q", pos + roundup_len(length))
        return pos

    def commit(self, pos: int, payload: bytes) -> None:
        self.put(pos + BPF_RINGBUF_HDR_SZ, payload)
        self.header(pos, len(payload))

    def discard(self, pos: int, length: int) -> None:
        self.header(pos, length | BPF_RINGBUF_DISCARD_BIT)

    def output(self, payload: bytes) -> int:
        pos = self.reserve(len(payload))
        self.commit(pos, payload)
        return pos

    def cursor(self, **kw) -> RingCursor:
        return RingCursor(self.consumer, self.producer, self.data, self.size, **kw)


def test_roundup_len_is_header_plus_payload_rounded_to_8_ignoring_flags():
    assert [roundup_len(n) for n in (0, 1, 7, 8, 9, 16, 17)] == [8, 16, 16, 16, 24, 24, 32]
    assert roundup_len(5 | BPF_RINGBUF_BUSY_BIT) == 16
    assert roundup_len(5 | BPF_RINGBUF_DISCARD_BIT) == 16


def test_one_record_is_copied_and_consumer_pos_published_past_it():
    ring = FakeRing(64)
    ring.output(b"hello")
    cur = ring.cursor()
    assert cur.available() == 16
    assert cur.drain() == [b"hello"]
    assert ring.cons_pos == 16
    assert cur.consumer_pos == 16
    assert cur.available() == 0
    assert cur.drain() == []
    assert cur.statistics() == RingStatistics(records=1, discarded=0, bytes=5, resets=0, last_error=None)


def test_records_are_8_byte_aligned():
    ring = FakeRing(256)
    payloads = [bytes([n]) * n for n in (1, 7, 8, 9, 0, 15, 16, 17)]
    positions = [ring.output(p) for p in payloads]
    assert positions == [0, 16, 32, 48, 72, 80, 104, 128]
    assert ring.prod_pos == 160
    cur = ring.cursor()
    assert cur.drain() == payloads
    assert ring.cons_pos == 160


def test_record_spanning_the_end_of_the_data_area_reads_contiguously():
    ring = FakeRing(64, start=40)
    payload = bytes(range(30))  # header at 40..48, payload 48..78: wraps at 64
    ring.output(payload)
    assert ring.data[48:64] == payload[:16] and ring.data[0:14] == payload[16:]
    cur = ring.cursor()
    assert cur.drain() == [payload]
    assert ring.cons_pos == 40 + 40


def test_header_at_the_very_end_and_positions_beyond_32_bits():
    start = (1 << 40) - 8  # the header occupies the last 8 bytes; the payload starts at offset 0
    ring = FakeRing(64, start=start)
    ring.output(b"ABCDEFGHIJ")
    ring.output(b"second")
    cur = ring.cursor()
    assert cur.drain() == [b"ABCDEFGHIJ", b"second"]
    assert ring.cons_pos == start + 24 + 16


def test_busy_record_stops_the_batch_until_committed():
    ring = FakeRing(128)
    ring.output(b"first")
    busy = ring.reserve(4)
    ring.output(b"third")
    cur = ring.cursor()
    assert cur.drain() == [b"first"]
    assert ring.cons_pos == busy == 16
    assert cur.drain() == []
    assert ring.cons_pos == 16
    ring.commit(busy, b"2nd!")
    assert cur.drain() == [b"2nd!", b"third"]
    assert ring.cons_pos == ring.prod_pos == 48


def test_discarded_records_are_skipped_and_counted():
    ring = FakeRing(128)
    ring.output(b"keep1")
    d = ring.reserve(20)
    ring.discard(d, 20)
    ring.output(b"keep2")
    cur = ring.cursor()
    assert cur.drain() == [b"keep1", b"keep2"]
    assert ring.cons_pos == 16 + 32 + 16
    st_ = cur.statistics()
    assert (st_.records, st_.discarded, st_.bytes) == (2, 1, 10)


def test_max_records_limits_the_batch():
    ring = FakeRing(128)
    for p in (b"a", b"b", b"c"):
        ring.output(p)
    cur = ring.cursor()
    assert cur.drain(max_records=2) == [b"a", b"b"]
    assert ring.cons_pos == 32
    assert cur.drain(max_records=2) == [b"c"]
    assert ring.cons_pos == 48


def test_length_larger_than_the_area_resets_to_producer_pos():
    ring = FakeRing(64)
    ring.output(b"good")
    bad = ring.prod_pos
    ring.producer[:] = struct.pack("<Q", bad + 16)
    ring.header(bad, 1000)  # committed, but cannot fit in a 64-byte ring
    cur = ring.cursor()
    assert cur.drain() == [b"good"]
    assert ring.cons_pos == ring.prod_pos == 32
    st_ = cur.statistics()
    assert st_.resets == 1
    assert isinstance(st_.last_error, RecordError)
    assert str(st_.last_error) == (
        "ring buffer: corrupt record header at position 16: length 1000 (header 0x000003e8) does not fit "
        "before producer_pos 32 in a 64-byte ring; skipped to producer_pos 32")
    ring.output(b"after")
    assert cur.drain() == [b"after"]


def test_length_running_past_producer_pos_resets():
    ring = FakeRing(64)
    ring.producer[:] = struct.pack("<Q", 16)
    ring.header(0, 40)  # would end at 48 > 16
    cur = ring.cursor()
    assert cur.drain() == []
    assert ring.cons_pos == 16
    assert cur.statistics().resets == 1


def test_impossible_positions_reset_without_reading_records():
    ring = FakeRing(64, start=100)
    ring.producer[:] = struct.pack("<Q", 50)  # producer behind the consumer
    cur = ring.cursor()
    assert cur.drain() == []
    assert ring.cons_pos == 50
    assert "positions out of range: consumer_pos 100, producer_pos 50, ring size 64" in str(
        cur.statistics().last_error)
    ring.producer[:] = struct.pack("<Q", 50 + 65)  # more than the ring can hold
    assert cur.drain() == []
    assert ring.cons_pos == 115
    assert cur.statistics().resets == 2


def test_zeroed_memory_with_positions_ahead_terminates():
    # A zero header is an empty committed record of 8 bytes: the walk must still advance and end.
    ring = FakeRing(64)
    ring.producer[:] = struct.pack("<Q", 64)
    cur = ring.cursor()
    assert cur.drain() == [b""] * 8
    assert ring.cons_pos == 64


def test_process_passes_views_valid_only_during_the_call():
    ring = FakeRing(128)
    ring.output(b"one")
    ring.output(b"two")
    seen, views = [], []

    def cb(view: memoryview) -> None:
        seen.append(bytes(view))
        views.append(view)

    cur = ring.cursor()
    assert cur.process(cb) == 2
    assert seen == [b"one", b"two"]
    assert ring.cons_pos == 32
    with pytest.raises(ValueError):
        bytes(views[0])  # released: the kernel may reuse that space now


def test_process_publishes_through_the_failing_record_and_keeps_the_rest():
    ring = FakeRing(128)
    for p in (b"ok", b"boom", b"later"):
        ring.output(p)
    d = ring.reserve(3)
    ring.discard(d, 3)

    def cb(view: memoryview) -> None:
        if bytes(view) == b"boom":
            raise RuntimeError("callback failed")

    cur = ring.cursor()
    with pytest.raises(RuntimeError, match="callback failed"):
        cur.process(cb)
    assert ring.cons_pos == 32  # "ok" and "boom" consumed, "later" still there
    assert cur.drain() == [b"later"]
    assert ring.cons_pos == 64
    st_ = cur.statistics()
    assert (st_.records, st_.discarded) == (3, 1)


def test_fence_separates_positions_headers_payloads_and_publish():
    ring = FakeRing(128)
    ring.output(b"x")
    ring.output(b"y")
    log = []
    cur = ring.cursor(fence=lambda: log.append(ring.cons_pos))
    assert cur.drain() == [b"x", b"y"]
    # three barriers (acquire producer_pos, acquire headers, release) all before the publish
    assert log == [0, 0, 0]
    assert ring.cons_pos == 32
    log.clear()
    assert cur.drain() == []
    assert log == [0 + 32]  # nothing to read: only the acquire of producer_pos


def test_construction_checks_sizes():
    with pytest.raises(ValueError, match="ring data size 96 is not a power of two"):
        RingCursor(bytearray(8), bytearray(8), bytearray(192), 96)
    with pytest.raises(ValueError, match="ring data buffer holds 64 bytes; a 64-byte ring needs 128"):
        RingCursor(bytearray(8), bytearray(8), bytearray(64), 64)
    with pytest.raises(ValueError, match="must be writable"):
        RingCursor(bytes(8), bytearray(8), bytearray(128), 64)


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(st.tuples(st.integers(0, 40), st.booleans(), st.integers(0, 3)), max_size=60),
    start=st.integers(0, 1 << 34),
)
def test_any_sequence_is_read_back_in_order(ops, start):
    ring = FakeRing(128, start=start)
    cur = ring.cursor()
    expected, got = [], []
    for i, (length, discard, batch) in enumerate(ops):
        if ring.prod_pos - ring.cons_pos + roundup_len(length) > ring.size:
            got += cur.drain(max_records=batch or None)
            if ring.prod_pos - ring.cons_pos + roundup_len(length) > ring.size:
                continue
        payload = bytes((i + k) & 0xFF for k in range(length))
        if discard:
            ring.discard(ring.reserve(length), length)
        else:
            ring.output(payload)
            expected.append(payload)
    got += cur.drain()
    assert got == expected
    assert ring.cons_pos == ring.prod_pos
    assert cur.statistics().resets == 0


def test_probe_is_true_exactly_while_something_is_past_consumer_pos():
    ring = FakeRing(64)
    cur = ring.cursor()
    waiting = cur.probe()
    assert not waiting()
    pos = ring.reserve(3)
    assert waiting()  # a BUSY record: drain returns nothing yet, and the poller comes back
    assert cur.drain() == [] and waiting()
    ring.commit(pos, b"abc")
    assert cur.drain() == [b"abc"]
    assert not waiting()


def test_replay_ring_gives_its_record_once_per_replay():
    # The busy poller's warm-up ring: drained through RingCursor.drain like a kernel ring, one record per
    # replay however often it is replayed, the payload first and zero padding after it.
    ring = ReplayRing(b"warm-record")
    assert ring.cursor.drain() == []
    for lap in range(1, 40):
        ring.replay()
        (record,) = ring.replay().drain(256)
        assert record.startswith(b"warm-record") and not record[len(b"warm-record"):].strip(b"\0")
        assert ring.cursor.drain() == []
        assert ring.cursor.statistics().records == lap
    assert ring.cursor.statistics().resets == 0
