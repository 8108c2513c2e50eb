"""Collector configuration: one frozen value, validated when built (``ConfigError`` names setting and fix)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable

from kestrel_raw.errors import ConfigError
from kestrel_raw.spec import EventType

QUEUE_POLICIES = ("block", "drop")
DELIVERIES = ("events", "json")
LATENCIES = ("batch", "low")
# The event types a program reports, the ones collected unless others are asked for, and "all".
ALL_EVENT_TYPES: tuple[EventType, ...] = (EventType.EXEC, EventType.OPEN, EventType.CONNECT, EventType.EXIT,
                                          EventType.FORK)
DEFAULT_EVENT_TYPES: tuple[EventType, ...] = (EventType.EXEC, EventType.OPEN, EventType.CONNECT, EventType.EXIT)
_VALID_NAMES = ", ".join(t.label for t in ALL_EVENT_TYPES)
DEFAULT_CONTAINER_SOCKETS = ("/run/podman/podman.sock", "/var/run/docker.sock")  # as context/containerinfo.py
MAX_ANCESTORS = 64


def _event_type(value: object) -> EventType:
    found = None
    if isinstance(value, EventType):
        found = value
    elif isinstance(value, str):
        found = EventType.__members__.get(value.strip().upper())
    elif isinstance(value, int) and not isinstance(value, bool) and value in EventType._value2member_map_:
        found = EventType(value)
    if found is EventType.STATUS:
        raise ConfigError("event_types: status is not collected from the kernel; the collector emits it once at "
                          "start (CollectorConfig.status)")
    if found is None:
        raise ConfigError(f"event_types: unknown event type {value!r}; valid: {_VALID_NAMES}")
    return found


def parse_event_types(text: str) -> tuple[EventType, ...]:
    """``"exec,open"`` -> ``(EventType.EXEC, EventType.OPEN)`` (for the CLI); ``"all"`` means every type."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ConfigError(f"event types: none given in {text!r}; valid: {_VALID_NAMES} (or all)")
    if [n.lower() for n in names] == ["all"]:
        return ALL_EVENT_TYPES
    return _dedupe(_event_type(n) for n in names)


def _dedupe(types: Iterable[EventType]) -> tuple[EventType, ...]:
    return tuple(dict.fromkeys(types))


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value <= 0:
        raise ConfigError(f"{name} must be at least 1, got {value}")


