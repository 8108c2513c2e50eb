"""A NATS JetStream cluster on loopback for bench/sinks.py: ``n`` Debian nats-server processes, a stream,
and reading back what the stream holds.

tests/helpers.py has its own ``NatsCluster`` (the NATS tests use it); bench/ does not import tests/ (nor
does the collector carry test tooling), so this is a second, smaller starter of the same kind, for the
benchmark only.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time

from . import procfs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listens(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def ensure_nats_server() -> str:
    """The nats-server binary, installed with apt-get (Debian's package) when missing."""
    found = shutil.which("nats-server")
    if found:
        return found
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "install", "-y", "-q", "nats-server"], env=env, check=False,
                   stdin=subprocess.DEVNULL)
    found = shutil.which("nats-server")
    if not found:
        raise SystemExit("nats-server is missing and apt-get could not install it (apt-get install nats-server)")
    return found


def server_version(binary: str) -> str:
    return subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()


class NatsCluster:
    """``n`` nats-server processes with JetStream (file store in ``root``), routed to each other, each
    listening for clients on a loopback port.  ``stop()`` kills them all."""

    def __init__(self, root: str, n: int = 3, file_store: str = "40GB") -> None:
        self.binary = ensure_nats_server()
        self.root = root
        self.ports = [_free_port() for _ in range(n)]
        self.routes = [_free_port() for _ in range(n)]
        self.procs: list[subprocess.Popen] = []
        try:
            for i in range(n):
                store = os.path.join(root, f"n{i}")
                os.makedirs(store, exist_ok=True)
                routes = ", ".join(f"nats-route://127.0.0.1:{p}" for j, p in enumerate(self.routes) if j != i)
                conf = os.path.join(root, f"n{i}.conf")
                with open(conf, "w") as f:
                    f.write(f"server_name: n{i}\nlisten: 127.0.0.1:{self.ports[i]}\n"
                            f"jetstream {{ store_dir: \"{store}\", max_memory_store: 256MB, "
                            f"max_file_store: {file_store} }}\n"
                            f"cluster {{ name: krbench, listen: 127.0.0.1:{self.routes[i]}, routes: [{routes}] }}\n")
                log = open(os.path.join(root, f"n{i}.log"), "ab")
                self.procs.append(subprocess.Popen([self.binary, "-c", conf], stdout=log, stderr=log,
                                                   stdin=subprocess.DEVNULL, start_new_session=True))
                log.close()
            deadline = time.monotonic() + 30
            for i, port in enumerate(self.ports):
                while not _listens(port):
                    if self.procs[i].poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"nats-server n{i} did not listen on 127.0.0.1:{port}; see "
                                           f"{root}/n{i}.log")
                    time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{p}" for p in self.ports]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def cpu_s(self) -> float:
        """CPU seconds of all servers so far (their threads' schedstat)."""
        return sum(procfs.read_cpu_ns(pid) or 0 for pid in self.pids) / 1e9

    def rss_kb(self) -> int:
        total = 0
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
            except OSError:
                pass
        return total

    def log_summary(self, keep: int = 5) -> dict:
        """Warnings and errors in each server's log: {"n0": {"warnings", "errors", "last": [...]}, ...}."""
        out = {}
        for i in range(len(self.procs)):
            try:
                with open(os.path.join(self.root, f"n{i}.log"), errors="replace") as f:
                    bad = [line.strip() for line in f if "[WRN]" in line or "[ERR]" in line]
            except OSError:
                continue
            out[f"n{i}"] = {"warnings": sum("[WRN]" in b for b in bad), "errors": sum("[ERR]" in b for b in bad),
                            "last": bad[-keep:]}
        return out

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()


async def _connect(urls: list[str]):
    import nats

    async def quiet(*_a):
        pass

    return await nats.connect(servers=urls, connect_timeout=2, max_reconnect_attempts=30, reconnect_time_wait=0.5,
                              error_cb=quiet, disconnected_cb=quiet, closed_cb=quiet)


def add_stream(urls: list[str], name: str, subjects: list[str], replicas: int, timeout: float = 60) -> dict:
    """Create the stream (file storage, ``replicas`` copies), retrying while the cluster elects its meta
    leader; returns its config as the server reports it."""
    from nats.js.api import StreamConfig

    async def main():
        nc = await _connect(urls)
        try:
            js = nc.jetstream()
            deadline = time.monotonic() + timeout
            while True:
                try:
                    info = await js.add_stream(StreamConfig(name=name, subjects=subjects, num_replicas=replicas,
                                                            duplicate_window=120.0))
                    return {"name": info.config.name, "subjects": info.config.subjects,
                            "num_replicas": info.config.num_replicas, "storage": str(info.config.storage),
                            "leader": info.cluster.leader if info.cluster else None,
                            "replicas": [r.name for r in (info.cluster.replicas or [])] if info.cluster else []}
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
        finally:
            await nc.close()

    return asyncio.run(main())


def drain_subject(urls: list[str], stream: str, subject: str, on_message, idle: float = 5.0) -> dict:
    """Every message the stream holds on ``subject``, in stream order, handed to ``on_message(headers,
    payload)``; then the subject is purged (the next run starts from an empty subject, and the disk does
    not fill).  Returns {"messages", "bytes", "stream_count", "read_s"}: ``stream_count`` is what the
    stream said it held before reading, so a short read shows."""

    async def main():
        nc = await _connect(urls)
        try:
            js = nc.jetstream()
            info = await js.stream_info(stream, subjects_filter=subject)
            want = (info.state.subjects or {}).get(subject, 0)
            got = nbytes = 0
            t0 = time.monotonic()
            if want:
                sub = await js.subscribe(subject, ordered_consumer=True, pending_bytes_limit=1 << 30)
                try:
                    while got < want:
                        try:
                            msg = await sub.next_msg(timeout=idle)
                        except Exception as e:
                            if type(e).__name__ in ("TimeoutError", "NatsTimeoutError"):
                                break
                            raise
                        got += 1
                        nbytes += len(msg.data)
                        on_message(dict(msg.headers or {}), msg.data)
                finally:
                    await sub.unsubscribe()
            read_s = time.monotonic() - t0
            await js.purge_stream(stream, subject=subject)
            return {"messages": got, "bytes": nbytes, "stream_count": want, "read_s": read_s}
        finally:
            await nc.close()

    return asyncio.run(main())
