"""Delivery: the records a poller drained, handed on as Kestrel Events (``deliver="events"``) or as chunks
of JSON lines (``deliver="json"``), into a trio memory channel or an EventBus.

A slow consumer: with ``queue_policy="block"`` a full channel stops the pollers, the rings fill and the
programs count every record they cannot write (``stats().kernel``, ``ringbuf_full``); with ``"drop"`` the
pollers keep draining and drop what the channel cannot take (``stats().user_dropped``).  Either way memory
stays bounded by ``queue_size`` events plus the rings, and nothing is lost without being counted.

An EventBus (kestrel_raw/sinks/bus.py) fans each item out to its subscribers, each with a bounded channel
of its own (``subscribe(max_buffer=...)``: that, not ``queue_size``, bounds it).  Under "block" the
collector awaits ``bus.send`` (the slowest subscriber paces the pollers); under "drop" it calls
``bus.publish``: a subscriber whose channel is full misses the item, the others still get it.  Then
``delivered`` counts the events handed to the bus and ``user_dropped`` the copies subscribers missed (what
the bus's ``statistics()`` shows per subscriber as ``drops``).

Every record goes through the context provider ``ctx`` (kestrel_raw/collector/enrich.py), which fills each
event's context values and takes the records that change them; ``wanted[kind]`` says which kinds' events
are handed on (the exec, fork and exit records keep the process cache current even when those events were
not asked for; the internal proc records are never events).  A record a filter dropped in the kernel but
wrote for the process cache (header_flags FLAG_FILTERED or FLAG_RATE_LIMITED: exec, exit and fork with
context on, kestrel_raw/programs/filter.py) goes through ``ctx`` like any other and is never handed on: it
is counted as consumed (the kernel counted it as filtered).
"""
from __future__ import annotations

from collections import Counter

import trio

from kestrel_raw.codec.context import NO_CONTEXT
from kestrel_raw.codec.event import KestrelEvent
from kestrel_raw.codec.normalize import event_from_raw
from kestrel_raw.codec.jsonl import encode_event, encode_records
from kestrel_raw.collector.stats import Counts, raw_kind
from kestrel_raw.config import CollectorConfig
from kestrel_raw.errors import RecordError
from kestrel_raw.sinks.bus import EventBus
from kestrel_raw.spec import FLAG_FILTERED, FLAG_RATE_LIMITED, HEADER_FLAGS_OFFSET

# The header_flags bits of a record written for the process cache alone, in the flags' low byte.
_CACHE_ONLY = FLAG_FILTERED | FLAG_RATE_LIMITED
assert _CACHE_ONLY < 256
NOTHING_WANTED = (False,) * 256


def cache_only(raw) -> bool:
    """The record was dropped by a filter and written only for the process cache."""
    return len(raw) > HEADER_FLAGS_OFFSET and bool(raw[HEADER_FLAGS_OFFSET] & _CACHE_ONLY)


