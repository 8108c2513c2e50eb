"""``RingBuf`` (a BPF_MAP_TYPE_RINGBUF map) and ``RingBufReader`` (its mmap'd consumer).

The reader maps the ring exactly as kernel/bpf/ringbuf.c allows (anything else is EPERM, EINVAL or
EACCES):

- the consumer page, read-write, at offset 0, one page long: ``consumer_pos`` lives there;
- the producer page and the data area, read-only, at offset one page, ``page + 2 * size`` long: the kernel
  maps the data pages twice in a row, so a record that wraps around is contiguous.

The records are walked by the pure cursor in ``ring.py``; this module owns the mappings, the wait on the
map fd (epoll, or ``trio.lowlevel.wait_readable``) and the choice of memory barrier for this CPU.
"""
from __future__ import annotations

import mmap
import os
import platform
import select
import threading
import time
from typing import Callable

import trio

from kestrel_raw.errors import ConfigError
from kestrel_raw.kernel.fd import FD
from kestrel_raw.kernel.uapi import BPF_MAP_TYPE_RINGBUF
from kestrel_raw.maps._base import Map
from kestrel_raw.maps.ring import Fence, RingCursor, RingStatistics

PAGE_SIZE = mmap.PAGESIZE

# CPUs whose memory model is TSO: an aligned load is an acquire and an aligned store a release already.
_TSO_MACHINES = frozenset({"x86_64", "amd64", "AMD64"})


def _release_acquire_fence() -> Fence:
    """A full barrier for weakly ordered CPUs (arm64), made of a lock release followed by an acquire.

    CPython's ``threading.Lock`` is a POSIX semaphore on Linux: releasing it is an atomic with release
    semantics and acquiring it an atomic with acquire semantics.  On arm64 a store-release followed by a
    load-acquire is never reordered (the architecture's release/acquire are RCsc), so every load before
    the fence completes before any load after it, which is what the cursor asks for between its phases.
    Cost: two uncontended atomics, about 40 ns, three times per batch (not per record).  The stronger
    documented alternative, ``membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)``, needs a syscall wrapper in
    ``syscall.py`` and costs a syscall per call.
    """
    lock = threading.Lock()
    lock.acquire()

    def fence() -> None:
        lock.release()
        lock.acquire()

    return fence


def fence_for_machine(machine: str | None = None) -> Fence | None:
    """The barrier the cursor needs on this CPU: None on x86_64 (TSO), a full fence elsewhere."""
    machine = machine or platform.machine()
    return None if machine in _TSO_MACHINES else _release_acquire_fence()


def check_ringbuf_size(size: int) -> None:
    """Raise ``ConfigError`` unless ``size`` is a valid ring buffer size on this machine."""
    if not isinstance(size, int) or isinstance(size, bool):
        raise ConfigError(f"ring buffer size {size!r} must be an integer number of bytes")
    if size < PAGE_SIZE or size & (size - 1) or size % PAGE_SIZE:
        if size <= PAGE_SIZE:
            near = f"{PAGE_SIZE}"
        else:
            lower = 1 << (size.bit_length() - 1)
            near = f"{lower} or {lower * 2}"
        raise ConfigError(f"ring buffer size {size} is invalid: the kernel needs a power of two that is a "
                          f"multiple of the page size ({PAGE_SIZE}); try {near}")


class RingBuf(Map):
    """A BPF ring buffer map of ``size`` data bytes (``max_entries``; key and value size 0)."""

    def __init__(self, size: int, name: str = "events") -> None:
        check_ringbuf_size(size)
        super().__init__(BPF_MAP_TYPE_RINGBUF, 0, 0, size, name=name)

    @property
    def size(self) -> int:
        return self.max_entries

    def reader(self) -> "RingBufReader":
        return RingBufReader(self)


