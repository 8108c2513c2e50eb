"""The exact bytes of every bpf(2) attr and perf_event_attr this package hands the kernel.

Each test calls a public function of ``kernel/bpf.py`` or ``kernel/perf.py`` with the syscall replaced by
``FakeKernel``, which records the command, the size and the first ``size`` bytes of the attr (the bytes the
kernel reads), reads what each pointer field points to while the call is in progress (the buffers live only
for the call), and answers as the kernel would: a result or an errno, and bytes written back into the attr or
through a pointer.  Pointer fields are recorded as zero, their targets separately, since addresses vary.

The bytes were pinned from the ctypes layouts that the declarative ones replaced, and they stay as the pin:
the offsets are include/uapi/linux/bpf.h's and perf_event.h's, and each size ends at the last field the
command uses (Debian 6.1's ``union bpf_attr`` is 144 bytes; nothing here may need more).
"""
from __future__ import annotations

import ctypes
import errno
import os
from collections import deque
from dataclasses import dataclass, field

import pytest

from kestrel_raw.errors import BPFError, VerifierError
from kestrel_raw.kernel import bpf, perf, syscall, uapi
from kestrel_raw.kernel.fd import FD

FD_RESULT = object()  # reply sentinel: answer with a fresh fd (of /dev/null), as the kernel answers a create


def _ptr(raw: bytes | memoryview, off: int) -> int:
    return int.from_bytes(raw[off:off + 8], "little")


def poke(addr: int, data: bytes) -> None:
    """Write ``data`` at ``addr``: what the kernel does through a pointer field (copy_to_user)."""
    assert addr, "the kernel was asked to write through a NULL pointer"
    ctypes.memmove(addr, data, len(data))


@dataclass
class Reply:
    ret: object = 0
    err: int = 0
    read: dict[int, int] = field(default_factory=dict)  # pointer field offset -> bytes to read there
    act: object = None  # called with the live attr (a writable memoryview) to write the kernel's answer


@dataclass
class Call:
    cmd: int
    size: int
    attr: bytes                             # the first ``size`` bytes, pointer fields in ``read`` zeroed
    pointed: dict[int, bytes | None]        # pointer field offset -> the bytes there (None: NULL)


class FakeKernel:
    """Stands in for ``syscall.bpf_errno``: answers each call from a queue of replies, records each call."""

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.calls: list[Call] = []

    def reply(self, ret: object = 0, err: int = 0, read: dict[int, int] | None = None, act=None) -> None:
        self.replies.append(Reply(ret, err, read or {}, act))

    def __call__(self, cmd: int, attr, size: int | None = None) -> tuple[int, int]:
        r = self.replies.popleft()
        live = memoryview(attr).cast("B")
        size = len(live) if size is None else size
        assert size <= len(live), f"size {size} is past the end of the {len(live)}-byte attr"
        sent = bytearray(live[:size])
        pointed: dict[int, bytes | None] = {}
        for off, n in r.read.items():
            addr = _ptr(sent, off)
            pointed[off] = ctypes.string_at(addr, n) if addr else None
            sent[off:off + 8] = bytes(8)
        self.calls.append(Call(cmd, size, bytes(sent), pointed))
        if r.act is not None:
            r.act(live)
        if r.err:
            return -1, r.err
        if r.ret is FD_RESULT:
            return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), 0
        return r.ret, 0


@pytest.fixture
def kernel(monkeypatch) -> FakeKernel:
    fake = FakeKernel()
    monkeypatch.setattr(syscall, "bpf_errno", fake)

    def bpf_raising(cmd, attr, size=None, op=None, hint=""):
        ret, err = fake(cmd, attr, size)
        if ret < 0:
            raise BPFError(op or uapi.BPF_CMD_NAMES[cmd], err, hint)
        return ret
    monkeypatch.setattr(syscall, "bpf", bpf_raising)
    yield fake
    assert not fake.replies, f"{len(fake.replies)} replies left: the code made fewer calls than the test expects"


def h(*parts: str) -> bytes:
    """Hex pieces, one per field (spaces allowed), to bytes."""
    return bytes.fromhex("".join(parts).replace(" ", ""))


