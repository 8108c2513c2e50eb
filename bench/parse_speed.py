"""Microseconds per record: construct (interpreted, compiled) vs the struct fast path, and end to end.

    python bench/parse_speed.py [--n 200000]

End to end is parse_record -> normalize -> encode_event for an open record (the 100k events/s target
allows 10 us per event for everything, ring-buffer draining included).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from kestrel_raw.events import normalize  # noqa: E402
from kestrel_raw.jsonl import encode_event  # noqa: E402
from kestrel_raw.records import (  # noqa: E402
    KIND_CONNECT, KIND_EXEC, KIND_EXIT, KIND_OPEN, RECORD_STRUCTS, build_record, parse_record,
    parse_record_construct,
)

COMMON = dict(cpu=2, ts_ns=123_456_789_000, start_ns=99_000_000, pid=31337, tid=31338, ppid=1, uid=1000,
              gid=1000, comm=b"python3")
SAMPLES = {
    "open": build_record(KIND_OPEN, **COMMON, ret=3, dfd=-100, open_flags=0o2100000, mode=0,
                         path=b"/usr/lib/python3.11/__pycache__/os.cpython-311.pyc"),
    "exec": build_record(KIND_EXEC, **COMMON, filename=b"/usr/bin/ls", args=b"ls\0--color=auto\0-la\0/tmp\0",
                         args_total=25),
    "connect": build_record(KIND_CONNECT, **COMMON, ret=0, fd=4, addrlen=16,
                            addr=b"\x02\x00\x01\xbb\x5d\xb8\xd8\x22" + bytes(8)),
    "exit": build_record(KIND_EXIT, **COMMON, exit_code=0x100),
}
KINDS = {"open": KIND_OPEN, "exec": KIND_EXEC, "connect": KIND_CONNECT, "exit": KIND_EXIT}


def per_call_us(fn, n: int) -> float:
    best = float("inf")
    for _ in range(3):       # best of 3: the VM is noisy
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    n = ap.parse_args().n
    rows = []
    for name, data in SAMPLES.items():
        compiled = RECORD_STRUCTS[KINDS[name]].compile()
        mv = memoryview(data)
        event = normalize(parse_record(data), 1_700_000_000_000_000_000)
        obj = json.loads(encode_event(event))
        rows.append((
            name,
            per_call_us(lambda: parse_record_construct(data), max(n // 50, 100)),
            per_call_us(lambda: compiled.parse(data), max(n // 10, 100)),
            per_call_us(lambda: parse_record(mv), n),
            per_call_us(lambda: normalize(parse_record(mv), 0), n),
            per_call_us(lambda: encode_event(event), n),
            per_call_us(lambda: json.dumps(obj).encode(), n),
            per_call_us(lambda: encode_event(normalize(parse_record(mv), 0)), n),
        ))
    head = ("kind", "construct", "compiled", "fast", "+normalize", "encode", "json.dumps", "end-to-end")
    print(f"{sys.version.split()[0]}, us per record, best of 3")
    print("".join(f"{h:>12}" for h in head))
    for name, *vals in rows:
        print(f"{name:>12}" + "".join(f"{v:12.2f}" for v in vals))
    e2e = dict((r[0], r[-1]) for r in rows)["open"]
    print(f"open end to end: {1e6 / e2e:,.0f} events/s in one process")


if __name__ == "__main__":
    main()
