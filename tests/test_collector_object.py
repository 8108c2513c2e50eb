"""The collector with a BPF object (``CollectorConfig.program_path``, ``kestrel-raw run --object``): the seed's
shape (tests/bpf_src/seed.c: execve/openat/connect tracepoints writing the seed's ExecveEvent, OpenEvent and
ConnectEvent structs to a ring buffer) loaded, attached and read by the collector's pollers; the library
gets each record parsed by a construct schema of those structs, the CLI prints each as hex with its length.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import uuid

import pytest
import trio
from construct import Bytes, CString, Int32sl, Int32ul, Int64ul, Padded, PaddedString, Peek, Struct, Switch, this

from kestrel_raw.collector import KestrelCollector, ObjectRecord
from kestrel_raw.config import CollectorConfig
from tests.helpers import Cli, bpf_object

pytestmark = pytest.mark.kernel

# The seed's records (tests/bpf_src/seed_events.h), as a user of the library writes their schema.  A path
# is read with bpf_probe_read_user_str into reserved ring memory: past its NUL the array holds whatever
# was there before, so it is a C string in a padded field, not a NUL-padded one.


def CStr(size: int):
    return Padded(size, CString("utf8"))


EventHeader = Struct("type" / Int32ul, "pid" / Int32ul, "tid" / Int32ul, "uid" / Int32ul, "ts_ns" / Int64ul,
                     "comm" / PaddedString(16, "utf8"))
ExecveEvent = Struct("hdr" / EventHeader, "ppid" / Int32ul, "fault" / Int32sl, "filename" / CStr(256))
OpenEvent = Struct("hdr" / EventHeader, "dfd" / Int32sl, "flags" / Int32sl, "mode" / Int32ul, "fault" / Int32sl,
                   "path" / CStr(256))
ConnectEvent = Struct("hdr" / EventHeader, "fd" / Int32sl, "addrlen" / Int32ul, "addr" / Bytes(28),
                      "fault" / Int32sl)
SeedRecord = Struct("type" / Peek(Int32ul), "event" / Switch(this.type, {1: ExecveEvent, 2: OpenEvent,
                                                                        3: ConnectEvent}))
SIZES = {1: ExecveEvent.sizeof(), 2: OpenEvent.sizeof(), 3: ConnectEvent.sizeof()}


def _provoke(marker: str) -> None:
    subprocess.run(["/bin/true", marker], check=True)
    try:
        os.close(os.open(marker, os.O_RDONLY | os.O_CLOEXEC))
    except FileNotFoundError:
        pass
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect(("127.0.0.1", 9))
    except OSError:
        pass
    s.close()


async def test_seed_object_records_parsed_by_the_users_schema(tmp_path):
    obj = bpf_object("seed.c", tmp_path)
    send, recv = trio.open_memory_channel(100_000)
    config = CollectorConfig(program_path=str(obj), event_types=(), record_schema=SeedRecord, buffers=1,
                             queue_policy="drop")
    collector = KestrelCollector(send, config)
    marker = f"/tmp/kr-object-{uuid.uuid4().hex}"
    me = os.getpid()
    seen: dict[int, dict] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(collector.start)
        assert set(collector.bpf_object.links) == {"trace_execve", "trace_openat", "trace_connect"}
        with trio.move_on_after(20):
            while len(seen) < 3:
                await trio.to_thread.run_sync(_provoke, marker)
                with trio.move_on_after(1):
                    async for rec in recv:
                        assert isinstance(rec, ObjectRecord) and (rec.object, rec.map) == ("seed", "events")
                        ev = rec.value["event"]
                        if ((rec.value["type"] == 1 and ev["filename"] == "/bin/true" and ev["ppid"] == me)
                                or (rec.value["type"] == 2 and ev["path"] == marker)
                                or (rec.value["type"] == 3 and ev["hdr"]["pid"] == me and ev["addrlen"] == 16)):
                            assert len(rec.data) == SIZES[rec.value["type"]]
                            seen.setdefault(rec.value["type"], ev)
                        if len(seen) == 3:
                            break
        collector.stop()
    assert set(seen) == {1, 2, 3}, f"missing record types: {set(seen)}"
    assert seen[2]["hdr"]["pid"] == me and seen[2]["flags"] & 3 == os.O_RDONLY and seen[2]["fault"] == 0
    assert seen[3]["addr"][:8] == bytes([2, 0, 0, 9, 127, 0, 0, 1]) and seen[3]["fault"] == 0
    assert seen[1]["hdr"]["uid"] == os.getuid() and seen[1]["fault"] == 0
    stats = collector.stats()
    assert stats.delivered["seed:events"] >= 3


def test_cli_object_prints_records_as_hex(tmp_path):
    obj = bpf_object("seed.c", tmp_path)
    cli = Cli(tmp_path, "--object", str(obj), "--buffers", "1", name="object")
    try:
        deadline = time.monotonic() + 60
        while "attached" not in cli.stderr():
            assert cli.proc.poll() is None and time.monotonic() < deadline, cli.stderr()
            time.sleep(0.05)
        marker = f"/tmp/kr-cli-object-{uuid.uuid4().hex}"

        def mine(e):
            data = bytes.fromhex(e["hex"])
            return OpenEvent.parse(data).path == marker if data[:4] == (2).to_bytes(4, "little") else False

        end = time.monotonic() + 20
        found = []
        while not found and time.monotonic() < end:
            _provoke(marker)
            time.sleep(0.2)
            found = [e for e in cli.events() if mine(e)]
        rc, err = cli.stop()
    finally:
        cli.kill()
    assert rc == 0, err
    assert found, f"no record of the marker's open among {len(cli.events())} lines"
    line = found[0]
    assert set(line) == {"object", "map", "len", "hex"}
    assert (line["object"], line["map"], line["len"]) == ("seed", "events", SIZES[2])
    # every line is a record of the object's ring: no built-in events without --events
    assert all(set(e) == {"object", "map", "len", "hex"} for e in cli.events())
    assert re.search(r"delivered\[[^]]*seed:events=[1-9]", err), err
