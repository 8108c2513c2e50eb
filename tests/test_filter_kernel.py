"""The filters in the programs (kestrel_raw/programs/filter.py), on the real kernel: for each key, an event
that matches and one that does not, both made by the test; the match delivered, the other not, and the
kernel's count of filtered events (STAT_FILTERED) up by exactly the dropped ones.

Images are built by hand from kestrel_raw/programs/filtermaps.py's structs (what kestrel_raw/filters/
compiles) and written with FilterWriter before the collector attaches.  The workloads run in a child
(helpers.Doer) whose tgid the collector is limited to (``only_tgids``), so that the counters see nothing
else; each test does its non-matching events first, then the matching ones: the records of one process go
into one ring in order, so once the last match is read every earlier record has been.
"""
from __future__ import annotations

import os
import shutil
import socket
import time
import uuid

import pytest
import trio

from kestrel_raw.collector import KestrelCollector
from kestrel_raw.collector.filtering import FilterWriter, filter_counters
from kestrel_raw.config import CollectorConfig
from kestrel_raw.programs import filtermaps as fm
from kestrel_raw.spec import CONNECT, EXEC, OPEN, EventType

from helpers import Doer, cgroup2_mount, kernel_dev

pytestmark = pytest.mark.kernel


# -- images, by hand --------------------------------------------------------------------------------------


def row(include=(), exclude=(), outcome=fm.OUTCOME_ANY, rate=0) -> bytes:
    return fm.CFG.pack(sum(fm.KEY_BITS[k] for k in include), sum(fm.KEY_BITS[k] for k in exclude), outcome, rate)


def flags(include=False, exclude=False) -> bytes:
    return fm.VALUE.pack((fm.F_INCLUDE if include else 0) | (fm.F_EXCLUDE if exclude else 0))


def path_key(prefix: bytes, set_: int = 0) -> bytes:
    return fm.KEY_PATH.pack((1 + len(prefix)) * 8, set_, prefix)


def daddr_key(network: str, set_: int = 0) -> bytes:
    addr, _, bits = network.partition("/")
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    raw = socket.inet_pton(family, addr)
    return fm.KEY_DADDR.pack(16 + int(bits or len(raw) * 8), set_, family, raw)


def comm_key(name: str, set_: int = 0) -> bytes:
    return fm.KEY_COMM.pack(set_, name.encode())


# -- running a collector over a workload -------------------------------------------------------------------


def config(doer: Doer | None, *kinds: str, **kw) -> CollectorConfig:
    return CollectorConfig(event_types=kinds or ("open",), buffers=1, context=kw.pop("context", False),
                           only_tgids=None if doer is None else [doer.pid], **kw)


