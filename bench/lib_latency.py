#!/usr/bin/env python3
"""A minimal library consumer for the latency phase: KestrelCollector in-process, receipt stamped on arrival.

    python3 bench/lib_latency.py --output F [--latency low|batch] [--deliver events|json] [--buffers N]

Runs the collector for open events and reads its channel in a trio task; right after each item comes out
of the channel it reads CLOCK_MONOTONIC (time.monotonic_ns()).  So ``receipt - ts_mono_ns`` is the time
from the kernel program's bpf_ktime_get_ns (at sys_exit_openat) to the moment a consumer in the collector's
process holds the event: ring buffer, poller, parse, channel.  No file write, no pipe, no other process.

Stops on SIGINT/SIGTERM, then writes ``<receipt_ns> <JSON line>`` per received event to F (encoding is
done after the run, so it costs nothing on the measured path).  Imports kestrel_raw from PYTHONPATH when
it is there (the harness points it at the benchmarked commit), else from this repository.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time

try:
    import kestrel_raw  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import trio  # noqa: E402

from kestrel_raw.collector import KestrelCollector  # noqa: E402
from kestrel_raw.config import CollectorConfig  # noqa: E402
from kestrel_raw.jsonl import encode_event  # noqa: E402


async def run(output: str, latency: str, deliver: str, buffers: int | None) -> None:
    config = CollectorConfig(event_types=("open",), latency=latency, deliver=deliver,
                             **({"buffers": buffers} if buffers else {}))
    send, recv = trio.open_memory_channel(config.queue_size)
    collector = KestrelCollector(send, config)
    collector.load()
    received: list[tuple[int, object]] = []
    clock = time.monotonic_ns
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(collector.start)

                async def on_signal():
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        return

                async def consume():
                    append = received.append
                    async for item in recv:
                        append((clock(), item))

                nursery.start_soon(on_signal)
                nursery.start_soon(consume)
    finally:
        collector.stop()
    with open(output, "w") as f:
        for now, item in received:
            if deliver == "json":
                for line in item.splitlines():
                    f.write(f"{now} {line.decode()}\n")
            else:
                f.write(f"{now} {encode_event(item).decode().rstrip()}\n")
    print(collector.stats().summary(), file=sys.stderr)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", required=True)
    p.add_argument("--latency", choices=("batch", "low"), default="low")
    p.add_argument("--deliver", choices=("events", "json"), default="events")
    p.add_argument("--buffers", type=int, help="ring buffers (CollectorConfig.buffers; default: its default)")
    a = p.parse_args(argv)
    trio.run(run, a.output, a.latency, a.deliver, a.buffers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
