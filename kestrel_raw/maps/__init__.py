"""BPF maps: the ``Map`` base, arrays, hashes and the ring buffer."""
from __future__ import annotations

from ._base import Map as Map
from .array import ArrayMap as ArrayMap, PerCPUArrayMap as PerCPUArrayMap, possible_cpus as possible_cpus
from .hash import HashMap as HashMap

__all__ = ["Map", "ArrayMap", "PerCPUArrayMap", "HashMap", "RingBuf", "RingBufReader", "possible_cpus"]


def __getattr__(name: str):
    # The ring buffer lives in its own module, written separately; import it on first use so that the other
    # maps work whether or not it is importable.
    if name in ("RingBuf", "RingBufReader"):
        from . import ringbuf
        return getattr(ringbuf, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
