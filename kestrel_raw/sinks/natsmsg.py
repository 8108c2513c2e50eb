"""The messages kestrel-raw publishes to NATS JetStream, and the consumer's duplicate check (pure).

One message per batch of JSON lines as the collector hands them on (one ring-buffer drain: 1 to 256
events), not one per event: nats-py spends ~10 us of Python per message, which at 200,000 events/s would
take more CPU than the collector has (measured: see sinks/nats.py).  The payload is the JSON lines,
unchanged.  Headers:

    Nats-Msg-Id      HOST_ID.RUN.SEQ    JetStream drops a message whose id it saw in the stream's duplicate
                                        window (2 minutes by default): a batch sent again after a lost ack
                                        is stored once
    Kestrel-Host     the host name
    Kestrel-Host-Id  /etc/machine-id (the host name where there is none)
    Kestrel-Run      the collector's start time in ns: one run's sequence numbers never mix with another's
    Kestrel-Seq      the per-host sequence number of the first event in the message; its events are
                     SEQ, SEQ+1, ... SEQ+COUNT-1, numbered from 0 in each run
    Kestrel-Count    the number of events (lines) in it

A batch is always sent again exactly as it was (same lines, same numbers), so a consumer drops a
duplicate by its (host id, run, first sequence number): ``Dedup``.
"""
from __future__ import annotations

import bisect
import json
import socket
import struct
from dataclasses import dataclass

H_MSG_ID = "Nats-Msg-Id"
H_HOST = "Kestrel-Host"
H_HOST_ID = "Kestrel-Host-Id"
H_RUN = "Kestrel-Run"
H_SEQ = "Kestrel-Seq"
H_COUNT = "Kestrel-Count"
MACHINE_ID = "/etc/machine-id"

_BATCH = struct.Struct("<QQI")  # run, first sequence number, count: a batch's number as the spool keeps it


@dataclass(frozen=True)
class Batch:
    run: int
    seq: int
    count: int
    lines: bytes

    def pack(self) -> bytes:
        """The batch as a spool record."""
        return _BATCH.pack(self.run, self.seq, self.count) + self.lines

    @classmethod
    def unpack(cls, data: bytes) -> "Batch":
        run, seq, count = _BATCH.unpack_from(data)
        return cls(run, seq, count, bytes(data[_BATCH.size:]))


def host_identity() -> tuple[str, str]:
    """(host id, host name): the machine id from /etc/machine-id, else the host name."""
    name = socket.gethostname()
    try:
        with open(MACHINE_ID) as f:
            machine = f.read().strip()
    except OSError:
        machine = ""
    return machine or name, name


def headers(batch: Batch, host_id: str, host: str) -> dict[str, str]:
    return {H_MSG_ID: f"{host_id}.{batch.run}.{batch.seq}", H_HOST: host, H_HOST_ID: host_id,
            H_RUN: str(batch.run), H_SEQ: str(batch.seq), H_COUNT: str(batch.count)}


def origin(hdrs: dict[str, str] | None) -> tuple[str, str, int, int, int] | None:
    """(host id, host, run, first seq, count) of a message, or None when it is not one of ours."""
    if not hdrs:
        return None
    try:
        return (hdrs[H_HOST_ID], hdrs.get(H_HOST, ""), int(hdrs[H_RUN]), int(hdrs[H_SEQ]), int(hdrs[H_COUNT]))
    except (KeyError, ValueError):
        return None


class Dedup:
    """Which batches a consumer has seen, per (host id, run), as disjoint ranges of sequence numbers that
    merge when they touch: a consumer that starts in the middle of the stream, or gets a batch late (sent
    again from the spool after later ones), needs no start point, and memory stays one range per gap."""

    def __init__(self) -> None:
        self._starts: dict[tuple[str, int], list[int]] = {}
        self._ends: dict[tuple[str, int], list[int]] = {}
        self.duplicates = 0

    def first_time(self, host_id: str, run: int, seq: int, count: int) -> bool:
        """True the first time the batch (host id, run, seq..seq+count) is seen, False for a duplicate."""
        key = (host_id, run)
        starts = self._starts.setdefault(key, [])
        ends = self._ends.setdefault(key, [])
        end = seq + max(count, 1)
        i = bisect.bisect_right(starts, seq)  # ranges before i start at or before seq
        if (i and ends[i - 1] > seq) or (i < len(starts) and starts[i] < end):
            self.duplicates += 1
            return False
        if i and ends[i - 1] == seq:  # extends the range before it
            i -= 1
            ends[i] = end
        else:
            starts.insert(i, seq)
            ends.insert(i, end)
        if i + 1 < len(starts) and starts[i + 1] == ends[i]:  # and now touches the one after it
            ends[i] = ends.pop(i + 1)
            starts.pop(i + 1)
        return True


def with_host(line: bytes, host: str, seq: int) -> bytes:
    """A JSON line with ``"host"`` and ``"host_seq"`` added as its last keys (``line`` ends in ``}``)."""
    return line[:-1] + b',"host":%s,"host_seq":%d}' % (_json_string(host), seq)


def _json_string(text: str) -> bytes:
    return json.dumps(text).encode()
