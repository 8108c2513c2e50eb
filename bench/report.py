"""From raw runs to figures: per (workload, subject) summaries, the targets, the markdown report and the
PNG plot.  ``summarize`` and ``targets`` are pure (dicts in, dicts out) and are what the tests pin.
"""
from __future__ import annotations

import json
import os

from . import stats
from .tracers import LATENCY_LOW, LIBRARY_LOW, LIBRARY_LOW_HANDOFF, LIBRARY_LOW_ONE_RING

MB = 1024.0  # kB per MB (VmHWM is in kB)
NEAR_ZERO_LOSS_PCT = 0.01  # a second, tolerant reading of the ladders: a few counted drops per 100,000


def _vals(runs: list[dict], key, scale: float = 1.0) -> list[float]:
    out = []
    for r in runs:
        v = key(r) if callable(key) else r.get(key)
        if v is not None:
            out.append(v * scale)
    return out


def summarize(trials: list[dict], kernel_trials: list[dict] | None = None) -> dict:
    """{workload: {subject: figures}} where each figure is stats.summarize of the successful runs.

    slowdown: each run's elapsed / the median elapsed of the no-tracer runs of the same workload.
    kernel_ns_per_run comes from ``kernel_trials`` (runs with bpf_stats on) when given, else from
    ``trials`` (reports made before the two were separated).
    """
    out: dict = {}
    by: dict = {}
    for t in trials:
        by.setdefault(t["workload"], {}).setdefault(t["subject"], []).append(t)
    for wl, subjects in by.items():
        base_runs = [r for r in subjects.get("none", []) if r.get("ok")]
        base = stats.median(_vals(base_runs, "elapsed_s"))
        base_cpu = stats.median(_vals(base_runs, "workload_cpu_s"))
        out[wl] = {}
        for subj, runs in subjects.items():
            ok = [r for r in runs if r.get("ok")]
            fig = {
                "runs": len(runs), "ok": len(ok),
                "errors": sorted({r["error"] for r in runs if r.get("error")}),
                "elapsed_s": stats.summarize(_vals(ok, "elapsed_s")),
                "rate": stats.summarize(_vals(ok, "rate")),
                "slowdown": stats.summarize([stats.ratio(r["elapsed_s"], base) for r in ok]),
                "cpu_slowdown": stats.summarize([stats.ratio(r["workload_cpu_s"], base_cpu) for r in ok
                                                 if r.get("workload_cpu_s") is not None]),
            }
            if subj != "none":
                fig.update(
                    loss_pct=stats.summarize(_vals(ok, "loss_pct")),
                    kernel_ns_per_run=stats.summarize(_vals(ok, lambda r: (r.get("kernel") or {}).get("ns_per_run"))),
                    cpu_us_per_event=stats.summarize(_vals(ok, "cpu_us_per_event")),
                    hwm_mb=stats.summarize(_vals(ok, "hwm_kb", 1 / MB)),
                    attach_wait_s=stats.summarize(_vals(ok, "attached_s")),
                )
            out[wl][subj] = fig
    if kernel_trials:
        for wl, subjects in out.items():
            for subj, fig in subjects.items():
                if subj == "none":
                    continue
                ok = [r for r in kernel_trials if r["workload"] == wl and r["subject"] == subj and r.get("ok")]
                fig["kernel_ns_per_run"] = stats.summarize(
                    _vals(ok, lambda r: (r.get("kernel") or {}).get("ns_per_run")))
    return out


def _median(summary: dict, wl: str, subj: str, fig: str):
    return (((summary.get(wl) or {}).get(subj) or {}).get(fig) or {}).get("median")


def _target(name: str, value, limit, ok, unit: str, note: str = "", status: str | None = None) -> dict:
    return {"target": name, "value": value, "limit": limit, "unit": unit,
            "status": status or ("n/a" if ok is None else ("met" if ok else "missed")), "note": note}


def _latency(latency: list[dict], subject: str, fig: str = "visible_us", pct: str = "p50"):
    for r in latency:
        if r["subject"] == subject and r.get("ok"):
            return (r.get(fig) or {}).get(pct)
    return None


