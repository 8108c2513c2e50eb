"""Raw ring-buffer records: the wire format of docs/architecture.md ("Records"), parsed without a kernel.

The ``construct`` Structs below are the schema, one per record kind, little-endian types spelled out.  They
are also the test oracle: ``parse_record_construct`` parses with them (construct's interpreted parser,
which checks every length; its compiled parser does not: ``Compiled`` ``Bytes(this.n)`` returns a short
slice instead of failing, so it cannot be the oracle).  The hot path, ``parse_record``, uses
``struct.Struct`` formats *generated from* those Structs for each kind's fixed part and plain slicing for
the variable parts: ~2 us a record instead of construct's 30-50 us here (bench/parse_speed.py).  A test
proves the two paths agree on every kind and on hypothesis-generated records, including malformed ones.

Callers never see construct containers: both paths return frozen dataclasses (``ExecRecord``,
``OpenRecord``, ``ConnectRecord``, ``ExitRecord``) whose strings are raw ``bytes`` (``comm`` and the
filename/path cut at their first NUL), and raise ``RecordError`` for anything malformed.  A record may be
longer than its fields say (the ring buffer pads to 8 bytes); the tail is ignored.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, fields
from typing import Union

import construct as cs
from construct import Bytes, Check, Int16ul, Int32sl, Int32ul, Int64ul, Struct, this

from . import wire
from .errors import RecordError

# The numbers come from kestrel_raw/wire.py, which the programs write with; tests/test_records_wire.py
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

HEADER = Struct(
    "kind" / Int16ul,
    "flags" / Int16ul,
    "cpu" / Int32ul,
    "ts_ns" / Int64ul,
    "start_ns" / Int64ul,
    "pid" / Int32ul,
    "tid" / Int32ul,
    "ppid" / Int32ul,
    "uid" / Int32ul,
    "gid" / Int32ul,
    "reserved" / Int32ul,
    "comm" / Bytes(TASK_COMM_LEN),
)

EXEC_FIXED = Struct(
    "filename_len" / Int32ul,
    "args_len" / Int32ul,
    "args_total" / Int32ul,
    "reserved2" / Int32ul,
)
OPEN_FIXED = Struct(
    "ret" / Int32sl,
    "dfd" / Int32sl,
    "open_flags" / Int64ul,
    "mode" / Int32ul,
    "path_len" / Int32ul,
    "syscall" / Int32ul,
    "reserved2" / Int32ul,
)
CONNECT_FIXED = Struct(
    "ret" / Int32sl,
    "fd" / Int32sl,
    "addrlen" / Int32ul,
    "addr_len" / Int32ul,
)
EXIT_FIXED = Struct(
    "exit_code" / Int32sl,
    "reserved2" / Int32ul,
)

EXEC_RECORD = Struct(
    *HEADER.subcons,
    *EXEC_FIXED.subcons,
    Check(this.filename_len <= FILENAME_MAX),
    Check(this.args_len <= ARGS_MAX),
    "filename" / Bytes(this.filename_len),
    "args" / Bytes(this.args_len),
)
OPEN_RECORD = Struct(
    *HEADER.subcons,
    *OPEN_FIXED.subcons,
    Check(this.path_len <= PATH_MAX),
    "path" / Bytes(this.path_len),
)
CONNECT_RECORD = Struct(
    *HEADER.subcons,
    *CONNECT_FIXED.subcons,
    Check(this.addr_len <= SOCKADDR_MAX),
    "addr" / Bytes(this.addr_len),
)
EXIT_RECORD = Struct(*HEADER.subcons, *EXIT_FIXED.subcons)

RECORD_STRUCTS = {
    KIND_EXEC: EXEC_RECORD,
    KIND_OPEN: OPEN_RECORD,
    KIND_CONNECT: CONNECT_RECORD,
    KIND_EXIT: EXIT_RECORD,
}
_FIXED_STRUCTS = {
    KIND_EXEC: EXEC_FIXED,
    KIND_OPEN: OPEN_FIXED,
    KIND_CONNECT: CONNECT_FIXED,
    KIND_EXIT: EXIT_FIXED,
}


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


# --- the fast path: struct formats generated from the construct Structs -------------------------------

def struct_format(*structs: cs.Struct) -> str:
    """The ``struct`` format of the fixed-size fields of ``structs`` laid end to end.

    Only little-endian integer ``FormatField``s and fixed-length ``Bytes`` are allowed: anything else is a
    schema change the fast path must be taught about, so it fails at import rather than parsing wrongly.
    """
    parts = ["<"]
    for st in structs:
        for sub in st.subcons:
            inner = getattr(sub, "subcon", sub)
            if isinstance(inner, cs.FormatField):
                if inner.fmtstr[0] != "<":
                    raise TypeError(f"{sub.name}: only little-endian fields are supported, got {inner.fmtstr}")
                parts.append(inner.fmtstr[1:])
            elif isinstance(inner, cs.Bytes) and isinstance(inner.length, int):
                parts.append(f"{inner.length}s")
            else:
                raise TypeError(f"{sub!r}: the fast path only knows fixed integers and fixed Bytes")
    fmt = "".join(parts)
    expected = sum(st.sizeof() for st in structs)
    if struct.calcsize(fmt) != expected:
        raise TypeError(f"generated format {fmt!r} is {struct.calcsize(fmt)} bytes, the Structs {expected}")
    return fmt


HEADER_FORMAT = struct.Struct(struct_format(HEADER))
FIXED_FORMATS = {kind: struct.Struct(struct_format(HEADER, fixed)) for kind, fixed in _FIXED_STRUCTS.items()}
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


def _short(kind: int, need: int, have: int) -> RecordError:
    return RecordError(
        f"{KIND_NAMES[kind]} record is {have} bytes, shorter than its {need}-byte fixed part; "
        "the ring buffer gave a truncated record (producer and parser disagree on the layout?)"
    )


def _too_long(kind: int, field: str, value: int, limit: int) -> RecordError:
    return RecordError(f"{KIND_NAMES[kind]} record {field} is {value}, above the limit {limit}: corrupt record")


def _beyond(kind: int, field: str, end: int, have: int) -> RecordError:
    return RecordError(
        f"{KIND_NAMES[kind]} record {field} ends at byte {end}, beyond the {have}-byte record: corrupt record"
    )


# Each _fields_<kind> unpacks and validates one record into the tuple of its dataclass's fields, in order;
# parse_record wraps it in the dataclass, and jsonl.encode_record formats it straight into a JSON line.

def _fields_exec(data, n: int) -> tuple:
    if n < _EXEC_SIZE:
        raise _short(KIND_EXEC, _EXEC_SIZE, n)
    (_, hflags, cpu, ts, start, pid, tid, ppid, uid, gid, _, comm,
     filename_len, args_len, args_total, _) = _EXEC.unpack_from(data)
    if filename_len > FILENAME_MAX:
        raise _too_long(KIND_EXEC, "filename_len", filename_len, FILENAME_MAX)
    if args_len > ARGS_MAX:
        raise _too_long(KIND_EXEC, "args_len", args_len, ARGS_MAX)
    f_end = _EXEC_SIZE + filename_len
    a_end = f_end + args_len
    if a_end > n:
        raise _beyond(KIND_EXEC, "filename and args", a_end, n)
    return (hflags, cpu, ts, start, pid, tid, ppid, uid, gid, _cstr(comm),
            _cstr(bytes(data[_EXEC_SIZE:f_end])), bytes(data[f_end:a_end]), args_total)


def _fields_open(data, n: int) -> tuple:
    if n < _OPEN_SIZE:
        raise _short(KIND_OPEN, _OPEN_SIZE, n)
    (_, hflags, cpu, ts, start, pid, tid, ppid, uid, gid, _, comm,
     ret, dfd, flags, mode, path_len, syscall, _) = _OPEN.unpack_from(data)
    if path_len > PATH_MAX:
        raise _too_long(KIND_OPEN, "path_len", path_len, PATH_MAX)
    end = _OPEN_SIZE + path_len
    if end > n:
        raise _beyond(KIND_OPEN, "path", end, n)
    return (hflags, cpu, ts, start, pid, tid, ppid, uid, gid, _cstr(comm),
            ret, dfd, flags, mode, _cstr(bytes(data[_OPEN_SIZE:end])), syscall)


def _fields_connect(data, n: int) -> tuple:
    if n < _CONNECT_SIZE:
        raise _short(KIND_CONNECT, _CONNECT_SIZE, n)
    (_, hflags, cpu, ts, start, pid, tid, ppid, uid, gid, _, comm,
     ret, fd, addrlen, addr_len) = _CONNECT.unpack_from(data)
    if addr_len > SOCKADDR_MAX:
        raise _too_long(KIND_CONNECT, "addr_len", addr_len, SOCKADDR_MAX)
    end = _CONNECT_SIZE + addr_len
    if end > n:
        raise _beyond(KIND_CONNECT, "addr", end, n)
    return (hflags, cpu, ts, start, pid, tid, ppid, uid, gid, _cstr(comm),
            ret, fd, addrlen, bytes(data[_CONNECT_SIZE:end]))


def _fields_exit(data, n: int) -> tuple:
    if n < _EXIT_SIZE:
        raise _short(KIND_EXIT, _EXIT_SIZE, n)
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


# --- the oracle: construct ---------------------------------------------------------------------------

def parse_record_construct(data: bytes | bytearray | memoryview) -> Record:
    """Parse with the construct Structs (slow, strict): the reference ``parse_record`` is tested against."""
    data = bytes(data)
    try:
        kind = Int16ul.parse(data)
    except cs.ConstructError as e:
        raise RecordError(f"record is {len(data)} bytes, too short to hold its kind") from e
    st = RECORD_STRUCTS.get(kind)
    if st is None:
        raise RecordError(f"record kind {kind} is unknown (known: 1 exec, 2 open, 3 connect, 4 exit)")
    try:
        c = st.parse(data)
    except cs.ConstructError as e:
        raise RecordError(f"{KIND_NAMES[kind]} record is malformed: {e}") from e
    common = (c.flags, c.cpu, c.ts_ns, c.start_ns, c.pid, c.tid, c.ppid, c.uid, c.gid, _cstr(c.comm))
    if kind == KIND_EXEC:
        return ExecRecord(*common, _cstr(c.filename), c.args, c.args_total)
    if kind == KIND_OPEN:
        return OpenRecord(*common, c.ret, c.dfd, c.open_flags, c.mode, _cstr(c.path), c.syscall)
    if kind == KIND_CONNECT:
        return ConnectRecord(*common, c.ret, c.fd, c.addrlen, c.addr)
    return ExitRecord(*common, c.exit_code)


def build_record(kind: int, **fields) -> bytes:
    """Bytes of one record built with the construct Struct of ``kind`` (tests and benchmarks).

    Fields not given are 0 (or empty); length fields default to the length of their variable part.
    """
    st = RECORD_STRUCTS[kind]
    values: dict = {"kind": kind}
    for sub in st.subcons:
        name = getattr(sub, "name", None)
        if name is None or name == "kind":
            continue
        inner = getattr(sub, "subcon", sub)
        if isinstance(inner, cs.Bytes):
            default = b"" if not isinstance(inner.length, int) else bytes(inner.length)
            value = fields.pop(name, default)
            if isinstance(inner.length, int):
                value = value.ljust(inner.length, b"\0")
            values[name] = value
        else:
            values[name] = fields.pop(name, None)
    if fields:
        raise TypeError(f"unknown fields for record kind {kind}: {sorted(fields)}")
    lengths = {"filename_len": "filename", "args_len": "args", "path_len": "path", "addr_len": "addr"}
    for length_field, data_field in lengths.items():
        if length_field in values and values[length_field] is None:
            values[length_field] = len(values[data_field])
    for name, value in values.items():
        if value is None:
            values[name] = 0
    return st.build(values)
