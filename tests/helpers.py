"""Shared test helpers.  Import them from here, never from another test module.

Records: bytes written out by hand from the record layout table (docs/architecture.md "Records"),
independently of kestrel_raw/spec.py, so that a change of the layout in the spec fails the golden tests
instead of silently moving with them; and a hypothesis strategy of valid records of every kind, derived from
the spec (for tests whose point is the parsers' agreement, not the layout).
"""
from __future__ import annotations

import struct

from hypothesis import strategies as st

from kestrel_raw import spec

KIND_EXEC, KIND_OPEN, KIND_CONNECT, KIND_EXIT = 1, 2, 3, 4

# --- records by hand --------------------------------------------------------------------------------


def header(kind, flags=0, cpu=3, ts=1_000_000_123, start=999_000, pid=4242, tid=4243, ppid=1, uid=1000,
           gid=100, comm=b"cat"):
    """The 64-byte header: ts u64, kind u16, flags u16, cpu u32, start u64, pid, tid, ppid, uid, gid, pad
    (u32 each), comm char[16]."""
    return (struct.pack("<QHHI", ts, kind, flags, cpu) + struct.pack("<Q", start)
            + struct.pack("<IIIIII", pid, tid, ppid, uid, gid, 0) + comm.ljust(16, b"\0"))


# The record values header() gives by default, as the record classes name them.
COMMON = dict(ts_ns=1_000_000_123, header_flags=0, cpu=3, start_ns=999_000, pid=4242, tid=4243, ppid=1,
              uid=1000, gid=100, comm=b"cat")


def exec_bytes(filename=b"/bin/ls", args=b"ls\0-l\0/tmp\0", args_total=None, flags=0, pad=b"", **hdr):
    """exec: u32 filename_len, u32 args_len, u32 args_total, u32 pad, filename, args."""
    total = len(args) if args_total is None else args_total
    return (header(KIND_EXEC, flags, **hdr) + struct.pack("<IIII", len(filename), len(args), total, 0)
            + filename + args + pad)


def open_bytes(path=b"/etc/passwd", ret=3, dfd=-100, oflags=0o2000000, mode=0o644, syscall=0, flags=0, pad=b"",
               **hdr):
    """open: i32 ret, i32 dfd, u64 flags, u32 mode, u32 path_len, u32 syscall, u32 pad, path."""
    return (header(KIND_OPEN, flags, **hdr) + struct.pack("<iiQIIII", ret, dfd, oflags, mode, len(path), syscall, 0)
            + path + pad)


def connect_bytes(addr=b"\x02\x00\x1f\x90\x7f\x00\x00\x01" + bytes(8), addrlen=16, ret=-111, fd=5, flags=0,
                  **hdr):
    """connect: i32 ret, i32 fd, u32 addrlen, u32 addr_len, addr."""
    return header(KIND_CONNECT, flags, **hdr) + struct.pack("<iiII", ret, fd, addrlen, len(addr)) + addr


def exit_bytes(code=0x0300, **hdr):
    """exit: i32 exit_code, u32 pad."""
    return header(KIND_EXIT, **hdr) + struct.pack("<iI", code, 0)


# --- records from the spec, for hypothesis ------------------------------------------------------------

def _int(t: spec.Int):
    bits = 8 * t.size
    return st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if t.signed else st.integers(0, (1 << bits) - 1)


def _values(kind: spec.Kind):
    fields = {}
    for w in kind.wire:
        if w.name == "kind" or w.name in kind.lengths:
            continue
        if isinstance(w.type, spec.Int):
            fields[w.name] = _int(w.type)
        elif isinstance(w.type, spec.Chars):
            fields[w.name] = st.binary(max_size=w.type.size)
        else:
            # most draws short (the interesting strings), some up to the limit
            fields[w.name] = st.one_of(st.binary(max_size=64), st.binary(max_size=w.type.max))
    return st.fixed_dictionaries(fields)


@st.composite
def record_values(draw, kinds=None):
    """(kind id, values by wire name) of a valid record of one of ``kinds`` (default: every kind)."""
    kind = draw(st.sampled_from(sorted(kinds or spec.KINDS)))
    return kind, draw(_values(spec.KINDS[kind]))


@st.composite
def records(draw, kinds=None):
    """The bytes of a valid record (built with the construct schema), padded like a ring-buffer sample."""
    from kestrel_raw.codec.schema import build_record

    kind, values = draw(record_values(kinds))
    return build_record(kind, **values) + draw(st.binary(max_size=16))


KIND_AT = 8  # the kind's offset in the header (u16)
# The fixed parts' sizes and the offsets of the length fields, by kind (the table, by hand).
FIXED = {KIND_EXEC: 80, KIND_OPEN: 96, KIND_CONNECT: 80, KIND_EXIT: 72}
LENGTH_FIELDS = {KIND_EXEC: (64, 68), KIND_OPEN: (84,), KIND_CONNECT: (76,), KIND_EXIT: ()}


