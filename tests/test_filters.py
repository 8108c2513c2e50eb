"""Issue 15, user space: the Filters value (every bad value refused, naming the flag as typed), the check
against the collected event types, the compilation to the filter maps' bytes (exact), the host facts
(cgroup tree, exe device and inode) and the status event that carries the filters.  No kernel needed.
"""
from __future__ import annotations

import ipaddress
import os
import struct

import pytest

from kestrel_raw.errors import ConfigError
from kestrel_raw.filters import Cgroup, Filters, Host, check_host, compile, kernel_dev
from kestrel_raw.filters import values as fv
from kestrel_raw.filters.host import cgroup_relative
from kestrel_raw.filters.lookup import read_host, scan_cgroups
from kestrel_raw.programs import filtermaps as fm
from kestrel_raw.spec import EventType as E

DOCKER_ID = "4f1c" + "ab" * 30


def parse(**kw):
    include = {k: v for k, v in kw.items() if not k.startswith("x_") and k in fv.KEYS}
    exclude = {k[2:]: v for k, v in kw.items() if k.startswith("x_")}
    rest = {k: v for k, v in kw.items() if k in ("failed_only", "success_only", "rate_limits")}
    return Filters.parse(include, exclude, **rest)


# -- parsing: every bad value, one line naming the flag --------------------------------------------------

@pytest.mark.parametrize("kw, message", [
    ({"uid": ["-1"]}, "--uid -1 is not a user id: give a number from 0 to 4294967294"),
    ({"uid": ["4294967295"]}, "--uid 4294967295 is not a user id: give a number from 0 to 4294967294"),
    ({"uid": ["root"]}, "--uid root is not a user id: give a number from 0 to 4294967294"),
    ({"x_uid": ["-1"]}, "--exclude-uid -1 is not a user id: give a number from 0 to 4294967294"),
    ({"pid": ["0"]}, "--pid 0 is not a process id: give a number from 1 to 4194303"),
    ({"pid": ["4194304"]}, "--pid 4194304 is not a process id: give a number from 1 to 4194303"),
    ({"port": ["70000"]}, "--port 70000 is not a port: give a number from 1 to 65535"),
    ({"port": ["0"]}, "--port 0 is not a port: give a number from 1 to 65535"),
    ({"x_port": ["http"]}, "--exclude-port http is not a port: give a number from 1 to 65535"),
    ({"daddr": ["300.1.1.1"]}, "--daddr 300.1.1.1 is not an IPv4 or IPv6 address or network: give ADDR or "
                               "ADDR/PREFIX (10.0.0.0/8, ::1, 2001:db8::/32)"),
    ({"daddr": ["10.0.0.0/33"]}, "--daddr 10.0.0.0/33 is not an IPv4 or IPv6 address or network: give ADDR or "
                                 "ADDR/PREFIX (10.0.0.0/8, ::1, 2001:db8::/32)"),
    ({"comm": ["sixteen-bytes-xx"]}, "--comm 'sixteen-bytes-xx' is 16 bytes long: the kernel keeps at most 15 "
                                     "bytes of a command name, so it could never match; give its first 15 "
                                     "('sixteen-bytes-x')"),
    ({"comm": [""]}, "--comm is empty: give a command name (as ps -o comm shows it)"),
    ({"path_prefix": ["/" + "a" * 255]}, "--path-prefix is 256 bytes long: the kernel compares at most 255 bytes "
                                         "of a path, give a shorter prefix"),
    ({"x_path_prefix": [""]}, "--exclude-path-prefix is empty: give a path prefix (/etc/)"),
    ({"exe": [""]}, "--exe is empty: give the path of an executable"),
    ({"container": ["abc"]}, "--container abc is not a container: give the first 12 or more hex digits of a "
                             "container's id (docker ps shows 12), any (in a container) or none (on the host)"),
    ({"container": ["zzzzzzzzzzzzzz"]}, "--container zzzzzzzzzzzzzz is not a container: give the first 12 or more "
                                        "hex digits of a container's id (docker ps shows 12), any (in a container) "
                                        "or none (on the host)"),
    ({"rate_limits": ["open=x"]}, "--rate-limit open=x: N must be a whole number of events per second, from 1 to "
                                  "1000000"),
    ({"rate_limits": ["open=0"]}, "--rate-limit open=0: N must be a whole number of events per second, from 1 to "
                                  "1000000"),
    ({"rate_limits": ["open"]}, "--rate-limit open is not TYPE=N: give an event type and a number of events per "
                                "second (open=100)"),
    ({"rate_limits": ["opn=5"]}, "--rate-limit opn=5: unknown event type 'opn'; valid: exec, open, connect, exit, "
                                 "fork, shell_command, dns_query"),
    ({"rate_limits": ["open=5", "open=6"]}, "--rate-limit open: given twice (5 and 6): give one limit per event "
                                           "type"),
    ({"failed_only": True, "success_only": True}, "--failed-only and --success-only exclude each other: give one"),
    ({"uid": [str(i) for i in range(fm.MAX_VALUES + 1)]}, "--uid is given 1025 values: at most 1024 per filter (the "
                                                          "kernel's map holds that many)"),
])
def test_bad_values_are_refused_naming_the_flag(kw, message):
    with pytest.raises(ConfigError) as info:
        parse(**kw)
    assert str(info.value) == message


