"""Storms (issue 4 item 3): floods of opens from several processes that outrun the consumer.

Exact accounting.  The kernel's loss counters are per event kind, not per process, so with the rest of
the host running, "lost" would mix the flooders' losses with everyone else's.  The test collector runs
with ``only_tgids`` (the programs report the listed tgids alone: the filter map in FILTER_ONLY mode), so
every open event generated, delivered, dropped or counted lost is a flooder's, and

    opens made by the flooders == events received + counted lost in the kernel + dropped in user space

holds exactly.  The flooders are forked children of the test that make nothing but openat calls of one
missing path, so the number they make is known exactly.  A 4-page ring and a consumer that sleeps make
loss certain.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest
import trio

from kestrel_raw.collector import KestrelCollector
from kestrel_raw.config import CollectorConfig

from helpers import Cli, kernel_objects, wait_gone

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

FLOODERS = 3
OPENS_EACH = 20_000
PAGE = os.sysconf("SC_PAGE_SIZE")


def fork_flooders(path: str, count: int, opens: int) -> tuple[list[int], int]:
    """``count`` children, each waiting for a byte on a pipe, then making ``opens`` openat calls of
    ``path`` (missing: each fails with ENOENT) and exiting.  Returns (pids, the pipe's write end)."""
    go_r, go_w = os.pipe()
    pids = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            try:
                os.read(go_r, 1)
                for _ in range(opens):
                    try:
                        os.open(path, os.O_RDONLY)
                    except OSError:
                        pass
            finally:
                os._exit(0)
        pids.append(pid)
    os.close(go_r)
    return pids, go_w


@pytest.mark.parametrize("policy,latency", [("block", "batch"), ("drop", "batch"), ("block", "low")])
async def test_storm_exact_accounting_with_a_slow_consumer(policy, latency):
    # latency="low" takes the busy poller's own delivery path, which must wait for room as the other does.
    path = f"/tmp/kestrel-storm-{uuid.uuid4().hex}"
    pids, go = fork_flooders(path, FLOODERS, OPENS_EACH)
    try:
        send, recv = trio.open_memory_channel(256)
        config = CollectorConfig(event_types=["open"], buffers=1, buffer_size=4 * PAGE, queue_size=256,
                                 queue_policy=policy, only_tgids=tuple(pids), latency=latency)
        c = KestrelCollector(send, config)
        received = []
        lateness = []

        async def slow_consumer():
            async for ev in recv:
                if ev.event_type.label == "loss":  # the loss events' own accounting: tests/test_loss_kernel.py
                    continue
                received.append((ev["pid"], ev["path"], ev["ret"]))
                if len(received) % 32 == 0:
                    await trio.sleep(0.002)

        async def ticker():
            # The collector must leave the event loop free: a 10 ms sleep may not come back late.
            while True:
                t = trio.current_time()
                await trio.sleep(0.01)
                lateness.append(trio.current_time() - t - 0.01)

        async with trio.open_nursery() as nursery:
            await nursery.start(c.start)
            nursery.start_soon(slow_consumer)
            nursery.start_soon(ticker)
            os.write(go, b"x" * FLOODERS)
            with trio.fail_after(25):
                for pid in pids:
                    await trio.to_thread.run_sync(os.waitpid, pid, 0)
                # Drained: nothing read for a while, and the channel empty.
                last = -1
                while last != c.stats().records or len(received) != c.stats().delivered["open"]:
                    last = c.stats().records
                    await trio.sleep(0.5)
            stats = c.stats()
            c.stop()
            nursery.cancel_scope.cancel()
        pids = []
    finally:
        os.close(go)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)

    opens = stats.kernel["open"]
    lost = sum(opens["ringbuf_full"])
    generated = FLOODERS * OPENS_EACH
    assert {pid for pid, _, _ in received} <= set(config.only_tgids)
    assert {(p, r) for _, p, r in received} == {(path, -2)}  # nothing but the flooders' ENOENT opens
    assert len(received) == stats.delivered["open"]
    assert len(received) + lost + stats.user_dropped == generated  # exact
    assert stats.parse_errors == 0
    if policy == "block":
        assert stats.user_dropped == 0 and lost > 0
    else:
        assert stats.user_dropped > 0
    assert 0 < len(received) < generated
    # A collector that drained the whole storm without yielding would block for seconds.  Under software
    # emulation (KESTREL_KMX_GUEST), with three flooders on two emulated CPUs, one tick came 0.55 s late in
    # a CI run on 6.12: there the bound only catches the gross case.
    bound = 4.0 if os.environ.get("KESTREL_KMX_GUEST") else 0.5
    assert max(lateness) < bound, f"event loop blocked for {max(lateness):.3f}s"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


