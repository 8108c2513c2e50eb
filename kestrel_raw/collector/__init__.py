"""KestrelCollector: loads the programs, attaches them, and runs trio pollers over the ring buffers.

    collector = KestrelCollector(send_channel, CollectorConfig(event_types=["exec", "open"]))
    collector.load()                      # maps created, programs verified; nothing attached yet
    async with trio.open_nursery() as nursery:
        await nursery.start(collector.start)   # attached; events flow into send_channel
        ...
        collector.stop()                  # detaches everything and closes every fd; start() returns

The events go into a trio memory channel, or into an EventBus (kestrel_raw/sinks/bus.py) that fans them out
to several subscribers: ``KestrelCollector(bus, config)``.  With ``config.program_path`` the collector also
loads that BPF object, attaches its programs and reads its ring buffers (objects.py): its records come as
``ObjectRecord`` values; with no ``event_types`` the object is all it runs.

The class holds the collector's state and its life cycle (load, start, stop); each job is a module here:

    load.py       the maps, the kernel's BTF, building and loading the programs
    attach.py     attaching, and the check after attaching (with selfcheck.py: the provocations)
    poll.py       the pollers (one task per ring, or one spinning task), their warm-up, the drain at stop
    deliver.py    records to Kestrel Events or JSON lines, into a channel or an EventBus, per queue_policy
    peers.py      recognising the other collectors, registering with them, pruning them
    objects.py    the user's BPF object (program_path): loading, its rings, its records
    stats.py      the counters and the kernel's counters, CollectorStats
    health.py     loss and health in the stream: the loss events, the status event's counters

Context (``config.context``, kestrel_raw/collector/enrich.py): once attached, the collector seeds its process
cache from /proc (with every process's exact start time from a BPF task iterator, so that the keys match the
events'), then keeps it current from the exec, fork, exit and internal proc records, and adds to every event
what it knows of its process, cgroup and container.  ``status`` is the event it emits at start with
the host's identity (``host_identity()``), as soon as it is known: off a cloud at once, on one after the
metadata service answered or ``host.DEFAULT_DEADLINE`` passed; it never delays attaching.  It comes again
every ``status_interval`` seconds with the counters so far, and a ``loss`` event follows every loss within
a second (health.py).

Privileges: with ``drop_privileges`` the collector gives up every capability and root's uid once its
programs are attached and its rings mapped (kestrel_raw/kernel/caps.py), keeping CAP_BPF only on kernels that
refuse map lookups to a process without it.  What the context needs privilege for is done before: the seed
(other users' /proc/PID/exe, cwd and ns need CAP_SYS_PTRACE; the task iterator CAP_BPF), and the container
runtimes' API sockets, root's, are reached through a connection broker forked before attaching
(kestrel_raw/context/broker.py), which keeps root to connect to them and nothing else.  The threads (the
container name lookups, a cloud lookup) start after the drop, which needs a single-threaded process.
"""
from __future__ import annotations

import time

import trio

from kestrel_raw import programs
from kestrel_raw.collector import selfcheck
from kestrel_raw.collector.attach import attach_all, check_attached
from kestrel_raw.collector import context as ctxsetup
from kestrel_raw.collector.deliver import Delivery
from kestrel_raw.collector.filterset import FilterSet
from kestrel_raw.collector.health import LOSS_INTERVAL, REASON_INTERVAL, REASON_START, LossWatch, loss_event
from kestrel_raw.collector.load import (
    build_programs, create_maps, create_probe_maps, fill_only, listing_text, load_btf, load_programs,
    write_listings,
)
from kestrel_raw.collector.objects import (
    ObjectDelivery, ObjectRecord, load_object, object_poll_config, object_readers,
)
from kestrel_raw.collector.peers import START, TGID, peer_tgids, prune_peers, register_with_peers, start_ticks
from kestrel_raw.collector.poll import BATCH_RECORDS, Stopping, drain_at_stop, poll_busy, poll_ring
from kestrel_raw.collector.shellcheck import ShellCheck
from kestrel_raw.collector.stats import CollectorStats, Counts, kernel_counters, snapshot
from kestrel_raw.btf import BTF
from kestrel_raw.codec.compiled import CODEC
from kestrel_raw.config import CollectorConfig
from kestrel_raw.context.host import HostIdentity, start_host_identity
from kestrel_raw.errors import BPFError
from kestrel_raw.kernel import caps
from kestrel_raw.kernel.prog import Program
from kestrel_raw.maps import Map, ProgArrayMap, RingBuf, RingBufReader
from kestrel_raw.sinks.bus import EventBus

