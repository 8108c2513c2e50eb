"""Issue 15 end to end, through the command line on the real kernel: each filter flag with an event that
matches and one that does not, both made by the test (the match delivered, the other not); excludes beating
includes; a --cgroup's cgroup made after the start picked up by the rescan; a SIGHUP with a changed config
file changing what is delivered with the same programs in the kernel (ids and tags unchanged) and a status
event saying so.

The collector watches the whole host, so each workload first makes its non-matching events, then its
matching one, from one process: a process's records go to one ring in order, so once the match is read the
earlier ones would have been read too.  The exact kernel counts (STAT_FILTERED) are tests/test_filter_kernel.py's.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from helpers import ENV, REPO, Cli, kernel_objects, program_tags

pytestmark = pytest.mark.kernel


def started(tmp_path, *args, name="c") -> Cli:
    """``kestrel-raw run ARGS --output FILE``, once its status event is written (the programs are attached
    and the filters in force: the status event is not filtered)."""
    c = Cli(tmp_path, *args, name=name)
    try:
        c.wait_for(lambda e: e.get("type") == "status", "the status event", timeout=60)
    except BaseException:
        c.kill()
        raise
    return c


def child(code: str, *args: str, executable: str = sys.executable, **kw) -> None:
    subprocess.run([executable, "-c", textwrap.dedent(code), *args], check=True, timeout=60, env=ENV, **kw)


def opens(c: Cli, path: str) -> list[dict]:
    return [e for e in c.events() if e.get("type") == "open" and e.get("path") == path]


def check(c: Cli, keep: str, drop: list[str]) -> None:
    """``keep`` delivered, and none of ``drop``: once ``keep`` is read the collector is stopped, which drains
    every ring to its end (a drop made by another process may sit in another ring)."""
    try:
        c.wait_for(lambda e: e.get("type") == "open" and e.get("path") == keep, f"the open of {keep}", timeout=20)
    finally:
        rc, err = c.stop()
    assert rc == 0, err
    for d in drop:
        assert opens(c, d) == [], d


@pytest.fixture
def tag():
    return uuid.uuid4().hex[:12]


TRY_OPEN = """
import os, sys
def try_open(p):
    try:
        os.close(os.open(p, os.O_RDONLY))
    except OSError:
        pass
"""


def test_comm(tmp_path, tag):
    keep, drop = f"/nonexistent-{tag}-keep", f"/nonexistent-{tag}-drop"
    c = started(tmp_path, "--events", "open", "--comm", f"krfm-{tag[:6]}")
    child(TRY_OPEN + f"""
import ctypes
libc = ctypes.CDLL(None)
libc.prctl(15, b"krfm-other", 0, 0, 0); try_open({drop!r})
libc.prctl(15, b"krfm-{tag[:6]}", 0, 0, 0); try_open({keep!r})
""")
    check(c, keep, [drop])


def test_uid(tmp_path, tag):
    keep, drop = f"/nonexistent-{tag}-keep", f"/nonexistent-{tag}-drop"
    c = started(tmp_path, "--events", "open", "--uid", "4242")
    child(TRY_OPEN + f"""
