"""One thin function per bpf(2) command, in the manner of libbpf's bpf.c.

Each command has its own ctypes view of ``union bpf_attr`` holding only the fields it uses, at the uapi
offsets.  A call zeroes the attr, fills those fields, passes the size up to the end of the last field it
set (so Debian 6.1's 144-byte ``bpf_attr`` is enough for everything here), and maps the errno to an
exception that names the command.  Tests compare every offset here with the running kernel's BTF.
"""
from __future__ import annotations

import ctypes
import errno
import re
from dataclasses import dataclass

from kestrel_raw.kernel import syscall
from kestrel_raw.errors import ConfigError, VerifierError, bpf_error
from kestrel_raw.kernel.fd import FD
from kestrel_raw.kernel.uapi import (
    BPF_ENABLE_STATS, BPF_LINK_CREATE, BPF_LINK_GET_NEXT_ID, BPF_MAP_CREATE, BPF_MAP_DELETE_ELEM,
    BPF_MAP_GET_NEXT_ID, BPF_MAP_GET_NEXT_KEY, BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_BATCH,
    BPF_MAP_UPDATE_ELEM, BPF_OBJ_GET_INFO_BY_FD, BPF_OBJ_NAME_LEN, BPF_PROG_GET_FD_BY_ID,
    BPF_PROG_GET_NEXT_ID, BPF_PROG_LOAD, BPF_RAW_TRACEPOINT_OPEN, BPF_ANY, BPF_TAG_SIZE,
)

_u32 = ctypes.c_uint32
_u64 = ctypes.c_uint64
_name_t = ctypes.c_char * BPF_OBJ_NAME_LEN


# --- union bpf_attr, one view per command ---------------------------------------------------------------

class MapCreateAttr(ctypes.Structure):
    """BPF_MAP_CREATE."""
    _fields_ = [
        ("map_type", _u32),
        ("key_size", _u32),
        ("value_size", _u32),
        ("max_entries", _u32),
        ("map_flags", _u32),
        ("inner_map_fd", _u32),
        ("numa_node", _u32),
        ("map_name", _name_t),
    ]


class MapElemAttr(ctypes.Structure):
    """BPF_MAP_{LOOKUP,UPDATE,DELETE}_ELEM and BPF_MAP_GET_NEXT_KEY (``value`` is ``next_key`` there)."""
    _fields_ = [
        ("map_fd", _u32),
        ("_pad0", _u32),
        ("key", _u64),
        ("value", _u64),  # union with next_key
        ("flags", _u64),
    ]


class MapBatchAttr(ctypes.Structure):
    """BPF_MAP_*_BATCH (the ``batch`` member of union bpf_attr, Linux 5.6+)."""
    _fields_ = [
        ("in_batch", _u64),
        ("out_batch", _u64),
        ("keys", _u64),
        ("values", _u64),
        ("count", _u32),
        ("map_fd", _u32),
        ("elem_flags", _u64),
        ("flags", _u64),
    ]


class ProgLoadAttr(ctypes.Structure):
    """BPF_PROG_LOAD, up to ``attach_btf_obj_fd`` (everything here is in 6.1; ``log_true_size`` is not)."""
    _fields_ = [
        ("prog_type", _u32),
        ("insn_cnt", _u32),
        ("insns", _u64),
        ("license", _u64),
        ("log_level", _u32),
        ("log_size", _u32),
        ("log_buf", _u64),
        ("kern_version", _u32),
        ("prog_flags", _u32),
        ("prog_name", _name_t),
        ("prog_ifindex", _u32),
        ("expected_attach_type", _u32),
        ("prog_btf_fd", _u32),
        ("func_info_rec_size", _u32),
        ("func_info", _u64),
        ("func_info_cnt", _u32),
        ("line_info_rec_size", _u32),
        ("line_info", _u64),
        ("line_info_cnt", _u32),
        ("attach_btf_id", _u32),
        ("attach_btf_obj_fd", _u32),  # union with attach_prog_fd
    ]


class InfoByFdAttr(ctypes.Structure):
    """BPF_OBJ_GET_INFO_BY_FD."""
    _fields_ = [
        ("bpf_fd", _u32),
        ("info_len", _u32),
        ("info", _u64),
    ]