NAME_KR_GOLDEN = "6b725f676f6c64656e00000000000000"  # "kr_golden", NUL-padded to BPF_OBJ_NAME_LEN
KEY = b"\x01\x00\x00\x00"
RET0 = h("b700000000000000", "9500000000000000")  # r0 = 0; exit


# --- maps --------------------------------------------------------------------------------------------------

def test_map_create_with_name(kernel):
    kernel.reply(FD_RESULT)
    with bpf.map_create(uapi.BPF_MAP_TYPE_HASH, 4, 8, 16, name="kr_golden", flags=uapi.BPF_F_NO_PREALLOC) as fd:
        assert isinstance(fd, FD)
    [c] = kernel.calls
    assert (c.cmd, c.size) == (uapi.BPF_MAP_CREATE, 44)
    assert c.attr == h(
        "01000000",        # map_type BPF_MAP_TYPE_HASH
        "04000000",        # key_size
        "08000000",        # value_size
        "10000000",        # max_entries 16
        "01000000",        # map_flags BPF_F_NO_PREALLOC
        "00000000",        # inner_map_fd
        "00000000",        # numa_node
        NAME_KR_GOLDEN,    # map_name
    )


def test_map_create_without_name_stops_before_map_name(kernel):
    kernel.reply(FD_RESULT)
    bpf.map_create(uapi.BPF_MAP_TYPE_ARRAY_OF_MAPS, 4, 4, 8, inner_map_fd=5).close()
    [c] = kernel.calls
    assert (c.cmd, c.size) == (uapi.BPF_MAP_CREATE, 28)
    assert c.attr == h("0c000000", "04000000", "04000000", "08000000", "00000000",
                       "05000000",  # inner_map_fd
                       "00000000")


def test_map_lookup_elem(kernel):
    kernel.reply(read={8: 4, 16: 8}, act=lambda a: poke(_ptr(a, 16), b"\x2a" + bytes(7)))
    assert bpf.map_lookup_elem(7, KEY, 8) == b"\x2a" + bytes(7)
    [c] = kernel.calls
    assert (c.cmd, c.size) == (uapi.BPF_MAP_LOOKUP_ELEM, 32)
    assert c.attr == h(
        "07000000 00000000",  # map_fd, padding
        "0000000000000000",   # key (pointer)
        "0000000000000000",   # value (pointer)
        "0000000000000000",   # flags
    )
    assert c.pointed == {8: KEY, 16: bytes(8)}


def test_map_lookup_elem_enoent_is_none(kernel):
    kernel.reply(err=errno.ENOENT)
    assert bpf.map_lookup_elem(7, KEY, 8) is None


def test_map_update_elem(kernel):
    kernel.reply(read={8: 4, 16: 8})
    bpf.map_update_elem(7, KEY, b"\x05" + bytes(7), uapi.BPF_EXIST)
    [c] = kernel.calls
    assert (c.cmd, c.size) == (uapi.BPF_MAP_UPDATE_ELEM, 32)
    assert c.attr == h("07000000 00000000", "0000000000000000", "0000000000000000",
                       "0200000000000000")  # flags BPF_EXIST
    assert c.pointed == {8: KEY, 16: b"\x05" + bytes(7)}


def test_map_update_elem_error_says_why(kernel):
    kernel.reply(err=errno.E2BIG, read={8: 4, 16: 8})
    with pytest.raises(BPFError) as e:
        bpf.map_update_elem(7, KEY, bytes(8))
    assert str(e.value) == ("BPF_MAP_UPDATE_ELEM failed: E2BIG (Argument list too long); the map is full "
                            "(max_entries reached) or the index is past the end of an array")


def test_map_delete_elem(kernel):
    kernel.reply(read={8: 4})
    kernel.reply(err=errno.ENOENT, read={8: 4})
    assert bpf.map_delete_elem(7, KEY) is True
    assert bpf.map_delete_elem(7, KEY) is False
    for c in kernel.calls:
        assert (c.cmd, c.size) == (uapi.BPF_MAP_DELETE_ELEM, 16)
        assert c.attr == h("07000000 00000000", "0000000000000000")
        assert c.pointed == {8: KEY}


