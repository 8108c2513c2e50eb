"""Reading a collector's JSON-lines output while it is still being written (shared by the CLI harnesses)."""
from __future__ import annotations

import json
from pathlib import Path


class JsonlTail:
    """Every event written to ``path`` so far.  Reads only what was appended since the last call (the
    collector watches the whole host: re-reading the file on every poll is quadratic), and only whole
    lines (the sink writes in large chunks, so the file may end mid-line)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._events: list[dict] = []

    def events(self) -> list[dict]:
        if self.path.exists():
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
            end = data.rfind(b"\n") + 1
            self._offset += end
            self._events.extend(json.loads(line) for line in data[:end].splitlines() if line.strip())
        return self._events