def with_kind(kind: int, data: bytes) -> bytes:
    """``data`` (at least KIND_AT + 2 bytes long, else padded with zeros) with its kind field set."""
    data = data.ljust(KIND_AT + 2, b"\0")
    return data[:KIND_AT] + struct.pack("<H", kind) + data[KIND_AT + 2:]


# --- the CLI as a service sees it, and the servers it sends to (issue 18) -----------------------------
#
# Servers the tests start themselves on loopback ports, with private configuration and work directories:
# Debian's nats-server and rsyslogd.  Without them a test skips, except under CI (CI=true), where a
# missing server is a failure: .ci/run installs them.

import os as _os
import shutil as _shutil
import signal as _signal
import socket as _socket
import subprocess as _subprocess
import sys as _sys
import time as _time

REPO = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
CLI_ENV = dict(_os.environ, PYTHONPATH=REPO)


def need(tool: str, module: str | None = None) -> str | None:
    """The path of ``tool`` (and that ``module`` imports); skip the test without it, fail under CI."""
    import pytest

    path = _shutil.which(tool) or next((p for p in (f"/usr/sbin/{tool}", f"/usr/bin/{tool}")
                                        if _os.path.exists(p)), None)
    missing = None if path else f"{tool} is not installed"
    if module and not missing:
        try:
            __import__(module)
        except ImportError:
            missing = f"the Python module {module} is not installed"
    if missing:
        if _os.environ.get("CI") == "true":
            pytest.fail(f"{missing}; CI must install it (.ci/run)")
        pytest.skip(missing)
    return path


def free_port() -> int:
    with _socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = _time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if _time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        _time.sleep(interval)


class RunningCli:
    """``python -m kestrel_raw run ARGS`` in a child, stderr to a file."""

    def __init__(self, tmp_path, *args, name="cli", stdout=_subprocess.DEVNULL, env=None):
        self.err = tmp_path / f"{name}.stderr"
        self.proc = _subprocess.Popen([_sys.executable, "-m", "kestrel_raw", "run", *args], stdout=stdout,
                                      stderr=open(self.err, "wb"), env=env or CLI_ENV, cwd=REPO,
                                      stdin=_subprocess.DEVNULL)

    def stderr(self) -> str:
        return self.err.read_text()

    def wait_attached(self, timeout=60.0) -> None:
        wait_for(lambda: "attached" in self.stderr() or self.proc.poll() is not None, timeout, "attached")
        assert self.proc.poll() is None, f"the collector ended (rc {self.proc.returncode}): {self.stderr()}"

    def stop(self, sig=_signal.SIGTERM, timeout=60) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except _subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the collector did not stop within {timeout}s: {self.stderr()}")
        return self.proc.returncode, self.stderr()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def summary_counts(stderr: str) -> dict[str, int]:
    """The numbers of the collector's summary line: records, delivered (sum), kernel_lost, user_dropped."""
    import re

    m = re.search(r"records=(\d+) delivered\[([^\]]*)\] kernel_lost=(\d+) user_dropped=(\d+)", stderr)
    assert m, f"no summary line in: {stderr}"
    delivered = {k: int(v) for k, v in (kv.split("=") for kv in m.group(2).split())}
    return {"records": int(m.group(1)), "delivered": sum(delivered.values()), "kernel_lost": int(m.group(3)),
            "user_dropped": int(m.group(4)), **{f"delivered_{k}": v for k, v in delivered.items()}}


def open_storm(prefix: str, processes: int, opens: int) -> list[str]:
    """``processes`` children each opening ``opens`` distinct missing paths ``prefix-P-N`` as fast as they
    can; returns every path opened (each open is one event)."""
    script = ("import os, sys\np, n = sys.argv[1], int(sys.argv[2])\nfor i in range(n):\n"
              "    try:\n        os.open(f'{p}-{i}', os.O_RDONLY)\n    except OSError:\n        pass\n")
    procs = [_subprocess.Popen([_sys.executable, "-c", script, f"{prefix}-{k}", str(opens)])
             for k in range(processes)]
    for p in procs:
        assert p.wait(timeout=300) == 0
    return [f"{prefix}-{k}-{i}" for k in range(processes) for i in range(opens)]


