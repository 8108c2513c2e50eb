"""Raw ring-buffer records: the wire format of docs/architecture.md ("Records"), parsed without a kernel.

The schema is declarative: one ``construct`` Struct per record kind, in kestrel_raw/codec/schema.py, which
is also the test oracle (``parse_record_construct``).  The hot path here, ``parse_record``, unpacks each
kind's fixed part with the ``struct`` format derived from those Structs and slices the variable parts:
~2 us a record instead of construct's 30-50 us (bench/parse_speed.py).  Tests prove the two paths agree on
every kind and on hypothesis-generated records, malformed ones included, and that the formats here are
exactly what the schema derives.

Callers never see construct containers: both paths return frozen dataclasses (``ExecRecord``,
``OpenRecord``, ``ConnectRecord``, ``ExitRecord``) whose strings are raw ``bytes`` (``comm`` and the
filename/path cut at their first NUL), and raise ``RecordError`` for anything malformed.  A record may be
longer than its fields say (the ring buffer pads to 8 bytes); the tail is ignored.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, fields
from typing import Union

from kestrel_raw.codec import wire
from kestrel_raw.errors import RecordError

# The numbers come from kestrel_raw/codec/wire.py, which the programs write with; tests/test_records_wire.py
# checks every Struct offset below against it.
KIND_EXEC = wire.KIND_EXEC
KIND_OPEN = wire.KIND_OPEN
KIND_CONNECT = wire.KIND_CONNECT
KIND_EXIT = wire.KIND_EXIT

FLAG_TRUNCATED = wire.FLAG_TRUNCATED
FLAG_FAULT = wire.FLAG_FAULT

# Bounds the BPF programs never exceed; a larger length field means a corrupt record.
ARGS_MAX = wire.MAX_ARGS            # bytes of the argument area copied
PATH_MAX = wire.MAX_PATH            # open path bytes, without the NUL
FILENAME_MAX = wire.MAX_FILENAME    # exec filename bytes
SOCKADDR_MAX = wire.MAX_SOCKADDR    # sizeof(struct sockaddr_storage)
TASK_COMM_LEN = wire.COMM_LEN

HEADER_SIZE = wire.HEADER_SIZE

# open(2) record "syscall" values.
SYSCALL_OPENAT = wire.OPEN_SYSCALL_OPENAT
SYSCALL_OPENAT2 = wire.OPEN_SYSCALL_OPENAT2

@dataclass(frozen=True)
class ExecRecord:
    header_flags: int
    cpu: int
    ts_ns: int
    start_ns: int
    pid: int
    tid: int
    ppid: int
    uid: int
    gid: int
    comm: bytes
    filename: bytes
    args: bytes          # the argument area as copied: NUL-separated, the last NUL missing if cut short
    args_total: int      # arg_end - arg_start in the task

    kind = KIND_EXEC

    @property
    def truncated(self) -> bool:
        return bool(self.header_flags & FLAG_TRUNCATED) or self.args_total > len(self.args)

    @property
    def fault(self) -> bool:
        return bool(self.header_flags & FLAG_FAULT)


@dataclass(frozen=True)
class OpenRecord:
    header_flags: int
    cpu: int
    ts_ns: int
    start_ns: int
    pid: int
    tid: int
    ppid: int
    uid: int
    gid: int
    comm: bytes
    ret: int
    dfd: int
    flags: int           # open(2) O_* flags
    mode: int
    path: bytes
    syscall: int         # SYSCALL_OPENAT or SYSCALL_OPENAT2

    kind = KIND_OPEN

    @property
    def truncated(self) -> bool:
        return bool(self.header_flags & FLAG_TRUNCATED)

    @property
    def fault(self) -> bool:
        return bool(self.header_flags & FLAG_FAULT)


@dataclass(frozen=True)
class ConnectRecord:
    header_flags: int
    cpu: int
    ts_ns: int
    start_ns: int
    pid: int
    tid: int
    ppid: int
    uid: int
    gid: int
    comm: bytes
    ret: int
    fd: int
    addrlen: int         # as passed to connect(2)
    addr: bytes          # the sockaddr bytes copied (at most 128)

    kind = KIND_CONNECT

    @property
    def truncated(self) -> bool:
        return bool(self.header_flags & FLAG_TRUNCATED)

    @property
    def fault(self) -> bool:
        return bool(self.header_flags & FLAG_FAULT)


@dataclass(frozen=True)
class ExitRecord:
    header_flags: int
    cpu: int
    ts_ns: int
    start_ns: int
    pid: int
    tid: int
    ppid: int
    uid: int
    gid: int
    comm: bytes
    exit_code: int       # raw task->exit_code

    kind = KIND_EXIT

    @property
    def truncated(self) -> bool:
        return bool(self.header_flags & FLAG_TRUNCATED)

    @property
    def fault(self) -> bool:
        return bool(self.header_flags & FLAG_FAULT)


Record = Union[ExecRecord, OpenRecord, ConnectRecord, ExitRecord]

KIND_NAMES = {KIND_EXEC: "exec", KIND_OPEN: "open", KIND_CONNECT: "connect", KIND_EXIT: "exit"}


# --- the fast path: struct formats of the construct schema ------------------------------------------
#
# The schema is construct (kestrel_raw/codec/schema.py); these formats are what
# ``record_schema.struct_format`` derives from it, written out so that the collector need not import
# construct (7 MB of its peak RSS, 50 ms of its start-up).  tests/test_records_fastpath.py derives them
# again and fails on any difference.
HEADER_FORMAT = struct.Struct("<HHLQQLLLLLL16s")
FIXED_FORMATS = {
    KIND_EXEC: struct.Struct("<HHLQQLLLLLL16sLLLL"),
    KIND_OPEN: struct.Struct("<HHLQQLLLLLL16sllQLLLL"),
    KIND_CONNECT: struct.Struct("<HHLQQLLLLLL16sllLL"),
    KIND_EXIT: struct.Struct("<HHLQQLLLLLL16slL"),
}
assert HEADER_FORMAT.size == HEADER_SIZE

_EXEC = FIXED_FORMATS[KIND_EXEC]
_OPEN = FIXED_FORMATS[KIND_OPEN]
_CONNECT = FIXED_FORMATS[KIND_CONNECT]
_EXIT = FIXED_FORMATS[KIND_EXIT]
_EXEC_SIZE = _EXEC.size
_OPEN_SIZE = _OPEN.size
_CONNECT_SIZE = _CONNECT.size
_EXIT_SIZE = _EXIT.size
_KIND = struct.Struct("<H")


_object_new = object.__new__
_object_setattr = object.__setattr__


def _maker(cls):
    """A constructor for frozen dataclass ``cls`` taking its field values positionally, as a tuple.

    The generated frozen ``__init__`` sets each field through ``object.__setattr__`` (~1.6 us for an open
    record); installing the instance dict in one step costs ~1.0 us.  No validation is skipped: the
    dataclasses have none.  (Hence no ``slots=True``: a slotted instance has no dict to install.)
    """
    names = tuple(f.name for f in fields(cls))

    def make(values: tuple):
        obj = _object_new(cls)
        _object_setattr(obj, "__dict__", dict(zip(names, values)))
        return obj

    return make


_make_exec = _maker(ExecRecord)
_make_open = _maker(OpenRecord)
_make_connect = _maker(ConnectRecord)
_make_exit = _maker(ExitRecord)


def _cstr(raw: bytes) -> bytes:
    """``raw`` up to its first NUL (all of it when there is none)."""
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]


# The errors of a malformed record, public so that jsonl's fast open line raises exactly these.

def record_too_short(kind: int, need: int, have: int) -> RecordError:
    return RecordError(
        f"{KIND_NAMES[kind]} record is {have} bytes, shorter than its {need}-byte fixed part; "
        "the ring buffer gave a truncated record (producer and parser disagree on the layout?)"
    )


def field_above_limit(kind: int, field: str, value: int, limit: int) -> RecordError:
    return RecordError(f"{KIND_NAMES[kind]} record {field} is {value}, above the limit {limit}: corrupt record")


def field_beyond_record(kind: int, field: str, end: int, have: int) -> RecordError:
    return RecordError(
        f"{KIND_NAMES[kind]} record {field} ends at byte {end}, beyond the {have}-byte record: corrupt record"
    )


# Each _fields_<kind> unpacks and validates one record into the tuple of its dataclass's fields, in order;
# parse_record wraps it in the dataclass, and jsonl.encode_record formats it straight into a JSON line.

def _fields_exec(data, n: int) -> tuple:
    if n < _EXEC_SIZE:
        raise record_too_short(KIND_EXEC, _EXEC_SIZE, n)
    (_, hflags, cpu, ts, start, pid, tid, ppid, uid, gid, _, comm,
     filename_len, args_len, args_total, _) = _EXEC.unpack_from(data)
    if filename_len > FILENAME_MAX:
        raise field_above_limit(KIND_EXEC, "filename_len", filename_len, FILENAME_MAX)
    if args_len > ARGS_MAX:
        raise field_above_limit(KIND_EXEC, "args_len", args_len, ARGS_MAX)
    f_end = _EXEC_SIZE + filename_len
    a_end = f_end + args_len
    if a_end > n:
        raise field_beyond_record(KIND_EXEC, "filename and args", a_end, n)
    return (hflags, cpu, ts, start, pid, tid, ppid, uid, gid, _cstr(comm),
            _cstr(bytes(data[_EXEC_SIZE:f_end])), bytes(data[f_end:a_end]), args_total)


def _fields_open(data, n: int) -> tuple:
    if n < _OPEN_SIZE:
        raise record_too_short(KIND_OPEN, _OPEN_SIZE, n)
    (_, hflags, cpu, ts, start, pid, tid, ppid, uid, gid, _, comm,
     ret, dfd, flags, mode, path_len, syscall, _) = _OPEN.unpack_from(data)
    if path_len > PATH_MAX:
        raise field_above_limit(KIND_OPEN, "path_len", path_len, PATH_MAX)
    end = _OPEN_SIZE + path_len
    if end > n:
        raise field_beyond_record(KIND_OPEN, "path", end, n)
    return (hflags, cpu, ts, start, pid, tid, ppid, uid, gid, _cstr(comm),
            ret, dfd, flags, mode, _cstr(bytes(data[_OPEN_SIZE:end])), syscall)


def _fields_connect(data, n: int) -> tuple:
    if n < _CONNECT_SIZE:
        raise record_too_short(KIND_CONNECT, _CONNECT_SIZE, n)
    (_, hflags, cpu, ts, start, pid, tid, ppid, uid, gid, _, comm,
     ret, fd, addrlen, addr_len) = _CONNECT.unpack_from(data)
    if addr_len > SOCKADDR_MAX:
        raise field_above_limit(KIND_CONNECT, "addr_len", addr_len, SOCKADDR_MAX)
    end = _CONNECT_SIZE + addr_len
    if end > n:
        raise field_beyond_record(KIND_CONNECT, "addr", end, n)
    return (hflags, cpu, ts, start, pid, tid, ppid, uid, gid, _cstr(comm),
            ret, fd, addrlen, bytes(data[_CONNECT_SIZE:end]))


def _fields_exit(data, n: int) -> tuple:
    if n < _EXIT_SIZE:
        raise record_too_short(KIND_EXIT, _EXIT_SIZE, n)
    (_, hflags, cpu, ts, start, pid, tid, ppid, uid, gid, _, comm, code, _) = _EXIT.unpack_from(data)
    return (hflags, cpu, ts, start, pid, tid, ppid, uid, gid, _cstr(comm), code)


FIELD_PARSERS = {KIND_EXEC: _fields_exec, KIND_OPEN: _fields_open, KIND_CONNECT: _fields_connect,
                 KIND_EXIT: _fields_exit}
_MAKERS = {KIND_EXEC: _make_exec, KIND_OPEN: _make_open, KIND_CONNECT: _make_connect, KIND_EXIT: _make_exit}


def record_kind(data: bytes | bytearray | memoryview) -> int:
    """The kind of the record in ``data``, checked to be one the parsers know.  Raises ``RecordError``."""
    n = len(data)
    if n < 2:
        raise RecordError(f"record is {n} bytes, too short to hold its kind; the ring buffer gave an empty sample")
    kind = _KIND.unpack_from(data)[0]
    if kind not in _MAKERS:
        raise RecordError(f"record kind {kind} is unknown (known: 1 exec, 2 open, 3 connect, 4 exit)")
    return kind


def parse_record(data: bytes | bytearray | memoryview) -> Record:
    """Parse one record (the ring buffer sample, without the ring's 8-byte header).  Raises ``RecordError``."""
    kind = record_kind(data)
    return _MAKERS[kind](FIELD_PARSERS[kind](data, len(data)))


# The construct schema and the oracle parser live in record_schema.py, imported on first use.
_SCHEMA_NAMES = frozenset({
    "HEADER", "EXEC_FIXED", "OPEN_FIXED", "CONNECT_FIXED", "EXIT_FIXED", "EXEC_RECORD", "OPEN_RECORD",
    "CONNECT_RECORD", "EXIT_RECORD", "RECORD_STRUCTS", "struct_format", "parse_record_construct",
    "build_record",
})


def __getattr__(name: str):
    if name in _SCHEMA_NAMES:
        from kestrel_raw.codec import schema as record_schema
        return getattr(record_schema, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
