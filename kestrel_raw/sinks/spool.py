"""``Spool``: a bounded first-in first-out queue of messages in one file, for a sink whose receiver is away.

The file is made once, at its full size (sparse: disk blocks are used only as messages are written), and
opened before the collector drops its privileges; after that the collector only reads and writes the
descriptor it holds, so the unprivileged process needs no right on the directory.  Layout::

    0     header, one page: magic "KRSPOOL1", u64 data size, u64 head, u64 tail (little-endian)
    4096  data: a ring of records, each u32 payload length, u32 CRC-32 of the payload, payload

``head`` and ``tail`` are logical byte positions (they only grow; the file offset is 4096 + pos % size):
``head`` is where the next record goes, ``tail`` the oldest record not yet taken.  A record may wrap from
the end of the data area to its start.  The header is rewritten after every push and pop, without
fsync: the queue survives the collector's restart, not a power cut.  A full spool refuses a message
(``push`` returns False; the caller counts it as dropped) rather than overwrite the oldest, as the
kernel's ring buffers do.  A header or record that does not check out (another program's file, a torn
write) empties the queue, and ``discarded`` counts the bytes given up.
"""
from __future__ import annotations

import os
import struct
import zlib

from kestrel_raw.sinks.files import open_output

MAGIC = b"KRSPOOL1"
HEADER_SIZE = 4096
_HEADER = struct.Struct("<8sQQQ")
_RECORD = struct.Struct("<II")


class Spool:
    def __init__(self, path: str, size: int, *, also_owner: int | None = None) -> None:
        if size < 4 * _RECORD.size:
            raise ValueError(f"spool size {size} is too small")
        self.path = path
        self.size = size
        self.discarded = 0
        self._fd = open_output(path, also_owner=also_owner, read_write=True)
        try:
            self._open()
        except BaseException:
            os.close(self._fd)
            raise

    def _open(self) -> None:
        raw = os.pread(self._fd, _HEADER.size, 0)
        if len(raw) == _HEADER.size:
            magic, size, head, tail = _HEADER.unpack(raw)
            if magic == MAGIC and size == self.size and 0 <= head - tail <= size:
                self.head, self.tail = head, tail
                if self._valid():
                    return
                self.discarded += head - tail
            elif magic == MAGIC:
                self.discarded += max(0, head - tail)
        os.ftruncate(self._fd, 0)  # a new, or unusable, spool: start empty (and sparse)
        os.ftruncate(self._fd, HEADER_SIZE + self.size)
        self.head = self.tail = 0
        self._write_header()

    def _valid(self) -> bool:
        pos = self.tail
        while pos < self.head:
            record = self._record_at(pos)
            if record is None:
                return False
            pos += _RECORD.size + len(record)
        return pos == self.head

    # -- the queue ------------------------------------------------------------------------------------------

    @property
    def used(self) -> int:
        """Bytes the queued records take (headers included)."""
        return self.head - self.tail

    def __len__(self) -> int:
        return self.used

    def push(self, payload: bytes) -> bool:
        """Append ``payload``; False (nothing written) when it does not fit in what is left."""
        need = _RECORD.size + len(payload)
        if need > self.size - self.used:
            return False
        self._write_at(self.head, _RECORD.pack(len(payload), zlib.crc32(payload)) + payload)
        self.head += need
        self._write_header()
        return True

    def peek(self, max_records: int) -> list[tuple[int, bytes]]:
        """Up to ``max_records`` of the oldest records, each with the position just after it (for ``pop``).
        A record that does not check out empties the queue (counted in ``discarded``)."""
        out = []
        pos = self.tail
        while pos < self.head and len(out) < max_records:
            record = self._record_at(pos)
            if record is None:
                self.discarded += self.head - pos
                self.head = pos
                self._write_header()
                break
            pos += _RECORD.size + len(record)
            out.append((pos, record))
        return out

    def pop(self, upto: int) -> None:
        """Forget the records before position ``upto`` (a position ``peek`` returned)."""
        if not self.tail <= upto <= self.head:
            raise ValueError(f"spool position {upto} is outside {self.tail}..{self.head}")
        self.tail = upto
        if self.tail == self.head:
            self.tail = self.head = 0  # empty: start again at the front (fewer wraps, a compact file)
        self._write_header()

    # -- the file -------------------------------------------------------------------------------------------

    def _record_at(self, pos: int) -> bytes | None:
        if self.head - pos < _RECORD.size:
            return None
        length, crc = _RECORD.unpack(self._read_at(pos, _RECORD.size))
        if length > self.head - pos - _RECORD.size:
            return None
        payload = self._read_at(pos + _RECORD.size, length)
        return payload if zlib.crc32(payload) == crc else None

    def _read_at(self, pos: int, n: int) -> bytes:
        start = pos % self.size
        first = min(n, self.size - start)
        data = os.pread(self._fd, first, HEADER_SIZE + start)
        if first < n:
            data += os.pread(self._fd, n - first, HEADER_SIZE)
        return data

    def _write_at(self, pos: int, data: bytes) -> None:
        start = pos % self.size
        first = min(len(data), self.size - start)
        _pwrite_all(self._fd, data[:first], HEADER_SIZE + start)
        if first < len(data):
            _pwrite_all(self._fd, data[first:], HEADER_SIZE)

    def _write_header(self) -> None:
        _pwrite_all(self._fd, _HEADER.pack(MAGIC, self.size, self.head, self.tail), 0)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    @property
    def closed(self) -> bool:
        return self._fd < 0


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n
