"""The pure modules import neither ctypes nor trio (docs/architecture.md rules)."""
from __future__ import annotations

import subprocess
import sys


def test_pure_modules_import_no_ctypes_or_trio():
    code = (
        "import sys\n"
        "import kestrel_raw.codec.records, kestrel_raw.codec.normalize, kestrel_raw.codec.generate, kestrel_raw.spec, kestrel_raw.codec.jsonl, "
        "kestrel_raw.config, kestrel_raw.codec.sockaddr\n"
        "print(sorted(m for m in ('ctypes', 'trio') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=".")
    assert out.stdout.strip() == "[]"
