"""Raw ring-buffer records parsed without a kernel: one frozen record class per kind, made from the spec.

``parse_record(data)`` checks and parses one record (the ring buffer's sample, without the ring's 8-byte
header) into its kind's record class (``RECORD_CLASSES``: ``ExecRecord``, ``OpenRecord``...), whose
attributes are the spec's wire fields (``Kind.record_names``): strings are raw ``bytes`` (``comm`` and the
file names cut at their first NUL), the variable parts are bytes, the lengths and padding are gone.  A record
may be longer than its fields say (the ring buffer pads to 8 bytes): the tail is ignored.  Anything
malformed raises ``RecordError``.  Each record class also has the kind's bool Kestrel fields as properties
(``truncated``, ``fault``), computed with the spec's own expressions.

The parser is generated from the spec (kestrel_raw/codec/generate.py); the construct Structs of
kestrel_raw/codec/schema.py are the oracle it is tested against.
"""
from __future__ import annotations

import struct
from dataclasses import make_dataclass
from typing import Any, Callable

from kestrel_raw.codec.compiled import CODEC
from kestrel_raw.codec.decode import unknown_kind
from kestrel_raw.errors import RecordError
from kestrel_raw.spec import KINDS, Kind

KIND_OFFSET = next(w.offset for w in KINDS[1].wire if w.name == "kind")
_KIND = struct.Struct("<H")
_object_new = object.__new__
_object_setattr = object.__setattr__


def _record_class(kind: Kind) -> type:
    props = {name[len(f"prop_{kind.label}_"):]: property(fn) for name, fn in CODEC.items()
             if name.startswith(f"prop_{kind.label}_")}
    cls = make_dataclass(f"{kind.label.capitalize()}Record", kind.record_names, frozen=True,
                         namespace={"kind": kind.id, **props})
    cls.__doc__ = f"A parsed {kind.label} record ({', '.join(kind.record_names)})."
    cls.__module__ = __name__
    return cls


def _maker(cls: type, names: tuple[str, ...]) -> Callable[[tuple], Any]:
    """A constructor for frozen dataclass ``cls`` taking its values as one tuple.

    The generated frozen ``__init__`` sets each field through ``object.__setattr__`` (~1.6 us for an open
    record); installing the instance dict in one step costs ~1.0 us.  No validation is skipped: the
    dataclasses have none.  (Hence no ``slots=True``: a slotted instance has no dict to install.)
    """
    def make(values: tuple):
        obj = _object_new(cls)
        _object_setattr(obj, "__dict__", dict(zip(names, values)))
        return obj

    return make


RECORD_CLASSES: dict[int, type] = {k.id: _record_class(k) for k in KINDS.values()}
ExecRecord, OpenRecord, ConnectRecord, ExitRecord = (RECORD_CLASSES[k] for k in (1, 2, 3, 4))
Record = Any  # one of RECORD_CLASSES' values

# kind -> the generated parser (data, n) -> tuple of the record's values, and the fixed part's format
VALUE_PARSERS: dict[int, Callable] = {k.id: CODEC[f"values_{k.label}"] for k in KINDS.values()}
FIXED_FORMATS: dict[int, struct.Struct] = {k.id: CODEC[f"FIXED_{k.label}"] for k in KINDS.values()}
_MAKERS = {k.id: _maker(RECORD_CLASSES[k.id], k.record_names) for k in KINDS.values()}


def pack_record(kind: int, **values) -> bytes:
    """The bytes of a record of ``kind`` from named values, with the fast parser's own formats (no construct:
    the collector's warm-up uses it).  Values not given are 0 or empty; a length field not given is its
    variable part's length; an unknown name is a TypeError.  ``schema.build_record`` is the construct twin."""
    k = KINDS[kind]
    unknown = set(values) - {w.name for w in k.wire} - {"kind"}
    if unknown:
        raise TypeError(f"unknown fields for a {k.label} record: {sorted(unknown)}")
    parts = [values.get(v.name, b"") for v in k.var]
    lengths = {v.type.length: len(p) for v, p in zip(k.var, parts)}
    fixed = [kind if w.name == "kind" else values.get(w.name, lengths.get(w.name, b"" if w.type.struct_code.endswith("s") else 0))
             for w in k.fixed]
    return FIXED_FORMATS[kind].pack(*fixed) + b"".join(parts)


def record_kind(data: bytes | bytearray | memoryview) -> int:
    """The kind of the record in ``data``, checked to be one the spec knows.  Raises ``RecordError``."""
    n = len(data)
    if n < KIND_OFFSET + 2:
        raise RecordError(f"record is {n} bytes, too short to hold its kind; the ring buffer gave an empty "
                          "or truncated sample")
    kind = _KIND.unpack_from(data, KIND_OFFSET)[0]
    if kind not in _MAKERS:
        raise unknown_kind(kind)
    return kind


def parse_record(data: bytes | bytearray | memoryview) -> Record:
    """Parse one record (the ring buffer sample, without the ring's 8-byte header).  Raises ``RecordError``."""
    kind = record_kind(data)
    return _MAKERS[kind](VALUE_PARSERS[kind](data, len(data)))


__all__ = ["RECORD_CLASSES", "ExecRecord", "OpenRecord", "ConnectRecord", "ExitRecord", "Record",
           "FIXED_FORMATS", "VALUE_PARSERS", "KIND_OFFSET", "pack_record", "record_kind", "parse_record"]
