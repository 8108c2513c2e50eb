#!/usr/bin/env python3
"""Does an output cost the events?  The open ladder with kestrel-raw as the bench runs it (JSON lines to a
file) and with ``--nats URL --subject S --metrics ADDR`` (a 3-node JetStream cluster on loopback, a stream
with 3 replicas), alternating; then a py-spy profile of each at one rate.

    sudo python3 bench/sinks.py --kestrel-rev HEAD     # ~4-10 min on a 2-core VM -> bench/results/sinks.{json,md}

See bench/README.md ("Outputs: NATS and metrics") for the method and what each figure means.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import host, natscluster, outputs, stats, tracers  # noqa: E402
from bench.trials import Bench  # noqa: E402

FILE = "file"  # kestrel-raw as bench/run.py runs it: --output FILE
NATS = "nats+metrics"  # --nats URL --subject S --metrics ADDR (no file)
STREAM = "KRBENCH"
SUBJECT_PREFIX = "krbench"
# the metrics read after each rung (cumulative values; the report gives each rung's difference)
KEPT_METRICS = ("kestrel_events_total", "kestrel_events_lost_total", "kestrel_records_total",
                "kestrel_output_events_total", "kestrel_output_dropped_total", "kestrel_nats_spool_bytes",
                "kestrel_nats_connected", "process_resident_memory_bytes", "process_cpu_seconds_total")
# frames the profile summary looks for (inclusive share of samples): (label, substring of a frame)
PROFILE_PARTS = (
    ("trio thread: poll_ring (ring read, parse, hand-off)", "kestrel_raw/collector/poll.py"),
    ("trio thread: JSON encode (Delivery._encode_batch)", "_encode_batch"),
    ("trio thread: write_events (the outputs' send)", "write_events"),
    ("trio thread: JsonlSink (file write)", "kestrel_raw/sinks/jsonl.py"),
    ("trio thread: NatsSink.send (queue + wake the NATS thread)", "NatsSink.send"),
    ("trio thread: metrics snapshot (kestrel_raw/metrics.py)", "kestrel_raw/metrics.py"),
    ("trio thread: epoll wait (trio get_events)", "EpollIOManager.get_events"),
    ("NATS thread: NatsSink._pump", "NatsSink._pump"),
    ("NATS thread: _publish_one (js.publish_async)", "NatsSink._publish_one"),
    ("NATS thread: natsmsg.headers", "kestrel_raw/sinks/natsmsg.py"),
    ("NATS thread: nats-py _flusher (socket writes)", "Client._flusher"),
    ("NATS thread: nats-py _read_loop (acks in: parse)", "Client._read_loop"),
    ("NATS thread: nats-py _process_msg (an ack's future)", "Client._process_msg"),
    ("NATS thread: asyncio select (waiting)", "BaseSelectorEventLoop._process_events"),
    ("metrics thread: serve_forever", "serve_forever"),
    ("metrics thread: prometheus_client", "prometheus_client/"),
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rates", default="50000,100000,200000,300000,400000",
                   help="offered open rates of the ladder, total ops/s")
    p.add_argument("--seconds", type=float, default=2.0, help="seconds per rung")
    p.add_argument("--procs", type=int, default=2, help="generator processes per rung")
    p.add_argument("--passes", type=int, default=2, help="ladders per subject, alternating")
    p.add_argument("--drain", type=float, default=1.0, help="seconds after each rung for the collector to catch up")
    p.add_argument("--scrape-rate", type=float, default=200_000,
                   help="the rung during whose load the metrics endpoint is scraped once")
    p.add_argument("--profile-rate", type=float, default=200_000, help="offered rate of the profile runs (0: none)")
    p.add_argument("--profile-seconds", type=float, default=5.0)
    p.add_argument("--out", default=os.path.join(host.BENCH_DIR, "results"))
    p.add_argument("--kestrel-rev", metavar="REV", help="benchmark this commit's kestrel_raw/ (git archive)")
    p.add_argument("--note", default="", help="free text recorded in the report (the run's conditions)")
    p.add_argument("--render", metavar="SINKS_JSON", help="run nothing: rewrite the .md from this JSON")
    p.add_argument("--analysis", metavar="FILE",
                   help="with --render: store FILE's text (the reading of the numbers) in the JSON and the .md")
    return p.parse_args(argv)


def _term(signum, frame):
    raise SystemExit(f"stopped by signal {signum}")


# -- metrics ----------------------------------------------------------------------------------------------------

def scrape(port: int, timeout: float = 10.0) -> dict:
    """One GET of /metrics, parsed with prometheus_client's text parser: {"ok", "families", "samples",
    "seconds", "values": {sample name{labels}: value} of KEPT_METRICS}; {"ok": False, "error"} if it fails."""
    from prometheus_client.parser import text_string_to_metric_families

    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
            text = r.read().decode()
        seconds = time.monotonic() - t0
        families = list(text_string_to_metric_families(text))
    except Exception as e:  # the check is that it works: record why it did not
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    values = {}
    n = 0
    for fam in families:
        for s in fam.samples:
            n += 1
            if s.name in KEPT_METRICS:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                values[f"{s.name}{{{labels}}}"] = s.value
    return {"ok": True, "seconds": seconds, "bytes": len(text), "families": len(families), "samples": n,
            "values": values}


def metric(values: dict, name: str, **labels) -> float:
    key = f"{name}{{{','.join(f'{k}={v}' for k, v in sorted(labels.items()))}}}"
    return values.get(key, 0.0)


def collector_counts(values: dict) -> dict:
    """The collector's own counts in one scrape (cumulative)."""
    return {"delivered_open": metric(values, "kestrel_events_total", type="open"),
            "ringbuf_full": metric(values, "kestrel_events_lost_total", type="open", cause="ringbuf_full"),
            "prog_missed": metric(values, "kestrel_events_lost_total", type="open", cause="prog_missed"),
            "user_dropped": metric(values, "kestrel_events_lost_total", type="all", cause="user_dropped"),
            "nats_published": metric(values, "kestrel_output_events_total", output="nats"),
            "nats_dropped": metric(values, "kestrel_output_dropped_total", output="nats"),
            "nats_spool_bytes": metric(values, "kestrel_nats_spool_bytes"),
            "rss_bytes": metric(values, "process_resident_memory_bytes")}


