"""Records to Kestrel Events.  Pure: no kernel, no I/O.

``normalize(record, wall_offset_ns)`` turns a parsed record (kestrel_raw/codec/records.py) into a
``KestrelEvent``; ``event_from_raw(raw, wall_offset_ns)`` does the same from the raw record in one step (the
collector's hot path: no record object in between), with the same checks and the same event.  Both are
generated from the spec's values (kestrel_raw/codec/generate.py).  ``ctx`` is the context provider that
fills the context values and takes the records that update it (kestrel_raw/codec/context.py); the record of
an internal kind (``spec.RecordKind``) gives None: it is consumed, not an event.
"""
from __future__ import annotations

from operator import attrgetter

from kestrel_raw.codec.compiled import CODEC
from kestrel_raw.codec.context import NO_CONTEXT
from kestrel_raw.codec.event import KestrelEvent
from kestrel_raw.codec.records import record_kind
from kestrel_raw.errors import RecordError
from kestrel_raw.spec import KINDS

_FROM_VALUES = {k.id: CODEC[f"event_{k.label}"] for k in KINDS.values()}
_FROM_RAW = {k.id: CODEC[f"event_raw_{k.label}"] for k in KINDS.values()}
_VALUES = {k.id: attrgetter(*k.record_names) for k in KINDS.values()}


def normalize(record, wall_offset_ns: int, ctx=NO_CONTEXT) -> KestrelEvent | None:
    """The KestrelEvent of ``record``; ``ts_wall = ts_ns + wall_offset_ns``.  None for an internal record.
    Pure but for what ``ctx`` does."""
    kind = getattr(record, "kind", None)
    build = _FROM_VALUES.get(kind)
    if build is None:
        raise RecordError(f"cannot normalize {type(record).__name__}: not a kestrel record")
    return build(_VALUES[kind](record), wall_offset_ns, ctx)


def event_from_raw(raw: bytes | bytearray | memoryview, wall_offset_ns: int, ctx=NO_CONTEXT) -> KestrelEvent | None:
    """``normalize(parse_record(raw), wall_offset_ns, ctx)`` without the record object in between: the same
    checks (``RecordError`` for a malformed record) and the same event."""
    return _FROM_RAW[record_kind(raw)](raw, len(raw), wall_offset_ns, ctx)


__all__ = ["normalize", "event_from_raw"]
