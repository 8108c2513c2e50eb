"""kestrel-raw: a Linux security event collector that speaks eBPF from pure Python.

The public namespace (trio-style: the implementation lives in the subpackages, these names are the API):

    from kestrel_raw import KestrelCollector, CollectorConfig, EventType, KestrelEvent, EventBus

The layout follows the data: ``asm`` (assembler) -> ``programs`` (the BPF programs) -> ``kernel`` (bpf(2),
perf_event_open(2), tracefs, loading and attaching) -> ``maps`` (maps, the ring-buffer cursor and its mmap
reader) -> ``codec`` (record parse, Kestrel Event, JSON lines; all derived from ``spec``) -> ``collector``
(load, attach and check, pollers and delivery, peers) -> ``sinks`` (files, the EventBus) -> ``cli``.

Names are imported on first use (PEP 562), so that ``import kestrel_raw.asm`` or the codec loads neither trio
nor ctypes.
"""
from __future__ import annotations

from kestrel_raw._lazy import lazy_getattr

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "KestrelCollector": "kestrel_raw.collector",
    "CollectorStats": "kestrel_raw.collector",
    "CollectorConfig": "kestrel_raw.config",
    "ObjectRecord": "kestrel_raw.collector.objects",
    "LoadedObject": "kestrel_raw.loader.objload",
    "AsmObject": "kestrel_raw.probes.user",
    "AsmProgram": "kestrel_raw.probes.user",
    "AsmMap": "kestrel_raw.probes.user",
    "LoadedAsmObject": "kestrel_raw.probes.user",
    "Filters": "kestrel_raw.filters",
    "EventType": "kestrel_raw.spec",
    "FieldId": "kestrel_raw.spec",
    "FieldType": "kestrel_raw.spec",
    "KestrelEvent": "kestrel_raw.codec.event",
    "entity_key": "kestrel_raw.codec.event",
    "normalize": "kestrel_raw.codec.normalize",
    "event_from_raw": "kestrel_raw.codec.normalize",
    "parse_record": "kestrel_raw.codec.records",
    "encode_event": "kestrel_raw.codec.jsonl",
    "EventBus": "kestrel_raw.sinks.bus",
    "JsonlSink": "kestrel_raw.sinks.jsonl",
    "KestrelError": "kestrel_raw.errors",
    "ConfigError": "kestrel_raw.errors",
    "SetupError": "kestrel_raw.errors",
    "BPFError": "kestrel_raw.errors",
    "VerifierError": "kestrel_raw.errors",
    "PrivilegeError": "kestrel_raw.errors",
    "RecordError": "kestrel_raw.errors",
    "BTFError": "kestrel_raw.errors",
    "AsmError": "kestrel_raw.errors",
}

__all__ = ["__version__", *_EXPORTS]


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