# -- one ladder -------------------------------------------------------------------------------------------------

def read_rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Run:
    """One ladder of one subject: its command, and the hooks that read the NATS servers' CPU, the collector's
    RSS and (nats+metrics) the metrics endpoint around each rung."""

    def __init__(self, name: str, index: int, base: tuple[str, ...], cluster: natscluster.NatsCluster,
                 scratch: str, scrape_rate: float, seconds: float) -> None:
        self.name = name
        self.cluster = cluster
        self.scrape_rate = scrape_rate
        self.seconds = seconds
        self.subject_name = f"{SUBJECT_PREFIX}.run{index}"
        self.port = None
        self.during: dict | None = None
        self._timer: threading.Timer | None = None
        self._nats_cpu0 = 0.0
        self.ready_s: float | None = None
        if name == FILE:
            self.subject = tracers.subject_for("kestrel-raw", "open", base)
        else:
            self.port = natscluster._free_port()
            spool = os.path.join(scratch, f"spool-{index}")
            argv = (*base, "--events", "open", "--nats", ",".join(cluster.urls), "--subject", self.subject_name,
                    "--nats-buffer", spool, "--metrics", f"127.0.0.1:{self.port}")
            # No --output: NATS is the output.  Its stdout (nothing) goes to the harness's output file.
            self.subject = tracers.Subject(NATS, (tracers.ProcSpec("kestrel-raw", "kestrel", argv),))

    def wait_ready(self, running, timeout: float = 60.0) -> float:
        """Seconds until the collector's status event is out (in its output file, or counted by its metrics):
        then its start-up (context seed, privilege drop) is over and its pollers run.  Programs that have
        run (the harness's "attached") are not enough: in a trial run the first rung's events went missing
        while the collector was still starting."""
        t0 = time.monotonic()
        while True:
            died = running.dead()
            if died:
                raise RuntimeError(died)
            if self.port is None:
                try:
                    with open(running.outputs[0], "rb") as f:
                        if b'{"type":"status"' in f.read(1 << 16):
                            return time.monotonic() - t0
                except FileNotFoundError:
                    pass
            else:
                s = scrape(self.port, timeout=2.0)
                if s["ok"] and metric(s["values"], "kestrel_events_total", type="status") >= 1:
                    return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"no status event after {timeout:.0f} s")
            time.sleep(0.1)

    def before_rung(self, running, rate: float) -> None:
        if self.ready_s is None:
            self.ready_s = self.wait_ready(running)
            time.sleep(0.5)
        self._nats_cpu0 = self.cluster.cpu_s()
        if self.port is not None and rate == self.scrape_rate:
            def during():
                self.during = scrape(self.port) | {"rate": rate, "at_s": self.seconds / 2}
            self._timer = threading.Timer(self.seconds / 2, during)
            self._timer.start()

    def after_rung(self, running, rung: dict) -> None:
        if self._timer is not None:
            self._timer.join()
            self._timer = None
        rung["nats_server_cpu_s"] = self.cluster.cpu_s() - self._nats_cpu0
        rung["nats_server_cpu_pct"] = stats.cpu_pct(rung["nats_server_cpu_s"], rung["elapsed_s"])
        rung["rss_kb"] = read_rss_kb(running.pids[0])
        if self.port is not None:
            s = scrape(self.port)
            rung["scrape_ok"] = s["ok"]
            if s["ok"]:
                rung["collector_counts"] = collector_counts(s["values"])