class NatsCluster:
    """A cluster of ``n`` nats-server processes with JetStream on loopback ports, in ``root``."""

    def __init__(self, root, n: int = 3) -> None:
        self.binary = need("nats-server", "nats")
        self.root = root
        self.ports = [free_port() for _ in range(n)]
        self.cluster_ports = [free_port() for _ in range(n)]
        self.procs: list[_subprocess.Popen | None] = [None] * n
        for i in range(n):
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for j, p in enumerate(self.cluster_ports) if j != i)
            store = root / f"n{i}"
            store.mkdir(parents=True, exist_ok=True)
            cluster = (f"cluster {{ name: kr, listen: 127.0.0.1:{self.cluster_ports[i]}, routes: [{routes}] }}\n"
                       if n > 1 else "")
            (root / f"n{i}.conf").write_text(
                f"server_name: n{i}\nlisten: 127.0.0.1:{self.ports[i]}\n"
                f"jetstream {{ store_dir: \"{store}\", max_memory_store: 64MB, max_file_store: 2GB }}\n" + cluster)
        for i in range(n):
            self.start(i)

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{p}" for p in self.ports]

    def start(self, i: int) -> None:
        log = open(self.root / f"n{i}.log", "ab")
        self.procs[i] = _subprocess.Popen([self.binary, "-c", str(self.root / f"n{i}.conf")], stdout=log,
                                          stderr=log, stdin=_subprocess.DEVNULL)
        wait_for(lambda: _connects(self.ports[i]), 20, f"nats-server n{i} to listen")

    def kill(self, i: int) -> None:
        p = self.procs[i]
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()
        self.procs[i] = None

    def stop(self) -> None:
        for i in range(len(self.procs)):
            self.kill(i)


def _connects(port: int) -> bool:
    try:
        with _socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def nats_run(coro_fn, *args, timeout: float = 120):
    """Run ``coro_fn(nc, js, *args)`` against a cluster, in a fresh asyncio loop (tests are trio)."""
    import asyncio

    async def main(urls):
        import nats

        nc = await nats.connect(servers=urls, connect_timeout=2, max_reconnect_attempts=60,
                                reconnect_time_wait=0.5, error_cb=_quiet, disconnected_cb=_quiet0,
                                closed_cb=_quiet0)
        try:
            return await asyncio.wait_for(coro_fn(nc, nc.jetstream(), *args[1:]), timeout)
        finally:
            await nc.close()

    return asyncio.run(main(args[0]))


async def _quiet(_e=None):
    pass


async def _quiet0():
    pass


async def add_stream(nc, js, name: str, subjects: list[str], replicas: int):
    """Make the stream, retrying while the cluster elects its leaders."""
    import asyncio

    from nats.js.api import StreamConfig

    deadline = asyncio.get_running_loop().time() + 60
    while True:
        try:
            return await js.add_stream(StreamConfig(name=name, subjects=subjects, num_replicas=replicas,
                                                    duplicate_window=120.0))
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)


async def read_stream(nc, js, subject: str, idle: float = 3.0):
    """Every message the stream holds on ``subject``: [(headers, payload)], read with an ordered consumer
    until none comes for ``idle`` seconds."""
    import asyncio

    out = []
    deadline = asyncio.get_running_loop().time() + 60
    while True:  # a cluster that just lost a node may take a few seconds to make the consumer
        try:
            sub = await js.subscribe(subject, ordered_consumer=True)
            break
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(1)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=idle)
            except (asyncio.TimeoutError, Exception) as e:
                if type(e).__name__ in ("TimeoutError", "NatsTimeoutError"):
                    return out
                raise
            out.append((dict(msg.headers or {}), msg.data))
    finally:
        await sub.unsubscribe()


class Rsyslog:
    """Debian's rsyslogd in the foreground with a private config: UDP and TCP on loopback ports and a unix
    socket in ``root``, every message written to ``root/messages`` as ``PRI TIMESTAMP HOST APP PROCID
    MSGID MSG``."""

    def __init__(self, root) -> None:
        binary = need("rsyslogd")
        self.root = root
        self.udp, self.tcp = free_port(), free_port()
        self.socket = root / "log.sock"
        self.out = root / "messages"
        work = root / "work"
        work.mkdir()
        conf = root / "rsyslog.conf"
        conf.write_text(f'''
global(workDirectory="{work}" maxMessageSize="64k")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{self.socket}" UseSpecialParser="off" ParseHostname="on")
module(load="imudp")
input(type="imudp" address="127.0.0.1" port="{self.udp}")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{self.tcp}")
template(name="kr" type="string" string="%PRI% %TIMESTAMP:::date-rfc3339% %HOSTNAME% %APP-NAME% %PROCID% %MSGID% %msg%\\n")
*.* action(type="omfile" file="{self.out}" template="kr")
''')
        log = open(root / "rsyslogd.log", "wb")
        self.proc = _subprocess.Popen([binary, "-n", "-f", str(conf), "-i", str(root / "rsyslogd.pid")],
                                      stdout=log, stderr=log, stdin=_subprocess.DEVNULL)
        wait_for(lambda: _connects(self.tcp) and self.socket.exists(), 20, "rsyslogd to listen")

    def lines(self) -> list[str]:
        try:
            return self.out.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except _subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
