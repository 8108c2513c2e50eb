"""The process table: what user space knows of every process, keyed by ``entity_key``.  Pure (no I/O but
``read_seed``, which reads /proc).

Seeded from /proc at start, so that processes started before the collector have their exe, argv, cwd,
ids, start time and parent; then kept current by the fork, exec and exit events, through three calls the
collector makes, in the order it reads the events::

    table = ProcessTable()                               # bounded: DEFAULT_MAX_ENTRIES processes
    seed = read_seed(starts=read_task_starts())          # at start, after attaching (I/O: a thread may run it)
    table.seed(seed)                                     # in the event loop
    table.on_fork(child_key, pid, start_ns=..., parent_key=..., ppid=...)   # fork events (processes, not threads)
    table.on_exec(key, pid, start_ns=..., exe=..., argv=[...], cwd=..., parent_key=..., ppid=..., uid=...)
    event_fields["ancestors"] = table.ancestors(key, n)   # for --ancestors N, before on_exit for an exit event
    table.on_exit(key)                                    # exit events, after the event was enriched

Keys.  ``entity_key(pid, start_ns)`` (kestrel_raw/codec/event.py) with ``start_ns`` the group leader's
``task->start_time`` (CLOCK_MONOTONIC ns), as the kernel events carry it.  /proc only gives the start time
in clock ticks of another clock (see kestrel_raw/context/tasks.py), so exact keys need the start times from
the BPF task iterator (``read_task_starts()``); without them ``read_seed`` estimates the start from /proc
and says so (``SeedResult.exact`` is False): those keys will not match the events' keys.

Lineage.  A process's parent is the one that forked it (its ``parent_key`` at fork, or /proc's ppid for a
seeded process), and stays so when the kernel reparents it to a reaper: ancestors are the creation chain.

Bound and eviction.  The table holds at most ``max_entries`` processes (default 32768; each keeps argv up to
``ARGV_MAX_BYTES`` = 4096 bytes, the exec event's own limit, so the worst case is about 32768 x 4.5 KiB =
150 MiB and the common case a few hundred bytes a process).  A process is removed when its exit event has
been handled (``on_exit``), unless processes it forked are still in the table: then it stays as their
ancestor (marked exited) until the last of them is removed.  When the table is full, adding a process first
evicts the exited process that exited longest ago; when none is kept, the live process least recently used
(added, exec'd, looked up or returned as an ancestor).  Evictions are counted (``stats()``); an evicted
process's descendants keep their ``parent_key`` and their ancestor chain stops there.

Lost and late events.  Events of one process come in order, but a fork event is read from its parent's ring
and the child's own events from the child's ring, so a child's exec or exit can be handled before its fork
event: ``on_exec`` creates the process when unknown, ``on_fork`` of a known process only fills its parent,
and a fork event for a process that already exited (the last ``RECENT_EXITS`` exits are remembered) is
ignored.  The other way round, a parent's exit can be handled before the fork event of a child it made just
before exiting (``sh -c cmd`` run by a process that then exits): so an exited process is kept, marked
exited, until ``exit_grace`` (default ``EXIT_GRACE``) later exits have been handled, whether or not it has
children in the table, and a late fork event still finds its ancestor.  An exit event the kernel lost (ring full) leaves the process in the table until its pid is used
by a newer process (then it is taken as exited: ``implied_exits``) or it is evicted.
"""
from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kestrel_raw.codec.decode import json_value
from kestrel_raw.codec.event import entity_key
from kestrel_raw.context.procfs import PROC, ProcSnapshot, list_pids, read_process

DEFAULT_MAX_ENTRIES = 32768
MEMFD_PREFIX = "/memfd:"    # the path of a memfd's file, as d_path() names it (its name is "memfd:<name>")
ARGV_MAX_BYTES = 4096       # as the exec event: the argument area is cut at 4096 bytes
RECENT_EXITS = 4096         # exited keys remembered, so that a late fork event does not resurrect one
EXIT_GRACE = 1024           # exited processes kept for the late fork events of their children (other rings)


