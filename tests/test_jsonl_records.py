"""encode_record (records straight to JSON lines, the collector's hot path) is byte for byte
encode_event(normalize(parse_record(raw))), and fails exactly where that fails."""
from __future__ import annotations

import struct

from hypothesis import given, settings, strategies as st

from helpers import (
    KIND_CONNECT, KIND_DNS_QUERY, KIND_EXEC, KIND_EXIT, KIND_OPEN, KIND_SHELL_COMMAND, LENGTH_FIELDS, records,
)
from kestrel_raw.codec.compiled import CODEC
from kestrel_raw.codec.context import CgroupEntry, LineageEntry, ProcEntry
from kestrel_raw.codec.decode import json_value
from kestrel_raw.codec.event import entity_key
from kestrel_raw.codec.normalize import event_from_raw
from kestrel_raw.codec.jsonl import encode_event, encode_record, encode_records
from kestrel_raw.codec.normalize import normalize
from kestrel_raw.codec.records import parse_record
from kestrel_raw.codec.schema import build_record
from kestrel_raw.errors import RecordError
from kestrel_raw.spec import OPEN

KIND_AT = OPEN.kind.offset
WHO_MEMO, LINE_MEMO = CODEC["WHO_MEMO"], CODEC["LINE_MEMO_open"]

WALL = 1_795_546_402_000_000_000


def via_event(data):
    try:
        event = normalize(parse_record(data), WALL)
    except RecordError:
        return RecordError
    return b"" if event is None else encode_event(event)  # None: an internal record, consumed


def fused(data):
    try:
        return encode_record(data, WALL)
    except RecordError:
        return RecordError


# Strings that take every branch: ASCII, UTF-8, invalid UTF-8, JSON escapes, NULs (cut), empty.
hostile = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"", b"/etc/passwd", "/tmp/\u00e9\u4e2d".encode(), b"/x\xff\xfe", b'a"b\\c\n\t\x01',
                     b"\xed\xa0\x80", b"a\0b"]),
)


@settings(max_examples=500)
@given(records())
def test_same_line_as_the_event_path(data):
    assert fused(data) == via_event(data)


@settings(max_examples=300)
@given(hostile, hostile, hostile, st.integers(0, 3))
def test_hostile_strings_every_kind(comm, s1, s2, flags):
    recs = [
        build_record(KIND_OPEN, comm=comm[:16], path=s1, header_flags=flags, ret=-2, pid=7, start_ns=11),
        build_record(KIND_EXEC, comm=comm[:16], filename=s1, args=s1 + b"\0" + s2, args_total=5000, header_flags=flags),
        build_record(KIND_CONNECT, comm=comm[:16], addr=b"\x01\x00" + s1, addrlen=2 + len(s1), header_flags=flags),
        build_record(KIND_CONNECT, comm=comm[:16], addr=b"\x01\x00\x00" + s2, addrlen=3 + len(s2)),
        build_record(KIND_EXIT, comm=comm[:16], exit_code=0x0700),
    ]
    for data in recs:
        assert fused(data) == via_event(data) != RecordError


@settings(max_examples=300)
@given(records(), st.data())
def test_fails_where_the_event_path_fails(data, draw):
    b = bytearray(data)
    offsets = LENGTH_FIELDS[b[KIND_AT]]
    for off in offsets:
        struct.pack_into("<I", b, off, draw.draw(st.integers(0, 2**32 - 1)))
    cut = draw.draw(st.integers(0, len(b)))
    unknown = bytes(b[:KIND_AT]) + b"\x09\x00" + bytes(b[KIND_AT + 2:])
    for d in (bytes(b), bytes(b[:cut]), bytes(b[:KIND_AT + 1]), unknown):
        assert fused(d) == via_event(d)


def test_one_exact_line():
    data = build_record(KIND_OPEN, comm=b"cat", path=b"/etc/hostname", ret=3, pid=42, tid=43, ppid=1,
                        uid=1000, gid=1000, ts_ns=5000, start_ns=1000, flags=0o2000000, cpu=1)
    line = (
        b'{"type":"open","event_type_id":2,"ts_mono_ns":5000,"ts_wall_ns":1795546402000005000,'
        b'"entity_key":' + str(normalize(parse_record(data), 0).entity_key).encode() +
        b',"pid":42,"tid":43,"cpu":1,"ppid":1,"uid":1000,"gid":1000,"comm":"cat","euid":0,"egid":0,"auid":0,'
        b'"sessionid":0,"tty":null,"cgroup_id":0,"parent_entity_key":' + str(entity_key(1, 0)).encode() +
        b',"source":"ebpf","path":"/etc/hostname","flags":524288,"mode":0,"ret":3,"truncated":false,"fault":false,'
        b'"syscall":"openat","resolve":0,"resolved_path":null,"toctou":false,"late_read":false,"cgroup":null,'
        b'"container_id":null,"container_name":null,"container_image":null,"exe":null,"exe_deleted":null,'
        b'"exe_memfd":null,"cwd":null,"pidns":null,"mntns":null,"netns":null,"hostname":null}\n'
    )
    assert encode_record(data, WALL) == line
    assert encode_event(normalize(parse_record(data), WALL)) == line


@settings(max_examples=200)
@given(st.lists(st.one_of(records(), st.binary(max_size=80)), max_size=12))
def test_a_batch_is_its_lines_joined_and_bad_records_counted(batch):
    each = [fused(d) for d in batch]
    chunk, kinds, bad = encode_records(batch, WALL)
    assert chunk == b"".join(line for line in each if line is not RecordError)
    assert kinds == [d[KIND_AT] for d, line in zip(batch, each) if line is not RecordError and line]
    assert bad == sum(line is RecordError for line in each)


