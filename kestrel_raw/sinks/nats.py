"""Events to a NATS JetStream stream, at least once, with nats-py (``pip install 'kestrel-raw[nats]'``).

nats-py is asyncio; the collector is trio.  The client runs in a thread of its own with its own asyncio
loop; the collector's writer hands it batches through a bounded queue (``queue.Queue``, and a wake-up of
the loop with ``call_soon_threadsafe``) and never waits on the network: when the queue is full the writer
task waits (``trio.sleep``, the event loop keeps running), which is back-pressure like any slow output.
The thread only ever takes the GIL for a batch (1 to 256 events), not per event (sinks/natsmsg.py).

Delivery, at least once:

- connected, with nothing spooled: each batch taken from the queue is published at once with
  ``publish_async``, and the acks of the batches in flight (up to ``MAX_IN_FLIGHT``) are collected as
  they come, in order, while the thread goes on taking batches; a batch that is not acked (an error, no
  stream leader, or no ack within ``ACK_TIMEOUT``) goes to the spool;
- while anything is spooled, or the servers cannot be reached: new batches go to the spool behind it,
  and the spool is sent, oldest first, once a server answers again, each batch removed only after its
  ack.  So batches keep their order unless one batch of a window fails and the next succeeds.

The spool (sinks/spool.py) is one file of bounded size, made at start (before the privileges are
dropped).  When it is full, new batches are dropped and counted (``dropped``): memory never grows with an
outage.  A batch can be published twice (its ack lost, then sent again from the spool): the Nats-Msg-Id
header makes JetStream store it once within the stream's duplicate window, and a consumer drops any
duplicate left by the sequence numbers (natsmsg.Dedup; ``kestrel-raw tail`` does).  On stop, the
thread sends what it can for ``flush_timeout`` seconds and keeps the rest in the spool, which the next
run sends first.
"""
from __future__ import annotations

import asyncio
import collections
import queue
import sys
import threading
import time
from dataclasses import dataclass, field

import trio

from kestrel_raw.sinks.natsmsg import Batch, headers
from kestrel_raw.sinks.spool import Spool

QUEUE_BATCHES = 256  # batches between the collector and the NATS thread (up to 65,536 events)
MAX_IN_FLIGHT = 1024  # batches published and not yet acked, at most; more wait in the spool
WINDOW = 256  # spooled batches sent at a time
ACK_TIMEOUT = 5.0  # seconds an ack may take before its batch goes (back) to the spool
RETRY_EVERY = 0.5  # seconds between attempts to send the spool while nothing is acked
CONNECT_TIMEOUT = 2  # seconds per attempt to reach a server
FULL_WAIT = 0.005  # seconds the writer waits for room in the queue


def import_nats():
    """nats-py, or ImportError with the command that installs it."""
    try:
        import nats  # noqa: F401
        from nats.js.errors import NotFoundError  # noqa: F401
    except ImportError:
        raise ImportError("--nats needs nats-py: pip install 'kestrel-raw[nats]'") from None
    return nats


def preload() -> None:
    """Import now every module the client thread may import later: it runs after the privileges are
    dropped, when the interpreter's files may be out of reach (an interpreter under /root, say)."""
    import importlib
    import pkgutil
    from email.parser import BytesParser

    nats = import_nats()
    for info in pkgutil.walk_packages(nats.__path__, "nats."):
        try:
            importlib.import_module(info.name)
        except ImportError:
            pass  # a part needing an optional dependency (nkeys, websockets): not used here
    # nats-py parses message headers with the email package, whose parts load on first use.
    parsed = BytesParser().parsebytes(b"Nats-Msg-Id: a.1.2\r\nKestrel-Seq: 2\r\n\r\n", headersonly=True)
    dict(parsed.items())
    import concurrent.futures.thread  # noqa: F401  (asyncio's getaddrinfo runs in an executor)


@dataclass
class NatsCounts:
    published: int = 0  # events acked by JetStream
    spooled: int = 0  # events that went to the spool
    dropped: int = 0  # events dropped because the spool was full
    resent: int = 0  # events sent again from the spool
    connected: bool = False
    server: str = ""
    errors: list[str] = field(default_factory=list)


async def find_stream(servers: list[str], subject: str, timeout: float = CONNECT_TIMEOUT) -> tuple[bool, str | None, str]:
    """Connect once and ask which stream takes ``subject``: (reached a server, stream name or None, why
    not reached).  For the check before the collector starts."""
    nats = import_nats()
    from nats.js.errors import NotFoundError

    nc = nats.NATS()

    async def quiet(*_args):
        pass

    try:
        await nc.connect(servers=servers, connect_timeout=timeout, allow_reconnect=False,
                         max_reconnect_attempts=0, error_cb=quiet, disconnected_cb=quiet, closed_cb=quiet)
    except Exception as e:  # nats-py raises its own errors and OSErrors, as the servers answer
        return False, None, _why(e)
    try:
        try:
            return True, await nc.jetstream().find_stream_name_by_subject(subject), ""
        except NotFoundError:
            return True, None, ""
        except Exception as e:
            return True, None, _why(e)
    finally:
        try:
            await nc.close()
        except Exception:
            pass


