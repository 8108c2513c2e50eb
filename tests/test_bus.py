"""EventBus: fan-out, per-subscriber drops, blocking send, close."""
from __future__ import annotations

import dataclasses

import pytest
import trio
import trio.testing

from kestrel_raw.sinks.bus import BusStatistics, EventBus, SubscriberStatistics


async def drain(channel) -> list:
    got = []
    async with channel:
        async for ev in channel:
            got.append(ev)
    return got


async def test_every_subscriber_gets_every_event_in_order():
    bus = EventBus()
    a = bus.subscribe(max_buffer=10, name="a")
    b = bus.subscribe(max_buffer=10, name="b")
    for i in range(5):
        assert bus.publish(i) == 0
    await bus.aclose()
    assert await drain(a) == [0, 1, 2, 3, 4]
    assert await drain(b) == [0, 1, 2, 3, 4]


async def test_full_subscriber_drops_only_for_itself():
    bus = EventBus()
    slow = bus.subscribe(max_buffer=2, name="slow")
    fast = bus.subscribe(max_buffer=100, name="fast")
    missed = [bus.publish(i) for i in range(5)]
    assert missed == [0, 0, 1, 1, 1]
    stats = bus.statistics()
    assert stats == BusStatistics(published=5, drops=3, closed=False, subscribers=(
        SubscriberStatistics("slow", 2, buffered=2, delivered=2, drops=3),
        SubscriberStatistics("fast", 100, buffered=5, delivered=5, drops=0),
    ))
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.drops = 0
    await bus.aclose()
    assert await drain(slow) == [0, 1]
    assert await drain(fast) == [0, 1, 2, 3, 4]
    assert bus.statistics().drops == 3 and bus.statistics().closed is True


async def test_send_blocks_until_there_is_room():
    bus = EventBus()
    rx = bus.subscribe(max_buffer=1)
    await bus.send("a")
    sent = []

    async def producer():
        await bus.send("b")          # buffer full: waits for the consumer
        sent.append("b")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        await trio.testing.wait_all_tasks_blocked()
        assert sent == []
        assert await rx.receive() == "a"
        await trio.testing.wait_all_tasks_blocked()
        assert sent == ["b"]
    assert await rx.receive() == "b"
    assert bus.statistics().drops == 0


async def test_send_without_subscribers_checkpoints():
    bus = EventBus()
    with trio.testing.assert_checkpoints():
        await bus.send(1)
    assert bus.statistics().published == 1


async def test_closed_subscriber_is_detached():
    bus = EventBus()
    gone = bus.subscribe(max_buffer=1, name="gone")
    stay = bus.subscribe(max_buffer=10, name="stay")
    bus.publish(1)
    bus.publish(2)        # "gone" is full: one drop
    await gone.aclose()
    bus.publish(3)
    await bus.send(4)
    stats = bus.statistics()
    assert [s.name for s in stats.subscribers] == ["stay"]
    assert stats.drops == 1
    await bus.aclose()
    assert await drain(stay) == [1, 2, 3, 4]


async def test_consumer_loop_ends_on_aclose():
    bus = EventBus()
    rx = bus.subscribe(max_buffer=4)
    got = []

    async def consumer():
        got.extend(await drain(rx))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        bus.publish("x")
        await trio.testing.wait_all_tasks_blocked()
        await bus.aclose()
    assert got == ["x"]


async def test_use_after_close_and_bad_buffer():
    bus = EventBus()
    with pytest.raises(ValueError, match="max_buffer must be an integer >= 0"):
        bus.subscribe(max_buffer=float("inf"))
    await bus.aclose()
    await bus.aclose()
    with pytest.raises(trio.ClosedResourceError, match="EventBus is closed"):
        bus.publish(1)
    with pytest.raises(trio.ClosedResourceError):
        bus.subscribe()
    with pytest.raises(trio.ClosedResourceError):
        await bus.send(1)


async def test_aclose_releases_a_blocked_send():
    bus = EventBus()
    rx = bus.subscribe(max_buffer=0)      # rendezvous: send waits for a receiver
    done = []

    async def producer():
        await bus.send("never received")
        done.append(True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        await trio.testing.wait_all_tasks_blocked()
        assert done == []
        await bus.aclose()
    assert done == [True]
    assert await drain(rx) == []