def targets(summary: dict, ladders: list[dict], startup: list[dict], latency: list[dict] = ()) -> list[dict]:
    """The issue's targets, each with the measured value and met / missed / n/a (no measurement);
    "reported" rows are figures the issue asks to show beside a peer, without a limit."""
    res = []

    def cmp(a, b, f):
        return None if a is None or b is None else f(a, b)

    for wl in ("open", "exec", "exit"):
        ours = _median(summary, wl, "kestrel-raw", "kernel_ns_per_run")
        peer = _median(summary, wl, "libbpf-tools", "kernel_ns_per_run")
        res.append(_target(f"kernel time per program run ({wl}) <= libbpf-tools'", ours, peer,
                           cmp(ours, peer, lambda a, b: a <= b), "ns"))
    s = _median(summary, "open", "kestrel-raw", "slowdown")
    res.append(_target("openat+close loop slowdown with open events on", s, 1.3, cmp(s, 1.3, lambda a, b: a <= b), "x"))
    ours = _median(summary, "open", "kestrel-raw", "cpu_us_per_event")
    peer = _median(summary, "open", "libbpf-tools", "cpu_us_per_event")
    res.append(_target("collector CPU per delivered open event < opensnoop's", ours, peer,
                       cmp(ours, peer, lambda a, b: a < b), "us"))
    lads = [l for l in ladders if l["subject"] == "kestrel-raw" and l["workload"] == "open" and l.get("ok")]
    # a pass whose lowest rung already lost events counts as 0 events/s
    z = stats.median([l.get("max_zero_loss_rate") or 0.0 for l in lads])
    res.append(_target("open events/s delivered to JSON lines with 0 loss (2+ generators)", z, 100000,
                       None if not lads else z >= 100000, "ev/s",
                       "median over ladder passes of the highest offered rate below which loss stayed 0"))
    near = stats.median([stats.max_zero_loss_rate(((r["offered_rate"], r.get("loss_pct")) for r in l["rungs"]),
                                                  NEAR_ZERO_LOSS_PCT) or 0.0 for l in lads])
    res.append(_target(f"open events/s delivered with loss <= {NEAR_ZERO_LOSS_PCT}% on every rung up to it",
                       near if lads else None, None, None, "ev/s",
                       "median over ladder passes; what the strict row above misses by a few counted drops",
                       status="reported" if lads else None))
    st = stats.median(_vals([r for r in startup if r["subject"] == "kestrel-raw" and r.get("ok")], "attached_s"))
    res.append(_target("start to attached", st, 0.3, cmp(st, 0.3, lambda a, b: a < b), "s"))
    peaks = [((summary.get(wl) or {}).get("kestrel-raw") or {}).get("hwm_mb", {}).get("max") for wl in summary]
    peaks = [p for p in peaks if p is not None]
    peak = max(peaks) if peaks else None
    res.append(_target("peak RSS (largest over all runs)", peak, 40, cmp(peak, 40, lambda a, b: a < b), "MB"))
    ex = {l["subject"]: l for l in ladders if l["workload"] == "exec" and l.get("ok")}

    def rung_cpu(subj):
        l = ex.get(subj)
        if not l:
            return None
        top = [r for r in l["rungs"] if r["target_rate"] == 1600]
        return top[0]["cpu_pct"] if top else None

    ours, peer = rung_cpu("kestrel-raw"), rung_cpu("libbpf-tools")
    res.append(_target("collector CPU at 1,600 exec/s <= execsnoop's", ours, peer,
                       cmp(ours, peer, lambda a, b: a <= b), "% of a CPU"))
    s = _median(summary, "build", "kestrel-raw", "slowdown")
    res.append(_target("typical workload (gcc builds) slowdown, all four event types", s, 1.02,
                       cmp(s, 1.02, lambda a, b: a < b), "x"))
    c = _median(summary, "build", "kestrel-raw", "cpu_slowdown")
    res.append(_target("the same in the build's own CPU time (user + system)", c, 1.02,
                       cmp(c, 1.02, lambda a, b: a < b), "x"))
    lib = _latency(latency, LIBRARY_LOW, "kernel_to_visible_us")
    res.append(_target("low-latency mode, syscall to user space p50 (library, latency=\"low\": ts_mono_ns -> "
                       "event out of the collector's channel)", lib, 10, cmp(lib, 10, lambda a, b: a < b), "us",
                       "default library configuration: one ring per CPU (at most 4), deliver=\"events\""))
    one = _latency(latency, LIBRARY_LOW_ONE_RING, "kernel_to_visible_us")
    res.append(_target("the same with buffers=1, deliver=\"json\"", one, 10, cmp(one, 10, lambda a, b: a < b), "us"))
    hand = _latency(latency, LIBRARY_LOW_HANDOFF, "kernel_to_visible_us")
    res.append(_target("the same, stamped when the collector hands the parsed event to its channel (in user "
                       "space, before trio's switch to the consumer task)", hand, 10,
                       cmp(hand, 10, lambda a, b: a < b), "us", "default library configuration"))
    peer = _latency(latency, "libbpf-tools")
    for subj, what in (("kestrel-raw", "default mode (--latency batch)"), (LATENCY_LOW, "--latency low")):
        ours = _latency(latency, subj)
        res.append(_target(f"CLI {what}: openat -> JSON line readable from its stdout, p50, beside opensnoop's",
                           ours, peer, None, "us", status="reported" if ours is not None else None))
    return res