def cap_argv(argv: Iterable[str], limit: int = ARGV_MAX_BYTES) -> tuple[str, ...]:
    """``argv`` cut, as the kernel's argument area is, at ``limit`` bytes (each argument with its NUL)."""
    out, used = [], 0
    for arg in argv:
        size = len(arg.encode("utf-8", "surrogateescape")) + 1
        if used + size > limit:
            break
        out.append(arg)
        used += size
    return tuple(out)


class Process:
    """One process incarnation in the table.  Read it; change it only through the table's methods (and the
    context fields through the collector's context provider, kestrel_raw/collector/enrich.py, which then
    calls ``changed()``)."""

    __slots__ = ("entity_key", "pid", "start_ns", "ppid", "parent_key", "comm", "exe", "argv", "cwd", "uid",
                 "gid", "euid", "egid", "exited", "children", "_summary", "_summary_json",
                 # the context the kernel reported (exec, fork, proc records) or /proc showed at the seed
                 "exe_deleted", "exe_memfd", "pidns", "mntns", "netns", "utsns",
                 "thread_cwd",           # tid -> cwd of a thread with an fs_struct of its own (rare), or None
                 "ctx_text", "ctx_version")  # the context provider's text for it, and what it was made from

    def __init__(self, entity_key: int, pid: int, start_ns: int | None = None, ppid: int | None = None,
                 parent_key: int | None = None, comm: str | None = None, exe: str | None = None,
                 argv: Iterable[str] = (), cwd: str | None = None, uid: int | None = None,
                 gid: int | None = None, euid: int | None = None, egid: int | None = None,
                 exe_deleted: bool | None = None, exe_memfd: bool | None = None, pidns: int | None = None,
                 mntns: int | None = None, netns: int | None = None, utsns: int | None = None) -> None:
        self.entity_key = entity_key
        self.pid = pid
        self.start_ns = start_ns
        self.ppid = ppid
        self.parent_key = parent_key
        self.comm = comm
        self.exe = exe
        self.argv = cap_argv(argv)
        self.cwd = cwd
        self.uid, self.gid, self.euid, self.egid = uid, gid, euid, egid
        self.exe_deleted, self.exe_memfd = exe_deleted, exe_memfd
        self.pidns, self.mntns, self.netns, self.utsns = pidns, mntns, netns, utsns
        self.thread_cwd: dict[int, str] | None = None
        self.exited = False
        self.children = 0          # processes in the table whose parent_key is this one
        self._summary: dict | None = None
        self._summary_json: str | None = None
        self.ctx_text: str | None = None
        self.ctx_version = -1

    def summary(self) -> dict:
        """``{"pid", "entity_key", "exe", "argv"}``: the ancestor entry (shared: do not modify it)."""
        if self._summary is None:
            self._summary = {"pid": self.pid, "entity_key": self.entity_key, "exe": self.exe,
                             "argv": list(self.argv)}
        return self._summary

    def summary_json(self) -> str:
        """``summary()`` as compact JSON text (kept until the process changes)."""
        if self._summary_json is None:
            self._summary_json = json_value(self.summary())
        return self._summary_json

    def changed(self) -> None:
        """Forget what was made from the process's fields (its ancestor entry, the provider's text)."""
        self._summary = self._summary_json = self.ctx_text = None

    def inherit(self, parent: "Process") -> None:
        """What a forked child has of its parent until it execs or changes it."""
        self.comm, self.exe, self.argv, self.cwd = parent.comm, parent.exe, parent.argv, parent.cwd
        self.uid, self.gid, self.euid, self.egid = parent.uid, parent.gid, parent.euid, parent.egid
        self.exe_deleted, self.exe_memfd = parent.exe_deleted, parent.exe_memfd
        self.pidns, self.mntns, self.netns, self.utsns = parent.pidns, parent.mntns, parent.netns, parent.utsns

    def __repr__(self) -> str:
        state = " exited" if self.exited else ""
        return f"<Process {self.pid} key={self.entity_key:#x} exe={self.exe!r} parent={self.parent_key}{state}>"


