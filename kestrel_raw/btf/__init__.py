"""BTF reader: parse kernel BTF (/sys/kernel/btf/vmlinux) and answer layout questions.

Pure Python, no ctypes, no trio.  ``BTF.load()`` / ``BTF.parse(data)``; ``find``, ``member``, ``path`` (``path_hops``),
``size_of``, ``enum_value(s)``, ``type_by_id``, iteration.  ``format_raw`` prints a type as bpftool's raw
dump does; ``format_aggregate`` prints a struct as C with offsets.
"""
from kestrel_raw.btf.header import Header, parse_header
from kestrel_raw.btf.spec import BTF, VMLINUX_BTF
from kestrel_raw.btf.types import ArrayInfo, Enumerator, IntEncoding, Member, Param, PathHop, Type, VarSecinfo
from kestrel_raw.errors import BTFError

# The text formats serve tools/btfdump.py and the tests; the collector only asks for offsets, so they are
# imported on first use (start-up time).
_FORMATTERS = {"declaration": "cformat", "format_aggregate": "cformat", "format_raw": "raw"}


def __getattr__(name: str):
    module = _FORMATTERS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"kestrel_raw.btf.{module}"), name)


__all__ = [
    "BTF", "BTFError", "VMLINUX_BTF", "ArrayInfo", "Enumerator", "Header", "IntEncoding", "Member", "Param",
    "PathHop", "Type", "VarSecinfo", "declaration", "format_aggregate", "format_raw", "parse_header",
]