def test_map_get_next_key(kernel):
    kernel.reply(read={8: 4, 16: 4}, act=lambda a: poke(_ptr(a, 16), b"\x03\x00\x00\x00"))
    kernel.reply(err=errno.ENOENT, read={8: 4, 16: 4})
    assert bpf.map_get_next_key(7, None, 4) == b"\x03\x00\x00\x00"
    assert bpf.map_get_next_key(7, b"\x03\x00\x00\x00", 4) is None
    first, last = kernel.calls
    for c in kernel.calls:
        assert (c.cmd, c.size) == (uapi.BPF_MAP_GET_NEXT_KEY, 24)
        assert c.attr == h("07000000 00000000", "0000000000000000", "0000000000000000")  # map_fd, key, next_key
    assert first.pointed == {8: None, 16: bytes(4)}  # the first key: key is NULL
    assert last.pointed == {8: b"\x03\x00\x00\x00", 16: bytes(4)}


def test_map_update_batch(kernel):
    keys, values = h("00000000", "01000000"), h("05000000", "06000000")
    kernel.reply(read={0: 1, 8: 1, 16: 8, 24: 8}, act=lambda a: a.__setitem__(slice(32, 36), h("01000000")))
    assert bpf.map_update_batch(7, keys, values, 2, elem_flags=uapi.BPF_NOEXIST) == 1  # the kernel's count
    [c] = kernel.calls
    assert (c.cmd, c.size) == (uapi.BPF_MAP_UPDATE_BATCH, 56)
    assert c.attr == h(
        "0000000000000000",   # in_batch (pointer)
        "0000000000000000",   # out_batch (pointer)
        "0000000000000000",   # keys (pointer)
        "0000000000000000",   # values (pointer)
        "02000000",           # count
        "07000000",           # map_fd
        "0100000000000000",   # elem_flags BPF_NOEXIST
        "0000000000000000",   # flags
    )
    assert c.pointed == {0: None, 8: None, 16: keys, 24: values}


# --- programs ------------------------------------------------------------------------------------------------

PROG_LOAD_READ = {8: 16, 16: 4, 32: 1}  # insns, license, log_buf


def _prog_load_attr(log_level: str = "00000000", log_size: str = "00000000", name: str = NAME_KR_GOLDEN) -> bytes:
    return h(
        "05000000",            # prog_type BPF_PROG_TYPE_TRACEPOINT
        "02000000",            # insn_cnt
        "0000000000000000",    # insns (pointer)
        "0000000000000000",    # license (pointer)
        log_level,             # log_level
        log_size,              # log_size
        "0000000000000000",    # log_buf (pointer)
        "00000000",            # kern_version
        "00000000",            # prog_flags
        name,                  # prog_name
        "00000000",            # prog_ifindex
        "00000000",            # expected_attach_type
    )


def test_prog_load(kernel):
    kernel.reply(FD_RESULT, read=PROG_LOAD_READ)
    bpf.prog_load(uapi.BPF_PROG_TYPE_TRACEPOINT, RET0, name="kr_golden").close()
    [c] = kernel.calls
    assert (c.cmd, c.size) == (uapi.BPF_PROG_LOAD, 72)
    assert c.attr == _prog_load_attr()
    assert c.pointed == {8: RET0, 16: b"GPL\0", 32: None}


def test_prog_load_with_attach_btf_id_passes_up_to_attach_btf_obj_fd(kernel):
    kernel.reply(FD_RESULT, read={**PROG_LOAD_READ, 16: 13})
    bpf.prog_load(uapi.BPF_PROG_TYPE_TRACING, RET0, license="Dual BSD/GPL", name="kr_golden",
                  expected_attach_type=uapi.BPF_TRACE_RAW_TP, attach_btf_id=1234,
                  prog_flags=uapi.BPF_F_STRICT_ALIGNMENT, kern_version=0x060100).close()
    [c] = kernel.calls
    assert (c.cmd, c.size) == (uapi.BPF_PROG_LOAD, 116)
    assert c.attr == h(
        "1a000000", "02000000", "0000000000000000", "0000000000000000", "00000000", "00000000",
        "0000000000000000",
        "00010600",            # kern_version
        "01000000",            # prog_flags BPF_F_STRICT_ALIGNMENT
        NAME_KR_GOLDEN,
        "00000000",            # prog_ifindex
        "17000000",            # expected_attach_type BPF_TRACE_RAW_TP
        "00000000",            # prog_btf_fd
        "00000000",            # func_info_rec_size
        "0000000000000000",    # func_info
        "00000000",            # func_info_cnt
        "00000000",            # line_info_rec_size
        "0000000000000000",    # line_info
        "00000000",            # line_info_cnt
        "d2040000",            # attach_btf_id 1234
        "00000000",            # attach_btf_obj_fd
    )
    assert c.pointed == {8: RET0, 16: b"Dual BSD/GPL\0", 32: None}


