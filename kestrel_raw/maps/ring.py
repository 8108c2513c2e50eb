"""The BPF ring-buffer consumer algorithm, sans-IO: a cursor over memory, no fd, no mmap, no trio.

The kernel lays a ``BPF_MAP_TYPE_RINGBUF`` out as three parts (kernel/bpf/ringbuf.c):

- the consumer page, whose first 8 bytes are ``consumer_pos`` (written by us, read by the kernel);
- the producer page, whose first 8 bytes are ``producer_pos`` (written by the kernel, read by us);
- the data area of ``size`` bytes (a power of two), mapped twice in a row, so that a record that runs past
  the end of the area is readable as one contiguous piece at ``offset .. offset + len`` within ``2 * size``.

Positions only grow; a record lives at ``pos & (size - 1)``.  Each record starts with an 8-byte header:
``u32 len`` (bits 0..29 the payload length, bit 31 BUSY while the producer still writes it, bit 30
DISCARD when the producer dropped it) and ``u32 pg_off`` (the kernel's own bookkeeping, unused here).
The next record starts at ``pos + roundup_len(len)``: header plus payload rounded up to 8 bytes.

The algorithm is libbpf's ``ringbuf_process_ring`` (and cilium/ebpf ``ringbuf/ring.go``), reorganised for
batches: read ``producer_pos`` once, walk the committed headers up to it (stop at a BUSY one, skip DISCARD
ones), copy the payloads out, and only then publish the new ``consumer_pos`` once for the whole batch.
Publishing after the copy is what lets the producer reuse the space safely.

Memory ordering.  The kernel pairs its ``smp_store_release(producer_pos)`` and the ``xchg`` that commits a
header with an acquire load on our side, and reads ``consumer_pos`` expecting a store-release from us.
This module never issues the loads itself through anything but ``struct`` on the buffers it is given, so:

- every 8-byte position and every 4-byte header length is read and written with a *native* ``struct``
  format (``"=Q"`` would not do: CPython assembles standard-size integers byte by byte, which can tear;
  native formats ``memcpy`` the value, which compiles to one aligned load or store);
- between the phases of a batch (positions -> headers -> payloads -> publish) the cursor calls ``fence``,
  the hook the caller supplies.  On x86_64 (TSO: loads are not reordered with loads, stores are not
  reordered with earlier loads) plain aligned loads and stores already have acquire and release semantics
  and ``fence`` is None.  On weakly ordered CPUs (arm64) the caller passes a full barrier; grouping the
  loads by phase makes it cost three barriers per batch instead of two per record.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable

from kestrel_raw.errors import RecordError

# From include/uapi/linux/bpf.h (the anonymous enum after ``struct bpf_ringbuf``... ``BPF_RINGBUF_*``).
BPF_RINGBUF_BUSY_BIT = 1 << 31
BPF_RINGBUF_DISCARD_BIT = 1 << 30
BPF_RINGBUF_HDR_SZ = 8

# Payload length mask: the bits of the header ``len`` that are not flags.
RINGBUF_LEN_MASK = ~(BPF_RINGBUF_BUSY_BIT | BPF_RINGBUF_DISCARD_BIT) & 0xFFFFFFFF

# Native formats on purpose: see "Memory ordering" above.
_POS = struct.Struct("@Q")
_LEN = struct.Struct("@I")

Fence = Callable[[], None]


def roundup_len(hdr_len: int) -> int:
    """Bytes a record occupies in the ring: header plus payload, rounded up to 8 (flag bits ignored)."""
    return ((hdr_len & RINGBUF_LEN_MASK) + BPF_RINGBUF_HDR_SZ + 7) & ~7


def check_ring_size(size: int) -> None:
    """Raise ``ValueError`` unless ``size`` can be a ring's data area (a power of two, at least 8)."""
    if size < BPF_RINGBUF_HDR_SZ or size & (size - 1):
        raise ValueError(f"ring data size {size} is not a power of two of at least {BPF_RINGBUF_HDR_SZ}")


@dataclass(frozen=True, slots=True)
class RingStatistics:
    """What a cursor has done so far.

    ``records`` and ``bytes`` count delivered records and their payload bytes; ``discarded`` counts records
    the producer dropped; ``resets`` counts times the cursor found a corrupt header or impossible positions
    and jumped to ``producer_pos`` (losing what lay between); ``last_error`` says why, the latest time.
    """

    records: int = 0
    discarded: int = 0
    bytes: int = 0
    resets: int = 0
    last_error: RecordError | None = None


