"""The pollers: what takes records out of the ring buffers and hands them to the delivery.

Records are spread over ``config.buffers`` ring buffers by process (tgid % buffers), so the events of one
process stay in order in one ring.  With ``latency="batch"`` there is one task per ring (``poll_ring``):
the programs write without waking the reader until a ring holds ``wakeup_bytes``, and the poller also
drains every ``poll_interval`` seconds, so a lone event waits at most that.  With ``latency="low"`` one
task spins over every ring (``poll_busy``), warming the delivery path between passes (``warm_up``).
Stopping.  ``stop()`` detaches the programs first, so that no record can arrive any more, then sets
``stopping``: each poller drains its ring to the end, waiting for the consumer as it always does, and
returns.  The collector bounds that with ``stop_timeout``; what is still in a ring then is handed on by
``drain_at_stop`` without waiting, and what the consumer cannot take is counted as dropped.  A delivery cut
short by a cancellation counts what it had not handed on as dropped (``deliver_counted``): a stop can lose
records only with a count.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

import trio

from kestrel_raw import spec as kspec
from kestrel_raw.codec.jsonl import encode_records
from kestrel_raw.codec.normalize import event_from_raw
from kestrel_raw.codec.records import pack_record
from kestrel_raw.collector.deliver import Delivery
from kestrel_raw.config import CollectorConfig
from kestrel_raw.maps import RingBufReader
from kestrel_raw.maps.ring import ReplayRing

BATCH_RECORDS = 256  # records a poller takes from a ring at a time: one chunk of JSON lines at most
BUSY_SPIN_NS = 1_000_000  # latency="low": longest the spinning poller goes without yielding to trio
WARM_EVERY_NS = 30_000  # latency="low": how often the spinning poller runs its warm-up (warm_up)


class Stopping:
    """What stop() tells the pollers: ``is_set`` once the programs are detached; ``cancel_waits`` wakes a
    poller asleep in a wait (never one in the middle of a delivery)."""

    def __init__(self) -> None:
        self.is_set = False
        self._waits: set[trio.CancelScope] = set()

    def set(self) -> None:
        self.is_set = True
        for scope in self._waits:
            scope.cancel()

    def wait_scope(self, seconds: float) -> trio.CancelScope:
        scope = trio.move_on_after(seconds)
        if self.is_set:
            scope.cancel()
        return scope

    def register(self, scope: trio.CancelScope) -> None:
        self._waits.add(scope)

    def unregister(self, scope: trio.CancelScope) -> None:
        self._waits.discard(scope)


async def deliver_counted(delivery: Delivery, batch: list[bytes]) -> None:
    """``await delivery.deliver(batch)``; if it is cancelled, what it had not handed on is counted as
    dropped."""
    before = delivery.counts.handled()
    try:
        await delivery.deliver(batch)
    except trio.Cancelled:
        delivery.count_cancelled(batch, before)
        raise


async def poll_ring(reader: RingBufReader, delivery: Delivery, config: CollectorConfig,
                    stopping: Stopping | None = None) -> None:
    """One ring: wait for a wakeup (or poll_interval), drain, deliver, yield; once ``stopping`` is set,
    drain to the end and return."""
    stopping = stopping or Stopping()
    interval = config.poll_interval
    counts = delivery.counts
    checkpoint = trio.lowlevel.checkpoint
    until_empty = config.wakeup_bytes == 0
    while True:
        with stopping.wait_scope(interval) as scope:
            stopping.register(scope)
            try:
                if until_empty:
                    # The kernel's own policy: it wakes the reader only for a record written once the
                    # reader has caught up, so the reader drains until it finds the ring empty, as
                    # libbpf does.
                    if not reader.available():
                        await reader.wait_readable()
                else:
                    # A threshold: sleep until the programs' next wakeup (every wakeup_bytes of unread
                    # records) or the deadline, then take what is there.  Going back to the ring while
                    # anything was unread drained a busy ring ~11 records at a time, and the per-drain
                    # cost (trio, the channel, the writer) came to more than the records' own.
                    await reader.wait_wakeup()
            finally:
                stopping.unregister(scope)
        last = stopping.is_set  # detached before it was set: this drain takes everything there will be
        while True:
            batch = reader.drain(BATCH_RECORDS)
            if batch:
                counts.records += len(batch)
                await deliver_counted(delivery, batch)
            if len(batch) < BATCH_RECORDS:
                break
            await checkpoint()
        if last:
            return
        await checkpoint()


async def poll_busy(readers: list[RingBufReader], delivery: Delivery, stopping: Stopping | None = None) -> None:
    """latency="low": one task spins over every ring's positions (one busy CPU, no wakeups).

    A pass over the rings is two loads per ring; yielding to trio after each pass would cost ~5 us of
    scheduling each time, so the task yields only after it delivered something or after BUSY_SPIN_NS
    of finding nothing (so that signals, timers and the other tasks still run).  After a delivery it
    yields twice: trio runs the tasks made runnable in one step together in the next, in any order, and
    a spin that started before the consumer's turn would hold the event back for a whole BUSY_SPIN_NS.
    Every WARM_EVERY_NS of spinning it runs the delivery path once on a canned record (``warm_up``).
    """
    probes = [(reader.drainer(), reader.probe()) for reader in readers]
    counts = delivery.counts
    send_events = delivery.send_events  # events into a channel: no coroutine on the path unless it is full
    send_blocked = delivery.send_blocked
    checkpoint = trio.lowlevel.checkpoint
    clock = time.monotonic_ns
    threads = threading.active_count
    warm = warm_up(delivery)
    next_warm = 0
    stopping = stopping or Stopping()
    while True:
        if stopping.is_set:  # detached: one last pass over every ring, to the end
            for reader in readers:
                while batch := reader.drain(BATCH_RECORDS):
                    counts.records += len(batch)
                    await deliver_counted(delivery, batch)
            return
        give_up = clock() + BUSY_SPIN_NS
        found = False
        while not found:
            for drain, waiting in probes:
                if waiting():
                    batch = drain(BATCH_RECORDS)
                    if batch:
                        found = True
                        counts.records += len(batch)
                        if send_events is None:
                            await deliver_counted(delivery, batch)
                        else:
                            before = counts.handled()
                            blocked = send_events(batch)
                            if blocked is not None:
                                try:
                                    await send_blocked(blocked)
                                except trio.Cancelled:
                                    delivery.count_cancelled(batch, before)
                                    raise
            now = clock()
            if now > give_up:
                if threads() > 1:
                    # Let the process's other threads (trio.to_thread workers, say) have the GIL: the
                    # spin holds it until the interpreter's 5 ms switch interval, and a worker that
                    # needs it a thousand times took minutes.  Only a real sleep hands it over (a
                    # sched_yield gets it back first), and that sleep lasts the timer slack (~80 us
                    # here): not paid when the process has no other thread.
                    time.sleep(0)
                break
            if now > next_warm:
                warm()
                next_warm = clock() + WARM_EVERY_NS
        await checkpoint()
        if found:
            await checkpoint()


def warm_up(delivery: Delivery) -> Callable[[], object]:
    """What the busy poller runs between passes: the delivery path, from the drain of a ring to the
    parsed event (or JSON line), on a canned record in a ring of its own (``ReplayRing``).

    A record that arrives after milliseconds of spinning finds that code cold.  Measured here at 200
    records/s: with only parse and normalize warmed, draining the one record took ~9 us (~1.5 us in a
    loop); with the drain warmed as well, ~4 us, and the program's timestamp to the handoff of the
    parsed event went from ~20-27 us to ~13-17 us (p50).  The canned record is an open of "/" by pid 0;
    its result is thrown away (nothing is counted or sent).  Running it every WARM_EVERY_NS rather than
    on every pass keeps the passes short: the poller sees a record ~2.5 us after the program's
    timestamp, where a warm-up on every pass made that ~5 us.
    """
    raw = pack_record(kspec.OPEN.id, ts_ns=1, start_ns=1, comm=b"kestrel-warm", ret=-2, dfd=-100,
                      path=b"/\0")
    ring = ReplayRing(raw)
    wall, ctx = delivery.wall_offset, delivery.ctx  # pid 0: the context provider knows it holds nothing
    if delivery.as_json:
        def warm() -> None:
            encode_records(ring.replay().drain(BATCH_RECORDS), wall, ctx)
    else:
        def warm() -> None:
            for record in ring.replay().drain(BATCH_RECORDS):
                event_from_raw(record, wall, ctx)
    return warm


def drain_at_stop(reader: RingBufReader, delivery: Delivery) -> None:
    """Everything ``reader``'s ring still holds, handed on without waiting (the programs are detached)."""
    while True:
        batch = reader.drain(BATCH_RECORDS)
        if not batch:
            return
        delivery.counts.records += len(batch)
        delivery.deliver_now(batch)
