"""Kestrel Events: records normalized into typed, schema-keyed values.  Pure: no kernel, no I/O.

``normalize(record, wall_offset_ns)`` turns a parsed record (kestrel_raw.codec.records) into a ``KestrelEvent``
whose ``fields`` maps kestrel-schema field ids (kestrel_raw.spec) to typed values.  Strings that are not
valid UTF-8 survive losslessly: they are ``str`` decoded with ``errors="surrogateescape"``, so
``s.encode("utf-8", "surrogateescape")`` gives back the exact bytes.

``entity_key`` identifies a process incarnation: see ``entity_key()``.
"""
from __future__ import annotations

from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from operator import attrgetter
from types import MappingProxyType
from typing import Any, Mapping

from kestrel_raw.errors import RecordError
from kestrel_raw.codec.records import (
    FIELD_PARSERS, KIND_CONNECT, KIND_EXEC, KIND_EXIT, KIND_OPEN, SYSCALL_OPENAT, SYSCALL_OPENAT2,
    ConnectRecord, ExecRecord, ExitRecord, OpenRecord, Record, record_kind,
)
from kestrel_raw.spec import FIELDS_BY_ID, FIELDS_BY_NAME, EventType, FieldId
from kestrel_raw.codec.sockaddr import decode_sockaddr

SOURCE_EBPF = "ebpf"

# Plain ints: an IntEnum key would work in a dict, but costs an attribute lookup per use on the hot path.
_PID = int(FieldId.PID)
_TID = int(FieldId.TID)
_PPID = int(FieldId.PPID)
_UID = int(FieldId.UID)
_GID = int(FieldId.GID)
_COMM = int(FieldId.COMM)
_START = int(FieldId.PROCESS_START_NS)
_CPU = int(FieldId.CPU)
_FILENAME = int(FieldId.FILENAME)
_ARGV = int(FieldId.ARGV)
_TRUNCATED = int(FieldId.TRUNCATED)
_PATH = int(FieldId.PATH)
_FLAGS = int(FieldId.FLAGS)
_MODE = int(FieldId.MODE)
_RET = int(FieldId.RET)
_DFD = int(FieldId.DFD)
_SYSCALL = int(FieldId.SYSCALL)
_FAULT = int(FieldId.FAULT)
_FAMILY = int(FieldId.FAMILY)
_DADDR = int(FieldId.DADDR)
_DPORT = int(FieldId.DPORT)
_FD = int(FieldId.FD)
_EXIT_CODE = int(FieldId.EXIT_CODE)
_SIGNAL = int(FieldId.SIGNAL)

_SYSCALL_NAMES = {SYSCALL_OPENAT: "openat", SYSCALL_OPENAT2: "openat2"}
_MISSING = object()


@dataclass(frozen=True, slots=True)
class KestrelEvent:
    event_type_id: int
    ts_mono: int                 # ns, CLOCK_MONOTONIC (the kernel's bpf_ktime_get_ns)
    ts_wall: int                 # ns since the epoch: ts_mono + the collector's wall offset
    entity_key: int              # u64 naming the process incarnation (pid, start time)
    fields: Mapping[int, Any]    # kestrel-schema field id -> typed value
    source: str = SOURCE_EBPF

    @property
    def event_type(self) -> EventType:
        return EventType(self.event_type_id)

    def __getitem__(self, name: str) -> Any:
        """The value of the field called ``name`` (``event["pid"]``); KeyError if absent."""
        value = self.get(name, _MISSING)
        if value is _MISSING:
            raise KeyError(f"{EventType(self.event_type_id).label} event has no field {name!r}")
        return value

    def get(self, name: str, default: Any = None) -> Any:
        """The value of the field called ``name``, or ``default`` when the event does not carry it."""
        f = FIELDS_BY_NAME.get(name)
        if f is None:
            raise KeyError(f"no kestrel-schema field {name!r}")
        return self.fields.get(f.id, default)

    def named_fields(self) -> dict[str, Any]:
        """The fields keyed by name, in field id order."""
        return {FIELDS_BY_ID[k].name: v for k, v in sorted(self.fields.items())}