@dataclass(frozen=True, slots=True)
class TableStats:
    entries: int
    live: int
    exited_kept: int            # exited processes kept as ancestors of processes still in the table
    max_entries: int
    evicted_exited: int
    evicted_live: int
    implied_exits: int          # processes taken as exited because a newer process got their pid
    late_events: int            # fork/exec events ignored because the process had already exited


@dataclass(frozen=True, slots=True)
class SeedResult:
    processes: tuple[Process, ...]
    exact: bool                 # start times (so keys) from the kernel; False: estimated from /proc ticks
    skipped: int                # /proc entries not seeded: gone while read, or their pid reused meanwhile


class ProcessTable:
    """Bounded table of processes by entity_key; see the module docstring for the rules."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, exit_grace: int = EXIT_GRACE) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        if exit_grace < 0:
            raise ValueError(f"exit_grace must be 0 or more, got {exit_grace}")
        self.max_entries = max_entries
        self.exit_grace = exit_grace
        self._grace: OrderedDict[int, None] = OrderedDict()      # the last exit_grace exits, oldest first
        self._entries: dict[int, Process] = {}
        self._live: OrderedDict[int, Process] = OrderedDict()     # least recently used first
        self._exited: OrderedDict[int, Process] = OrderedDict()   # exited, kept as ancestors; oldest exit first
        self._by_pid: dict[int, int] = {}                         # pid -> key of its live process
        self._recent_exits: OrderedDict[int, None] = OrderedDict()
        self._evicted_exited = self._evicted_live = self._implied_exits = self._late = 0

    # --- reading ----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: int) -> bool:
        return key in self._entries

    def get(self, key: int) -> Process | None:
        p = self._entries.get(key)
        if p is not None and not p.exited:
            self._live.move_to_end(key)
        return p

    def key_of_pid(self, pid: int) -> int | None:
        """The entity_key of the live process with ``pid``, if the table has one."""
        return self._by_pid.get(pid)

    def ancestors(self, key: int, n: int) -> list[dict]:
        """Up to ``n`` ancestors of ``key``, nearest first, each ``{"pid", "entity_key", "exe", "argv"}``.

        The chain stops at the first ancestor the table does not hold (never seen, or evicted).  (A parent
        starts before its child, so the chain cannot loop; ``n`` bounds it anyway.)"""
        out: list[dict] = []
        entries, touch = self._entries, self._live.move_to_end
        p = entries.get(key)
        while p is not None and len(out) < n:
            parent_key = p.parent_key
            p = entries.get(parent_key) if parent_key is not None else None
            if p is None:
                break
            if not p.exited:
                touch(parent_key)
            out.append(p._summary or p.summary())
        return out

    def stats(self) -> TableStats:
        return TableStats(entries=len(self._entries), live=len(self._live), exited_kept=len(self._exited),
                          max_entries=self.max_entries, evicted_exited=self._evicted_exited,
                          evicted_live=self._evicted_live, implied_exits=self._implied_exits,
                          late_events=self._late)

    # --- events -------------------------------------------------------------------------------------------

    def seed(self, seed: SeedResult | Iterable[Process]) -> int:
        """Add the processes of ``seed`` (``read_seed``'s result) that the table does not hold yet (events
        handled since are newer than /proc).  Returns how many were added."""
        processes = seed.processes if isinstance(seed, SeedResult) else tuple(seed)
        added = 0
        for p in processes:
            if p.entity_key in self._entries or p.entity_key in self._recent_exits:
                continue
            self._insert(p)
            added += 1
        return added

    def on_fork(self, key: int, pid: int, *, parent_key: int | None, ppid: int | None = None,
                start_ns: int | None = None) -> Process | None:
        """A new process (a fork event; not a thread): it runs its parent's program, in its parent's working
        directory, with its ids, until it execs.  Returns the process, or None for a late event."""
        if key in self._recent_exits:
            self._late += 1
            return None
        p = self._entries.get(key)
        if p is not None:
            # Its exec was handled first (another ring): keep what it set, fill in the lineage.
            if p.parent_key is None and parent_key is not None:
                self._set_parent(p, parent_key)
            if p.ppid is None:
                p.ppid = ppid
            return p
        parent = self._entries.get(parent_key) if parent_key is not None else None
        p = Process(key, pid, start_ns=start_ns, ppid=ppid, parent_key=parent_key)
        if parent is not None:
            p.inherit(parent)
        return self._insert(p)

    def on_exec(self, key: int, pid: int, *, exe: str | None, argv: Iterable[str], start_ns: int | None = None,
                cwd: str | None = None, comm: str | None = None, parent_key: int | None = None,
                ppid: int | None = None, uid: int | None = None, gid: int | None = None,
                euid: int | None = None, egid: int | None = None) -> Process | None:
        """A successful exec: the process now runs ``exe`` with ``argv``.  Values given as None are left as
        they were (exec changes neither the working directory nor, without set-id bits, the ids)."""
        if key in self._recent_exits:
            self._late += 1
            return None
        p = self._entries.get(key)
        if p is None:
            p = self._insert(Process(key, pid, start_ns=start_ns, ppid=ppid, parent_key=parent_key))
            if p is None:
                return None
        elif p.parent_key is None and parent_key is not None:
            self._set_parent(p, parent_key)
        p.exe, p.argv = exe, cap_argv(argv)
        p.changed()
        for name, value in (("cwd", cwd), ("comm", comm), ("ppid", ppid), ("uid", uid), ("gid", gid),
                            ("euid", euid), ("egid", egid), ("start_ns", start_ns)):
            if value is not None:
                setattr(p, name, value)
        if not p.exited:
            self._live.move_to_end(key)
        return p

    def on_exit(self, key: int) -> None:
        """The process exited (its exit event has been handled): remove it, or keep it as an ancestor while
        processes it forked are in the table."""
        self._remember_exit(key)
        p = self._entries.get(key)
        if p is None or p.exited:
            return
        self._mark_exited(p)

    # --- the bookkeeping ------------------------------------------------------------------------------------

    def _remember_exit(self, key: int) -> None:
        self._recent_exits[key] = None
        self._recent_exits.move_to_end(key)
        if len(self._recent_exits) > RECENT_EXITS:
            self._recent_exits.popitem(last=False)

    def _insert(self, p: Process) -> Process | None:
        old_key = self._by_pid.get(p.pid)
        if old_key is not None and old_key != p.entity_key:
            old = self._entries[old_key]
            if p.start_ns is not None and old.start_ns is not None and p.start_ns < old.start_ns:
                # An older incarnation than the one the table holds for this pid: it is long gone.
                self._late += 1
                return None
            self._implied_exits += 1
            self._remember_exit(old_key)
            self._mark_exited(old)
        while len(self._entries) >= self.max_entries:
            self._evict_one()
        self._entries[p.entity_key] = p
        self._live[p.entity_key] = p
        self._by_pid[p.pid] = p.entity_key
        if p.parent_key is not None:
            parent = self._entries.get(p.parent_key)
            if parent is not None:
                parent.children += 1
        return p

    def _set_parent(self, p: Process, parent_key: int) -> None:
        p.parent_key = parent_key
        parent = self._entries.get(parent_key)
        if parent is not None:
            parent.children += 1

    def _mark_exited(self, p: Process) -> None:
        p.exited = True
        self._live.pop(p.entity_key, None)
        if self._by_pid.get(p.pid) == p.entity_key:
            del self._by_pid[p.pid]
        if not self.exit_grace and not p.children:
            self._remove(p)
            return
        self._exited[p.entity_key] = p
        if self.exit_grace:
            self._grace[p.entity_key] = None
            while len(self._grace) > self.exit_grace:
                key, _ = self._grace.popitem(last=False)
                old = self._entries.get(key)
                if old is not None and old.exited and not old.children:
                    self._remove(old)

    def _evict_one(self) -> None:
        if self._exited:
            _, p = self._exited.popitem(last=False)
            self._evicted_exited += 1
        else:
            _, p = self._live.popitem(last=False)
            self._evicted_live += 1
        self._remove(p)

    def _remove(self, p: Process) -> None:
        """Remove ``p``; then its parent too, when that had exited and ``p`` was the last reason to keep it."""
        while p is not None:
            key = p.entity_key
            del self._entries[key]
            self._live.pop(key, None)
            self._exited.pop(key, None)
            if self._by_pid.get(p.pid) == key:
                del self._by_pid[p.pid]
            self._grace.pop(key, None)
            parent = self._entries.get(p.parent_key) if p.parent_key is not None else None
            p = None
            if parent is not None:
                parent.children -= 1
                if parent.exited and parent.children == 0 and parent.entity_key not in self._grace:
                    p = parent


# --- seeding from /proc -----------------------------------------------------------------------------------

def _monotonic_minus_boottime() -> int:
    """CLOCK_MONOTONIC - CLOCK_BOOTTIME now (ns): minus the time the machine spent suspended."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) - time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def read_seed(proc: str = PROC, starts: Mapping | None = None, clk_tck: int | None = None) -> SeedResult:
    """Every process of ``proc`` as a table entry, with its parent's key.

    ``starts`` (``read_task_starts()``: tgid -> ``TaskStart``) gives exact start times, hence keys equal to
    the kernel events'; a /proc entry whose stat start (ticks) is not the iterator's for that pid belongs to
    another incarnation (the pid was reused between the two reads) and is skipped, as is a pid the iterator
    did not see.  Without ``starts``, the start time is estimated from stat's ticks (10 ms steps, on the
    boot-time clock) and the result says ``exact=False``.
    """
    clk_tck = clk_tck or os.sysconf("SC_CLK_TCK")
    tick_ns = 1_000_000_000 // clk_tck
    shift = _monotonic_minus_boottime() if starts is None else 0
    snapshots: list[ProcSnapshot] = []
    skipped = 0
    for pid in list_pids(proc):
        snap = read_process(pid, proc)
        if snap is None:
            skipped += 1
            continue
        if starts is not None:
            start = starts.get(pid)
            if start is None or start.stat_ticks(clk_tck) != snap.starttime:
                skipped += 1
                continue
        snapshots.append(snap)

    def start_of(pid: int, ticks: int | None) -> int | None:
        if starts is not None:
            s = starts.get(pid)
            return None if s is None else s.start_ns
        return None if ticks is None else ticks * tick_ns + shift

    ticks_by_pid = {s.pid: s.starttime for s in snapshots}
    processes = []
    for s in snapshots:
        start_ns = start_of(s.pid, s.starttime)
        parent_start = start_of(s.ppid, ticks_by_pid.get(s.ppid)) if s.ppid else None
        exe_memfd = s.exe is not None and s.exe_deleted and s.exe.startswith(MEMFD_PREFIX)
        processes.append(Process(
            entity_key(s.pid, start_ns), s.pid, start_ns=start_ns, ppid=s.ppid,
            parent_key=None if parent_start is None else entity_key(s.ppid, parent_start), comm=s.comm,
            exe=s.exe, argv=s.argv, cwd=s.cwd, uid=s.uid, gid=s.gid, euid=s.euid, egid=s.egid,
            exe_deleted=None if s.exe is None else s.exe_deleted, exe_memfd=None if s.exe is None else exe_memfd,
            pidns=s.pidns, mntns=s.mntns, netns=s.netns, utsns=s.utsns))
    return SeedResult(tuple(processes), exact=starts is not None, skipped=skipped)


__all__ = ["ARGV_MAX_BYTES", "DEFAULT_MAX_ENTRIES", "EXIT_GRACE", "RECENT_EXITS", "Process", "ProcessTable", "SeedResult",
           "TableStats", "cap_argv", "read_seed"]
