"""Who and where (issue 14) on the real kernel, end to end through `kestrel-raw run`: every event's login
session, terminal, effective ids, cgroup, namespaces, hostname, executable and working directory; fork
events and failed execs; the process cache (seeded processes, ancestors); the status event.

Each test makes a child do something the test knows exactly, tagged with a path no other process opens,
and compares the collector's event with what the kernel says of that child through /proc (read while the
child lives: helpers.identity_and_context).  The collector runs as the CLI does by default: privileges
dropped once attached (the process cache was seeded before).
"""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from helpers import Cli, identity_and_context, inherited, kernel_start_ns, program_tags, unshared, uts_nodename, veth_netns
from kestrel_raw.codec.event import entity_key

pytestmark = pytest.mark.kernel

PYTHON = os.path.realpath(sys.executable)


def start(tmp_path, *args, name="ctx") -> Cli:
    c = Cli(tmp_path, "--events", "exec,open,connect,exit,fork", *args, name=name)
    try:
        c.wait_attached(timeout=60)
    except BaseException:
        c.kill()
        raise
    return c


@pytest.fixture(scope="module")
def collector(tmp_path_factory):
    c = start(tmp_path_factory.mktemp("context"), "--ancestors", "2")
    yield c
    c.stop()


def marker() -> str:
    return f"/nonexistent-kestrel-ctx-{uuid.uuid4().hex}"


def opens_of(c: Cli, path: str, count: int = 1, timeout: float = 15.0) -> list[dict]:
    return c.wait_for(lambda e: e["type"] == "open" and e["path"] == path, f"the open of {path}", timeout, count)


