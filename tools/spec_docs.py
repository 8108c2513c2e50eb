#!/usr/bin/env python3
"""Write the tables rendered from the event spec (kestrel_raw/spec.py) into README.md and
docs/architecture.md, between their ``<!-- spec:NAME -->`` and ``<!-- /spec:NAME -->`` markers.

    python3 tools/spec_docs.py           # rewrite the sections
    python3 tools/spec_docs.py --check   # exit 1, naming them, when a section differs from the spec

tests/test_spec.py runs the same comparison.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kestrel_raw import spec  # noqa: E402

SECTIONS = [
    ("README.md", "json", spec.render_json_table),
    ("README.md", "fields", spec.render_field_table),
    ("docs/architecture.md", "records", spec.render_wire_tables),
]


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for rel, name, render in SECTIONS:
        path = ROOT / rel
        text = path.read_text()
        pattern = re.compile(rf"(<!-- spec:{name} -->\n)(.*?)(\n<!-- /spec:{name} -->)", re.S)
        m = pattern.search(text)
        if m is None:
            print(f"{rel}: no <!-- spec:{name} --> ... <!-- /spec:{name} --> section", file=sys.stderr)
            return 1
        if m.group(2) != render():
            stale.append(f"{rel} ({name})")
            if not check:
                path.write_text(text[:m.start(2)] + render() + text[m.end(2):])
    if stale:
        print(("differs from the spec: " if check else "rewritten: ") + ", ".join(stale),
              file=sys.stderr if check else sys.stdout)
    return 1 if (check and stale) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
