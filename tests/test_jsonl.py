"""JSON lines: exact text per kind, lossless non-UTF-8 via *_b64, strict UTF-8 output, the 0600 sink."""
from __future__ import annotations

import base64
import io
import json
import os
import stat

import pytest
from hypothesis import given, strategies as st

from helpers import connect_bytes, exec_bytes, exit_bytes, fork_bytes, open_bytes
from kestrel_raw.codec.event import KestrelEvent, entity_key
from kestrel_raw.codec.jsonl import encode_event
from kestrel_raw.codec.normalize import normalize
from kestrel_raw.codec.records import parse_record
from kestrel_raw.sinks.jsonl import JsonlSink

WALL = 1_700_000_000_000_000_000
HEAD = ('"ts_mono_ns":1000000123,"ts_wall_ns":1700000001000000123,"entity_key":17461281073734017390,'
        '"pid":4242,"tid":4243,"cpu":3,"ppid":1,"uid":1000,"gid":100,"comm":"cat","euid":1000,"egid":100,'
        '"auid":1000,"sessionid":7,"tty":"pts/2","cgroup_id":1,"parent_entity_key":%d,"source":"ebpf",'
        % entity_key(1, 555_000))
# The context keys, last, as the provider that knows nothing gives them (no collector behind the codec).
NO_CONTEXT = (',"cgroup":null,"container_id":null,"container_name":null,"container_image":null,"exe":null,'
              '"exe_deleted":null,"exe_memfd":null,"cwd":null,"pidns":null,"mntns":null,"netns":null,'
              '"hostname":null}\n')
CONTEXT_KEYS = ["cgroup", "container_id", "container_name", "container_image", "exe", "exe_deleted",
                "exe_memfd", "cwd", "pidns", "mntns", "netns", "hostname"]


def line(data: bytes) -> bytes:
    return encode_event(normalize(parse_record(data), WALL))


def strict(raw: bytes) -> dict:
    text = raw.decode("utf-8")                     # strict: fails on invalid UTF-8
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    obj = json.loads(text)
    json.dumps(obj, ensure_ascii=False).encode("utf-8")   # fails on a lone surrogate
    return obj


def test_exec_line():
    assert line(exec_bytes()) == (
        '{"type":"exec","event_type_id":1,' + HEAD
        + '"filename":"/bin/ls","argv":["ls","-l","/tmp"],"truncated":false,"fault":false,"ret":0,'
          '"caps_effective":0,"caps_permitted":0,"late_read":false' + NO_CONTEXT).encode()


def test_open_line():
    assert line(open_bytes(ret=-2)) == (
        '{"type":"open","event_type_id":2,' + HEAD
        + '"path":"/etc/passwd","flags":524288,"mode":0,"ret":-2,"truncated":false,"fault":false,'
          '"syscall":"openat","resolve":0,"resolved_path":null,"toctou":false,"late_read":false' + NO_CONTEXT).encode()
    assert line(open_bytes(ret=3, oflags=0o101, mode=0o100644, resolved=b"/etc/passwd", flags=4)) == (
        '{"type":"open","event_type_id":2,' + HEAD
        + '"path":"/etc/passwd","flags":65,"mode":420,"ret":3,"truncated":false,"fault":false,'
          '"syscall":"openat","resolve":0,"resolved_path":"/etc/passwd","toctou":true,"late_read":false'
        + NO_CONTEXT).encode()


def test_connect_line():
    assert line(connect_bytes()) == (
        '{"type":"connect","event_type_id":3,' + HEAD
        + '"family":"AF_INET","daddr":"127.0.0.1","dport":8080,"ret":-111,"fault":false,"toctou":false,'
          '"late_read":false' + NO_CONTEXT).encode()


def test_exit_line():
    assert line(exit_bytes(9)) == (
        '{"type":"exit","event_type_id":4,' + HEAD + '"exit_code":0,"signal":9,"core_dumped":false'
        + NO_CONTEXT).encode()


def test_fork_line():
    assert line(fork_bytes(thread=True, pid=4242, tid=4243)) == (
        '{"type":"fork","event_type_id":5,' + HEAD + '"thread":true' + NO_CONTEXT).encode()


@pytest.mark.parametrize("data, keys", [
    (exec_bytes(), ["filename", "argv", "truncated", "fault", "ret", "caps_effective", "caps_permitted",
                    "late_read"]),
    (open_bytes(), ["path", "flags", "mode", "ret", "truncated", "fault", "syscall", "resolve", "resolved_path",
                    "toctou", "late_read"]),
    (connect_bytes(), ["family", "daddr", "dport", "ret", "fault", "toctou", "late_read"]),
    (exit_bytes(), ["exit_code", "signal", "core_dumped"]),
    (fork_bytes(), ["thread"]),
])
def test_exact_keys(data, keys):
    obj = strict(line(data))
    assert list(obj) == ["type", "event_type_id", "ts_mono_ns", "ts_wall_ns", "entity_key", "pid", "tid", "cpu",
                         "ppid", "uid", "gid", "comm", "euid", "egid", "auid", "sessionid", "tty", "cgroup_id",
                         "parent_entity_key", "source"] + keys + CONTEXT_KEYS


