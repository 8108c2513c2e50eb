"""docs/audit.md: the generated source, listing and bytes of the program it walks are what the code builds now
(tools/audit_guide.py writes them; the walked program reads no kernel struct, so they are the same on every
kernel).  Marked kernel: building reads tracefs, which is root's."""
from __future__ import annotations

import importlib.util
import os

import pytest

from helpers import REPO

pytestmark = pytest.mark.kernel


def _tool():
    spec = importlib.util.spec_from_file_location("audit_guide", os.path.join(REPO, "tools", "audit_guide.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_guides_generated_parts_are_current() -> None:
    tool = _tool()
    text = tool.GUIDE.read_text()
    assert tool.stale_sections(text) == [], "run `sudo python3 tools/audit_guide.py` and commit docs/audit.md"


def test_a_changed_listing_is_found_stale() -> None:
    tool = _tool()
    text = tool.GUIDE.read_text()
    changed = text.replace("   4: (77) r1 >>= 32", "   4: (77) r1 >>= 31", 1)
    assert changed != text and tool.stale_sections(changed) == ["listing"]
    # The tag line depends on the kernel's tag hash (SHA-1 before 6.18): not compared.
    tag_line = next(ln for ln in text.splitlines() if ln.startswith("; tag "))
    assert tool.stale_sections(text.replace(tag_line, "; tag 0000000000000000")) == []


def test_the_readme_links_the_guide() -> None:
    with open(os.path.join(REPO, "README.md")) as f:
        assert "(docs/audit.md)" in f.read()
