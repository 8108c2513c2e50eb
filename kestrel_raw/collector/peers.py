"""Other collectors: recognising them, registering with them, and pruning the ones that are gone.

The programs skip the collector's own tgid and every tgid in its ``kr_filter`` map.  At load, before
anything is attached, a collector looks for the processes that hold a ``kr_filter`` hash map and a
tracepoint program named ``kr_*`` (both need CAP_BPF to make, so a process cannot pose as a collector by
name), puts their tgids in its own filter and its own tgid in theirs (pidfd_getfd(2) gives it their map).
So neither reports the other from then on; a collector's own start-up, until it registers, is ordinary
activity.  Each entry carries the process's start time; every ``peer_interval`` seconds a collector drops
the entries whose process is gone or whose pid now names another process, so a pid reused by someone else
is hidden for at most that long.
"""
from __future__ import annotations

import os
import struct

import trio

from kestrel_raw import programs
from kestrel_raw.errors import BPFError
from kestrel_raw.kernel import bpf, syscall
from kestrel_raw.kernel.uapi import BPF_MAP_TYPE_HASH, BPF_PROG_TYPE_TRACEPOINT
from kestrel_raw.maps import HashMap

# The filter map: tgid (u32) -> the process's start time in clock ticks (u64; 0 in an only-mode filter).
TGID = struct.Struct("<I")
START = struct.Struct("<Q")
FILTER_ENTRIES = 4096  # tgids in the filter map: other collectors, or the tgids of an only_tgids run
FILTER_MAP_NAME = programs.MAP_FILTER  # kernel name of the ignore-mode filter: what other collectors look for
ONLY_MAP_NAME = "kr_only"  # kernel name of an only-mode filter: not a collector's ignore list


def start_ticks(tgid: int) -> int | None:
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


def bpf_fds(pid: int) -> tuple[list[int], list[int]]:
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
    maps, progs = bpf_fds(pid)
    if not maps or not progs:
        return None
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    found = None
    try:
        is_collector = False
        for _, dup, info in borrowed(pidfd, progs, bpf.prog_info):
            os.close(dup)
            if info.type == BPF_PROG_TYPE_TRACEPOINT and info.name.startswith("kr_"):
                is_collector = True
                break
        if not is_collector:
            return None
        for _, dup, info in borrowed(pidfd, maps, bpf.map_info):
            if (info.name, info.type, info.key_size, info.value_size) == (
                    FILTER_MAP_NAME, BPF_MAP_TYPE_HASH, TGID.size, START.size):
                found = dup
                break
            os.close(dup)
    finally:
        os.close(pidfd)
    return found


def dup_from(pidfd: int, fd: int) -> int | None:
    try:
        return syscall.pidfd_getfd(pidfd, fd)
    except OSError:
        return None


def borrowed(pidfd: int, fds, describe):
    """Each of another process's BPF ``fds`` that can be copied here (pidfd_getfd) and described
    (``describe``: bpf.prog_info or bpf.map_info), as (its fd there, the copy, the description).  The caller
    owns each copy (keeps or closes it); one that cannot be copied or described is skipped: the process may
    have closed it meanwhile."""
    for fd in fds:
        dup = dup_from(pidfd, fd)
        if dup is None:
            continue
        try:
            info = describe(dup)
        except BPFError:
            os.close(dup)
            continue
        yield fd, dup, info


def register_with_peers(own_filter: HashMap) -> list[int]:
    """Find the running collectors; each ignores this one, this one ignores each.  Returns their tgids."""
    me = os.getpid()
    my_key, my_start = TGID.pack(me), start_ticks(me)
    peers = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        fd = _peer_filter(pid)
        if fd is None:
            continue
        try:
            start = start_ticks(pid)
            if start is None:
                continue
            bpf.map_update_elem(fd, my_key, START.pack(my_start or 0))
            own_filter[TGID.pack(pid)] = START.pack(start)
            peers.append(pid)
        except BPFError:
            pass  # its filter is full or it is going away: it will report this collector
        finally:
            os.close(fd)
    return peers


async def prune_peers(filter_map: HashMap, interval: float) -> None:
    """Every ``interval`` seconds, drop the entries whose process is gone or whose pid names another."""
    while True:
        await trio.sleep(interval)
        for key in list(filter_map.keys()):
            tgid = TGID.unpack(key)[0]
            value = filter_map.get(key)
            if value is not None and start_ticks(tgid) != START.unpack(value)[0]:
                filter_map.delete(key)


def peer_tgids(filter_map: HashMap | None) -> tuple[int, ...]:
    """The tgids in an ignore-mode filter map (None: not one), sorted; () once it is closed."""
    if filter_map is None or filter_map.closed:
        return ()
    return tuple(sorted(TGID.unpack(k)[0] for k in filter_map.keys()))