def test_prog_load_with_btf_func_and_line_info(kernel):
    func_info = h("00000000 05000000", "02000000 07000000")            # two bpf_func_info: insn_off, type_id
    line_info = h("00000000 01000000 02000000 03040000")              # one bpf_line_info
    kernel.reply(FD_RESULT, read={**PROG_LOAD_READ, 80: 16, 96: 16})
    bpf.prog_load(uapi.BPF_PROG_TYPE_TRACEPOINT, RET0, name="kr_golden", prog_btf_fd=7, func_info=func_info,
                  line_info=line_info).close()
    [c] = kernel.calls
    assert (c.cmd, c.size) == (uapi.BPF_PROG_LOAD, 108)                 # up to line_info_cnt
    assert c.attr == _prog_load_attr() + h(
        "07000000",            # prog_btf_fd
        "08000000",            # func_info_rec_size
        "0000000000000000",    # func_info (pointer)
        "02000000",            # func_info_cnt
        "10000000",            # line_info_rec_size
        "0000000000000000",    # line_info (pointer)
        "01000000",            # line_info_cnt
    )
    assert c.pointed == {8: RET0, 16: b"GPL\0", 32: None, 80: func_info, 96: line_info}


def test_prog_load_with_btf_alone_stops_at_prog_btf_fd(kernel):
    kernel.reply(FD_RESULT, read=PROG_LOAD_READ)
    bpf.prog_load(uapi.BPF_PROG_TYPE_TRACEPOINT, RET0, name="kr_golden", prog_btf_fd=7).close()
    [c] = kernel.calls
    assert (c.cmd, c.size) == (uapi.BPF_PROG_LOAD, 76)
    assert c.attr == _prog_load_attr() + h("07000000")


def test_prog_load_refuses_info_without_btf_or_cut_records():
    with pytest.raises(ValueError, match="func_info refers to the program's BTF: pass its fd as prog_btf_fd"):
        bpf.prog_load(uapi.BPF_PROG_TYPE_TRACEPOINT, RET0, func_info=bytes(8))
    with pytest.raises(ValueError, match="line_info is 15 bytes, not a whole number of 16-byte records"):
        bpf.prog_load(uapi.BPF_PROG_TYPE_TRACEPOINT, RET0, prog_btf_fd=3, line_info=bytes(15))


def test_map_freeze(kernel):
    kernel.reply(0)
    kernel.reply(err=errno.EBUSY)
    bpf.map_freeze(9)
    with pytest.raises(BPFError, match="BPF_MAP_FREEZE.*mapped writable"):
        bpf.map_freeze(9)
    first, _ = kernel.calls
    assert (first.cmd, first.size, first.attr) == (uapi.BPF_MAP_FREEZE, 4, h("09000000"))


def test_raw_tracepoint_open_without_a_name_for_btf_programs(kernel):
    kernel.reply(FD_RESULT, read={0: 1})
    bpf.raw_tracepoint_open(None, 4).close()
    [c] = kernel.calls
    assert (c.cmd, c.size) == (uapi.BPF_RAW_TRACEPOINT_OPEN, 12)
    assert c.attr == h("0000000000000000", "04000000")
    assert c.pointed == {0: None}                                     # name NULL: where attach_btf_id says


def test_prog_load_retries_eagain(kernel):
    for _ in range(2):
        kernel.reply(err=errno.EAGAIN, read=PROG_LOAD_READ)
    kernel.reply(FD_RESULT, read=PROG_LOAD_READ)
    bpf.prog_load(uapi.BPF_PROG_TYPE_TRACEPOINT, RET0, name="kr_golden").close()
    assert [c.attr for c in kernel.calls] == [_prog_load_attr()] * 3


