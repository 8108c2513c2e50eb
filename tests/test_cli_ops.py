"""kestrel-raw run as a service runs it (issue 18): Ctrl-C at any moment, a rotated output under a storm
with the privileges dropped, Prometheus metrics scraped during a storm, SIGHUP and readiness."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

from helpers import CLI_ENV, REPO, RunningCli, free_port, open_storm, summary_counts, wait_for
from kestrel_raw.sinks.files import rotated_names

NOBODY = 65534
SIGHUP_BIT = 1 << (signal.SIGHUP - 1)


def _sig_ignored(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigIgn:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


@pytest.mark.kernel
@pytest.mark.parametrize("delay", [0, 0.001, 0.003, 0.01, 0.02, 0.05, 0.1, 0.15, 0.25, 0.5, "attached"])
def test_ctrl_c_at_any_moment_of_start_is_quiet(tmp_path, delay):
    """SIGINT at moments counted from kestrel-raw's first line (seen from outside: its first act ignores
    SIGHUP, /proc/PID/status SigIgn): no traceback, exit 0, and nothing left loaded.  (Before that line the
    interpreter starts up and imports site-packages' .pth files: ~10-40 ms here, out of kestrel-raw's reach.)"""
    out = tmp_path / "events.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "kestrel_raw", "run", "--events", "open", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=CLI_ENV, cwd=REPO,
                            stdin=subprocess.DEVNULL)
    try:
        if delay == "attached":
            buf = b""
            while b"attached" not in buf:
                chunk = proc.stderr.read1(4096)
                assert chunk, buf
                buf += chunk
        else:
            wait_for(lambda: _sig_ignored(proc.pid) & SIGHUP_BIT or proc.poll() is not None, 30, "start",
                     interval=0.0005)
            time.sleep(delay)
            buf = b""
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = (buf + rest).decode()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert proc.returncode == 0, err
    lines = [ln for ln in err.splitlines() if ln]
    assert all(ln.startswith("kestrel-raw: ") for ln in lines), err


def test_the_output_file_is_refused_before_anything_is_loaded(tmp_path):
    target = tmp_path / "passwd"
    target.write_text("x\n")
    link = tmp_path / "events.jsonl"
    link.symlink_to(target)
    proc = subprocess.run([sys.executable, "-m", "kestrel_raw", "run", "--output", str(link)], env=CLI_ENV,
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr == (f"kestrel-raw: --output {link}: is a symbolic link; refusing to follow it (give the "
                           f"file's real path)\n")
    group_writable = tmp_path / "gw.jsonl"
    group_writable.write_text("")
    os.chmod(group_writable, 0o660)
    proc = subprocess.run([sys.executable, "-m", "kestrel_raw", "run", "--output", str(group_writable)],
                          env=CLI_ENV, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr == (f"kestrel-raw: --output {group_writable}: exists and others can write it (mode 0660); "
                           f"refusing to append to it (chmod go-w, or choose another path)\n")


@pytest.fixture
def nobody_dir():
    """A directory under /tmp owned by nobody, 0700 (tmp_path's parents are root's, closed to nobody)."""
    d = f"/tmp/kestrel-rot-{uuid.uuid4().hex}"
    os.mkdir(d, 0o700)
    os.chown(d, NOBODY, NOBODY)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_rotation_needs_a_directory_the_dropped_user_can_write(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the privileges are dropped only by root")
    out = tmp_path / "events.jsonl"
    proc = subprocess.run([sys.executable, "-m", "kestrel_raw", "run", "--output", str(out), "--rotate-size",
                           "1000000"], env=CLI_ENV, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == (
        f"kestrel-raw: --rotate-size renames files in {tmp_path} after the collector has become nobody (uid 65534), "
        f"and it cannot write there: give the output a directory of that user's (install -d -o nobody -m 0700 "
        f"DIR), or --keep-privileges\n")


@pytest.mark.kernel
@pytest.mark.slow
@pytest.mark.hostonly  # zero loss at 40,000 lines in a burst: an emulated guest's writer falls behind
def test_rotation_under_a_storm_loses_and_duplicates_nothing(tmp_path, nobody_dir):
    """40,000 opens of distinct paths by 2 processes, written to a file rotated every 256 KiB (~50
    rotations) by a collector that dropped to nobody: every line is whole, the lines across the files are
    the delivered count, and each opened path is there exactly once."""
    out = os.path.join(nobody_dir, "events.jsonl")
    c = RunningCli(tmp_path, "--events", "open", "--output", out, "--rotate-size", str(256 * 1024),
                   "--rotate-keep", "1000", "--buffer-size", str(8 << 20))
    try:
        c.wait_attached()
        assert "privileges dropped: uid=65534" in c.stderr()
        prefix = f"/tmp/kestrel-rot-storm-{uuid.uuid4().hex}"
        paths = open_storm(prefix, 2, 20_000)
        time.sleep(1)
        rc, err = c.stop()
    finally:
        c.kill()
    assert rc == 0, err
    counts = summary_counts(err)
    assert counts["kernel_lost"] == 0 and counts["user_dropped"] == 0, err
    names = [n for n in rotated_names(out, 1000) if os.path.exists(n)]
    assert len(names) > 20, names
    total = 0
    seen: dict[str, int] = {}
    for n in names:
        data = open(n, "rb").read()
        assert data.endswith(b"\n"), n
        assert len(data) <= 256 * 1024, n
        st = os.stat(n)
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid in (0, NOBODY), n
        for line in data.splitlines():
            event = json.loads(line)  # whole lines only
            total += 1
            if event.get("path", "").startswith(prefix):
                seen[event["path"]] = seen.get(event["path"], 0) + 1
    assert total == counts["delivered"]
    assert set(seen) == set(paths)
    assert set(seen.values()) == {1}
    # The files made after the drop are nobody's: rotation ran as the dropped user.
    assert os.stat(names[-1]).st_uid == NOBODY


def scrape(port: int) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.mark.kernel
@pytest.mark.slow
@pytest.mark.services  # prometheus-client, which the qemu guests lack
def test_metrics_scraped_during_a_storm(tmp_path):
    pytest.importorskip("prometheus_client")
    from kestrel_raw.kernel import bpf
    from kestrel_raw.kernel.uapi import BPF_STATS_RUN_TIME

    port = free_port()
    out = tmp_path / "events.jsonl"
    c = RunningCli(tmp_path, "--events", "open", "--no-context", "--output", str(out), "--metrics",
                   f"127.0.0.1:{port}", "--buffers", "2")
    stats = bpf.enable_stats(BPF_STATS_RUN_TIME)  # run_time_ns counts while this fd is open
    storm = None
    try:
        c.wait_attached()
        before = scrape(port)
        prefix = f"/tmp/kestrel-metrics-{uuid.uuid4().hex}"
        script = ("import os, sys\nfor i in range(60000):\n    try:\n        os.open(sys.argv[1], os.O_RDONLY)\n"
                  "    except OSError:\n        pass\n")
        storm = subprocess.Popen([sys.executable, "-c", script, prefix])
        during = []
        while storm.poll() is None:
            during.append(scrape(port))
            time.sleep(0.2)
        time.sleep(0.5)
        after = scrape(port)
        rc, err = c.stop()
    finally:
        stats.close()
        if storm is not None and storm.poll() is None:
            storm.kill()
        c.kill()
    assert rc == 0, err
    opens = lambda m: m[("kestrel_events_total", (("type", "open"),))]  # noqa: E731
    assert opens(after) - opens(before) >= 60000
    assert len(during) >= 2 and opens(during[0]) <= opens(during[-1])
    for m in during + [after]:
        for ring in ("0", "1"):
            assert 0 <= m[("kestrel_ring_buffer_fill_ratio", (("ring", ring),))] <= 1
            assert m[("kestrel_ring_buffer_size_bytes", (("ring", ring),))] == 8 << 20
    assert sum(after[("kestrel_poll_wakeups_total", (("ring", r),))] for r in "01") > 0
    assert after[("kestrel_programs_attached", ())] == 4  # openat and openat2, at entry and exit
    assert after[("kestrel_events_lost_total", (("cause", "ringbuf_full"), ("type", "open")))] >= 0
    assert after[("kestrel_events_lost_total", (("cause", "parse_error"), ("type", "open")))] == 0
    assert after[("kestrel_records_total", ())] >= opens(after)
    assert after[("process_cpu_seconds_total", ())] > 0
    assert after[("process_resident_memory_bytes", ())] > 10 << 20
    runs = after[("kestrel_bpf_program_runs_total", (("program", "kr_openat"),))]
    assert runs >= 60000
    assert 0 < after[("kestrel_bpf_program_ns_per_run", (("program", "kr_openat"),))] < 1_000_000
    # The metrics never count more than the summary at the end says was delivered.
    assert opens(after) <= summary_counts(err)["delivered_open"]


@pytest.mark.kernel
def test_sighup_rereads_the_config_and_readiness_is_notified(tmp_path, nobody_dir):
    # The config file where the user the collector becomes can read it (SIGHUP reads it as that user).
    from pathlib import Path

    os.chmod(nobody_dir, 0o755)
    config = Path(nobody_dir) / "config.toml"
    config.write_text('events = ["open"]\nqueue-size = 4096\ncontext = false\n')
    os.chmod(config, 0o644)
    notify_path = str(tmp_path / "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    os.chmod(notify_path, 0o666)
    c = RunningCli(tmp_path, "--config", str(config), "--output", str(tmp_path / "e.jsonl"),
                   env=dict(CLI_ENV, NOTIFY_SOCKET=notify_path))
    try:
        c.wait_attached()
        notify.settimeout(10)
        assert notify.recv(4096) == b"READY=1\nSTATUS=attached, 4 programs"  # openat and openat2, entry and exit
        config.write_text('events = ["open"]\nqueue-size = 8192\ncontext = false\n')
        c.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "SIGHUP" in c.stderr(), 10, "the SIGHUP line")
        config.write_text('events = ["open"]\nqueue-size = "big"\ncontext = false\n')
        c.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: c.stderr().count("SIGHUP") == 2, 10, "the second SIGHUP line")
        assert c.proc.poll() is None
        rc, err = c.stop()
        assert notify.recv(4096) == b"STOPPING=1"
    finally:
        c.kill()
        notify.close()
    assert rc == 0, err
    lines = [ln for ln in err.splitlines() if "SIGHUP" in ln]
    assert lines == [
        f"kestrel-raw: SIGHUP: read {config}: queue-size changed, which takes effect at the next start",
        f"kestrel-raw: SIGHUP: {config} line 2: queue-size takes an integer, got 'big'; the running settings are kept",
    ]
    assert "cannot read it" not in err


def test_a_config_file_the_dropped_user_cannot_read_is_said_at_start(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the privileges are dropped only by root")
    config = tmp_path / "config.toml"  # under tmp_path, whose parents nobody cannot search
    config.write_text("buffers = 1\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(tmp_path / "elsewhere")  # so that it stops before loading anything
    proc = subprocess.run([sys.executable, "-m", "kestrel_raw", "run", "--config", str(config), "--output",
                           str(link)], env=CLI_ENV, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"kestrel-raw: --config {config}: the user the collector becomes (uid 65534) cannot read it, so SIGHUP "
        f"will not be able to read it again: make it readable to that user (for example chgrp 65534 {config}; "
        f"chmod 0640 {config})",
        f"kestrel-raw: --output {link}: is a symbolic link; refusing to follow it (give the file's real path)"]
