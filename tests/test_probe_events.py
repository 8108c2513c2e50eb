"""shell_command and dns_query on the real kernel (uprobes: kestrel_raw/programs/shell.py, dns.py), through the
CLI's JSON lines: a command line typed into an interactive bash on a pty, getaddrinfo of a name the test puts
in /etc/hosts (and the connect to the address it gave, joined by address), a failed, a NULL and a too-long
lookup; the check after attaching runs every uprobe program and leaves nothing of its bash.  (After stop, no
breakpoint is left: tests/test_probe_detach.py, where no collector of this module is attached.)"""
from __future__ import annotations

import fcntl
import json
import os
import pty
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
import trio

from kestrel_raw import CollectorConfig, KestrelCollector, programs, spec
from kestrel_raw.programs.shell import MAP_CHECK

from helpers import Collector, inherited

# The comm of a child run as sys.executable: "python3" or "python" (CI runs the suite as `python -m pytest`)
PYTHON_COMM = os.path.basename(sys.executable)[:15]

pytestmark = pytest.mark.kernel

HOSTS = "/etc/hosts"


@pytest.fixture(scope="module")
def collector(tmp_path_factory):
    c = Collector(tmp_path_factory.mktemp("probes"), events="open,connect,shell_command,dns_query")
    yield c
    rc, err = c.stop()
    assert rc == 0, err


def common(pid: int, comm: str, **changed) -> dict:
    """The header's values an event of child ``pid`` of this test carries (cpu and the rest excepted), and
    its context: this process's, as the child inherited it, but ``changed``."""
    return {"pid": pid, "tid": pid, "ppid": os.getpid(), "uid": os.getuid(), "gid": os.getgid(), "comm": comm,
            "source": "ebpf", **inherited(**changed)}


def own_fields(event: dict) -> dict:
    return {k: v for k, v in event.items() if k not in ("ts_mono_ns", "ts_wall_ns", "entity_key", "cpu")}


class Pty:
    """A program on a pseudo-terminal, its output drained (an undrained pty blocks the writer's echo)."""

    def __init__(self, argv: list[str], env: dict) -> None:
        master, slave = pty.openpty()
        self.tty = os.ttyname(slave)[len("/dev/"):]  # "pts/N", as the events name it
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                                     env=env, cwd="/")
        os.close(slave)
        self.master = master
        self.output = bytearray()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            self.output += data

    def type(self, text: bytes) -> None:
        os.write(self.master, text)

    def wait_output(self, what: bytes, count: int = 1, timeout: float = 30.0) -> None:
        """Until the program has written ``what`` ``count`` times (a prompt: then it reads the next line)."""
        deadline = time.monotonic() + timeout
        while bytes(self.output).count(what) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what!r} not written {count} times in {timeout} s: {bytes(self.output)[-200:]!r}")
            time.sleep(0.01)

    def close(self) -> int:
        try:
            rc = self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._reader.join(timeout=5)
            os.close(self.master)
        return rc


PROMPT = b"kr-prompt$ "


def bash_i() -> Pty:
    return Pty(["bash", "--norc", "--noprofile", "-i"],
               {"PATH": "/usr/bin:/bin", "TERM": "dumb", "PS1": PROMPT.decode(), "HISTFILE": "/dev/null"})


def test_shell_command_is_the_line_an_interactive_bash_read(collector):
    marker = f"kr-shell-{uuid.uuid4().hex}"
    long_line = "echo " + "x" * 5000
    shell = bash_i()
    # Each line typed at its prompt, as a person types: bash is then in readline, the terminal in raw mode
    # (a line typed earlier would meet the terminal's canonical mode and its 4096-byte line limit).
    lines = [f"echo {marker}", "", long_line, "exit 3"]   # "": read, but nothing to report
    for n, line in enumerate(lines, 1):
        shell.wait_output(PROMPT, n)
        shell.type(line.encode() + b"\n")
    assert shell.close() == 3
    assert marker.encode() in shell.output
    pid = shell.proc.pid
    collector.wait_for(lambda e: e["type"] == "shell_command" and e["pid"] == pid and e["command"] == "exit 3",
                       "the last line of the interactive bash", timeout=30)
    got = [e for e in collector.events() if e["type"] == "shell_command" and e["pid"] == pid]
    assert [list(e) for e in got] == [spec.json_keys(spec.SHELL_COMMAND)] * 3, [(e["command"][:40], e["fault"], e["truncated"]) for e in got]
    base = {"type": "shell_command", "event_type_id": 50,
            **common(pid, "bash", exe=os.path.realpath(shutil.which("bash", path="/usr/bin:/bin")), cwd="/",
                     tty=shell.tty)}
    assert [own_fields(e) for e in got] == [
        {**base, "command": f"echo {marker}", "truncated": False, "fault": False},
        {**base, "command": long_line[:spec.MAX_COMMAND], "truncated": True, "fault": False},
        {**base, "command": "exit 3", "truncated": False, "fault": False},
    ]


class HostsEntry:
    """Lines added to /etc/hosts for the test, and removed after (under a lock: others may edit it too)."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = [line + "\n" for line in lines]

    def __enter__(self) -> "HostsEntry":
        with open(HOSTS, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.writelines(self.lines)
        return self

    def __exit__(self, *exc) -> None:
        with open(HOSTS, "r+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            kept = [line for line in f.readlines() if line not in self.lines]
            f.seek(0)
            f.writelines(kept)
            f.truncate()


LOOKUP = """
import json, os, socket, sys
name = sys.argv[1]
res = socket.getaddrinfo(name, "443")
print(json.dumps({"pid": os.getpid(), "res": [[int(f), int(t), a[0]] for f, t, _, _, a in res]}), flush=True)
s = socket.socket(res[0][0], socket.SOCK_STREAM)
try:
    s.connect(res[0][4])
