"""Container names and images from the runtime's API socket, looked up off the event path.

Docker's Engine API (``GET /containers/{id}/json`` on /var/run/docker.sock) is also spoken by podman's
docker-compatible service (``podman system service``, socket /run/podman/podman.sock), so one small HTTP/1.1
client over a Unix socket serves both.  From the answer: ``Name`` (docker puts a ``/`` in front),
``Config.Image`` (the image as the container was created from it, e.g. ``docker.io/library/nginx:1.25``)
and ``Image`` (the image id).

``ContainerInfoCache.get(id)`` never blocks and never does I/O: it answers from the cache, and for an id it
has not seen it queues one lookup (on a bounded queue: when full the id is dropped and counted, and asked
again on a later ``get``) for a worker thread and returns None; the event gets the name once it is known.
Each id is looked up once; an id no socket knows is asked again after ``retry_after`` seconds (a container
can be seen before its runtime answers for it), at most.  The cache holds at most ``max_entries`` ids (the
oldest answer goes first).
"""
from __future__ import annotations

import http.client
import json
import queue
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

DEFAULT_SOCKETS = ("/run/podman/podman.sock", "/var/run/docker.sock")
DEFAULT_TIMEOUT = 2.0
DEFAULT_QUEUE = 256
DEFAULT_MAX_ENTRIES = 4096
DEFAULT_RETRY_AFTER = 30.0


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    id: str
    name: str
    image: str                 # Config.Image: the image reference the container was made from
    image_id: str              # Image: the image's id ("sha256:..." on docker; podman answers the same)
    socket: str                # the API socket that answered