async def run(cfg: CollectorConfig, image: fm.Image, work, until, timeout: float = 20):
    """Load a collector for ``cfg``, write ``image`` before attaching, run ``work`` (in a thread), then read
    events until ``until(events)`` holds.  Returns (the events read, the collector, stopped)."""
    send, recv = trio.open_memory_channel(1 << 20)
    c = KestrelCollector(send, cfg)
    c.load()
    FilterWriter(c._maps).write(image)
    events = []
    async with trio.open_nursery() as nursery:
        await nursery.start(c.start)
        await trio.to_thread.run_sync(work)
        with trio.fail_after(timeout):
            while not until(events):
                events.append(await recv.receive())
        c.stop()
    while True:
        try:
            events.append(recv.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    return events, c


def of(events, kind: EventType) -> list:
    return [e for e in events if e.event_type_id == kind]


def paths(events) -> list[str]:
    return [e["path"] for e in of(events, EventType.OPEN)]


def has_path(path: str):
    return lambda events: path in paths(events)


def kernel(c: KestrelCollector, kind: str) -> dict[str, int]:
    return {name: sum(per_cpu) for name, per_cpu in c.stats().kernel[kind].items()}


@pytest.fixture
def doer():
    with Doer() as d:
        yield d


@pytest.fixture
def files(tmp_path):
    """Two directories of existing files, ``in`` and ``out`` (real paths: the resolved path is compared)."""
    root = os.path.realpath(tmp_path)
    made = {}
    for d in ("in", "out"):
        os.mkdir(os.path.join(root, d))
        made[d] = os.path.join(root, d, "f")
        with open(made[d], "w") as f:
            f.write("x")
    return made


# -- each key ----------------------------------------------------------------------------------------------


async def test_uid_delivers_the_uid_given_and_drops_another(doer, tmp_path):
    tag = uuid.uuid4().hex
    drop, keep = f"/nonexistent-{tag}-uid0", f"/nonexistent-{tag}-uid4242"
    image = fm.Image(0, {OPEN.id: row(include=["uid"])}, {fm.MAP_FUID: {fm.KEY_UID.pack(0, 4242): flags(True)}})

    def work():
        # the real uid only (the record's uid), so that the child can come back to root
        doer.do(f"try_open({drop!r}); os.setresuid(4242, 0, 0); try_open({keep!r}); os.setresuid(0, 0, 0)")

    events, c = await run(config(doer), image, work, has_path(keep))
    assert paths(events) == [keep]
    assert of(events, EventType.OPEN)[0]["uid"] == 4242
    assert kernel(c, "open")["filtered"] == 1


async def test_comm_delivers_the_name_given_and_drops_another(doer):
    tag = uuid.uuid4().hex
    drop, keep = f"/nonexistent-{tag}-a", f"/nonexistent-{tag}-b"
    image = fm.Image(0, {OPEN.id: row(include=["comm"])}, {fm.MAP_FCOMM: {comm_key("krf-keep"): flags(True)}})
    events, c = await run(config(doer), image,
                          lambda: doer.do(f"comm('krf-drop'); try_open({drop!r}); comm('krf-keep'); try_open({keep!r})"),
                          has_path(keep))
    assert paths(events) == [keep]
    assert kernel(c, "open")["filtered"] == 1


async def test_exe_delivers_the_executable_given_and_drops_another(doer, tmp_path):
    # The child opens once as python (dropped), then becomes a copy of cat, whose every open is delivered.
    cat = str(tmp_path / "krf-cat")
    shutil.copy2("/bin/cat", cat)
    st = os.stat(cat)
    drop = f"/nonexistent-{uuid.uuid4().hex}"
    image = fm.Image(0, {OPEN.id: row(include=["exe"])},
                     {fm.MAP_FEXE: {fm.KEY_EXE.pack(0, kernel_dev(st.st_dev), st.st_ino): flags(True)}})

    def work():
        doer.do(f"try_open({drop!r})")
        assert doer.exec_(cat, "/etc/hostname") == 0

    events, c = await run(config(doer), image, work, has_path("/etc/hostname"))
    assert drop not in paths(events)
    assert {e["comm"] for e in of(events, EventType.OPEN)} == {"krf-cat"}
    assert kernel(c, "open")["filtered"] == 1


@pytest.mark.parametrize("key", ["cgroup", "container"])
async def test_cgroup_delivers_its_cgroup_drops_another_and_passes_one_not_scanned(doer, key):
    root = cgroup2_mount()
    with open(f"/proc/{doer.pid}/cgroup") as f:
        home = root + next(line.split(":", 2)[2].strip() for line in f if line.startswith("0::"))
    made = [os.path.join(root, f"krf-{uuid.uuid4().hex[:12]}") for _ in range(2)]
    for d in made:
        os.mkdir(d)
    inside, unknown = made
    tag = uuid.uuid4().hex
    drop, keep, passes = (f"/nonexistent-{tag}-{x}" for x in ("home", "in", "unknown"))
    map_name = fm.MAP_FCGROUP if key == "cgroup" else fm.MAP_FCONTAINER
    # The cgroup the child starts in is known and does not match; ``unknown`` was made after the scan.
    image = fm.Image(0, {OPEN.id: row(include=[key])}, {map_name: {
        fm.KEY_CGROUP.pack(0, 0, os.stat(inside).st_ino): flags(True),
        fm.KEY_CGROUP.pack(0, 0, os.stat(home).st_ino): flags(False)}})

    def move(to):
        # from the test's process: an open of cgroup.procs by the child would be an event of its own
        with open(os.path.join(to, "cgroup.procs"), "w") as f:
            f.write(str(doer.pid))

    def work():
        doer.do(f"try_open({drop!r})")
        move(unknown)
        doer.do(f"try_open({passes!r})")
        move(inside)
        doer.do(f"try_open({keep!r})")
        move(home)

    try:
        events, c = await run(config(doer), image, work, has_path(keep))
    finally:
        move(home)
        for d in made:
            os.rmdir(d)
    assert paths(events) == [passes, keep]
    assert kernel(c, "open")["filtered"] == 1


def _listener(family=socket.AF_INET, host="127.0.0.1"):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind((host, 0))
    s.listen(16)
    return s


async def test_port_delivers_the_port_given_and_drops_another(doer):
    with _listener() as a, _listener() as b:
        keep, drop = a.getsockname()[1], b.getsockname()[1]
        image = fm.Image(0, {CONNECT.id: row(include=["port"])}, {fm.MAP_FPORT: {fm.KEY_PORT.pack(0, keep): flags(True)}})

        def got(events):
            return any(e["dport"] == keep for e in of(events, EventType.CONNECT))

        events, c = await run(config(doer, "connect"), image,
                              lambda: doer.do(f"connect('127.0.0.1', {drop}); connect('127.0.0.1', {keep})"), got)
    assert [e["dport"] for e in of(events, EventType.CONNECT)] == [keep]
    assert kernel(c, "connect")["filtered"] == 1


async def test_daddr_delivers_the_networks_given_v4_and_v6_and_drops_another(doer):
    with _listener() as v4, _listener(host="127.0.0.2") as other, _listener(socket.AF_INET6, "::1") as v6:
        image = fm.Image(0, {CONNECT.id: row(include=["daddr"])}, {fm.MAP_FDADDR: {
            daddr_key("127.0.0.1/32"): flags(True), daddr_key("::1/128"): flags(True)}})
        port4, port6 = v4.getsockname()[1], v6.getsockname()[1]

        def got(events):
            return any(e["dport"] == port6 for e in of(events, EventType.CONNECT))

        events, c = await run(config(doer, "connect"), image,
                              lambda: doer.do(f"connect('127.0.0.2', {other.getsockname()[1]}); "
                                              f"connect('127.0.0.1', {port4}); connect('::1', {port6})"),
                              got)
    assert [(e["daddr"], e["dport"]) for e in of(events, EventType.CONNECT)] == [("127.0.0.1", port4), ("::1", port6)]
    assert kernel(c, "connect")["filtered"] == 1


async def test_path_prefix_takes_the_opened_file_or_the_given_path(doer, files):
    inside = os.path.dirname(files["in"]) + "/"
    image = fm.Image(0, {OPEN.id: row(include=["path"])}, {fm.MAP_FPATH: {path_key(inside.encode()): flags(True)}})
    missing_in, missing_out = inside + "missing", os.path.dirname(files["out"]) + "/missing"
    # A relative path that resolves inside: the opened file's path is what counts.
    rel = os.path.relpath(files["in"], os.path.dirname(files["out"]))

    def work():
        doer.do(f"try_open({files['out']!r}); try_open({missing_out!r}); os.chdir({os.path.dirname(files['out'])!r}); "
                f"try_open({rel!r}); try_open({missing_in!r}); try_open({files['in']!r})")

    events, c = await run(config(doer), image, work, has_path(files["in"]))
    assert paths(events) == [rel, missing_in, files["in"]]
    assert kernel(c, "open")["filtered"] == 2


@pytest.mark.parametrize("outcome", [fm.OUTCOME_FAILED, fm.OUTCOME_SUCCESS])
async def test_failed_only_and_success_only(doer, files, outcome):
    missing = os.path.dirname(files["in"]) + "/missing"
    drop, keep = (files["in"], missing) if outcome == fm.OUTCOME_FAILED else (missing, files["in"])
    image = fm.Image(0, {OPEN.id: row(outcome=outcome)}, {})
    events, c = await run(config(doer), image, lambda: doer.do(f"try_open({drop!r}); try_open({keep!r})"),
                          has_path(keep))
    assert paths(events) == [keep]
    assert kernel(c, "open")["filtered"] == 1


async def test_an_exclude_beats_an_include(doer, files):
    # uid 0 is included; the "in" directory is excluded; one comm is both included and excluded.
    inside = os.path.dirname(files["in"]) + "/"
    image = fm.Image(0, {OPEN.id: row(include=["uid", "comm"], exclude=["path", "comm"])}, {
        fm.MAP_FUID: {fm.KEY_UID.pack(0, 0): flags(True)},
        fm.MAP_FCOMM: {comm_key("krf-ok"): flags(True), comm_key("krf-both"): flags(True, True)},
        fm.MAP_FPATH: {path_key(inside.encode()): flags(exclude=True)}})

    def work():
        doer.do(f"comm('krf-ok'); try_open({files['in']!r}); comm('krf-both'); try_open({files['out']!r}); "
                f"comm('krf-ok'); try_open({files['out']!r})")

    events, c = await run(config(doer), image, work, has_path(files["out"]))
    assert paths(events) == [files["out"]]
    assert of(events, EventType.OPEN)[0]["comm"] == "krf-ok"
    assert kernel(c, "open")["filtered"] == 2


async def test_pid_follows_a_grandchild_born_after_the_filter(tmp_path):
    tag = uuid.uuid4().hex
    keep, drop = f"/nonexistent-{tag}-grandchild", f"/nonexistent-{tag}-stranger"
    with Doer() as parent, Doer() as stranger:
        image = fm.Image(0, {OPEN.id: row(include=["pid"])}, {fm.MAP_FPID: {fm.KEY_PID.pack(0, parent.pid): flags(True)}})

        def work():
            stranger.do(f"try_open({drop!r})")
            # a child, then its child: both born now, after the filter was written
            parent.do("pid = os.fork()\n"
                      "if pid == 0:\n"
                      "    p2 = os.fork()\n"
                      f"    if p2 == 0:\n        try_open({keep!r}); os._exit(0)\n"
                      "    os.waitpid(p2, 0); os._exit(0)\n"
                      "os.waitpid(pid, 0)")

        events, c = await run(config(None), image, work, has_path(keep))
    assert drop not in paths(events)
    grandchild = [e for e in of(events, EventType.OPEN) if e["path"] == keep][0]
    assert grandchild["pid"] not in (parent.pid, os.getpid())
    # every other process's opens were dropped too (not an exact count: the host keeps opening)
    assert kernel(c, "open")["filtered"] >= 1


async def test_rate_limit_delivers_about_the_rate_and_counts_the_rest_exactly(doer):
    n, rate = 1000, 10
    tag = uuid.uuid4().hex
    image = fm.Image(0, {OPEN.id: row(rate=rate)}, {})
    took = []

    def work():
        t = time.monotonic()
        doer.do(f"[try_open('/nonexistent-{tag}-' + str(i)) for i in range({n})]")
        took.append(time.monotonic() - t)
        doer.do(f"time.sleep(0.2); try_open('/nonexistent-{tag}-last')")  # a token has come back by then

    events, c = await run(config(doer), image, work, has_path(f"/nonexistent-{tag}-last"))
    burst = [p for p in paths(events) if not p.endswith("-last")]
    counts = kernel(c, "open")
    assert len(burst) + counts["rate_limited"] == n, (len(burst), counts)
    # a full bucket (rate tokens) at the start, then rate per second while the burst lasted
    assert rate <= len(burst) <= rate + took[0] * rate + 1, (len(burst), took)
    assert counts["filtered"] == 0
    assert filter_counters(c.stats().kernel)["open"] == {"filtered": 0, "rate_limited": counts["rate_limited"]}


async def test_a_flip_changes_what_is_delivered_with_no_program_reloaded(doer):
    tag = uuid.uuid4().hex
    send, recv = trio.open_memory_channel(1 << 16)
    c = KestrelCollector(send, config(doer))
    c.load()
    writer = FilterWriter(c._maps)
    writer.write(fm.Image(0, {OPEN.id: row(include=["comm"])}, {fm.MAP_FCOMM: {comm_key("krf-a"): flags(True)}}))
    ids = sorted(prog.info().id for _spec, prog in c._programs)
    seen = []

    async def until(path):
        with trio.fail_after(20):
            while path not in seen:
                e = await recv.receive()
                if e.event_type_id == EventType.OPEN:
                    seen.append(e["path"])

    async with trio.open_nursery() as nursery:
        await nursery.start(c.start)
        await trio.to_thread.run_sync(doer.do, f"comm('krf-b'); try_open('/x-{tag}-b1'); comm('krf-a'); "
                                               f"try_open('/x-{tag}-a1')")
        await until(f"/x-{tag}-a1")
        # the image compiled for set 0 again: the writer puts it in set 1
        writer.write(fm.Image(0, {OPEN.id: row(include=["comm"])}, {fm.MAP_FCOMM: {comm_key("krf-b"): flags(True)}}))
        assert writer.current.set == 1
        await trio.to_thread.run_sync(doer.do, f"comm('krf-a'); try_open('/x-{tag}-a2'); comm('krf-b'); "
                                               f"try_open('/x-{tag}-b2')")
        await until(f"/x-{tag}-b2")
        # the set left behind is empty: its entries deleted, its row zero
        assert list(c._maps[fm.MAP_FCOMM].keys()) == [comm_key("krf-b", 1)]
        assert c._maps[fm.MAP_FCFG][OPEN.id] == bytes(fm.CFG.size)
        assert c._maps[fm.MAP_FCFG][fm.FILTER_KINDS + OPEN.id] == row(include=["comm"])
        assert sorted(prog.info().id for _spec, prog in c._programs) == ids
        c.stop()
    assert seen == [f"/x-{tag}-a1", f"/x-{tag}-b2"]
    assert kernel(c, "open")["filtered"] == 2


async def test_with_context_a_dropped_exec_feeds_the_cache_and_is_not_delivered(doer, tmp_path):
    # exec events limited to a comm nobody has: the exec record is still written, flagged, for the process
    # cache; the open after it is delivered, carrying what the cache learnt from the exec (its exe).
    image = fm.Image(0, {EXEC.id: row(include=["comm"])}, {fm.MAP_FCOMM: {comm_key("krf-nobody"): flags(True)}})
    cat = str(tmp_path / "krf-ctx-cat")
    shutil.copy2("/bin/cat", cat)

    def work():
        assert doer.exec_(cat, "/etc/hostname") == 0

    events, c = await run(config(doer, "exec", "open", context=True), image, work, has_path("/etc/hostname"))
    assert of(events, EventType.EXEC) == []
    assert kernel(c, "exec")["filtered"] == 1
    opened = [e for e in of(events, EventType.OPEN) if e["path"] == "/etc/hostname"][0]
    assert opened["comm"] == "krf-ctx-cat" and opened["exe"] == cat
    assert c.stats().consumed >= 1
