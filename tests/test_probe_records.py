"""The uprobe events' records (kestrel_raw/spec.py SHELL_COMMAND, DNS_QUERY), pinned byte for byte: hand-written
records in the documented layout parse to the values and the JSON lines below, as the construct oracle parses
them; dns_query's address slots decode in order, unknown families left out."""
from __future__ import annotations

import pytest

from helpers import COMMON, dns_bytes, dns_slot, shell_bytes
from kestrel_raw import spec
from kestrel_raw.codec.event import entity_key
from kestrel_raw.codec.jsonl import encode_event, encode_record
from kestrel_raw.codec.normalize import normalize
from kestrel_raw.codec.records import parse_record
from kestrel_raw.codec.schema import build_record, parse_record_construct
from kestrel_raw.codec.sockaddr import dns_addresses
from kestrel_raw.errors import RecordError

WALL = 1_700_000_000_000_000_000
HEAD = ('"ts_mono_ns":1000000123,"ts_wall_ns":1700000001000000123,"entity_key":17461281073734017390,'
        '"pid":4242,"tid":4243,"cpu":3,"ppid":1,"uid":1000,"gid":100,"comm":"cat","euid":1000,"egid":100,'
        '"auid":1000,"sessionid":7,"tty":"pts/2","cgroup_id":1,"parent_entity_key":%d,"source":"ebpf",'
        % entity_key(1, 555_000))
# The context keys, last, as the provider that knows nothing gives them (no collector behind the codec).
NO_CONTEXT = (',"cgroup":null,"container_id":null,"container_name":null,"container_image":null,"exe":null,'
              '"exe_deleted":null,"exe_memfd":null,"cwd":null,"pidns":null,"mntns":null,"netns":null,'
              '"hostname":null}\n')
V4 = dns_slot(2, 443, bytes([127, 88, 7, 1]))
V6 = dns_slot(10, 443, bytes(15) + b"\x01")


def test_the_layouts_are_the_documented_ones():
    assert [(w.name, w.offset) for w in spec.SHELL_COMMAND.wire[len(spec.HEADER):]] == [
        ("line_len", 96), ("_pad1", 100), ("line", 104)]
    assert [(w.name, w.offset) for w in spec.DNS_QUERY.wire[len(spec.HEADER):]] == [
        ("ret", 96), ("family", 100), ("duration_ns", 104), ("naddrs", 112), ("query_len", 116),
        ("service_len", 120), ("_pad1", 124), ("addrs", 128), ("query", 288), ("service", -1)]
    assert spec.DNS_QUERY.addrs.size == spec.DNS_ADDRS * spec.DNS_ADDR_SIZE == 160


def test_shell_command_line():
    data = shell_bytes(b"ls -l /tmp", pad=b"\0" * 6)
    assert build_record(50, **COMMON, line=b"ls -l /tmp") + b"\0" * 6 == data
    assert parse_record(data) == parse_record_construct(data)
    line = ('{"type":"shell_command","event_type_id":50,' + HEAD
            + '"command":"ls -l /tmp","truncated":false,"fault":false' + NO_CONTEXT).encode()
    assert encode_event(normalize(parse_record(data), WALL)) == line == encode_record(data, WALL)
    cut = shell_bytes(b"x" * spec.MAX_COMMAND, flags=spec.FLAG_TRUNCATED)
    assert normalize(parse_record(cut), WALL)["truncated"] is True


def test_dns_query_line():
    data = dns_bytes(slots=(V4, V6), family=0, ret=0)
    assert parse_record(data) == parse_record_construct(data)
    line = ('{"type":"dns_query","event_type_id":51,' + HEAD
            + '"query":"example.test","service":"443","family":"AF_UNSPEC","ret":0,'
              '"addresses":["127.88.7.1","::1"],"duration_ns":12345,"truncated":false,"fault":false'
            + NO_CONTEXT).encode()
    assert encode_event(normalize(parse_record(data), WALL)) == line == encode_record(data, WALL)
    ev = normalize(parse_record(data), WALL)
    assert (ev["query"], ev["addresses"], ev["ret"], ev["duration_ns"]) == ("example.test", ("127.88.7.1", "::1"), 0,
                                                                            12345)


def test_dns_query_without_a_name_or_service_and_failed():
    data = dns_bytes(query=b"", service=b"", ret=-2, family=10, flags=spec.FLAG_TRUNCATED)
    line = ('{"type":"dns_query","event_type_id":51,' + HEAD
            + '"query":null,"service":null,"family":"AF_INET6","ret":-2,"addresses":[],"duration_ns":12345,'
              '"truncated":true,"fault":false' + NO_CONTEXT).encode()
    assert encode_record(data, WALL) == line == encode_event(normalize(parse_record(data), WALL))


def test_a_name_that_is_not_utf8_keeps_its_bytes():
    data = dns_bytes(query=b"caf\xe9.test", slots=(V4,))
    line = encode_record(data, WALL)
    assert b'"query":"caf\xef\xbf\xbd.test","query_b64":"Y2Fm6S50ZXN0",' in line
    assert line == encode_event(normalize(parse_record(data), WALL))


def test_address_slots_decode_in_order_and_others_are_left_out():
    other = dns_slot(1, 0, b"/tmp/x")
    area = (V4 + other + V6).ljust(160, b"\0")
    assert dns_addresses(area, 3) == [b"127.88.7.1", b"::1"]
    assert dns_addresses(area, 1) == [b"127.88.7.1"]
    assert dns_addresses(area, 0) == []
    mapped = dns_slot(10, 0, bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 1]))
    assert dns_addresses(mapped.ljust(160, b"\0"), 1) == [b"::ffff:10.0.0.1"]


@pytest.mark.parametrize("data, message", [
    (dns_bytes(naddrs=9)[:100], "dns_query record is 100 bytes, shorter than its 288-byte fixed part"),
    (dns_bytes(query=b"q" * 257), "dns_query record query_len is 257, above the limit 256"),
    (dns_bytes(service=b"s" * 33), "dns_query record service_len is 33, above the limit 32"),
    (dns_bytes()[:-2], "dns_query record query and service ends at byte 303, beyond the 301-byte record"),
    (shell_bytes(b"x" * 4097), "shell_command record line_len is 4097, above the limit 4096"),
])
def test_a_corrupt_record_is_refused(data, message):
    with pytest.raises(RecordError, match=message):
        parse_record(data)
    with pytest.raises(RecordError):
        encode_record(data, WALL)


def test_more_slots_than_the_area_holds_is_not_a_crash():
    # naddrs is what the program counted; a corrupt value beyond the area's 8 slots reads the 8 there are
    data = dns_bytes(slots=(V4,) * 8, naddrs=200)
    assert normalize(parse_record(data), WALL)["addresses"] == ("127.88.7.1",) * 8