__all__ = ["KestrelCollector", "CollectorStats", "ObjectRecord", "BATCH_RECORDS", "loaded_digests", "status_event",
           "loss_event"]

STATUS_POLL = 0.05  # seconds between looks at an unfinished host identity lookup


def status_event(ident: HostIdentity, ts_mono: int, wall_offset: int, loaded: list[dict] | None = None,
                 reason: str = REASON_START, filters: dict | None = None, counters: dict | None = None):
    """The status event (spec.STATUS) of ``ident``, stamped ``ts_mono`` (CLOCK_MONOTONIC ns); ``loaded``: the
    programs loaded with their digests (``loaded_digests``); ``reason``: "start", "interval" or
    "filters_changed"; ``filters``: the filters in force (``Filters.to_json()``); ``counters``:
    ``CollectorStats.counters()``."""
    j = ident.to_json()
    return CODEC["event_status"](j["hostname"], j["machine_id"], j["boot_id"], j["kernel"], j["arch"], j["cloud"],
                                 loaded or [], reason, filters or {}, counters if counters is not None else {},
                                 ts_mono, ts_mono + wall_offset)


def loaded_digests(listing: list, linked: dict | None = None) -> list[dict]:
    """``{"name", "sha256", "tag"}`` of each built-in program (``listing``: (spec, instructions)) and of each
    program of the user's object (``linked``: name -> LinkedProgram), in load order."""
    from kestrel_raw.asm import program_digest

    out = [{"name": spec.name, **program_digest(insns).to_json()} for spec, insns in listing]
    for name, p in (linked or {}).items():
        out.append({"name": name, **program_digest(p.insns).to_json()})
    return out


