"""Faults (issue 4 item 4): kill -9 leaves nothing in the kernel, a closed output pipe and a full disk end the
collector cleanly with its programs detached, and two collectors run at once without reporting each other.

The collector's own kernel objects are found through its fds (/proc/PID/fd and pidfd_getfd(2)), not by
name: other tools (a benchmark, bpftrace) may load programs on this machine while the tests run.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

from kestrel_raw.collector import KestrelCollector
from kestrel_raw.config import CollectorConfig, default_buffers
from kestrel_raw.programs import filtermaps as fm
from kestrel_raw.maps import HashMap

from helpers import BPFTOOL, ENV, REPO, Cli, kernel_objects, live_objects, wait_gone

@pytest.fixture
def clis():
    started = []
    yield started
    for c in started:
        c.kill()


def summary_peers(stderr: str) -> set[int]:
    """The tgids of the other collectors, from the summary line (another collector, a benchmark's, may
    run on this machine too)."""
    return {int(p) for p in re.search(r" peers\[([\d ]*)\]$", stderr, re.M).group(1).split()}


@pytest.mark.kernel
def test_kill_9_leaves_nothing_in_the_kernel(tmp_path, clis):
    c = Cli(tmp_path)
    clis.append(c)
    c.wait_attached()
    objects = kernel_objects(c.proc.pid)
    # 25 programs, 19 with a link: exec (sched_process_exec, and for failed execs execve and execveat at
    # entry and exit), openat and openat2 and connect (each at entry and exit), exit, fork (tp_btf), and the
    # process cache's proc programs (chdir, fchdir, chroot, unshare, setns, sethostname); 6 reached by tail
    # call, without a link: the open programs' second half, exec's exe and cwd walks, fork's, proc's cwd.
    # Maps: rings (one per CPU, at most 4), their array, scratch, stats, self_runs, the filter, the entry
    # copies (task storage), the exec entry copies (an array), the two tail-call arrays (tracepoint, tp_btf),
    # the collector's own tgid (self_tgid); and the filters' (programs/filtermaps.py): the active set, the rows,
    # the rate buckets and one map per key.
    assert len(objects["prog"]) == 25 and len(objects["link"]) == 19, objects
    assert len(objects["map"]) == default_buffers() + 1 + 9 + 3 + len(fm.KEY_STRUCTS), objects
    live = live_objects()
    assert all(objects[k] <= live[k] for k in objects)
    c.proc.kill()
    assert c.proc.wait(timeout=10) == -signal.SIGKILL
    wait_gone(objects)


@pytest.mark.kernel
def test_the_collector_reports_nothing_of_its_own(tmp_path, clis):
    # Its own tgid is skipped by the programs; a child it made after attaching (the capability probe did
    # fork one) would not be, and showed as the first event a user saw: an exit of "kestrel-raw".
    c = Cli(tmp_path, "--events", "exec,open,connect,exit")
    clis.append(c)
    c.wait_attached()
    time.sleep(0.5)
    rc, err = c.stop(signal.SIGINT)
    assert rc == 0, err
    # (the status line is the collector's own by design: it has no pid)
    own = [e for e in c.events() if c.proc.pid in (e.get("pid"), e.get("ppid"))]
    assert not own, own[:3]


@pytest.mark.kernel
def test_sigint_while_loading_stops_the_collector_once_attached(tmp_path):
    # A background job of a non-interactive shell starts with SIGINT ignored, and Python then installs no
    # handler of its own: a SIGINT before the CLI's signal receiver opened was lost, and the collector ran
    # on.  The receiver now opens before the load.  The load is held open here by giving it its BTF
    # through a FIFO: the collector blocks reading it until the test writes the kernel's BTF.
    fifo = tmp_path / "btf.fifo"
    os.mkfifo(fifo)
    out, err = tmp_path / "out.jsonl", tmp_path / "stderr"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kestrel_raw", "run", "--events", "open", "--btf", str(fifo), "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=open(err, "wb"), env=ENV, cwd=REPO, stdin=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 30
        while True:  # a non-blocking open for writing succeeds once the collector waits to read the FIFO
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as e:
                if e.errno != errno.ENXIO or proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the collector never opened its BTF (rc {proc.poll()}): "
                                         f"{err.read_text()}") from e
                time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        os.set_blocking(fd, True)
        with open("/sys/kernel/btf/vmlinux", "rb") as btf, os.fdopen(fd, "wb") as writer:
            shutil.copyfileobj(btf, writer)
        assert proc.wait(timeout=30) == 0, err.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "records=" in err.read_text()  # the summary: it attached, stopped and detached normally


@pytest.mark.kernel
@pytest.mark.crosscheck
def test_kill_9_bpftool_sees_nothing_left(tmp_path, clis):
    if BPFTOOL is None:
        pytest.skip("bpftool is not installed")
    c = Cli(tmp_path)
    clis.append(c)
    c.wait_attached()
    objects = kernel_objects(c.proc.pid)

    def bpftool_ids(what):
        out = subprocess.run([BPFTOOL, "-j", what, "show"], capture_output=True, text=True, check=True).stdout
        return {entry["id"] for entry in json.loads(out or "[]")}

    assert objects["prog"] <= bpftool_ids("prog") and objects["map"] <= bpftool_ids("map")
    assert objects["link"] <= bpftool_ids("link")
    c.proc.kill()
    c.proc.wait(timeout=10)
    wait_gone(objects)
    assert not objects["prog"] & bpftool_ids("prog")
    assert not objects["map"] & bpftool_ids("map")
    assert not objects["link"] & bpftool_ids("link")


@pytest.mark.kernel
def test_output_pipe_closing_ends_cleanly(tmp_path, clis):
    """`kestrel-raw run | head -2`: head takes two lines (the status, an event) and exits; the collector
    stops with status 0."""
    err = tmp_path / "c.stderr"
    collector = subprocess.Popen([sys.executable, "-m", "kestrel_raw", "run", "--events", "open"],
                                 stdout=subprocess.PIPE, stderr=open(err, "wb"), env=ENV, cwd=REPO)
    head = subprocess.Popen(["head", "-2"], stdin=collector.stdout, stdout=subprocess.PIPE)
    collector.stdout.close()  # head holds the only read end
    deadline = time.monotonic() + 30
    objects = None
    while collector.poll() is None:
        assert time.monotonic() < deadline, f"collector still running after head exited: {err.read_text()}"
        if objects is None and "attached" in err.read_text():
            objects = kernel_objects(collector.pid)
        subprocess.run(["/bin/cat", f"/tmp/kestrel-pipe-{uuid.uuid4().hex}"], stderr=subprocess.DEVNULL)
        time.sleep(0.05)
    line = head.stdout.read()
    head.wait()
    assert collector.returncode == 0, err.read_text()
    stderr = err.read_text()
    assert "Traceback" not in stderr and "Broken pipe" not in stderr, stderr
    assert "kestrel-raw: records=" in stderr
    assert [json.loads(one)["type"] for one in line.splitlines()] == ["status", "open"]
    assert objects is not None
    wait_gone(objects)


@pytest.mark.kernel
def test_full_disk_is_a_clear_error_and_detaches(tmp_path, clis):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "kr-test", str(mnt)], check=True)
    try:
        out = mnt / "events.jsonl"
        c = Cli(tmp_path, "--events", "open", "--output", str(out), output=False)
        clis.append(c)
        deadline = time.monotonic() + 30
        while "attached" not in c.stderr():
            assert c.proc.poll() is None and time.monotonic() < deadline, c.stderr()
            time.sleep(0.05)
        objects = kernel_objects(c.proc.pid)
        # Each open of a long path is a line of ~300 bytes: a few hundred fill 64 KiB.
        long_name = "/tmp/kestrel-full-" + "x" * 200
        while c.proc.poll() is None:
            assert time.monotonic() < deadline, f"collector did not stop on a full disk: {c.stderr()}"
            subprocess.run(["sh", "-c", f"for i in 1 2 3 4 5 6 7 8 9 10; do : < {long_name}$i; done"],
                           stderr=subprocess.DEVNULL)
        stderr = c.stderr()
        assert c.proc.returncode == 1, stderr
        assert "Traceback" not in stderr
        errors = [ln for ln in stderr.splitlines() if "cannot write" in ln]
        assert errors == [f"kestrel-raw: cannot write events to {out}: No space left on device (the disk is "
                          f"full); stopped, programs detached"], stderr
        assert "kestrel-raw: records=" in stderr
        assert os.path.getsize(out) > 32 * 1024
        wait_gone(objects)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.kernel
def test_two_collectors_see_events_but_not_each_other(tmp_path, clis):
    a = Cli(tmp_path, name="a")
    clis.append(a)
    a.wait_attached()
    b = Cli(tmp_path, name="b")
    clis.append(b)
    b_ready = b.wait_attached()  # B registered with A before it attached
    # Both report a third process.
    path = f"/tmp/kestrel-both-{uuid.uuid4().hex}"
    subprocess.run(["/bin/cat", path], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not all(any(e.get("path") == path for e in c.events()) for c in (a, b)):
        assert time.monotonic() < deadline, "an open was not reported by both collectors"
        time.sleep(0.05)
    time.sleep(2.5)  # two rounds of the peer check, each opening /proc/<other>/stat
    rc_b, err_b = b.stop()
    assert rc_b == 0, err_b
    assert a.proc.pid in summary_peers(err_b)  # A, still running when B stopped
    time.sleep(2.5)  # A notices B is gone and drops it from its filter
    rc_a, err_a = a.stop()
    assert rc_a == 0, err_a
    assert b.proc.pid not in summary_peers(err_a)
    a_pid, b_pid = a.proc.pid, b.proc.pid
    # B never reports A: A was registered before B attached.
    assert [e for e in b.events() if e.get("pid") == a_pid] == []
    # A reports B's start-up (B is an ordinary process until it registers) but nothing after B attached:
    # not B's checks of /proc/<A>/stat, not B's exit.
    b_in_a = [e for e in a.events() if e.get("pid") == b_pid]
    assert b_in_a, "A should have seen B start (python opening its modules)"
    late = [e for e in b_in_a if e["ts_mono_ns"] >= b_ready["ts_mono_ns"]]
    assert late == []
    assert not [e for e in b_in_a if e["type"] == "exit"]


@pytest.mark.kernel
async def test_a_process_holding_a_map_named_kr_filter_is_not_a_peer():
    """Without a kr_* tracepoint program, a process with a kr_filter map is not taken for a collector
    (and with no CAP_BPF it could not make either)."""
    import trio

    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            decoy = HashMap(4, 8, 16, name="kr_filter")
            os.write(ready_w, b"x")
            os.read(done_r, 1)
            decoy.close()
        finally:
            os._exit(0)
    try:
        with trio.fail_after(10):
            await trio.to_thread.run_sync(os.read, ready_r, 1)  # the decoy holds its map
        send, recv = trio.open_memory_channel(10_000)
        c = KestrelCollector(send, CollectorConfig(event_types=["open"], buffers=1, buffer_size=64 * 1024))
        async with trio.open_nursery() as nursery:
            await nursery.start(c.start)
            assert pid not in c.stats().peers
            path = f"/tmp/kestrel-decoy-{uuid.uuid4().hex}"
            await trio.to_thread.run_sync(
                lambda: subprocess.run(["/bin/cat", path], stderr=subprocess.DEVNULL))
            with trio.fail_after(10):
                async for ev in recv:
                    if ev.get("path") == path:  # the status event has none
                        break
            c.stop()
    finally:
        os.write(done_w, b"x")
        os.waitpid(pid, 0)
        for fd in (ready_r, ready_w, done_r, done_w):
            os.close(fd)
