"""``JsonlSink``: writes JSON lines (kestrel_raw.codec.jsonl) to a file.

It opens a path safely (kestrel_raw/sinks/files.py: no symlink followed, created with mode 0600 since events
reveal what users run and open, an existing file appended to only if it is this user's and no one else
can write it), optionally rotates it at a size between whole lines, and flushes at least
every ``flush_interval`` seconds while events flow: on a write once the interval has passed, or when the
owner calls ``flush_if_due()`` from a timer.  Not per line: a flush is a write(2), and at 100k events/s
that would be the bottleneck.
"""
from __future__ import annotations

import io
import os
import time
from typing import BinaryIO, Callable

from kestrel_raw.codec.event import KestrelEvent
from kestrel_raw.codec.jsonl import encode_event
from kestrel_raw.sinks.files import RotatingFile


class JsonlSink:
    """Writes events as JSON lines to ``file``: a path (opened safely, appended to) or a binary file.

    A path is opened by ``RotatingFile`` (kestrel_raw/sinks/files.py: O_NOFOLLOW, created 0600, an
    existing file checked before it is appended to; ``OutputError`` says why one is refused), rotated at
    ``rotate_size`` bytes keeping ``rotate_keep`` old files when ``rotate_size`` is set; ``also_owner`` is
    a uid besides this process's whose existing file may be appended to (the user the collector drops
    to).  A file object passed in is written to and flushed but not closed.  ``flush_interval`` (seconds)
    bounds how long a line stays buffered while events flow; ``clock`` is for tests.
    """

    def __init__(self, file: str | os.PathLike | BinaryIO, *, flush_interval: float = 0.1,
                 clock: Callable[[], float] = time.monotonic, buffer_size: int = 1 << 16,
                 rotate_size: int | None = None, rotate_keep: int = 5, also_owner: int | None = None) -> None:
        if flush_interval <= 0:
            raise ValueError(f"flush_interval must be positive seconds, got {flush_interval!r}")
        if isinstance(file, (str, bytes, os.PathLike)):
            self._file = RotatingFile(os.fsdecode(file), rotate_size=rotate_size, keep=rotate_keep,
                                      buffer_size=buffer_size, also_owner=also_owner)
            self._owns = True
        else:
            self._file = file.buffer if isinstance(file, io.TextIOBase) else file
            self._owns = False
        self._interval = flush_interval
        self._clock = clock
        self._last_flush = clock()
        self._dirty = False
        self.lines_written = 0
        self.flushes = 0

    @classmethod
    def open(cls, path: str | os.PathLike, **kwargs) -> "JsonlSink":
        """A sink appending to ``path``, created with mode 0600 (same as ``JsonlSink(path, ...)``)."""
        if not isinstance(path, (str, bytes, os.PathLike)):
            raise TypeError(f"JsonlSink.open takes a path, got {type(path).__name__}")
        return cls(path, **kwargs)

    def write_event(self, event: KestrelEvent) -> None:
        self.write(encode_event(event))

    def write(self, lines: bytes) -> None:
        """Write encoded lines (one, or a chunk of several); flush once ``flush_interval`` has passed."""
        self._file.write(lines)
        self.lines_written += lines.count(b"\n")
        self._dirty = True
        if self._clock() - self._last_flush >= self._interval:
            self.flush()

    def flush_if_due(self) -> bool:
        """Flush if lines are buffered and the interval has passed (call from a timer); True if it did."""
        if self._dirty and self._clock() - self._last_flush >= self._interval:
            self.flush()
            return True
        return False

    write_line = write

    def flush(self) -> None:
        self._file.flush()
        self._last_flush = self._clock()
        self._dirty = False
        self.flushes += 1

    def close(self) -> None:
        """Flush, and close the file if the sink opened it.  Idempotent."""
        if self._file is None:
            return
        try:
            self._file.flush()
        finally:
            if self._owns:
                self._file.close()
            self._file = None

    @property
    def closed(self) -> bool:
        return self._file is None

    def __enter__(self) -> "JsonlSink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
