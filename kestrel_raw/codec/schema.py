"""The record schema: one construct ``Struct`` per record kind, little-endian types spelled out.

This is the declarative definition of the wire format of docs/architecture.md ("Records") and the test
oracle: ``parse_record_construct`` parses with construct's interpreted parser (which checks every length;
construct's compiled parser does not: ``Compiled`` ``Bytes(this.n)`` returns a short slice instead of
failing, so it cannot be the oracle).  The hot path in kestrel_raw/codec/records.py uses the ``struct`` formats
``struct_format`` derives from these Structs; the tests check that the two agree.
"""
from __future__ import annotations

import struct

import construct as cs
from construct import Bytes, Check, Int16ul, Int32sl, Int32ul, Int64ul, Struct, this

from kestrel_raw.errors import RecordError
from kestrel_raw.codec.records import (
    ARGS_MAX, FILENAME_MAX, KIND_CONNECT, KIND_EXEC, KIND_EXIT, KIND_NAMES, KIND_OPEN, PATH_MAX,
    SOCKADDR_MAX, TASK_COMM_LEN, ConnectRecord, ExecRecord, ExitRecord, OpenRecord, Record, _cstr,
)

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
FIXED_STRUCTS = {
    KIND_EXEC: EXEC_FIXED,
    KIND_OPEN: OPEN_FIXED,
    KIND_CONNECT: CONNECT_FIXED,
    KIND_EXIT: EXIT_FIXED,
}


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