class LinkCreateAttr(ctypes.Structure):
    """BPF_LINK_CREATE; ``bpf_cookie`` is the ``perf_event`` member of the per-type union (5.15+)."""
    _fields_ = [
        ("prog_fd", _u32),
        ("target_fd", _u32),
        ("attach_type", _u32),
        ("flags", _u32),
        ("bpf_cookie", _u64),
    ]


class RawTracepointAttr(ctypes.Structure):
    """BPF_RAW_TRACEPOINT_OPEN."""
    _fields_ = [
        ("name", _u64),
        ("prog_fd", _u32),
    ]


class GetIdAttr(ctypes.Structure):
    """BPF_{PROG,MAP,LINK}_GET_NEXT_ID and BPF_*_GET_FD_BY_ID (``start_id`` is ``prog_id`` etc. there)."""
    _fields_ = [
        ("start_id", _u32),
        ("next_id", _u32),
        ("open_flags", _u32),
    ]


class EnableStatsAttr(ctypes.Structure):
    """BPF_ENABLE_STATS."""
    _fields_ = [
        ("type", _u32),
    ]


def offsetofend(struct: type[ctypes.Structure], field: str) -> int:
    f = getattr(struct, field)
    return f.offset + f.size


# --- info structures ----------------------------------------------------------------------------------

class BpfProgInfo(ctypes.Structure):
    """``struct bpf_prog_info`` up to ``attach_btf_id`` (all in 6.1)."""
    _fields_ = [
        ("type", _u32),
        ("id", _u32),
        ("tag", ctypes.c_uint8 * BPF_TAG_SIZE),
        ("jited_prog_len", _u32),
        ("xlated_prog_len", _u32),
        ("jited_prog_insns", _u64),
        ("xlated_prog_insns", _u64),
        ("load_time", _u64),
        ("created_by_uid", _u32),
        ("nr_map_ids", _u32),
        ("map_ids", _u64),
        ("name", _name_t),
        ("ifindex", _u32),
        ("gpl_compatible", _u32),  # a 1-bit field; the other 31 bits are zero
        ("netns_dev", _u64),
        ("netns_ino", _u64),
        ("nr_jited_ksyms", _u32),
        ("nr_jited_func_lens", _u32),
        ("jited_ksyms", _u64),
        ("jited_func_lens", _u64),
        ("btf_id", _u32),
        ("func_info_rec_size", _u32),
        ("func_info", _u64),
        ("nr_func_info", _u32),
        ("nr_line_info", _u32),
        ("line_info", _u64),
        ("jited_line_info", _u64),
        ("nr_jited_line_info", _u32),
        ("line_info_rec_size", _u32),
        ("jited_line_info_rec_size", _u32),
        ("nr_prog_tags", _u32),
        ("prog_tags", _u64),
        ("run_time_ns", _u64),
        ("run_cnt", _u64),
        ("recursion_misses", _u64),
        ("verified_insns", _u32),
        ("attach_btf_obj_id", _u32),
        ("attach_btf_id", _u32),
    ]


class BpfMapInfo(ctypes.Structure):
    """``struct bpf_map_info`` up to ``map_extra``."""
    _fields_ = [
        ("type", _u32),
        ("id", _u32),
        ("key_size", _u32),
        ("value_size", _u32),
        ("max_entries", _u32),
        ("map_flags", _u32),
        ("name", _name_t),
        ("ifindex", _u32),
        ("btf_vmlinux_value_type_id", _u32),
        ("netns_dev", _u64),
        ("netns_ino", _u64),
        ("btf_id", _u32),
        ("btf_key_type_id", _u32),
        ("btf_value_type_id", _u32),
        ("_pad", _u32),
        ("map_extra", _u64),
    ]


class BpfLinkInfo(ctypes.Structure):
    """The common head of ``struct bpf_link_info`` (the per-type union after it is not read)."""
    _fields_ = [
        ("type", _u32),
        ("id", _u32),
        ("prog_id", _u32),
    ]


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
               flags: int = 0, inner_map_fd: int = 0) -> FD:
    raw_name = check_object_name(name, "map")
    attr = MapCreateAttr(map_type=map_type, key_size=key_size, value_size=value_size,
                         max_entries=max_entries, map_flags=flags, inner_map_fd=inner_map_fd)
    attr.map_name = raw_name
    size = offsetofend(MapCreateAttr, "map_name") if name else offsetofend(MapCreateAttr, "numa_node")
    fd = _call(BPF_MAP_CREATE, attr, size, hint_for=_map_create_hint(map_type, key_size, value_size, max_entries))
    return FD(fd)