def _positive_seconds(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")


MAX_DEFAULT_BUFFERS = 4


def default_buffers() -> int:
    """The default number of ring buffers: one per CPU, at most MAX_DEFAULT_BUFFERS."""
    return max(1, min(MAX_DEFAULT_BUFFERS, os.cpu_count() or 1))


@dataclass(frozen=True)
class CollectorConfig:
    """What the collector loads and how it moves events.

    program_path: a directory (must exist) where the collector writes the disassembly of every program it
        loads, one ``<name>.txt`` each, for audit; None: none written.
    buffers: number of ring buffers; each process writes into ring tgid % buffers.  Default (None): one per
        CPU, at most 4 (more rings than CPUs that write at once spread no contention, and the memory serves
        better as depth).
    buffer_size: bytes of each ring buffer: a power of two and a multiple of the page size (the kernel's
        BPF_MAP_TYPE_RINGBUF rule).  1 MiB by default: ~9,000 opens, ~28 ms of a 320k opens/s loop, so a
        reader the scheduler sets aside for a few ms (measured here: up to 4-8 ms, when it shares a CPU
        with the traced loop) loses nothing; with 256 KiB rings that loop lost 0.1-4% of its opens.
    event_types: which events to collect: EventType values or their names ("exec"...); stored as a tuple.
        Default: exec, open, connect, exit (fork when asked for).
    context: add to every event what user space knows of its process (exe, cwd, namespaces, hostname), its
        cgroup and container (kestrel_raw/collector/enrich.py), from a process cache seeded from /proc at
        start and kept current by the exec, fork and exit records and the internal proc records (their
        programs are loaded whatever event_types says; the events not asked for are not delivered).  False:
        those keys are null.
    ancestors: with context, add ``ancestors`` to every event, the chain of up to this many ancestors from the
        process cache (0: none, the key is left out).
    threads: fork events for new threads too (``thread: true``); by default only new processes.
    container_sockets: the container runtimes' API sockets asked for container names and images (docker's
        Engine API, which podman's service speaks too), in order.
    status: emit the ``status`` event (the host's identity) once at start; not with only_tgids (those tgids'
        events alone are reported).
    queue_size: events buffered between the ring-buffer pollers and each consumer (with an EventBus for
        output, each subscriber's ``max_buffer`` instead).
    queue_policy: what happens when the consumer is slow and the queue is full.  "block": the pollers wait
        for room; the ring buffers fill and the programs count every record they cannot write
        (stats().kernel ... ringbuf_full): events are lost in the kernel, oldest kept.  "drop": the pollers
        keep draining the rings and drop the events the queue cannot take, counted in
        stats().user_dropped: the newest are lost, the rings never fill because of the consumer.  Memory
        is bounded either way (queue_size events plus the rings).  With an EventBus, a subscriber is a
        consumer: "block" waits for the slowest, under "drop" each full subscriber misses the event alone.
    btf_path: kernel BTF, for struct offsets.
    wakeup_bytes: the programs wake the reader only once a ring holds this many bytes (0: every record);
        None means buffer_size // 8.  Must be below buffer_size.
    poll_interval: seconds between drains when no wakeup comes: the longest a lone event waits.
    flush_interval: seconds a JSON line may stay buffered while events flow.
    only_tgids: None (the default: report every process but the collectors), or the only tgids reported
        (debugging and tests: with the flooders of a storm test as the only tgids, the kernel's loss
        counters count their events alone, so delivered + lost = generated is exact).
    peer_interval: seconds between checks that the other collectors this one ignores still run (an entry
        whose pid now names another process is removed: a reused pid is hidden at most this long).
    drop_privileges: once attached and mapped, give up every capability and root's uid (kestrel_raw/kernel/caps.py).
        Irreversible for the whole process, so off for the library; the CLI turns it on.
    drop_uid, drop_gid: the identity a root process takes when it drops (default nobody, 65534).
    deliver: what the collector sends on its channel.  "events": one KestrelEvent per item (the library
        API).  "json": one ``bytes`` chunk per ring-buffer drain holding the JSON lines of its records
        (kestrel_raw.codec.jsonl; what ``kestrel-raw run`` writes), which skips building event objects: the
        queue then holds about queue_size events in chunks of at most ``BATCH_RECORDS``.
    latency: "batch" (default): the programs wake the reader once per ``wakeup_bytes`` and the poller also
        drains every ``poll_interval``.  "low": the programs never wake the reader, which instead polls
        the rings without sleeping (it keeps one CPU busy) and the CLI flushes every chunk: microseconds
        from syscall to user space, for latency-sensitive consumers.
    """

    program_path: str | None = None
    buffers: int | None = None
    buffer_size: int = 1 << 20
    event_types: tuple[EventType, ...] = field(default=DEFAULT_EVENT_TYPES)
    queue_size: int = 8192
    queue_policy: str = "block"
    btf_path: str = "/sys/kernel/btf/vmlinux"
    wakeup_bytes: int | None = None
    poll_interval: float = 0.1
    flush_interval: float = 0.1
    only_tgids: tuple[int, ...] | None = None
    peer_interval: float = 1.0
    drop_privileges: bool = False
    drop_uid: int = 65534
    drop_gid: int = 65534
    deliver: str = "events"
    latency: str = "batch"
    context: bool = True
    ancestors: int = 0
    threads: bool = False
    container_sockets: tuple[str, ...] = DEFAULT_CONTAINER_SOCKETS
    status: bool = True

    def __post_init__(self) -> None:
        if self.program_path is not None:
            path = os.fspath(self.program_path)
            if not os.path.exists(path):
                raise ConfigError(f"program_path {path!r} does not exist; create it or leave it unset")
            object.__setattr__(self, "program_path", path)
        if self.buffers is None:
            object.__setattr__(self, "buffers", default_buffers())
        _positive_int("buffers", self.buffers)
        _positive_int("buffer_size", self.buffer_size)
        page = os.sysconf("SC_PAGE_SIZE")
        if self.buffer_size & (self.buffer_size - 1):
            raise ConfigError(f"buffer_size {self.buffer_size} is not a power of two; the kernel requires one "
                              f"for ring buffers (e.g. {1 << self.buffer_size.bit_length()})")
        if self.buffer_size % page:
            raise ConfigError(f"buffer_size {self.buffer_size} is not a multiple of the page size ({page} "
                              f"bytes); use at least {page}")
        types = self.event_types
        if isinstance(types, (str, EventType)):
            types = [types]
        types = _dedupe(_event_type(t) for t in types)
        if not types:
            raise ConfigError(f"event_types is empty; give at least one of: {_VALID_NAMES}")
        object.__setattr__(self, "event_types", types)
        _positive_int("queue_size", self.queue_size)
        if self.queue_policy not in QUEUE_POLICIES:
            raise ConfigError(f"queue_policy {self.queue_policy!r} is unknown; valid: block, drop")
        if self.deliver not in DELIVERIES:
            raise ConfigError(f"deliver {self.deliver!r} is unknown; valid: events, json")
        if self.latency not in LATENCIES:
            raise ConfigError(f"latency {self.latency!r} is unknown; valid: batch, low")
        if self.wakeup_bytes is None:
            object.__setattr__(self, "wakeup_bytes", self.buffer_size // 8)
        elif isinstance(self.wakeup_bytes, bool) or not isinstance(self.wakeup_bytes, int):
            raise ConfigError(f"wakeup_bytes must be an integer, got {self.wakeup_bytes!r}")
        elif not 0 <= self.wakeup_bytes < self.buffer_size:
            raise ConfigError(f"wakeup_bytes {self.wakeup_bytes} must be at least 0 and below buffer_size "
                              f"({self.buffer_size}), or the reader would never be woken")
        _positive_seconds("poll_interval", self.poll_interval)
        _positive_seconds("flush_interval", self.flush_interval)
        object.__setattr__(self, "btf_path", os.fspath(self.btf_path))
        if self.only_tgids is not None:
            tgids = tuple(self.only_tgids)
            for tgid in tgids:
                _positive_int("only_tgids entries", tgid)
            if not tgids:
                raise ConfigError("only_tgids is empty: nothing would be reported; give tgids or None")
            object.__setattr__(self, "only_tgids", tgids)
        _positive_seconds("peer_interval", self.peer_interval)
        if not isinstance(self.drop_privileges, bool):
            raise ConfigError(f"drop_privileges must be True or False, got {self.drop_privileges!r}")
        for name in ("context", "threads", "status"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if isinstance(self.ancestors, bool) or not isinstance(self.ancestors, int) or \
                not 0 <= self.ancestors <= MAX_ANCESTORS:
            raise ConfigError(f"ancestors must be an integer from 0 to {MAX_ANCESTORS}, got {self.ancestors!r}")
        if self.ancestors and not self.context:
            raise ConfigError("ancestors needs context=True: the ancestors come from the process cache")
        sockets = self.container_sockets
        if isinstance(sockets, (str, os.PathLike)):
            sockets = (sockets,)
        object.__setattr__(self, "container_sockets", tuple(os.fspath(p) for p in sockets))
        for name in ("drop_uid", "drop_gid"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**32 - 1:
                raise ConfigError(f"{name} must be a non-root id (1 to 4294967294), got {value!r}")
