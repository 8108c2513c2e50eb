"""The library API: KestrelCollector with a trio channel, on the real kernel (the seed's test names)."""
from __future__ import annotations

import os
import subprocess
import uuid

import pytest
import trio

from kestrel_raw.kernel import bpf
from kestrel_raw.collector import KestrelCollector
from kestrel_raw.config import CollectorConfig
from kestrel_raw.errors import ConfigError
from kestrel_raw.codec.normalize import normalize
from kestrel_raw.codec.records import parse_record
from kestrel_raw.spec import EventType

from helpers import Opener, open_bytes


def _our_prog_ids(collector) -> set[int]:
    return {prog.info().id for _spec, prog in collector._programs}


@pytest.mark.kernel
def test_collector_create():
    send, _recv = trio.open_memory_channel(100)
    c = KestrelCollector(send, CollectorConfig(event_types=[EventType.OPEN, EventType.EXIT], buffers=2,
                                               context=False))
    c.load()
    try:
        names = sorted(prog.info().name for _spec, prog in c._programs)
        assert names == ["kr_exit", "kr_open_fin", "kr_openat", "kr_openat2", "kr_openat2_e", "kr_openat_e"]
        assert _our_prog_ids(c) <= set(bpf.prog_ids())
        listing = c.program_listing()
        assert "; kr_exit: tracepoint sched:sched_process_exit" in listing
        assert "call bpf_ringbuf_output#130" in listing
    finally:
        c.stop()
    # With the context (the default) the process cache's programs are loaded too, whatever was asked for.
    c = KestrelCollector(send, CollectorConfig(event_types=[EventType.OPEN], buffers=2))
    c.load()
    try:
        names = sorted(prog.info().name for _spec, prog in c._programs)
        assert names == sorted([
            "kr_open_fin", "kr_openat", "kr_openat2", "kr_openat2_e", "kr_openat_e", "kr_exec", "kr_exec_exe",
            "kr_exec_cwd", "kr_execve_e", "kr_execveat_e", "kr_execve_x", "kr_execveat_x", "kr_exit", "kr_fork_exe",
            "kr_fork_cwd", "kr_fork", "kr_proc_cwd", "kr_chdir", "kr_fchdir", "kr_chroot", "kr_unshare", "kr_setns",
            "kr_sethostname"])
        listing = c.program_listing()
        assert "; kr_fork: tp_btf sched_process_fork" in listing
        assert "; kr_fork_cwd: reached by tail call, slot 1 of fork_tails" in listing
    finally:
        c.stop()


