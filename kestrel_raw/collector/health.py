"""Loss and health in the stream (issue 15): the ``loss`` events and the ``status`` event's counters.

Loss.  Every counter of a lost event (the programs' ``ringbuf_full`` and ``rate_limited`` per kind, the
kernel's count of program runs it skipped, ``prog_missed``, the events dropped for a slow consumer,
``user_dropped``, and the records the parser refused, ``parse_error``: ``CollectorStats.lost``) is looked at
every LOSS_INTERVAL seconds (``LossWatch``); when any grew, a ``loss`` event carries what grew since the
last one (``counts``, by type and cause), into the same stream as the events, so that a reader of the JSON
lines sees the gap where it happens, within a second.  Nothing lost: no loss event.  At stop, once the
rings are drained, a last look reports what the stop itself lost (waiting for the consumer, within
``stop_timeout``).

A loss event waits for room in the queue whatever the queue policy, in a task of its own: under "drop" the
pollers go on draining (and dropping) meanwhile, and the channel gives the waiting loss event the next free
slot.  On an EventBus under "drop" a subscriber with no room misses it (waiting would wait for the slowest
subscriber, which may never read), and the last one, when a stop runs out of time, is handed on without
waiting: both are counted (``user_dropped`` of type ``loss``) in the stats, not in a loss event (each
missed one would make another).

Status.  The status event at start has ``reason`` "start"; with ``status_interval`` the collector writes
one every that many seconds with ``reason`` "interval", the same host identity and the counters so far
(``CollectorStats.counters``).
"""
from __future__ import annotations

from kestrel_raw import spec
from kestrel_raw.codec.compiled import CODEC
from kestrel_raw.codec.event import KestrelEvent

LOSS_INTERVAL = 0.5  # seconds between looks at the loss counters: a loss is reported within a second

LOSS_LABEL = spec.LOSS.label
REASON_START = "start"
REASON_INTERVAL = "interval"


def loss_delta(now: dict[str, dict[str, int]], before: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """What each (type, cause) count of ``now`` has above ``before``, the counts that grew only, in
    ``now``'s order (counters only grow)."""
    out: dict[str, dict[str, int]] = {}
    for kind, causes in now.items():
        seen = before.get(kind, {})
        grew = {cause: n - seen.get(cause, 0) for cause, n in causes.items() if n > seen.get(cause, 0)}
        if grew:
            out[kind] = grew
    return out


def loss_event(counts: dict[str, dict[str, int]], ts_mono: int, wall_offset: int) -> KestrelEvent:
    """The loss event (spec.LOSS) of ``counts`` (type -> cause -> events lost), stamped ``ts_mono``
    (CLOCK_MONOTONIC ns)."""
    return CODEC["event_loss"](counts, ts_mono, ts_mono + wall_offset)


class LossWatch:
    """What the loss events have reported so far: ``pending(lost)`` is what to report now (empty: no loss
    event), ``reported(counts)`` records a loss event handed on."""

    def __init__(self) -> None:
        self.done: dict[str, dict[str, int]] = {}

    def pending(self, lost: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        # The loss events' own drops are left out: each missed one would make another to report it, one
        # every LOSS_INTERVAL for as long as a subscriber is full.
        return loss_delta({kind: causes for kind, causes in lost.items() if kind != LOSS_LABEL}, self.done)

    def reported(self, counts: dict[str, dict[str, int]]) -> None:
        for kind, causes in counts.items():  # (a count read lower than before, a closed program's, is ignored)
            seen = self.done.setdefault(kind, {})
            for cause, n in causes.items():
                seen[cause] = seen.get(cause, 0) + n
