"""EventBus: fan each published event out to every subscriber, over bounded trio memory channels.

A subscriber gets its own channel (``subscribe(max_buffer=...)`` returns the receive end: an async iterator
and async context manager).  Two ways to publish, matching ``CollectorConfig.queue_policy``:

- ``publish(event)`` ("drop"): sync, never blocks.  A subscriber whose buffer is full misses the event and
  its drop counter goes up; the others still get it.  A slow consumer costs only itself.
- ``await send(event)`` ("block"): waits until every subscriber has room.  The slowest consumer paces the
  pollers; the ring buffers fill and the kernel side counts what it cannot write.  Nothing is lost in
  Python.

The collector delivers into a bus given in place of its channel, ``KestrelCollector(bus, config)``, with
the method its ``queue_policy`` names (kestrel_raw/collector/deliver.py); the copies subscribers miss are
counted in its ``stats().user_dropped`` as well as here.

A subscriber that closes its receive channel is detached at the next publish.  ``aclose()`` closes every
subscriber's channel: their ``async for`` loops end once they have drained what was buffered.
``statistics()`` returns a frozen ``BusStatistics`` with per-subscriber counters.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import trio


@dataclass(frozen=True, slots=True)
class SubscriberStatistics:
    name: str
    max_buffer: int
    buffered: int      # events waiting in its channel
    delivered: int     # events put in its channel
    drops: int         # events it missed because its channel was full ("drop" policy)


@dataclass(frozen=True, slots=True)
class BusStatistics:
    published: int                                   # events given to publish() or send()
    drops: int                                       # sum of every subscriber's drops, detached ones too
    subscribers: tuple[SubscriberStatistics, ...]    # attached subscribers, in subscription order
    closed: bool


class _Subscriber:
    __slots__ = ("name", "max_buffer", "send_channel", "delivered", "drops")

    def __init__(self, name: str, max_buffer: int, send_channel: trio.MemorySendChannel) -> None:
        self.name = name
        self.max_buffer = max_buffer
        self.send_channel = send_channel
        self.delivered = 0
        self.drops = 0


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[_Subscriber] = []
        self._published = 0
        self._detached_drops = 0
        self._closed = False
        self._count = 0

    def subscribe(self, max_buffer: int = 1024, name: str | None = None) -> trio.MemoryReceiveChannel:
        """A new subscriber's receive channel, holding at most ``max_buffer`` undelivered events."""
        if self._closed:
            raise trio.ClosedResourceError("EventBus is closed: subscribe before aclose()")
        if isinstance(max_buffer, bool) or not isinstance(max_buffer, int) or max_buffer < 0:
            raise ValueError(f"max_buffer must be an integer >= 0 (a bounded buffer), got {max_buffer!r}")
        self._count += 1
        send, receive = trio.open_memory_channel(max_buffer)
        self._subscribers.append(_Subscriber(name or f"subscriber-{self._count}", max_buffer, send))
        return receive

    def publish(self, event: Any) -> int:
        """Give ``event`` to every subscriber with room, without blocking; returns how many missed it."""
        if self._closed:
            raise trio.ClosedResourceError("EventBus is closed: publish after aclose()")
        self._published += 1
        missed = 0
        gone = None
        for sub in self._subscribers:
            try:
                sub.send_channel.send_nowait(event)
                sub.delivered += 1
            except trio.WouldBlock:
                sub.drops += 1
                missed += 1
            except trio.BrokenResourceError:  # its receiver was closed: the subscriber left
                gone = gone or []
                gone.append(sub)
        if gone:
            self._detach(gone)
        return missed

    async def send(self, event: Any) -> None:
        """Give ``event`` to every subscriber, waiting for room in each (the "block" policy)."""
        if self._closed:
            raise trio.ClosedResourceError("EventBus is closed: send after aclose()")
        self._published += 1
        if not self._subscribers:
            await trio.lowlevel.checkpoint()
            return
        for sub in tuple(self._subscribers):
            try:
                await sub.send_channel.send(event)
                sub.delivered += 1
            except trio.BrokenResourceError:
                self._detach([sub])
            except trio.ClosedResourceError:  # aclose() ran while we waited
                return

    def _detach(self, subs: list[_Subscriber]) -> None:
        for sub in subs:
            if sub in self._subscribers:
                self._subscribers.remove(sub)
                self._detached_drops += sub.drops
                sub.send_channel.close()

    async def aclose(self) -> None:
        """Close every subscriber's channel; they end after draining.  Idempotent."""
        self._closed = True
        subs, self._subscribers = self._subscribers, []
        for sub in subs:
            self._detached_drops += sub.drops
            await sub.send_channel.aclose()
        await trio.lowlevel.checkpoint()

    def statistics(self) -> BusStatistics:
        subs = tuple(
            SubscriberStatistics(s.name, s.max_buffer, s.send_channel.statistics().current_buffer_used,
                                 s.delivered, s.drops)
            for s in self._subscribers
        )
        return BusStatistics(self._published, self._detached_drops + sum(s.drops for s in subs), subs,
                             self._closed)


__all__ = ["EventBus", "BusStatistics", "SubscriberStatistics"]