def test_prog_load_failure_loads_again_with_a_growing_log(kernel):
    log = b"0: (95) exit\nR0 !read_ok\nprocessed 1 insns\n\0"
    kernel.reply(err=errno.EACCES, read=PROG_LOAD_READ)    # no log asked for
    kernel.reply(err=errno.ENOSPC, read=PROG_LOAD_READ)    # the log did not fit in 1 MiB
    kernel.reply(err=errno.EACCES, read=PROG_LOAD_READ, act=lambda a: poke(_ptr(a, 32), log))
    with pytest.raises(VerifierError) as e:
        bpf.prog_load(uapi.BPF_PROG_TYPE_TRACEPOINT, RET0, name="kr_golden")
    assert e.value.log == log[:-1].decode()
    assert e.value.errno == errno.EACCES and e.value.program_name == "kr_golden"
    first, second, third = kernel.calls
    assert first.attr == _prog_load_attr()
    assert first.pointed[32] is None
    assert second.attr == _prog_load_attr(log_level="01000000", log_size="00001000")  # 1 << 20
    assert third.attr == _prog_load_attr(log_level="01000000", log_size="00004000")   # 4 << 20
    assert second.pointed[32] is not None and third.pointed[32] is not None


def test_prog_load_with_log_keeps_the_log_of_a_valid_program_growing_the_buffer(kernel):
    log = b"0: R1=ctx() R10=fp0\n0: (b7) r0 = 0\nprocessed 2 insns\n\0"
    kernel.reply(err=errno.ENOSPC, read=PROG_LOAD_READ)    # valid, but the log did not fit in 1 MiB
    kernel.reply(FD_RESULT, read=PROG_LOAD_READ, act=lambda a: poke(_ptr(a, 32), log))
    fd, text = bpf.prog_load_with_log(uapi.BPF_PROG_TYPE_TRACEPOINT, RET0, 2, name="kr_golden")
    fd.close()
    assert text == log[:-1].decode()
    first, second = kernel.calls
    assert first.attr == _prog_load_attr(log_level="02000000", log_size="00001000")   # 1 << 20, level 2
    assert second.attr == _prog_load_attr(log_level="02000000", log_size="00004000")  # 4 << 20
    with pytest.raises(ValueError, match="log_level must be 1 or more to keep a log, not 0"):
        bpf.prog_load_with_log(uapi.BPF_PROG_TYPE_TRACEPOINT, RET0, 0)


# --- object info -------------------------------------------------------------------------------------------

def _obj_info_attr(fd: str, info_len: str) -> bytes:
    return h(fd, info_len, "0000000000000000")  # bpf_fd, info_len, info (pointer)


def _prog_info_blob(**fields: bytes) -> bytes:
    """A struct bpf_prog_info as a 6.18 kernel writes it (232 bytes), with ``fields`` at their offsets."""
    offsets = {"type": 0, "id": 4, "tag": 8, "jited_prog_len": 16, "xlated_prog_len": 20, "load_time": 40,
               "created_by_uid": 48, "nr_map_ids": 52, "name": 64, "gpl_compatible": 84, "btf_id": 128,
               "run_time_ns": 192, "run_cnt": 200, "recursion_misses": 208, "verified_insns": 216}
    blob = bytearray(232)
    for name, value in fields.items():
        blob[offsets[name]:offsets[name] + len(value)] = value
    return bytes(blob)