_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15   # 2**64 / phi, odd: multiplying by it permutes the u64s


def entity_key(pid: int, start_ns: int) -> int:
    """The u64 key of the process incarnation (``pid``, ``start_ns``).

    ``start_ns`` is the group leader's start time, so every thread and every event of one process share the
    key, and a reused pid (new start time) gets another.  The key is the SplitMix64 finalizer (Steele, Lea,
    Flood 2014: a bijection of the u64s with full avalanche) applied to ``start_ns XOR (pid * golden)``:
    for a fixed pid distinct start times give distinct keys, and for a fixed start time distinct pids do.
    Pure integer arithmetic: stable across runs, machines and Python versions (no ``hash()`` seed).
    """
    x = (start_ns ^ (pid * _GOLDEN)) & _M64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


# normalize()'s memo of entity keys, by pid: (start_ns, key).  A pid's next incarnation replaces its entry;
# the dict is emptied when it reaches _KEY_MEMO_MAX pids.  Saves ~0.4 us of the ~0.5 us mix per event.
_KEY_MEMO: dict[int, tuple[int, int]] = {}
_KEY_MEMO_MAX = 1 << 16


def _entity_key_memo(pid: int, start_ns: int) -> int:
    hit = _KEY_MEMO.get(pid)
    if hit is not None and hit[0] == start_ns:
        return hit[1]
    key = entity_key(pid, start_ns)
    if len(_KEY_MEMO) >= _KEY_MEMO_MAX:
        _KEY_MEMO.clear()
    _KEY_MEMO[pid] = (start_ns, key)
    return key


# KestrelEvent built without its generated frozen __init__ (six object.__setattr__ calls): the slot
# descriptors set the same slots in ~half the time.  Used only by normalize(), on the hot path.
_object_new = object.__new__
(_set_type, _set_mono, _set_wall, _set_key, _set_fields, _set_source) = (
    KestrelEvent.__dict__[name].__set__
    for name in ("event_type_id", "ts_mono", "ts_wall", "entity_key", "fields", "source")
)


def _event(type_id: int, ts_mono: int, ts_wall: int, key: int, fields: Mapping[int, Any]) -> KestrelEvent:
    ev = _object_new(KestrelEvent)
    _set_type(ev, type_id)
    _set_mono(ev, ts_mono)
    _set_wall(ev, ts_wall)
    _set_key(ev, key)
    _set_fields(ev, fields)
    _set_source(ev, SOURCE_EBPF)
    return ev


def split_arg_area(area: bytes) -> list[bytes]:
    """The arguments in the kernel's argument area ``"a\\0b\\0c\\0"`` (the last NUL is missing when cut short)."""
    if not area:
        return []
    parts = area.split(b"\0")
    if not parts[-1]:
        parts.pop()
    return parts


def split_args(area: bytes) -> tuple[str, ...]:
    """argv from the kernel's argument area, each argument decoded losslessly (surrogateescape)."""
    return tuple(p.decode("utf-8", "surrogateescape") for p in split_arg_area(area))


# The events are built from the records' field tuples (records.FIELD_PARSERS' output, in the dataclasses'
# field order): the same builders serve normalize(record) and event_from_raw(raw), so the collector's hot
# path skips the record object (~1 us of the ~4 us that parse + normalize cost an open) and both agree.
# Tuple positions common to every kind: header_flags, cpu, ts_ns, start_ns, pid, tid, ppid, uid, gid, comm.

def _common(v: tuple) -> dict:
    return {
        _PID: v[4], _TID: v[5], _PPID: v[6], _UID: v[7], _GID: v[8],
        _COMM: v[9].decode("utf-8", "surrogateescape"), _START: v[3], _CPU: v[1],
    }


