"""End to end on the real kernel: `kestrel-raw run` in a subprocess, the test does the thing in children,
and finds exactly those events with exactly those field values in the JSON lines.

The collector never reports its own process, so every action here runs in a child process of the test,
never in the test process itself (which is not the collector, but the children's parent: ppid checks).
"""
from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest
from pyroute2 import IPRoute, NetNS, netns

from helpers import Collector, inherited

pytestmark = pytest.mark.kernel

NOBODY = 65534


@pytest.fixture
def collector(tmp_path):
    c = Collector(tmp_path)
    yield c
    c.stop()


COMMON_KEYS = {"type", "event_type_id", "ts_mono_ns", "ts_wall_ns", "entity_key", "pid", "tid", "ppid", "uid",
               "gid", "comm", "source"}


def _check_common(ev, *, type_, pid, ppid, comm, uid=0, gid=0):
    assert ev["type"] == type_
    assert ev["event_type_id"] == {"exec": 1, "open": 2, "connect": 3, "exit": 4}[type_]
    assert ev["pid"] == pid
    assert ev["ppid"] == ppid
    assert ev["comm"] == comm
    assert (ev["uid"], ev["gid"]) == (uid, gid)
    assert ev["source"] == "ebpf"
    assert abs(ev["ts_wall_ns"] - time.time_ns()) < 60e9
    assert COMMON_KEYS <= ev.keys()


def test_exec_event_with_argv(collector):
    tag = uuid.uuid4().hex
    argv = ["kr-true", f"tag-{tag}", "two words", ""]
    child = subprocess.Popen(argv, executable="/bin/true")
    child.wait()
    (ev,) = collector.wait_for(lambda e: e["type"] == "exec" and f"tag-{tag}" in e.get("argv", []), "exec")
    _check_common(ev, type_="exec", pid=child.pid, ppid=os.getpid(), comm="true")
    assert ev["tid"] == child.pid
    assert ev["filename"] == "/bin/true"
    assert ev["argv"] == argv
    assert ev["truncated"] is False
    # The exit of the same process carries the same entity key.
    (ex,) = collector.wait_for(lambda e: e["type"] == "exit" and e["pid"] == child.pid, "exit of exec'd child")
    assert ex["entity_key"] == ev["entity_key"]


def test_exec_argv_past_4096_bytes_is_truncated(collector):
    tag = uuid.uuid4().hex
    argv = ["kr-true", f"tag-{tag}"] + ["x" * 1000] * 6
    child = subprocess.Popen(argv, executable="/bin/true")
    child.wait()
    (ev,) = collector.wait_for(lambda e: e["type"] == "exec" and e["pid"] == child.pid, "exec")
    assert ev["truncated"] is True
    kept = (b"\0".join(a.encode() for a in argv) + b"\0")[:4096]
    parts = kept.split(b"\0")
    if kept.endswith(b"\0"):
        parts.pop()
    assert ev["argv"] == [p.decode() for p in parts]


def test_open_event_exact(collector):
    path = f"/tmp/kestrel-open-{uuid.uuid4().hex}"
    code = f"import os; fd = os.open({path!r}, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640); print(fd)"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    fd = int(child.stdout)
    evs = collector.wait_for(lambda e: e["type"] == "open" and e["path"] == path, "open")
    assert len(evs) == 1
    (ev,) = evs
    _check_common(ev, type_="open", pid=ev["pid"], ppid=os.getpid(), comm=os.path.basename(sys.executable)[:15])
    # Python opens every fd non-inheritable, with O_CLOEXEC.
    assert ev["flags"] == os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    assert ev["mode"] == 0o640
    assert ev["ret"] == fd
    os.unlink(path)


def test_open_failure_reports_errno(collector):
    path = f"/tmp/kestrel-missing-{uuid.uuid4().hex}/x"
    subprocess.run(["/bin/cat", path], stderr=subprocess.DEVNULL)
    (ev,) = collector.wait_for(lambda e: e["type"] == "open" and e["path"] == path, "failed open")
    assert ev["ret"] == -errno.ENOENT
    assert ev["comm"] == "cat"