def test_prog_info_asks_twice_for_the_map_ids(kernel):
    blob = _prog_info_blob(type=h("05000000"), id=h("2a000000"), tag=h("0102030405060708"),
                           jited_prog_len=h("40000000"), xlated_prog_len=h("10000000"),
                           load_time=h("0010000000000000"), created_by_uid=h("e8030000"), nr_map_ids=h("02000000"),
                           name=b"kr_golden\0", gpl_compatible=h("01000000"), btf_id=h("07000000"),
                           run_time_ns=h("6400000000000000"), run_cnt=h("0300000000000000"),
                           recursion_misses=h("0100000000000000"), verified_insns=h("02000000"))
    seen = {}

    def second(a):
        info = _ptr(a, 8)
        seen["info"] = ctypes.string_at(info, 232)
        poke(_ptr(seen["info"], 56), h("0b000000", "0c000000"))  # through bpf_prog_info.map_ids
    kernel.reply(read={8: 232}, act=lambda a: poke(_ptr(a, 8), blob))
    kernel.reply(read={8: 1}, act=second)
    info = bpf.prog_info(9)
    assert info == bpf.ProgInfo(
        id=42, type=5, name="kr_golden", tag=h("0102030405060708"), jited_prog_len=64, xlated_prog_len=16,
        load_time=4096, created_by_uid=1000, map_ids=(11, 12), gpl_compatible=True, btf_id=7, run_time_ns=100,
        run_cnt=3, recursion_misses=1, verified_insns=2)
    first, again = kernel.calls
    for c in kernel.calls:
        assert (c.cmd, c.size) == (uapi.BPF_OBJ_GET_INFO_BY_FD, 16)
        assert c.attr == _obj_info_attr("09000000", "e8000000")  # info_len 232: sizeof(struct bpf_prog_info)
    assert first.pointed == {8: bytes(232)}
    # The second call asks for nothing but the map ids: nr_map_ids and a pointer, every other byte zero.
    expected = bytearray(232)
    expected[52:56] = h("02000000")
    sent = bytearray(seen["info"])
    assert _ptr(sent, 56) != 0
    sent[56:64] = bytes(8)
    assert sent == expected


def test_prog_xlated(kernel):
    seen = {}

    def second(a):
        seen["info"] = ctypes.string_at(_ptr(a, 8), 232)
        poke(_ptr(seen["info"], 32), RET0)  # through bpf_prog_info.xlated_prog_insns
    kernel.reply(read={8: 232}, act=lambda a: poke(_ptr(a, 8), _prog_info_blob(xlated_prog_len=h("10000000"))))
    kernel.reply(read={8: 1}, act=second)
    assert bpf.prog_xlated(9) == RET0
    expected = bytearray(232)
    expected[20:24] = h("10000000")  # xlated_prog_len
    sent = bytearray(seen["info"])
    assert _ptr(sent, 32) != 0
    sent[32:40] = bytes(8)
    assert sent == expected


def test_map_info(kernel):
    blob = bytearray(88)
    blob[0:24] = h("1b000000", "05000000", "00000000", "00000000", "00001000", "00000000")
    blob[24:40] = bytes.fromhex(NAME_KR_GOLDEN)
    kernel.reply(read={8: 88}, act=lambda a: poke(_ptr(a, 8), bytes(blob)))
    assert bpf.map_info(9) == bpf.MapInfo(id=5, type=27, name="kr_golden", key_size=0, value_size=0,
                                          max_entries=1 << 20, map_flags=0)
    [c] = kernel.calls
    assert (c.cmd, c.size, c.attr) == (uapi.BPF_OBJ_GET_INFO_BY_FD, 16, _obj_info_attr("09000000", "58000000"))
    assert c.pointed == {8: bytes(88)}


def test_link_info(kernel):
    kernel.reply(read={8: 12}, act=lambda a: poke(_ptr(a, 8), h("07000000", "03000000", "2a000000")))
    assert bpf.link_info(9) == bpf.LinkInfo(id=3, type=uapi.BPF_LINK_TYPE_PERF_EVENT, prog_id=42)
    [c] = kernel.calls
    assert (c.cmd, c.size, c.attr) == (uapi.BPF_OBJ_GET_INFO_BY_FD, 16, _obj_info_attr("09000000", "0c000000"))
    assert c.pointed == {8: bytes(12)}


# --- links and attachment ----------------------------------------------------------------------------------

def test_link_create(kernel):
    kernel.reply(FD_RESULT)
    kernel.reply(FD_RESULT)
    bpf.link_create(4, 5, uapi.BPF_PERF_EVENT).close()
    bpf.link_create(4, 5, uapi.BPF_PERF_EVENT, bpf_cookie=0x1122334455667788).close()
    plain, cookie = kernel.calls
    assert (plain.cmd, plain.size) == (uapi.BPF_LINK_CREATE, 16)
    assert plain.attr == h("04000000", "05000000", "29000000", "00000000")  # prog_fd, target_fd, attach_type, flags
    assert (cookie.cmd, cookie.size) == (uapi.BPF_LINK_CREATE, 24)
    assert cookie.attr == plain.attr + h("8877665544332211")  # perf_event.bpf_cookie


