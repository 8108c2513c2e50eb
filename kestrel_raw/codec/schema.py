"""The record schema in construct: one ``Struct`` per record kind, built from the event spec, little-endian
types spelled out.

It is the test oracle: ``parse_record_construct`` parses with construct's interpreted parser (which checks
every length; construct's compiled parser does not: ``Compiled`` ``Bytes(this.n)`` returns a short slice
instead of failing, so it cannot be the oracle), into the same record classes as the generated fast parser
(kestrel_raw/codec/records.py).  ``struct_format`` derives a ``struct`` format from a Struct; the tests check
it equals the fast parser's.  ``build_record`` makes record bytes from named values (tests, benchmarks, the
collector's warm-up).  The collector itself never imports construct (7 MB of peak RSS, 50 ms of start-up).
"""
from __future__ import annotations

import struct

import construct as cs

from kestrel_raw.codec.decode import cstr, unknown_kind
from kestrel_raw.codec.records import RECORD_CLASSES, Record
from kestrel_raw.errors import RecordError
from kestrel_raw.spec import HEADER, KINDS, Chars, Int, Kind, Var

_INTS = {(1, False): cs.Int8ul, (2, False): cs.Int16ul, (4, False): cs.Int32ul, (8, False): cs.Int64ul,
         (1, True): cs.Int8sl, (2, True): cs.Int16sl, (4, True): cs.Int32sl, (8, True): cs.Int64sl}


def _subcons(kind: Kind) -> list:
    out = []
    for w in kind.wire:
        if isinstance(w.type, Int):
            out.append(w.name / _INTS[(w.type.size, w.type.signed)])
        elif isinstance(w.type, Chars):
            out.append(w.name / cs.Bytes(w.type.size))
        elif isinstance(w.type, Var):
            length = w.type.length
            out.append(cs.Check(lambda ctx, length=length, limit=w.type.max: ctx[length] <= limit))
            out.append(w.name / cs.Bytes(lambda ctx, length=length: ctx[length]))
        else:
            raise TypeError(f"{kind.label}.{w.name}: no construct type for {w.type!r}")
    return out


def _fixed(kind: Kind) -> cs.Struct:
    return cs.Struct(*(s for s in _subcons(kind) if not isinstance(s, cs.Check) and _is_fixed(s)))


def _is_fixed(sub) -> bool:
    try:
        sub.sizeof()
        return True
    except cs.SizeofError:
        return False


HEADER_STRUCT = cs.Struct(*_subcons(KINDS[1])[:len(HEADER)])
RECORD_STRUCTS: dict[int, cs.Struct] = {k.id: cs.Struct(*_subcons(k)) for k in KINDS.values()}
FIXED_STRUCTS: dict[int, cs.Struct] = {k.id: _fixed(k) for k in KINDS.values()}


def struct_format(st: cs.Struct) -> str:
    """The ``struct`` format of the fixed-size fields of ``st``.

    Only little-endian integer ``FormatField``s and fixed-length ``Bytes`` are allowed: anything else is a
    schema change the fast path must be taught about, so it fails rather than parsing wrongly.
    """
    parts = ["<"]
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
    if struct.calcsize(fmt) != st.sizeof():
        raise TypeError(f"format {fmt!r} is {struct.calcsize(fmt)} bytes, the Struct {st.sizeof()}")
    return fmt


def parse_record_construct(data: bytes | bytearray | memoryview) -> Record:
    """Parse with the construct Structs (slow, strict): the reference the fast parser is tested against."""
    data = bytes(data)
    kind_at = next(w.offset for w in KINDS[1].wire if w.name == "kind")
    if len(data) < kind_at + 2:
        raise RecordError(f"record is {len(data)} bytes, too short to hold its kind")
    kind = cs.Int16ul.parse(data[kind_at:kind_at + 2])
    st = RECORD_STRUCTS.get(kind)
    if st is None:
        raise unknown_kind(kind)
    spec_kind = KINDS[kind]
    try:
        c = st.parse(data)
    except cs.ConstructError as e:
        raise RecordError(f"{spec_kind.label} record is malformed: {e}") from e
    values = {}
    for w in spec_kind.wire:
        if w.name not in spec_kind.record_names:
            continue
        value = c[w.name]
        if isinstance(w.type, (Chars, Var)) and w.type.cstr:
            value = cstr(value)
        values[w.name] = value
    return RECORD_CLASSES[kind](**values)


def build_record(kind: int, **fields) -> bytes:
    """The bytes of one record of ``kind`` built with its construct Struct (tests, benchmarks, warm-up).

    Fields not given are 0 (or empty; ``kind`` is set); a length field not given is the length of its
    variable part.  An unknown field name is a TypeError.
    """
    spec_kind = KINDS[kind]
    values: dict = {}
    for w in spec_kind.wire:
        if w.name == "kind":
            values[w.name] = kind
        elif isinstance(w.type, Chars):
            values[w.name] = fields.pop(w.name, b"").ljust(w.type.size, b"\0")
        elif isinstance(w.type, Var):
            values[w.name] = fields.pop(w.name, b"")
        else:
            values[w.name] = fields.pop(w.name, None)
    if fields:
        raise TypeError(f"unknown fields for a {spec_kind.label} record: {sorted(fields)}")
    for v in spec_kind.var:
        if values[v.type.length] is None:
            values[v.type.length] = len(values[v.name])
    for name, value in values.items():
        if value is None:
            values[name] = 0
    return RECORD_STRUCTS[kind].build(values)


__all__ = ["HEADER_STRUCT", "RECORD_STRUCTS", "FIXED_STRUCTS", "struct_format", "parse_record_construct",
           "build_record"]