def test_open_by_child_that_changed_uid(collector):
    path = f"/tmp/kestrel-uid-{uuid.uuid4().hex}"
    code = (f"import os\nos.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})\n"
            f"try:\n  os.open({path!r}, os.O_RDONLY)\nexcept FileNotFoundError: pass")
    subprocess.run([sys.executable, "-c", code], check=True)
    (ev,) = collector.wait_for(lambda e: e["type"] == "open" and e["path"] == path, "open as nobody")
    assert (ev["uid"], ev["gid"]) == (NOBODY, NOBODY)
    assert ev["ppid"] == os.getpid()
    assert ev["ret"] == -errno.ENOENT


def _connect_child(family, addr):
    code = (
        "import socket, sys\n"
        f"s = socket.socket({int(family)}, socket.SOCK_STREAM)\n"
        f"try:\n  s.connect({addr!r}); print(0)\nexcept OSError as e: print(-e.errno)\n"
        "print(__import__('os').getpid())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), int(out[1])


def test_connect_refused_ipv4(collector):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connect is refused
        ret, pid = _connect_child(socket.AF_INET, ("127.0.0.1", port))
    assert ret == -errno.ECONNREFUSED
    (ev,) = collector.wait_for(lambda e: e["type"] == "connect" and e["pid"] == pid, "connect v4")
    assert (ev["family"], ev["daddr"], ev["dport"], ev["ret"]) == ("AF_INET", "127.0.0.1", port, -errno.ECONNREFUSED)
    assert ev["ppid"] == os.getpid()


def test_connect_ipv6_listening(collector):
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as srv:
        srv.bind(("::1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        ret, pid = _connect_child(socket.AF_INET6, ("::1", port))
    assert ret == 0
    (ev,) = collector.wait_for(lambda e: e["type"] == "connect" and e["pid"] == pid, "connect v6")
    assert (ev["family"], ev["daddr"], ev["dport"], ev["ret"]) == ("AF_INET6", "::1", port, 0)


@contextlib.contextmanager
def in_netns(name: str):
    """This thread in network namespace ``name`` (a socket made here stays in it; a child forked here starts
    in it), back in its own after."""
    netns.pushns(name)
    try:
        yield
    finally:
        netns.popns()


@pytest.fixture
def netns_pair():
    """Two network namespaces joined by a veth pair, its ends up with 10.213.7.1/24 and 10.213.7.2/24:
    yields ((namespace, address), (namespace, address)).  Made with pyroute2; whatever was made is
    removed afterwards, also when a step fails (a veth end still in this namespace is deleted too)."""
    tag = uuid.uuid4().hex[:8]
    ends = [(f"kr-{tag}-a", f"kr{tag}a", "10.213.7.1"), (f"kr-{tag}-b", f"kr{tag}b", "10.213.7.2")]
    made = []
    try:
        for name, _ifname, _addr in ends:
            netns.create(name)
            made.append(name)
        with IPRoute() as ipr:
            ipr.link("add", ifname=ends[0][1], kind="veth", peer=ends[1][1])
            for name, ifname, _addr in ends:
                ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], net_ns_fd=name)
        for name, ifname, addr in ends:
            ns = NetNS(name)
            try:
                index = ns.link_lookup(ifname=ifname)[0]
                ns.addr("add", index=index, address=addr, prefixlen=24)
                ns.link("set", index=index, state="up")
            finally:
                ns.close()
        yield [(name, addr) for name, _ifname, addr in ends]
    finally:
        for name in made:
            netns.remove(name)
        with IPRoute() as ipr:
            for _name, ifname, _addr in ends:
                for index in ipr.link_lookup(ifname=ifname):
                    ipr.link("del", index=index)
        assert not {name for name, _i, _a in ends} & set(netns.listnetns())


def test_connect_across_network_namespaces(collector, netns_pair):
    # A listener in one namespace, a child in the other connects to it over the veth pair: the event
    # carries the peer's address and port, and ret 0.
    (ns_a, addr_a), (ns_b, addr_b) = netns_pair
    with in_netns(ns_a):
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with srv:
        srv.bind((addr_a, 0))
        srv.listen()
        port = srv.getsockname()[1]
        code = ("import os, socket\n"
                "s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n"
                f"s.connect(({addr_a!r}, {port}))\n"
                "print(os.getpid(), os.stat('/proc/self/ns/net').st_ino)\n")
        with in_netns(ns_b):
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        pid, child_netns = map(int, out.split())
        conn, peer = srv.accept()
        conn.close()
    # The child ran in the other namespace, and its connection came over the veth pair, from that end.
    assert child_netns == os.stat(os.path.join(netns.NETNS_RUN_DIR, ns_b)).st_ino
    assert child_netns != os.stat("/proc/self/ns/net").st_ino
    assert peer[0] == addr_b
    (ev,) = collector.wait_for(lambda e: e["type"] == "connect" and e["pid"] == pid, "connect across namespaces")
    varying = ("ts_mono_ns", "ts_wall_ns", "entity_key", "cpu")
    assert set(varying) <= ev.keys() and 0 <= ev["cpu"] < os.cpu_count()
    assert {k: v for k, v in ev.items() if k not in varying} == {
        "type": "connect", "event_type_id": 3, "pid": pid, "tid": pid, "ppid": os.getpid(), "uid": os.getuid(),
        "gid": os.getgid(), "comm": os.path.basename(sys.executable)[:15], "source": "ebpf",
        "family": "AF_INET", "daddr": addr_a, "dport": port, "ret": 0, "fault": False, "toctou": False,
        "late_read": False,
        # the child's context: this process's, but for its own exe and the other network namespace
        **inherited(exe=os.path.realpath(sys.executable), netns=child_netns)}


def test_connect_unix(collector, tmp_path):
    path = str(tmp_path / "sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        srv.bind(path)
        srv.listen()
        ret, pid = _connect_child(socket.AF_UNIX, path)
    assert ret == 0
    (ev,) = collector.wait_for(lambda e: e["type"] == "connect" and e["pid"] == pid, "connect unix")
    assert (ev["family"], ev["daddr"], ev["dport"], ev["ret"]) == ("AF_UNIX", path, 0, 0)


def test_exit_code_and_signal(collector):
    seven = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(7)"])
    seven.wait()
    killed = subprocess.Popen(["/bin/sleep", "30"])
    time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    (e7,) = collector.wait_for(lambda e: e["type"] == "exit" and e["pid"] == seven.pid, "exit 7")
    assert (e7["exit_code"], e7["signal"]) == (7, 0)
    assert e7["ppid"] == os.getpid()
    (ek,) = collector.wait_for(lambda e: e["type"] == "exit" and e["pid"] == killed.pid, "SIGKILL")
    assert (ek["exit_code"], ek["signal"]) == (0, signal.SIGKILL)
    assert ek["comm"] == "sleep"


def test_thread_exit_is_not_a_process_exit(collector):
    code = "import threading; t = threading.Thread(target=lambda: None); t.start(); t.join(); import os; print(os.getpid())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    pid = int(out.stdout)
    evs = collector.wait_for(lambda e: e["type"] == "exit" and e["pid"] == pid, "process exit")
    time.sleep(0.3)
    evs = [e for e in collector.events() if e["type"] == "exit" and e["pid"] == pid]
    assert len(evs) == 1
    # tid is the group's last thread to die: the main thread, or the worker if its OS thread outlived
    # join() (Python's join returns before the thread has fully exited).
    assert evs[0]["exit_code"] == 0


def test_sigterm_stops_cleanly_with_summary(tmp_path):
    c = Collector(tmp_path)
    rc, err = c.stop()
    assert rc == 0, err
    assert "Traceback" not in err
    assert "kestrel-raw: records=" in err