def _map_create_hint(map_type, key_size, value_size, max_entries):
    def hint(err: int) -> str:
        if err == errno.EINVAL:
            return (f"the kernel refused map type {map_type} with key_size={key_size} value_size={value_size} "
                    f"max_entries={max_entries} (e.g. a ring buffer needs key and value size 0 and a "
                    f"power-of-two, page-aligned size; an array needs a 4-byte key)")
        return ""
    return hint


def _buf(data: bytes | bytearray | memoryview, size: int, what: str) -> ctypes.Array:
    if len(data) != size:
        raise ValueError(f"{what} is {len(data)} bytes, the map's {what} size is {size}")
    return (ctypes.c_char * max(size, 1)).from_buffer_copy(bytes(data) or b"\0")


def map_lookup_elem(map_fd: int, key: bytes, value_size: int, key_size: int | None = None) -> bytes | None:
    """The value stored under ``key``, or None when there is none (ENOENT)."""
    kbuf = _buf(key, len(key) if key_size is None else key_size, "key")
    vbuf = ctypes.create_string_buffer(max(value_size, 1))
    attr = MapElemAttr(map_fd=map_fd, key=ctypes.addressof(kbuf), value=ctypes.addressof(vbuf))
    ret, err = syscall.bpf_errno(BPF_MAP_LOOKUP_ELEM, attr, offsetofend(MapElemAttr, "flags"))
    if ret < 0:
        if err == errno.ENOENT:
            return None
        raise bpf_error("BPF_MAP_LOOKUP_ELEM", err)
    return vbuf.raw[:value_size]