class RingBufReader:
    """Consumes a ring buffer through its mappings.

    ``ringbuf_or_fd`` is a ``RingBuf``, or any map fd (an int or an object with ``fileno()``) of a ring
    buffer of ``size`` bytes.  The reader keeps its own duplicate of the fd, so it works (and must be
    closed) independently of the map object.  ``consumer_pos`` is published only after the records of a
    batch have been copied out (or handed to a ``process`` callback that returned).
    """

    def __init__(self, ringbuf_or_fd, size: int | None = None, *, fence: Fence | None | str = "auto") -> None:
        fd = ringbuf_or_fd if isinstance(ringbuf_or_fd, int) else ringbuf_or_fd.fileno()
        map_size = getattr(ringbuf_or_fd, "max_entries", None)
        if size is None:
            if map_size is None:
                raise ConfigError("RingBufReader needs the ring buffer size with a bare fd: pass size=")
            size = map_size
        elif map_size is not None and size != map_size:
            raise ConfigError(f"RingBufReader size {size} differs from the ring buffer's max_entries {map_size}; "
                              f"omit size= to use the map's")
        check_ringbuf_size(size)
        self.size = size
        self.wakeups = 0  # waits (wait_readable, wait_wakeup) that ended because the kernel woke the reader
        self._fd = FD(os.dup(fd))
        self._epoll: select.epoll | None = None
        self._edge: select.epoll | None = None
        self._views: list[memoryview] = []
        self._maps: list[mmap.mmap] = []
        try:
            consumer = mmap.mmap(self._fd.fd, PAGE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                                 offset=0)
            self._maps.append(consumer)
            producer = mmap.mmap(self._fd.fd, PAGE_SIZE + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ,
                                 offset=PAGE_SIZE)
            self._maps.append(producer)
            whole = memoryview(producer)
            self._views.append(whole)
            data = whole[PAGE_SIZE:]
            self._views.append(data)
            self._cursor = RingCursor(consumer, producer, data, size,
                                      fence=fence_for_machine() if fence == "auto" else fence,
                                      copy_from=producer, copy_base=PAGE_SIZE)
        except BaseException:
            self._unmap()
            self._fd.close()
            raise

    # -- state ---------------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._fd.closed

    def fileno(self) -> int:
        """The (duplicated) map fd: readable while the ring holds data."""
        return self._fd.fileno()

    def available(self) -> int:
        """Bytes between the consumer and producer positions (0 once nothing is left to read)."""
        self._check_open()
        return self._cursor.available()

    def probe(self) -> Callable[[], bool]:
        """A cheap zero-argument callable, true when the ring may hold records: for busy polling, where
        ``available()``'s checks would cost more than the load it makes.  Valid while the reader is open."""
        self._check_open()
        return self._cursor.probe()

    def drainer(self) -> Callable[[int | None], list[bytes]]:
        """``drain`` without the open check, for busy polling (the check is ~10% of draining one record).
        Valid while the reader is open, like ``probe``."""
        self._check_open()
        return self._cursor.drain

    def statistics(self) -> RingStatistics:
        """Records read, discarded, payload bytes, resets (see ``RingStatistics``)."""
        return self._cursor.statistics()

    # -- reading without waiting -----------------------------------------------------------------------

    def drain(self, max_records: int | None = None) -> list[bytes]:
        """Copy out the committed records now (none if there are none) and publish ``consumer_pos``."""
        self._check_open()
        return self._cursor.drain(max_records)

    def process(self, callback: Callable[[memoryview], object], max_records: int | None = None) -> int:
        """Call ``callback(view)`` on each committed record without copying (see ``RingCursor.process``)."""
        self._check_open()
        return self._cursor.process(callback, max_records)

    # -- waiting: trio ------------------------------------------------------------------------------------

    async def wait_readable(self) -> None:
        """Wait until the kernel reports data in the ring (returns at once if there is some)."""
        await trio.lowlevel.wait_readable(self.fileno())
        self.wakeups += 1

    async def wait_wakeup(self) -> None:
        """Wait until a producer wakes the reader, not merely until the ring holds data.

        ``wait_readable`` returns at once while any record is unread (the ring's poll reports "readable"
        whenever the positions differ), so a reader that loops on it drains a busy ring a few records at a
        time, woken or not, and pays its own per-drain cost for every few: ~11 records a drain at 300k
        opens/s, however high the programs' wakeup threshold.  This waits on an edge-triggered epoll
        instance of the reader's own (an epoll fd is pollable itself, so trio waits on it as on any fd): it
        reports the ring only when the kernel wakes the ring's wait queue, which the programs ask for with
        BPF_RB_FORCE_WAKEUP (or the kernel does on its own with no flag).  A wakeup that comes while the
        reader drains is kept for the next wait.  The first wait also returns at once if the ring already
        holds data (epoll_ctl looks once when the fd is added).
        """
        if self._edge is None:
            self._check_open()
            self._edge = select.epoll()
            self._edge.register(self.fileno(), select.EPOLLIN | select.EPOLLET)
        await trio.lowlevel.wait_readable(self._edge.fileno())
        self._edge.poll(0)  # take the edge: the instance is not readable again until the next wakeup
        self.wakeups += 1

    async def wait_records(self, max_records: int | None = None) -> list[bytes]:
        """Wait for at least one record and return the batch that is there (at most ``max_records``).

        Cancellation never loses records: the checkpoint comes before the drain, and nothing awaits
        between copying the records out and returning them.
        """
        while True:
            await trio.lowlevel.checkpoint()
            batch = self.drain(max_records)
            if batch:
                return batch
            if not self._cursor.available():
                await self.wait_readable()
            # else the record at the head is still being written (BUSY): the fd stays readable, so waiting
            # on it would return at once; the checkpoint above lets other tasks run until it is committed.

    def __aiter__(self) -> "RingBufReader":
        return self

    async def __anext__(self) -> bytes:
        """One record at a time (``async for record in reader``), published one by one; the batch API
        (``wait_records``) is cheaper.  Ends when the reader is closed, also while waiting."""
        if self.closed:
            raise StopAsyncIteration
        try:
            return (await self.wait_records(1))[0]
        except (trio.ClosedResourceError, ValueError):
            if self.closed:  # closed by another task while this one waited or yielded
                raise StopAsyncIteration from None
            raise

    # -- waiting: blocking ---------------------------------------------------------------------------

    def poll(self, timeout: float | None = None) -> list[bytes]:
        """Block up to ``timeout`` seconds (None: forever) for records; return them ([] on timeout)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            batch = self.drain()
            if batch:
                return batch
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return []
            if self._cursor.available():
                time.sleep(0)  # a BUSY record at the head: see wait_records
                continue
            if self._epoll is None:
                self._epoll = select.epoll()
                self._epoll.register(self.fileno(), select.EPOLLIN)
            self._epoll.poll(-1 if left is None else left)

    # -- closing -------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._fd.closed:
            raise ValueError("ring buffer reader is closed")

    def _unmap(self) -> None:
        cursor = getattr(self, "_cursor", None)
        if cursor is not None:
            cursor.release()
        for view in reversed(self._views):
            view.release()
        self._views.clear()
        for m in self._maps:
            m.close()
        self._maps.clear()

    def close(self) -> None:
        """Unmap the ring and close the reader's fd; idempotent.  Records not yet read stay in the ring."""
        if self._fd.closed:
            return
        try:
            # A trio task blocked in wait_readable on this fd gets ClosedResourceError instead of a hang.
            trio.lowlevel.notify_closing(self._fd.fd)
        except RuntimeError:
            pass  # not inside trio.run: nobody can be waiting through trio
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        if self._edge is not None:
            try:
                trio.lowlevel.notify_closing(self._edge.fileno())
            except RuntimeError:
                pass
            self._edge.close()
            self._edge = None
        self._unmap()
        self._fd.close()

    def __enter__(self) -> "RingBufReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd.fd}"
        return f"RingBufReader(size={self.size}, {state})"