def test_errors_name_the_setting_as_the_caller_says():
    # The CLI passes a name function: a value from the config file is named by file, line and key.
    with pytest.raises(ConfigError, match=r"^c\.toml line 4: exclude-port 70000 is not a port"):
        Filters.parse({}, {"port": [70000]}, name=lambda key: f"c.toml line 4: {key}")


def test_values_are_parsed_deduplicated_and_shown_as_the_flags_name_them():
    f = parse(pid=["1", 1, "42"], uid=[0], comm=["sshd"], exe=["/bin/sh"], port=["443"], daddr=["10.1.2.3/8", "::1"],
              path_prefix=["/etc/"], container=["ANY"], x_comm=["cron"], x_path_prefix=["/etc/ssh/"],
              failed_only=True, rate_limits={"open": 100, "exec": "5"})
    assert f.values("pid") == (1, 42)
    assert f.values("comm") == (b"sshd",) and f.values("comm", True) == (b"cron",)
    assert f.values("daddr") == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert f.values("container") == ("any",)
    assert f.rate(E.OPEN) == 100 and f.rate(E.EXEC) == 5 and f.rate(E.CONNECT) == 0
    assert f.keys == ("pid", "uid", "comm", "exe", "container", "port", "daddr", "path_prefix")
    assert f.to_json() == {
        "pid": [1, 42], "uid": [0], "comm": ["sshd"], "exe": ["/bin/sh"], "container": ["any"], "port": [443],
        "daddr": ["10.0.0.0/8", "::1"], "path-prefix": ["/etc/"], "exclude-comm": ["cron"],
        "exclude-path-prefix": ["/etc/ssh/"], "failed-only": True, "rate-limit": {"exec": 5, "open": 100}}
    assert Filters().empty and Filters().to_json() == {} and Filters.parse({"uid": None}).empty
    assert f == parse(pid=["1", "42"], uid=["0"], comm=["sshd"], exe=["/bin/sh"], port=[443],
                      daddr=["10.0.0.0/8", "::1/128"], path_prefix=["/etc/"], container=["any"], x_comm=["cron"],
                      x_path_prefix=["/etc/ssh/"], failed_only=True, rate_limits=["exec=5", "open=100"])


# -- a filter on a field the collected types lack ------------------------------------------------------

@pytest.mark.parametrize("kw, types, message", [
    ({"port": ["80"]}, [E.EXEC], "--port applies to connect events, and the events collected are exec: add connect "
                                 "to --events, or drop the filter"),
    ({"x_daddr": ["::1"]}, [E.OPEN, E.EXIT], "--exclude-daddr applies to connect events, and the events collected "
                                             "are open, exit: add connect to --events, or drop the filter"),
    ({"path_prefix": ["/etc/"]}, [E.CONNECT], "--path-prefix applies to open events, and the events collected are "
                                              "connect: add open to --events, or drop the filter"),
    ({"failed_only": True}, [E.EXIT, E.FORK], "--failed-only applies to events with a ret (exec, open, connect, "
                                              "dns_query), and the events collected are exit, fork"),
    ({"rate_limits": ["exec=5"]}, [E.OPEN], "--rate-limit exec=5: exec events are not collected (the events "
                                            "collected are open)"),
])
def test_a_filter_on_what_no_collected_type_has_is_refused(kw, types, message):
    with pytest.raises(ConfigError) as info:
        parse(**kw).check(types)
    assert str(info.value) == message


