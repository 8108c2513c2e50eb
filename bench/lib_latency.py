#!/usr/bin/env python3
"""A minimal library consumer for the latency phase: KestrelCollector in-process, receipt stamped on arrival.

    python3 bench/lib_latency.py --output F [--latency low|batch] [--deliver events|json] [--buffers N]
                                 [--stamp channel|handoff]

Runs the collector for open events and reads its channel in a trio task; right after each item comes out
of the channel it reads CLOCK_MONOTONIC (time.monotonic_ns()).  So ``receipt - ts_mono_ns`` is the time
from the kernel program's bpf_ktime_get_ns (at sys_exit_openat) to the moment a consumer in the collector's
process holds the event: ring buffer, poller, parse, channel.  No file write, no pipe, no other process.

``--stamp handoff`` stamps instead when the collector hands the parsed, normalized event to its channel
(the send side is wrapped): the event is in user space, in hand, and what is left is trio's task switch
to the consumer (``bench/run.py``'s report measures that hop alone too).

Stops on SIGINT/SIGTERM, then writes ``<receipt_ns> <JSON line>`` per received event to F (encoding is
done after the run, so it costs nothing on the measured path).  Imports kestrel_raw from PYTHONPATH when
it is there (the harness points it at the benchmarked commit), else from this repository.
"""
from __future__ import annotations

import argparse
import json
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
from kestrel_raw.codec.jsonl import encode_event  # noqa: E402


class StampingSend:
    """The collector's send channel, stamping each item as the collector hands it over (accepted ones)."""

    def __init__(self, inner, out: list, clock) -> None:
        self._inner, self._out, self._clock = inner, out, clock

    def send_nowait(self, item) -> None:
        now = self._clock()
        self._inner.send_nowait(item)
        self._out.append((now, item))

    async def send(self, item) -> None:
        now = self._clock()
        await self._inner.send(item)
        self._out.append((now, item))


async def run(output: str, latency: str, deliver: str, buffers: int | None, stamp: str = "channel") -> None:
    config = CollectorConfig(event_types=("open",), latency=latency, deliver=deliver,
                             **({"buffers": buffers} if buffers else {}))
    send, recv = trio.open_memory_channel(config.queue_size)
    received: list[tuple[int, object]] = []
    clock = time.monotonic_ns
    collector = KestrelCollector(StampingSend(send, received, clock) if stamp == "handoff" else send, config)
    collector.load()
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(collector.start)

                async def on_signal():
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        return

                async def consume():
                    append = received.append if stamp == "channel" else (lambda _item: None)
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


async def hop(n: int = 5000) -> dict:
    """trio alone: one task does send_nowait + two checkpoints (what the collector's low-latency poller
    does after a delivery), another stamps each item as it comes out of the channel."""
    send, recv = trio.open_memory_channel(100)
    lat: list[int] = []
    clock = time.monotonic_ns

    async def consumer():
        async for t in recv:
            lat.append(clock() - t)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        await trio.sleep(0.05)
        t0 = time.perf_counter()
        for _ in range(n):
            await trio.lowlevel.checkpoint()
        checkpoint_us = (time.perf_counter() - t0) / n * 1e6
        for _ in range(n):
            send.send_nowait(clock())
            await trio.lowlevel.checkpoint()
            await trio.lowlevel.checkpoint()
        await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    lat.sort()
    return {"n": len(lat), "p50_us": lat[len(lat) // 2] / 1000, "p90_us": lat[len(lat) * 9 // 10] / 1000,
            "p99_us": lat[len(lat) * 99 // 100] / 1000, "checkpoint_us": checkpoint_us}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", help="where to write the receipts (required unless --hop)")
    p.add_argument("--hop", action="store_true",
                   help="measure trio's task-to-task channel hop alone (no collector) and print it as JSON")
    p.add_argument("--latency", choices=("batch", "low"), default="low")
    p.add_argument("--deliver", choices=("events", "json"), default="events")
    p.add_argument("--buffers", type=int, help="ring buffers (CollectorConfig.buffers; default: its default)")
    p.add_argument("--stamp", choices=("channel", "handoff"), default="channel",
                   help="stamp receipt as the item comes out of the channel (default), or as the collector "
                        "hands it to the channel")
    a = p.parse_args(argv)
    if a.hop:
        print(json.dumps(trio.run(hop)))
        return 0
    if not a.output:
        p.error("--output is required")
    trio.run(run, a.output, a.latency, a.deliver, a.buffers, a.stamp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