class KestrelCollector:
    def __init__(self, event_tx: trio.MemorySendChannel | EventBus, config: CollectorConfig | None = None) -> None:
        self.config = config or CollectorConfig()
        self._maps: dict[str, Map] = {}
        self._rings: list[RingBuf] = []
        self._programs: list[tuple[programs.ProgramSpec, Program]] = []
        self._listing: list[tuple[programs.ProgramSpec, list]] = []
        self._links: dict = {}  # index in self._programs -> its attachment
        self._readers: list[RingBufReader] = []
        self._cancel: trio.CancelScope | None = None
        self._stopping = Stopping()  # set by stop(): the pollers drain to the end and return
        self._loaded = False
        self._closed = False
        self._counts = Counts()
        self._delivery = Delivery(event_tx, self.config, self._counts)
        self._context: ctxsetup.Context | None = None  # the process cache and what serves it, once started
        self._btf: BTF | None = None  # the kernel's BTF, from load() until the seed
        self._host = None  # the host identity lookup (context/host.py), once started
        self.privileges: caps.Privileges | None = None  # what the process holds after start() dropped
        # Tracepoints whose attachment did not fire when provoked and was made again (selfcheck.py).
        self.reattached: list[str] = []
        self._final: tuple[dict, tuple[int, ...]] | None = None  # stats() of the maps, taken as they close
        self._event_tx = event_tx
        self._object = None          # the LoadedObject of config.program_path (objects.py)
        self._object_readers: list[tuple[RingBufReader, ObjectDelivery]] = []
        self._shell_check: ShellCheck | None = None  # the bash of shell_command's check (shellcheck.py)
        self._filterset = FilterSet(self.config.filters, self.config.event_types)  # the filters in force
        self._background: trio.Nursery | None = None  # start()'s background tasks, while running
        self._loss: LossWatch | None = None  # what the loss events reported, once started (health.py)
        self._loss_lock: trio.Lock | None = None

    # -- load ----------------------------------------------------------------------------------------

    def load(self) -> None:
        """Create the maps and load (verify) every program.  Raises SetupError / BPFError on failure."""
        if self._loaded:
            return
        cfg = self.config
        if not self._filterset.filters.empty and self._filterset.host is None:
            # ConfigError before anything is made: an --exe that is gone, a cgroup or container not found.
            self._filterset.host = self._filterset.prepare(self._filterset.filters)
        specs = programs.config_specs(cfg)
        # The BTF is read once (it may come from a pipe): the process cache's seed and the user's object
        # need it again.
        self._btf = self._load_btf() if specs or cfg.program_path is not None or cfg.asm_object is not None \
            else None
        # Built first (no kernel object made): a pin file refuses a program before anything is loaded.
        built = build_programs(cfg, specs, btf=self._btf) if specs else []
        if cfg.pin is not None:
            from kestrel_raw.asm import program_digest

            digests = {spec.name: program_digest(insns).sha256 for spec, insns in built}
            if cfg.program_path is not None:
                # The object's programs linked as load_object links them, and pinned by their kernel names.
                from kestrel_raw.audit.objects import pin_digests
                from kestrel_raw.loader import object_programs

                digests |= pin_digests(object_programs(cfg.program_path, self._load_btf()))
            cfg.pin.check(digests)
        try:
            if specs:
                self._load_builtin(specs, built)
            if cfg.program_path is not None or cfg.asm_object is not None:
                self._load_object()
        except BaseException:
            self._close_all()
            raise
        self._loaded = True

    def _load_builtin(self, specs: list, built: list) -> None:
        cfg = self.config
        # Maps first, and registration with the other collectors, so that they stop reporting this
        # one as early as possible.
        create_maps(cfg, len(specs), self._maps, self._rings)
        create_probe_maps(specs, self._maps)
        if cfg.only_tgids is None:
            register_with_peers(self._maps[programs.MAP_FILTER])
        else:
            fill_only(self._maps[programs.MAP_FILTER], cfg.only_tgids)
        if any(s.probe is not None and s.probe.symbol == "readline" for s in specs):
            self._start_shell_check()
        load_programs(cfg, built, self._maps, self._programs, self._listing, self._btf)
        if cfg.dump_dir is not None:
            write_listings(cfg.dump_dir, self._listing)

    def _start_shell_check(self) -> None:
        """The bash that shell_command's check makes read lines, known to the programs before they are built
        (shellcheck.py)."""
        from kestrel_raw.probes.targets import bash_binary
        from kestrel_raw.programs.shell import MAP_CHECK

        check = self._shell_check = ShellCheck(bash_binary())
        self._maps[MAP_CHECK][0] = TGID.pack(check.pid)
        if self.config.only_tgids is None:
            self._maps[programs.MAP_FILTER][TGID.pack(check.pid)] = START.pack(start_ticks(check.pid) or 0)

    def _end_shell_check(self) -> None:
        """Kill the check's bash and forget its pid before reaping it (its pid may then be reused)."""
        check, self._shell_check = self._shell_check, None
        if check is None:
            return
        from kestrel_raw.programs.shell import MAP_CHECK

        check.kill()
        try:
            if MAP_CHECK in self._maps and not self._maps[MAP_CHECK].closed:
                self._maps[MAP_CHECK][0] = TGID.pack(0)
            filter_map = self._maps.get(programs.MAP_FILTER)
            if self.config.only_tgids is None and filter_map is not None and not filter_map.closed:
                filter_map.delete(TGID.pack(check.pid))
        finally:
            check.reap()

    def _load_object(self) -> None:
        """The user's BPF object (program_path) or assembled programs (asm_object): maps created, programs
        verified, nothing attached."""
        self._object = load_object(self.config, self._btf if self._btf is not None else self._load_btf())

    def _start_object(self) -> None:
        """Attach the object's programs and open a reader per ring of it (objects.py)."""
        obj = self._object
        obj.attach()
        self._object_readers = [
            (reader, ObjectDelivery(self._event_tx, self.config, self._counts, obj.name, ring))
            for ring, reader in object_readers(obj)]

    @property
    def bpf_object(self):
        """The LoadedObject of config.program_path (its maps, programs, links and notes), or None."""
        return self._object

    def _load_btf(self) -> BTF:
        """The kernel BTF the programs take their layouts from (bench/staircase.py builds with it too)."""
        return load_btf(self.config.btf_path)

    # -- run -----------------------------------------------------------------------------------------

    async def start(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Attach, then poll every ring until stop(); reports started once every program is attached."""
        if self._closed:
            raise RuntimeError("this collector was stopped; make a new one")
        self.load()
        cfg = self.config
        try:
            with trio.CancelScope() as self._cancel:
                # What to keep once attached is learnt before attaching: the probe forks a child, whose
                # exit the programs would otherwise report as an event of someone else.
                builtin = bool(self._programs)
                keep = self._capabilities_to_keep() if cfg.drop_privileges and builtin else 0
                if cfg.context and builtin:
                    # The broker (a fork) is made while the process has one thread, before anything is
                    # attached: its start is not an event.
                    self._context = ctxsetup.Context(cfg, self._maps[programs.MAP_FILTER])
                if builtin:
                    # Before attaching: no event escapes the filters.
                    self._filterset.install(self._maps)
                    self._note_cache_only()
                attach_all(self._programs, self._links)
                if builtin:
                    shell = self._shell_check
                    try:
                        await check_attached(self._programs, self._links, self._maps[programs.MAP_SELF_RUNS],
                                             self.reattached,
                                             {key: shell.provoke for key in selfcheck.NEEDS_COLLECTOR}
                                             if shell is not None else None)
                    finally:
                        self._end_shell_check()
                if self._object is not None:
                    self._start_object()
                self._readers = [RingBufReader(ring, cfg.buffer_size) for ring in self._rings]
                self._delivery.wall_offset = time.time_ns() - time.monotonic_ns()
                if cfg.only_tgids is None and builtin:
                    # Again, now that this collector's programs are loaded: a collector that started
                    # at the same moment had none when load() looked, so it was not recognised then.
                    register_with_peers(self._maps[programs.MAP_FILTER])
                if self._context is not None:
                    # Before the drop: other users' /proc entries need CAP_SYS_PTRACE, the iterator CAP_BPF.
                    self._context.seed(self._btf)
                    self._delivery.ctx = self._context.enricher
                self._btf = None  # ~10 MB of parsed types, needed no more
                if cfg.drop_privileges:
                    self.privileges = caps.drop_privileges(keep, cfg.drop_uid, cfg.drop_gid)
                # Threads only now: the drop refuses a process with more than one.
                if self._context is not None:
                    self._context.start_lookups()
                if cfg.status and cfg.only_tgids is None and builtin:
                    self._host = start_host_identity()
                async with trio.open_nursery() as background:
                    self._background = background
                    if builtin:
                        background.start_soon(self._filterset.rescan_forever)
                    if self._host is not None:
                        # Off a cloud the status event is the first event; on one it comes once the
                        # metadata service answered.
                        started = self._host.done and await self._emit_status(REASON_START)
                        background.start_soon(self._status_task, started)
                    if builtin:  # (a BPF object alone makes no Kestrel events: its losses are in stats())
                        self._loss = LossWatch()
                        self._loss_lock = trio.Lock()
                        background.start_soon(self._watch_loss)
                    if self._context is not None:
                        background.start_soon(self._context.housekeeping)
                    if cfg.only_tgids is None and builtin:
                        background.start_soon(prune_peers, self._maps[programs.MAP_FILTER], cfg.peer_interval)
                    # The pollers return by themselves once stop() has detached the programs and they
                    # have drained their rings; the background tasks are cancelled then.
                    async with trio.open_nursery() as pollers:
                        if cfg.latency == "low":
                            pollers.start_soon(poll_busy, self._readers, self._delivery, self._stopping)
                        else:
                            for reader in self._readers:
                                pollers.start_soon(poll_ring, reader, self._delivery, cfg, self._stopping)
                        object_config = object_poll_config(cfg)
                        for reader, delivery in self._object_readers:
                            pollers.start_soon(poll_ring, reader, delivery, object_config, self._stopping)
                        task_status.started()
                    # Stopped, the rings drained: what was lost since the last loss event, the stop's own
                    # losses too (waiting for the consumer within stop_timeout).
                    if self._loss is not None:
                        await self._report_loss()
                    background.cancel_scope.cancel()
        finally:
            self._background = None
            self._close_all()

    async def _emit_status(self, reason: str) -> bool:
        """A status event, once the host's identity is known (a cloud's metadata service answers within
        its deadline, or the identity comes without ``cloud``); False when there is none to give."""
        while not self._host.done:
            await trio.sleep(STATUS_POLL)
        ident = self._host.result(0)
        if ident is None:
            return False
        loaded = [{"name": name, **d} for name, d in self.program_digests().items()]
        event = status_event(ident, time.monotonic_ns(), self._delivery.wall_offset, loaded, reason,
                             self._filterset.filters.to_json(), self.stats().counters())
        await self._delivery.deliver_event(event)
        return True

    async def _status_task(self, started: bool) -> None:
        """The status event at start (unless ``started``: already emitted), then one every
        ``status_interval`` seconds, on a fixed schedule (a slow delivery does not shift the next)."""
        if not started and not await self._emit_status(REASON_START):
            return
        interval = self.config.status_interval
        if not interval:
            return
        due = trio.current_time()
        while True:
            due += interval
            await trio.sleep_until(due)
            await self._emit_status(REASON_INTERVAL)

    def _lost(self) -> dict[str, dict[str, int]]:
        """Every event lost so far, by type and cause (without the peers' lookup ``stats()`` makes)."""
        return snapshot(self._counts, kernel_counters(self._maps.get(programs.MAP_STATS), self._programs),
                        ()).lost

    async def _watch_loss(self) -> None:
        """Every LOSS_INTERVAL seconds: a loss event with what was lost since the last one, if anything.  On
        a fixed schedule: the time a loss event waits for room in the queue does not delay the next look
        (a look that comes late is made at once)."""
        due = trio.current_time()
        while True:
            due = max(due + LOSS_INTERVAL, trio.current_time())
            await trio.sleep_until(due)
            await self._report_loss()

    async def _report_loss(self) -> None:
        """A loss event with what was lost and not yet reported, if anything.  It waits for room whatever the
        queue policy: in this task of its own, so that under "drop" the pollers go on (and the channel hands
        a waiting sender the next free slot before any later send_nowait)."""
        async with self._loss_lock:  # the watch's and the stop's: one at a time, or both would report it
            counts = self._loss.pending(self._lost())
            if counts and await self._delivery.offer_event(
                    loss_event(counts, time.monotonic_ns(), self._delivery.wall_offset), wait=True):
                self._loss.reported(counts)

    # -- filters -------------------------------------------------------------------------------------

    def _note_cache_only(self) -> None:
        """Tell the delivery when the programs may now write records for the process cache alone (context
        kinds a filter drops, with context on: programs/filtermaps.py)."""
        if self.config.context and not self._filterset.filters.empty:
            self._delivery.cache_only_records = True

    @property
    def filters(self):
        """The filters in force (a kestrel_raw.filters.Filters)."""
        return self._filterset.filters

    def set_filters(self, filters) -> None:
        """Make ``filters`` (a kestrel_raw.filters.Filters) the ones in force: checked (ConfigError, and the
        filters in force are kept), compiled, written into the filter set the programs are not reading, then
        flipped to; no program is reloaded.  While running, a ``status`` event with reason
        "filters_changed" says so.  Before start(), they replace config.filters for the start."""
        from kestrel_raw.filters import Filters

        if not isinstance(filters, Filters):
            raise TypeError(f"set_filters takes a kestrel_raw.filters.Filters, got {filters!r}")
        host = self._filterset.prepare(filters)
        if self._cancel is None:
            self._filterset.filters, self._filterset.host = filters, host
            return
        if self._closed or self._stopping.is_set:
            raise RuntimeError("this collector was stopped; its filters cannot change")
        self._filterset.set(filters, host)
        self._note_cache_only()
        if self._host is not None and self._background is not None:
            self._background.start_soon(self._emit_status, "filters_changed")

    def host_identity(self, timeout: float = 0) -> HostIdentity | None:
        """The host's identity the status event carries (hostname, machine id, boot id, kernel, arch, cloud),
        once known (waiting at most ``timeout`` seconds); None before start() or when status is off."""
        return None if self._host is None else self._host.result(timeout)

    def context_stats(self) -> dict | None:
        """The process cache's and the container lookups' counters (None without context)."""
        return None if self._context is None else self._context.stats()

    def stop(self) -> None:
        """Detach every program, hand on what the rings still hold, close every fd; idempotent, callable
        from any task.

        The programs are detached at once; the pollers then drain their rings to the end, waiting for the
        consumer as usual, for up to ``config.stop_timeout`` seconds; then whatever is left is handed on
        without waiting (what the consumer cannot take is counted as dropped) and every fd is closed, as
        ``start()`` returns."""
        if self._cancel is None:
            self._close_all()
            return
        if self._stopping.is_set:
            return
        for link in self._links.values():
            link.close()
        if self._object is not None:
            for link in self._object.links.values():
                link.close()
        self._stopping.set()
        self._cancel.deadline = min(self._cancel.deadline, trio.current_time() + self.config.stop_timeout)

    def _capabilities_to_keep(self) -> int:
        """The capability mask to keep once attached: none, or CAP_BPF alone where this kernel needs it."""
        filter_map = self._maps[programs.MAP_FILTER]
        stats_map = self._maps[programs.MAP_STATS]

        def map_ops() -> None:
            stats_map[0]
            filter_map.get(TGID.pack(0))

        # Kernels before 6.5 refuse every bpf(2) command to a process without CAP_BPF when
        # kernel.unprivileged_bpf_disabled is set, even on fds it holds: keep CAP_BPF alone there, or
        # stats() and the peer pruning would fail.
        return 0 if caps.works_without_privilege(map_ops) else caps.cap_mask(caps.CAP_BPF)

    # -- introspection ---------------------------------------------------------------------------------

    def stats(self) -> CollectorStats:
        """Counts so far; after stop(), the counts as they were when the maps were closed."""
        kernel, peers = self._final if self._final is not None else self._kernel_state()
        return snapshot(self._counts, kernel, peers)

    def _kernel_state(self) -> tuple[dict[str, dict[str, list[int]]], tuple[int, ...]]:
        """The kernel's counters and the tgids of the other collectors, read from the maps."""
        ignoring = self.config.only_tgids is None
        helpers = self._context.helper_tgids() if self._context is not None else ()
        peers = peer_tgids(self._maps.get(programs.MAP_FILTER) if ignoring else None)
        return (kernel_counters(self._maps.get(programs.MAP_STATS), self._programs),
                tuple(t for t in peers if t not in helpers))

    def program_digests(self) -> dict[str, dict[str, str]]:
        """Each loaded program's digests, by name: ``{"kr_exec": {"sha256": ..., "tag": ...}}`` (the SHA-256
        a pin file approves, kestrel_raw/audit/pin.py; the tag the kernel reports, as bpftool shows it), the
        user's object's programs too.  Empty before load()."""
        linked = getattr(self._object, "linked", None) if self._object is not None else None
        return {d.pop("name"): d for d in loaded_digests(self._listing, linked if isinstance(linked, dict) else None)}

    def program_listing(self) -> str:
        """Every loaded program as text, as an auditor would read it."""
        return "\n".join(listing_text(spec, insns) for spec, insns in self._listing)

    # -- teardown --------------------------------------------------------------------------------------

    def _close_all(self) -> None:
        # Links first (detach), then the last counts, then programs, readers (munmap) and maps.
        self._end_shell_check()
        for link in self._links.values():
            link.close()
        if self._object is not None:
            for link in self._object.links.values():
                link.close()
            for reader, delivery in self._object_readers:
                if not reader.closed:
                    drain_at_stop(reader, delivery)
        # Detached: no record can arrive any more.  Hand on what the rings still hold, so that stopping
        # loses nothing (the channel must take it now: what it cannot take is counted as dropped).
        for reader in self._readers:
            if not reader.closed:
                drain_at_stop(reader, self._delivery)
        if self._context is not None:
            self._context.close()
        if self._final is None and self._maps:
            try:
                self._final = self._kernel_state()
            except BPFError:
                self._final = ({}, ())
        if self._loss is not None:
            # A stop cut short (or cancelled from outside): what was lost and not yet reported, the drain's
            # losses too, handed on without waiting.
            kernel = self._final[0] if self._final is not None else {}
            counts = self._loss.pending(snapshot(self._counts, kernel, ()).lost)
            self._loss = None
            if counts:
                self._delivery.deliver_event_now(loss_event(counts, time.monotonic_ns(), self._delivery.wall_offset))
        for m in self._maps.values():
            if isinstance(m, ProgArrayMap) and not m.closed:
                m.clear()  # the tail programs go with the others, not when the map is freed later
        for _spec, prog in self._programs:
            prog.close()
        for reader in self._readers:
            reader.close()
        for m in self._maps.values():
            m.close()
        for ring in self._rings:
            ring.close()
        for reader, _delivery in self._object_readers:
            reader.close()
        self._object_readers = []
        if self._object is not None:
            self._object.close()
        self._links.clear()
        self._readers.clear()
        self._closed = self._loaded or self._closed

    async def __aenter__(self) -> "KestrelCollector":
        return self

    async def __aexit__(self, *exc) -> None:
        self.stop()
