"""Microseconds per record for each way of turning a raw ring-buffer record into output.

    python bench/parse_speed.py [--n 100000] [--json]

Columns (one sample record of each kind, best of 3 loops; the 100k events/s target allows 10 us per event
for everything, ring-buffer draining included):

- construct: ``parse_record_construct`` (construct's interpreted parser, the test oracle);
- compiled: the same construct Struct after ``.compile()``;
- struct: ``parse_record``, the struct fast path whose formats are derived from the schema;
- +normalize: ``normalize(parse_record(raw))``, a KestrelEvent through the record object;
- event_from_raw: the same KestrelEvent in one step (the library's deliver="events" path);
- encode_event: a KestrelEvent to its JSON line; json.dumps: the stdlib on the same dict, for scale;
- event path: parse_record -> normalize -> encode_event, what the CLI did before the fused path;
- fused: ``kestrel_raw.codec.jsonl.encode_record(raw, wall)``, raw record straight to its JSON line (no
  event object; what ``kestrel-raw run`` does now);
- fused batch: ``encode_records`` on one ring-buffer drain of 256 records, one chunk, per record (the
  collector's deliver="json" batch: one channel op and one write per drain).  The records of a batch come
  from one thread, so its header text is formatted once (jsonl's per-thread memo): the case of one busy
  process; records of 256 different threads cost about the "fused" figure each.
- fused batch, distinct: the same, but every record misses the memo its line would come from: opens
  each of another path (jsonl keeps an open's text per thread, path, flags and result), the other kinds
  each of another thread (jsonl keeps the text of who did it per thread); taken in turn from a pool four
  times larger than the memos.  The worst case for the memos, where the columns before it (one record
  repeated) show their best.

Imports kestrel_raw from PYTHONPATH when it is there (bench/run.py points it at the benchmarked commit),
else from this repository.
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time

try:
    import kestrel_raw  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from kestrel_raw import spec  # noqa: E402
from kestrel_raw.codec import generate  # noqa: E402
from kestrel_raw.codec.jsonl import encode_event, encode_record, encode_records  # noqa: E402
from kestrel_raw.codec.normalize import event_from_raw, normalize  # noqa: E402
from kestrel_raw.codec.records import parse_record  # noqa: E402
from kestrel_raw.codec.schema import RECORD_STRUCTS, build_record, parse_record_construct  # noqa: E402

KIND_EXEC, KIND_OPEN, KIND_CONNECT, KIND_EXIT = (k.id for k in (spec.EXEC, spec.OPEN, spec.CONNECT, spec.EXIT))
COMMON = dict(cpu=2, ts_ns=123_456_789_000, start_ns=99_000_000, pid=31337, tid=31338, ppid=1, uid=1000,
              gid=1000, comm=b"python3")
SAMPLES = {
    "open": build_record(KIND_OPEN, **COMMON, ret=3, dfd=-100, flags=0o2100000, mode=0,
                         path=b"/usr/lib/python3.11/__pycache__/os.cpython-311.pyc"),
    "exec": build_record(KIND_EXEC, **COMMON, filename=b"/usr/bin/ls", args=b"ls\0--color=auto\0-la\0/tmp\0",
                         args_total=25),
    "connect": build_record(KIND_CONNECT, **COMMON, ret=0, fd=4, addrlen=16,
                            addr=b"\x02\x00\x01\xbb\x5d\xb8\xd8\x22" + bytes(8)),
    "exit": build_record(KIND_EXIT, **COMMON, exit_code=0x100),
}
KINDS = {"open": KIND_OPEN, "exec": KIND_EXEC, "connect": KIND_CONNECT, "exit": KIND_EXIT}
BATCH = 256  # kestrel_raw.collector.BATCH_RECORDS: records per drain
WALL = 1_700_000_000_000_000_000
COLUMNS = ("construct", "compiled", "struct", "+normalize", "event_from_raw", "encode_event", "json.dumps", "event path",
           "fused", "fused batch", "fused batch, distinct")


def distinct_pool(name: str) -> list[bytes]:
    """Records of kind ``name`` that miss jsonl's memos when taken in turn: opens of one thread, each of
    another path; records of other kinds, each of another thread."""
    size = 4 * max(generate.WHO_MEMO_MAX, generate.LINE_MEMO_MAX)
    base = SAMPLES[name]
    out = []
    for i in range(size):
        if name == "open":
            out.append(base.replace(b"os.cpython", b"%010d" % i))  # same length: path_len holds
        else:
            rec = bytearray(base)
            struct.pack_into("<L", rec, spec.OPEN.pid.offset, 100_000 + i)
            struct.pack_into("<L", rec, spec.OPEN.tid.offset, 100_000 + i)
            out.append(bytes(rec))
    return out


def per_call_us(fn, n: int, per: int = 1) -> float:
    """Best of 3 timings of ``n`` calls of ``fn``, in us per call / ``per``."""
    best = float("inf")
    for _ in range(3):       # best of 3: the VM is noisy
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - t0)
    return best / n / per * 1e6


def measure(n: int = 100_000) -> dict:
    """{"python": version, "n": n, "columns": COLUMNS, "rows": {kind: {column: us per record}}}."""
    rows = {}
    for name, data in SAMPLES.items():
        compiled = RECORD_STRUCTS[KINDS[name]].compile()
        mv = memoryview(data)
        event = normalize(parse_record(data), WALL)
        obj = json.loads(encode_event(event))
        batch = [data] * BATCH
        if encode_record(data, WALL) != encode_event(event):
            raise AssertionError(f"{name}: the fused path and the event path disagree")
        if event_from_raw(data, WALL) != event:
            raise AssertionError(f"{name}: event_from_raw and normalize(parse_record()) disagree")
        vals = (
            per_call_us(lambda: parse_record_construct(data), max(n // 50, 100)),
            per_call_us(lambda: compiled.parse(data), max(n // 10, 100)),
            per_call_us(lambda: parse_record(mv), n),
            per_call_us(lambda: normalize(parse_record(mv), WALL), n),
            per_call_us(lambda: event_from_raw(mv, WALL), n),
            per_call_us(lambda: encode_event(event), n),
            per_call_us(lambda: json.dumps(obj).encode(), n),
            per_call_us(lambda: encode_event(normalize(parse_record(mv), WALL)), n),
            per_call_us(lambda: encode_record(mv, WALL), n),
            per_call_us(lambda: encode_records(batch, WALL), max(n // BATCH, 10), BATCH),
        )
        pool = distinct_pool(name)
        batches = [pool[i:i + BATCH] for i in range(0, len(pool), BATCH)]
        nxt = iter(batches * (max(n // BATCH, 10) // len(batches) + 2) * 3).__next__
        vals += (per_call_us(lambda: encode_records(nxt(), WALL), max(n // BATCH, 10), BATCH),)
        rows[name] = dict(zip(COLUMNS, vals))
    return {"python": sys.version.split()[0], "n": n, "columns": list(COLUMNS), "rows": rows}


def render(result: dict) -> str:
    widths = [max(15, len(c) + 2) for c in result["columns"]]
    lines = [f"Python {result['python']}, us per record, best of 3",
             f"{'kind':>15}" + "".join(f"{c:>{w}}" for c, w in zip(result["columns"], widths))]
    for name, vals in result["rows"].items():
        lines.append(f"{name:>15}" + "".join(f"{vals[c]:{w}.2f}" for c, w in zip(result["columns"], widths)))
    fused = result["rows"]["open"]["fused batch"]
    lines.append(f"open, fused batch: {1e6 / fused:,.0f} records/s in one process")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    a = ap.parse_args(argv)
    result = measure(a.n)
    print(json.dumps(result) if a.json else render(result))


if __name__ == "__main__":
    main()