def _why(e: BaseException) -> str:
    text = str(e).strip()
    if isinstance(e, asyncio.TimeoutError) or not text:
        return type(e).__name__
    return text


class NatsSink:
    """Publishes the chunks of JSON lines given to ``send`` (see the module).

    ``servers``: nats:// URLs (the client learns the cluster's other servers from the one it reaches);
    ``spool``: an open Spool; ``run``: this run's number (start time in ns); ``report``: called with a line
    of status (connected, disconnected) from the thread.
    """

    def __init__(self, servers: list[str], subject: str, spool: Spool, *, host_id: str, host: str,
                 run: int | None = None, flush_timeout: float = 5.0, report=None) -> None:
        self.servers = servers
        self.subject = subject
        self.spool = spool
        self.host_id = host_id
        self.host = host
        self.run = time.time_ns() if run is None else run
        self.flush_timeout = flush_timeout
        self.counts = NatsCounts()
        self._report = report or (lambda line: None)
        self._seq = 0
        self._queue: queue.Queue[Batch] = queue.Queue(QUEUE_BATCHES)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._closing = False  # the thread is closing the connection: a disconnection is no news
        self._ready = threading.Event()
        self.spool_events = self._spool_count()

    def _spool_count(self) -> int:
        return sum(Batch.unpack(rec).count for _pos, rec in self.spool.peek(1 << 30))

    # -- the collector's side (trio) ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the client thread (after the privileges are dropped: a thread would keep them)."""
        self._thread = threading.Thread(target=self._thread_main, name="kestrel-raw nats", daemon=True)
        self._thread.start()
        self._ready.wait()

    async def send(self, chunk: bytes) -> None:
        count = chunk.count(b"\n")
        batch = Batch(self.run, self._seq, count, chunk)
        self._seq += count
        while True:
            try:
                self._queue.put_nowait(batch)
                break
            except queue.Full:
                await trio.sleep(FULL_WAIT)
        # Wake the client thread only for a batch that found the queue empty: with a batch before it still
        # there, the thread was woken for that one (or is awake) and takes every batch queued before it
        # sleeps again (_pump drains the queue after clearing the wake-up), so another wake-up would only
        # cost a system call and the GIL's hand-over (measured: a quarter of the collector's time under
        # load, bench/results/sinks.md).
        if self._queue.qsize() <= 1:
            self._poke()

    def flush_if_due(self) -> None:
        pass

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:
                pass  # the loop is closed: the thread has ended

    async def aclose(self) -> None:
        """Send what is queued (for up to flush_timeout), keep the rest in the spool, end the thread."""
        if self._thread is None:
            self.spool.close()
            return
        self._stopping = True
        self._poke()
        deadline = time.monotonic() + self.flush_timeout + ACK_TIMEOUT + 5
        while self._thread.is_alive() and time.monotonic() < deadline:
            await trio.sleep(0.01)
        if not self._thread.is_alive():
            self.spool.close()

    def counters(self) -> dict[str, int]:
        c = self.counts
        return {"published": c.published, "spooled": c.spooled, "dropped": c.dropped, "resent": c.resent,
                "spool_bytes": self.spool.used if not self.spool.closed else 0, "connected": int(c.connected)}

    # -- the client's thread (asyncio) --------------------------------------------------------------------

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(lambda _loop, _context: None)  # nats-py's stray task errors: counted below
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as e:  # the thread must end quietly; what was not sent is in the spool
            self._report(f"NATS client stopped: {_why(e)}")
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                self._loop = None
                loop.close()

    async def _main(self) -> None:
        nats = import_nats()
        self._wake = asyncio.Event()
        self._ready.set()
        nc = nats.NATS()
        c = self.counts

        async def on_error(_e):
            pass

        async def on_closed():
            pass

        async def on_disconnected():
            if c.connected:
                c.connected = False
                if not self._closing:
                    self._report(f"NATS: disconnected from {c.server}; keeping events in {self.spool.path}")

        async def on_reconnected():
            c.connected = True
            c.server = _url(nc)
            self._report(f"NATS: connected to {c.server}")

        # With max_reconnect_attempts=-1, connect() itself keeps trying until a server answers: it runs as
        # a task while the queue is emptied into the spool, so that the collector is never held up.
        connecting = asyncio.ensure_future(nc.connect(
            servers=self.servers, connect_timeout=CONNECT_TIMEOUT, allow_reconnect=True,
            max_reconnect_attempts=-1, reconnect_time_wait=RETRY_EVERY, name=f"kestrel-raw {self.host}",
            error_cb=on_error, disconnected_cb=on_disconnected, reconnected_cb=on_reconnected,
            closed_cb=on_closed))
        while not connecting.done():
            self._spool_queue()
            if self._stopping:
                connecting.cancel()
                return
            await self._sleep(0.1)
        if connecting.exception() is not None:
            self._spool_queue()
            raise connecting.exception()
        await on_reconnected()
        js = nc.jetstream(publish_async_max_pending=2 * MAX_IN_FLIGHT)
        flight = _InFlight()
        try:
            await self._pump(nc, js, flight)
        finally:
            # What is still unacked stays (or goes) in the spool, for the next run.
            for b, _fut, _t, pos in flight.entries:
                if pos is None:
                    self._to_spool([b])
            self._spool_queue()
            self._closing = True
            try:
                await asyncio.wait_for(nc.close(), 2)
            except Exception:
                pass
            c.connected = False

    async def _pump(self, nc, js, flight: "_InFlight") -> None:
        c = self.counts
        stop_at = None
        retry_at = 0.0
        while True:
            now = time.monotonic()
            if self._stopping and stop_at is None:
                stop_at = now + self.flush_timeout
            # New batches: published at once while all is well, else behind the spool.
            while True:
                try:
                    b = self._queue.get_nowait()
                except queue.Empty:
                    break
                if self.spool.used or not nc.is_connected or len(flight.entries) >= MAX_IN_FLIGHT:
                    self._to_spool([b])
                else:
                    fut = await self._publish_one(js, b)
                    if fut is None:
                        self._to_spool([b])
                        retry_at = now + RETRY_EVERY
                    else:
                        flight.entries.append((b, fut, now, None))
            # Acks, in order.  A failure (error, or no ack within ACK_TIMEOUT) sends a direct batch to the
            # spool, and stops the spool's window at that batch (the rest is sent again later).
            while flight.entries:
                b, fut, sent, pos = flight.entries[0]
                ok = fut.done() and not fut.cancelled() and fut.exception() is None
                if not ok and not fut.done() and now - sent < ACK_TIMEOUT:
                    break
                flight.entries.popleft()
                if ok:
                    c.published += b.count
                    if pos is not None:
                        c.resent += b.count
                        self.spool_events -= b.count
                        self.spool.pop(pos)
                    continue
                if not fut.done():
                    fut.cancel()
                retry_at = now + RETRY_EVERY
                if pos is None:
                    self._to_spool([b])
                else:  # forget the rest of this spool window: it stays in the spool
                    flight.entries = collections.deque(e for e in flight.entries if e[3] is None)
            # The spool, a window at a time, once a server answers.
            spooling = any(e[3] is not None for e in flight.entries)
            if self.spool.used and nc.is_connected and not spooling and now >= retry_at:
                for pos, rec in self.spool.peek(WINDOW):
                    b = Batch.unpack(rec)
                    fut = await self._publish_one(js, b)
                    if fut is None:
                        retry_at = now + RETRY_EVERY
                        break
                    flight.entries.append((b, fut, now, pos))
            if stop_at is not None:
                idle = not flight.entries and not self.spool.used and self._queue.empty()
                if idle or time.monotonic() > stop_at:
                    return
            if flight.entries:
                await self._sleep(0.02)
            elif self.spool.used:
                await self._sleep(max(0.01, retry_at - time.monotonic()) if nc.is_connected else RETRY_EVERY)
            else:
                await self._sleep(None if stop_at is None else 0.01)

    async def _publish_one(self, js, b: Batch):
        """Publish ``b``; the future of its ack, or None when it could not even be written."""
        try:
            return await js.publish_async(self.subject, b.lines, headers=headers(b, self.host_id, self.host),
                                          wait_stall=ACK_TIMEOUT)
        except Exception:
            return None

    def _spool_queue(self) -> None:
        while True:
            try:
                self._to_spool([self._queue.get_nowait()])
            except queue.Empty:
                return

    async def _sleep(self, timeout: float | None) -> None:
        wake = self._wake
        if not wake.is_set():
            try:
                await asyncio.wait_for(wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        wake.clear()

    def _to_spool(self, batches: list[Batch]) -> None:
        for b in batches:
            if self.spool.push(b.pack()):
                self.counts.spooled += b.count
                self.spool_events += b.count
            else:
                self.counts.dropped += b.count


class _InFlight:
    """Published batches awaiting their acks, oldest first: (batch, ack future, time sent, spool position
    after it, or None for a batch sent straight from the queue)."""

    def __init__(self) -> None:
        self.entries: collections.deque = collections.deque()


def _url(nc) -> str:
    url = getattr(nc, "connected_url", None)
    if url is None:
        return "?"
    return f"{url.hostname}:{url.port}" if getattr(url, "hostname", None) else str(url)
