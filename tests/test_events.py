"""normalize(): exact Kestrel Events for hand-built records of each kind."""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings, strategies as st

from helpers import connect_bytes, exec_bytes, exit_bytes, fork_bytes, open_bytes, proc_bytes, records
from kestrel_raw.codec.decode import split_args
from kestrel_raw.codec.event import KestrelEvent, entity_key
from kestrel_raw.codec.normalize import event_from_raw, normalize
from kestrel_raw.codec.records import parse_record
from kestrel_raw.errors import RecordError
from kestrel_raw.spec import OPEN, EventType, FieldId as F

KIND_AT = OPEN.kind.offset

WALL = 1_700_000_000_000_000_000
KEY = 17461281073734017390            # entity_key(4242, 999000), pinned below
PARENT_KEY = entity_key(1, 555_000)
COMMON = {F.PID: 4242, F.TID: 4243, F.PPID: 1, F.UID: 1000, F.GID: 100, F.COMM: "cat",
          F.PROCESS_START_NS: 999_000, F.CPU: 3, F.EUID: 1000, F.EGID: 100, F.AUID: 1000, F.SESSIONID: 7,
          F.TTY: "pts/2", F.CGROUP_ID: 1, F.PARENT_ENTITY_KEY: PARENT_KEY}
# What the context provider that knows nothing (NO_CONTEXT) gives: None for each context value, and no
# ancestors.
NO_CONTEXT_VALUES = {F.CGROUP: None, F.CONTAINER_ID: None, F.CONTAINER_NAME: None, F.CONTAINER_IMAGE: None,
                     F.EXE: None, F.EXE_DELETED: None, F.EXE_MEMFD: None, F.CWD: None, F.PIDNS: None,
                     F.MNTNS: None, F.NETNS: None, F.HOSTNAME: None}


def ev(data: bytes) -> KestrelEvent:
    return normalize(parse_record(data), WALL)


def fields(by_id):
    return {int(k): v for k, v in {**COMMON, **NO_CONTEXT_VALUES, **by_id}.items()}


def test_exec_event():
    e = ev(exec_bytes())
    assert (e.event_type_id, e.ts_mono, e.ts_wall, e.entity_key, e.source) == (
        1, 1_000_000_123, WALL + 1_000_000_123, KEY, "ebpf")
    assert dict(e.fields) == fields({F.FILENAME: "/bin/ls", F.ARGV: ("ls", "-l", "/tmp"), F.TRUNCATED: False,
                                     F.FAULT: False, F.RET: 0, F.CAPS_EFFECTIVE: 0, F.CAPS_PERMITTED: 0,
                                     F.LATE_READ: False})
    assert e.event_type is EventType.EXEC


def test_failed_exec_event():
    e = ev(exec_bytes(filename=b"/nonexistent", args=b"x\0", ret=-2, caps_effective=0x1FF, caps_permitted=0x3FF))
    assert (e["filename"], e["argv"], e["ret"], e["caps_effective"], e["caps_permitted"]) == (
        "/nonexistent", ("x",), -2, 0x1FF, 0x3FF)


def test_header_ids_and_their_nulls():
    e = ev(open_bytes(auid=0xFFFFFFFF, sessionid=0xFFFFFFFF, tty=0, ppid=0, euid=0, egid=5))
    assert (e["auid"], e["sessionid"], e["tty"], e["parent_entity_key"], e["euid"], e["egid"]) == (
        None, None, None, None, 0, 5)
    e = ev(open_bytes(tty=(4 << 20) | 1, cgroup_id=0x1234_5678_9ABC))
    assert (e["tty"], e["cgroup_id"]) == ("tty1", 0x1234_5678_9ABC)


@pytest.mark.parametrize("dev, name", [
    ((136 << 20) | 3, "pts/3"), ((137 << 20) | 5, "pts/261"), ((4 << 20) | 1, "tty1"), ((4 << 20) | 64, "ttyS0"),
    ((5 << 20) | 1, "console"), ((229 << 20) | 0, "hvc0"), ((180 << 20) | 2, "char:180:2"),
])
def test_tty_names(dev, name):
    from kestrel_raw.codec.decode import tty_name
    assert tty_name(dev) == name