def test_keys_apply_to_the_types_that_carry_them():
    assert fv.APPLIES["path_prefix"] == (E.OPEN,)
    assert fv.APPLIES["port"] == fv.APPLIES["daddr"] == (E.CONNECT,)
    assert fv.APPLIES["uid"] == (E.EXEC, E.OPEN, E.CONNECT, E.EXIT, E.FORK, E.SHELL_COMMAND, E.DNS_QUERY)
    assert fv.OUTCOME_TYPES == (E.EXEC, E.OPEN, E.CONNECT, E.DNS_QUERY)  # the kinds whose spec has a ret
    # A key some collected type has is fine; the others are not filtered by it.
    parse(path_prefix=["/etc/"], port=["22"]).check([E.OPEN, E.CONNECT, E.EXEC])


def test_collector_config_checks_its_filters():
    from kestrel_raw.config import CollectorConfig

    with pytest.raises(ConfigError, match=r"^filters \(port\) applies to connect events, and the events collected "
                                          r"are exec: add connect to event_types"):
        CollectorConfig(event_types=["exec"], filters=parse(port=[80]))
    with pytest.raises(ConfigError, match="filters must be a kestrel_raw.filters.Filters"):
        CollectorConfig(filters={"uid": [0]})
    assert CollectorConfig().filters == Filters()


# -- compile: exact bytes ---------------------------------------------------------------------------------

def u32(n):
    return struct.pack("<I", n)


def row(include, exclude, outcome, rate):
    return struct.pack("<IIII", include, exclude, outcome, rate)


def test_rows_set_each_key_only_for_the_kinds_it_applies_to():
    f = parse(uid=["0"], x_comm=["sshd"], path_prefix=["/etc/"], port=["22"], failed_only=True,
              rate_limits=["open=100"])
    img = compile(f, [E.EXEC, E.OPEN, E.CONNECT, E.EXIT], set=0, host=Host())
    # bits: pid 1, uid 2, comm 4, exe 8, cgroup 16, container 32, port 64, daddr 128, path 256
    assert img.rows == {
        1: row(0x2, 0x4, 1, 0),
        2: bytes.fromhex("02010000" "04000000" "01000000" "64000000"),
        3: row(0x42, 0x4, 1, 0),
        4: row(0x2, 0x4, 0, 0),  # exit has no ret: no outcome
    }
    # A kind that nothing filters has no row (all zero in the map).
    assert compile(parse(port=["22"]), [E.OPEN, E.CONNECT], set=1, host=Host()).rows == {3: row(0x40, 0, 0, 0)}
    assert compile(Filters(), [E.OPEN], set=0, host=Host()) == fm.Image(0, {}, {})


def test_value_keys_pid_uid_comm_port():
    f = parse(pid=["42", "7"], uid=["0", "1000"], x_uid=["0"], comm=["sshd"], x_comm=["cron"], port=["443"])
    img = compile(f, [E.CONNECT], set=1, host=Host())
    assert img.set == 1
    assert img.entries == {
        "kr_fpid": {bytes.fromhex("01000000" "2a000000"): u32(1), bytes.fromhex("01000000" "07000000"): u32(1)},
        "kr_fuid": {bytes.fromhex("01000000" "00000000"): u32(3), bytes.fromhex("01000000" "e8030000"): u32(1)},
        "kr_fcomm": {bytes.fromhex("01000000") + b"sshd" + bytes(12): u32(1),
                     bytes.fromhex("01000000") + b"cron" + bytes(12): u32(2)},
        "kr_fport": {bytes.fromhex("01000000" "bb010000"): u32(1)},
    }


def test_exe_keys_carry_the_kernel_dev_t():
    host = Host(exes=(("/usr/bin/python3", kernel_dev(8, 1), 1234), ("/bin/sh", kernel_dev(259, 3), 99)))
    img = compile(parse(exe=["/usr/bin/python3"], x_exe=["/bin/sh"]), [E.EXEC], set=0, host=host)
    assert kernel_dev(8, 1) == 0x800001 and kernel_dev(259, 3) == 0x10300003
    assert img.entries == {"kr_fexe": {
        bytes.fromhex("00000000" "01008000" "d204000000000000"): u32(1),
        bytes.fromhex("00000000" "03003010" "6300000000000000"): u32(2)}}