def nats_delivered(run: Run, rec: dict, target: str) -> dict:
    """What the stream holds of this run's subject, deduplicated by (host id, run, first sequence number),
    counted per generator pid; fills each rung's delivered / loss from it."""
    from kestrel_raw.sinks.natsmsg import Dedup, origin

    pids = frozenset(p for r in rec["rungs"] for p in r["pids"])
    by_pid = {p: 0 for p in pids}
    dedup = Dedup()
    tally = collections.Counter()

    def on_message(headers, payload):
        o = origin(headers)
        if o is None:
            tally["foreign"] += 1
            return
        host_id, _host, run_no, seq, count = o
        tally["messages"] += 1
        if not dedup.first_time(host_id, run_no, seq, count):
            tally["duplicate_messages"] += 1
            return
        lines = outputs.count_open_lines(payload, pids, target, by_pid)
        tally["events"] += lines
        if lines != count:
            tally["count_mismatch"] += 1

    read = natscluster.drain_subject(run.cluster.urls, STREAM, run.subject_name, on_message)
    for r in rec["rungs"]:
        own = sum(by_pid[p] for p in r["pids"])
        r["delivered_file"] = r.get("delivered")  # the harness's count of the (empty) stdout file
        r["delivered"] = own
        r["delivered_rate"] = own / r["elapsed_s"]
        r["loss_pct"] = stats.loss_pct(r["ops"], own)
        r["cpu_us_per_event"] = stats.per_event(r["cpu_s"] * 1e6, own)
    rec["max_zero_loss_rate"] = stats.max_zero_loss_rate((r["offered_rate"], r["loss_pct"]) for r in rec["rungs"])
    return read | dict(tally)


def busiest(n: int = 6) -> dict:
    """The machine before a run: load average and the processes using the most CPU (ps's %CPU is over each
    process's life), for the report's conditions."""
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    ps = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu", "--no-headers"], capture_output=True,
                        text=True, timeout=10).stdout.splitlines()[:n]
    return {"loadavg": load, "top": [line.strip() for line in ps]}


def ladder(bench: Bench, run: Run, rates, seconds, procs) -> dict:
    before = busiest()
    rec = bench.ladder(run.subject, "open", rates, seconds, procs, before_rung=run.before_rung,
                       after_rung=run.after_rung)
    rec["subject"] = run.name
    rec["ready_s"] = run.ready_s
    rec["machine_before"] = before
    if run.name == NATS:
        rec["stream_subject"] = run.subject_name
        rec["scrape_during_load"] = run.during
        outs = next((outputs.parse_kestrel_outputs(e["stderr"]) for e in rec.get("exits", [])), None)
        rec["kestrel_outputs"] = outs
        if rec.get("rungs") and all("pids" in r for r in rec["rungs"]):
            try:
                rec["stream"] = nats_delivered(run, rec, bench.open_target)
            except Exception as e:
                rec["stream"] = {"error": f"{type(e).__name__}: {e}"}
                rec["ok"] = False
    rec["max_zero_loss_rate_001"] = stats.max_zero_loss_rate(
        ((r["offered_rate"], r.get("loss_pct")) for r in rec.get("rungs", [])), max_loss_pct=0.01)
    return rec