# -- rendering ---------------------------------------------------------------------------------------

def fmt_summary(fig: dict | None, digits: int = 2) -> str:
    """'median [min–max]' or '-'."""
    if not fig or fig.get("median") is None:
        return "-"
    m, lo, hi = fig["median"], fig["min"], fig["max"]
    f = f"{{:.{digits}f}}"
    if fig.get("n", 0) <= 1 or lo == hi:
        return f.format(m)
    return f"{f.format(m)} [{f.format(lo)}–{f.format(hi)}]"


def _fmt(v, digits=2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


FIGURES = [
    ("slowdown", "Workload slowdown vs no tracer (x)", 3),
    ("cpu_slowdown", "Workload CPU time vs no tracer (x; user + system of the workload's own processes, where "
     "the programs' time is charged)", 3),
    ("loss_pct", "Loss of the generator's own events (%)", 2),
    ("kernel_ns_per_run", "Kernel time per program run (ns, bpf_stats run_time_ns / run_cnt; runs of their own, see the method)", 0),
    ("cpu_us_per_event", "Collector CPU per delivered event (us, user+sys / all events delivered)", 2),
    ("hwm_mb", "Peak RSS (MB, VmHWM, summed over the subject's processes)", 1),
    ("rate", "Workload rate achieved (ops/s)", 0),
]


def markdown(report: dict) -> str:
    meta = report["meta"]
    summary = report["summary"]
    subjects = [s for s in ("none", "kestrel-raw", "libbpf-tools", "bpftrace")]
    lines = [f"# kestrel-raw benchmark ({meta['profile']})", "",
             f"Machine: kernel {meta['machine'].get('kernel')} {meta['machine'].get('machine')}, "
             f"{meta['machine'].get('cpus')} CPUs, load average at start {meta['machine'].get('loadavg_at_start')}; "
             f"{meta['machine'].get('bpftrace')}; libbpf-tools {meta['machine'].get('libbpf-tools')}; "
             f"run {meta['started']} for {meta['duration_s']:.0f} s; {meta['reps']} alternating runs per cell; "
             f"kestrel-raw at commit {meta.get('kestrel_commit')} (`{meta.get('kestrel_cmd')}`).",
             *([f"Note: {meta['note']}"] if meta.get("note") else []),
             "", "Cells: median [min–max] over the runs.  Method and meaning of each figure: bench/README.md.", ""]
    lines += ["## Targets", "", "| target | measured | limit / peer | status |", "|---|---|---|---|"]
    for t in report["targets"]:
        lines.append(f"| {t['target']} | {_fmt(t['value'])} {t['unit']} | {_fmt(t['limit'])} | {t['status']} |")
    lines.append("")
    workloads = [w for w in ("open", "exec", "exit", "connect", "build") if w in summary]
    for key, title, digits in FIGURES:
        lines += [f"## {title}", "", "| subject | " + " | ".join(workloads) + " |",
                  "|---|" + "---|" * len(workloads)]
        for s in subjects:
            if s == "none" and key not in ("slowdown", "cpu_slowdown", "rate"):
                continue
            if not any(s in summary[w] for w in workloads):
                continue
            cells = [fmt_summary((summary[w].get(s) or {}).get(key), digits) for w in workloads]
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        lines.append("")
    if report.get("ladders"):
        lines += ["## Rate ladders (delivered vs offered)", "",
                  "| workload | subject | pass | target rate | offered /s | delivered /s | loss % | collector CPU % | "
                  "CPU us/event |", "|---|---|---|---|---|---|---|---|---|"]
        for l in report["ladders"]:
            if not l.get("ok"):
                lines.append(f"| {l['workload']} | {l['subject']} | {l.get('rep', 0) + 1} | failed: "
                             f"{l.get('error', '')[:80]} | | | | | |")
                continue
            for r in l["rungs"]:
                lines.append(f"| {l['workload']} | {l['subject']} | {l.get('rep', 0) + 1} | {_fmt(r['target_rate'], 0)} | "
                             f"{_fmt(r['offered_rate'], 0)} | {_fmt(r.get('delivered_rate'), 0)} | "
                             f"{_fmt(r.get('loss_pct'))} | {_fmt(r.get('cpu_pct'), 1)} | "
                             f"{_fmt(r.get('cpu_us_per_event'))} |")
        lines.append("")
        lines += ["Highest offered rate with zero loss on every rung up to it (per pass): " + "; ".join(
            f"{l['workload']} {l['subject']} pass {l.get('rep', 0) + 1}: {_fmt(l.get('max_zero_loss_rate'), 0)}/s"
            for l in report["ladders"] if l.get("ok")), ""]
    if report.get("latency"):
        lines += ["## Latency at a low rate (syscall -> user space)", "",
                  "`openat` stamp: the generator's CLOCK_MONOTONIC right before each openat.  `ts_mono_ns`: "
                  "the event's kernel timestamp (bpf_ktime_get_ns in the program at sys_exit_openat, same "
                  "clock).  Receipt, for the CLI subjects and the peers: the harness's reader thread, blocked "
                  "on the subject's stdout pipe, stamps each chunk as it arrives (line-buffered stdio for the "
                  "peers; kestrel-raw writes its JSON lines itself: the default mode flushes every "
                  "--flush-interval, --latency low after every chunk).  For the library subject "
                  "(bench/lib_latency.py): a trio task in the collector's own process stamps each event as "
                  "it comes out of KestrelCollector's channel (deliver=\"events\", one ring per CPU up to 4, the defaults; or "
                  "deliver=\"json\" with 1 ring): no write, no pipe.  "
                  "CPU: the subject's CPU time during the generator's run / its duration.", "",
                  "| subject | receipt measured where | rate /s | events matched | openat stamp -> receipt "
                  "p50 / p90 / p99 us | ts_mono_ns -> receipt p50 / p90 / p99 us | CPU % of one core |",
                  "|---|---|---|---|---|---|---|"]

        def trio_(f):
            return " / ".join(_fmt(f.get(p), 0) for p in ("p50", "p90", "p99")) if f else "-"

        for r in report["latency"]:
            if not r.get("ok"):
                lines.append(f"| {r['subject']} | failed: {r.get('error', '')[:80]} | | | | | |")
                continue
            lines.append(f"| {r['subject']} | {r.get('measures', 'stdout pipe')} | {_fmt(r['rate'], 0)} | "
                         f"{r['matched']}/{r['ops']} | {trio_(r['visible_us'])} | "
                         f"{trio_(r.get('kernel_to_visible_us'))} | {_fmt(r.get('cpu_pct'), 1)} |")
        lines.append("")
        hop = report.get("trio_hop") or {}
        if hop.get("p50_us") is not None:
            lines += [f"trio alone (bench/lib_latency.py --hop, no kernel, no collector): one task's send_nowait "
                      f"+ two checkpoints -> another task holds the item: p50 {hop['p50_us']:.1f} / p90 "
                      f"{hop['p90_us']:.1f} / p99 {hop['p99_us']:.1f} us; one checkpoint "
                      f"{hop['checkpoint_us']:.1f} us.  That hop is in every \"out of the collector's channel\" "
                      "figure above and in none of the \"handed to the collector's channel\" ones.", ""]
        elif hop.get("error"):
            lines += [f"trio hop measurement failed: {hop['error']}", ""]
    if report.get("startup"):
        lines += ["## Start to attached (s)", "", "| subject | attached (first captured marker) | "
                  "first marker readable in the output |", "|---|---|---|"]
        for s in ("kestrel-raw", "libbpf-tools", "bpftrace"):
            runs = [r for r in report["startup"] if r["subject"] == s]
            if not runs:
                continue
            ok = [r for r in runs if r.get("ok")]
            if not ok:
                lines.append(f"| {s} | failed: {runs[0].get('error', '')[:80]} | |")
                continue
            lines.append(f"| {s} | {fmt_summary(stats.summarize(_vals(ok, 'attached_s')), 3)} | "
                         f"{fmt_summary(stats.summarize(_vals(ok, 'visible_s')), 3)} |")
        lines.append("")
    ps = report.get("parse_speed")
    if ps:
        lines += ["## Parse paths: us per record (bench/parse_speed.py)", ""]
        if ps.get("error"):
            lines += [f"failed: {ps['error']}", ""]
        else:
            lines += [f"One sample record per kind, best of 3 loops, Python {ps['python']}, n={ps['n']:,} "
                      "(the 100k events/s target leaves 10 us per event for everything).  construct: the "
                      "interpreted construct parser (the test oracle); compiled: the same Struct after "
                      ".compile(); struct: parse_record, struct formats derived from the schema; +normalize: "
                      "to a KestrelEvent through the record object; event_from_raw: the same event in one step "
                      "(the library path); encode_event: KestrelEvent -> JSON line "
                      "(json.dumps of the same dict for scale); event path: parse -> normalize -> "
                      "encode_event; fused: jsonl.encode_record(raw, wall), raw record straight to its JSON "
                      "line (the CLI's path); fused batch: one drain of 256 records encoded and joined into one "
                      "chunk, per record.  Every column up to here repeats one record, so jsonl's memos (the "
                      "text of who did it, per thread; of an open besides its time, per thread, path, flags and "
                      "result) always hit: their best case.  fused batch, distinct: every record misses them "
                      "(opens each of another path, the other kinds each of another thread): their worst.", "",
                      "| kind | " + " | ".join(ps["columns"]) + " |", "|---|" + "---|" * len(ps["columns"])]
            for kind, vals in ps["rows"].items():
                lines.append(f"| {kind} | " + " | ".join(f"{vals[c]:.2f}" for c in ps["columns"]) + " |")
            lines.append("")
    errs = [(w, s, e) for w in summary for s, f in summary[w].items() for e in f.get("errors", [])]
    if errs:
        lines += ["## Failed runs", ""] + [f"- {w} / {s}: {e[:300]}" for w, s, e in errs] + [""]
    return "\n".join(lines)


COLORS = {"kestrel-raw": "tab:blue", "libbpf-tools": "tab:orange", "bpftrace": "tab:green"}
MARKERS = {"kestrel-raw": "o", "libbpf-tools": "s", "bpftrace": "^"}


def plot(report: dict, path: str) -> bool:
    """delivered vs offered events/s per subject, one panel per ladder workload.  False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ladders = [l for l in report.get("ladders", []) if l.get("rungs")]
    workloads = sorted({l["workload"] for l in ladders}, key=lambda w: ("open", "exec").index(w) if w in ("open", "exec") else 9)
    if not workloads:
        return False
    fig, axes = plt.subplots(1, len(workloads), figsize=(6 * len(workloads), 5), squeeze=False)
    for ax, wl in zip(axes[0], workloads):
        top = 0
        for l in ladders:
            if l["workload"] != wl:
                continue
            xs = [r["offered_rate"] for r in l["rungs"] if r.get("delivered_rate") is not None]
            ys = [r["delivered_rate"] for r in l["rungs"] if r.get("delivered_rate") is not None]
            if xs:
                subj, rep = l["subject"], l.get("rep", 0)
                ax.plot(xs, ys, marker=MARKERS.get(subj, "o"), color=COLORS.get(subj), alpha=0.85,
                        linestyle="-" if rep == 0 else "--", label=f"{subj} (pass {rep + 1})")
                top = max(top, max(xs), max(ys))
        ax.plot([0, top], [0, top], linestyle=":", color="grey", label="no loss")
        ax.set_title(f"{wl}: events delivered vs offered (generator's own events)")
        ax.set_xlabel("offered (ops/s achieved by the generators)")
        ax.set_ylabel("delivered (events/s in the output)")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write(report: dict, out_dir: str) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "report.json"), "md": os.path.join(out_dir, "report.md"),
             "png": os.path.join(out_dir, "delivered_vs_offered.png")}
    with open(paths["json"], "w") as f:
        json.dump(report, f, indent=1, default=str)
        f.write("\n")
    with open(paths["md"], "w") as f:
        f.write(markdown(report))
        f.write("\n")
    if not plot(report, paths["png"]):
        paths["png"] = None
    return paths
