"""RingBuf and RingBufReader against the kernel's own producer.

A program assembled by the test (``Producer``, tests/helpers.py) runs at ``syscalls:sys_enter_getppid`` for
this process only and writes the record the test asked for in the ``ctl`` array map: ``ringbuf_output`` of
a payload (any length, so records wrap around the end of a one-page ring), a ``ringbuf_reserve`` +
``ringbuf_discard``, or a ``ringbuf_reserve`` + ``ringbuf_submit`` of 16 bytes written by the program
itself.  The test triggers it
with ``os.getppid()`` and reads exactly those records back, blocking and with trio.
"""
from __future__ import annotations

import struct
import time

import pytest
import trio

from kestrel_raw.maps.ringbuf import RingBufReader
from kestrel_raw.kernel.uapi import BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP

from helpers import SIZE, Producer

pytestmark = pytest.mark.kernel


@pytest.fixture
def prod():
    with Producer() as p:
        yield p


def payload(i: int, n: int) -> bytes:
    return bytes((i * 7 + k) & 0xFF for k in range(n))


def test_records_wrap_and_discards_are_skipped_blocking_poll(prod):
    # 4080 is the largest record a 4096-byte ring takes: the kernel keeps prod - cons <= size - 1, so a
    # record never fills the whole area (header 8 + 4080 = 4088 bytes).
    lengths = [1000, 777, 1, 2000, 0, 333, 1500, 8, 4080, 1234, 999, 17]
    wrapped = []
    with RingBufReader(prod.rb) as reader:
        for i, n in enumerate(lengths):
            expected = []
            if n < 4000:
                prod.discard()
                expected.append(prod.reserve(struct.pack("<Q", i)))
            data = payload(i, n)
            pos = prod.output(data)
            expected.append(data)
            if (pos % SIZE) + 8 + n > SIZE:
                wrapped.append(i)
            got = reader.poll(timeout=5)
            assert got == expected, f"step {i}"
            assert reader.available() == 0
            assert reader._cursor.consumer_pos == prod.pos
        st = reader.statistics()
        assert st.records == sum(2 if n < 4000 else 1 for n in lengths)
        assert st.discarded == sum(1 for n in lengths if n < 4000)
        assert st.bytes == sum(lengths) + 16 * st.discarded
        assert st.resets == 0
    assert wrapped == [8, 10]  # these payloads span the end of the data area (positions are deterministic)
    assert prod.pos > 3 * SIZE  # three laps: the kernel took our published consumer_pos each time


def test_batch_of_many_small_records_in_order(prod):
    with RingBufReader(prod.rb) as reader:
        sent = [prod.reserve(struct.pack("<Q", i)) for i in range(150)]  # 150 * 24 = 3600 bytes
        assert reader.available() == 3600
        assert reader.drain(max_records=100) == sent[:100]
        assert reader.drain() == sent[100:]
        assert reader.drain() == []


def test_ring_full_then_published_consumer_pos_frees_space(prod):
    with RingBufReader(prod.rb) as reader:
        for i in range(5):
            prod.output(payload(i, 1000))  # the fifth does not fit: the kernel drops it
        got = reader.drain()
        assert got == [payload(i, 1000) for i in range(4)]
        prod.pos = reader._cursor.consumer_pos
        prod.output(payload(9, 1000))  # fits only because the kernel saw our consumer_pos
        assert reader.drain() == [payload(9, 1000)]


def test_poll_times_out_empty(prod):
    with RingBufReader(prod.rb) as reader:
        t0 = time.monotonic()
        assert reader.poll(timeout=0.05) == []
        assert 0.04 <= time.monotonic() - t0 < 1


def test_reader_from_bare_fd_and_close(prod):
    reader = RingBufReader(prod.rb.fd, SIZE)
    prod.output(b"via fd")
    assert reader.drain() == [b"via fd"]
    reader.close()
    reader.close()
    assert reader.closed
    with pytest.raises(ValueError, match="ring buffer reader is closed"):
        reader.drain()
    assert prod.rb.reader().drain() == []  # the map is still there; the record was consumed


async def test_trio_wait_records_wakes_on_commit(prod):
    reader = RingBufReader(prod.rb)
    got = []

    async def consume():
        got.extend(await reader.wait_records())

    with reader:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            await trio.sleep(0.05)  # the consumer is parked in wait_readable
            assert got == []
            prod.output(b"wake up")
        assert got == [b"wake up"]


async def test_wait_wakeup_waits_for_a_wakeup_not_for_data(prod):
    # wait_readable returns while any record is unread; wait_wakeup only once a producer wakes the ring.
    woke = trio.Event()
    with RingBufReader(prod.rb) as reader:

        async def waiter():
            await reader.wait_wakeup()
            woke.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.sleep(0.05)  # parked, the ring empty
            prod.output(b"quiet", BPF_RB_NO_WAKEUP)
            await trio.sleep(0.3)
            assert reader.available() and not woke.is_set()
            prod.output(b"loud", BPF_RB_FORCE_WAKEUP)
            with trio.fail_after(5):
                await woke.wait()
        # A wakeup while nobody waits is kept for the next wait, and taken by it.
        prod.output(b"later", BPF_RB_FORCE_WAKEUP)
        with trio.fail_after(5):
            await reader.wait_wakeup()
        with trio.move_on_after(0.3) as waited:
            await reader.wait_wakeup()
        assert waited.cancelled_caught
        assert reader.drain() == [b"quiet", b"loud", b"later"]


async def test_trio_async_for_reads_in_order_and_ends_on_close(prod):
    reader = RingBufReader(prod.rb)
    got = []

    async def consume():
        async for record in reader:
            got.append(record)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        for i in range(6):
            await trio.sleep(0.01)
            if i % 2:
                prod.discard()
            prod.output(payload(i, 700))
        with trio.fail_after(5):
            while len(got) < 6:
                await trio.sleep(0.01)
        reader.close()  # the consumer's wait ends: StopAsyncIteration
    assert got == [payload(i, 700) for i in range(6)]
    assert reader.statistics().discarded == 3


def test_reader_size_must_match_the_map(prod):
    from kestrel_raw.errors import ConfigError

    with pytest.raises(ConfigError, match=f"RingBufReader size {2 * SIZE} differs from the ring buffer's "
                                          f"max_entries {SIZE}"):
        RingBufReader(prod.rb, 2 * SIZE)


async def test_cancelled_wait_loses_no_record(prod):
    with RingBufReader(prod.rb) as reader:
        prod.output(b"kept")
        with trio.CancelScope() as scope:
            scope.cancel()
            await reader.wait_records()  # cancelled at its first checkpoint, before the drain
        assert scope.cancelled_caught
        assert reader.drain() == [b"kept"]


def test_drainer_is_drain_for_busy_polling(prod):
    # The busy poller's pair: probe() says a record may be there, drainer() takes it (no open check).
    reader = RingBufReader(prod.rb)
    waiting, drain = reader.probe(), reader.drainer()
    assert not waiting() and drain(10) == []
    prod.output(b"one")
    prod.output(b"two")
    assert waiting()
    assert drain(1) == [b"one"] and drain(None) == [b"two"]
    assert not waiting()
    reader.close()
    with pytest.raises(ValueError, match="ring buffer reader is closed"):
        reader.drainer()
