"""KestrelCollector: loads the programs, attaches them, and runs one trio poller per ring buffer.

    collector = KestrelCollector(send_channel, CollectorConfig(event_types=["exec", "open"]))
    collector.load()                      # maps created, programs verified; nothing attached yet
    async with trio.open_nursery() as nursery:
        await nursery.start(collector.start)   # attached; events flow into send_channel
        ...
        collector.stop()                  # detaches everything and closes every fd; start() returns

Records are spread over ``config.buffers`` ring buffers by process (tgid % buffers), so the events of one
process stay in order in one ring.  The programs write without waking the reader until a ring holds
``wakeup_bytes``; the poller also drains every ``poll_interval`` seconds, so a lone event waits at most that.

A slow consumer: with ``queue_policy="block"`` a full channel stops the pollers, the rings fill and the
programs count every record they cannot write (``stats().kernel``, ``ringbuf_full``); with ``"drop"`` the
pollers keep draining and drop what the channel cannot take (``stats().user_dropped``).  Either way memory
stays bounded by ``queue_size`` events plus the rings, and nothing is lost without being counted.

Other collectors.  The programs skip the collector's own tgid and every tgid in its ``kr_filter`` map.  At
load, before anything is attached, a collector looks for the processes that hold a ``kr_filter`` hash map
and a tracepoint program named ``kr_*`` (both need CAP_BPF to make, so a process cannot pose as a
collector by name), puts their tgids in its own filter and its own tgid in theirs (pidfd_getfd(2) gives it
their map).  So neither reports the other from then on; a collector's own start-up, until it registers, is
ordinary activity.  Each entry carries the process's start time; every ``peer_interval`` seconds a
collector drops the entries whose process is gone or whose pid now names another process, so a pid reused
by someone else is hidden for at most that long.

Attached means proven: start() makes each tracepoint fire in the collector's own process and sees its
program run (kestrel_raw/collector/selfcheck.py), attaching again one the kernel accepted but does not run.

Privileges: with ``drop_privileges`` the collector gives up every capability and root's uid once its
programs are attached and its rings mapped (kestrel_raw/kernel/caps.py), keeping CAP_BPF only on kernels that
refuse map lookups to a process without it.
"""
from __future__ import annotations

import errno
import os
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import trio

from kestrel_raw.kernel import bpf, caps, syscall
from kestrel_raw import programs
from kestrel_raw.collector import selfcheck
from kestrel_raw import spec as kspec
from kestrel_raw.kernel.attach import attach_tracepoint
from kestrel_raw.btf import BTF
from kestrel_raw.config import CollectorConfig
from kestrel_raw.errors import BPFError, BTFError, RecordError, SetupError
from kestrel_raw.codec.event import KestrelEvent
from kestrel_raw.codec.normalize import event_from_raw
from kestrel_raw.codec.jsonl import encode_records
from kestrel_raw.maps import HashMap, Map, PerCPUArrayMap, ProgArrayMap, RingBuf, RingBufReader, TaskStorageMap
from kestrel_raw.maps.ring import ReplayRing
from kestrel_raw.kernel.prog import Program
from kestrel_raw.codec.records import pack_record
from kestrel_raw.kernel.tracefs import find_tracefs, tracepoint_format
from kestrel_raw.kernel.uapi import BPF_MAP_TYPE_ARRAY_OF_MAPS, BPF_MAP_TYPE_HASH, BPF_PROG_TYPE_TRACEPOINT

BATCH_RECORDS = 256  # records a poller takes from a ring at a time: one chunk of JSON lines at most
SELF_CHECK_TRIES = 3  # attachments made of a tracepoint before one that fires is given up (selfcheck.py)
SELF_CHECK_WAIT = 5.0  # seconds a provoked program has to show its run
BUSY_SPIN_NS = 1_000_000  # latency="low": longest the spinning poller goes without yielding to trio
WARM_EVERY_NS = 30_000  # latency="low": how often the spinning poller runs its warm-up (_warm_up)
FILTER_ENTRIES = 4096  # tgids in the filter map: other collectors, or the tgids of an only_tgids run
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
FILTER_MAP_NAME = programs.MAP_FILTER  # kernel name of the ignore-mode filter: what other collectors look for
ONLY_MAP_NAME = "kr_only"  # kernel name of an only-mode filter: not a collector's ignore list


