"""Collector configuration: one frozen value, validated when built (``ConfigError`` names setting and fix)."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Iterable

from kestrel_raw.errors import ConfigError
from kestrel_raw.spec import EventType

QUEUE_POLICIES = ("block", "drop")
DELIVERIES = ("events", "json")
LATENCIES = ("batch", "low")
VERIFIER_LOG_LEVELS = (0, 1, 2, 4)  # none, BPF_LOG_LEVEL1, BPF_LOG_LEVEL2, BPF_LOG_STATS
# The event types a program reports ("all" on the command line), and what the collector collects when not
# told.  fork is off by default; so are the uprobe events (shell_command, dns_query): each call of the probed
# function costs a trap into the kernel (README, Performance).
ALL_EVENT_TYPES: tuple[EventType, ...] = (EventType.EXEC, EventType.OPEN, EventType.CONNECT, EventType.EXIT,
                                          EventType.FORK, EventType.SHELL_COMMAND, EventType.DNS_QUERY)
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
        raise ConfigError("event_types: status is not collected from the kernel; the collector emits it at start "
                          "and every status_interval seconds (CollectorConfig.status)")
    if found is EventType.LOSS:
        raise ConfigError("event_types: loss is not collected from the kernel; the collector emits it whenever "
                          "events were lost")
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


def _library_name(key: str) -> str:
    """How a filter error names a setting of CollectorConfig: ``filters`` and the flag's key in it."""
    return f"filters ({key})"


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

    program_path: a BPF ELF object (``clang -target bpf -g -O2 -c``, libbpf style) to load besides, or instead
        of, the built-in programs: its programs attached where their SEC() names say, its ring buffers
        (BPF_MAP_TYPE_RINGBUF maps) read by the same pollers (kestrel_raw/loader, kestrel_raw/collector/
        objects.py).  Its records come out as ``ObjectRecord`` values (or, with deliver="json", JSON lines
        {"object", "map", "len", "hex"}), parsed by ``record_schema`` when given.  None: no object.
        (This option used to name the listing directory, which is now ``dump_dir``.)
    asm_object: programs of your own assembled with kestrel_raw.asm, and their maps
        (kestrel_raw.probes.user.AsmObject): loaded, attached and read as a BPF object of program_path is,
        their records handed on as ``ObjectRecord`` values.  At most one of program_path and asm_object.
    record_schema: how the object's records are parsed: a construct ``Struct`` (every ring), or a dict of
        ring map name -> construct; each parsed record is handed on as plain dicts and lists
        (``ObjectRecord.value``).  None: records stay bytes.
    dump_dir: a directory (must exist) where the collector writes the disassembly of every built-in program
        it loads, one ``<name>.txt`` each, for audit; None: none written.
    buffers: number of ring buffers; each process writes into ring tgid % buffers.  Default (None): one per
        CPU, at most 4 (more rings than CPUs that write at once spread no contention, and the memory serves
        better as depth).
    buffer_size: bytes of each ring buffer: a power of two and a multiple of the page size (the kernel's
        BPF_MAP_TYPE_RINGBUF rule).  8 MiB by default (Falco's per-CPU default too): a process's events all
        go to one ring, and a burst from one process at full speed outruns the reader (one Python thread:
        ~0.4-0.5 M records/s), so the ring holds what the reader has not yet taken: ~45,000 opens of ~180
        bytes.  A 100,000-open burst at ~0.6 M/s leaves ~35,000 unread at its end.  With 1 MiB rings half
        of such a burst was lost.
    event_types: which events to collect: EventType values or their names ("exec"...); stored as a tuple.
        Default: exec, open, connect, exit; fork, and shell_command and dns_query (uprobes), only when named.
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
    status: emit the ``status`` event (the host's identity, the filters and the counters) at start; not with
        only_tgids (those tgids' events alone are reported).
    status_interval: seconds between the periodic ``status`` events after the one at start (``reason``
        "interval", with the counters so far: a health line a log shipper keeps); 0: none.  Needs status.
    filters: what the programs filter in the kernel (a ``kestrel_raw.filters.Filters``; default: nothing),
        checked against event_types here (a filter on what none of them has is refused); written into the
        filter maps before the programs are attached, and changed while running with
        ``KestrelCollector.set_filters``.
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
    stop_timeout: seconds a stop may spend handing on what the rings still hold, waiting for the consumer
        (the programs are detached first, so nothing new arrives); then the rest is handed on without
        waiting and what the consumer cannot take is counted as dropped.
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
    pin: a ``kestrel_raw.audit.PinFile``: load() refuses, before it loads anything, any program whose
        SHA-256 the file does not approve (``PinError``, naming the program); None: no check.
    verifier_log_level, verifier_log_path: with a level (1, 2 or 4, the kernel's BPF_LOG_LEVEL1/2 and
        BPF_LOG_STATS), the verifier's log of each program is written at load to
        ``verifier_log_path``/NAME.log (a directory that must exist); 0: no log kept.
    """

    program_path: str | None = None
    asm_object: object = None
    record_schema: object = None
    dump_dir: str | None = None
    buffers: int | None = None
    buffer_size: int = 8 << 20
    event_types: tuple[EventType, ...] = field(default=DEFAULT_EVENT_TYPES)
    queue_size: int = 8192
    queue_policy: str = "block"
    btf_path: str = "/sys/kernel/btf/vmlinux"
    wakeup_bytes: int | None = None
    poll_interval: float = 0.1
    flush_interval: float = 0.1
    only_tgids: tuple[int, ...] | None = None
    peer_interval: float = 1.0
    stop_timeout: float = 5.0
    drop_privileges: bool = False
    drop_uid: int = 65534
    drop_gid: int = 65534
    deliver: str = "events"
    latency: str = "batch"
    pin: object | None = None
    verifier_log_level: int = 0
    verifier_log_path: str | None = None
    context: bool = True
    ancestors: int = 0
    threads: bool = False
    container_sockets: tuple[str, ...] = DEFAULT_CONTAINER_SOCKETS
    status: bool = True
    status_interval: float = 60.0
    filters: object = None

    def __post_init__(self) -> None:
        if self.program_path is not None:
            path = os.fspath(self.program_path)
            if os.path.isdir(path):
                raise ConfigError(f"program_path {path!r} is a directory: program_path is now the BPF object file to "
                                  f"load; the directory for program listings is named dump_dir (CLI: --dump-programs)")
            if not os.path.exists(path):
                raise ConfigError(f"program_path {path!r} does not exist; give the path of a BPF object file "
                                  "(clang -target bpf -g -O2 -c) or leave it unset")
            object.__setattr__(self, "program_path", path)
        if self.dump_dir is not None:
            path = os.fspath(self.dump_dir)
            if not os.path.isdir(path):
                raise ConfigError(f"dump_dir {path!r} is not a directory; create it or leave it unset")
            object.__setattr__(self, "dump_dir", path)
        if self.asm_object is not None:
            from kestrel_raw.probes.user import AsmObject

            if not isinstance(self.asm_object, AsmObject):
                raise ConfigError(f"asm_object must be a kestrel_raw.probes.user.AsmObject, got {self.asm_object!r}")
            if self.program_path is not None:
                raise ConfigError("program_path and asm_object are both given: the collector loads one object; "
                                  "give one of them")
        if self.record_schema is not None:
            if self.program_path is None and self.asm_object is None:
                raise ConfigError("record_schema parses the records of a BPF object: give program_path (or "
                                  "asm_object) too")
            schemas = self.record_schema.values() if isinstance(self.record_schema, dict) else [self.record_schema]
            for schema in schemas:
                if not callable(getattr(schema, "parse", None)):
                    raise ConfigError(f"record_schema must be a construct (with .parse) or a dict of ring name -> "
                                      f"construct, got {schema!r}")
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
        if not types and self.program_path is None and self.asm_object is None:
            raise ConfigError(f"event_types is empty; give at least one of: {_VALID_NAMES} (or a BPF object as "
                              "program_path, or asm_object)")
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
        _positive_seconds("stop_timeout", self.stop_timeout)
        if self.verifier_log_level not in VERIFIER_LOG_LEVELS:
            raise ConfigError(f"verifier_log_level must be one of {', '.join(map(str, VERIFIER_LOG_LEVELS))} "
                              f"(0: none; 1: the instructions as verified; 2: every state; 4: statistics), "
                              f"got {self.verifier_log_level!r}")
        if self.verifier_log_level:
            if self.verifier_log_path is None or not os.path.isdir(self.verifier_log_path):
                raise ConfigError(f"verifier_log_path {self.verifier_log_path!r} is not a directory; create it "
                                  f"(the verifier's log of each program is written there)")
            object.__setattr__(self, "verifier_log_path", os.fspath(self.verifier_log_path))
        if not isinstance(self.drop_privileges, bool):
            raise ConfigError(f"drop_privileges must be True or False, got {self.drop_privileges!r}")
        for name in ("context", "threads", "status"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if isinstance(self.status_interval, bool) or not isinstance(self.status_interval, (int, float)) or \
                not 0 <= self.status_interval < math.inf:
            raise ConfigError(f"status_interval must be a number of seconds (0: no periodic status event), got "
                              f"{self.status_interval!r}")
        if isinstance(self.ancestors, bool) or not isinstance(self.ancestors, int) or \
                not 0 <= self.ancestors <= MAX_ANCESTORS:
            raise ConfigError(f"ancestors must be an integer from 0 to {MAX_ANCESTORS}, got {self.ancestors!r}")
        if self.ancestors and not self.context:
            raise ConfigError("ancestors needs context=True: the ancestors come from the process cache")
        sockets = self.container_sockets
        if isinstance(sockets, (str, os.PathLike)):
            sockets = (sockets,)
        object.__setattr__(self, "container_sockets", tuple(os.fspath(p) for p in sockets))
        from kestrel_raw.filters import NO_FILTERS, Filters

        if self.filters is None:
            object.__setattr__(self, "filters", NO_FILTERS)
        elif not isinstance(self.filters, Filters):
            raise ConfigError(f"filters must be a kestrel_raw.filters.Filters (Filters.parse(...)), got {self.filters!r}")
        if not self.filters.empty:
            self.filters.check(types, name=_library_name, events="event_types")
        for name in ("drop_uid", "drop_gid"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**32 - 1:
                raise ConfigError(f"{name} must be a non-root id (1 to 4294967294), got {value!r}")
