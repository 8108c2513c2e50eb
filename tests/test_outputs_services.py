"""Events to the engines people run (issue 18 items 3 and 5), each started by the test on loopback ports
with a private configuration: Debian's rsyslogd (UDP, TCP, a local socket), and a 3-node nats-server
cluster with a JetStream stream of 3 replicas (a storm all arrives exactly once after dedup; a node killed
during the storm loses nothing; all servers down 10 s and back loses nothing; kestrel-raw tail reads it).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid

import pytest

from helpers import (CLI_ENV, REPO, NatsCluster, Rsyslog, RunningCli, add_stream, nats_run, open_storm,
                     read_stream, summary_counts, wait_for)

pytestmark = [pytest.mark.kernel, pytest.mark.services]


@pytest.fixture
def public_dir():
    """A directory the collector can still reach after it became nobody (tmp_path's parents are closed)."""
    d = f"/tmp/kestrel-svc-{uuid.uuid4().hex}"
    os.mkdir(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


# -- syslog ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["udp", "tcp", "unix"])
def test_syslog_events_reach_rsyslog(tmp_path, public_dir, transport):
    from pathlib import Path

    rs = Rsyslog(Path(public_dir))
    try:
        address = {"udp": f"udp://127.0.0.1:{rs.udp}", "tcp": f"tcp://127.0.0.1:{rs.tcp}",
                   "unix": str(rs.socket)}[transport]
        c = RunningCli(tmp_path, "--events", "open", "--syslog", address, "--syslog-facility", "local3")
        try:
            c.wait_attached()
            prefix = f"/tmp/kestrel-syslog-{uuid.uuid4().hex}"
            paths = open_storm(prefix, 1, 200)
            wait_for(lambda: sum(prefix in ln for ln in rs.lines()) >= 200, 20, "rsyslog to write the events")
            rc, err = c.stop()
        finally:
            c.kill()
        assert rc == 0, err
        assert "outputs syslog[sent=" in err and "dropped=0]" in err, err
        found = {}
        for line in rs.lines():
            pri, stamp, host, app, procid, msgid, msg = line.split(" ", 6)
            event = json.loads(msg)
            # What rsyslog parsed out of the RFC 5424 header: facility local3 (19) * 8 + info (6).
            assert (pri, app, procid, msgid) == ("158", "kestrel-raw", str(c.proc.pid), event["type"]), line
            assert stamp.endswith("Z") or stamp[-6] in "+-", stamp
            if event.get("path", "").startswith(prefix):
                found[event["path"]] = found.get(event["path"], 0) + 1
        assert set(found) == set(paths) and set(found.values()) == {1}
    finally:
        rs.stop()


def test_syslog_that_cannot_be_reached_is_refused_at_start(tmp_path):
    missing = tmp_path / "no.sock"
    proc = subprocess.run([sys.executable, "-m", "kestrel_raw", "run", "--syslog", str(missing)], env=CLI_ENV,
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr == f"kestrel-raw: --syslog {missing}: cannot send there: No such file or directory\n"


# -- NATS JetStream -------------------------------------------------------------------------------------------

@pytest.fixture
def cluster(tmp_path):
    c = NatsCluster(tmp_path / "nats")
    try:
        nats_run(add_stream, c.urls, "KR", ["kr.>"], 3)
        yield c
    finally:
        c.stop()


def stream_events(cluster, subject="kr.>"):
    """Every event line in the stream, after dropping duplicate batches (natsmsg.Dedup), and the number of
    duplicates dropped."""
    from kestrel_raw.sinks.natsmsg import Dedup, origin

    dedup = Dedup()
    events = []
    for headers, data in nats_run(read_stream, cluster.urls, subject):
        who = origin(headers)
        assert who is not None, headers
        if dedup.first_time(who[0], who[2], who[3], who[4]):
            lines = data.splitlines()
            assert len(lines) == who[4]
            events += lines
    return events, dedup.duplicates


def run_nats(tmp_path, public_dir, cluster_urls, *extra):
    """The collector publishing to NATS, and writing the same events to a file: the record of what it
    delivered, against which the stream is checked.  (The host is shared: other processes' opens come too,
    and a storm elsewhere can fill the rings, which the kernel counts.)"""
    return RunningCli(tmp_path, "--events", "open", "--nats", ",".join(cluster_urls), "--subject", "kr.host1",
                      "--nats-buffer", os.path.join(public_dir, "spool"), "--nats-buffer-size", str(1 << 30),
                      "--buffer-size", str(16 << 20), "--output", str(tmp_path / "delivered.jsonl"), *extra)


def check_storm(tmp_path, events, prefix, paths, err):
    """The stream holds, once each, exactly the events the collector delivered (its file), and, when the
    kernel lost nothing, every open of the storm."""
    counts = summary_counts(err)
    assert counts["user_dropped"] == 0, err
    delivered = (tmp_path / "delivered.jsonl").read_bytes().splitlines()
    assert len(delivered) == counts["delivered"], err
    assert len(set(events)) == len(events), "a duplicate event in the stream after dedup"
    assert sorted(events) == sorted(delivered), f"{len(set(delivered) - set(events))} delivered events missing; {err}"
    seen = {}
    for line in events:
        path = json.loads(line).get("path", "")
        if path.startswith(prefix):
            seen[path] = seen.get(path, 0) + 1
    assert set(seen.values()) == {1}
    if counts["kernel_lost"] == 0:
        assert set(seen) == set(paths), err


@pytest.mark.slow
def test_nats_storm_arrives_exactly_once(tmp_path, public_dir, cluster):
    c = run_nats(tmp_path, public_dir, cluster.urls)
    try:
        c.wait_attached()
        prefix = f"/tmp/kestrel-nats-{uuid.uuid4().hex}"
        paths = open_storm(prefix, 2, 20_000)
        time.sleep(2)  # the collector catches up (what its queue cannot take at stop is dropped, counted)
        rc, err = c.stop()
    finally:
        c.kill()
    assert rc == 0, err
    assert "dropped=0" in err and "spool_bytes=0" in err, err
    events, _dups = stream_events(cluster)
    check_storm(tmp_path, events, prefix, paths, err)
    # kestrel-raw tail prints the same events, with the host and each event's number.
    proc = subprocess.run([sys.executable, "-m", "kestrel_raw", "tail", "--nats", cluster.urls[1], "--subject",
                           "kr.>", "--all", "--idle-exit", "3"], env=CLI_ENV, cwd=REPO, capture_output=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    tailed = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [{k: v for k, v in e.items() if k not in ("host", "host_seq")} for e in tailed] == \
        [json.loads(line) for line in events]
    assert [e["host_seq"] for e in tailed] == list(range(len(tailed)))


@pytest.mark.slow
def test_nats_node_killed_during_the_storm_loses_nothing(tmp_path, public_dir, cluster):
    # The collector is given one server's URL alone and learns the others from it; that server is killed.
    c = run_nats(tmp_path, public_dir, cluster.urls[:1])
    try:
        c.wait_attached()
        wait_for(lambda: "NATS: connected to" in c.stderr(), 30, "the NATS connection")
        prefix = f"/tmp/kestrel-nats-kill-{uuid.uuid4().hex}"
        killer = threading.Timer(1.0, cluster.kill, args=(0,))
        killer.start()
        paths = open_storm(prefix, 2, 20_000)
        killer.join()
        time.sleep(3)
        rc, err = c.stop(timeout=120)
    finally:
        c.kill()
    assert rc == 0, err
    assert "dropped=0" in err, err
    events, dups = stream_events(cluster)
    check_storm(tmp_path, events, prefix, paths, err)


@pytest.mark.slow
def test_nats_all_servers_down_10s_and_back_loses_nothing(tmp_path, public_dir, cluster):
    c = run_nats(tmp_path, public_dir, cluster.urls, "--nats-flush-timeout", "60")
    try:
        c.wait_attached()
        wait_for(lambda: "NATS: connected to" in c.stderr(), 30, "the NATS connection")
        prefix = f"/tmp/kestrel-nats-down-{uuid.uuid4().hex}"
        first = open_storm(prefix + "-a", 1, 5_000)
        for i in range(3):
            cluster.kill(i)
        down = open_storm(prefix + "-b", 2, 10_000)  # while no server answers: spooled on disk
        wait_for(lambda: "disconnected" in c.stderr(), 10, "the disconnection to be seen")
        time.sleep(10)
        for i in range(3):
            cluster.start(i)
        wait_for(lambda: c.stderr().count("NATS: connected to") >= 2, 60, "the reconnection")
        after = open_storm(prefix + "-c", 1, 5_000)
        rc, err = c.stop(timeout=180)
    finally:
        c.kill()
    assert rc == 0, err
    assert "dropped=0" in err and "spool_bytes=0" in err, err
    events, _dups = stream_events(cluster)
    check_storm(tmp_path, events, prefix, first + down + after, err)
