"""Probes beyond tracepoints: where a uprobe goes (targets.py), and the library API that attaches your own
programs, assembled with kestrel_raw.asm, to uprobes, kprobes, fentry/fexit and tracepoints, their records
read by the collector's pollers (user.py).

    from kestrel_raw.probes import AsmMap, AsmObject, AsmProgram, call_registers

Names are imported on first use: kestrel_raw.programs uses targets.py and stays free of ctypes.
"""
from __future__ import annotations

from kestrel_raw._lazy import lazy_getattr

_EXPORTS = {
    "AsmMap": "kestrel_raw.probes.user",
    "AsmObject": "kestrel_raw.probes.user",
    "AsmProgram": "kestrel_raw.probes.user",
    "LoadedAsmObject": "kestrel_raw.probes.user",
    "CallRegisters": "kestrel_raw.probes.user",
    "call_registers": "kestrel_raw.probes.user",
    "Uprobe": "kestrel_raw.probes.targets",
    "mapped_file": "kestrel_raw.probes.targets",
    "resolve_binary": "kestrel_raw.probes.targets",
    "function_offset": "kestrel_raw.probes.targets",
}

__all__ = list(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