def test_same_text_as_json_dumps():
    raw = line(exec_bytes(filename='/tmp/"quo\\te"\n\t€'.encode(), args=b"\x01\0\x7f\0"))
    obj = strict(raw)
    assert raw == (json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
    assert obj["filename"] == '/tmp/"quo\\te"\n\t€' and obj["argv"] == ["\x01", "\x7f"]


def test_non_utf8_strings_get_b64_siblings():
    raw = line(exec_bytes(filename=b"/tmp/\xff", args=b"ok\0\xc3\0"))
    assert b'"filename":"/tmp/\xef\xbf\xbd","filename_b64":"L3RtcC//"' in raw
    assert b'"argv":["ok","\xef\xbf\xbd"],"argv_b64":["b2s=","ww=="]' in raw
    obj = strict(raw)
    assert base64.b64decode(obj["filename_b64"]) == b"/tmp/\xff"
    assert [base64.b64decode(a) for a in obj["argv_b64"]] == [b"ok", b"\xc3"]
    assert "comm_b64" not in obj
    assert "argv_b64" not in strict(line(exec_bytes()))


def test_non_utf8_path_and_unix_socket():
    obj = strict(line(open_bytes(path=b"\xfe\xed")))
    assert (obj["path"], obj["path_b64"]) == ("\ufffd\ufffd", "/u0=")
    addr = b"\x01\x00" + b"/run/\xff"
    obj = strict(line(connect_bytes(addr=addr, addrlen=len(addr))))
    assert (obj["daddr"], base64.b64decode(obj["daddr_b64"])) == ("/run/\ufffd", b"/run/\xff")


@given(st.binary(max_size=40), st.lists(st.binary(max_size=10), max_size=5), st.binary(max_size=15))
def test_any_bytes_roundtrip(filename, argv, comm):
    filename = filename.replace(b"\0", b"")
    comm = comm.replace(b"\0", b"")
    args = b"".join(a.replace(b"\0", b"") + b"\0" for a in argv)
    from helpers import context_block, header
    import struct
    data = (header(1, comm=comm) + struct.pack("<IIIiQQ", len(filename), len(args), len(args), 0, 0, 0)
            + context_block() + filename + args)
    obj = strict(line(data))
    exact = lambda key: base64.b64decode(obj[key + "_b64"]) if key + "_b64" in obj else obj[key].encode()
    assert exact("filename") == filename and exact("comm") == comm
    got_argv = ([base64.b64decode(a) for a in obj["argv_b64"]] if "argv_b64" in obj
                else [a.encode() for a in obj["argv"]])
    assert got_argv == [a.replace(b"\0", b"") for a in argv]


def test_missing_field_is_a_clear_error():
    e = KestrelEvent(2, 1, 2, 3, {1: 1})
    with pytest.raises(ValueError, match="open event lacks field 'tid' \\(id 2\\)"):
        encode_event(e)
    with pytest.raises(ValueError, match="cannot encode event type 7"):
        encode_event(KestrelEvent(7, 1, 2, 3, {}))


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class CountingBytesIO(io.BytesIO):
    def __init__(self):
        super().__init__()
        self.flush_count = 0

    def flush(self):
        self.flush_count += 1
        super().flush()


def test_sink_flushes_by_time_not_per_line():
    clock = FakeClock()
    f = CountingBytesIO()
    sink = JsonlSink(f, clock=clock)
    event = normalize(parse_record(open_bytes()), WALL)
    for _ in range(50):
        sink.write_event(event)
        clock.now += 0.001
    assert f.flush_count == 0 and sink.lines_written == 50
    clock.now += 0.05                     # 100.1 s: the interval has passed
    sink.write_event(event)
    assert f.flush_count == 1
    assert sink.flush_if_due() is False   # nothing buffered since
    sink.write_event(event)
    clock.now += 0.2
    assert sink.flush_if_due() is True and f.flush_count == 2
    sink.close()
    assert f.getvalue() == encode_event(event) * 52
    assert not f.closed                   # not ours to close
    sink.close()                          # idempotent


def test_sink_creates_file_0600_and_appends(tmp_path):
    path = tmp_path / "events.jsonl"
    old = os.umask(0)
    try:
        with JsonlSink(path) as sink:
            sink.write(encode_event(normalize(parse_record(exit_bytes(0)), WALL)))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with JsonlSink.open(str(path)) as sink:
        sink.write_event(normalize(parse_record(exit_bytes(3 << 8)), WALL))
    lines = path.read_bytes().splitlines()
    assert [json.loads(x)["exit_code"] for x in lines] == [0, 3]


def test_sink_accepts_text_stream():
    buf = io.BytesIO()
    text = io.TextIOWrapper(buf, encoding="utf-8")
    sink = JsonlSink(text)
    sink.write_event(normalize(parse_record(exit_bytes()), WALL))
    sink.close()
    assert buf.getvalue().startswith(b'{"type":"exit"')


def test_sink_open_refuses_a_file_object():
    with pytest.raises(TypeError, match="JsonlSink.open takes a path, got BytesIO"):
        JsonlSink.open(io.BytesIO())


def test_sink_rejects_bad_interval():
    with pytest.raises(ValueError, match="flush_interval must be positive"):
        JsonlSink(io.BytesIO(), flush_interval=0)