FLOOD = "import os, sys\np = sys.argv[1]\nwhile True:\n    try:\n        os.open(p, os.O_RDONLY)\n    except OSError:\n        pass\n"


@pytest.mark.parametrize("policy", ["block", "drop"])
def test_cli_storm_bounded_memory_and_sigterm_within_2s(tmp_path, policy):
    c = Cli(tmp_path, "--events", "open", "--buffers", "1", "--buffer-size", str(4 * PAGE),
            "--queue-size", "1024", "--queue-policy", policy)
    flooders = []
    try:
        c.wait_attached()
        objects = kernel_objects(c.proc.pid)
        base = rss_kib(c.proc.pid)
        path = f"/tmp/kestrel-cli-storm-{uuid.uuid4().hex}"
        flooders = [subprocess.Popen([sys.executable, "-c", FLOOD, path]) for _ in range(FLOODERS)]
        peak = base
        end = time.monotonic() + 4
        while time.monotonic() < end:
            peak = max(peak, rss_kib(c.proc.pid))
            time.sleep(0.05)
        # SIGTERM in the middle of the storm.
        t0 = time.monotonic()
        c.proc.send_signal(signal.SIGTERM)
        rc = c.proc.wait(timeout=10)
        took = time.monotonic() - t0
        err = c.stderr()
    finally:
        for f in flooders:
            f.kill()
            f.wait()
        c.kill()
    assert rc == 0, err
    # 2 s on real hardware.  tools/kmx-tests.sh guests are emulated (TCG: arm64 runs ~10x slower), where
    # the same stop once took 2.2 s: there the bound is doubled.
    bound = 4.0 if os.environ.get("KESTREL_KMX_GUEST") else 2.0
    assert took < bound, f"stopping took {took:.2f}s"
    assert "Traceback" not in err
    m = re.search(r"records=(\d+) delivered\[([^\]]*)\] kernel_lost=(\d+) user_dropped=(\d+) "
                  r"parse_errors=(\d+) consumed=(\d+)", err)
    records, kernel_lost, user_dropped, parse_errors, consumed = (int(m[i]) for i in (1, 3, 4, 5, 6))
    by_type = {k: int(v) for k, v in (kv.split("=") for kv in m[2].split())}
    delivered = by_type["open"]
    assert sum(by_type.values()) == len(c.events())  # the opens, the status event and any loss events
    # consumed: the process cache's records (exec, exit, fork, proc), read though --events is open
    assert records == delivered + user_dropped + parse_errors + consumed
    # (Loss under a slow consumer is proven exactly above; here the consumer is the fast JSON writer and
    # under software emulation the flood is slow too, so loss is not certain.)
    assert delivered > 1000, "the flood did not reach the collector"
    # Memory stays bounded: the queue (1024 events) and the batches in flight on top of start-up (measured
    # here: under 1 MiB of growth; an unbounded queue at this rate would grow by hundreds of MiB).
    assert peak - base < 16 * 1024, f"RSS grew by {(peak - base) // 1024} MiB during the storm"
    wait_gone(objects)  # every program detached, every map freed
