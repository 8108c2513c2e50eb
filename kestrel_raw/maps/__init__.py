"""BPF maps: the ``Map`` base, arrays, hashes, and the ring buffer (``ring``: the pure cursor over its
memory; ``ringbuf``: the map, its mmap and the blocking reader).

Names are imported on first use, so that ``import kestrel_raw.maps.ring`` (pure: bytes in, records out)
loads neither ctypes nor trio.
"""
from __future__ import annotations

from kestrel_raw._lazy import lazy_getattr

_EXPORTS = {
    "Map": "kestrel_raw.maps._base",
    "ArrayMap": "kestrel_raw.maps.array",
    "PerCPUArrayMap": "kestrel_raw.maps.array",
    "ProgArrayMap": "kestrel_raw.maps.array",
    "possible_cpus": "kestrel_raw.maps.array",
    "HashMap": "kestrel_raw.maps.hash",
    "LpmTrieMap": "kestrel_raw.maps.lpm",
    "TaskStorageMap": "kestrel_raw.maps.storage",
    "RingBuf": "kestrel_raw.maps.ringbuf",
    "RingBufReader": "kestrel_raw.maps.ringbuf",
}

__all__ = list(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
