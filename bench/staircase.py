#!/usr/bin/env python3
"""Where the open program's cost goes: the openat+close loop with the program cut after each piece.

    sudo python3 bench/staircase.py [--ops N] [--rounds R] [--json F]

Each stage is a program attached alone to syscalls:sys_exit_openat, built by the collector's own
ProgramBuilder from the same tracepoint format and BTF layout, with no reader draining during the loop (a
64 MiB ring takes every record; it is drained between runs).  Stages, each containing the one before:

    none        no program: the loop's own time
    empty       "r0 = 0; exit": the syscall slow path (TIF_SYSCALL_TRACEPOINT, paid by every syscall of
                every task) and the perf tracepoint's dispatch
    prologue    pid_tgid, the collector's own tgid, the peer filter (a hash lookup)
    header      scratch value, cpu, ktime, task fields (ppid, start time, uid, gid, comm)
    path        the saved registers and the path (bpf_probe_read_user_str)
    submit      the record written to the ring, never waking a reader (BPF_RB_NO_WAKEUP)
    full        the collector's program as it loads, with the default wakeup threshold (--wakeup-bytes:
                the default collector's, buffer_size / 8), not this run's big ring's

For each: the loop's time per open+close (median over rounds, alternating stages within a round, with
kernel.bpf_stats_enabled=0), its ratio to "none", and the program's kernel time per run
(run_time_ns / run_cnt from a second loop with bpf_stats on; that accounting adds two clock reads to every
run).  "full" minus "submit" is the cost of the wakeups themselves: each wakes with an irq_work, a self-IPI
charged to the traced syscall; with no reader the ring never drains, so every threshold crossing wakes.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
# For `bench` (and kestrel_raw when it is not installed); an installed or PYTHONPATH kestrel_raw comes first.
sys.path.append(os.path.dirname(BENCH_DIR))

import trio  # noqa: E402

from bench import host  # noqa: E402
from kestrel_raw.kernel import bpf
from kestrel_raw import programs
from kestrel_raw.spec import OPEN, OPEN_SYSCALL_OPENAT  # noqa: E402
from kestrel_raw.asm import BPF_ADD, BPF_DW, R0, R1, R2, R3, R8, R9, alu64_imm, call, exit_insn, ldx_mem  # noqa: E402
from kestrel_raw.asm import mov64_imm, mov64_reg  # noqa: E402
from kestrel_raw.kernel.attach import attach_tracepoint  # noqa: E402
from kestrel_raw.collector import KestrelCollector  # noqa: E402
from kestrel_raw.config import CollectorConfig  # noqa: E402
from kestrel_raw.maps import possible_cpus  # noqa: E402
from kestrel_raw.maps.ringbuf import RingBufReader  # noqa: E402
from kestrel_raw.kernel.prog import Program  # noqa: E402
from kestrel_raw.programs import open as open_  # noqa: E402
from kestrel_raw.programs.builder import ProgramBuilder  # noqa: E402
from kestrel_raw.kernel.tracefs import tracepoint_format  # noqa: E402
from kestrel_raw.kernel.uapi import BPF_STATS_RUN_TIME  # noqa: E402

STAGES = ("none", "empty", "prologue", "header", "path", "submit", "full")
RING_BYTES = 1 << 26


def stage_program(stage: str, fmt, layout, wakeup_bytes: int) -> list:
    """The instructions of ``stage`` (see the module docstring)."""
    if stage == "empty":
        return [mov64_imm(R0, 0), exit_insn()]
    threshold = wakeup_bytes if stage == "full" else -1  # -1: BPF_RB_NO_WAKEUP on every record
    b = ProgramBuilder("kr_stair", self_tgid=os.getpid(), nrings=1, wakeup_threshold=threshold, layout=layout)
    if stage in ("submit", "full"):
        return open_.build(b, fmt, layout, OPEN_SYSCALL_OPENAT)
    b.prologue()
    if stage == "prologue":
        return b.epilogue()
    b.scratch()
    b.header(OPEN, layout)
    if stage == "header":
        return b.epilogue()
    if stage != "path":
        raise ValueError(f"unknown stage {stage!r} (known: {', '.join(STAGES)})")
    b.pt_regs(R9)
    b.emit(mov64_reg(R1, R8), alu64_imm(BPF_ADD, R1, OPEN.path.offset), mov64_imm(R2, open_.PATH_READ),
           ldx_mem(BPF_DW, R3, R9, layout.syscall_args[1]), call("probe_read_user_str"))
    return b.epilogue()


OPEN_TARGET = os.path.join(host.BUILD_DIR, "open-target")  # the matrix's target (bench/trials.py)


def loop_ns(krgen: str, ops: int) -> float:
    """ns per open+close of one generator process opening OPEN_TARGET ``ops`` times."""
    out = subprocess.run([krgen, "open", "--ops", str(ops), "--path", OPEN_TARGET],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["elapsed_ns"] / ops


def run(ops: int, rounds: int, wakeup_bytes: int | None = None) -> dict:
    host.ensure_tracefs()
    krgen = host.build_generator()
    with open(OPEN_TARGET, "w") as f:
        f.write("x\n")
    send, _recv = trio.open_memory_channel(1)
    config = CollectorConfig(event_types=("open",), buffers=1, buffer_size=RING_BYTES)
    if wakeup_bytes is None:
        wakeup_bytes = CollectorConfig().wakeup_bytes
    collector = KestrelCollector(send, config)
    collector.load()  # the maps (and the real programs, loaded but never attached)
    maps = collector._maps
    fmt = tracepoint_format("syscalls", "sys_exit_openat")
    layout = programs.KernelLayout.from_btf(collector._load_btf())
    readers = [RingBufReader(ring) for ring in collector._rings]

    def drain() -> None:
        for reader in readers:
            while reader.drain(100_000):
                pass

    loop_times = {s: [] for s in STAGES}
    run_ns = {s: [] for s in STAGES if s != "none"}
    try:
        for _ in range(rounds):
            for stage in STAGES:
                if stage == "none":
                    with host.bpf_stats("0"):
                        loop_times[stage].append(loop_ns(krgen, ops))
                    continue
                insns = stage_program(stage, fmt, layout, wakeup_bytes)
                with Program(insns, maps=maps, name="kr_stair") as prog, \
                        attach_tracepoint(prog, "syscalls", "sys_exit_openat"):
                    with host.bpf_stats("0"):
                        loop_times[stage].append(loop_ns(krgen, ops))
                    drain()
                    stats = bpf.enable_stats(BPF_STATS_RUN_TIME)
                    try:
                        loop_ns(krgen, ops)
                    finally:
                        stats.close()
                    info = bpf.prog_info(prog.fd)
                    run_ns[stage].append(info.run_time_ns / max(1, info.run_cnt))
                    drain()
    finally:
        for reader in readers:
            reader.close()
        collector.stop()
    base = statistics.median(loop_times["none"])
    rows = []
    for stage in STAGES:
        med = statistics.median(loop_times[stage])
        rows.append({"stage": stage, "loop_ns": round(med, 1), "ratio": round(med / base, 3),
                     "loop_ns_runs": [round(x, 1) for x in loop_times[stage]],
                     "run_ns": round(statistics.median(run_ns[stage]), 1) if stage in run_ns else None})
    return {"ops": ops, "rounds": rounds, "cpus": len(possible_cpus()), "wakeup_bytes": wakeup_bytes,
            "machine": host.machine_facts(), "stages": rows}


def table(result: dict) -> str:
    lines = [f"{result['ops']:,} open+close per loop, median [min-max] of {result['rounds']} alternating rounds; "
             f"\"full\" wakes the reader every {result['wakeup_bytes']:,} bytes (nothing drains during a loop).",
             "", "| stage | ns per open+close | x none | kernel ns/run (bpf_stats) |", "|---|---|---|---|"]
    for r in result["stages"]:
        run_ns = "-" if r["run_ns"] is None else f"{r['run_ns']:.0f}"
        lines.append(f"| {r['stage']} | {r['loop_ns']:.0f} [{min(r['loop_ns_runs']):.0f}-{max(r['loop_ns_runs']):.0f}] "
                     f"| {r['ratio']:.3f} | {run_ns} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ops", type=int, default=300_000, help="opens per loop (default 300000)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds over the stages (default 5)")
    p.add_argument("--wakeup-bytes", type=int, help="the full program's wakeup threshold (default: the "
                   "collector's default)")
    p.add_argument("--json", help="also write the result as JSON to this file")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("needs root (BPF, tracefs, sysctl)")
    result = run(a.ops, a.rounds, a.wakeup_bytes)
    print(table(result))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