def test_config_validation(tmp_path):
    page = os.sysconf("SC_PAGE_SIZE")
    with pytest.raises(ConfigError, match="power of two"):
        CollectorConfig(buffer_size=3 * page)
    with pytest.raises(ConfigError, match="page"):
        CollectorConfig(buffer_size=page // 2)
    with pytest.raises(ConfigError, match="buffers"):
        CollectorConfig(buffers=0)
    with pytest.raises(ConfigError, match="event type"):
        CollectorConfig(event_types=["exec", "chdir"])
    with pytest.raises(ConfigError, match="status is not collected from the kernel"):
        CollectorConfig(event_types=["status"])
    with pytest.raises(ConfigError, match="ancestors must be an integer from 0 to 64"):
        CollectorConfig(ancestors=65)
    with pytest.raises(ConfigError, match="ancestors needs context=True"):
        CollectorConfig(ancestors=2, context=False)
    assert CollectorConfig().event_types == (EventType.EXEC, EventType.OPEN, EventType.CONNECT, EventType.EXIT)
    with pytest.raises(ConfigError, match="program_path"):
        CollectorConfig(program_path=str(tmp_path / "missing"))
    ok = CollectorConfig(buffers=1, buffer_size=page * 4, event_types=["exec"], dump_dir=str(tmp_path))
    assert ok.event_types == (EventType.EXEC,)


def test_event_normalization():
    data = open_bytes(path=b"/etc/hostname", ret=3, oflags=os.O_RDONLY, mode=0, ts=5_000, start=1_000, pid=42,
                      tid=43, cpu=1, uid=1000, gid=1000)
    ev = normalize(parse_record(data), 10**18)
    assert ev.event_type_id == 2
    assert ev.ts_mono == 5_000
    assert ev.ts_wall == 10**18 + 5_000
    assert ev.source == "ebpf"
    assert ev["pid"] == 42 and ev["tid"] == 43 and ev["ppid"] == 1
    assert ev["uid"] == 1000 and ev["gid"] == 1000
    assert ev["comm"] == "cat"
    assert ev["path"] == "/etc/hostname"
    assert ev["ret"] == 3


async def _collect_until(recv, pred, timeout=10):
    with trio.fail_after(timeout):
        async for ev in recv:
            if pred(ev):
                return ev


@pytest.mark.kernel
async def test_ring_buffer_read():
    send, recv = trio.open_memory_channel(10_000)
    c = KestrelCollector(send, CollectorConfig(event_types=["open"], buffers=2, buffer_size=64 * 1024))
    path = f"/tmp/kestrel-rb-{uuid.uuid4().hex}"
    async with trio.open_nursery() as nursery:
        await nursery.start(c.start)
        await trio.to_thread.run_sync(lambda: subprocess.run(["/bin/cat", path], stderr=subprocess.DEVNULL))
        ev = await _collect_until(recv, lambda e: e.get("path") == path)  # the status event comes first
        assert ev["comm"] == "cat"
        assert ev["ppid"] == os.getpid()
        c.stop()
    assert c.stats().delivered["open"] >= 1


@pytest.mark.kernel
async def test_shutdown_clean():
    send, _recv = trio.open_memory_channel(10_000)
    c = KestrelCollector(send, CollectorConfig(buffers=2))
    async with trio.open_nursery() as nursery:
        await nursery.start(c.start)
        progs = _our_prog_ids(c)
        maps = {m.map_info().id for m in c._maps.values()} | {r.map_info().id for r in c._rings}
        assert progs and progs <= set(bpf.prog_ids())
        c.stop()
    # The kernel frees programs after an RCU grace period and maps from a workqueue after that: wait a
    # little, but they must go.
    with trio.fail_after(5):
        while progs & set(bpf.prog_ids()) or maps & set(bpf.map_ids()):
            await trio.sleep(0.05)
    c.stop()  # idempotent



@pytest.mark.kernel
async def test_low_latency_poller_lets_other_threads_run():
    # The spinning poller must hand the GIL over at its yield point: a worker thread that takes the GIL
    # back 500 times (each sleep releases it) was starved when it did not (it took minutes), and waits
    # at most about BUSY_SPIN_NS (1 ms) each time when it does.
    import time

    send, _recv = trio.open_memory_channel(10_000)
    c = KestrelCollector(send, CollectorConfig(event_types=["open"], buffers=1, latency="low"))

    bound = 2.4 if os.environ.get("KESTREL_KMX_GUEST") else 2.0

    def worker() -> tuple[int, float]:
        t0 = time.monotonic()
        done = 0
        while done < 500 and time.monotonic() - t0 < bound:  # starved, it would take minutes: give up
            time.sleep(0.0001)
            done += 1
        return done, time.monotonic() - t0

    async with trio.open_nursery() as nursery:
        await nursery.start(c.start)
        done, took = await trio.to_thread.run_sync(worker)
        c.stop()
    assert done == 500, f"the worker thread got the GIL back {done} times in {took:.2f} s"


@pytest.mark.kernel
@pytest.mark.parametrize("deliver", ["events", "json"])
async def test_low_latency_mode_delivers_without_wakeups(deliver):
    # latency="low": the programs never wake the reader (BPF_RB_NO_WAKEUP), one task spins over the
    # rings.  The event must still arrive, and the other tasks (this consumer) must still run.  The
    # poller's warm-up record (comm "kestrel-warm") is parsed between passes but never delivered.  (No
    # context and no status event: every record read is then an open delivered.)
    send, recv = trio.open_memory_channel(10_000)
    c = KestrelCollector(send, CollectorConfig(event_types=["open"], buffers=2, latency="low", deliver=deliver,
                                               context=False, status=False))
    path = f"/tmp/kestrel-low-{uuid.uuid4().hex}"
    async with trio.open_nursery() as nursery:
        await nursery.start(c.start)
        assert "call bpf_ringbuf_query" not in c.program_listing()  # no wakeup decision in the kernel
        await trio.to_thread.run_sync(lambda: subprocess.run(["/bin/cat", path], stderr=subprocess.DEVNULL))
        seen = []
        with trio.fail_after(10):
            async for item in recv:
                seen.append(item)
                if deliver == "events" and item["path"] == path:
                    break
                if deliver == "json" and f'"path":"{path}"'.encode() in item:
                    break
        await trio.sleep(0.2)  # spin a while longer: warm-ups only
        c.stop()
    while True:
        try:
            seen.append(recv.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    stats = c.stats()
    if deliver == "events":
        assert not [e for e in seen if e["comm"] == "kestrel-warm"]
        assert stats.delivered["open"] == len(seen)
    else:
        assert not [chunk for chunk in seen if b'"comm":"kestrel-warm"' in chunk]
        assert stats.delivered["open"] == sum(chunk.count(b"\n") for chunk in seen)
    assert stats.records == stats.delivered["open"] and stats.parse_errors == 0


@pytest.fixture
def opener():
    with Opener() as child:
        yield child


@pytest.mark.kernel
async def test_reader_is_woken_past_the_threshold_not_per_record(opener):
    # wakeup_bytes=4096 and a deadline far away: one open (~130 bytes of ring) must not wake the reader,
    # a hundred (~13 KiB, past several multiples of 4096) must, and promptly.
    send, recv = trio.open_memory_channel(10_000)
    c = KestrelCollector(send, CollectorConfig(event_types=["open"], buffers=1, wakeup_bytes=4096,
                                               poll_interval=60.0, only_tgids=[opener.pid]))
    async with trio.open_nursery() as nursery:
        await nursery.start(c.start)
        await trio.to_thread.run_sync(opener.ask, 1)
        with trio.move_on_after(2):
            lone = await recv.receive()
            pytest.fail(f"a lone record woke the reader: {lone}")
        await trio.to_thread.run_sync(opener.ask, 100)
        with trio.fail_after(5):  # far below the 60 s deadline: only a wakeup can bring it
            paths = [(await recv.receive())["path"]]
        # Records after the last multiple of 4096 wait for the deadline, or for stop(), whose drain runs as
        # start() ends: read the rest once the nursery is done, not straight after stop().
        c.stop()
    while True:
        try:
            paths.append(recv.receive_nowait()["path"])
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    assert paths == opener.paths(1) + opener.paths(100)


@pytest.mark.kernel
async def test_wakeup_bytes_zero_keeps_the_kernels_own_policy(opener):
    # wakeup_bytes=0: the programs pass no wakeup flag, the kernel wakes the reader for a record written
    # once the reader has caught up, so a lone record arrives at once, long before the 60 s deadline; and
    # a burst after it arrives whole (the poller drains until the ring is empty).
    send, recv = trio.open_memory_channel(10_000)
    c = KestrelCollector(send, CollectorConfig(event_types=["open"], buffers=1, wakeup_bytes=0,
                                               poll_interval=60.0, only_tgids=[opener.pid]))
    async with trio.open_nursery() as nursery:
        await nursery.start(c.start)
        await trio.to_thread.run_sync(opener.ask, 1)
        with trio.fail_after(5):
            assert [(await recv.receive())["path"]] == opener.paths(1)
        await trio.to_thread.run_sync(opener.ask, 300)
        with trio.fail_after(5):
            paths = [(await recv.receive())["path"] for _ in range(300)]
        assert paths == opener.paths(300)
        c.stop()


_BURST_OPENER = """
import sys
for line in sys.stdin:
    for i in range(int(line)):
        try:
            open("/nonexistent-kestrel-burst")
        except OSError:
            pass
"""


@pytest.mark.kernel
async def test_no_record_is_lost_while_the_ring_has_room():
    # Two processes on one 1 MiB ring open in bursts of 1,000 (~120 KiB of records), the next burst only
    # once the last is delivered: the ring is never close to full, so no output may fail.  A consumer_pos
    # published in two steps (zeroed, then written: struct.pack_into) made producers that read it in
    # between see a full ring and drop a few records a second at any rate.
    send, recv = trio.open_memory_channel(1 << 20)
    children = [subprocess.Popen([os.environ.get("PYTHON", "python3"), "-c", _BURST_OPENER],
                                 stdin=subprocess.PIPE, text=True) for _ in range(2)]
    bursts, size = 60, 1000
    try:
        c = KestrelCollector(send, CollectorConfig(event_types=["open"], buffers=1, buffer_size=1 << 20,
                                                   deliver="json", poll_interval=0.005,
                                                   only_tgids=[p.pid for p in children]))
        seen = 0
        async with trio.open_nursery() as nursery:
            await nursery.start(c.start)
            for k in range(bursts):
                for p in children:
                    p.stdin.write(f"{size}\n")
                    p.stdin.flush()
                with trio.fail_after(30):
                    while seen < 2 * size * (k + 1):
                        seen += (await recv.receive()).count(b"/nonexistent-kestrel-burst")
                        if c.stats().kernel_lost:
                            break
                if c.stats().kernel_lost:
                    break
            c.stop()
        stats = c.stats()
        assert stats.kernel["open"]["ringbuf_full"] == [0] * len(stats.kernel["open"]["ringbuf_full"])
        assert stats.kernel["open"]["prog_missed"] == [0]  # the kernel's own count of skipped runs
        assert stats.kernel_lost == 0
        assert seen == 2 * size * bursts
    finally:
        for p in children:
            p.kill()
            p.wait()


@pytest.mark.kernel
async def test_a_stop_hands_on_everything_the_rings_hold_to_a_slow_consumer(opener):
    # 2,000 opens wait in the ring (no wakeup, no deadline for a minute) and the channel holds 16 events:
    # a stop must wait for the consumer, not drop what it cannot take at once.
    send, recv = trio.open_memory_channel(16)
    c = KestrelCollector(send, CollectorConfig(event_types=["open"], buffers=1, wakeup_bytes=(1 << 20) - 8,
                                               poll_interval=60.0, only_tgids=[opener.pid], stop_timeout=30))
    got = []

    async def consume():
        async for ev in recv:
            got.append(ev["path"])
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        await nursery.start(c.start)
        await trio.to_thread.run_sync(opener.ask, 2000)
        c.stop()
        async with trio.open_nursery() as consumer:
            consumer.start_soon(consume)
            await trio.sleep(0.5)  # the stop is under way while the consumer is slow
            # once the pollers are done the collector is closed; end the consumer's loop then
            while not c._closed:
                await trio.sleep(0.05)
            send.close()
    stats = c.stats()
    assert got == opener.paths(2000)
    assert (stats.delivered["open"], stats.user_dropped) == (2000, 0)


@pytest.mark.kernel
async def test_a_stop_cut_short_counts_what_it_could_not_hand_on(opener):
    # The same, but nobody reads and the stop may wait 0.5 s: every record is delivered or counted.
    send, recv = trio.open_memory_channel(16)
    c = KestrelCollector(send, CollectorConfig(event_types=["open"], buffers=1, wakeup_bytes=(1 << 20) - 8,
                                               poll_interval=60.0, only_tgids=[opener.pid], stop_timeout=0.5))
    async with trio.open_nursery() as nursery:
        await nursery.start(c.start)
        await trio.to_thread.run_sync(opener.ask, 2000)
        c.stop()
    stats = c.stats()
    assert stats.records == 2000
    assert stats.delivered["open"] == 16 and stats.dropped["open"] == 2000 - 16
    # The stop's last loss event, which would have said so, found no room either: counted, in the stats.
    assert stats.dropped == {"open": 2000 - 16, "loss": 1} and stats.user_dropped == 2000 - 16 + 1