class RingCursor:
    """Consumes records from ring-buffer memory.

    ``consumer`` is a writable buffer whose first 8 bytes are ``consumer_pos``; ``producer`` a buffer whose
    first 8 bytes are ``producer_pos``; ``data`` a buffer of at least ``2 * size`` bytes holding the data
    area twice (as the kernel maps it).  They may be ``mmap`` objects, ``bytearray`` or ``memoryview``.
    ``fence`` is called where an acquire or release barrier is needed (None on x86_64; see module doc).
    ``copy_from``: where payloads are copied from, when ``data`` is a view of it starting at ``copy_base``
    (the ``mmap`` object itself: slicing an mmap makes the bytes in one step, ~60 ns a record less than a
    memoryview slice and ``tobytes``).
    """

    def __init__(self, consumer, producer, data, size: int, *, fence: Fence | None = None, copy_from=None,
                 copy_base: int = 0) -> None:
        check_ring_size(size)
        self._data = memoryview(data)
        if self._data.nbytes < 2 * size:
            raise ValueError(f"ring data buffer holds {self._data.nbytes} bytes; a {size}-byte ring needs "
                             f"{2 * size} (the data area mapped twice)")
        if memoryview(consumer).readonly:
            raise ValueError("the consumer position buffer must be writable")
        self._consumer = consumer
        # consumer_pos is published with ONE 8-byte store through this view.  struct.pack_into would not
        # do: CPython zeroes the field before it writes the value (memset, then memcpy), and a producer
        # that reads consumer_pos in between sees 0, takes the ring for full (prod_pos - 0 > size) and
        # drops its record; that cost a few events a second under load.
        self._consumer_word = memoryview(consumer).cast("B")[:8].cast("Q")
        self._producer = producer
        self._size = size
        self._mask = size - 1
        self._fence = fence
        self._cons_pos = _POS.unpack_from(consumer, 0)[0]
        self._records = self._discarded = self._bytes = self._resets = 0
        self._copy_from = copy_from
        self._copy_base = copy_base
        self._last_error: RecordError | None = None

    @property
    def size(self) -> int:
        return self._size

    @property
    def consumer_pos(self) -> int:
        """The position this cursor has published (everything before it has been consumed)."""
        return self._cons_pos

    def producer_pos(self) -> int:
        return _POS.unpack_from(self._producer, 0)[0]

    def available(self) -> int:
        """Bytes between the consumer and producer positions (committed, busy and discarded records)."""
        return self.producer_pos() - self._cons_pos

    def probe(self) -> Callable[[], bool]:
        """A zero-argument "is anything past consumer_pos?" for busy polling: one load of producer_pos
        and one compare, no checks (``drain`` does those)."""
        unpack, producer = _POS.unpack_from, self._producer
        return lambda: unpack(producer, 0)[0] != self._cons_pos

    def statistics(self) -> RingStatistics:
        return RingStatistics(self._records, self._discarded, self._bytes, self._resets, self._last_error)

    def release(self) -> None:
        """Drop the references to the buffers (an ``mmap`` cannot close while a view of it exists)."""
        self._data.release()
        self._consumer_word.release()
        self._consumer = self._producer = self._copy_from = None

    # -- the batch -------------------------------------------------------------------------------------

    def _scan(self, max_records: int | None, copy: bool = False) -> tuple[list, int, int, int]:
        """Walk committed headers from ``consumer_pos``.

        Returns ``(found, end, discarded, nbytes)``: for each record to deliver ``(position, payload offset
        in data, length, discarded records seen before it)`` (or, with ``copy`` on a CPU that needs no
        fence, the payload's bytes, copied in the walk itself: the busiest loop of the collector, where a
        tuple per record and a second loop cost ~0.1 us a record), the position after the last record
        walked, the discarded records walked and the payload bytes.  Stops at a BUSY record, at
        ``producer_pos``, or after ``max_records`` records.  A header that cannot be right (payload longer
        than the ring, or a record running past ``producer_pos``) resets the cursor to ``producer_pos``:
        records before it are still delivered.
        """
        fence = self._fence
        prod_pos = _POS.unpack_from(self._producer, 0)[0]
        cons_pos = self._cons_pos
        if fence is not None:
            fence()  # acquire producer_pos: the header loads below must not see older memory
        if not 0 <= prod_pos - cons_pos <= self._size:
            return [], self._reset(prod_pos, f"positions out of range: consumer_pos {cons_pos}, "
                                             f"producer_pos {prod_pos}, ring size {self._size}"), 0, 0
        found: list = []
        add = found.append
        discarded = nbytes = 0
        data, mask, limit = self._data, self._mask, self._size - BPF_RINGBUF_HDR_SZ
        unpack_len = _LEN.unpack_from
        # x86_64 (no fence): loads are not reordered with loads, so a payload can be copied right after
        # its header; weakly ordered CPUs copy after one barrier for the whole batch (drain).
        copy_now = copy and fence is None
        raw, base = self._copy_from, self._copy_base
        budget = -1 if max_records is None else max_records
        while cons_pos < prod_pos and budget:
            off = cons_pos & mask
            hdr_len = unpack_len(data, off)[0]
            if hdr_len & BPF_RINGBUF_BUSY_BIT:
                break
            length = hdr_len & RINGBUF_LEN_MASK
            end = cons_pos + ((length + BPF_RINGBUF_HDR_SZ + 7) & ~7)
            if length > limit or end > prod_pos:
                cons_pos = self._reset(prod_pos, f"corrupt record header at position {cons_pos}: length "
                                                 f"{length} (header 0x{hdr_len:08x}) does not fit before "
                                                 f"producer_pos {prod_pos} in a {self._size}-byte ring")
                break
            if hdr_len & BPF_RINGBUF_DISCARD_BIT:
                discarded += 1
            else:
                off += BPF_RINGBUF_HDR_SZ
                if not copy_now:
                    add((cons_pos, off, length, discarded))
                elif raw is not None:
                    add(raw[base + off:base + off + length])
                else:
                    add(data[off:off + length].tobytes())
                nbytes += length
                budget -= 1
            cons_pos = end
        if fence is not None and found:
            fence()  # acquire the committed headers: the payload loads must not see older memory
        return found, cons_pos, discarded, nbytes

    def _reset(self, prod_pos: int, why: str) -> int:
        self._resets += 1
        self._last_error = RecordError(f"ring buffer: {why}; skipped to producer_pos {prod_pos}")
        return prod_pos

    def _publish(self, pos: int) -> None:
        if pos == self._cons_pos:
            return
        if self._fence is not None:
            self._fence()  # release: every payload copy completes before the kernel may overwrite it
        self._consumer_word[0] = pos
        self._cons_pos = pos

    def drain(self, max_records: int | None = None) -> list[bytes]:
        """Copy out the committed records (at most ``max_records``) and publish ``consumer_pos`` once."""
        found, end, discarded, nbytes = self._scan(max_records, copy=True)
        if self._fence is not None:
            data = self._data
            found = [data[off:off + n].tobytes() for _, off, n, _ in found]
        self._records += len(found)
        self._bytes += nbytes
        self._discarded += discarded
        self._publish(end)
        return found

    def process(self, callback: Callable[[memoryview], object], max_records: int | None = None) -> int:
        """Call ``callback(view)`` on each committed record, without copying; return how many.

        ``view`` is valid only during the call (it is released, and the space handed back to the kernel,
        afterwards): copy what you keep.  If the callback raises, the records before it and the one it
        failed on count as consumed (so a poison record cannot wedge the ring), ``consumer_pos`` is
        published up to there, and the exception propagates.
        """
        found, end, discarded, _ = self._scan(max_records)
        data = self._data
        done = 0
        try:
            for _, off, n, _ in found:
                done += 1
                self._records += 1
                self._bytes += n
                with data[off:off + n] as view:
                    callback(view)
        except BaseException:
            if done < len(found):
                # The records after the failing one stay in the ring for the next call.
                end, discarded = found[done][0], found[done][3]
            raise
        finally:
            self._discarded += discarded
            self._publish(end)
        return done