os.setresuid(4243, 0, 0); try_open({drop!r})
os.setresuid(4242, 0, 0); try_open({keep!r})
""")
    check(c, keep, [drop])


def test_pid_follows_a_grandchild_born_after_the_start(tmp_path, tag):
    keep, drop = f"/nonexistent-{tag}-keep", f"/nonexistent-{tag}-drop"
    # A parent started before the collector; its grandchild (python -> sh -> python) is born after the start.
    script = TRY_OPEN + f"try_open({keep!r})"
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys\nsys.stdin.readline()\n"
                               "subprocess.run(['/bin/sh', '-c', sys.executable + ' -c \"$0\"', sys.argv[1]], "
                               "check=True)", script], stdin=subprocess.PIPE, env=ENV)
    try:
        c = started(tmp_path, "--events", "open", "--pid", str(parent.pid))
        child(TRY_OPEN + f"try_open({drop!r})")  # the test's own child: not below --pid
        parent.stdin.write(b"go\n")
        parent.stdin.close()
        assert parent.wait(timeout=30) == 0
    finally:
        if parent.poll() is None:
            parent.kill()
    check(c, keep, [drop])
    (event,) = opens(c, keep)
    assert event["pid"] != parent.pid and event["comm"].startswith("python")


def test_exe(tmp_path, tag):
    keep, drop = f"/nonexistent-{tag}-keep", f"/nonexistent-{tag}-drop"
    cat = str(tmp_path / "krfm-cat")
    shutil.copy2("/bin/cat", cat)
    c = started(tmp_path, "--events", "open", "--exe", cat)
    subprocess.run(["/bin/cat", drop], stderr=subprocess.DEVNULL)
    subprocess.run([cat, keep], stderr=subprocess.DEVNULL)
    check(c, keep, [drop])


def test_path_prefix_and_an_exclude_beating_an_include(tmp_path, tag):
    root = os.path.realpath(tmp_path)
    for d in ("in/out", "else"):
        os.makedirs(os.path.join(root, d))
    keep, drop_out, drop_else = (os.path.join(root, p) for p in ("in/f", "in/out/f", "else/f"))
    for p in (keep, drop_out, drop_else):
        open(p, "w").close()
    c = started(tmp_path, "--events", "open", "--path-prefix", os.path.join(root, "in/"),
                "--exclude-path-prefix", os.path.join(root, "in/out/"))
    child(TRY_OPEN + f"try_open({drop_else!r}); try_open({drop_out!r}); try_open({keep!r})")
    check(c, keep, [drop_out, drop_else])


def test_failed_only_and_success_only(tmp_path, tag):
    root = os.path.realpath(tmp_path)
    exists, missing = os.path.join(root, "exists"), f"/nonexistent-{tag}"
    open(exists, "w").close()
    scope = ("--events", "open", "--path-prefix", root + "/", "--path-prefix", "/nonexistent-")
    c = started(tmp_path, *scope, "--failed-only")
    child(TRY_OPEN + f"try_open({exists!r}); try_open({missing!r})")
    check(c, missing, [exists])
    assert all(e["ret"] < 0 for e in c.events() if e.get("type") == "open")
    c = started(tmp_path, *scope, "--success-only", name="s")
    child(TRY_OPEN + f"try_open({missing!r}); try_open({exists!r})")
    check(c, exists, [missing])
    assert all(e["ret"] >= 0 for e in c.events() if e.get("type") == "open")


def _listener(host: str):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind((host, 0))
    s.listen(8)
    return s


CONNECT = """
import socket, sys
def connect(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.connect((host, port))
        except OSError:
            pass
"""


def _connects(c: Cli, host: str, port: int) -> list[dict]:
    return [e for e in c.events() if e.get("type") == "connect" and e.get("daddr") == host and e.get("dport") == port]


def check_connect(c: Cli, keep: tuple[str, int], drop: list[tuple[str, int]]) -> None:
    try:
        c.wait_for(lambda e: e.get("type") == "connect" and (e.get("daddr"), e.get("dport")) == keep,
                   f"the connect to {keep}", timeout=20)
    finally:
        rc, err = c.stop()
    assert rc == 0, err
    for host, port in drop:
        assert _connects(c, host, port) == [], (host, port)


def test_port(tmp_path):
    a, b = _listener("127.0.0.1"), _listener("127.0.0.1")
    with a, b:
        pa, pb = a.getsockname()[1], b.getsockname()[1]
        c = started(tmp_path, "--events", "connect", "--port", str(pa))
        child(CONNECT + f"connect('127.0.0.1', {pb}); connect('127.0.0.1', {pa})")
        check_connect(c, ("127.0.0.1", pa), [("127.0.0.1", pb)])


def test_daddr_v4_network_and_v6(tmp_path):
    a, b, six = _listener("127.0.0.2"), _listener("127.0.0.3"), _listener("::1")
    with a, b, six:
        pa, pb, p6 = a.getsockname()[1], b.getsockname()[1], six.getsockname()[1]
        c = started(tmp_path, "--events", "connect", "--daddr", "127.0.0.2/32", "--daddr", "::1")
        child(CONNECT + f"connect('127.0.0.3', {pb}); connect('::1', {p6}); connect('127.0.0.2', {pa})")
        check_connect(c, ("127.0.0.2", pa), [("127.0.0.3", pb)])
        assert _connects(c, "::1", p6) != []


@pytest.fixture
def cgroups():
    from kestrel_raw.context.cgroups import read_cgroup2_mount

    mount = read_cgroup2_mount().mount_point
    made = []

    def make(rel: str) -> str:
        path = os.path.join(mount, rel)
        os.makedirs(path)
        made.append(path)
        return path

    yield mount, make
    for path in reversed(made):
        for _ in range(50):
            try:
                os.rmdir(path)
                break
            except OSError:
                time.sleep(0.1)  # the processes it held are still being reaped


def _in_cgroup(path: str, code: str) -> str:
    return f"open({os.path.join(path, 'cgroup.procs')!r}, 'w').write(str(os.getpid()))\n" + code


def test_cgroup_and_one_made_below_it_after_the_start(tmp_path, tag, cgroups):
    mount, make = cgroups
    top = make(f"krfm-{tag}")
    keep, drop, later = f"/nonexistent-{tag}-keep", f"/nonexistent-{tag}-drop", f"/nonexistent-{tag}-later"
    c = started(tmp_path, "--events", "open", "--cgroup", top)
    below = make(f"krfm-{tag}/below")  # made after the start: known at the next rescan
    time.sleep(2.5)  # filtermaps.CGROUP_RESCAN_S is 1 s
    child(TRY_OPEN + f"try_open({drop!r})\n" + _in_cgroup(below, f"try_open({later!r})\n")
          + _in_cgroup(top, f"try_open({keep!r})\n"))
    check(c, keep, [drop])
    assert len(opens(c, later)) == 1


def test_container_id_any_and_none(tmp_path, tag, cgroups):
    mount, make = cgroups
    cid = tag + uuid.uuid4().hex + uuid.uuid4().hex[:20]
    assert len(cid) == 64
    box = make(f"krfm-{tag}/docker-{cid}.scope")
    keep, drop = f"/nonexistent-{tag}-keep", f"/nonexistent-{tag}-drop"
    c = started(tmp_path, "--events", "open", "--container", cid[:12])
    child(TRY_OPEN + f"try_open({drop!r})\n" + _in_cgroup(box, f"try_open({keep!r})\n"))
    check(c, keep, [drop])
    c = started(tmp_path, "--events", "open", "--exclude-container", "none", name="any")
    child(TRY_OPEN + f"try_open({drop!r})\n" + _in_cgroup(box, f"try_open({keep!r})\n"))
    check(c, keep, [drop])


def test_sighup_swaps_the_filters_with_the_same_programs(tmp_path, tag):
    root = os.path.realpath(tmp_path)
    a, b = os.path.join(root, "a/"), os.path.join(root, "b/")
    os.makedirs(a)
    os.makedirs(b)
    conf = tmp_path / "kr.toml"
    conf.write_text(f'events = ["open"]\npath-prefix = ["{a}"]\nkeep-privileges = true\n')
    c = started(tmp_path, "--config", str(conf))
    try:
        progs, tags = kernel_objects(c.proc.pid)["prog"], program_tags(c.proc.pid)
        child(TRY_OPEN + f"try_open({b + 'x1'!r}); try_open({a + 'x1'!r})")
        c.wait_for(lambda e: e.get("path") == a + "x1", "the open under a/")
        assert opens(c, b + "x1") == []
        conf.write_text(f'events = ["open"]\npath-prefix = ["{b}"]\nkeep-privileges = true\n')
        c.proc.send_signal(signal.SIGHUP)
        status = c.wait_for(lambda e: e.get("type") == "status" and e.get("reason") == "filters_changed",
                            "the status event of the change")[0]
        assert status["filters"] == {"path-prefix": [b]}
        child(TRY_OPEN + f"try_open({a + 'x2'!r}); try_open({b + 'x2'!r})")
        c.wait_for(lambda e: e.get("path") == b + "x2", "the open under b/")
        assert opens(c, a + "x2") == []
        assert kernel_objects(c.proc.pid)["prog"] == progs and program_tags(c.proc.pid) == tags
    finally:
        rc, err = c.stop()
    assert rc == 0, err
    assert f"SIGHUP: read {conf}: filters changed (path-prefix), in force now: " in err
    assert "takes effect at the next start" not in err


def test_rate_limit_delivers_about_the_rate_and_counts_the_rest_exactly(tmp_path, tag):
    import re

    name = f"krfm-rt{tag[:6]}"
    c = started(tmp_path, "--events", "open", "--comm", name, "--rate-limit", "open=10")
    t0 = time.monotonic()
    child(TRY_OPEN + f"""
import ctypes
ctypes.CDLL(None).prctl(15, {name.encode()!r}, 0, 0, 0)
for i in range(1000):
    try_open(f"/nonexistent-{tag}-{{i}}")
""")
    elapsed = time.monotonic() - t0
    rc, err = c.stop()
    assert rc == 0, err
    delivered = [e for e in c.events() if e.get("type") == "open" and e["path"].startswith(f"/nonexistent-{tag}-")]
    limited = int(re.search(r"\bopen\.rate_limited=(\d+)", err).group(1))
    # Every open either delivered or counted (the comm filter lets only the child's through to the bucket).
    assert len(delivered) + limited == 1000, (len(delivered), limited)
    # A bucket of 10 tokens, refilled at 10 a second while the child ran.
    assert 1 <= len(delivered) <= 10 + 10 * elapsed + 1, (len(delivered), elapsed)