def connect_unix(path: str, timeout: float) -> socket.socket:
    """A stream socket connected to the Unix socket ``path`` (the default way to reach an API socket)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float, connect: Callable[[str, float], socket.socket]) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path
        self._connect = connect

    def connect(self) -> None:
        sock = self._connect(self._path, self.timeout)
        sock.settimeout(self.timeout)
        self.sock = sock


def query_container(socket_path: str, container_id: str, timeout: float = DEFAULT_TIMEOUT,
                    connect: Callable[[str, float], socket.socket] = connect_unix) -> ContainerInfo | None:
    """Ask the API at ``socket_path`` about ``container_id``: its info, or None when it does not know it
    (404).  Raises OSError when the socket does not answer, ValueError on an answer that is not the API's.
    ``connect(path, timeout)`` makes the connection (a process without the right to the socket asks a
    broker that has it: kestrel_raw/context/broker.py)."""
    if not container_id or not all(c.isalnum() or c in "_.-" for c in container_id):
        raise ValueError(f"not a container id or name: {container_id!r}")
    conn = _UnixHTTPConnection(socket_path, timeout, connect)
    try:
        conn.request("GET", f"/containers/{container_id}/json", headers={"Accept": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
    except http.client.HTTPException as e:
        raise ValueError(f"{socket_path}: not an HTTP answer ({e!r})") from None
    finally:
        conn.close()
    if resp.status == 404:
        return None
    if resp.status != 200:
        raise ValueError(f"{socket_path}: GET /containers/{container_id}/json answered {resp.status}: "
                         f"{body[:200]!r}")
    try:
        doc = json.loads(body)
        return ContainerInfo(id=doc["Id"], name=doc["Name"].lstrip("/"), image=(doc.get("Config") or {}).get(
            "Image") or "", image_id=doc.get("Image") or "", socket=socket_path)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{socket_path}: the container document lacks what the Engine API defines: {e!r}") \
            from None


@dataclass(frozen=True, slots=True)
class LookupStats:
    cached: int
    queued: int            # lookups put on the queue
    dropped: int           # ids not queued because the queue was full
    answered: int          # lookups a socket answered for (found or not)
    failed: int            # lookups no socket answered (unreachable, timeout, bad answer)


_NOT_FOUND = object()


class ContainerInfoCache:
    """Bounded cache of ``ContainerInfo`` by container id, filled by one worker thread (see the module doc).

    ``sockets``: the API sockets to ask, in order (the first that knows the id answers).  ``lookup`` replaces
    ``query_container`` (for tests).  Use as a context manager, or ``start()`` / ``close()``.
    """

    def __init__(self, sockets: Sequence[str] = DEFAULT_SOCKETS, *, queue_size: int = DEFAULT_QUEUE,
                 max_entries: int = DEFAULT_MAX_ENTRIES, timeout: float = DEFAULT_TIMEOUT,
                 retry_after: float = DEFAULT_RETRY_AFTER,
                 lookup: Callable[[str, str, float], ContainerInfo | None] = query_container,
                 clock=time.monotonic) -> None:
        self.sockets = tuple(sockets)
        self.max_entries = max_entries
        self.timeout = timeout
        self.retry_after = retry_after
        self._lookup = lookup
        self._clock = clock
        self._queue: queue.Queue[str | None] = queue.Queue(queue_size)
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, object] = OrderedDict()   # id -> ContainerInfo | (_NOT_FOUND, when)
        self._pending: set[str] = set()
        self._thread: threading.Thread | None = None
        self._queued = self._dropped = self._answered = self._failed = 0
        self.last_error: str | None = None

    # --- the event path: no I/O, no waiting ---------------------------------------------------------------

    def get(self, container_id: str) -> ContainerInfo | None:
        """The container's info if known; else None, and a lookup is queued (once)."""
        return self.lookup(container_id)[0]

    def lookup(self, container_id: str) -> tuple[ContainerInfo | None, bool]:
        """(the container's info or None, whether that is the answer for now): False while a lookup is
        queued or running (ask again), True once a socket answered (or none could, until ``retry_after``)."""
        with self._lock:
            hit = self._cache.get(container_id)
            if isinstance(hit, ContainerInfo):
                return hit, True
            if hit is not None and self._clock() - hit[1] < self.retry_after:
                return None, True
            if container_id in self._pending:
                return None, False
            try:
                self._queue.put_nowait(container_id)
            except queue.Full:
                self._dropped += 1
                return None, False
            self._pending.add(container_id)
            self._queued += 1
        return None, False

    def stats(self) -> LookupStats:
        with self._lock:
            return LookupStats(len(self._cache), self._queued, self._dropped, self._answered, self._failed)

    # --- the worker -----------------------------------------------------------------------------------------

    def start(self) -> "ContainerInfoCache":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kestrel-container-info", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float | None = None) -> None:
        """Stop the worker (after the lookup it is doing).  ``timeout`` defaults to the lookup timeout
        times the number of sockets, plus a second."""
        if self._thread is None:
            return
        while True:
            try:
                self._queue.get_nowait()       # what is still queued is abandoned
            except queue.Empty:
                break
        self._queue.put(None)
        self._thread.join(timeout if timeout is not None else self.timeout * len(self.sockets) + 1.0)
        self._thread = None

    def __enter__(self) -> "ContainerInfoCache":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no lookup is queued or running (tests); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending:
                    return True
            time.sleep(0.01)
        return False

    def _run(self) -> None:
        while (container_id := self._queue.get()) is not None:
            result: object = None
            answered = False
            for path in self.sockets:
                try:
                    info = self._lookup(path, container_id, self.timeout)
                except (OSError, ValueError) as e:
                    self.last_error = f"{path}: {e}"
                    continue
                answered = True
                if info is not None:
                    result = info
                    break
            with self._lock:
                self._pending.discard(container_id)
                if answered:
                    self._answered += 1
                else:
                    self._failed += 1
                self._cache[container_id] = result if result is not None else (_NOT_FOUND, self._clock())
                self._cache.move_to_end(container_id)
                while len(self._cache) > self.max_entries:
                    self._cache.popitem(last=False)


__all__ = ["ContainerInfo", "ContainerInfoCache", "DEFAULT_SOCKETS", "LookupStats", "query_container"]