def test_fork_event_and_the_internal_proc_record():
    e = ev(fork_bytes(thread=True, pid=50, tid=51, start=7_000))
    assert (e.event_type_id, e.entity_key, e["pid"], e["tid"], e["thread"], e["parent_entity_key"]) == (
        5, entity_key(50, 7_000), 50, 51, True, PARENT_KEY)
    assert ev(fork_bytes())["thread"] is False
    assert ev(proc_bytes(cwd=b"/tmp")) is None
    assert event_from_raw(proc_bytes(cwd=b"/tmp"), WALL) is None


def test_exec_fault():
    e = ev(exec_bytes(filename=b"", args=b"", flags=2))
    assert (e["filename"], e["argv"], e["fault"], e["truncated"]) == ("", (), True, False)


def test_exec_truncated_args():
    e = ev(exec_bytes(args=b"python3\0-c\0import o", args_total=5000))
    assert e["argv"] == ("python3", "-c", "import o")
    assert e["truncated"] is True


def test_open_event():
    e = ev(open_bytes(ret=-13, flags=1, syscall=1, resolve=0x8))
    assert dict(e.fields) == fields({F.PATH: "/etc/passwd", F.FLAGS: 0o2000000, F.MODE: 0, F.RET: -13,
                                       F.DFD: -100, F.SYSCALL: "openat2", F.TRUNCATED: True, F.FAULT: False,
                                       F.RESOLVE: 8, F.RESOLVED_PATH: None, F.TOCTOU: False, F.LATE_READ: False})
    assert ev(open_bytes(syscall=7))["syscall"] == "syscall_7"


def test_open_resolved_path_only_for_a_successful_open():
    assert ev(open_bytes(ret=3, resolved=b"/etc/passwd"))["resolved_path"] == "/etc/passwd"
    assert ev(open_bytes(ret=-2, resolved=b"/etc/passwd"))["resolved_path"] is None  # never, but no file
    assert ev(open_bytes(ret=3, resolved=b""))["resolved_path"] is None  # the walk gave up


def test_open_toctou_and_late_read_flags():
    assert ev(open_bytes(flags=4))["toctou"] is True
    assert ev(open_bytes(flags=8))["late_read"] is True
    assert ev(open_bytes(flags=3))["toctou"] is False


@pytest.mark.parametrize("syscall, oflags, mode, flags_out, mode_out", [
    # openat: the kernel's int flags is the register's low half; the upper half is ignored
    (0, 0xFFFFFFFF_00000000, 0, 0, 0),
    (0, 0xFFFFFFFF_00000000 | 0o100, 0xABCD01A4, 0o100, 0o644),  # O_CREAT: mode & 07777
    (0, 0o20200000, 0o600, 0o20200000, 0o600),  # O_TMPFILE (with O_DIRECTORY) creates too
    (0, 0o2, 0o644, 0o2, 0),  # no create flag: the kernel ignores the mode
    # openat2: open_how.flags is a u64 (unknown bits are refused with EINVAL, but reported as passed)
    (1, 0x1_00000000 | 0o100, 0o7644, 0x1_00000000 | 0o100, 0o7644),
])
def test_open_flags_and_mode_as_the_kernel_reads_them(syscall, oflags, mode, flags_out, mode_out):
    e = ev(open_bytes(syscall=syscall, oflags=oflags, mode=mode))
    assert (e["flags"], e["mode"]) == (flags_out, mode_out)


def test_connect_event():
    e = ev(connect_bytes())
    assert dict(e.fields) == fields({F.FAMILY: "AF_INET", F.DADDR: "127.0.0.1", F.DPORT: 8080, F.RET: -111,
                                       F.FD: 5, F.FAULT: False, F.TOCTOU: False, F.LATE_READ: False})


