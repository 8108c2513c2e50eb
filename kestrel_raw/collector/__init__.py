"""KestrelCollector: loads the programs, attaches them, and runs trio pollers over the ring buffers.

    collector = KestrelCollector(send_channel, CollectorConfig(event_types=["exec", "open"]))
    collector.load()                      # maps created, programs verified; nothing attached yet
    async with trio.open_nursery() as nursery:
        await nursery.start(collector.start)   # attached; events flow into send_channel
        ...
        collector.stop()                  # detaches everything and closes every fd; start() returns

The events go into a trio memory channel, or into an EventBus (kestrel_raw/sinks/bus.py) that fans them out
to several subscribers: ``KestrelCollector(bus, config)``.

The class holds the collector's state and its life cycle (load, start, stop); each job is a module here:

    load.py       the maps, the kernel's BTF, building and loading the programs
    attach.py     attaching, and the check after attaching (with selfcheck.py: the provocations)
    poll.py       the pollers (one task per ring, or one spinning task), their warm-up, the drain at stop
    deliver.py    records to Kestrel Events or JSON lines, into a channel or an EventBus, per queue_policy
    peers.py      recognising the other collectors, registering with them, pruning them
    stats.py      the counters and the kernel's counters, CollectorStats

Context (``config.context``, kestrel_raw/collector/enrich.py): once attached, the collector seeds its process
cache from /proc (with every process's exact start time from a BPF task iterator, so that the keys match the
events'), then keeps it current from the exec, fork, exit and internal proc records, and adds to every event
what it knows of its process, cgroup and container.  ``status`` is the event it emits once at start with
the host's identity (``host_identity()``), as soon as it is known: off a cloud at once, on one after the
metadata service answered or ``host.DEFAULT_DEADLINE`` passed; it never delays attaching.

Privileges: with ``drop_privileges`` the collector gives up every capability and root's uid once its
programs are attached and its rings mapped (kestrel_raw/kernel/caps.py), keeping CAP_BPF only on kernels that
refuse map lookups to a process without it.  What the context needs privilege for is done before: the seed
(other users' /proc/PID/exe, cwd and ns need CAP_SYS_PTRACE; the task iterator CAP_BPF), and the container
runtimes' API sockets, root's, are reached through a connection broker forked before attaching
(kestrel_raw/context/broker.py), which keeps root to connect to them and nothing else.  The threads (the
container name lookups, a cloud lookup) start after the drop, which needs a single-threaded process.
"""
from __future__ import annotations

import os
import time

import trio

from kestrel_raw import programs
from kestrel_raw.collector.attach import attach_all, check_attached
from kestrel_raw.collector import context as ctxsetup
from kestrel_raw.collector.deliver import Delivery
from kestrel_raw.collector.load import create_maps, fill_only, listing_text, load_btf, load_programs, write_listings
from kestrel_raw.collector.peers import TGID, peer_tgids, prune_peers, register_with_peers
from kestrel_raw.collector.poll import BATCH_RECORDS, drain_at_stop, poll_busy, poll_ring
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

__all__ = ["KestrelCollector", "CollectorStats", "BATCH_RECORDS", "status_event"]

STATUS_POLL = 0.05  # seconds between looks at an unfinished host identity lookup