def test_daddr_v4_also_as_v4_mapped_v6_and_longer_prefixes_carry_the_shorter_ones_flags():
    f = parse(x_daddr=["10.0.0.0/8"], daddr=["10.1.0.0/16", "2001:db8::/32"])
    img = compile(f, [E.CONNECT], set=1, host=Host())
    key = lambda bits, family, addr: struct.pack("<IBB16s", bits, 1, family, addr)  # noqa: E731
    assert img.entries == {"kr_fdaddr": {
        # AF_INET (2): prefixlen = 8 (set) + 8 (family) + network bits
        key(16 + 8, 2, bytes([10]) + bytes(15)): u32(2),
        key(16 + 16, 2, bytes([10, 1]) + bytes(14)): u32(2 | 1),  # inside the excluded /8: exclude wins
        # AF_INET6 (10): the v4-mapped forms (::ffff:10.0.0.0/104, ::ffff:10.1.0.0/112), and the v6 network
        key(16 + 104, 10, bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 0])): u32(2),
        key(16 + 112, 10, bytes(10) + b"\xff\xff" + bytes([10, 1, 0, 0])): u32(3),
        key(16 + 32, 10, bytes.fromhex("20010db8") + bytes(12)): u32(1),
    }}
    assert len(next(iter(img.entries["kr_fdaddr"]))) == fm.KEY_DADDR.size == 22
    # A v4-mapped v6 network is written as the v4 one too.
    img = compile(parse(daddr=["::ffff:127.0.0.1"]), [E.CONNECT], set=0, host=Host())
    assert set(img.entries["kr_fdaddr"]) == {
        struct.pack("<IBB16s", 144, 0, 10, bytes(10) + b"\xff\xff\x7f\x00\x00\x01"),
        struct.pack("<IBB16s", 48, 0, 2, b"\x7f\x00\x00\x01" + bytes(12))}


def test_path_entries_or_the_flags_of_their_prefixes():
    f = parse(path_prefix=["/etc/", "/etc/ssh/sshd_config"], x_path_prefix=["/etc/ssh/", "/proc/"])
    img = compile(f, [E.OPEN], set=0, host=Host())
    key = lambda p: struct.pack("<IB255s", 8 + 8 * len(p), 0, p)  # noqa: E731
    assert img.entries == {"kr_fpath": {
        key(b"/etc/"): u32(1),
        key(b"/etc/ssh/"): u32(3),
        key(b"/etc/ssh/sshd_config"): u32(3),
        key(b"/proc/"): u32(2),
    }}
    k = key(b"/etc/")
    assert len(k) == 260 and k[:10] == bytes.fromhex("30000000" "00") + b"/etc/" and k[10:] == bytes(250)


TREE = (Cgroup(1, "/"), Cgroup(10, "/system.slice"), Cgroup(11, "/system.slice/cron.service"),
        Cgroup(20, f"/system.slice/docker-{DOCKER_ID}.scope", DOCKER_ID),
        Cgroup(30, "/user.slice"), Cgroup(31, "/user.slice/user-0.slice"))


def test_cgroup_and_container_entries_cover_every_cgroup_of_the_tree():
    host = Host(mount="/sys/fs/cgroup/unified", cgroups=TREE)
    f = parse(cgroup=["/sys/fs/cgroup/unified/system.slice"], x_cgroup=["system.slice/cron.service"],
              container=["none"], x_container=[DOCKER_ID[:12]])
    img = compile(f, [E.OPEN], set=1, host=host)
    key = lambda cid: struct.pack("<IIQ", 1, 0, cid)  # noqa: E731
    assert img.rows == {2: row(0x10 | 0x20, 0x10 | 0x20, 0, 0)}
    assert img.entries == {
        "kr_fcgrp": {key(1): u32(0), key(10): u32(1), key(11): u32(3), key(20): u32(1), key(30): u32(0),
                     key(31): u32(0)},
        "kr_fctr": {key(1): u32(1), key(10): u32(1), key(11): u32(1), key(20): u32(2), key(30): u32(1),
                    key(31): u32(1)},
    }
    any_ = compile(parse(container=["any"]), [E.OPEN], set=0, host=host).entries["kr_fctr"]
    assert [v for v in any_.values()] == [u32(0), u32(0), u32(0), u32(1), u32(0), u32(0)]


def test_cgroup_paths_resolve_under_the_mount_or_its_root():
    m = "/sys/fs/cgroup/unified"
    assert cgroup_relative("/sys/fs/cgroup/unified/a/b/", m) == "/a/b"
    assert cgroup_relative("/a/b", m) == "/a/b" == cgroup_relative("a/b", m)
    assert cgroup_relative("/sys/fs/cgroup/unified", m) == "/" == cgroup_relative("/", m)


