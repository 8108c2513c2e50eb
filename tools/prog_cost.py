"""Kernel time per run of each collector program (bpf_stats), under a workload run in a child process.

    python3 tools/prog_cost.py [--events exec,open,connect,exit] [--rounds 5] [--workload open|fork|exec|chdir]

Loads and attaches the collector's programs in this process (the library, no privilege drop, events
drained and thrown away), turns on the kernel's run-time accounting (BPF_ENABLE_STATS) for the run, runs the
workload in a child (the collector ignores its own process), and prints run_cnt and ns per run for every
program that ran, per round, then the median of the rounds.  Needs root.  The machine is shared and noisy:
compare medians of rounds taken in the same sitting, never single runs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import trio

# This checkout's kestrel_raw, not an installed one (PYTHONPATH first: to measure another checkout).
sys.path.insert(0 if "PYTHONPATH" not in os.environ else 1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WORKLOADS = {
    # opens of one existing file: the open programs' common case
    "open": "import os\nfor _ in range(100000):\n    os.close(os.open('/etc/hostname', os.O_RDONLY))\n",
    # processes that fork and exit at once (fork, exit; the child's exit)
    "fork": "import os\nfor _ in range(2000):\n    pid = os.fork()\n    if pid == 0:\n        os._exit(0)\n"
            "    os.waitpid(pid, 0)\n",
    # fork + exec of /bin/true
    "exec": "import os\nfor _ in range(500):\n    pid = os.fork()\n    if pid == 0:\n"
            "        os.execv('/bin/true', ['true'])\n    os.waitpid(pid, 0)\n",
    # chdir back and forth
    "chdir": "import os\nfor _ in range(20000):\n    os.chdir('/usr/lib')\n    os.chdir('/tmp')\n",
}


async def one_round(events: str, workload: str) -> dict[str, tuple[int, int]]:
    from kestrel_raw import CollectorConfig, KestrelCollector
    from kestrel_raw.kernel import bpf
    from kestrel_raw.kernel.uapi import BPF_STATS_RUN_TIME

    send, recv = trio.open_memory_channel(1 << 16)
    collector = KestrelCollector(send, CollectorConfig(event_types=events.split(","), deliver="json",
                                                       queue_policy="drop"))
    collector.load()
    out: dict[str, tuple[int, int]] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(collector.start)

        async def drain():
            async for _ in recv:
                pass

        nursery.start_soon(drain)
        with bpf.enable_stats(BPF_STATS_RUN_TIME):
            before = {spec.name: prog.info() for spec, prog in collector._programs}
            await trio.to_thread.run_sync(
                lambda: subprocess.run([sys.executable, "-c", WORKLOADS[workload]], check=True))
            after = {spec.name: prog.info() for spec, prog in collector._programs}
        for name, info in after.items():
            runs = info.run_cnt - before[name].run_cnt
            ns = info.run_time_ns - before[name].run_time_ns
            if runs:
                out[name] = (runs, ns)
        collector.stop()
        nursery.cancel_scope.cancel()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", default="exec,open,connect,exit")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="open")
    args = ap.parse_args()
    per_prog: dict[str, list[float]] = {}
    for r in range(args.rounds):
        res = trio.run(one_round, args.events, args.workload)
        line = ", ".join(f"{name} {runs} runs {ns / runs:.0f} ns" for name, (runs, ns) in sorted(res.items()))
        print(f"round {r + 1}: {line}", flush=True)
        for name, (runs, ns) in res.items():
            per_prog.setdefault(name, []).append(ns / runs)
        time.sleep(0.5)
    print("median ns per run:", ", ".join(f"{name} {statistics.median(v):.0f}" for name, v in sorted(per_prog.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