def _done(kind: int, v: tuple, f: dict, wall_offset_ns: int) -> KestrelEvent:
    ts = v[2]
    return _event(kind, ts, ts + wall_offset_ns, _entity_key_memo(v[4], v[3]), MappingProxyType(f))


def _open_event(v: tuple, wall_offset_ns: int) -> KestrelEvent:
    # ..., ret, dfd, flags, mode, path, syscall
    f = _common(v)
    f[_PATH] = v[14].decode("utf-8", "surrogateescape")
    f[_FLAGS] = v[12]
    f[_MODE] = v[13]
    f[_RET] = v[10]
    f[_DFD] = v[11]
    syscall = v[15]
    f[_SYSCALL] = _SYSCALL_NAMES.get(syscall) or f"syscall_{syscall}"
    hflags = v[0]
    f[_TRUNCATED] = bool(hflags & 1)
    f[_FAULT] = bool(hflags & 2)
    return _done(KIND_OPEN, v, f, wall_offset_ns)


def _exec_event(v: tuple, wall_offset_ns: int) -> KestrelEvent:
    # ..., filename, args, args_total
    f = _common(v)
    hflags, args = v[0], v[11]
    f[_FILENAME] = v[10].decode("utf-8", "surrogateescape")
    f[_ARGV] = split_args(args)
    f[_TRUNCATED] = bool(hflags & 1) or v[12] > len(args)
    f[_FAULT] = bool(hflags & 2)
    return _done(KIND_EXEC, v, f, wall_offset_ns)


def _connect_event(v: tuple, wall_offset_ns: int) -> KestrelEvent:
    # ..., ret, fd, addrlen, addr
    f = _common(v)
    sa = decode_sockaddr(v[13], v[12])
    f[_FAMILY] = sa.family
    f[_DADDR] = sa.address
    f[_DPORT] = sa.port
    f[_RET] = v[10]
    f[_FD] = v[11]
    f[_FAULT] = bool(v[0] & 2)
    return _done(KIND_CONNECT, v, f, wall_offset_ns)


def _exit_event(v: tuple, wall_offset_ns: int) -> KestrelEvent:
    # ..., exit_code
    f = _common(v)
    code = v[10]
    f[_EXIT_CODE] = (code >> 8) & 0xFF
    f[_SIGNAL] = code & 0x7F
    return _done(KIND_EXIT, v, f, wall_offset_ns)


_FROM_FIELDS = {KIND_OPEN: _open_event, KIND_EXEC: _exec_event, KIND_CONNECT: _connect_event,
                KIND_EXIT: _exit_event}
# A record's field values as the tuple FIELD_PARSERS makes, by kind.
_VALUES = {cls.kind: attrgetter(*(f.name for f in dataclass_fields(cls)))
           for cls in (ExecRecord, OpenRecord, ConnectRecord, ExitRecord)}


def normalize(record: Record, wall_offset_ns: int) -> KestrelEvent:
    """The KestrelEvent of ``record``; ``ts_wall = ts_ns + wall_offset_ns``.  Pure."""
    kind = getattr(record, "kind", None)
    build = _FROM_FIELDS.get(kind)
    if build is None:
        raise RecordError(f"cannot normalize {type(record).__name__}: not a kestrel record")
    return build(_VALUES[kind](record), wall_offset_ns)


def event_from_raw(raw: bytes | bytearray | memoryview, wall_offset_ns: int) -> KestrelEvent:
    """``normalize(parse_record(raw), wall_offset_ns)`` without the record object in between: the same
    checks (``RecordError`` for a malformed record) and the same event.  Pure."""
    kind = record_kind(raw)
    return _FROM_FIELDS[kind](FIELD_PARSERS[kind](raw, len(raw)), wall_offset_ns)


__all__ = ["KestrelEvent", "SOURCE_EBPF", "entity_key", "event_from_raw", "normalize", "split_arg_area",
           "split_args"]