def child(code: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """Run Python ``code`` in a child; its stdout, checked."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          check=True, timeout=60, **kwargs)


# --- the status event -----------------------------------------------------------------------------------

def test_the_first_line_is_the_status_event(collector):
    status = collector.events()[0]
    u = os.uname()
    assert status == {
        "type": "status", "event_type_id": 100, "ts_mono_ns": status["ts_mono_ns"],
        "ts_wall_ns": status["ts_wall_ns"], "source": "kestrel-raw", "hostname": u.nodename,
        # null where the host has no /etc/machine-id (the test guests' minimal root file systems)
        "machine_id": open("/etc/machine-id").read().strip() if os.path.exists("/etc/machine-id") else None,
        "boot_id": open("/proc/sys/kernel/random/boot_id").read().strip(), "kernel": u.release, "arch": u.machine,
        "cloud": None,  # DMI names no cloud provider here: nothing was asked over the network
        "programs": status["programs"], "reason": "start", "filters": {},
        # written before any event: nothing delivered, lost or filtered yet
        "counters": {"delivered": {}, "lost": {}, "filtered": {}, "parse_errors": 0}}
    assert 0 < status["ts_mono_ns"] <= time.monotonic_ns()
    # The digests of every program loaded: each tag is the one the kernel computed for the program it holds
    # (BPF_OBJ_GET_INFO_BY_FD of the collector's own fds), the SHA-256 as a pin file approves it.
    listed = {p["name"]: p for p in status["programs"]}
    assert len(listed) == len(status["programs"]) > 10 and "kr_exec" in listed
    in_kernel = program_tags(collector.proc.pid)
    assert {name[:15]: p["tag"] for name, p in listed.items()} == in_kernel
    assert all(len(p["sha256"]) == 64 for p in listed.values())
    assert [e["type"] for e in collector.events()].count("status") == 1


# --- login session, terminal, effective ids ---------------------------------------------------------------

def test_a_child_in_a_new_session_on_a_pty_shows_its_sessionid_and_tty(collector):
    path = marker()
    out = child("""
        import fcntl, os, pty, sys, termios
        master, slave = pty.openpty()
        pid = os.fork()
        if pid == 0:
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)          # the pty becomes the controlling terminal
            with open("/proc/self/loginuid", "w") as f:       # as pam_loginuid does: a new audit session
                f.write("4242")
            print(os.getpid(), os.ttyname(slave), open("/proc/self/sessionid").read(), flush=True)
            try:
                open(sys.argv[1])
            except OSError:
                pass
            os._exit(0)
        os.waitpid(pid, 0)
        """, path).stdout.split()
    pid, tty, sessionid = int(out[0]), out[1], int(out[2])
    assert tty.startswith("/dev/pts/") and sessionid != 4294967295
    (ev,) = opens_of(collector, path)
    assert (ev["pid"], ev["auid"], ev["sessionid"], ev["tty"]) == (pid, 4242, sessionid, tty[len("/dev/"):])
    # The parent, in this test's session, has neither.
    parent = [e for e in collector.events() if e["type"] == "fork" and e["pid"] == pid]
    assert parent and (parent[0]["auid"], parent[0]["sessionid"], parent[0]["tty"]) == (None, None, None)


def test_effective_ids_after_seteuid(collector):
    path = marker()
    out = child("""
        import os, sys
        os.setegid(1234)
        os.seteuid(4321)
        print(os.getpid(), flush=True)
        try:
            open(sys.argv[1])
        except OSError:
            pass
        """, path).stdout
    (ev,) = opens_of(collector, path)
    assert (ev["pid"], ev["uid"], ev["gid"], ev["euid"], ev["egid"]) == (int(out), 0, 0, 4321, 1234)


# --- working directory ---------------------------------------------------------------------------------------

def test_chdir_then_a_relative_open_shows_the_new_cwd(collector, tmp_path):
    a, b, c = (tmp_path / n for n in ("a", "b", "c"))
    for d in (a, b, c):
        d.mkdir()
    names = [f"kr-rel-{uuid.uuid4().hex}-{i}" for i in range(4)]
    out = child("""
        import ctypes, os, sys, threading
        def attempt(name):
            try:
                open(name)
            except OSError:
                pass
        os.chdir(sys.argv[1])
        attempt(sys.argv[4])
        fd = os.open(sys.argv[2], os.O_RDONLY | os.O_DIRECTORY)
        os.fchdir(fd)                                   # fchdir too
        attempt(sys.argv[5])
        def own_cwd():
            ctypes.CDLL(None, use_errno=True).unshare(0x200)   # CLONE_FS: this thread's own cwd from now on
            os.chdir(sys.argv[3])
            attempt(sys.argv[6])
        t = threading.Thread(target=own_cwd)
        t.start()
        t.join()
        attempt(sys.argv[7])                            # the process's cwd is still b
        print(os.getpid(), t.native_id, flush=True)
        """, str(a), str(b), str(c), *names).stdout.split()
    pid, thread = int(out[0]), int(out[1])
    evs = [opens_of(collector, n)[0] for n in names]
    assert [(e["pid"], e["path"], e["cwd"]) for e in evs] == [
        (pid, names[0], str(a)), (pid, names[1], str(b)), (pid, names[2], str(c)), (pid, names[3], str(b))]
    assert evs[2]["tid"] == thread and evs[3]["tid"] == pid


# --- executables: deleted, memfd -----------------------------------------------------------------------------

def test_an_exec_from_a_deleted_binary_and_from_a_memfd_is_flagged(collector, tmp_path):
    copy = tmp_path / "kr-cat"
    shutil.copy2("/bin/cat", copy)
    deleted_path, memfd_path = marker(), marker()
    out = child("""
        import os, sys
        fd = os.open(sys.argv[1], os.O_RDONLY)
        os.unlink(sys.argv[1])                          # the file is gone; the fd still names it
        mfd = os.memfd_create("kr-memcat", 0)
        os.write(mfd, open("/bin/cat", "rb").read())
        pids = []
        for exe, path in ((fd, sys.argv[2]), (mfd, sys.argv[3])):
            pid = os.fork()
            if pid == 0:
                os.execve(exe, ["kr-cat", path], {})    # fexecve: execveat(fd, "", AT_EMPTY_PATH)
            os.waitpid(pid, 0)
            pids.append(pid)
        print(*pids, flush=True)
        """, str(copy), deleted_path, memfd_path).stdout.split()
    deleted_pid, memfd_pid = map(int, out)
    (deleted,) = opens_of(collector, deleted_path)
    (memfd,) = opens_of(collector, memfd_path)
    assert (deleted["pid"], deleted["exe"], deleted["exe_deleted"], deleted["exe_memfd"]) == (
        deleted_pid, str(copy), True, False)
    # A memfd's file has no directory: its path is its name, as /proc/PID/exe shows it, unlinked from the start.
    assert (memfd["pid"], memfd["exe"], memfd["exe_deleted"], memfd["exe_memfd"]) == (
        memfd_pid, "/memfd:kr-memcat", True, True)
    # The exec events say the same.
    for ev, pid in ((deleted, deleted_pid), (memfd, memfd_pid)):
        (ex,) = [e for e in collector.events() if e["type"] == "exec" and e["pid"] == pid]
        assert (ex["exe"], ex["exe_deleted"], ex["exe_memfd"], ex["ret"]) == (
            ev["exe"], ev["exe_deleted"], ev["exe_memfd"], 0)


# --- cgroup ----------------------------------------------------------------------------------------------------

def test_a_process_in_a_new_cgroup_shows_its_path_and_id(collector):
    from kestrel_raw.context.cgroups import read_cgroup2_mount

    mount = read_cgroup2_mount().mount_point
    name = f"kr-ctx-test-{uuid.uuid4().hex[:12]}"
    cgroup = os.path.join(mount, name)
    os.mkdir(cgroup)
    path = marker()
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline(); "
                             "exec('try: open(sys.argv[1])\\nexcept OSError: pass')", path],
                            stdin=subprocess.PIPE, text=True)
    try:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write(str(proc.pid))
        with open(f"/proc/{proc.pid}/cgroup") as f:
            assert f"0::/{name}\n" in f.read()
        time.sleep(0.6)  # past the cgroup walk's rate limit: the first event from the new cgroup finds it
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0
        (ev,) = opens_of(collector, path)
        assert (ev["pid"], ev["cgroup_id"], ev["cgroup"], ev["container_id"]) == (
            proc.pid, os.stat(cgroup).st_ino, f"/{name}", None)
    finally:
        proc.kill()
        proc.wait()
        os.rmdir(cgroup)


# --- namespaces and hostname -------------------------------------------------------------------------------------

def test_new_pid_mnt_net_and_uts_namespaces_show_their_inodes_and_hostname(collector):
    path = marker()
    code = f"import time\ntry: open({path!r})\nexcept OSError: pass\ntime.sleep(600)"
    with unshared([sys.executable, "-c", code], pid=True, mnt=True, net=True, uts=True,
                  setup="hostname kr-uts-test") as ns_child:
        (ev,) = opens_of(collector, path)
        ours = {k: os.stat(f"/proc/self/ns/{k[:-2]}").st_ino for k in ("pidns", "mntns", "netns")}
        theirs = {k: os.stat(f"/proc/{ns_child.pid}/ns/{k[:-2]}").st_ino for k in ("pidns", "mntns", "netns")}
        assert all(theirs[k] != ours[k] for k in ours)
        assert {k: ev[k] for k in ours} == theirs
        assert ev["pid"] == ns_child.pid  # the host's view of the pid, not 1
        assert ev["hostname"] == uts_nodename(ns_child.pid) == "kr-uts-test"
    # this process's own events keep the host's
    assert collector.events()[0]["hostname"] == os.uname().nodename


def test_a_process_in_a_network_namespace_made_with_pyroute2(collector):
    path = marker()
    with veth_netns() as ns:
        proc = ns.popen([sys.executable, "-c", f"import os\ntry: open({path!r})\nexcept OSError: pass"])
        assert proc.wait(timeout=30) == 0
        (ev,) = opens_of(collector, path)
        assert ev["netns"] == ns.inode != os.stat("/proc/self/ns/net").st_ino


# --- fork events -------------------------------------------------------------------------------------------------

FORKER = """
import os, sys, threading
pids = []
for _ in range(3):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    pids.append(pid)
threads = [threading.Thread(target=lambda: None) for _ in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(os.getpid(), *pids, "|", *[t.native_id for t in threads], flush=True)
"""


def _forker() -> tuple[int, list[int], list[int]]:
    head, tids = child(FORKER).stdout.split("|")
    parent, *kids = map(int, head.split())
    return parent, kids, [int(t) for t in tids.split()]


def test_a_fork_event_for_each_new_child_none_for_threads(collector):
    parent, kids, tids = _forker()
    collector.wait_for(lambda e: e["type"] == "exit" and e["pid"] in kids, "the children's exits", count=3)
    (parent_exec,) = [e for e in collector.events() if e["type"] == "exec" and e["pid"] == parent]
    key = parent_exec["entity_key"]
    # (each fork record is in its child's ring: the events of the three may come in any order)
    forks = sorted((e for e in collector.events() if e["type"] == "fork" and e["ppid"] == parent),
                   key=lambda e: e["pid"])
    assert [(e["pid"], e["tid"], e["thread"], e["parent_entity_key"]) for e in forks] == [
        (kid, kid, False, key) for kid in sorted(kids)]
    # Each fork's entity_key is its child's: the key of the child's exit event.
    exits = {e["pid"]: e["entity_key"] for e in collector.events() if e["type"] == "exit" and e["pid"] in kids}
    assert [e["entity_key"] for e in forks] == [exits[k] for k in sorted(kids)]
    # The child starts with its parent's context.
    assert all((e["exe"], e["cwd"], e["comm"]) == (PYTHON, os.getcwd(), parent_exec["comm"]) for e in forks)
    # None for the threads: the one fork event with the parent's pid is its own creation, by this process.
    own = [e for e in collector.events() if e["type"] == "fork" and e["pid"] == parent]
    assert [(e["tid"], e["ppid"], e["thread"]) for e in own] == [(parent, os.getpid(), False)]
    assert not set(tids) & {e["tid"] for e in collector.events() if e["type"] == "fork"}


def test_threads_are_fork_events_with_threads(tmp_path):
    c = start(tmp_path, "--threads", name="threads")
    try:
        parent, kids, tids = _forker()
        # a thread's fork record: pid its process, tid the new thread, in the process's ring (in order)
        threads = c.wait_for(lambda e: e["type"] == "fork" and e["pid"] == parent and e["thread"], "the threads",
                             count=2)
        assert [(e["tid"], e["ppid"]) for e in threads] == [(t, os.getpid()) for t in tids]
        processes = c.wait_for(lambda e: e["type"] == "fork" and e["ppid"] == parent, "the children", count=3)
        assert sorted((e["pid"], e["thread"]) for e in processes) == [(k, False) for k in sorted(kids)]
    finally:
        c.stop()


# --- failed execs ------------------------------------------------------------------------------------------------

def test_a_failed_exec_is_an_exec_event_with_its_errno(collector, tmp_path):
    noexec = tmp_path / "kr-noexec"
    noexec.write_text("#!/bin/sh\n")
    garbage = tmp_path / "kr-garbage"
    garbage.write_bytes(b"\x7fELF not really")
    garbage.chmod(0o755)
    tag = uuid.uuid4().hex
    out = child("""
        import os, sys
        print(os.getpid(), flush=True)
        for path in sys.argv[1:4]:
            try:
                os.execv(path, [path, "--tag", sys.argv[4]])
            except OSError as e:
                print(e.errno, flush=True)
        """, f"/nonexistent-kr-{tag}/x", str(noexec), str(garbage), tag).stdout.split()
    pid, errnos = int(out[0]), [int(x) for x in out[1:]]
    assert errnos == [errno.ENOENT, errno.EACCES, errno.ENOEXEC]
    evs = collector.wait_for(lambda e: e["type"] == "exec" and e["pid"] == pid and e["ret"] < 0,
                             "the failed execs", count=3)
    paths = [f"/nonexistent-kr-{tag}/x", str(noexec), str(garbage)]
    assert [(e["filename"], e["argv"], e["ret"]) for e in evs] == [
        (p, [p, "--tag", tag], -n) for p, n in zip(paths, errnos)]
    caller = identity_and_context(os.getpid())  # the caller's identity: nothing was exec'd
    assert all((e["exe"], e["uid"], e["euid"], e["cwd"]) == (PYTHON, os.getuid(), os.geteuid(), caller["cwd"])
               for e in evs)


# --- exec: capabilities, ancestors, parent key ----------------------------------------------------------------------

def test_exec_events_carry_capabilities_and_ancestors(collector):
    proc = subprocess.Popen(["/bin/sleep", "30"])
    try:
        ev = collector.wait_for(lambda e: e["type"] == "exec" and e["pid"] == proc.pid, "the exec of sleep")[0]
        with open(f"/proc/{proc.pid}/status") as f:
            status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        assert (ev["caps_effective"], ev["caps_permitted"]) == (int(status["CapEff"], 16), int(status["CapPrm"], 16))
        assert ev["exe"] == os.path.realpath("/bin/sleep") and ev["ret"] == 0
        # Its context, as /proc shows it, and its parent: this process.
        assert {k: ev[k] for k in inherited()} == inherited(exe=os.path.realpath("/bin/sleep"))
        me = entity_key(os.getpid(), kernel_start_ns(os.getpid()))
        with open("/proc/self/cmdline", "rb") as f:
            argv = [a.decode() for a in f.read().split(b"\0")[:-1]]
        assert ev["ancestors"][0] == {"pid": os.getpid(), "entity_key": me, "exe": PYTHON, "argv": argv}
        assert len(ev["ancestors"]) == 2 and ev["ancestors"][1]["pid"] == os.getppid()
    finally:
        proc.kill()
        proc.wait()


# --- the process cache: seeded at start ------------------------------------------------------------------------------

async def test_a_process_started_before_the_collector_is_in_its_cache(tmp_path):
    """Started before the collector: its exe, argv and cwd come from /proc at start (the seed) and its key
    from the kernel's start time, so the cache holds it under its events' key, its later events carry it,
    and its children have it as their ancestor."""
    import trio

    from kestrel_raw import CollectorConfig, KestrelCollector

    work = tmp_path / "work dir"
    work.mkdir()
    path = marker()
    code = ("import os, sys\nprint('ready', flush=True)\nsys.stdin.readline()\n"
            f"try: open({path!r})\nexcept OSError: pass\nos.system('/bin/true seeded-child')")
    argv = [sys.executable, "-c", code, "seeded-arg"]
    proc = subprocess.Popen(argv, cwd=work, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        key = entity_key(proc.pid, kernel_start_ns(proc.pid))
        send, recv = trio.open_memory_channel(100_000)
        c = KestrelCollector(send, CollectorConfig(event_types=["exec", "open", "fork"], ancestors=1,
                                                   deliver="events"))
        async with trio.open_nursery() as nursery:
            await nursery.start(c.start)
            seeded = c._context.table.get(key)
            assert seeded is not None and c._context.seeded.exact
            assert (seeded.pid, seeded.exe, seeded.argv, seeded.cwd, seeded.exe_deleted) == (
                proc.pid, PYTHON, tuple(argv), str(work), False)
            assert seeded.parent_key == entity_key(os.getpid(), kernel_start_ns(os.getpid()))
            assert c.host_identity().hostname == os.uname().nodename  # the library's access to the status
            proc.stdin.write("\n")
            proc.stdin.flush()
            await trio.to_thread.run_sync(proc.wait)
            opened = sh_fork = None
            with trio.fail_after(15):
                async for ev in recv:
                    if ev.get("path") == path:
                        opened = ev
                    if ev.event_type.label == "fork" and ev["ppid"] == proc.pid:
                        sh_fork = ev
                    if opened and sh_fork:
                        break
            c.stop()
        assert (opened.entity_key, opened["exe"], opened["cwd"]) == (key, PYTHON, str(work))
        # os.system's shell, forked by the seeded process: its ancestor is the seeded process, from the seed
        assert sh_fork["ancestors"] == [{"pid": proc.pid, "entity_key": key, "exe": PYTHON, "argv": argv}]
    finally:
        proc.kill()
        proc.wait()


async def test_a_failed_exec_whose_entry_was_not_seen_is_read_at_its_exit(monkeypatch, tmp_path):
    """The exit's fallback (an exec that began before the collector attached, or whose slot another thread
    took): with the entry programs left out, every failed exec is read again at its exit, the same, flagged
    late_read."""
    import trio

    from kestrel_raw import CollectorConfig, KestrelCollector, programs

    specs = dict(programs.SPECS)
    specs[1] = tuple(s for s in specs[1] if not s.name.endswith("_e"))
    monkeypatch.setattr(programs, "SPECS", specs)
    send, recv = trio.open_memory_channel(100_000)
    c = KestrelCollector(send, CollectorConfig(event_types=["exec"], status=False))
    tag = uuid.uuid4().hex
    async with trio.open_nursery() as nursery:
        await nursery.start(c.start)
        assert "kr_execve_e" not in [s.name for s, _ in c._programs]
        out = await trio.to_thread.run_sync(lambda: child("""
            import os, sys
            print(os.getpid(), flush=True)
            try:
                os.execv(sys.argv[1], [sys.argv[1], "late", sys.argv[2]])
            except OSError as e:
                print(e.errno, flush=True)
            """, f"/nonexistent-kr-{tag}", tag).stdout.split())
        with trio.fail_after(15):
            async for ev in recv:
                if ev["pid"] == int(out[0]) and ev["ret"] < 0:
                    break
        c.stop()
    assert int(out[1]) == errno.ENOENT
    assert (ev["filename"], ev["argv"], ev["ret"], ev["late_read"], ev["fault"]) == (
        f"/nonexistent-kr-{tag}", (f"/nonexistent-kr-{tag}", "late", tag), -errno.ENOENT, True, False)
