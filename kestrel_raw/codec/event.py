"""``KestrelEvent``: one normalized event, and ``entity_key``, the key of a process incarnation.  Pure.

``fields`` maps kestrel-schema field ids (kestrel_raw/spec.py) to typed values.  Strings that are not valid
UTF-8 survive losslessly: they are ``str`` decoded with ``errors="surrogateescape"``, so
``s.encode("utf-8", "surrogateescape")`` gives back the exact bytes.  Events are made from records by
kestrel_raw/codec/normalize.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from kestrel_raw.spec import FIELDS_BY_ID, FIELDS_BY_NAME, EventType

SOURCE_EBPF = "ebpf"
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


# A memo of entity keys, by pid: (start_ns, key).  A pid's next incarnation replaces its entry; the dict is
# emptied when it reaches KEY_MEMO_MAX pids.  Saves ~0.4 us of the ~0.5 us mix per event.
_KEY_MEMO: dict[int, tuple[int, int]] = {}
KEY_MEMO_MAX = 1 << 16


def entity_key_memo(pid: int, start_ns: int) -> int:
    """``entity_key(pid, start_ns)``, from the memo when the pid's last incarnation was this one."""
    hit = _KEY_MEMO.get(pid)
    if hit is not None and hit[0] == start_ns:
        return hit[1]
    key = entity_key(pid, start_ns)
    if len(_KEY_MEMO) >= KEY_MEMO_MAX:
        _KEY_MEMO.clear()
    _KEY_MEMO[pid] = (start_ns, key)
    return key


# KestrelEvent built without its generated frozen __init__ (six object.__setattr__ calls): the slot
# descriptors set the same slots in ~half the time.  For the codec's hot paths.
_object_new = object.__new__
(_set_type, _set_mono, _set_wall, _set_key, _set_fields, _set_source) = (
    KestrelEvent.__dict__[name].__set__
    for name in ("event_type_id", "ts_mono", "ts_wall", "entity_key", "fields", "source")
)


def make_event(type_id: int, ts_mono: int, ts_wall: int, key: int, fields: Mapping[int, Any],
               source: str = SOURCE_EBPF) -> KestrelEvent:
    """A KestrelEvent, made as fast as Python allows (the codec's hot paths call this)."""
    ev = _object_new(KestrelEvent)
    _set_type(ev, type_id)
    _set_mono(ev, ts_mono)
    _set_wall(ev, ts_wall)
    _set_key(ev, key)
    _set_fields(ev, fields)
    _set_source(ev, source)
    return ev


proxy = MappingProxyType

__all__ = ["KestrelEvent", "SOURCE_EBPF", "entity_key", "entity_key_memo", "make_event"]