def map_update_elem(map_fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    kbuf = _buf(key, len(key), "key")
    vbuf = _buf(value, len(value), "value")
    attr = MapElemAttr(map_fd=map_fd, key=ctypes.addressof(kbuf), value=ctypes.addressof(vbuf), flags=flags)
    _call(BPF_MAP_UPDATE_ELEM, attr, offsetofend(MapElemAttr, "flags"), hint_for=_update_hint)


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
    kbuf = ctypes.create_string_buffer(bytes(keys), max(len(keys), 1))
    vbuf = ctypes.create_string_buffer(bytes(values), max(len(values), 1))
    attr = MapBatchAttr(keys=ctypes.addressof(kbuf), values=ctypes.addressof(vbuf), count=count,
                        map_fd=map_fd, elem_flags=elem_flags)
    _call(BPF_MAP_UPDATE_BATCH, attr, offsetofend(MapBatchAttr, "flags"))
    return attr.count


def map_delete_elem(map_fd: int, key: bytes) -> bool:
    """Delete ``key``; False when it was not there (ENOENT)."""
    kbuf = _buf(key, len(key), "key")
    attr = MapElemAttr(map_fd=map_fd, key=ctypes.addressof(kbuf))
    ret, err = syscall.bpf_errno(BPF_MAP_DELETE_ELEM, attr, offsetofend(MapElemAttr, "key"))
    if ret < 0:
        if err == errno.ENOENT:
            return False
        hint = "array elements cannot be deleted; overwrite them instead" if err == errno.EINVAL else ""
        raise bpf_error("BPF_MAP_DELETE_ELEM", err, hint)
    return True


def map_get_next_key(map_fd: int, key: bytes | None, key_size: int) -> bytes | None:
    """The key after ``key`` (the first key when ``key`` is None), or None at the end."""
    nbuf = ctypes.create_string_buffer(max(key_size, 1))
    attr = MapElemAttr(map_fd=map_fd, value=ctypes.addressof(nbuf))
    if key is not None:
        kbuf = _buf(key, key_size, "key")
        attr.key = ctypes.addressof(kbuf)
    ret, err = syscall.bpf_errno(BPF_MAP_GET_NEXT_KEY, attr, offsetofend(MapElemAttr, "value"))
    if ret < 0:
        if err == errno.ENOENT:
            return None
        raise bpf_error("BPF_MAP_GET_NEXT_KEY", err)
    return nbuf.raw[:key_size]


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
    code = ctypes.create_string_buffer(bytes(insns), len(insns))
    lic = ctypes.create_string_buffer(license.encode("ascii"))
    attr = ProgLoadAttr(prog_type=prog_type, insn_cnt=len(insns) // 8, insns=ctypes.addressof(code),
                        license=ctypes.addressof(lic), kern_version=kern_version, prog_flags=prog_flags,
                        expected_attach_type=expected_attach_type, attach_btf_id=attach_btf_id,
                        attach_btf_obj_fd=attach_btf_obj_fd)
    attr.prog_name = raw_name
    if attach_btf_id or attach_btf_obj_fd:
        size = offsetofend(ProgLoadAttr, "attach_btf_obj_fd")
    else:
        size = offsetofend(ProgLoadAttr, "expected_attach_type")

    if log_level:
        fd, err, _ = _prog_load_once(attr, size, log_level, log_size)
    else:
        fd, err, _ = _prog_load_once(attr, size, 0, 0)
    if fd >= 0:
        return FD(fd)
    # Load again with the log on to learn why; grow the buffer until the whole log fits.
    level = log_level or 1
    while True:
        fd, err2, log = _prog_load_once(attr, size, level, log_size)
        if fd >= 0:
            # Loaded the second time (a transient failure the first time): keep it.
            return FD(fd)
        if err2 == errno.ENOSPC and log_size < LOG_BUF_MAX:
            log_size = min(log_size * 4, LOG_BUF_MAX)
            continue
        break
    if log.strip():
        raise VerifierError("BPF_PROG_LOAD", err2, log, program_name=name)
    if err2 == errno.EPERM:
        raise bpf_error("BPF_PROG_LOAD", err2,
                        "the process needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) to load this program "
                        "type; under kernel lockdown, some program types and helpers are refused outright")
    raise bpf_error("BPF_PROG_LOAD", err2, _prog_load_hint(err2))


def _prog_load_hint(err: int) -> str:
    if err == errno.EINVAL:
        return ("the kernel refused the load attributes before verification (unknown program type, bad name, "
                "attach type, or flags this kernel does not know)")
    if err == errno.E2BIG:
        return "the program has more instructions than this kernel allows, or the attr is too new"
    return ""


def _prog_load_once(attr: ProgLoadAttr, size: int, log_level: int, log_size: int) -> tuple[int, int, str]:
    log = ctypes.create_string_buffer(log_size) if log_level else None
    attr.log_level = log_level
    attr.log_size = log_size if log is not None else 0
    attr.log_buf = ctypes.addressof(log) if log is not None else 0
    for _ in range(PROG_LOAD_EAGAIN_RETRIES):
        ret, err = syscall.bpf_errno(BPF_PROG_LOAD, attr, size)
        if ret >= 0 or err != errno.EAGAIN:
            break
    text = log.value.decode("utf-8", "replace") if log is not None else ""
    return ret, err, text


# --- object info -----------------------------------------------------------------------------------------

def obj_get_info_by_fd(fd: int, info: ctypes.Structure) -> int:
    """Fill ``info`` for the object behind ``fd``; returns how many bytes the kernel wrote."""
    attr = InfoByFdAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    _call(BPF_OBJ_GET_INFO_BY_FD, attr, offsetofend(InfoByFdAttr, "info"))
    return attr.info_len


def prog_info(fd: int) -> ProgInfo:
    info = BpfProgInfo()
    obj_get_info_by_fd(fd, info)
    map_ids: tuple[int, ...] = ()
    if info.nr_map_ids:
        # Second call with room for the map ids; every other pointer stays zero so the kernel fills nothing else.
        ids = (_u32 * info.nr_map_ids)()
        again = BpfProgInfo(nr_map_ids=info.nr_map_ids, map_ids=ctypes.addressof(ids))
        obj_get_info_by_fd(fd, again)
        map_ids = tuple(ids[: min(again.nr_map_ids, info.nr_map_ids)])
    return ProgInfo(
        id=info.id, type=info.type, name=info.name.decode("ascii", "replace"), tag=bytes(info.tag),
        jited_prog_len=info.jited_prog_len, xlated_prog_len=info.xlated_prog_len, load_time=info.load_time,
        created_by_uid=info.created_by_uid, map_ids=map_ids, gpl_compatible=bool(info.gpl_compatible & 1),
        btf_id=info.btf_id, run_time_ns=info.run_time_ns, run_cnt=info.run_cnt,
        recursion_misses=info.recursion_misses, verified_insns=info.verified_insns,
    )


def prog_xlated(fd: int) -> bytes:
    """The program as the kernel holds it after verification (map fds replaced by map addresses)."""
    info = BpfProgInfo()
    obj_get_info_by_fd(fd, info)
    buf = ctypes.create_string_buffer(max(info.xlated_prog_len, 1))
    again = BpfProgInfo(xlated_prog_len=info.xlated_prog_len, xlated_prog_insns=ctypes.addressof(buf))
    obj_get_info_by_fd(fd, again)
    return buf.raw[: again.xlated_prog_len]


def map_info(fd: int) -> MapInfo:
    info = BpfMapInfo()
    obj_get_info_by_fd(fd, info)
    return MapInfo(id=info.id, type=info.type, name=info.name.decode("ascii", "replace"),
                   key_size=info.key_size, value_size=info.value_size, max_entries=info.max_entries,
                   map_flags=info.map_flags)


def link_info(fd: int) -> LinkInfo:
    info = BpfLinkInfo()
    obj_get_info_by_fd(fd, info)
    return LinkInfo(id=info.id, type=info.type, prog_id=info.prog_id)


# --- links and attachment ----------------------------------------------------------------------------------

def link_create(prog_fd: int, target_fd: int, attach_type: int, flags: int = 0, bpf_cookie: int = 0) -> FD:
    attr = LinkCreateAttr(prog_fd=prog_fd, target_fd=target_fd, attach_type=attach_type, flags=flags,
                          bpf_cookie=bpf_cookie)
    size = offsetofend(LinkCreateAttr, "bpf_cookie" if bpf_cookie else "flags")
    return FD(_call(BPF_LINK_CREATE, attr, size))


def raw_tracepoint_open(name: str, prog_fd: int) -> FD:
    raw = ctypes.create_string_buffer(name.encode("ascii"))
    attr = RawTracepointAttr(name=ctypes.addressof(raw), prog_fd=prog_fd)

    def hint(err: int) -> str:
        if err == errno.ENOENT:
            return (f"the kernel has no raw tracepoint {name!r} (per-syscall events such as sys_enter_openat "
                    f"are not raw tracepoints; use sys_enter with the syscall number)")
        return ""
    return FD(_call(BPF_RAW_TRACEPOINT_OPEN, attr, offsetofend(RawTracepointAttr, "prog_fd"), hint_for=hint))


# --- id walks and stats ---------------------------------------------------------------------------------

def _get_next_id(cmd: int, op: str, start_id: int) -> int | None:
    attr = GetIdAttr(start_id=start_id)
    ret, err = syscall.bpf_errno(cmd, attr, offsetofend(GetIdAttr, "next_id"))
    if ret < 0:
        if err == errno.ENOENT:
            return None
        raise bpf_error(op, err)
    return attr.next_id


def prog_get_next_id(start_id: int = 0) -> int | None:
    """The smallest program id greater than ``start_id``, or None when there is none."""
    return _get_next_id(BPF_PROG_GET_NEXT_ID, "BPF_PROG_GET_NEXT_ID", start_id)


def map_get_next_id(start_id: int = 0) -> int | None:
    return _get_next_id(BPF_MAP_GET_NEXT_ID, "BPF_MAP_GET_NEXT_ID", start_id)


def link_get_next_id(start_id: int = 0) -> int | None:
    return _get_next_id(BPF_LINK_GET_NEXT_ID, "BPF_LINK_GET_NEXT_ID", start_id)


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
    attr = GetIdAttr(start_id=prog_id)

    def hint(err: int) -> str:
        return f"no program has id {prog_id} (it was unloaded)" if err == errno.ENOENT else ""
    return FD(_call(BPF_PROG_GET_FD_BY_ID, attr, offsetofend(GetIdAttr, "open_flags"), hint_for=hint))


def enable_stats(stats_type: int) -> FD:
    """Turn on kernel run-time accounting (run_cnt, run_time_ns) while the returned fd is open."""
    attr = EnableStatsAttr(type=stats_type)
    return FD(_call(BPF_ENABLE_STATS, attr, offsetofend(EnableStatsAttr, "type")))


# --- common ---------------------------------------------------------------------------------------------

def _call(cmd: int, attr: ctypes.Structure, size: int, hint_for=None) -> int:
    from kestrel_raw.kernel.uapi import BPF_CMD_NAMES
    ret, err = syscall.bpf_errno(cmd, attr, size)
    if ret < 0:
        hint = hint_for(err) if hint_for is not None else ""
        raise bpf_error(BPF_CMD_NAMES[cmd], err, hint)
    return ret
