"""Auditing what kestrel-raw puts into the kernel: pin files (``pin.py``), the kernel's rewrites of a loaded
program named instruction by instruction (``rewrites.py``), and reading loaded programs back from the
kernel (``readback.py``).  ``kestrel-raw disasm`` and ``kestrel-raw verify`` are built on these;
docs/audit.md walks one program through all of it."""
from __future__ import annotations

from kestrel_raw.audit.pin import FORMAT as PIN_FORMAT
from kestrel_raw.audit.pin import PinError, PinFile, format_pins

__all__ = ["PIN_FORMAT", "PinError", "PinFile", "format_pins"]