class ReplayRing:
    """A ring in private memory holding one committed record, which ``replay`` makes unread again.

    For busy polling: draining it runs the very code that drains a kernel ring (``RingCursor.drain``), so
    a poller can keep that path warm between records.  Measured here, the first drain of a real record
    after milliseconds of spinning took ~9 us instead of ~1.5 us; the parse and normalize after it, run on
    this ring's record, stay warm too.  No kernel, no fd: the producer side is this object.

    The record comes out as ``payload`` followed by zeros up to a power-of-two span (so that it lies at
    offset 0 at every position); record parsers ignore a record's tail, as the ring's own padding needs.
    """

    def __init__(self, payload: bytes) -> None:
        span = 1 << (roundup_len(len(payload)) - 1).bit_length()
        data = bytearray(2 * span)
        for base in (0, span):
            _LEN.pack_into(data, base, span - BPF_RINGBUF_HDR_SZ)
            data[base + BPF_RINGBUF_HDR_SZ:base + BPF_RINGBUF_HDR_SZ + len(payload)] = payload
        self._producer = bytearray(_POS.size)
        self._producer_word = memoryview(self._producer).cast("Q")
        self._span = span
        self.cursor = RingCursor(bytearray(_POS.size), self._producer, data, span)

    def replay(self) -> RingCursor:
        """Commit the record once more (one unread record, never more) and return the cursor to drain."""
        self._producer_word[0] = self.cursor.consumer_pos + self._span
        return self.cursor
