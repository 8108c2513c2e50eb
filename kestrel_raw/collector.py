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
"""
from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass, field

import trio

from . import programs, wire
from .attach import attach_tracepoint
from .btf import BTF
from .config import CollectorConfig
from .errors import BTFError, RecordError, SetupError
from .events import normalize
from .maps import HashMap, Map, PerCPUArrayMap, RingBuf, RingBufReader
from .program import Program
from .records import parse_record
from .tracefs import find_tracefs, tracepoint_format
from .uapi import BPF_MAP_TYPE_ARRAY_OF_MAPS

PENDING_ENTRIES = 16384  # syscalls in flight at once across the host (open, connect)
FILTER_ENTRIES = 4096  # tgids in the filter map: other collectors, or the tgids of an only_tgids run
_U32 = struct.Struct("<I")


@dataclass(frozen=True)
class CollectorStats:
    """Counts since load().  Nothing is lost without being counted here."""

    records: int  # records read from the ring buffers
    delivered: dict[str, int]  # events handed on, by type name
    parse_errors: int  # records that could not be parsed (counted and skipped)
    user_dropped: int  # events dropped because the consumer was slow (queue_policy="drop")
    kernel: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # type -> counter -> per CPU

    @property
    def kernel_lost(self) -> int:
        """Events the kernel side could not report (ring buffer full, pending map full)."""
        return sum(
            sum(per_cpu)
            for counters in self.kernel.values()
            for name, per_cpu in counters.items()
            if name in ("ringbuf_full", "pending_full")
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
                f"user_dropped={self.user_dropped} parse_errors={self.parse_errors} kernel_counters[{lost_text}]")


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
        self._delivered = {wire_kind: 0 for wire_kind in wire.KINDS}
        self._wall_offset = 0

    # -- load ----------------------------------------------------------------------------------------

    def load(self) -> None:
        """Create the maps and load (verify) every program.  Raises SetupError / BPFError on failure."""
        if self._loaded:
            return
        cfg = self.config
        kinds = [int(t) for t in cfg.event_types]
        specs = programs.specs(kinds)
        try:
            find_tracefs()
            formats = {s.name: tracepoint_format(s.group, s.tracepoint) for s in specs}
            layout = programs.KernelLayout.from_btf(self._load_btf())
            self._create_maps()
            for spec in specs:
                insns = programs.build(spec, formats[spec.name], layout, self_tgid=os.getpid(),
                                       nrings=cfg.buffers, wakeup_threshold=cfg.wakeup_bytes)
                prog = Program(insns, maps=self._maps, name=spec.name)
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
            return BTF.load(path)
        except FileNotFoundError:
            raise SetupError(f"no kernel BTF at {path}: kestrel-raw takes kernel struct layouts from BTF, "
                             f"so it needs a kernel built with CONFIG_DEBUG_INFO_BTF=y") from None
        except BTFError as e:
            raise SetupError(f"the kernel BTF at {path} cannot be used: {e}") from None

    def _create_maps(self) -> None:
        cfg = self.config
        self._rings = [RingBuf(cfg.buffer_size, name=f"kr_ring{i}") for i in range(cfg.buffers)]
        outer = Map(BPF_MAP_TYPE_ARRAY_OF_MAPS, 4, 4, cfg.buffers, name=programs.MAP_RINGS,
                    inner_map_fd=self._rings[0].fd)
        self._maps[programs.MAP_RINGS] = outer
        for i, ring in enumerate(self._rings):
            outer.update(_U32.pack(i), _U32.pack(ring.fd))
        self._maps[programs.MAP_SCRATCH] = PerCPUArrayMap(programs.SCRATCH_SIZE, 1, name=programs.MAP_SCRATCH)
        self._maps[programs.MAP_STATS] = PerCPUArrayMap(8, programs.STATS_ENTRIES, name=programs.MAP_STATS)
        for name in (programs.MAP_PENDING_OPEN, programs.MAP_PENDING_CONNECT):
            self._maps[name] = HashMap(8, programs.PENDING_VALUE_SIZE, PENDING_ENTRIES, name=name)
        self._maps[programs.MAP_FILTER] = HashMap(4, 8, FILTER_ENTRIES, name=programs.MAP_FILTER)

    # -- run -----------------------------------------------------------------------------------------

    async def start(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Attach, then poll every ring until stop(); reports started once every program is attached."""
        if self._closed:
            raise RuntimeError("this collector was stopped; make a new one")
        self.load()
        try:
            with trio.CancelScope() as self._cancel:
                for spec, prog in self._programs:
                    self._links.append(attach_tracepoint(prog, spec.group, spec.tracepoint))
                self._readers = [RingBufReader(ring, self.config.buffer_size) for ring in self._rings]
                self._wall_offset = time.time_ns() - time.monotonic_ns()
                async with trio.open_nursery() as nursery:
                    for reader in self._readers:
                        nursery.start_soon(self._poll, reader)
                    task_status.started()
        finally:
            self._close_all()

    def stop(self) -> None:
        """Detach every program and close every fd; idempotent, callable from any task."""
        if self._cancel is not None:
            self._cancel.cancel()
        else:
            self._close_all()

    async def _poll(self, reader: RingBufReader) -> None:
        interval = self.config.poll_interval
        block = self.config.queue_policy == "block"
        send_nowait = self._tx.send_nowait
        delivered = self._delivered
        while True:
            if not reader.available():
                with trio.move_on_after(interval):
                    await reader.wait_readable()
            batch = reader.drain()
            self._records += len(batch)
            wall = self._wall_offset
            for raw in batch:
                try:
                    event = normalize(parse_record(raw), wall)
                except RecordError:
                    self._parse_errors += 1
                    continue
                try:
                    send_nowait(event)
                except trio.WouldBlock:
                    if block:
                        await self._tx.send(event)
                    else:
                        self._user_dropped += 1
                        continue
                delivered[event.event_type_id] += 1
            await trio.lowlevel.checkpoint()

    # -- introspection ---------------------------------------------------------------------------------

    def stats(self) -> CollectorStats:
        kernel: dict[str, dict[str, list[int]]] = {}
        stats_map = self._maps.get(programs.MAP_STATS)
        if stats_map is not None and not stats_map.closed:
            for kind in wire.KINDS:
                counters = {}
                for c, name in enumerate(programs.STAT_NAMES):
                    values = stats_map[kind * programs.STATS_PER_KIND + c]
                    counters[name] = [_u64(v) for v in values]
                kernel[_KIND_NAMES[kind]] = counters
        return CollectorStats(
            records=self._records,
            delivered={_KIND_NAMES[k]: v for k, v in self._delivered.items()},
            parse_errors=self._parse_errors,
            user_dropped=self._user_dropped,
            kernel=kernel,
        )

    def program_listing(self) -> str:
        """Every loaded program as text, as an auditor would read it."""
        from .asm import format_program

        out = []
        for spec, insns in self._listing:
            out.append(f"; {spec.name}: tracepoint {spec.group}:{spec.tracepoint}")
            out.append(format_program(insns))
        return "\n".join(out)

    # -- teardown --------------------------------------------------------------------------------------

    def _close_all(self) -> None:
        # Links first (detach), then programs, readers (munmap) and maps.
        for link in self._links:
            link.close()
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


_KIND_NAMES = {wire.KIND_EXEC: "exec", wire.KIND_OPEN: "open", wire.KIND_CONNECT: "connect", wire.KIND_EXIT: "exit"}


def _u64(v) -> int:
    return int.from_bytes(v, "little") if isinstance(v, (bytes, bytearray)) else int(v)


def _write_listings(path: str, listing) -> None:
    """Write each program's disassembly to ``path`` (a directory) for audit."""
    from .asm import format_program

    for spec, insns in listing:
        with open(os.path.join(path, f"{spec.name}.txt"), "w") as f:
            f.write(f"; {spec.name}: tracepoint {spec.group}:{spec.tracepoint}\n")
            f.write(format_program(insns) + "\n")