def test_the_per_thread_text_is_keyed_by_every_byte_of_it(monkeypatch):
    # Same pid, tid and start time, another comm (a thread renamed itself): another line.  And a full
    # memo is emptied, not grown.
    monkeypatch.setitem(CODEC, "WHO_MEMO_MAX", 2)
    lines = set()
    for comm in (b"one", b"two", b"three", b"one"):
        data = build_record(KIND_OPEN, comm=comm, path=b"/p", pid=7, tid=7, start_ns=11)
        line = encode_record(data, WALL)
        assert line == via_event(data) and f'"comm":"{comm.decode()}"'.encode() in line
        lines.add(line)
        assert len(WHO_MEMO) <= 2
    assert len(lines) == 3


@settings(max_examples=300)
@given(records(), st.integers(0, 2**64 - 1), st.integers(0, 3), st.data())
def test_an_open_line_from_the_memo_is_the_line_made_afresh(data, ts, flags, draw):
    # The open memo keeps the line's text besides its time, keyed by every byte after the timestamp
    # (bytes 0..7).  Encode a record, then the same record with another time (a hit), another header
    # flags (a miss), and one byte changed anywhere after the time (a miss): each must be the line the
    # event path makes.
    if data[KIND_AT] != KIND_OPEN:
        return
    LINE_MEMO.clear()
    again = bytearray(data)
    struct.pack_into("<Q", again, 0, ts)
    flagged = bytearray(again)
    struct.pack_into("<H", flagged, OPEN.header_flags.offset, flags)
    changed = bytearray(data)
    at = draw.draw(st.integers(8, len(data) - 1))
    changed[at] ^= draw.draw(st.integers(1, 255))
    for d in (data, bytes(again), bytes(flagged), data, bytes(changed), bytes(again)):
        assert fused(d) == via_event(d)


def test_the_open_memo_is_bounded(monkeypatch):
    monkeypatch.setitem(CODEC, "LINE_MEMO_MAX", 3)
    LINE_MEMO.clear()
    for i in range(10):
        data = build_record(KIND_OPEN, comm=b"c", path=b"/p%d" % i, pid=7, tid=7, start_ns=11)
        assert encode_record(data, WALL) == via_event(data)
        assert 1 <= len(LINE_MEMO) <= 3
    # A path longer than LINE_MEMO_VAR_MAX is encoded, not kept.
    LINE_MEMO.clear()
    data = build_record(KIND_OPEN, comm=b"c", path=b"/" * (CODEC["LINE_MEMO_VAR_MAX"] + 1), pid=7, tid=7)
    assert encode_record(data, WALL) == via_event(data)
    assert not LINE_MEMO


class FixedContext:
    """A context provider with one answer per scope, that records the updates it is given."""

    def __init__(self, ancestors=None) -> None:
        self.cg = CgroupEntry("/libpod_parent/libpod-" + "a" * 64, "a" * 64, "web", "localhost/web:1")
        self.pr = ProcEntry("/usr/bin/c\udcffat", True, False, "/tmp/\u00e9", 4026531836, 4026531841, 4026531840,
                            "box")
        self.li = LineageEntry(ancestors, None if ancestors is None else json_value(ancestors))
        self.updates = []

    def cgroup(self, cgroup_id):
        return self.cg

    def proc(self, pid, start_ns, tid):
        return self.pr

    def lineage(self, pid, start_ns):
        return self.li

    def text(self, cgroup_id, pid, start_ns, tid):
        return (CODEC["ctxtext_cgroup"](self.cg) + CODEC["ctxtext_proc"](self.pr)
                + CODEC["ctxtext_lineage"](self.li))

    def __getattr__(self, name):
        if name.startswith("update_"):
            return lambda values: self.updates.append((name[7:], values))
        raise AttributeError(name)


@settings(max_examples=200)
@given(records(), st.booleans())
def test_context_values_are_the_same_on_both_paths(data, with_ancestors):
    ancestors = [{"pid": 1, "entity_key": 5, "exe": "/sbin/init", "argv": ["init", "\udcff"]}] if with_ancestors \
        else None
    ctx = FixedContext(ancestors)
    event = event_from_raw(data, WALL, ctx)
    line = encode_record(data, WALL, ctx)
    assert (b"" if event is None else encode_event(event)) == line
    assert [u for u, _ in ctx.updates] == 2 * ([] if data[KIND_AT] in (KIND_OPEN, KIND_CONNECT, KIND_SHELL_COMMAND,
                                                                    KIND_DNS_QUERY) else
                                              [{1: "exec", 4: "exit", 5: "fork", 250: "proc"}[data[KIND_AT]]])
    if event is not None:
        assert event["exe"] == "/usr/bin/c\udcffat" and event["hostname"] == "box"
        assert event.get("ancestors") == ancestors
        assert line.endswith(
            b',"cgroup":"/libpod_parent/libpod-' + b"a" * 64 + b'","container_id":"' + b"a" * 64 + b'",'
            b'"container_name":"web","container_image":"localhost/web:1","exe":"/usr/bin/c\xef\xbf\xbdat",'
            b'"exe_b64":"L3Vzci9iaW4vY/9hdA==","exe_deleted":true,"exe_memfd":false,"cwd":"/tmp/\xc3\xa9",'
            b'"pidns":4026531836,"mntns":4026531841,"netns":4026531840,"hostname":"box"'
            + (b',"ancestors":[{"pid":1,"entity_key":5,"exe":"/sbin/init","argv":["init","\xef\xbf\xbd"]}]'
               if with_ancestors else b"") + b"}\n")