def test_iter_create(kernel):
    kernel.reply(FD_RESULT)
    bpf.iter_create(7).close()
    [c] = kernel.calls
    assert (c.cmd, c.size, c.attr) == (uapi.BPF_ITER_CREATE, 8, h("07000000", "00000000"))  # link_fd, flags


def test_raw_tracepoint_open(kernel):
    kernel.reply(FD_RESULT, read={0: 10})
    bpf.raw_tracepoint_open("sys_enter", 4).close()
    [c] = kernel.calls
    assert (c.cmd, c.size) == (uapi.BPF_RAW_TRACEPOINT_OPEN, 12)
    assert c.attr == h("0000000000000000", "04000000")  # name (pointer), prog_fd
    assert c.pointed == {0: b"sys_enter\0"}


def test_raw_tracepoint_open_enoent_says_why(kernel):
    kernel.reply(err=errno.ENOENT, read={0: 17})
    with pytest.raises(BPFError, match="the kernel has no raw tracepoint 'sys_enter_openat'"):
        bpf.raw_tracepoint_open("sys_enter_openat", 4)
    assert kernel.calls[0].pointed == {0: b"sys_enter_openat\0"}


# --- ids and stats -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("walk,cmd", [
    (bpf.prog_get_next_id, uapi.BPF_PROG_GET_NEXT_ID),
    (bpf.map_get_next_id, uapi.BPF_MAP_GET_NEXT_ID),
    (bpf.link_get_next_id, uapi.BPF_LINK_GET_NEXT_ID),
])
def test_get_next_id(kernel, walk, cmd):
    kernel.reply(act=lambda a: a.__setitem__(slice(4, 8), h("06000000")))
    kernel.reply(err=errno.ENOENT)
    assert walk(5) == 6
    assert walk(6) is None
    first, last = kernel.calls
    assert (first.cmd, first.size, first.attr) == (cmd, 8, h("05000000", "00000000"))  # start_id, next_id
    assert (last.cmd, last.size, last.attr) == (cmd, 8, h("06000000", "00000000"))


def test_prog_get_fd_by_id(kernel):
    kernel.reply(FD_RESULT)
    bpf.prog_get_fd_by_id(9).close()
    [c] = kernel.calls
    assert (c.cmd, c.size, c.attr) == (uapi.BPF_PROG_GET_FD_BY_ID, 12, h("09000000", "00000000", "00000000"))


def test_map_get_fd_by_id(kernel):
    kernel.reply(FD_RESULT)
    bpf.map_get_fd_by_id(7).close()
    [c] = kernel.calls
    assert (c.cmd, c.size, c.attr) == (uapi.BPF_MAP_GET_FD_BY_ID, 12, h("07000000", "00000000", "00000000"))


def test_enable_stats(kernel):
    kernel.reply(FD_RESULT)
    bpf.enable_stats(uapi.BPF_STATS_RUN_TIME).close()
    [c] = kernel.calls
    assert (c.cmd, c.size, c.attr) == (uapi.BPF_ENABLE_STATS, 4, h("00000000"))


# --- perf_event_open ---------------------------------------------------------------------------------------

def test_tracepoint_event_perf_event_attr(monkeypatch):
    calls = []

    def fake_perf_event_open(attr, pid, cpu, group_fd, flags):
        calls.append((bytes(memoryview(attr).cast("B")), pid, cpu, group_fd, flags))
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    monkeypatch.setattr(syscall, "perf_event_open", fake_perf_event_open)
    perf.tracepoint_event(782, cpu=1).close()
    [(attr, pid, cpu, group_fd, flags)] = calls
    assert (pid, cpu, group_fd, flags) == (-1, 1, -1, uapi.PERF_FLAG_FD_CLOEXEC)
    assert attr == h(
        "02000000",           # type PERF_TYPE_TRACEPOINT
        "88000000",           # size 136: PERF_ATTR_SIZE_VER8
        "0e03000000000000",   # config: the tracepoint id
    ) + bytes(136 - 16)       # no sampling, every flag bit clear (the event is enabled at creation)
