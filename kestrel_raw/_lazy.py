"""Lazy package exports (PEP 562): a package names what it exports and where each name lives, and the
module holding it is imported on first use, so that importing the package loads neither ctypes nor trio."""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_getattr(package: str, exports: Mapping[str, str], namespace: dict) -> Callable[[str], object]:
    """The package's ``__getattr__``: ``exports`` maps a name to its module; the value found is cached in
    ``namespace`` (the package's globals) so that the next access is a plain lookup."""
    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value
    return __getattr__