@dataclass(frozen=True)
class CollectorStats:
    """Counts since load().  Nothing is lost without being counted here."""

    records: int  # records read from the ring buffers
    delivered: dict[str, int]  # events handed on, by type name
    parse_errors: int  # records that could not be parsed (counted and skipped)
    user_dropped: int  # events dropped because the consumer was slow (queue_policy="drop")
    kernel: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # type -> counter -> per CPU
    peers: tuple[int, ...] = ()  # tgids of the other collectors this one ignores

    @property
    def kernel_lost(self) -> int:
        """Events the kernel side could not report (ring buffer full, program run skipped)."""
        return sum(
            sum(per_cpu)
            for counters in self.kernel.values()
            for name, per_cpu in counters.items()
            if name in ("ringbuf_full", "prog_missed")
        )

    def summary(self) -> str:
        delivered = " ".join(f"{k}={v}" for k, v in sorted(self.delivered.items()))
        lost = {
            f"{kind}.{name}": sum(cpus)
            for kind, counters in self.kernel.items()
            for name, cpus in counters.items()
            if sum(cpus)
        }
        lost_text = " ".join(f"{k}={v}" for k, v in sorted(lost.items())) or "none"
        return (f"kestrel-raw: records={self.records} delivered[{delivered}] kernel_lost={self.kernel_lost} "
                f"user_dropped={self.user_dropped} parse_errors={self.parse_errors} kernel_counters[{lost_text}] "
                f"peers[{' '.join(map(str, self.peers))}]")