# -- profile ----------------------------------------------------------------------------------------------------

def profile(bench: Bench, run: Run, rate: float, seconds: float, procs: int, scratch: str) -> dict:
    """py-spy (sampling, --nonblocking: the collector is never paused) over ``seconds`` of load at ``rate``:
    inclusive share of samples per thread and per PROFILE_PARTS, and the top frames per thread."""
    from bench.trials import Load

    rec: dict = {"subject": run.name, "rate": rate, "ok": False}
    workdir = tempfile.mkdtemp(prefix=f"prof-{run.name}-", dir=scratch)
    raw = os.path.join(workdir, "pyspy.txt")
    running = None
    spy = None
    try:
        running = tracers.start(run.subject, workdir)
        bench.wait_attached(running, "open")
        run.wait_ready(running)
        time.sleep(0.5)
        spy = subprocess.Popen(["py-spy", "record", "--nonblocking", "--threads", "-r", "100", "-f", "raw",
                                "-d", str(int(seconds + 1)), "-p", str(running.pids[0]), "-o", raw],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
        cpu0 = running.cpu_s()
        gen = bench.run_load(Load("open", int(rate / procs * seconds), procs, rate / procs,
                                  max_seconds=seconds * 3))
        cpu = running.cpu_s() - cpu0
        _, err = spy.communicate(timeout=60)
        spy = None
        rec.update(offered_rate=gen["ops"] / gen["elapsed_s"], cpu_pct=stats.cpu_pct(cpu, gen["elapsed_s"]),
                   pyspy_stderr=err.strip()[-300:])
        rec.update(summarize_pyspy(raw, 100 * int(seconds + 1)))
        rec["ok"] = True
    except Exception as e:
        rec["error"] = f"{type(e).__name__}: {e}"
        host.log(f"profile {run.name}: {rec['error']}")
    finally:
        if spy is not None:
            spy.kill()
            spy.wait()
        if running is not None:
            running.stop()
        if run.name == NATS:
            try:
                natscluster.drain_subject(run.cluster.urls, STREAM, run.subject_name, lambda h, p: None, idle=2)
            except Exception:
                pass
        shutil.rmtree(workdir, ignore_errors=True)
    return rec


def summarize_pyspy(path: str, ticks: int, top: int = 14) -> dict:
    """py-spy's raw (collapsed) stacks -> samples per thread (and as % of the ``ticks`` samples taken: the
    share of the time it was not idle), PROFILE_PARTS' inclusive shares, and each thread's top frames by
    inclusive share (line numbers dropped; the frames every sample of the thread has are left out)."""
    threads = collections.Counter()
    parts = collections.Counter()
    frames: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    leaves: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not n.isdigit():
                continue
            n = int(n)
            head, _, rest = stack.partition(";")
            thread = head.partition(": ")[2] or head
            total += n
            threads[thread] += n
            for label, needle in PROFILE_PARTS:
                if needle in rest:
                    parts[label] += n
            leaf = rest.split(";")[-1]
            leaves[thread][leaf.rsplit(":", 1)[0] + ")" if ":" in leaf else leaf] += n
            seen = set()
            for frame in rest.split(";"):
                name = frame.rsplit(":", 1)[0] + ")" if ":" in frame else frame
                if name not in seen:
                    seen.add(name)
                    frames[thread][name] += n
    pct = lambda n: round(100.0 * n / total, 1) if total else None  # noqa: E731
    return {"samples": total, "ticks": ticks,
            "threads_pct": {t: pct(n) for t, n in threads.most_common()},
            "threads_active_pct": {t: round(100.0 * n / ticks, 1) for t, n in threads.most_common()},
            "parts_pct": {label: pct(parts[label]) for label, _ in PROFILE_PARTS},
            "top_frames_pct": {t: [(name, pct(n)) for name, n in c.most_common() if n < 0.9 * threads[t]][:top]
                               for t, c in frames.items()},
            "top_self_pct": {t: [(name, pct(n)) for name, n in c.most_common(top)] for t, c in leaves.items()}}


# -- report -----------------------------------------------------------------------------------------------------

def _n(x, fmt="{:,.0f}"):
    return "-" if x is None else fmt.format(x)


def render_md(rep: dict) -> str:
    m = rep["meta"]
    out = ["# Outputs and the open ladder: file vs NATS JetStream + metrics", "",
           f"- started {m['started']} ({m['duration_s']:.0f} s); commit `{m['kestrel_commit']}`",
           f"- machine: {m['machine']}",
           f"- nats-server: {m['nats_server']}; 3 nodes on loopback, JetStream file store under /tmp; stream "
           f"`{STREAM}` ({rep['stream_config']}), one subject per run, purged after it is read",
           f"- subjects: `{FILE}` = `{m['file_cmd']}`; `{NATS}` = `{m['nats_cmd']}`",
           f"- ladder: {', '.join(f'{r:,.0f}' for r in m['rates'])} opens/s offered, {m['procs']} generator "
           f"processes, {m['seconds']} s per rung, {m['drain']} s drain; {m['passes']} passes per subject, "
           f"alternating ({', '.join(m['order'])}); kernel.bpf_stats_enabled=1 during the ladders, as in "
           f"bench/run.py", ""]
    if m.get("note"):
        out += [f"**Conditions:** {m['note']}", ""]
    out += ["## Per rung", "",
            "delivered = the generators' opens found in the subject's output (file: its JSON lines; "
            "nats+metrics: the stream's messages, deduplicated by (host id, run, Kestrel-Seq)); "
            "collector counts = the metrics endpoint after the rung's drain, this rung's difference "
            "(kernel ringbuf_full, NATS acked / dropped, spool bytes at the end); CPU % of one core over the "
            "rung's load; RSS after the drain.", "",
            "| subject | pass | target /s | offered /s | delivered /s | lost | loss % | collector: ringbuf_full "
            "| collector: NATS acked | spool bytes | collector CPU % | nats-servers CPU % | RSS MB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for rec in rep["ladders"]:
        prev = {}
        for r in rec.get("rungs", []):
            cc = r.get("collector_counts")
            d = {k: cc[k] - prev.get(k, 0) for k in cc} if cc else None
            prev = cc or prev
            lost = r["ops"] - r["delivered"] if r.get("delivered") is not None else None
            out.append(
                f"| {rec['subject']} | {rec['rep'] + 1} | {r['target_rate']:,.0f} | {r['offered_rate']:,.0f} | "
                f"{_n(r.get('delivered_rate'))} | {_n(lost)} | {_n(r.get('loss_pct'), '{:.2f}')} | "
                f"{_n(d and d['ringbuf_full'])} | {_n(d and d['nats_published'])} | "
                f"{_n(cc and cc['nats_spool_bytes'])} | {_n(r.get('cpu_pct'), '{:.0f}')} | "
                f"{_n(r.get('nats_server_cpu_pct'), '{:.0f}')} | {_n(r.get('rss_kb') and r['rss_kb'] / 1024, '{:.0f}')} |")
    out += ["", "## Per ladder run", "",
            "| subject | pass | max zero-loss rate /s | same, 0.01% tolerance | collector's own count at exit "
            "| NATS output at exit | stream: messages read / held, duplicates, events | peak RSS MB | load average before | error |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for rec in rep["ladders"]:
        ks = rec.get("kestrel_summary") or {}
        own = (f"records={ks.get('records')} open={ks.get('delivered', {}).get('open')} "
               f"kernel_lost={ks.get('kernel_lost')} user_dropped={ks.get('user_dropped')}") if ks else "-"
        no = (rec.get("kestrel_outputs") or {}).get("nats")
        nats_out = " ".join(f"{k}={v}" for k, v in no.items()) if no else "-"
        st = rec.get("stream") or {}
        stream = (f"{st.get('messages')} / {st.get('stream_count')}, {st.get('duplicate_messages', 0)}, "
                  f"{st.get('events')} ({st.get('read_s', 0):.0f} s)") if "messages" in st else \
            (st.get("error", "-") if st else "-")
        out.append(f"| {rec['subject']} | {rec['rep'] + 1} | {_n(rec.get('max_zero_loss_rate'))} | "
                   f"{_n(rec.get('max_zero_loss_rate_001'))} | {own} | {nats_out} | {stream} | "
                   f"{_n(rec.get('hwm_kb') and rec['hwm_kb'] / 1024, '{:.0f}')} | "
                   f"{' '.join((rec.get('machine_before') or {}).get('loadavg', []))} | {rec.get('error', '')} |")
    out += ["", "## Summary (median over passes)", "", "| subject | max zero-loss rate /s (per pass) | median |",
            "|---|---|---|"]
    for name in (FILE, NATS):
        zs = [rec.get("max_zero_loss_rate") for rec in rep["ladders"] if rec["subject"] == name]
        med = stats.median([z for z in zs if z is not None])
        out.append(f"| {name} | {', '.join(_n(z) for z in zs)} | {_n(med)} |")
    logs = rep.get("nats_logs") or {}
    if logs:
        out += ["", "nats-server logs: " + "; ".join(f"{n}: {v['warnings']} warnings, {v['errors']} errors"
                                                     for n, v in logs.items())]
        for n, v in logs.items():
            out += [f"- {n}: `{line[:200]}`" for line in v["last"]]
    s = rep.get("scrapes") or []
    out += ["", "## Metrics endpoint", ""]
    for sc in s:
        if sc is None:
            continue
        if sc.get("ok"):
            out.append(f"- scraped once during the {sc['rate']:,.0f}/s rung's load ({sc['at_s']} s in): "
                       f"parsed by prometheus_client's text parser, {sc['families']} families, {sc['samples']} "
                       f"samples, {sc['bytes']:,} bytes, {sc['seconds'] * 1000:.1f} ms")
        else:
            out.append(f"- scrape during load FAILED: {sc.get('error')}")
    out += ["", "## Profiles (py-spy, 100 Hz, --nonblocking, --threads)", "",
            "Inclusive share of all samples (a frame counts when it is anywhere in the stack; py-spy drops "
            "idle samples, so the shares are of the time the threads were on a CPU or waiting for the GIL).", ""]
    for p in rep.get("profiles", []):
        if not p.get("ok"):
            out.append(f"- {p['subject']}: FAILED {p.get('error')}")
            continue
        out += [f"### {p['subject']} at {p['rate']:,.0f}/s (offered {p['offered_rate']:,.0f}/s, collector CPU "
                f"{p['cpu_pct']:.0f}%, {p['samples']} samples)", "",
                "threads, % of samples (% of the run not idle): " + ", ".join(
                    f"{t} {v}% ({p['threads_active_pct'][t]}%)" for t, v in p["threads_pct"].items()), "",
                "| part | % of samples |", "|---|---|"]
        out += [f"| {k} | {v} |" for k, v in p["parts_pct"].items() if v]
        for t, top in p["top_frames_pct"].items():
            out += ["", f"top frames (inclusive, without those in 90% of the thread's samples), {t}: " +
                    "; ".join(f"`{name}` {v}%" for name, v in top)]
        for t, top in p.get("top_self_pct", {}).items():
            out += ["", f"top leaf frames (self), {t}: " + "; ".join(f"`{name}` {v}%" for name, v in top)]
        out.append("")
    if rep.get("analysis"):
        out += ["", "## Where the limit is, and why", "", rep["analysis"].strip(), ""]
    return "\n".join(out) + "\n"


def write(rep: dict, out_dir: str) -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    js, md = os.path.join(out_dir, "sinks.json"), os.path.join(out_dir, "sinks.md")
    with open(js, "w") as f:
        json.dump(rep, f, indent=1, default=str)
    with open(md, "w") as f:
        f.write(render_md(rep))
    return js, md


# -- main -------------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        with open(args.render) as f:
            rep = json.load(f)
        if args.analysis:
            with open(args.analysis) as f:
                rep["analysis"] = f.read()
        js, md = write(rep, os.path.dirname(os.path.abspath(args.render)))
        host.log(f"report: {md}")
        return 0
    if os.geteuid() != 0:
        print("bench/sinks.py must run as root (BPF, tracefs, sysctl)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGHUP, _term)
    rates = [float(x) for x in args.rates.split(",")]
    t_start = time.monotonic()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    commit, src = (host.export_rev(args.kestrel_rev) if args.kestrel_rev else (None, None))
    if src:
        base = ("env", f"PYTHONPATH={src}", sys.executable, "-P", "-m", "kestrel_raw", "run")
        sys.path.insert(0, src)  # natsmsg's Dedup from the benchmarked commit too
    else:
        base = (sys.executable, "-m", "kestrel_raw", "run")
    host.ensure_tracefs()
    krgen = host.build_generator()
    if not shutil.which("py-spy") and args.profile_rate:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], stdin=subprocess.DEVNULL)
    scratch = tempfile.mkdtemp(prefix="kr-bench-sinks-")
    cluster = None
    ladders, profiles = [], []
    try:
        cluster = natscluster.NatsCluster(os.path.join(scratch, "nats"))
        stream_config = natscluster.add_stream(cluster.urls, STREAM, [f"{SUBJECT_PREFIX}.>"], 3)
        host.log(f"nats cluster {cluster.urls}, stream {stream_config}")
        bench = Bench(krgen, scratch, drain=args.drain, kestrel_argv=base)
        order = stats.alternate([FILE, NATS], args.passes)
        with host.bpf_stats():
            for i, name in enumerate(order):
                run = Run(name, i, base, cluster, scratch, args.scrape_rate, args.seconds)
                rec = ladder(bench, run, rates, args.seconds, args.procs)
                rec["rep"] = i // 2
                ladders.append(rec)
                host.log(f"ladder {name} pass {rec['rep'] + 1}: max zero-loss {rec.get('max_zero_loss_rate')} "
                         f"rungs {[(round(r['offered_rate']), r.get('loss_pct')) for r in rec.get('rungs', [])]} "
                         f"{rec.get('error', '')} ({time.monotonic() - t_start:.0f} s)")
            if args.profile_rate:
                for i, name in enumerate((FILE, NATS)):
                    run = Run(name, 100 + i, base, cluster, scratch, -1, args.profile_seconds)
                    profiles.append(profile(bench, run, args.profile_rate, args.profile_seconds, args.procs,
                                            scratch))
                    host.log(f"profile {name}: {profiles[-1].get('parts_pct')} ({time.monotonic() - t_start:.0f} s)")
        nats_version = natscluster.server_version(cluster.binary)
        nats_logs = cluster.log_summary()
    finally:
        tracers.kill_all()
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(scratch, ignore_errors=True)
        if src:
            shutil.rmtree(src, ignore_errors=True)
    file_cmd = shlex.join((*base, "--events", "open", "--output", "FILE"))
    nats_cmd = shlex.join((*base, "--events", "open", "--nats", "nats://127.0.0.1:P1,...", "--subject",
                           f"{SUBJECT_PREFIX}.runN", "--nats-buffer", "SPOOL", "--metrics", "127.0.0.1:PORT"))
    rep = {"meta": {"started": started, "duration_s": time.monotonic() - t_start, "machine": host.machine_facts(),
                    "kestrel_commit": commit or host.git_commit(tracers.REPO), "kestrel_rev": args.kestrel_rev,
                    "nats_server": nats_version, "rates": rates, "seconds": args.seconds, "procs": args.procs,
                    "drain": args.drain, "passes": args.passes, "order": order, "file_cmd": file_cmd,
                    "nats_cmd": nats_cmd, "note": args.note},
           "stream_config": stream_config, "nats_logs": nats_logs, "ladders": ladders,
           "scrapes": [rec.get("scrape_during_load") for rec in ladders if rec["subject"] == NATS],
           "profiles": profiles}
    js, md = write(rep, args.out)
    host.log(f"report: {md} ({rep['meta']['duration_s']:.0f} s)")
    print(open(md).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
