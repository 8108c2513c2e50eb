"""One thin function per bpf(2) command, in the manner of libbpf's bpf.c.

A call packs the command's view of ``union bpf_attr`` (kernel/uapi.py) into a zeroed bytearray with the fields
it uses, passes the size up to the end of the last field it set (so Debian 6.1's 144-byte ``bpf_attr`` is
enough for everything here), and maps the errno to an exception that names the command.  What the kernel reads
or fills through a pointer field (keys, values, instructions, the verifier log, info structs) is a bytearray
pinned for the call by ``syscall.pinned``.  tests/test_bpf_golden.py pins the bytes of every attr.
"""
from __future__ import annotations

import errno
import re
import struct
from dataclasses import dataclass

from kestrel_raw.kernel import syscall
from kestrel_raw.errors import ConfigError, VerifierError, bpf_error
from kestrel_raw.kernel.fd import FD
from kestrel_raw.kernel.uapi import (
    BPF_BTF_LOAD, BPF_ENABLE_STATS, BPF_ITER_CREATE, BPF_LINK_CREATE, BPF_LINK_GET_NEXT_ID, BPF_MAP_CREATE,
    BPF_MAP_DELETE_ELEM, BPF_MAP_GET_NEXT_ID, BPF_MAP_GET_NEXT_KEY, BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_BATCH,
    BPF_MAP_UPDATE_ELEM, BPF_OBJ_GET_INFO_BY_FD, BPF_OBJ_NAME_LEN, BPF_PROG_GET_FD_BY_ID,
    BPF_PROG_GET_NEXT_ID, BPF_PROG_LOAD, BPF_RAW_TRACEPOINT_OPEN, BPF_ANY, BPF_CMD_NAMES, BpfLinkInfo,
    BpfMapInfo, BpfProgInfo, BtfLoadAttr, EnableStatsAttr, GetIdAttr, InfoByFdAttr, IterCreateAttr,
    LinkCreateAttr, MapBatchAttr, MapCreateAttr, MapElemAttr, ProgLoadAttr, RawTracepointAttr,
)
from kestrel_raw.kernel.layout import Layout


# --- what the info commands return ----------------------------------------------------------------------

@dataclass(frozen=True)
class ProgInfo:
    id: int
    type: int
    name: str
    tag: bytes
    jited_prog_len: int
    xlated_prog_len: int
    load_time: int
    created_by_uid: int
    map_ids: tuple[int, ...]
    gpl_compatible: bool
    btf_id: int
    run_time_ns: int
    run_cnt: int
    recursion_misses: int
    verified_insns: int


@dataclass(frozen=True)
class MapInfo:
    id: int
    type: int
    name: str
    key_size: int
    value_size: int
    max_entries: int
    map_flags: int


@dataclass(frozen=True)
class LinkInfo:
    id: int
    type: int
    prog_id: int


# --- names ----------------------------------------------------------------------------------------------

_NAME_RE = re.compile(r"[A-Za-z0-9_.]*")


def check_object_name(name: str, what: str = "object") -> bytes:
    """Validate a map or program name as the kernel does (``bpf_obj_name_cpy``) and return its bytes.

    The kernel answers a bad name with a bare EINVAL; this says which rule was broken.
    """
    if not isinstance(name, str):
        raise ConfigError(f"{what} name must be a str, got {type(name).__name__}")
    if len(name) > BPF_OBJ_NAME_LEN - 1:
        raise ConfigError(f"{what} name {name!r} is {len(name)} characters long; the kernel allows at most "
                          f"{BPF_OBJ_NAME_LEN - 1}")
    if not _NAME_RE.fullmatch(name):
        bad = sorted({c for c in name if not re.fullmatch(r"[A-Za-z0-9_.]", c)})
        raise ConfigError(f"{what} name {name!r} contains {''.join(bad)!r}; the kernel allows only letters, "
                          f"digits, '_' and '.'")
    return name.encode("ascii")


# --- maps -----------------------------------------------------------------------------------------------

def map_create(map_type: int, key_size: int, value_size: int, max_entries: int, name: str = "",
               flags: int = 0, inner_map_fd: int = 0, btf_fd: int = 0, btf_key_type_id: int = 0,
               btf_value_type_id: int = 0) -> FD:
    """BPF_MAP_CREATE.  ``btf_fd`` and the type ids describe key and value (local storage maps need them)."""
    attr = MapCreateAttr.pack(map_type=map_type, key_size=key_size, value_size=value_size,
                              max_entries=max_entries, map_flags=flags, inner_map_fd=inner_map_fd,
                              map_name=check_object_name(name, "map"), btf_fd=btf_fd,
                              btf_key_type_id=btf_key_type_id, btf_value_type_id=btf_value_type_id)
    last = "btf_value_type_id" if btf_fd else "map_name" if name else "numa_node"
    size = MapCreateAttr.offsetofend(last)
    return FD(_call(BPF_MAP_CREATE, attr, size, _map_create_hint(map_type, key_size, value_size, max_entries)))


