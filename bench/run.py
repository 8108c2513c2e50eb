#!/usr/bin/env python3
"""Benchmark kestrel-raw against libbpf-tools, bpftrace and no tracer on this machine.

    python3 bench/run.py            # full run, ~15 min on a 2-core VM; report in bench/results/
    python3 bench/run.py --quick    # ~3 min; report in bench/results/quick/

Needs root (BPF, tracefs, sysctl, apt-get).  Installs what is missing: libbpf-tools, bpftrace, bpftool and
gcc with apt-get, matplotlib with pip (bench-only).  Writes report.json, report.md and
delivered_vs_offered.png.  See bench/README.md for the method and what each figure means.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import host, report, stats, tracers  # noqa: E402
from bench.trials import Bench, Load  # noqa: E402

PROFILES = {
    "full": dict(
        reps=5, drain=1.0,
        loads={"open": Load("open", 300_000), "exec": Load("exec", 1_000), "exit": Load("exec", 1_000),
               "connect": Load("connect", 30_000), "build": Load("build", 10, max_seconds=120)},
        open_ladder=[10_000, 25_000, 50_000, 100_000, 150_000, 200_000], open_ladder_s=2.0, open_procs=2,
        ladder_reps=2,
        exec_ladder=[100, 400, 1600], exec_ladder_s=3.0, exec_procs=4,
        latency_ops=1000, latency_rate=200, startup_reps=3, parse_n=50_000, kernel_reps=3),
    "quick": dict(
        reps=2, drain=0.5,
        loads={"open": Load("open", 100_000), "exec": Load("exec", 300), "exit": Load("exec", 300),
               "connect": Load("connect", 10_000), "build": Load("build", 3, max_seconds=60)},
        open_ladder=[25_000, 100_000], open_ladder_s=1.0, open_procs=2,
        ladder_reps=1,
        exec_ladder=[100, 400, 1600], exec_ladder_s=1.0, exec_procs=4,
        latency_ops=200, latency_rate=200, startup_reps=1, parse_n=10_000, kernel_reps=1),
}
WORKLOADS = ("open", "exec", "exit", "connect", "build")
PHASES = ("matrix", "kernel", "ladders", "latency", "startup", "parse")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short run (~3 min)")
    p.add_argument("--subjects", default=",".join(tracers.SUBJECTS),
                   help=f"comma-separated subset of {','.join(tracers.SUBJECTS)}")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated subset of {','.join(WORKLOADS)}")
    p.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}")
    p.add_argument("--reps", type=int, help="runs per (workload, subject), alternating")
    p.add_argument("--out", help="report directory (default bench/results, or bench/results/quick)")
    p.add_argument("--kestrel-src", metavar="DIR",
                   help="run the collector from this source tree (a checkout or `git worktree` of another "
                        "commit) instead of this repository's kestrel_raw/")
    p.add_argument("--kestrel-rev", metavar="REV",
                   help="run the collector from this commit of this repository (e.g. HEAD): its kestrel_raw/ "
                        "is exported with git archive into a scratch directory, and the report records the "
                        "commit; other engineers' uncommitted edits are not benchmarked")
    p.add_argument("--render", metavar="REPORT_JSON",
                   help="run nothing: rebuild report.md and the PNG from an existing report.json")
    p.add_argument("--note", default="", help="free text recorded in the report (e.g. what was benchmarked)")
    p.add_argument("--kestrel-cmd",
                   help="how to start the collector, before --events/--output "
                        f"(default: {shlex.quote(sys.executable)} -m kestrel_raw run)")
    a = p.parse_args(argv)
    if a.kestrel_rev and a.kestrel_src:
        p.error("--kestrel-rev and --kestrel-src are exclusive")
    a.kestrel_commit = None
    if a.kestrel_rev:
        a.kestrel_commit, a.kestrel_src = host.export_rev(a.kestrel_rev)
    a.library_cmd = f"{shlex.quote(sys.executable)} {shlex.quote(os.path.join(host.BENCH_DIR, 'lib_latency.py'))}"
    a.parse_cmd = f"{shlex.quote(sys.executable)} {shlex.quote(os.path.join(host.BENCH_DIR, 'parse_speed.py'))}"
    if a.kestrel_src:
        # the bench scripts import kestrel_raw from PYTHONPATH first (their own directory is bench/)
        env = f"env PYTHONPATH={shlex.quote(os.path.abspath(a.kestrel_src))} "
        a.library_cmd = env + a.library_cmd
        a.parse_cmd = env + a.parse_cmd
    if a.kestrel_cmd is None:
        if a.kestrel_src:
            # -P: no script directory on sys.path, so PYTHONPATH's tree wins over the working directory
            a.kestrel_cmd = (f"env PYTHONPATH={shlex.quote(os.path.abspath(a.kestrel_src))} "
                             f"{shlex.quote(sys.executable)} -P -m kestrel_raw run")
        else:
            a.kestrel_cmd = f"{shlex.quote(sys.executable)} -m kestrel_raw run"
    for name, val, allowed in (("subjects", a.subjects, tracers.SUBJECTS), ("workloads", a.workloads, WORKLOADS),
                               ("phases", a.phases, PHASES)):
        bad = [x for x in val.split(",") if x not in allowed]
        if bad:
            p.error(f"--{name}: unknown {', '.join(bad)}; choose from {', '.join(allowed)}")
    return a


def _term(signum, frame):
    raise SystemExit(f"stopped by signal {signum}")


def render(path: str) -> int:
    """Recompute summaries and targets from an existing report.json's raw runs and rewrite its report."""
    with open(path) as f:
        rep = json.load(f)
    rep["summary"] = report.summarize(rep["trials"])
    rep["targets"] = report.targets(rep["summary"], rep["ladders"], rep["startup"], rep.get("latency", []))
    paths = report.write(rep, os.path.dirname(os.path.abspath(path)))
    host.log(f"report: {paths['md']}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        return render(args.render)
    if os.geteuid() != 0:
        print("bench/run.py must run as root (BPF tracers, tracefs, sysctl, apt-get)", file=sys.stderr)
        return 2
    # A shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored across
    # exec: restore Python's handler so the tracers we start can be stopped with SIGINT like Ctrl-C.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGHUP, _term)
    profile_name = "quick" if args.quick else "full"
    prof = dict(PROFILES[profile_name])
    if args.reps is not None:
        prof["reps"] = args.reps
    subjects = args.subjects.split(",")
    workloads = args.workloads.split(",")
    phases = args.phases.split(",")
    out_dir = args.out or os.path.join(host.BENCH_DIR, "results", *(["quick"] if args.quick else []))

    t_start = time.monotonic()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    host.ensure_tracefs()
    missing = host.ensure_packages()
    if missing:
        host.log(f"still missing after apt-get: {', '.join(missing)} (subjects needing them will fail)")
    have_plot = host.ensure_matplotlib()
    krgen = host.build_generator()
    scratch = tempfile.mkdtemp(prefix="kr-bench-")
    bench = Bench(krgen, scratch, drain=prof["drain"], kestrel_argv=tuple(shlex.split(args.kestrel_cmd)))
    failures: dict[str, int] = {}
    disabled: dict[str, str] = {}
    result = {"trials": [], "kernel_trials": [], "ladders": [], "latency": [], "startup": [], "parse_speed": None}

    def note(rec: dict) -> None:
        """Give up on a subject after two runs in a row that could not even start it."""
        s = rec["subject"]
        if rec.get("ok") or s == "none":
            failures[s] = 0
            return
        err = rec.get("error", "")
        if "exited with status" in err or "not attached" in err:
            failures[s] = failures.get(s, 0) + 1
            if failures[s] >= 2:
                disabled[s] = err
                host.log(f"giving up on {s} for this run: {err[:200]}")

    def run_cells(names_all: list[str], reps: int, bpf_stats: bool, into: list, label: str) -> None:
        """Every workload under every subject of ``names_all``, ``reps`` alternating runs each."""
        for wl in workloads:
            names = [s for s in names_all if tracers.subject_for(s, wl, bench.kestrel_argv) is not None]
            for i, name in enumerate(stats.alternate(names, reps)):
                if name in disabled:
                    continue
                rec = bench.trial(tracers.subject_for(name, wl, bench.kestrel_argv), wl, prof["loads"][wl],
                                  bpf_stats=bpf_stats)
                rec["rep"] = i // len(names)
                into.append(rec)
                note(rec)
                host.log(f"{label}{wl:8s} {name:13s} rep {rec['rep']}: "
                         f"{'ok' if rec.get('ok') else 'FAILED'} elapsed={rec.get('elapsed_s', 0):.3f}s "
                         f"loss={rec.get('loss_pct')} cpu_us/ev={rec.get('cpu_us_per_event')} "
                         f"ns/run={(rec.get('kernel') or {}).get('ns_per_run')}")

    try:
        with host.bpf_stats():
            if "matrix" in phases:
                run_cells(subjects, prof["reps"], False, result["trials"], "")
            tracer_names = [s for s in subjects if s != "none"]
            if "kernel" in phases:
                # Kernel time per program run, in runs of its own with the accounting on (the matrix runs
                # have it off: it adds two clock reads to every program run of every subject).
                run_cells(tracer_names, prof["kernel_reps"], True, result["kernel_trials"], "kernel ")
            if "ladders" in phases:
                for wl, rates, secs, procs in (("open", prof["open_ladder"], prof["open_ladder_s"], prof["open_procs"]),
                                               ("exec", prof["exec_ladder"], prof["exec_ladder_s"], prof["exec_procs"])):
                    if wl not in workloads:
                        continue
                    for i, name in enumerate(stats.alternate(tracer_names, prof["ladder_reps"])):
                        if name in disabled:
                            continue
                        subj = tracers.subject_for(name, wl, bench.kestrel_argv)
                        rec = bench.ladder(subj, wl, rates, secs, procs)
                        rec["rep"] = i // len(tracer_names)
                        result["ladders"].append(rec)
                        note(rec)
                        host.log(f"ladder {wl} {name}: max zero-loss rate {rec.get('max_zero_loss_rate')}")
            if "latency" in phases and "open" in workloads:
                for subj in tracers.latency_subjects(bench.kestrel_argv, tuple(shlex.split(args.library_cmd))):
                    base = "kestrel-raw" if subj.name.startswith("kestrel-raw") else subj.name
                    if base not in tracer_names or subj.name in disabled:
                        continue
                    rec = bench.latency(subj, prof["latency_ops"], prof["latency_rate"])
                    result["latency"].append(rec)
                    note(rec)
                    host.log(f"latency {subj.name}: visible {rec.get('visible_us')} "
                             f"kernel {rec.get('kernel_to_visible_us')} cpu {rec.get('cpu_pct')}%")
                if "kestrel-raw" in tracer_names:
                    result["trio_hop"] = host.trio_hop([*shlex.split(args.library_cmd), "--hop"])
                    host.log(f"trio channel hop alone: {result['trio_hop']}")
            if "startup" in phases and "open" in workloads:
                for name in stats.alternate(tracer_names, prof["startup_reps"]):
                    if name in disabled:
                        continue
                    rec = bench.startup(tracers.subject_for(name, "open", bench.kestrel_argv))
                    result["startup"].append(rec)
                    note(rec)
                    host.log(f"startup {name}: attached {rec.get('attached_s')}")
        if "parse" in phases:
            result["parse_speed"] = host.parse_speed(shlex.split(args.parse_cmd), prof["parse_n"])
            host.log(f"parse speed: {result['parse_speed'].get('rows', result['parse_speed'])}")
    finally:
        tracers.kill_all()
        shutil.rmtree(scratch, ignore_errors=True)
        if args.kestrel_rev:
            shutil.rmtree(args.kestrel_src, ignore_errors=True)

    summary = report.summarize(result["trials"], result["kernel_trials"])
    rep = {
        "meta": {"profile": profile_name, "started": started, "duration_s": time.monotonic() - t_start,
                 "reps": prof["reps"], "machine": host.machine_facts(), "subjects": subjects,
                 "workloads": workloads, "phases": phases, "kestrel_cmd": args.kestrel_cmd,
                 "kestrel_commit": args.kestrel_commit or host.git_commit(args.kestrel_src or tracers.REPO),
                 "kestrel_rev": args.kestrel_rev, "note": args.note,
                 "disabled_subjects": disabled,
                 "loads": {k: v.__dict__ for k, v in prof["loads"].items()},
                 "profile_settings": {k: v for k, v in prof.items() if k != "loads"}},
        "summary": summary,
        "targets": report.targets(summary, result["ladders"], result["startup"], result["latency"]),
        **result,
    }
    paths = report.write(rep, out_dir)
    if not have_plot:
        host.log("matplotlib unavailable: no PNG written")
    host.log(f"report: {paths['md']} ({rep['meta']['duration_s']:.0f} s)")
    print(open(paths["md"]).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
