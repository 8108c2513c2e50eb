"""The filters in force in a running collector: compiled (kestrel_raw/filters) and written into the filter
maps by FilterWriter (collector/filtering.py), at start before the programs are attached, on
``set_filters`` (SIGHUP), and again when a cgroup rescan finds the v2 tree changed.

Each write goes to the set the programs are not reading (the first to set 0), then the active set flips
(filtermaps.py): no program is reloaded, and no event sees half of a change.
"""
from __future__ import annotations

from typing import Iterable

import trio

from kestrel_raw.collector.filtering import FilterWriter
from kestrel_raw.errors import SetupError
from kestrel_raw.filters import NO_FILTERS, Filters, Host, compile
from kestrel_raw.filters.lookup import read_host, scan_cgroups
from kestrel_raw.programs import filtermaps
from kestrel_raw.spec import EventType


class FilterSet:
    """``filters`` in force, the ``host`` facts they were compiled with, and the set last written."""

    def __init__(self, filters: Filters | None, event_types: Iterable[EventType], writer=FilterWriter) -> None:
        """``writer``: what writes an image into the maps (``writer(maps).write(image)``)."""
        self.filters = filters or NO_FILTERS
        self._writer_class = writer
        self.event_types = tuple(event_types)
        self.host: Host | None = None
        self.active: int | None = None  # the set last written (None: nothing written yet, set 0 next)
        self._writer = None
        self.rewrites = 0  # images written by the cgroup rescan

    def prepare(self, filters: Filters) -> Host:
        """Check ``filters`` against the collected types and this machine (ConfigError; nothing changes)."""
        filters.check(self.event_types)
        return read_host(filters) if not filters.empty else Host()

    def install(self, maps: dict) -> None:
        """At start, before attaching: write the filters' image (nothing to write when there are none: the
        maps start all zero, which filters nothing)."""
        if filtermaps.MAP_FSET not in maps:
            if not self.filters.empty:
                raise SetupError("filters were given, and the filter maps were not created (no built-in "
                                 "programs to filter: give --events)")
            return
        self._writer = self._writer_class(maps)
        if self.host is None:
            self.host = self.prepare(self.filters)
        if not self.filters.empty:
            self._write()

    def set(self, filters: Filters, host: Host) -> None:
        """Write ``filters`` (checked by ``prepare``, which gave ``host``) and make them the ones in force."""
        if self._writer is None:
            raise SetupError("set_filters on a collector that is not running with filter maps")
        old = self.filters, self.host
        self.filters, self.host = filters, host
        try:
            self._write()
        except BaseException:
            self.filters, self.host = old
            raise

    def _write(self) -> None:
        # The writer says which set it fills next (filtering.py); compiled for it, no key needs rewriting.
        nxt = self._writer.next_set
        image = compile(self.filters, self.event_types, set=nxt, host=self.host)
        self._writer.write(image)
        self.active = nxt

    @property
    def needs_rescan(self) -> bool:
        return self.filters.used("cgroup") or self.filters.used("container")

    def apply_tree(self, tree: tuple) -> bool:
        """A new scan of the cgroup tree: rewrite the image when the tree changed.  True when rewritten."""
        if self._writer is None or not self.needs_rescan or self.host is None or tree == self.host.cgroups:
            return False
        self.host = self.host.with_cgroups(tree)
        self._write()
        self.rewrites += 1
        return True

    async def rescan_forever(self, interval: float = filtermaps.CGROUP_RESCAN_S) -> None:
        """The collector's background task: a cgroup made since the last scan is unknown to the programs
        (its events pass the cgroup and container keys) until the next one, at most ``interval`` later.
        The walk (a stat and a scandir per cgroup) runs on a thread; the write in the event loop, so that it
        never races ``set``."""
        while True:
            await trio.sleep(interval)
            if self._writer is None or not self.needs_rescan or self.host is None:
                continue
            tree = await trio.to_thread.run_sync(scan_cgroups, self.host.mount)
            self.apply_tree(tree)
