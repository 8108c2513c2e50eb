"""Array, per-CPU array and hash maps in the kernel; the cpu-list parser."""
from __future__ import annotations

import errno
import struct

import pytest

from kestrel_raw.kernel import bpf, uapi
from kestrel_raw.errors import BPFError
from kestrel_raw.maps import ArrayMap, HashMap, Map, PerCPUArrayMap
from kestrel_raw.maps.array import parse_cpu_list, possible_cpus


@pytest.mark.parametrize("text,cpus", [
    ("0\n", (0,)), ("0-3\n", (0, 1, 2, 3)), ("0-1,4,6-7\n", (0, 1, 4, 6, 7)),
])
def test_parse_cpu_list(text, cpus):
    assert parse_cpu_list(text) == cpus


@pytest.mark.parametrize("text,message", [
    ("", "empty cpu list ''"), ("3-1", "malformed cpu list '3-1': range '3-1' runs backwards"),
    ("0-x", "malformed cpu list '0-x': '0-x' is not N or N-M"),
])
def test_parse_cpu_list_errors(text, message):
    with pytest.raises(ValueError) as e:
        parse_cpu_list(text)
    assert str(e.value) == message


def _u64(v: int) -> bytes:
    return struct.pack("<Q", v)


@pytest.mark.kernel
def test_array_map():
    with ArrayMap(8, 4, name="kr_array") as m:
        assert m[0] == bytes(8)  # arrays are preallocated and zeroed
        m[2] = _u64(0x1122334455667788)
        assert m[2] == bytes.fromhex("8877665544332211")
        assert list(m.keys()) == [struct.pack("<I", i) for i in range(4)]
        info = m.map_info()
        assert (info.type, info.key_size, info.value_size, info.max_entries, info.name) == (
            uapi.BPF_MAP_TYPE_ARRAY, 4, 8, 4, "kr_array")
        assert m.fileno() == m.fd > 2
        with pytest.raises(IndexError, match=r"index 4 outside 0..3"):
            m[4]
        with pytest.raises(ValueError, match="value is 4 bytes, expected 8"):
            m[0] = b"abcd"
        # The kernel's own answers for what the wrapper would refuse: a key past the end, a delete.
        with pytest.raises(BPFError) as e:
            bpf.map_update_elem(m.fd, struct.pack("<I", 4), _u64(1))
        assert e.value.errno == errno.E2BIG
        assert "the map is full (max_entries reached) or the index is past the end of an array" in str(e.value)
        with pytest.raises(BPFError) as e:
            m.delete(struct.pack("<I", 0))
        assert str(e.value) == ("BPF_MAP_DELETE_ELEM failed: EINVAL (Invalid argument); array elements cannot be "
                                "deleted; overwrite them instead")
    assert m.fd == -1
    m.close()


@pytest.mark.kernel
def test_percpu_array_map_has_a_value_per_possible_cpu():
    with open("/sys/devices/system/cpu/possible") as f:
        expected_cpus = parse_cpu_list(f.read())
    with PerCPUArrayMap(4, 2, name="kr_percpu") as m:
        assert m.cpus == expected_cpus == possible_cpus()
        assert m[1] == (bytes(4),) * len(expected_cpus)
        values = [struct.pack("<I", 100 + i) for i in range(len(m.cpus))]
        m[1] = values
        assert m[1] == tuple(values)
        assert m[0] == (bytes(4),) * len(expected_cpus)
        # The raw lookup is one 8-byte slot per CPU (values are rounded up to 8 bytes).
        raw = m.lookup(struct.pack("<I", 1))
        assert raw == b"".join(v + bytes(4) for v in values)
        with pytest.raises(ValueError, match=f"1 values for {len(m.cpus)} possible CPUs"):
            m[0] = [b"abcd"] if len(m.cpus) > 1 else [b"abcd", b"efgh"]
    with PerCPUArrayMap(8, 1, name="kr_percpu_sum") as m:
        m[0] = [_u64(i + 1) for i in range(len(m.cpus))]
        n = len(m.cpus)
        assert m.sum_u64(0) == n * (n + 1) // 2


@pytest.mark.kernel
def test_hash_map():
    with HashMap(4, 8, 2, name="kr_hash") as h:
        assert list(h.keys()) == []
        assert h.get(b"aaaa") is None
        with pytest.raises(KeyError):
            h[b"aaaa"]
        h[b"aaaa"] = _u64(1)
        h[b"bbbb"] = _u64(2)
        assert dict(h.items()) == {b"aaaa": _u64(1), b"bbbb": _u64(2)}
        assert sorted(h) == [b"aaaa", b"bbbb"]
        assert b"aaaa" in h and b"cccc" not in h
        # Full: a third key is E2BIG, with the reason.
        with pytest.raises(BPFError) as e:
            h[b"cccc"] = _u64(3)
        assert e.value.errno == errno.E2BIG and "the map is full" in str(e.value)
        with pytest.raises(BPFError) as e:
            h.update(b"aaaa", _u64(9), uapi.BPF_NOEXIST)
        assert e.value.errno == errno.EEXIST and "BPF_NOEXIST" in str(e.value)
        h.update(b"aaaa", _u64(9), uapi.BPF_EXIST)
        assert h[b"aaaa"] == _u64(9)
        # get-next-key walks from a given key: after the last one there is none.
        first = bpf.map_get_next_key(h.fd, None, 4)
        second = bpf.map_get_next_key(h.fd, first, 4)
        assert {first, second} == {b"aaaa", b"bbbb"}
        assert bpf.map_get_next_key(h.fd, second, 4) is None
        del h[b"aaaa"]
        assert h.delete(b"aaaa") is False
        with pytest.raises(KeyError):
            del h[b"aaaa"]
        assert list(h) == [b"bbbb"]


@pytest.mark.kernel
def test_base_map_and_bad_create():
    with Map(uapi.BPF_MAP_TYPE_HASH, 8, 16, 4, name="kr_base") as m:
        assert (m.map_type, m.key_size, m.value_size, m.max_entries, m.name) == (1, 8, 16, 4, "kr_base")
        assert m.map_info().value_size == 16
    with pytest.raises(BPFError) as e:
        Map(uapi.BPF_MAP_TYPE_ARRAY, 8, 8, 1, name="kr_badkey")  # array keys are u32
    assert e.value.errno == errno.EINVAL
    assert "the kernel refused map type 2 with key_size=8 value_size=8 max_entries=1" in str(e.value)
    assert str(e.value).startswith("BPF_MAP_CREATE failed: EINVAL (Invalid argument); ")


@pytest.mark.kernel
def test_batch_update_fills_a_map_of_ring_buffers():
    # The collector fills its ARRAY_OF_MAPS with one BPF_MAP_UPDATE_BATCH (falling back to single
    # updates where a kernel lacks batch ops for it); a lookup from user space gives the inner map's id.
    import struct as _struct
    from kestrel_raw.collector.load import fill_outer
    from kestrel_raw.maps import Map, RingBuf
    from kestrel_raw.kernel.uapi import BPF_MAP_TYPE_ARRAY_OF_MAPS
    rings = [RingBuf(4096, name=f"kr_t{i}") for i in range(3)]
    try:
        with Map(BPF_MAP_TYPE_ARRAY_OF_MAPS, 4, 4, 3, name="kr_outer", inner_map_fd=rings[0].fd) as outer:
            fill_outer(outer, [r.fd for r in rings])
            ids = [_struct.unpack("<I", outer.lookup(_struct.pack("<I", i)))[0] for i in range(3)]
            assert ids == [r.map_info().id for r in rings]
    finally:
        for r in rings:
            r.close()