def btf_load(blob: bytes, log_size: int = 64 * 1024) -> FD:
    """BPF_BTF_LOAD: load BTF type information; the log (why the kernel refused it) is in the error."""
    data = bytearray(blob)
    log = bytearray(log_size)
    with syscall.pinned(data) as btf_ptr, syscall.pinned(log) as log_ptr:
        attr = BtfLoadAttr.pack(btf=btf_ptr, btf_size=len(data), btf_log_buf=log_ptr, btf_log_size=len(log),
                                btf_log_level=1)
        ret, err = syscall.bpf_errno(BPF_BTF_LOAD, attr, BtfLoadAttr.offsetofend("btf_log_level"))
    if ret < 0:
        text = bytes(log).split(b"\0", 1)[0].decode("utf-8", "replace").strip()
        raise bpf_error("BPF_BTF_LOAD", err, f"the kernel's BTF log: {text}" if text else "")
    return FD(ret)


def _map_create_hint(map_type, key_size, value_size, max_entries):
    def hint(err: int) -> str:
        if err == errno.EINVAL:
            return (f"the kernel refused map type {map_type} with key_size={key_size} value_size={value_size} "
                    f"max_entries={max_entries} (e.g. a ring buffer needs key and value size 0 and a "
                    f"power-of-two, page-aligned size; an array needs a 4-byte key)")
        return ""
    return hint


def _arg(data: bytes | bytearray | memoryview, size: int, what: str) -> bytearray:
    """A copy of ``data`` for the kernel to read, at least one byte so that its pointer is never NULL."""
    if len(data) != size:
        raise ValueError(f"{what} is {len(data)} bytes, the map's {what} size is {size}")
    return bytearray(data) or bytearray(1)


def map_lookup_elem(map_fd: int, key: bytes, value_size: int, key_size: int | None = None) -> bytes | None:
    """The value stored under ``key``, or None when there is none (ENOENT)."""
    key_buf = _arg(key, len(key) if key_size is None else key_size, "key")
    value = bytearray(max(value_size, 1))
    with syscall.pinned(key_buf) as key_ptr, syscall.pinned(value) as value_ptr:
        attr = MapElemAttr.pack(map_fd=map_fd, key=key_ptr, value=value_ptr)
        ret, err = syscall.bpf_errno(BPF_MAP_LOOKUP_ELEM, attr, MapElemAttr.offsetofend("flags"))
    if ret < 0:
        if err == errno.ENOENT:
            return None
        raise bpf_error("BPF_MAP_LOOKUP_ELEM", err)
    return bytes(value[:value_size])


