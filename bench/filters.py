#!/usr/bin/env python3
"""What a filter costs in the kernel (issue 15): the open programs' time per run for an open that a
path-prefix filter drops, beside one it delivers and one with no filter (the fast path); and the
openat+close loop's slowdown with a filter that drops the loop's own opens.

    sudo python3 bench/filters.py [--ops N] [--rounds R] [--json F] [--md F]

A collector (open events, no context) runs in this process with a reader draining, as in use.  The loop is
bench/gen's krgen opening one file (``open --path``) OPS times.  Cases, alternating within each round:

    none        no collector: the loop's own time
    nofilter    the collector with no filter: every open delivered (the filters' fast path)
    delivered   a path-prefix filter that includes the file's directory: evaluated, then delivered
    dropped     a path-prefix filter that excludes the file's directory: evaluated, dropped unwritten
    task        a filter on a task's key that drops the loop's opens (--exclude-comm krgen): tested right
                after the header in the exit program and before the entry program's copy (filter.apply_early),
                dropped before any path work

Kernel ns per run: run_time_ns / run_cnt of kr_openat, the exit program, from a second loop with bpf_stats
on (which adds two clock reads to every run).  Its tail-called second half (kr_open_fin: the opened file's
path walk, then the filters and the submit) runs inside its run and is counted there: the kernel keeps no
run stats for a program reached by tail call.  The entry program (kr_openat_e) is the same in every case and
shown apart.  Loop times are taken with bpf_stats off.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.append(os.path.dirname(BENCH_DIR))

import trio  # noqa: E402

from bench import host  # noqa: E402
from kestrel_raw.collector import KestrelCollector  # noqa: E402
from kestrel_raw.collector.filtering import FilterWriter  # noqa: E402
from kestrel_raw.config import CollectorConfig  # noqa: E402
from kestrel_raw.kernel import bpf  # noqa: E402
from kestrel_raw.kernel.uapi import BPF_STATS_RUN_TIME  # noqa: E402
from kestrel_raw.programs import filtermaps as fm  # noqa: E402
from kestrel_raw.spec import OPEN  # noqa: E402

CASES = ("none", "nofilter", "delivered", "dropped", "task")
GENERATOR_COMM = b"krgen"  # bench/gen/krgen.c, as the kernel keeps its name
PROGRAMS = ("kr_openat_e", "kr_openat")
TARGET_DIR = os.path.join(host.BUILD_DIR, "filter-target")
TARGET = os.path.join(TARGET_DIR, "f")
RING_BYTES = 1 << 26


def image(case: str) -> fm.Image:
    if case == "nofilter":
        return fm.Image(0, {}, {})
    if case == "task":
        comm = fm.KEY_COMM.pack(0, GENERATOR_COMM)
        return fm.Image(0, {OPEN.id: fm.CFG.pack(0, fm.KEY_BITS["comm"], 0, 0)},
                        {fm.MAP_FCOMM: {comm: fm.VALUE.pack(fm.F_EXCLUDE)}})
    prefix = (TARGET_DIR + "/").encode()
    key = fm.KEY_PATH.pack((1 + len(prefix)) * 8, 0, prefix)
    bit = fm.KEY_BITS["path"]
    if case == "delivered":
        return fm.Image(0, {OPEN.id: fm.CFG.pack(bit, 0, 0, 0)}, {fm.MAP_FPATH: {key: fm.VALUE.pack(fm.F_INCLUDE)}})
    return fm.Image(0, {OPEN.id: fm.CFG.pack(0, bit, 0, 0)}, {fm.MAP_FPATH: {key: fm.VALUE.pack(fm.F_EXCLUDE)}})


def loop_ns(krgen: str, ops: int) -> float:
    out = subprocess.run([krgen, "open", "--ops", str(ops), "--path", TARGET], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)["elapsed_ns"] / ops


async def measure(krgen: str, ops: int, rounds: int) -> dict:
    send, recv = trio.open_memory_channel(1 << 16)
    # One ring big enough for a loop's records (~150 bytes each), drained between loops: a full ring would
    # make a delivered open cheaper (a failed bpf_ringbuf_output copies nothing).
    c = KestrelCollector(send, CollectorConfig(event_types=("open",), context=False, status=False, buffers=1,
                                               buffer_size=RING_BYTES))
    c.load()
    writer = FilterWriter(c._maps)
    progs = {spec.name: prog for spec, prog in c._programs if spec.name in PROGRAMS}
    loops = {case: [] for case in CASES}
    runs = {case: {name: [] for name in PROGRAMS} for case in CASES[1:]}
    delivered = {case: [] for case in CASES[1:]}
    counters = {case: [] for case in CASES[1:]}

    def kernel_open() -> dict:
        return {k: sum(v) for k, v in c.stats().kernel["open"].items()}

    async def drained() -> None:
        """Until the reader has read everything the loops wrote (its count still for 0.3 s)."""
        last = -1
        while current[0] != last:
            last = current[0]
            await trio.sleep(0.3)

    async def consume():
        async for ev in recv:
            if ev.event_type_id == OPEN.id and ev.get("path") == TARGET:
                current[0] += 1

    current = [0]
    async with trio.open_nursery() as nursery:
        await nursery.start(c.start)
        nursery.start_soon(consume)
        for _ in range(rounds):
            for case in CASES:
                if case == "none":
                    # the collector's programs stay attached: "none" is measured before and after (below)
                    continue
                writer.write(image(case))
                await drained()
                current[0] = 0
                k0 = kernel_open()
                with host.bpf_stats("0"):
                    loops[case].append(await trio.to_thread.run_sync(loop_ns, krgen, ops))
                before = {n: bpf.prog_info(p.fd) for n, p in progs.items()}
                stats = bpf.enable_stats(BPF_STATS_RUN_TIME)
                try:
                    await trio.to_thread.run_sync(loop_ns, krgen, ops)
                finally:
                    stats.close()
                for n, p in progs.items():
                    info = bpf.prog_info(p.fd)
                    cnt = info.run_cnt - before[n].run_cnt
                    runs[case][n].append((info.run_time_ns - before[n].run_time_ns) / max(1, cnt))
                await drained()
                delivered[case].append(current[0])
                k1 = kernel_open()
                counters[case].append({k: k1[k] - k0[k] for k in ("filtered", "ringbuf_full")})
        c.stop()
        nursery.cancel_scope.cancel()  # the consumer: its channel stays open
    kernel = {kind: {k: sum(v) for k, v in counters.items()} for kind, counters in c.stats().kernel.items()}
    return {"loops": loops, "runs": runs, "delivered": delivered, "counters": counters,
            "kernel_open": kernel.get("open", {})}


def run(ops: int, rounds: int) -> dict:
    host.ensure_tracefs()
    krgen = host.build_generator()
    os.makedirs(TARGET_DIR, exist_ok=True)
    with open(TARGET, "w") as f:
        f.write("x\n")
    none_before = [loop_ns(krgen, ops) for _ in range(rounds)]
    result = trio.run(measure, krgen, ops, rounds)
    none_after = [loop_ns(krgen, ops) for _ in range(rounds)]
    loops = result["loops"]
    loops["none"] = none_before + none_after
    base = statistics.median(loops["none"])
    rows = []
    for case in CASES:
        med = statistics.median(loops[case])
        row = {"case": case, "loop_ns": round(med, 1), "ratio": round(med / base, 3),
               "loop_ns_runs": [round(x, 1) for x in loops[case]]}
        if case != "none":
            per = {n: round(statistics.median(v), 1) for n, v in result["runs"][case].items()}
            row["run_ns"] = per
            row["delivered_per_round"] = result["delivered"][case]  # both loops of a round: 2 * ops when all are
            row["kernel_per_round"] = result["counters"][case]
        rows.append(row)
    return {"ops": ops, "rounds": rounds, "machine": host.machine_facts(), "cases": rows,
            "kernel_open_counters": result["kernel_open"]}


def table(result: dict) -> str:
    lines = [f"{result['ops']:,} open+close per loop by krgen, median of {result['rounds']} rounds (none: "
             f"{2 * result['rounds']} loops, before and after); kernel ns per run from bpf_stats (a second loop "
             "per case).", "",
             "| case | ns per open+close | x none | kr_openat ns/run (with kr_open_fin) | kr_openat_e ns/run | "
             "delivered per round (2 loops) | filtered per round | ringbuf_full per round |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["cases"]:
        if r["case"] == "none":
            lines.append(f"| none | {r['loop_ns']:.0f} | 1.000 | - | - | - | - | - |")
            continue
        run_ns = r["run_ns"]
        lines.append(f"| {r['case']} | {r['loop_ns']:.0f} | {r['ratio']:.3f} | {run_ns['kr_openat']:.0f} | "
                     f"{run_ns['kr_openat_e']:.0f} | "
                     f"{', '.join(str(d) for d in r['delivered_per_round'])} | "
                     f"{', '.join(str(k['filtered']) for k in r['kernel_per_round'])} | "
                     f"{', '.join(str(k['ringbuf_full']) for k in r['kernel_per_round'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ops", type=int, default=200_000, help="opens per loop (default 200000)")
    p.add_argument("--rounds", type=int, default=3, help="rounds over the cases (default 3)")
    p.add_argument("--json", help="write the result as JSON to this file")
    p.add_argument("--md", help="write the table as Markdown to this file")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("needs root (BPF, tracefs, sysctl)")
    result = run(a.ops, a.rounds)
    text = table(result)
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    if a.md:
        with open(a.md, "w") as f:
            f.write("# Filters: kernel cost (bench/filters.py)\n\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