SIN_10_0_0_1_4444 = b"\x02\x00\x11\x5c\x0a\x00\x00\x01" + bytes(8)


def test_connect_reports_the_sockets_destination_over_the_passed_one():
    # the socket holds 127.0.0.1:9 (port in network order, read as a little-endian u16: 0x0900)
    e = ev(connect_bytes(addr=SIN_10_0_0_1_4444, ret=0, sk_family=2, sk_dport=0x0900, sk_daddr=bytes([127, 0, 0, 1])))
    assert (e["family"], e["daddr"], e["dport"], e["toctou"]) == ("AF_INET", "127.0.0.1", 9, True)
    same = ev(connect_bytes(addr=SIN_10_0_0_1_4444, ret=0, sk_family=2, sk_dport=0x5C11, sk_daddr=bytes([10, 0, 0, 1])))
    assert (same["daddr"], same["dport"], same["toctou"]) == ("10.0.0.1", 4444, False)


def test_connect_ipv6_socket_destination():
    sin6 = b"\x0a\x00\x00\x50" + bytes(4) + bytes(15) + b"\x01" + bytes(4)  # [::1]:80
    mapped = bytes(10) + b"\xff\xff" + bytes([127, 0, 0, 1])
    e = ev(connect_bytes(addr=sin6, addrlen=28, ret=0, sk_family=10, sk_dport=0x5000, sk_daddr6=mapped))
    assert (e["family"], e["daddr"], e["dport"], e["toctou"]) == ("AF_INET6", "::ffff:127.0.0.1", 80, True)


def test_connect_without_a_socket_destination_keeps_the_passed_address():
    # a refused connect leaves the socket without a destination port
    e = ev(connect_bytes(addr=SIN_10_0_0_1_4444, ret=-111, sk_family=2, sk_dport=0, sk_daddr=bytes([10, 0, 0, 1])))
    assert (e["daddr"], e["dport"], e["toctou"]) == ("10.0.0.1", 4444, False)


def test_connect_fault_null_address():
    e = ev(connect_bytes(addr=b"", addrlen=16, flags=2))
    assert (e["family"], e["daddr"], e["dport"], e["fault"]) == ("AF_UNSPEC", "", 0, True)


@pytest.mark.parametrize("code, exit_code, signal, core", [
    (0, 0, 0, False),
    (3 << 8, 3, 0, False),          # exit(3)
    (255 << 8, 255, 0, False),
    (9, 0, 9, False),               # SIGKILL
    (0x80 | 11, 0, 11, True),       # SIGSEGV with core dump bit
    (6, 0, 6, False),               # SIGABRT without a core
])
def test_exit_event(code, exit_code, signal, core):
    e = ev(exit_bytes(code))
    assert dict(e.fields) == fields({F.EXIT_CODE: exit_code, F.SIGNAL: signal, F.CORE_DUMPED: core})


@pytest.mark.parametrize("area, argv", [
    (b"", ()),
    (b"a\0b\0c\0", ("a", "b", "c")),
    (b"a\0b\0c", ("a", "b", "c")),        # cut short: last NUL missing
    (b"\0", ("",)),                        # one empty argument
    (b"a\0\0b\0", ("a", "", "b")),
])
def test_split_args(area, argv):
    assert split_args(area) == argv


def test_non_utf8_is_lossless():
    e = ev(exec_bytes(filename=b"/tmp/\xff\xfe", args=b"\xe9t\xe9\0ok\0"))
    assert e["filename"] == "/tmp/\udcff\udcfe"
    assert e["filename"].encode("utf-8", "surrogateescape") == b"/tmp/\xff\xfe"
    assert [a.encode("utf-8", "surrogateescape") for a in e["argv"]] == [b"\xe9t\xe9", b"ok"]
    assert ev(open_bytes(path="/tmp/é".encode()))["path"] == "/tmp/é"


