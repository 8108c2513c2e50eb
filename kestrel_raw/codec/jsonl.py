"""JSON lines: one Kestrel Event per line.  Pure.

Each line is one compact JSON object (no spaces) whose keys and their order are the spec's
(``spec.json_keys(kind)``; the README's table is rendered from the same spec): ``type``, ``event_type_id``,
``ts_mono_ns``, ``ts_wall_ns``, ``entity_key``, the common fields (``pid``, ``tid``, ``cpu``, ``ppid``,
``uid``, ``gid``, ``comm``), ``source``, then the kind's own fields.

Non-UTF-8 strings.  Paths, arguments and command names are bytes in Linux, not text.  When a string is
not valid UTF-8, its key carries the text with each invalid byte replaced by U+FFFD, and a sibling key
``<key>_b64`` (right after it) carries the exact bytes in base64.  For ``argv`` the sibling ``argv_b64`` is
the whole list, each element base64-encoded, present only when some element is not valid UTF-8.  A
consumer that needs exact bytes reads ``<key>_b64`` when it is present and ``<key>`` otherwise.  The output
is always valid UTF-8 JSON (never a lone surrogate), so any JSON parser accepts every line.

Two ways to a line, generated from the same spec entries (kestrel_raw/codec/generate.py) and tested equal
byte for byte: ``encode_event(event)`` from a KestrelEvent (integers formatted directly, strings escaped
with the json module's C encoder: the line is ``json.dumps(obj, separators=(",", ":"),
ensure_ascii=False)`` of the same keys), and ``encode_record(raw, wall)`` / ``encode_records(batch, wall)``
from raw records, with no event object in between (the collector's JSON hot path), keeping the text it
made in bounded memos keyed by record bytes.
"""
from __future__ import annotations

from kestrel_raw.codec.compiled import CODEC
from kestrel_raw.codec.context import NO_CONTEXT
from kestrel_raw.codec.decode import json_fast_str, json_fast_str_list, json_str, json_str_list
from kestrel_raw.codec.event import KestrelEvent
from kestrel_raw.codec.records import KIND_OFFSET, record_kind
from kestrel_raw.errors import RecordError
from kestrel_raw.spec import ALL_KINDS, FIELDS_BY_ID, KINDS

_EVENT_LINES = {k.id: CODEC[f"event_line_{k.label}"] for k in ALL_KINDS.values()}
_RECORD_LINES = {k.id: CODEC[f"line_{k.label}"] for k in KINDS.values()}
# The line function by the kind's low byte, for encode_records' dispatch (kinds are below 256; the high
# byte is checked to be 0).
_BY_LOW_BYTE: list = [None] * 256
for _k, _fn in _RECORD_LINES.items():
    _BY_LOW_BYTE[_k] = _fn
_KIND_LO, _KIND_HI = KIND_OFFSET, KIND_OFFSET + 1


def encode_event(event: KestrelEvent) -> bytes:
    """One JSON line (ending in ``\\n``) for ``event``, as the module docstring describes."""
    line_of = _EVENT_LINES.get(event.event_type_id)
    if line_of is None:
        known = ", ".join(f"{k.id} {k.label}" for k in ALL_KINDS.values())
        raise ValueError(f"cannot encode event type {event.event_type_id}: known are {known}")
    try:
        line = line_of(event, json_fast_str, json_fast_str_list)
        try:
            return line.encode("utf-8")
        except UnicodeEncodeError:  # a surrogateescape'd string: rebuild with replacement text + base64
            return line_of(event, json_str, json_str_list).encode("utf-8")
    except KeyError as e:
        key = e.args[0]
        f = FIELDS_BY_ID.get(key)
        raise ValueError(f"{ALL_KINDS[event.event_type_id].label} event lacks field {f.name if f else key!r} "
                         f"(id {key}); build events with kestrel_raw.codec.normalize") from None


def _record_line(raw: bytes | bytearray | memoryview, wall_offset_ns: int, ctx) -> str:
    kind = record_kind(raw)
    if type(raw) is not bytes:
        raw = bytes(raw)  # the memos key on slices of it
    return _RECORD_LINES[kind](raw, len(raw), wall_offset_ns, ctx)


def encode_record(raw: bytes | bytearray | memoryview, wall_offset_ns: int, ctx=NO_CONTEXT) -> bytes:
    """The JSON line of the raw ring-buffer record ``raw``; raises ``RecordError`` when it is malformed.
    The same text as ``encode_event(normalize(parse_record(raw), wall_offset_ns, ctx))``; b"" for an
    internal record (``ctx`` takes it)."""
    return _record_line(raw, wall_offset_ns, ctx).encode("utf-8")


ALL_WANTED = (True,) * 256


def encode_records(batch, wall_offset_ns: int, ctx=NO_CONTEXT, wanted=ALL_WANTED,
                   refused: list | None = None) -> tuple[bytes, list[int], int]:
    """``encode_record`` over a batch: (the lines joined, the kind of each record encoded, how many were
    malformed and skipped).  One UTF-8 encode for the whole chunk instead of one per line.

    Every record goes through ``ctx`` (the internal ones only to it); ``wanted[kind]`` says whether a
    kind's lines are kept (the collector reads the exec, fork and exit records for its process cache even
    when those events were not asked for).  ``refused``: a list the malformed records are appended to (the
    collector counts them by the kind they name)."""
    lines: list[str] = []
    kinds: list[int] = []
    add_line, add_kind = lines.append, kinds.append
    by_low, lo, hi = _BY_LOW_BYTE, _KIND_LO, _KIND_HI
    bad = 0
    for raw in batch:
        try:
            n = len(raw)
            if type(raw) is bytes and n > hi and not raw[hi] and (line_of := by_low[raw[lo]]) is not None:
                line = line_of(raw, n, wall_offset_ns, ctx)
            else:
                line = _record_line(raw, wall_offset_ns, ctx)
        except RecordError:
            bad += 1
            if refused is not None:
                refused.append(raw)
            continue
        kind = raw[lo]  # the kind's low byte; checked above to name a kind
        if line and wanted[kind]:
            add_line(line)
            add_kind(kind)
    return "".join(lines).encode("utf-8"), kinds, bad


__all__ = ["encode_event", "encode_record", "encode_records"]