def test_the_host_check_refuses_a_missing_cgroup_and_an_unknown_or_ambiguous_container():
    host = Host(mount="/sys/fs/cgroup/unified", cgroups=TREE)
    check_host(parse(cgroup=["/user.slice"], container=[DOCKER_ID[:12], "any", "none"]), host)
    with pytest.raises(ConfigError) as info:
        check_host(parse(x_cgroup=["/nope.slice"]), host)
    assert str(info.value) == ("--exclude-cgroup /nope.slice: no such cgroup under the cgroup v2 hierarchy at "
                               "/sys/fs/cgroup/unified (give a path under it, or relative to its root, as "
                               "/proc/PID/cgroup shows it after 0::)")
    with pytest.raises(ConfigError) as info:
        check_host(parse(container=["0123456789ab"]), host)
    assert str(info.value) == "--container 0123456789ab: no running container's id starts with it (containers " \
                              "found from the cgroups: 1)"
    other = "4f1cabababab" + "cd" * 26
    two = host.with_cgroups(TREE + (Cgroup(40, f"/system.slice/docker-{other}.scope", other),))
    with pytest.raises(ConfigError) as info:
        check_host(parse(container=["4f1cabababab"]), two)
    assert str(info.value) == (f"--container 4f1cabababab: 2 running containers' ids start with it "
                               f"({DOCKER_ID[:16]}, {other[:16]}...): give more digits")


# -- the machine lookups ----------------------------------------------------------------------------------

def test_read_host_takes_the_exe_device_in_the_kernel_encoding_and_walks_the_cgroup_tree(tmp_path):
    exe = tmp_path / "tool"
    exe.write_bytes(b"#!/bin/sh\n")
    link = tmp_path / "link"
    link.symlink_to(exe)
    mount = tmp_path / "cg"
    (mount / "system.slice" / f"docker-{DOCKER_ID}.scope").mkdir(parents=True)
    (mount / "user.slice").mkdir()
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"30 25 0:26 / {mount} rw,nosuid - cgroup2 cgroup2 rw\n")
    f = parse(exe=[str(link)], x_exe=[str(exe)], container=["any"])
    host = read_host(f, mountinfo=str(mountinfo))
    st = os.stat(exe)
    dev = os.major(st.st_dev) << 20 | os.minor(st.st_dev)
    assert host.exes == ((str(link), dev, st.st_ino), (str(exe), dev, st.st_ino))
    assert host.mount == str(mount)
    ino = lambda p: os.stat(p).st_ino  # noqa: E731
    assert sorted(host.cgroups, key=lambda c: c.path) == [
        Cgroup(ino(mount), "/"), Cgroup(ino(mount / "system.slice"), "/system.slice"),
        Cgroup(ino(mount / "system.slice" / f"docker-{DOCKER_ID}.scope"), f"/system.slice/docker-{DOCKER_ID}.scope",
               DOCKER_ID),
        Cgroup(ino(mount / "user.slice"), "/user.slice")]
    # The same file twice (a link and its target): one map entry with both flags.
    img = compile(f, [E.EXEC], set=0, host=host)
    assert img.entries["kr_fexe"] == {struct.pack("<IIQ", 0, dev, st.st_ino): u32(3)}
    # Breadth-first, stopping at the limit: the root first.
    first = scan_cgroups(str(mount), limit=2)
    assert len(first) == 2 and first[0] == Cgroup(ino(mount), "/") and first[1].path in ("/system.slice", "/user.slice")


def test_read_host_refuses_a_missing_exe_and_a_host_without_cgroup_v2(tmp_path):
    with pytest.raises(ConfigError) as info:
        read_host(parse(exe=[str(tmp_path / "gone")]))
    assert str(info.value) == (f"--exe {tmp_path / 'gone'}: no such file; give the path of an executable (a "
                               f"process matches when it runs that file)")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("22 1 0:21 / /proc rw - proc proc rw\n")
    with pytest.raises(ConfigError) as info:
        read_host(parse(x_cgroup=["/x"]), mountinfo=str(mountinfo))
    assert str(info.value) == ("--exclude-cgroup needs the cgroup v2 hierarchy, and none is mounted (mount -t "
                               "cgroup2 none /sys/fs/cgroup/unified)")


