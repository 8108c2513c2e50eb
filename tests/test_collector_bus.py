"""KestrelCollector delivering into an EventBus (kestrel_raw/collector/deliver.py) on the real kernel: every
subscriber gets the same real events, ``queue_policy`` decides what a full subscriber does, and every event
a subscriber misses is counted.  And the README's EventBus example runs as written.

The events come from a child process of the test (``Opener``) and the collector reports that tgid alone
(``only_tgids``), so the events are known exactly: one open of each asked-for path, each failing with ENOENT.
"""
from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import time
import uuid

import pytest
import trio

from kestrel_raw import CollectorConfig, EventBus, KestrelCollector

from helpers import ENV, REPO, Opener, identity_and_context

pytestmark = pytest.mark.kernel

AT_FDCWD = -100  # include/uapi/linux/fcntl.h
N = 200  # opens the child makes in each test: ~26 KiB of records, far from filling the 1 MiB ring


@pytest.fixture
def opener():
    with Opener() as child:
        yield child


def open_fields(opener: Opener, path: str, context: dict) -> dict:
    """The fields of the event of the child's ``open(path)`` (Python's open: O_RDONLY | O_CLOEXEC, ENOENT),
    but for the CPU it ran on and the process start time, which the test cannot know; ``context``: what
    /proc shows of the child (``identity_and_context``: the child started before the collector, whose
    process cache has it from /proc)."""
    return {"pid": opener.pid, "tid": opener.pid, "ppid": os.getpid(), "uid": os.getuid(), "gid": os.getgid(),
            "comm": opener.comm, "truncated": False, "path": path, "flags": os.O_RDONLY | os.O_CLOEXEC,
            "mode": 0, "ret": -errno.ENOENT, "dfd": AT_FDCWD, "syscall": "openat", "fault": False,
            "resolve": 0, "resolved_path": None, "toctou": False, "late_read": False, **context}


def check_exact(events: list, opener: Opener, paths: list[str]) -> None:
    assert [ev.event_type.label for ev in events] == ["open"] * len(paths)
    got = [{k: v for k, v in ev.named_fields().items() if k not in ("cpu", "process_start_ns")} for ev in events]
    context = identity_and_context(opener.pid)
    assert got == [open_fields(opener, path, context) for path in paths]
    # One process: one entity key and one start time; the kernel's timestamps in order.
    assert len({(ev.entity_key, ev["process_start_ns"]) for ev in events}) == 1
    assert [ev.ts_mono for ev in events] == sorted(ev.ts_mono for ev in events)
    assert all(0 <= ev["cpu"] < os.cpu_count() and ev.source == "ebpf" for ev in events)


async def wait_records(collector: KestrelCollector, n: int) -> None:
    """Until the collector has read ``n`` records.  Under "drop" the delivery of a batch never waits, so
    once they are read they are delivered or counted as dropped."""
    with trio.fail_after(10):
        while collector.stats().records < n:
            await trio.sleep(0.01)


async def test_block_every_subscriber_gets_every_real_event_and_the_slowest_paces(opener):
    bus = EventBus()
    slow = bus.subscribe(max_buffer=1, name="slow")
    fast = bus.subscribe(max_buffer=10 * N, name="fast")
    collector = KestrelCollector(bus, CollectorConfig(event_types=["open"], buffers=1, only_tgids=[opener.pid]))
    got = {"slow": [], "fast": []}

    async def consume(name, events, pause):
        async for ev in events:
            got[name].append(ev)
            await trio.sleep(pause)

    async with trio.open_nursery() as consumers:
        consumers.start_soon(consume, "slow", slow, 0.002)  # ~0.4 s for the lot: the poller waits for it
        consumers.start_soon(consume, "fast", fast, 0)
        async with trio.open_nursery() as nursery:
            await nursery.start(collector.start)
            await trio.to_thread.run_sync(opener.ask, N)
            with trio.fail_after(20):
                while len(got["slow"]) < N:
                    await trio.sleep(0.01)
            collector.stop()
        await bus.aclose()
    check_exact(got["fast"], opener, opener.paths(N))
    assert len(got["slow"]) == N and all(a is b for a, b in zip(got["slow"], got["fast"]))  # the same events
    stats = collector.stats()
    assert (stats.records, stats.delivered["open"], stats.user_dropped, stats.parse_errors) == (N, N, 0, 0)
    assert stats.kernel_lost == 0
    assert (bus.statistics().published, bus.statistics().drops) == (N, 0)