class Delivery:
    """Hands batches of raw records to the consumer (``out``: a trio MemorySendChannel, or anything with
    its ``send_nowait`` and ``send``, or an EventBus), counting in ``counts``.

    ``deliver(batch)`` is the path the pollers await; ``send_events`` is the synchronous path the
    low-latency poller uses when there is one (events into a channel), else None.  ``wall_offset``
    (CLOCK_REALTIME - CLOCK_MONOTONIC, ns) is set once the collector is attached.
    """

    def __init__(self, out: trio.MemorySendChannel | EventBus, config: CollectorConfig, counts: Counts,
                 ctx=NO_CONTEXT) -> None:
        self._out = out
        self.counts = counts
        self.wall_offset = 0
        self.ctx = ctx
        wanted = [False] * 256
        for t in config.event_types:
            wanted[int(t)] = True
        self.wanted = tuple(wanted)
        self.block = config.queue_policy == "block"
        self._refused: list = []  # the malformed records of the batch being encoded (``_encode_batch``)
        # Whether the programs may write records for the process cache alone (FLAG_FILTERED,
        # FLAG_RATE_LIMITED): only with context and a filter, once written (records of a filter since
        # removed may still be in the rings).  Without, the JSON path skips looking at every record.
        self.cache_only_records = False
        self.as_json = config.deliver == "json"
        self.to_bus = isinstance(out, EventBus)
        if self.to_bus:
            self.deliver = self._publish_json if self.as_json else self._publish_events
            self.send_events = None
        else:
            self.deliver = self._deliver_json if self.as_json else self._deliver_events
            self.send_events = None if self.as_json else self._send_events

    # -- into a channel --------------------------------------------------------------------------------

    async def _deliver_events(self, batch: list[bytes]) -> None:
        await self.send_blocked(self._send_events(batch))

    async def send_blocked(self, blocked: tuple[KestrelEvent, list[bytes]] | None) -> None:
        """The channel is full and queue_policy is "block": wait for room, then go on, in order."""
        while blocked is not None:
            event, rest = blocked
            try:
                await self._out.send(event)
            except trio.Cancelled:  # a stop out of time: the event and the records after it are dropped
                self.counts.drop(event.event_type_id)
                self._count_dropped([raw_kind(raw) for raw in rest])
                raise
            self.counts.delivered[event.event_type_id] += 1
            blocked = self._send_events(rest)

    def _send_events(self, batch: list[bytes]) -> tuple[KestrelEvent, list[bytes]] | None:
        """Hand each record of ``batch`` to the channel as an event without waiting (the low-latency poller
        calls this directly: no coroutine on its path).  None when all are delivered, dropped (queue_policy
        "drop") or malformed (counted); else, under "block", the event the full channel refused and the
        records after it."""
        block = self.block
        send_nowait = self._out.send_nowait
        counts = self.counts
        delivered = counts.delivered
        for i, event in self._wanted_events(batch):
            try:
                send_nowait(event)
            except trio.WouldBlock:
                if block:
                    return event, batch[i + 1:]
                counts.drop(event.event_type_id)
                continue
            delivered[event.event_type_id] += 1
        return None

    async def _deliver_json(self, batch: list[bytes]) -> None:
        chunk, kinds = self._encode_batch(batch)
        if not kinds:
            return
        try:
            self._out.send_nowait(chunk)
        except trio.WouldBlock:
            if not self.block:
                self._count_dropped(kinds)
                return
            await self._send_or_count(chunk, kinds)
        self._count_delivered(kinds)

    # -- into an EventBus ------------------------------------------------------------------------------

    async def _publish_events(self, batch: list[bytes]) -> None:
        bus = self._out
        counts = self.counts
        delivered = counts.delivered
        for i, event in self._wanted_events(batch):
            if self.block:
                try:
                    await bus.send(event)
                except trio.Cancelled:  # a stop out of time: the event and the records after it are dropped
                    counts.drop(event.event_type_id)
                    self._count_dropped([raw_kind(r) for r in batch[i + 1:]])
                    raise
            else:
                counts.drop(event.event_type_id, bus.publish(event))
            delivered[event.event_type_id] += 1

    async def _publish_json(self, batch: list[bytes]) -> None:
        chunk, kinds = self._encode_batch(batch)
        if not kinds:
            return
        if self.block:
            await self._send_or_count(chunk, kinds)
        else:
            self._count_dropped(kinds, self._out.publish(chunk))
        self._count_delivered(kinds)

    # -- either ------------------------------------------------------------------------------------------

    def _wanted_events(self, batch: list[bytes]):
        """(index in ``batch``, event) of each record that is an event the consumer wants.  A malformed record
        is counted as refused; one that is no wanted event (an internal record, a type not asked for, a
        record a filter dropped and the programs wrote for the process cache alone) as consumed."""
        counts = self.counts
        wall, ctx, wanted = self.wall_offset, self.ctx, self.wanted
        flags_at, cache_only_bits = HEADER_FLAGS_OFFSET, _CACHE_ONLY
        for i, raw in enumerate(batch):
            try:
                event = event_from_raw(raw, wall, ctx)
            except RecordError:
                counts.refuse(raw)
                continue
            if event is None or not wanted[event.event_type_id] or raw[flags_at] & cache_only_bits:
                counts.consumed += 1
                continue
            yield i, event

    def _encode_batch(self, batch: list[bytes]) -> tuple[bytes, list[int]]:
        """The JSON lines of ``batch`` as one chunk, and the kind of each record in it.  Records written for
        the process cache alone go through it with nothing wanted, in their place in the batch (a process's
        exec before its next event)."""
        refused = self._refused
        if not self.cache_only_records or not any(cache_only(raw) for raw in batch):
            chunk, kinds, bad = encode_records(batch, self.wall_offset, self.ctx, self.wanted, refused)
        else:
            chunks, kinds, bad = [], [], 0
            start = 0
            for i in range(len(batch) + 1):
                if i < len(batch) and cache_only(batch[i]) == cache_only(batch[start]):
                    continue
                part = batch[start:i]
                c, k, b = encode_records(part, self.wall_offset, self.ctx,
                                         NOTHING_WANTED if cache_only(part[0]) else self.wanted, refused)
                chunks.append(c)
                kinds += k
                bad += b
                start = i
            chunk = b"".join(chunks)
        if bad:
            for raw in refused:
                self.counts.refuse(raw)
            refused.clear()
        self.counts.consumed += len(batch) - bad - len(kinds)
        return chunk, kinds

    def _count_delivered(self, kinds: list[int]) -> None:
        delivered = self.counts.delivered
        for kind, n in Counter(kinds).items():
            delivered[kind] += n

    def _count_dropped(self, kinds: list[int], times: int = 1) -> None:
        """The events of ``kinds`` dropped ``times`` each (an EventBus: once per subscriber that missed)."""
        if times:
            for kind, n in Counter(kinds).items():
                self.counts.drop(kind, n * times)

    async def _send_or_count(self, chunk: bytes, kinds: list[int]) -> None:
        """Wait to hand ``chunk`` on; if a stop out of time cancels the wait, its events are dropped."""
        try:
            await self._out.send(chunk)
        except trio.Cancelled:
            self._count_dropped(kinds)
            raise

    def count_cancelled(self, batch: list[bytes], before: int) -> None:
        """A delivery of ``batch`` was cancelled (a stop that ran out of time) when ``counts.handled()`` was
        ``before``: what no path counted is counted as dropped (each path counts what it was waiting to hand
        on; records go in order, so any left are the end of the batch)."""
        missing = max(0, len(batch) - (self.counts.handled() - before))
        if missing:
            self._count_dropped([raw_kind(raw) for raw in batch[len(batch) - missing:]])

    def deliver_now(self, batch: list[bytes]) -> None:
        """Hand ``batch`` on without waiting, whatever the policy (the drain at stop, when nothing can wait
        any more): what the consumer cannot take now, or no longer takes, is counted as dropped."""
        counts = self.counts
        if self.as_json:
            chunk, kinds = self._encode_batch(batch)
            items = [(chunk, kinds)] if kinds else []
        else:
            items = [(event, [event.event_type_id]) for _, event in self._wanted_events(batch)]
        for item, kinds in items:
            if self.to_bus:
                try:
                    self._count_dropped(kinds, self._out.publish(item))
                except trio.ClosedResourceError:
                    self._count_dropped(kinds)
                    continue
            else:
                try:
                    self._out.send_nowait(item)
                except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    self._count_dropped(kinds)
                    continue
            for kind in kinds:
                counts.delivered[kind] += 1

    async def deliver_event(self, event: KestrelEvent) -> None:
        """One event the collector made itself (status): as an event, or as its JSON line, into the channel
        or the bus, per queue_policy; one the consumer has no room for under "drop" is counted as dropped."""
        if not await self.offer_event(event):
            self.counts.drop(event.event_type_id)

    async def offer_event(self, event: KestrelEvent, wait: bool | None = None) -> bool:
        """``event`` (one the collector made itself) into the channel, waiting for room when ``wait`` (None:
        as queue_policy says), or into the bus per queue_policy (under "drop" a subscriber with no room
        misses it, counted as dropped: waiting on the bus would wait for its slowest subscriber, which may
        never read).  False, counting nothing, when the channel had no room and it did not wait."""
        item = encode_event(event) if self.as_json else event
        kind = event.event_type_id
        block = self.block if wait is None else wait
        if self.to_bus:
            if self.block:
                await self._out.send(item)
            else:
                self.counts.drop(kind, self._out.publish(item))
        else:
            try:
                self._out.send_nowait(item)
            except trio.WouldBlock:
                if not block:
                    return False
                await self._out.send(item)
        self.counts.delivered[kind] += 1
        return True

    def deliver_event_now(self, event: KestrelEvent) -> None:
        """One event the collector made itself, handed on without waiting (at stop); what the consumer
        cannot take, or no longer takes, is counted as dropped."""
        item = encode_event(event) if self.as_json else event
        kind = event.event_type_id
        try:
            if self.to_bus:
                self.counts.drop(kind, self._out.publish(item))
            else:
                self._out.send_nowait(item)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.counts.drop(kind)
            return
        self.counts.delivered[kind] += 1