except OSError:
    pass
"""


def test_dns_query_of_a_name_in_etc_hosts_and_the_connect_it_led_to(collector):
    name = f"kr-dns-{uuid.uuid4().hex[:16]}.test"
    with HostsEntry([f"127.88.7.1 {name}", f"127.88.7.2 {name}", f"::1 {name}"]):
        child = subprocess.run([sys.executable, "-c", LOOKUP, name], capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    out = json.loads(child.stdout)
    pid, entries = out["pid"], out["res"]
    # The answer has each address once per socket type, in the same order for each: the program keeps the
    # entries of the first one's type.
    expected = [addr for _family, socktype, addr in entries if socktype == entries[0][1]]
    assert sorted(expected) == ["127.88.7.1", "127.88.7.2", "::1"]
    first = entries[0][2]
    (query,) = collector.wait_for(lambda e: e["type"] == "dns_query" and e["pid"] == pid, "the dns_query")
    assert list(query) == spec.json_keys(spec.DNS_QUERY)
    duration = query.pop("duration_ns")
    assert own_fields(query) == {
        "type": "dns_query", "event_type_id": 51, **common(pid, PYTHON_COMM), "query": name, "service": "443",
        "family": "AF_UNSPEC", "ret": 0, "addresses": expected, "truncated": False, "fault": False}
    assert 0 < duration < 30 * 10**9
    # The join the event is for: the connect's destination is among the addresses the name resolved to,
    # asked for before it (one thread, one ring: in order).  glibc's getaddrinfo itself connects a UDP
    # socket to each answer, to sort them by source address (RFC 3484): those connects come before its
    # return, where the record is made; the child's own connect comes after.
    after = collector.wait_for(lambda e: e["type"] == "connect" and e["pid"] == pid and e["daddr"] == first
                               and e["ts_mono_ns"] > query["ts_mono_ns"], "the child's connect")
    assert len(after) == 1 and after[0]["daddr"] in query["addresses"]
    inside = [e for e in collector.events() if e["type"] == "connect" and e["pid"] == pid
              and e["ts_mono_ns"] < query["ts_mono_ns"]]
    assert all(e["ts_mono_ns"] > query["ts_mono_ns"] - duration for e in inside)


FAILED_NULL_LONG = """
import os, socket
print(os.getpid(), flush=True)
for host, service, family, flags in ((b"not an address", None, 0, socket.AI_NUMERICHOST),
                                     (None, "80", socket.AF_INET, socket.AI_PASSIVE),
                                     (b"y" * 300, None, 0, socket.AI_NUMERICHOST)):
    try:
        socket.getaddrinfo(host, service, family, socket.SOCK_STREAM, 0, flags)
    except socket.gaierror as e:
        print(e.errno, flush=True)
"""


def test_dns_query_failed_null_and_too_long(collector):
    child = subprocess.run([sys.executable, "-c", FAILED_NULL_LONG], capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    pid, *errors = (int(x) for x in child.stdout.split())
    assert errors == [socket.EAI_NONAME, socket.EAI_NONAME]
    got = collector.wait_for(lambda e: e["type"] == "dns_query" and e["pid"] == pid, "the lookups")
    deadline = time.monotonic() + 10
    while len(got) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
        got = [e for e in collector.events() if e["type"] == "dns_query" and e["pid"] == pid]
    base = {"type": "dns_query", "event_type_id": 51, **common(pid, PYTHON_COMM), "fault": False}
    assert [{k: v for k, v in own_fields(e).items() if k != "duration_ns"} for e in got] == [
        {**base, "query": "not an address", "service": None, "family": "AF_UNSPEC", "ret": socket.EAI_NONAME,
         "addresses": [], "truncated": False},
        {**base, "query": None, "service": "80", "family": "AF_INET", "ret": 0, "addresses": ["0.0.0.0"],
         "truncated": False},
        {**base, "query": "y" * spec.MAX_QUERY, "service": None, "family": "AF_UNSPEC", "ret": socket.EAI_NONAME,
         "addresses": [], "truncated": True},
    ]


# -- the check after attaching, and the detach ----------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


async def test_the_check_runs_every_uprobe_program_and_leaves_nothing_of_its_bash():
    send, _recv = trio.open_memory_channel(100_000)
    # context=False: the process cache's programs (exec, fork, exit, proc) would be checked too
    c = KestrelCollector(send, CollectorConfig(event_types=["shell_command", "dns_query"], buffers=1, context=False))
    c.load()
    check = c._shell_check.pid
    assert _alive(check)
    async with trio.open_nursery() as nursery:
        await nursery.start(c.start)
        runs = c._maps[programs.MAP_SELF_RUNS]
        ran = {spec_.name: runs.sum_u64(i) for i, (spec_, _prog) in enumerate(c._programs)}
        assert c._maps[MAP_CHECK][0] == bytes(4)          # the pid forgotten before it was reaped
        assert c._maps[programs.MAP_FILTER].get(check.to_bytes(4, "little")) is None
        assert not _alive(check) and c._shell_check is None
        c.stop()
    assert c.reattached == []
    assert set(ran) == {"kr_shell", "kr_dns_call", "kr_dns_ret"} and all(n >= 1 for n in ran.values()), ran