async def test_drop_a_slow_subscriber_loses_only_its_own_events_counted(opener):
    bus = EventBus()
    slow = bus.subscribe(max_buffer=10, name="slow")  # nobody reads it while the events come
    fast = bus.subscribe(max_buffer=10 * N, name="fast")
    collector = KestrelCollector(bus, CollectorConfig(event_types=["open"], buffers=1, queue_policy="drop",
                                                      only_tgids=[opener.pid]))
    async with trio.open_nursery() as nursery:
        await nursery.start(collector.start)
        await trio.to_thread.run_sync(opener.ask, N)
        await wait_records(collector, N)
        collector.stop()
    subscribers = [(s.name, s.delivered, s.drops) for s in bus.statistics().subscribers]
    await bus.aclose()
    got_fast = [ev async for ev in fast]
    got_slow = [ev async for ev in slow]
    # The loss events (at the latest the one at stop) say what the slow subscriber missed, exactly; the
    # slow one misses them too (counted as dropped of type loss, in the stats alone).
    losses = [ev for ev in got_fast if ev.event_type.label == "loss"]
    got_fast = [ev for ev in got_fast if ev.event_type.label != "loss"]
    check_exact(got_fast, opener, opener.paths(N))
    assert losses and sum(ev["counts"]["open"]["user_dropped"] for ev in losses) == N - 10
    assert all(list(ev["counts"]) == ["open"] and list(ev["counts"]["open"]) == ["user_dropped"] for ev in losses)
    assert len(got_slow) == 10 and all(a is b for a, b in zip(got_slow, got_fast))  # the first ten, then full
    assert subscribers == [("slow", 10, N - 10 + len(losses)), ("fast", N + len(losses), 0)]
    stats = collector.stats()
    assert (stats.records, stats.delivered["open"], stats.dropped, stats.parse_errors) == (
        N, N, {"open": N - 10, "loss": len(losses)}, 0)
    assert stats.kernel_lost == 0


async def test_drop_json_chunks_missed_count_their_events(opener):
    # deliver="json": the bus carries chunks of JSON lines; a subscriber that never has room (a
    # rendezvous channel nobody reads) misses every chunk, and user_dropped counts the lines in them.
    bus = EventBus()
    bus.subscribe(max_buffer=0, name="never-ready")
    lines = bus.subscribe(max_buffer=10 * N, name="lines")
    collector = KestrelCollector(bus, CollectorConfig(event_types=["open"], buffers=1, queue_policy="drop",
                                                      deliver="json", only_tgids=[opener.pid]))
    async with trio.open_nursery() as nursery:
        await nursery.start(collector.start)
        await trio.to_thread.run_sync(opener.ask, N)
        await wait_records(collector, N)
        collector.stop()
    chunks_missed = bus.statistics().subscribers[0].drops
    await bus.aclose()
    events = [json.loads(line) for chunk in [c async for c in lines] for line in chunk.splitlines()]
    losses = [ev for ev in events if ev["type"] == "loss"]
    events = [ev for ev in events if ev["type"] != "loss"]
    assert losses and sum(ev["counts"]["open"]["user_dropped"] for ev in losses) == N
    context = identity_and_context(opener.pid)
    keep = ("type", "pid", "tid", "ppid", "uid", "gid", "comm", "source", "path", "flags", "mode", "ret",
            "truncated", "fault", *context)
    assert [{k: ev[k] for k in keep} for ev in events] == [
        {"type": "open", **{k: v for k, v in open_fields(opener, path, context).items() if k in keep},
         "source": "ebpf"} for path in opener.paths(N)]
    stats = collector.stats()
    assert (stats.records, stats.delivered["open"], stats.dropped, stats.parse_errors) == (
        N, N, {"open": N, "loss": len(losses)}, 0)
    assert 1 <= chunks_missed - len(losses) <= N


def readme_bus_example() -> str:
    with open(os.path.join(REPO, "README.md")) as f:
        blocks = re.findall(r"^```python\n(.*?)^```$", f.read(), re.S | re.M)
    (example,) = [b for b in blocks if "EventBus()" in b]
    return example


def test_readme_bus_example_runs_as_written(tmp_path):
    # The example collects for five seconds once attached; until it ends, the test execs children with a
    # tag in their argv, and finds them in the example's output exactly as it prints them.
    script = tmp_path / "example.py"
    script.write_text(readme_bus_example())
    out = tmp_path / "out.txt"
    with open(out, "wb") as stdout:
        example = subprocess.Popen([sys.executable, str(script)], stdout=stdout, stderr=subprocess.PIPE,
                                   env=ENV, cwd=tmp_path)
        tag = uuid.uuid4().hex
        children = []
        deadline = time.monotonic() + 120  # start-up takes seconds in an emulated guest
        while example.poll() is None and time.monotonic() < deadline:
            argv = ["kr-readme", f"tag-{tag}", str(len(children))]
            child = subprocess.Popen(argv, executable="/bin/true")
            child.wait()
            children.append((child.pid, argv))
            time.sleep(0.1)
        _, err = example.communicate(timeout=30)
    assert example.returncode == 0, err.decode()
    printed = out.read_text().splitlines()
    shown = [(pid, argv) for pid, argv in children if f"exec {pid} {' '.join(argv)}" in printed]
    assert shown, f"none of {len(children)} tagged execs was printed: {printed[-5:]}"
    # While attached, none is missed: the children shown are every child from the first shown to the last.
    first, last = children.index(shown[0]), children.index(shown[-1])
    assert shown == children[first:last + 1]
    assert len(shown) >= 3  # five seconds of a child every 0.1 s or more (an emulated guest is slower)
    counts_line, summary = printed[-2:]
    assert counts_line.startswith("{") and "'exec': " in counts_line and " missed: " in counts_line
    assert summary.startswith("kestrel-raw: records=")