class KestrelCollector:
    def __init__(self, event_tx: trio.MemorySendChannel, config: CollectorConfig | None = None) -> None:
        self.config = config or CollectorConfig()
        self._tx = event_tx
        self._maps: dict[str, Map] = {}
        self._rings: list[RingBuf] = []
        self._programs: list[tuple[programs.ProgramSpec, Program]] = []
        self._listing: list[tuple[programs.ProgramSpec, list]] = []
        self._links: list = []
        self._readers: list[RingBufReader] = []
        self._cancel: trio.CancelScope | None = None
        self._loaded = False
        self._closed = False
        self._records = 0
        self._parse_errors = 0
        self._user_dropped = 0
        self._delivered = {kind: 0 for kind in kspec.KINDS}
        self._wall_offset = 0
        self.privileges: caps.Privileges | None = None  # what the process holds after start() dropped
        # Tracepoints whose attachment did not fire when provoked and was made again (selfcheck.py).
        self.reattached: list[str] = []
        self._final: tuple[dict, tuple[int, ...]] | None = None  # stats() of the maps, taken as they close

    # -- load ----------------------------------------------------------------------------------------

    def load(self) -> None:
        """Create the maps and load (verify) every program.  Raises SetupError / BPFError on failure."""
        if self._loaded:
            return
        cfg = self.config
        kinds = [int(t) for t in cfg.event_types]
        specs = programs.specs(kinds)
        filter_mode = programs.FILTER_IGNORE if cfg.only_tgids is None else programs.FILTER_ONLY
        try:
            # Maps first, and registration with the other collectors, so that they stop reporting this
            # one as early as possible.
            self._create_maps(len(specs))
            if cfg.only_tgids is None:
                _register_with_peers(self._maps[programs.MAP_FILTER])
            else:
                for tgid in cfg.only_tgids:
                    self._maps[programs.MAP_FILTER][_U32.pack(tgid)] = _U64.pack(0)
            find_tracefs()
            formats = {s.name: tracepoint_format(s.group, s.tracepoint) for s in specs if s.tail is None}
            layout = programs.KernelLayout.from_btf(self._load_btf())
            for spec in specs:
                insns = programs.build(spec, formats.get(spec.name), layout, self_tgid=os.getpid(),
                                       nrings=cfg.buffers,
                                       wakeup_threshold=-1 if cfg.latency == "low" else cfg.wakeup_bytes,
                                       filter_mode=filter_mode,
                                       self_index=len(self._programs) if spec.tail is None else None)
                prog = Program(insns, maps=self._maps, name=spec.name)
                if spec.tail is not None:
                    self._maps[programs.MAP_TAILS][spec.tail] = prog
                self._programs.append((spec, prog))
                self._listing.append((spec, insns))
            if cfg.program_path is not None:
                _write_listings(cfg.program_path, self._listing)
        except BaseException:
            self._close_all()
            raise
        self._loaded = True

    def _load_btf(self) -> BTF:
        path = self.config.btf_path
        try:
            if not os.path.exists(path):
                raise FileNotFoundError(path)
            return BTF.load(path)
        except FileNotFoundError:
            raise SetupError(f"no kernel BTF at {path}: kestrel-raw takes kernel struct layouts from BTF, "
                             f"so it needs a kernel built with CONFIG_DEBUG_INFO_BTF=y") from None
        except (BTFError, ValueError, EOFError, struct.error) as e:
            raise SetupError(f"the kernel BTF at {path} cannot be used: {e}") from None
        except OSError as e:
            raise SetupError(f"cannot read the kernel BTF at {path}: {e.strerror or e}") from None

    def _create_maps(self, nprograms: int) -> None:
        cfg = self.config
        try:
            self._rings.append(RingBuf(cfg.buffer_size, name="kr_ring0"))
        except BPFError as e:
            if e.errno != errno.EINVAL:
                raise
            raise SetupError(f"this kernel refused a BPF ring buffer ({e}): kestrel-raw needs "
                             f"BPF_MAP_TYPE_RINGBUF, Linux 5.8 or later") from None
        self._rings += [RingBuf(cfg.buffer_size, name=f"kr_ring{i}") for i in range(1, cfg.buffers)]
        outer = Map(BPF_MAP_TYPE_ARRAY_OF_MAPS, 4, 4, cfg.buffers, name=programs.MAP_RINGS,
                    inner_map_fd=self._rings[0].fd)
        self._maps[programs.MAP_RINGS] = outer
        _fill_outer(outer, [ring.fd for ring in self._rings])
        self._maps[programs.MAP_SCRATCH] = PerCPUArrayMap(programs.SCRATCH_SIZE, 1, name=programs.MAP_SCRATCH)
        self._maps[programs.MAP_STATS] = PerCPUArrayMap(8, programs.STATS_ENTRIES, name=programs.MAP_STATS)
        self._maps[programs.MAP_SELF_RUNS] = PerCPUArrayMap(8, max(1, nprograms), name=programs.MAP_SELF_RUNS)
        self._maps[programs.MAP_ENTRY] = TaskStorageMap(programs.ENTRY_VALUE_SIZE, name=programs.MAP_ENTRY)
        self._maps[programs.MAP_TAILS] = ProgArrayMap(programs.TAILS, name=programs.MAP_TAILS)
        self._maps[programs.MAP_FILTER] = HashMap(
            4, 8, FILTER_ENTRIES, name=FILTER_MAP_NAME if cfg.only_tgids is None else ONLY_MAP_NAME)

    # -- run -----------------------------------------------------------------------------------------

    async def start(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Attach, then poll every ring until stop(); reports started once every program is attached."""
        if self._closed:
            raise RuntimeError("this collector was stopped; make a new one")
        self.load()
        try:
            with trio.CancelScope() as self._cancel:
                # What to keep once attached is learnt before attaching: the probe forks a child, whose
                # exit the programs would otherwise report as an event of someone else.
                keep = self._capabilities_to_keep() if self.config.drop_privileges else 0
                for spec, prog in self._programs:
                    if spec.tail is None:
                        self._links.append(attach_tracepoint(prog, spec.group, spec.tracepoint))
                await self._check_attached()
                self._readers = [RingBufReader(ring, self.config.buffer_size) for ring in self._rings]
                self._wall_offset = time.time_ns() - time.monotonic_ns()
                if self.config.only_tgids is None:
                    # Again, now that this collector's programs are loaded: a collector that started
                    # at the same moment had none when load() looked, so it was not recognised then.
                    _register_with_peers(self._maps[programs.MAP_FILTER])
                if self.config.drop_privileges:
                    self.privileges = caps.drop_privileges(keep, self.config.drop_uid, self.config.drop_gid)
                async with trio.open_nursery() as nursery:
                    if self.config.latency == "low":
                        nursery.start_soon(self._poll_busy)
                    else:
                        for reader in self._readers:
                            nursery.start_soon(self._poll, reader)
                    if self.config.only_tgids is None:
                        nursery.start_soon(self._prune_peers)
                    task_status.started()
        finally:
            self._close_all()

    async def _check_attached(self) -> None:
        """Make each tracepoint fire in this process and see its program run; re-attach the silent ones.

        See kestrel_raw/collector/selfcheck.py: an attachment the kernel accepted can stay dead.  The silent ones
        are all detached before any is attached again, so that a tracepoint this collector alone uses is
        turned off and on.  Raises SetupError when they are still silent after SELF_CHECK_TRIES tries.
        """
        runs = self._maps[programs.MAP_SELF_RUNS]
        # Program index -> what makes its tracepoint fire here (the exec program has nothing).
        provoke = {i: selfcheck.PROVOKE[key] for i, (spec, _prog) in enumerate(self._programs)
                   if (key := (spec.group, spec.tracepoint)) in selfcheck.PROVOKE}
        for attempt in range(1, SELF_CHECK_TRIES + 1):
            before = {i: runs.sum_u64(i) for i in provoke}
            for fn in provoke.values():
                fn()
            # A syscall's program has run when the syscall returns; a thread's exit comes a little
            # after join().  The wait is only ever long for a program that does not run.
            deadline = trio.current_time() + SELF_CHECK_WAIT
            while True:
                silent = [i for i in provoke if runs.sum_u64(i) == before[i]]
                if not silent or trio.current_time() >= deadline:
                    break
                await trio.sleep(0.005)
            if not silent:
                return
            targets = ", ".join(f"{spec.name} at {spec.group}:{spec.tracepoint}"
                                for spec in (self._programs[i][0] for i in silent))
            if attempt == SELF_CHECK_TRIES:
                raise SetupError(
                    f"the kernel accepted {targets} but does not run it: this process's own calls did not "
                    f"reach it in {SELF_CHECK_TRIES} tries, detached and attached again between tries.  "
                    f"Events there would be missed without a trace, so the collector stops.  Another "
                    f"tracer on the same tracepoint can keep it in that state (`bpftool perf` lists them)")
            self.reattached.extend(f"{self._programs[i][0].group}:{self._programs[i][0].tracepoint}"
                                   for i in silent)
            for i in silent:
                self._links[i].close()
            for i in silent:
                spec, prog = self._programs[i]
                self._links[i] = attach_tracepoint(prog, spec.group, spec.tracepoint)

    def stop(self) -> None:
        """Detach every program and close every fd; idempotent, callable from any task."""
        if self._cancel is not None:
            self._cancel.cancel()
        else:
            self._close_all()

    def _capabilities_to_keep(self) -> int:
        """The capability mask to keep once attached: none, or CAP_BPF alone where this kernel needs it."""
        filter_map = self._maps[programs.MAP_FILTER]
        stats_map = self._maps[programs.MAP_STATS]

        def map_ops() -> None:
            stats_map[0]
            filter_map.get(_U32.pack(0))

        # Kernels before 6.5 refuse every bpf(2) command to a process without CAP_BPF when
        # kernel.unprivileged_bpf_disabled is set, even on fds it holds: keep CAP_BPF alone there, or
        # stats() and the peer pruning would fail.
        return 0 if caps.works_without_privilege(map_ops) else caps.cap_mask(caps.CAP_BPF)

    async def _prune_peers(self) -> None:
        filter_map = self._maps[programs.MAP_FILTER]
        while True:
            await trio.sleep(self.config.peer_interval)
            for key in list(filter_map.keys()):
                tgid = _U32.unpack(key)[0]
                value = filter_map.get(key)
                if value is not None and _start_ticks(tgid) != _U64.unpack(value)[0]:
                    filter_map.delete(key)

    async def _poll(self, reader: RingBufReader) -> None:
        """One ring: wait for a wakeup (or poll_interval), drain, deliver, yield."""
        interval = self.config.poll_interval
        deliver = self._deliver_json if self.config.deliver == "json" else self._deliver_events
        checkpoint = trio.lowlevel.checkpoint
        until_empty = self.config.wakeup_bytes == 0
        while True:
            if until_empty:
                # The kernel's own policy: it wakes the reader only for a record written once the reader
                # has caught up, so the reader drains until it finds the ring empty, as libbpf does.
                if not reader.available():
                    with trio.move_on_after(interval):
                        await reader.wait_readable()
            else:
                # A threshold: sleep until the programs' next wakeup (every wakeup_bytes of unread records)
                # or the deadline, then take what is there.  Going back to the ring while anything was
                # unread drained a busy ring ~11 records at a time, and the per-drain cost (trio, the
                # channel, the writer) came to more than the records' own.
                with trio.move_on_after(interval):
                    await reader.wait_wakeup()
            while True:
                batch = reader.drain(BATCH_RECORDS)
                if batch:
                    self._records += len(batch)
                    await deliver(batch)
                if len(batch) < BATCH_RECORDS:
                    break
                await checkpoint()
            await checkpoint()

    async def _poll_busy(self) -> None:
        """latency="low": one task spins over every ring's positions (one busy CPU, no wakeups).

        A pass over the rings is two loads per ring; yielding to trio after each pass would cost ~5 us of
        scheduling each time, so the task yields only after it delivered something or after BUSY_SPIN_NS
        of finding nothing (so that signals, timers and the other tasks still run).  After a delivery it
        yields twice: trio runs the tasks made runnable in one step together in the next, in any order, and
        a spin that started before the consumer's turn would hold the event back for a whole BUSY_SPIN_NS.
        Every WARM_EVERY_NS of spinning it runs the delivery path once on a canned record (``_warm_up``).
        """
        probes = [(reader.drainer(), reader.probe()) for reader in self._readers]
        as_json = self.config.deliver == "json"
        send_events = self._send_events
        checkpoint = trio.lowlevel.checkpoint
        clock = time.monotonic_ns
        threads = threading.active_count
        warm = self._warm_up()
        next_warm = 0
        while True:
            give_up = clock() + BUSY_SPIN_NS
            found = False
            while not found:
                for drain, waiting in probes:
                    if waiting():
                        batch = drain(BATCH_RECORDS)
                        if batch:
                            found = True
                            self._records += len(batch)
                            if as_json:
                                await self._deliver_json(batch)
                            else:
                                blocked = send_events(batch)
                                if blocked is not None:
                                    await self._send_blocked(blocked)
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

    def _warm_up(self) -> Callable[[], object]:
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
        wall = self._wall_offset
        if self.config.deliver == "json":
            def warm() -> None:
                encode_records(ring.replay().drain(BATCH_RECORDS), wall)
        else:
            def warm() -> None:
                for record in ring.replay().drain(BATCH_RECORDS):
                    event_from_raw(record, wall)
        return warm

    async def _deliver_events(self, batch: list[bytes]) -> None:
        await self._send_blocked(self._send_events(batch))

    async def _send_blocked(self, blocked: tuple[KestrelEvent, list[bytes]] | None) -> None:
        """The channel is full and queue_policy is "block": wait for room, then go on, in order."""
        while blocked is not None:
            event, rest = blocked
            await self._tx.send(event)
            self._delivered[event.event_type_id] += 1
            blocked = self._send_events(rest)

    def _send_events(self, batch: list[bytes]) -> tuple[KestrelEvent, list[bytes]] | None:
        """Hand each record of ``batch`` to the channel as an event without waiting (the low-latency poller
        calls this directly: no coroutine on its path).  None when all are delivered, dropped (queue_policy
        "drop") or malformed (counted); else, under "block", the event the full channel refused and the
        records after it."""
        block = self.config.queue_policy == "block"
        send_nowait = self._tx.send_nowait
        delivered = self._delivered
        wall = self._wall_offset
        for i, raw in enumerate(batch):
            try:
                event = event_from_raw(raw, wall)
            except RecordError:
                self._parse_errors += 1
                continue
            try:
                send_nowait(event)
            except trio.WouldBlock:
                if block:
                    return event, batch[i + 1:]
                self._user_dropped += 1
                continue
            delivered[event.event_type_id] += 1
        return None

    def _encode_batch(self, batch: list[bytes]) -> tuple[bytes, list[int]]:
        """The JSON lines of ``batch`` as one chunk, and the kind of each record in it."""
        chunk, kinds, bad = encode_records(batch, self._wall_offset)
        self._parse_errors += bad
        return chunk, kinds

    async def _deliver_json(self, batch: list[bytes]) -> None:
        chunk, kinds = self._encode_batch(batch)
        if not kinds:
            return
        try:
            self._tx.send_nowait(chunk)
        except trio.WouldBlock:
            if self.config.queue_policy != "block":
                self._user_dropped += len(kinds)
                return
            await self._tx.send(chunk)
        delivered = self._delivered
        for kind, n in Counter(kinds).items():
            delivered[kind] += n

    def _drain_at_stop(self, reader: RingBufReader) -> None:
        while True:
            batch = reader.drain(BATCH_RECORDS)
            if not batch:
                return
            self._records += len(batch)
            if self.config.deliver == "json":
                chunk, kinds = self._encode_batch(batch)
                items = [(chunk, kinds)] if kinds else []
            else:
                items = []
                for raw in batch:
                    try:
                        event = event_from_raw(raw, self._wall_offset)
                        items.append((event, [event.event_type_id]))
                    except RecordError:
                        self._parse_errors += 1
            for item, kinds in items:
                try:
                    self._tx.send_nowait(item)
                except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    self._user_dropped += len(kinds)
                    continue
                for kind in kinds:
                    self._delivered[kind] += 1

    # -- introspection ---------------------------------------------------------------------------------

    def stats(self) -> CollectorStats:
        """Counts so far; after stop(), the counts as they were when the maps were closed."""
        kernel, peers = self._final if self._final is not None else (self._kernel_counters(), self._peer_tgids())
        return CollectorStats(
            records=self._records,
            delivered={_KIND_NAMES[k]: v for k, v in self._delivered.items()},
            parse_errors=self._parse_errors,
            user_dropped=self._user_dropped,
            kernel=kernel,
            peers=peers,
        )

    def _kernel_counters(self) -> dict[str, dict[str, list[int]]]:
        kernel: dict[str, dict[str, list[int]]] = {}
        stats_map = self._maps.get(programs.MAP_STATS)
        if stats_map is not None and not stats_map.closed:
            for kind in kspec.KINDS:
                counters = {}
                for c, name in enumerate(programs.STAT_NAMES):
                    values = stats_map[kind * programs.STATS_PER_KIND + c]
                    counters[name] = [_u64(v) for v in values]
                kernel[_KIND_NAMES[kind]] = counters
        # Runs the kernel skipped (BPF_OBJ_GET_INFO_BY_FD recursion_misses): a program that would have
        # started while another BPF program was running on that CPU.  The event is lost before any of our
        # code runs, so only the kernel can count it.
        for spec, prog in self._programs:
            if prog.closed:
                continue
            try:
                missed = prog.info().recursion_misses
            except BPFError:
                continue
            counters = kernel.setdefault(_KIND_NAMES[spec.kind], {})
            counters["prog_missed"] = [counters.get("prog_missed", [0])[0] + missed]
        return kernel

    def _peer_tgids(self) -> tuple[int, ...]:
        filter_map = self._maps.get(programs.MAP_FILTER)
        if filter_map is None or filter_map.closed or self.config.only_tgids is not None:
            return ()
        return tuple(sorted(_U32.unpack(k)[0] for k in filter_map.keys()))

    def program_listing(self) -> str:
        """Every loaded program as text, as an auditor would read it."""
        from kestrel_raw.asm import format_program

        out = []
        for spec, insns in self._listing:
            out.append(f"; {spec.name}: tracepoint {spec.group}:{spec.tracepoint}")
            out.append(format_program(insns))
        return "\n".join(out)

    # -- teardown --------------------------------------------------------------------------------------

    def _close_all(self) -> None:
        # Links first (detach), then the last counts, then programs, readers (munmap) and maps.
        for link in self._links:
            link.close()
        # Detached: no record can arrive any more.  Hand on what the rings still hold, so that stopping
        # loses nothing (the channel must take it now: what it cannot take is counted as dropped).
        for reader in self._readers:
            if not reader.closed:
                self._drain_at_stop(reader)
        if self._final is None and self._maps:
            try:
                self._final = (self._kernel_counters(), self._peer_tgids())
            except BPFError:
                self._final = ({}, ())
        for _spec, prog in self._programs:
            prog.close()
        for reader in self._readers:
            reader.close()
        for m in self._maps.values():
            m.close()
        for ring in self._rings:
            ring.close()
        self._links.clear()
        self._readers.clear()
        self._closed = self._loaded or self._closed

    async def __aenter__(self) -> "KestrelCollector":
        return self

    async def __aexit__(self, *exc) -> None:
        self.stop()


_KIND_NAMES = {k.id: k.label for k in kspec.KINDS.values()}


def _fill_outer(outer: Map, fds: list[int]) -> None:
    """outer[i] = fds[i], in one BPF_MAP_UPDATE_BATCH where the kernel has it for maps of maps: it waits
    for an RCU grace period after each update of such a map, once per batch (~14 ms each here)."""
    keys = b"".join(_U32.pack(i) for i in range(len(fds)))
    values = b"".join(_U32.pack(fd) for fd in fds)
    try:
        if bpf.map_update_batch(outer.fd, keys, values, len(fds)) == len(fds):
            return
    except BPFError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, 524):  # 524: the kernel's ENOTSUPP
            raise
    for i, fd in enumerate(fds):
        outer.update(_U32.pack(i), _U32.pack(fd))


def _u64(v) -> int:
    return int.from_bytes(v, "little") if isinstance(v, (bytes, bytearray)) else int(v)


def _write_listings(path: str, listing) -> None:
    """Write each program's disassembly to ``path`` (a directory) for audit."""
    from kestrel_raw.asm import format_program

    for spec, insns in listing:
        with open(os.path.join(path, f"{spec.name}.txt"), "w") as f:
            f.write(f"; {spec.name}: tracepoint {spec.group}:{spec.tracepoint}\n")
            f.write(format_program(insns) + "\n")


# -- other collectors ----------------------------------------------------------------------------------------

def _start_ticks(tgid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot): with the pid, names one process."""
    try:
        with open(f"/proc/{tgid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: count from the last ')'.
    fields = text[text.rfind(b")") + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _bpf_fds(pid: int) -> tuple[list[int], list[int]]:
    """The fds of ``pid`` that are BPF maps and BPF programs."""
    maps, progs = [], []
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return maps, progs
    for name in names:
        try:
            target = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue
        if target == "anon_inode:bpf-map":
            maps.append(int(name))
        elif target == "anon_inode:bpf-prog":
            progs.append(int(name))
    return maps, progs


def _peer_filter(pid: int) -> int | None:
    """A duplicate of the kr_filter map fd of ``pid`` when ``pid`` is a collector, else None.

    A collector holds a hash map named kr_filter (u32 -> u64) and a tracepoint program named kr_*; making
    either needs CAP_BPF, so an unprivileged process cannot be taken for one.
    """
    maps, progs = _bpf_fds(pid)
    if not maps or not progs:
        return None
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    found = None
    try:
        is_collector = False
        for fd in progs:
            dup = _dup_from(pidfd, fd)
            if dup is None:
                continue
            try:
                info = bpf.prog_info(dup)
                if info.type == BPF_PROG_TYPE_TRACEPOINT and info.name.startswith("kr_"):
                    is_collector = True
                    break
            except BPFError:
                pass
            finally:
                os.close(dup)
        if not is_collector:
            return None
        for fd in maps:
            dup = _dup_from(pidfd, fd)
            if dup is None:
                continue
            try:
                info = bpf.map_info(dup)
            except BPFError:
                os.close(dup)
                continue
            if (info.name, info.type, info.key_size, info.value_size) == (FILTER_MAP_NAME, BPF_MAP_TYPE_HASH, 4, 8):
                found = dup
                break
            os.close(dup)
    finally:
        os.close(pidfd)
    return found


def _dup_from(pidfd: int, fd: int) -> int | None:
    try:
        return syscall.pidfd_getfd(pidfd, fd)
    except OSError:
        return None


def _register_with_peers(own_filter: HashMap) -> list[int]:
    """Find the running collectors; each ignores this one, this one ignores each.  Returns their tgids."""
    me = os.getpid()
    my_key, my_start = _U32.pack(me), _start_ticks(me)
    peers = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        fd = _peer_filter(pid)
        if fd is None:
            continue
        try:
            start = _start_ticks(pid)
            if start is None:
                continue
            bpf.map_update_elem(fd, my_key, _U64.pack(my_start or 0))
            own_filter[_U32.pack(pid)] = _U64.pack(start)
            peers.append(pid)
        except BPFError:
            pass  # its filter is full or it is going away: it will report this collector
        finally:
            os.close(fd)
    return peers