def test_entity_key_pinned_and_shared_by_threads():
    # SplitMix64's first output for seed 0 is 0xe220a8397b1dcdaf: pid 1, start 0 is exactly that state.
    assert entity_key(1, 0) == 0xE220A8397B1DCDAF
    assert entity_key(4242, 999_000) == KEY
    assert entity_key(4242, 999_001) == 10945603234613396754     # same pid, reused: another key
    assert entity_key(4243, 999_000) == 13960630668270798061
    a = ev(open_bytes())
    b = normalize(dataclasses.replace(parse_record(open_bytes()), tid=9999, ts_ns=5), WALL)
    assert a.entity_key == b.entity_key == KEY
    c = normalize(dataclasses.replace(parse_record(open_bytes()), start_ns=5_000_000), WALL)
    assert c.entity_key != KEY


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_entity_key_is_u64_and_separates_incarnations(pid, s1, s2):
    k1 = entity_key(pid, s1)
    assert 0 <= k1 < 2**64
    assert (k1 == entity_key(pid, s2)) == (s1 == s2)


def test_accessors():
    e = ev(open_bytes())
    assert e["path"] == "/etc/passwd" and e.get("pid") == 4242
    assert e.get("argv") is None and e.get("argv", ()) == ()
    with pytest.raises(KeyError, match="open event has no field 'argv'"):
        e["argv"]
    with pytest.raises(KeyError, match="no kestrel-schema field 'nope'"):
        e.get("nope")
    assert list(e.named_fields())[:3] == ["pid", "tid", "ppid"]
    assert e.get("ancestors") is None  # omitted: not asked for


def test_event_is_immutable():
    e = ev(exit_bytes())
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.ts_mono = 1
    with pytest.raises(TypeError):
        e.fields[1] = 5
    assert not hasattr(e, "__dict__")


def test_normalize_is_pure():
    rec = parse_record(exec_bytes())
    assert normalize(rec, WALL) == normalize(rec, WALL)
    assert normalize(rec, 0).ts_wall == rec.ts_ns


def test_memoized_key_follows_pid_reuse():
    from kestrel_raw.codec.event import _KEY_MEMO
    rec = parse_record(open_bytes())
    for start in (1, 2, 1, 999_000):
        e = normalize(dataclasses.replace(rec, start_ns=start), WALL)
        assert e.entity_key == entity_key(4242, start)
    assert _KEY_MEMO[4242] == (999_000, KEY)


def test_fast_built_event_equals_constructed():
    e = ev(exit_bytes())
    assert e == KestrelEvent(4, e.ts_mono, e.ts_wall, e.entity_key, e.fields)
    assert e.source == "ebpf"


# -- event_from_raw: normalize(parse_record(raw)) in one step ---------------------------------------------

def _two_steps(data):
    try:
        return normalize(parse_record(data), 1000)
    except RecordError as e:
        return str(e)


def _one_step(data):
    try:
        return event_from_raw(data, 1000)
    except RecordError as e:
        return str(e)


@settings(max_examples=400)
@given(records(), st.data())
def test_event_from_raw_is_normalize_of_parse_record(data, draw):
    # Valid records of every kind, and the same cut short, with a wrong kind, or with lengths corrupted:
    # the same event, or the same error.
    internal = data[KIND_AT] == 250
    assert _one_step(data) == _two_steps(data) and isinstance(_two_steps(data), type(None) if internal else KestrelEvent)
    cut = draw.draw(st.integers(0, len(data)))
    garbled = bytearray(data)
    garbled[draw.draw(st.integers(0, len(data) - 1))] ^= 0xFF
    unknown = data[:KIND_AT] + b"\x09\x00" + data[KIND_AT + 2:]
    for d in (data[:cut], unknown, bytes(garbled)):
        assert _one_step(d) == _two_steps(d)


def test_normalize_refuses_what_is_not_a_record():
    with pytest.raises(RecordError, match="cannot normalize dict: not a kestrel record"):
        normalize({"kind": 2}, 0)