# -- the status event carries the filters ----------------------------------------------------------------

def test_the_status_event_says_why_and_which_filters():
    from kestrel_raw.codec.jsonl import encode_event
    from kestrel_raw.collector import status_event
    from kestrel_raw.context.host import HostIdentity

    ident = HostIdentity("h", "m" * 32, "b", "6.18.0", "x86_64", None, "no provider")
    f = parse(uid=["0"], x_comm=["sshd"], failed_only=True, rate_limits=["open=100"])
    ev = status_event(ident, 1000, 5, [], "filters_changed", f.to_json())
    assert encode_event(ev) == (
        b'{"type":"status","event_type_id":100,"ts_mono_ns":1000,"ts_wall_ns":1005,"source":"kestrel-raw",'
        b'"hostname":"h","machine_id":"' + b"m" * 32 + b'","boot_id":"b","kernel":"6.18.0","arch":"x86_64",'
        b'"cloud":null,"programs":[],"reason":"filters_changed","filters":{"uid":[0],"exclude-comm":["sshd"],'
        b'"failed-only":true,"rate-limit":{"open":100}},"counters":{}}\n')
    assert encode_event(status_event(ident, 1, 0)).endswith(b'"programs":[],"reason":"start","filters":{},"counters":{}}\n')


# -- the collector side, with a writer that records (the kernel's is tests/test_filter_kernel.py's) --------

class RecordingWriter:
    def __init__(self, maps):
        self.maps = maps
        self.images = []

    @property
    def next_set(self):
        return 0 if not self.images else 1 - self.images[-1].set

    def write(self, image):
        self.images.append(image)


def test_the_filter_set_writes_at_start_on_change_and_when_the_cgroup_tree_changes():
    from kestrel_raw.collector import filterset

    host = Host(mount="/sys/fs/cgroup/unified", cgroups=TREE)
    first = parse(cgroup=["/system.slice"])
    fs = filterset.FilterSet(first, [E.OPEN], writer=RecordingWriter)
    fs.host = host
    fs.install({fm.MAP_FSET: object()})
    w = fs._writer
    assert w.images == [compile(first, [E.OPEN], set=0, host=host)]
    second = parse(uid=[0], x_container=["any"])
    fs.set(second, host)
    assert w.images[1] == compile(second, [E.OPEN], set=1, host=host) and fs.filters == second
    assert fs.apply_tree(TREE) is False and len(w.images) == 2  # unchanged tree: nothing written
    grown = TREE + (Cgroup(50, "/system.slice/new.service"),)
    assert fs.apply_tree(grown) is True
    assert w.images[2] == compile(second, [E.OPEN], set=0, host=host.with_cgroups(grown))
    assert w.images[2].entries["kr_fctr"][struct.pack("<IIQ", 0, 0, 50)] == u32(0)
    fs.set(parse(uid=[0]), Host())
    assert fs.needs_rescan is False and fs.apply_tree(TREE) is False and len(w.images) == 4


def test_no_filters_write_nothing_and_filters_without_the_filter_maps_are_refused():
    from kestrel_raw.collector import filterset
    from kestrel_raw.errors import SetupError

    fs = filterset.FilterSet(None, [E.OPEN], writer=RecordingWriter)
    fs.install({fm.MAP_FSET: object()})
    assert fs._writer.images == []
    filterset.FilterSet(None, [E.OPEN], writer=RecordingWriter).install({})  # no maps, no filters: fine
    with pytest.raises(SetupError, match="filters were given, and the filter maps were not created"):
        filterset.FilterSet(parse(uid=[0]), [E.OPEN], writer=RecordingWriter).install({})


def test_set_filters_checks_before_changing_anything():
    import trio

    from kestrel_raw.collector import KestrelCollector
    from kestrel_raw.config import CollectorConfig

    send, _recv = trio.open_memory_channel(1)
    c = KestrelCollector(send, CollectorConfig(event_types=["open"]))
    assert c.filters == Filters()
    with pytest.raises(ConfigError, match="^--port applies to connect events"):
        c.set_filters(parse(port=[80]))
    with pytest.raises(ConfigError, match="^--exe /nonexistent/krfm: no such file"):
        c.set_filters(parse(exe=["/nonexistent/krfm"]))
    assert c.filters == Filters()
    c.set_filters(parse(path_prefix=["/etc/"]))  # before start(): the filters it will write at start
    assert c.filters == parse(path_prefix=["/etc/"])