def map_update_elem(map_fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    key_buf, value_buf = _arg(key, len(key), "key"), _arg(value, len(value), "value")
    with syscall.pinned(key_buf) as key_ptr, syscall.pinned(value_buf) as value_ptr:
        attr = MapElemAttr.pack(map_fd=map_fd, key=key_ptr, value=value_ptr, flags=flags)
        _call(BPF_MAP_UPDATE_ELEM, attr, MapElemAttr.offsetofend("flags"), _update_hint)


def _update_hint(err: int) -> str:
    if err == errno.E2BIG:
        return "the map is full (max_entries reached) or the index is past the end of an array"
    if err == errno.EEXIST:
        return "the key exists and BPF_NOEXIST was asked for"
    if err == errno.ENOENT:
        return "the key does not exist and BPF_EXIST was asked for"
    return ""


def map_update_batch(map_fd: int, keys: bytes, values: bytes, count: int, elem_flags: int = BPF_ANY) -> int:
    """Update ``count`` elements in one call (keys and values packed back to back); returns how many the
    kernel updated.  One call matters for maps of maps: the kernel waits for an RCU grace period after
    every update of one (~14 ms here), and once per batch."""
    keys_buf, values_buf = bytearray(keys) or bytearray(1), bytearray(values) or bytearray(1)
    with syscall.pinned(keys_buf) as keys_ptr, syscall.pinned(values_buf) as values_ptr:
        attr = MapBatchAttr.pack(keys=keys_ptr, values=values_ptr, count=count, map_fd=map_fd,
                                 elem_flags=elem_flags)
        _call(BPF_MAP_UPDATE_BATCH, attr, MapBatchAttr.offsetofend("flags"))
    return MapBatchAttr.get(attr, "count")


def map_delete_elem(map_fd: int, key: bytes) -> bool:
    """Delete ``key``; False when it was not there (ENOENT)."""
    with syscall.pinned(_arg(key, len(key), "key")) as key_ptr:
        attr = MapElemAttr.pack(map_fd=map_fd, key=key_ptr)
        ret, err = syscall.bpf_errno(BPF_MAP_DELETE_ELEM, attr, MapElemAttr.offsetofend("key"))
    if ret < 0:
        if err == errno.ENOENT:
            return False
        hint = "array elements cannot be deleted; overwrite them instead" if err == errno.EINVAL else ""
        raise bpf_error("BPF_MAP_DELETE_ELEM", err, hint)
    return True


def map_get_next_key(map_fd: int, key: bytes | None, key_size: int) -> bytes | None:
    """The key after ``key`` (the first key when ``key`` is None), or None at the end."""
    key_buf = _arg(key, key_size, "key") if key is not None else None
    next_key = bytearray(max(key_size, 1))
    with syscall.pinned(key_buf) as key_ptr, syscall.pinned(next_key) as next_key_ptr:
        attr = MapElemAttr.pack(map_fd=map_fd, key=key_ptr, next_key=next_key_ptr)
        ret, err = syscall.bpf_errno(BPF_MAP_GET_NEXT_KEY, attr, MapElemAttr.offsetofend("next_key"))
    if ret < 0:
        if err == errno.ENOENT:
            return None
        raise bpf_error("BPF_MAP_GET_NEXT_KEY", err)
    return bytes(next_key[:key_size])


# --- programs -------------------------------------------------------------------------------------------

PROG_LOAD_EAGAIN_RETRIES = 5
LOG_BUF_START = 1 << 20
LOG_BUF_MAX = 1 << 30  # the kernel's own limit on log_size (UINT_MAX >> 2)


def prog_load(prog_type: int, insns: bytes, license: str = "GPL", name: str = "",
              expected_attach_type: int = 0, attach_btf_id: int = 0, attach_btf_obj_fd: int = 0,
              prog_flags: int = 0, kern_version: int = 0, log_level: int = 0,
              log_size: int = LOG_BUF_START) -> FD:
    """Load a program; on failure load it again with the verifier log on and raise ``VerifierError``.

    The first load runs with no log, as a log costs verifier time on every load.  The log load starts with
    a ``log_size`` buffer and grows it while the kernel answers ENOSPC (the log did not fit).
    ``log_level`` > 0 asks for a log on the first load too (it is then discarded on success).
    """
    raw_name = check_object_name(name, "program")
    if len(insns) % 8 or not insns:
        raise ValueError(f"a program is a non-empty sequence of 8-byte instructions, got {len(insns)} bytes")
    code = bytearray(insns)
    lic = bytearray(license.encode("ascii") + b"\0")
    # attach_btf_id and attach_btf_obj_fd (5.5/5.10) only when used, so that the others need less of the attr.
    last = "attach_btf_obj_fd" if attach_btf_id or attach_btf_obj_fd else "expected_attach_type"
    with syscall.pinned(code) as insns_ptr, syscall.pinned(lic) as license_ptr:
        fields = dict(prog_type=prog_type, insn_cnt=len(insns) // 8, insns=insns_ptr, license=license_ptr,
                      kern_version=kern_version, prog_flags=prog_flags, prog_name=raw_name,
                      expected_attach_type=expected_attach_type, attach_btf_id=attach_btf_id,
                      attach_btf_obj_fd=attach_btf_obj_fd)
        size = ProgLoadAttr.offsetofend(last)
        fd, err, _ = _prog_load_once(fields, size, log_level, log_size if log_level else 0)
        if fd >= 0:
            return FD(fd)
        # Load again with the log on to learn why; grow the buffer until the whole log fits.
        level = log_level or 1
        while True:
            fd, err, log = _prog_load_once(fields, size, level, log_size)
            if fd >= 0:
                # Loaded the second time (a transient failure the first time): keep it.
                return FD(fd)
            if err == errno.ENOSPC and log_size < LOG_BUF_MAX:
                log_size = min(log_size * 4, LOG_BUF_MAX)
                continue
            break
    if log.strip():
        raise VerifierError("BPF_PROG_LOAD", err, log, program_name=name)
    if err == errno.EPERM:
        raise bpf_error("BPF_PROG_LOAD", err,
                        "the process needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) to load this program "
                        "type; under kernel lockdown, some program types and helpers are refused outright")
    raise bpf_error("BPF_PROG_LOAD", err, _prog_load_hint(err))


def _prog_load_hint(err: int) -> str:
    if err == errno.EINVAL:
        return ("the kernel refused the load attributes before verification (unknown program type, bad name, "
                "attach type, or flags this kernel does not know)")
    if err == errno.E2BIG:
        return "the program has more instructions than this kernel allows, or the attr is too new"
    return ""


def _prog_load_once(fields: dict, size: int, log_level: int, log_size: int) -> tuple[int, int, str]:
    """One BPF_PROG_LOAD of the attr ``fields``, with a fresh log buffer of ``log_size`` bytes when
    ``log_level`` is set, retrying EAGAIN (as libbpf does).  Returns (fd or -1, errno, the log's text)."""
    log = bytearray(log_size) if log_level else None
    with syscall.pinned(log) as log_ptr:
        attr = ProgLoadAttr.pack(**fields, log_level=log_level, log_size=len(log) if log is not None else 0,
                                 log_buf=log_ptr)
        for _ in range(PROG_LOAD_EAGAIN_RETRIES):
            ret, err = syscall.bpf_errno(BPF_PROG_LOAD, attr, size)
            if ret >= 0 or err != errno.EAGAIN:
                break
    return ret, err, _c_string(log).decode("utf-8", "replace") if log is not None else ""


def _c_string(buf: bytearray) -> bytes:
    end = buf.find(0)
    return bytes(buf[:end] if end >= 0 else buf)


# --- object info -----------------------------------------------------------------------------------------

def obj_get_info_by_fd(fd: int, info: bytearray) -> int:
    """Fill ``info`` (a packed info struct) for the object behind ``fd``; returns how many bytes the kernel
    wrote."""
    with syscall.pinned(info) as info_ptr:
        attr = InfoByFdAttr.pack(bpf_fd=fd, info_len=len(info), info=info_ptr)
        _call(BPF_OBJ_GET_INFO_BY_FD, attr, InfoByFdAttr.offsetofend("info"))
    return InfoByFdAttr.get(attr, "info_len")


def _info(fd: int, layout: Layout, **ask: int) -> dict:
    """``layout`` (an info struct) as the kernel fills it for ``fd``; ``ask`` sets the fields that ask for
    more (a count and a pointer to room for that many), every other field zero so the kernel fills nothing
    else."""
    info = layout.pack(**ask)
    obj_get_info_by_fd(fd, info)
    return layout.unpack(info)


def prog_info(fd: int) -> ProgInfo:
    info = _info(fd, BpfProgInfo)
    map_ids: tuple[int, ...] = ()
    if n := info["nr_map_ids"]:
        # Second call with room for the map ids.
        ids = bytearray(4 * n)
        with syscall.pinned(ids) as ids_ptr:
            again = _info(fd, BpfProgInfo, nr_map_ids=n, map_ids=ids_ptr)
        map_ids = struct.unpack_from(f"<{min(again['nr_map_ids'], n)}I", ids)
    return ProgInfo(
        id=info["id"], type=info["type"], name=info["name"].decode("ascii", "replace"), tag=info["tag"],
        jited_prog_len=info["jited_prog_len"], xlated_prog_len=info["xlated_prog_len"],
        load_time=info["load_time"], created_by_uid=info["created_by_uid"], map_ids=map_ids,
        gpl_compatible=bool(info["gpl_compatible"]), btf_id=info["btf_id"], run_time_ns=info["run_time_ns"],
        run_cnt=info["run_cnt"], recursion_misses=info["recursion_misses"], verified_insns=info["verified_insns"],
    )


def prog_xlated(fd: int) -> bytes:
    """The program as the kernel holds it after verification (map fds replaced by map addresses)."""
    length = _info(fd, BpfProgInfo)["xlated_prog_len"]
    code = bytearray(max(length, 1))
    with syscall.pinned(code) as code_ptr:
        again = _info(fd, BpfProgInfo, xlated_prog_len=length, xlated_prog_insns=code_ptr)
    return bytes(code[: again["xlated_prog_len"]])


def map_info(fd: int) -> MapInfo:
    info = _info(fd, BpfMapInfo)
    return MapInfo(id=info["id"], type=info["type"], name=info["name"].decode("ascii", "replace"),
                   key_size=info["key_size"], value_size=info["value_size"], max_entries=info["max_entries"],
                   map_flags=info["map_flags"])


def link_info(fd: int) -> LinkInfo:
    info = _info(fd, BpfLinkInfo)
    return LinkInfo(id=info["id"], type=info["type"], prog_id=info["prog_id"])


# --- links and attachment ----------------------------------------------------------------------------------

def link_create(prog_fd: int, target_fd: int, attach_type: int, flags: int = 0, bpf_cookie: int = 0) -> FD:
    attr = LinkCreateAttr.pack(prog_fd=prog_fd, target_fd=target_fd, attach_type=attach_type, flags=flags,
                               bpf_cookie=bpf_cookie)
    size = LinkCreateAttr.offsetofend("bpf_cookie" if bpf_cookie else "flags")
    return FD(_call(BPF_LINK_CREATE, attr, size))


def iter_create(link_fd: int) -> FD:
    """A new read-only fd of the iterator behind ``link_fd`` (a BPF_TRACE_ITER link): each ``read()`` runs
    the program over the next objects and returns what it wrote with ``bpf_seq_write``; 0 at the end."""
    attr = IterCreateAttr.pack(link_fd=link_fd)
    return FD(_call(BPF_ITER_CREATE, attr, IterCreateAttr.offsetofend("flags")))


def raw_tracepoint_open(name: str | None, prog_fd: int) -> FD:
    """Attach a raw tracepoint program to ``name``, or (``name`` None) a tp_btf program to the tracepoint
    its load named (attach_btf_id)."""
    def hint(err: int) -> str:
        if err == errno.ENOENT:
            return (f"the kernel has no raw tracepoint {name!r} (per-syscall events such as sys_enter_openat "
                    f"are not raw tracepoints; use sys_enter with the syscall number)")
        return ""
    with syscall.pinned(None if name is None else bytearray(name.encode("ascii") + b"\0")) as name_ptr:
        attr = RawTracepointAttr.pack(name=name_ptr, prog_fd=prog_fd)
        return FD(_call(BPF_RAW_TRACEPOINT_OPEN, attr, RawTracepointAttr.offsetofend("prog_fd"), hint))


# --- id walks and stats ---------------------------------------------------------------------------------

def _get_next_id(cmd: int, start_id: int) -> int | None:
    attr = GetIdAttr.pack(start_id=start_id)
    ret, err = syscall.bpf_errno(cmd, attr, GetIdAttr.offsetofend("next_id"))
    if ret < 0:
        if err == errno.ENOENT:
            return None
        raise bpf_error(BPF_CMD_NAMES[cmd], err)
    return GetIdAttr.get(attr, "next_id")


def prog_get_next_id(start_id: int = 0) -> int | None:
    """The smallest program id greater than ``start_id``, or None when there is none."""
    return _get_next_id(BPF_PROG_GET_NEXT_ID, start_id)


def map_get_next_id(start_id: int = 0) -> int | None:
    return _get_next_id(BPF_MAP_GET_NEXT_ID, start_id)


def link_get_next_id(start_id: int = 0) -> int | None:
    return _get_next_id(BPF_LINK_GET_NEXT_ID, start_id)


def _ids(next_id) -> list[int]:
    out, cur = [], 0
    while (cur := next_id(cur)) is not None:
        out.append(cur)
    return out


def prog_ids() -> list[int]:
    """Every loaded program's id, by walking BPF_PROG_GET_NEXT_ID."""
    return _ids(prog_get_next_id)


def map_ids() -> list[int]:
    return _ids(map_get_next_id)


def link_ids() -> list[int]:
    return _ids(link_get_next_id)


def prog_get_fd_by_id(prog_id: int) -> FD:
    attr = GetIdAttr.pack(prog_id=prog_id)

    def hint(err: int) -> str:
        return f"no program has id {prog_id} (it was unloaded)" if err == errno.ENOENT else ""
    return FD(_call(BPF_PROG_GET_FD_BY_ID, attr, GetIdAttr.offsetofend("open_flags"), hint))


def enable_stats(stats_type: int) -> FD:
    """Turn on kernel run-time accounting (run_cnt, run_time_ns) while the returned fd is open."""
    attr = EnableStatsAttr.pack(type=stats_type)
    return FD(_call(BPF_ENABLE_STATS, attr, EnableStatsAttr.offsetofend("type")))


# --- common ---------------------------------------------------------------------------------------------

def _call(cmd: int, attr: bytearray, size: int, hint_for=None) -> int:
    """bpf(cmd) whose failure raises, with the hint ``hint_for(errno)`` when there is one."""
    ret, err = syscall.bpf_errno(cmd, attr, size)
    if ret < 0:
        hint = hint_for(err) if hint_for is not None else ""
        raise bpf_error(BPF_CMD_NAMES[cmd], err, hint)
    return ret
