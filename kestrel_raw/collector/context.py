"""The context a collector carries (``config.context``): its process cache, the cgroup paths, the container
name lookups and the connection broker they may need, made and started in the order privileges demand.

    ctx = Context(config, filter_map)      # before attaching: forks the broker (a single-threaded process)
    ctx.seed(btf)                          # after attaching, before the privilege drop
    ctx.start_lookups()                    # after the drop: a worker thread
    ... ctx.enricher is the codec's context provider (kestrel_raw/collector/enrich.py) ...
    ctx.close()

What each step needs: the seed reads every process's /proc entry (another user's exe, cwd and namespaces
need CAP_SYS_PTRACE) and every process's exact start time from a BPF task iterator (CAP_BPF, CAP_PERFMON);
the container runtimes' API sockets are root's, so a collector that drops its privileges asks a broker
forked before (kestrel_raw/context/broker.py) to connect for it.
"""
from __future__ import annotations

import trio

from kestrel_raw.collector.enrich import Enricher, own_hostnames
from kestrel_raw.collector.peers import START, TGID, start_ticks
from kestrel_raw.config import CollectorConfig
from kestrel_raw.context.broker import Broker, start_broker
from kestrel_raw.context.cgroups import CgroupPaths
from kestrel_raw.context.containerinfo import ContainerInfoCache, connect_unix, query_container
from kestrel_raw.context.proctable import ProcessTable, SeedResult, read_seed
from kestrel_raw.errors import BPFError

EXPIRE_INTERVAL = 30.0  # seconds between two clearings of the cgroup texts (containers the runtime did not
#                         know yet are asked again: ContainerInfoCache's retry_after)
CLOSE_WAIT = 0.5  # seconds the container lookup worker gets to finish at stop


class Context:
    def __init__(self, config: CollectorConfig, filter_map=None) -> None:
        self.config = config
        self.table = ProcessTable()
        self.broker: Broker | None = None
        self._helpers: tuple[int, ...] = ()
        if config.drop_privileges and config.container_sockets:
            self.broker = start_broker(config.container_sockets)
            self._helpers = (self.broker.pid,)
            if config.only_tgids is None and filter_map is not None:
                # Its connections are the collector's doing: hidden like another collector's events.
                filter_map[TGID.pack(self.broker.pid)] = START.pack(start_ticks(self.broker.pid) or 0)
        try:
            self.cgroups: CgroupPaths | None = CgroupPaths()
        except (FileNotFoundError, OSError):
            self.cgroups = None  # no cgroup v2 hierarchy: paths and containers are null
        self.names: ContainerInfoCache | None = None
        self.enricher = Enricher(self.table, self.cgroups, None, config.ancestors, own_hostnames())
        self.seeded: SeedResult | None = None

    def seed(self, btf=None) -> None:
        """The process cache from /proc, with exact start times when the task iterator can be loaded."""
        from kestrel_raw.context.tasks import read_task_starts

        try:
            starts = read_task_starts(btf)
        except (BPFError, OSError):
            starts = None  # keys estimated from /proc's ticks: they will not match the events' (said in stats)
        self.seeded = read_seed(starts=starts)
        self.table.seed(self.seeded)
        if self.cgroups is not None:
            self.cgroups.refresh()

    def start_lookups(self) -> None:
        """The container name lookups' worker thread."""
        sockets = self.config.container_sockets
        if not sockets:
            return
        connect = self.broker.connect if self.broker is not None else connect_unix

        def lookup(path: str, container_id: str, timeout: float):
            return query_container(path, container_id, timeout, connect)

        self.names = ContainerInfoCache(sockets, lookup=lookup).start()
        self.enricher.names = self.names

    async def housekeeping(self) -> None:
        while True:
            await trio.sleep(EXPIRE_INTERVAL)
            self.enricher.expire()

    def helper_tgids(self) -> tuple[int, ...]:
        """The processes the context made (the broker): not other collectors, though the filter holds them."""
        return self._helpers

    def stats(self) -> dict:
        return {
            "processes": self.table.stats(),
            "unknown_process_events": self.enricher.unknown,
            "seeded": None if self.seeded is None else len(self.seeded.processes),
            "seed_exact": None if self.seeded is None else self.seeded.exact,
            "containers": None if self.names is None else self.names.stats(),
        }

    def close(self) -> None:
        if self.names is not None:
            self.names.close(CLOSE_WAIT)
            self.names = None
        if self.broker is not None:
            self.broker.close()
            self.broker = None


__all__ = ["Context"]