def status_event(ident: HostIdentity, ts_mono: int, wall_offset: int):
    """The status event (spec.STATUS) of ``ident``, stamped ``ts_mono`` (CLOCK_MONOTONIC ns)."""
    j = ident.to_json()
    return CODEC["event_status"](j["hostname"], j["machine_id"], j["boot_id"], j["kernel"], j["arch"], j["cloud"],
                                 ts_mono, ts_mono + wall_offset)


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

    # -- load ----------------------------------------------------------------------------------------

    def load(self) -> None:
        """Create the maps and load (verify) every program.  Raises SetupError / BPFError on failure."""
        if self._loaded:
            return
        cfg = self.config
        specs = programs.specs(self._kinds())
        try:
            # Maps first, and registration with the other collectors, so that they stop reporting this
            # one as early as possible.
            create_maps(cfg, len(specs), self._maps, self._rings)
            if cfg.only_tgids is None:
                register_with_peers(self._maps[programs.MAP_FILTER])
            else:
                fill_only(self._maps[programs.MAP_FILTER], cfg.only_tgids)
            # The BTF is read once (it may come from a pipe): the process cache's seed needs it again.
            self._btf = load_btf(cfg.btf_path)
            load_programs(cfg, specs, self._maps, self._programs, self._listing, self._btf)
            if cfg.program_path is not None:
                write_listings(cfg.program_path, self._listing)
        except BaseException:
            self._close_all()
            raise
        self._loaded = True

    def _kinds(self) -> list[int]:
        """The record kinds whose programs are loaded: the events asked for, and with context what keeps the
        process cache current (whose events are read but delivered only when asked for)."""
        kinds = {int(t) for t in self.config.event_types}
        if self.config.context:
            kinds |= set(programs.CONTEXT_KINDS)
        return sorted(kinds)

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
                keep = self._capabilities_to_keep() if cfg.drop_privileges else 0
                if cfg.context:
                    # The broker (a fork) is made while the process has one thread, before anything is
                    # attached: its start is not an event.
                    self._context = ctxsetup.Context(cfg, self._maps[programs.MAP_FILTER])
                attach_all(self._programs, self._links)
                await check_attached(self._programs, self._links, self._maps[programs.MAP_SELF_RUNS],
                                     self.reattached)
                self._readers = [RingBufReader(ring, cfg.buffer_size) for ring in self._rings]
                self._delivery.wall_offset = time.time_ns() - time.monotonic_ns()
                if cfg.only_tgids is None:
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
                if cfg.status and cfg.only_tgids is None:
                    self._host = start_host_identity()
                async with trio.open_nursery() as nursery:
                    if self._host is not None:
                        if self._host.done:  # off a cloud: the first event
                            await self._emit_status()
                        else:
                            nursery.start_soon(self._emit_status)
                    if self._context is not None:
                        nursery.start_soon(self._context.housekeeping)
                    if cfg.latency == "low":
                        nursery.start_soon(poll_busy, self._readers, self._delivery)
                    else:
                        for reader in self._readers:
                            nursery.start_soon(poll_ring, reader, self._delivery, cfg)
                    if cfg.only_tgids is None:
                        nursery.start_soon(prune_peers, self._maps[programs.MAP_FILTER], cfg.peer_interval)
                    task_status.started()
        finally:
            self._close_all()

    async def _emit_status(self) -> None:
        """The status event, once the host's identity is known (a cloud's metadata service answers within
        its deadline, or the identity comes without ``cloud``)."""
        while not self._host.done:
            await trio.sleep(STATUS_POLL)
        ident = self._host.result(0)
        if ident is None:
            return
        event = status_event(ident, time.monotonic_ns(), self._delivery.wall_offset)
        await self._delivery.deliver_event(event)

    def host_identity(self, timeout: float = 0) -> HostIdentity | None:
        """The host's identity the status event carries (hostname, machine id, boot id, kernel, arch, cloud),
        once known (waiting at most ``timeout`` seconds); None before start() or when status is off."""
        return None if self._host is None else self._host.result(timeout)

    def context_stats(self) -> dict | None:
        """The process cache's and the container lookups' counters (None without context)."""
        return None if self._context is None else self._context.stats()

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

    def program_listing(self) -> str:
        """Every loaded program as text, as an auditor would read it."""
        return "\n".join(listing_text(spec, insns) for spec, insns in self._listing)

    # -- teardown --------------------------------------------------------------------------------------

    def _close_all(self) -> None:
        # Links first (detach), then the last counts, then programs, readers (munmap) and maps.
        for link in self._links.values():
            link.close()
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
        self._links.clear()
        self._readers.clear()
        self._closed = self._loaded or self._closed

    async def __aenter__(self) -> "KestrelCollector":
        return self

    async def __aexit__(self, *exc) -> None:
        self.stop()
