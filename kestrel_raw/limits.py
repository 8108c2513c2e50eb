"""What a number of ring buffers costs the host, checked before anything is created.

``--buffers 5000`` used to run for seconds, creating maps, and then fail with "Too many open files"; a
large ``--buffer-size`` times many rings asks the kernel for more memory than the machine has.  Both are
known from the configuration alone, so ``check_rings`` refuses them up front, with the reason and the
largest value that would fit.

File descriptors per ring, counted on a running collector (``ls /proc/PID/fd``): the ring map, the
reader's duplicate of it, the two mmap objects' own duplicates (CPython's ``mmap.mmap`` keeps one) and the
reader's edge-triggered epoll instance: 5.  The rest of the collector held 31 with every event type
(programs, their links and perf events, the other maps, trio's epoll and wakeup pipe, stdio); outputs
(a file, sockets, the metrics server and NATS client threads) add a few, and ``FD_MARGIN`` covers them.

Memory: a ring's pages are kernel memory charged to the collector's memory cgroup, allocated in full when
the map is made.  The rings together may take at most half of what the host (``MemAvailable``) or the
cgroup (``memory.max`` less ``memory.current``) has left, whichever is less: the rest of the machine keeps
running, and the kernel's refusal would come only after the earlier rings were made.
"""
from __future__ import annotations

import os
import resource

from kestrel_raw.errors import ConfigError

FDS_PER_RING = 5
FDS_FIXED = 31
FD_MARGIN = 64
MEMORY_SHARE = 2  # the rings may take 1/MEMORY_SHARE of the memory left


class LimitError(ConfigError):
    """A limit the configuration would exceed.  ``setting`` is "buffers" or "buffer_size": the one to
    change; the message gives the reason and the largest value that fits."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting


def fds_needed(buffers: int) -> int:
    return FDS_FIXED + FD_MARGIN + FDS_PER_RING * buffers


def raise_fd_limit(needed: int) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE towards ``needed`` (up to the hard limit, which needs no privilege);
    returns the (soft, hard) limits in force afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        new = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        if new > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
    return soft, hard


def memory_left() -> tuple[int, str] | None:
    """The bytes the host or this process's cgroup has left, whichever is less, and where that came from;
    None when neither can be read."""
    found: list[tuple[int, str]] = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append((int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"))
                    break
    except OSError:
        pass
    cgroup = _cgroup_memory_left()
    if cgroup is not None:
        found.append(cgroup)
    return min(found) if found else None


def _cgroup_memory_left() -> tuple[int, str] | None:
    """memory.max - memory.current of this process's cgroup v2 (None when unlimited or not found)."""
    try:
        with open("/proc/self/cgroup") as f:
            path = next((line.split(":", 2)[2].strip() for line in f if line.startswith("0::")), None)
        if path is None:
            return None
        mount = None
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split()[0] == "cgroup2":
                    mount = left.split()[4]
                    break
        if mount is None:
            return None
        where = os.path.join(mount, path.lstrip("/"))
        with open(os.path.join(where, "memory.max")) as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open(os.path.join(where, "memory.current")) as f:
            current = int(f.read())
        return max(0, int(limit) - current), f"memory.max - memory.current of cgroup {path}"
    except (OSError, ValueError, IndexError):
        return None


def check_rings(buffers: int, buffer_size: int) -> None:
    """Raise ``LimitError`` when ``buffers`` rings of ``buffer_size`` bytes cannot be had on this host."""
    needed = fds_needed(buffers)
    soft, hard = raise_fd_limit(needed)
    if soft != resource.RLIM_INFINITY and soft < needed:
        fit = max(0, (soft - FDS_FIXED - FD_MARGIN) // FDS_PER_RING)
        raise LimitError("buffers", (
            f"buffers {buffers} needs about {needed} file descriptors ({FDS_PER_RING} per ring buffer and "
            f"{FDS_FIXED + FD_MARGIN} for the rest), more than this process may open (RLIMIT_NOFILE: hard "
            f"limit {hard}); use at most {fit} ring buffers, or raise the limit (ulimit -n, systemd's "
            f"LimitNOFILE=)"))
    left = memory_left()
    if left is None:
        return
    available, source = left
    total = buffers * buffer_size
    if total * MEMORY_SHARE > available:
        mib = 1 << 20
        most = available // MEMORY_SHARE
        fit_buffers = most // buffer_size
        if fit_buffers >= 1:
            setting, advice = "buffers", f"use at most {fit_buffers} ring buffers of this size"
        else:
            size = 1 << max(0, (most // max(1, buffers)).bit_length() - 1)
            setting, advice = "buffer_size", f"use at most buffer_size {size} with {buffers} ring buffers"
        raise LimitError(setting, (
            f"buffers x buffer_size ({buffers} x {buffer_size} = {total // mib} MiB of ring buffers, kernel "
            f"memory allocated up front) is more than half the memory left ({available // mib} MiB, "
            f"{source}); {advice}"))
