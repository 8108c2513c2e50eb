"""One measurement at a time: run a workload under a subject and collect every figure for it.

Phases (bench/run.py strings them together):
- ``trial``: start the subject, wait until attached, snapshot, run the generator(s), let the tracer drain,
  snapshot, stop; count the generator's events in the output.
- ``ladder``: one subject run through a ladder of offered rates (two or more rate-limited generators per
  rung), counting each rung's events by its generators' pids.
- ``latency``: generator stamps CLOCK_MONOTONIC right before each openat; a reader thread stamps each
  output chunk when it arrives through a pipe.
- ``startup``: time from starting the subject to the first captured marker open.
"""
from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass

from . import outputs, procfs, stats, tracers
from .host import BUILD_DIR, GEN_SOURCE, bpf_stats as sysctl_bpf_stats, log


@dataclass(frozen=True)
class Load:
    """What one run of a workload asks of the generator(s)."""

    mode: str  # krgen mode (open, exec, connect, openlat) or "build"
    ops: int  # per generator process
    procs: int = 1
    rate: float = 0.0  # per generator process, ops/s; 0 = as fast as it can
    max_seconds: float = 30.0


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def closed_port() -> int:
    """A loopback TCP port nobody listens on right now: bind an ephemeral port, then let it go."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Bench:
    """Shared state of one harness run: generator binary, scratch dir, targets, options."""

    def __init__(self, krgen: str, scratch: str, *, drain: float, kestrel_argv=None) -> None:
        self.krgen = krgen
        self.scratch = scratch
        self.drain = drain
        self.kestrel_argv = kestrel_argv
        self.port = closed_port()
        # the open loop's target: short (bpftrace's str() keeps 64 bytes) and present
        self.open_target = os.path.join(BUILD_DIR, "open-target")
        with open(self.open_target, "w") as f:
            f.write("x\n")
        self.lat_prefix = "/tmp/kr-bench-lat-"
        self.marker_prefix = "/tmp/kr-bench-mark-"

    # -- generators ----------------------------------------------------------------------------------

    def gen_argv(self, mode: str, ops: int, rate: float = 0.0, max_seconds: float = 30.0,
                 stamps: str | None = None) -> list[str]:
        argv = [self.krgen, mode, "--ops", str(ops), "--max-seconds", str(max_seconds)]
        if rate:
            argv += ["--rate", f"{rate:.3f}"]
        if mode == "open":
            argv += ["--path", self.open_target]
        elif mode == "openlat":
            argv += ["--path", self.lat_prefix, "--stamps", stamps]
        elif mode == "connect":
            argv += ["--port", str(self.port)]
        return argv

    def run_load(self, load: Load) -> dict:
        """Run ``load``; {"pids", "ops", "errors", "elapsed_s", "cpu_s", "gens": [...]}.  Bounded by the
        generator's own op count and --max-seconds, and killed if it overstays that by 30 s.  ``cpu_s``: the
        workload's own CPU time (user + system of the processes it ran, reaped: RUSAGE_CHILDREN), where
        the tracer's programs, which run in the traced syscalls, are charged."""
        before = _children_cpu_s()
        result = self._run_build(load) if load.mode == "build" else self._run_generators(load)
        result["cpu_s"] = _children_cpu_s() - before
        return result

    def _run_generators(self, load: Load) -> dict:
        stamps = [os.path.join(self.scratch, f"stamps-{i}") for i in range(load.procs)]
        popens = [subprocess.Popen(self.gen_argv(load.mode, load.ops, load.rate, load.max_seconds,
                                                 stamps[i] if load.mode == "openlat" else None),
                                   stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
                  for i in range(load.procs)]
        gens = []
        try:
            for p in popens:
                out, _ = p.communicate(timeout=load.max_seconds + 30)
                if p.returncode != 0:
                    raise RuntimeError(f"generator {load.mode} exited with {p.returncode}")
                gens.append(__import__("json").loads(out))
        finally:
            for p in popens:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        elapsed = max(g["elapsed_ns"] for g in gens) / 1e9
        result = {"pids": [g["pid"] for g in gens], "ops": sum(g["ops"] for g in gens),
                  "errors": sum(g["errors"] for g in gens), "elapsed_s": elapsed, "gens": gens}
        if load.mode == "openlat":
            result["stamps"] = stamps
        return result

    def _run_build(self, load: Load) -> dict:
        """The 'typical workload': compile the generator's source ``ops`` times with gcc -O1 -c (gcc forks
        cc1 and as, opens headers: exec, open and exit events of every kind)."""
        obj = os.path.join(self.scratch, "typical.o")
        script = f'i=0; while [ "$i" -lt {int(load.ops)} ]; do gcc -O1 -c "$1" -o "$2" || exit 1; i=$((i+1)); done'
        t0 = time.monotonic()
        r = subprocess.run(["sh", "-c", script, "sh", GEN_SOURCE, obj], stdin=subprocess.DEVNULL,
                           timeout=load.max_seconds + 30)
        elapsed = time.monotonic() - t0
        if r.returncode != 0:
            raise RuntimeError(f"build workload failed with status {r.returncode}")
        return {"pids": [], "ops": load.ops, "errors": 0, "elapsed_s": elapsed, "gens": []}

    def marker(self, workload: str) -> None:
        """One small burst of the events the subject watches, from a throwaway process: an exec of
        /bin/true (which also opens and exits), or a refused connect."""
        mode = "connect" if workload == "connect" else "exec"
        subprocess.run(self.gen_argv(mode, 1, max_seconds=5), stdout=subprocess.DEVNULL,
                       stdin=subprocess.DEVNULL, timeout=30)

    # -- attach ---------------------------------------------------------------------------------------

    def wait_attached(self, running: tracers.Running, workload: str, timeout: float = 60.0) -> float:
        """Seconds from start until every process of the subject has a BPF program that has RUN (kernel
        run_cnt > 0 with bpf_stats on), triggering marker events meanwhile.  Output-independent, so it works
        for tools whose stdout is block-buffered into a file.  Raises RuntimeError when a process dies."""
        deadline = time.monotonic() + timeout
        while True:
            died = running.dead()
            if died:
                raise RuntimeError(died)
            self.marker(workload)
            progs = procfs.bpftool_progs()
            ready = True
            for pid in running.pids:
                ids = procfs.prog_ids_of(pid)
                if not any(progs[i].run_cnt > 0 for i in ids if i in progs):
                    ready = False
                    break
            if ready:
                return time.monotonic() - running.started
            if time.monotonic() > deadline:
                raise RuntimeError(f"not attached after {timeout:.0f} s")
            time.sleep(0.05)

    # -- one trial ------------------------------------------------------------------------------------

    def trial(self, subject: tracers.Subject, workload: str, load: Load, *, bpf_stats: bool = True) -> dict:
        """Every figure of one run of ``load`` under ``subject`` (see bench/README.md for each).

        ``bpf_stats=False``: kernel.bpf_stats_enabled is 0 while the load runs (it is on for the attach
        check), so the run's slowdown, loss and CPU are those of a host without the accounting, and it
        has no kernel time per run; the "kernel" phase measures that in runs of its own."""
        rec: dict = {"subject": subject.name, "workload": workload, "ok": False, "bpf_stats": bpf_stats}
        workdir = tempfile.mkdtemp(prefix=f"{subject.name}-{workload}-", dir=self.scratch)
        running = None
        try:
            if subject.procs:
                running = tracers.start(subject, workdir)
                rec["attached_s"] = self.wait_attached(running, workload)
                time.sleep(0.2)  # let every probe of a multi-probe tool attach, too
                ids = running.prog_ids()
                progs_before = procfs.bpftool_progs()
                cpu_before, stat_before = running.cpu_s(), running.cpu_stat_s()
            if bpf_stats:
                gen = self.run_load(load)
            else:
                with sysctl_bpf_stats("0"):
                    gen = self.run_load(load)
            rec.update(ops=gen["ops"], gen_errors=gen["errors"], elapsed_s=gen["elapsed_s"],
                       workload_cpu_s=gen["cpu_s"],
                       rate=gen["ops"] / gen["elapsed_s"] if gen["elapsed_s"] > 0 else None)
            if running is not None:
                time.sleep(self.drain)
                died = running.dead()
                if died:
                    raise RuntimeError(died)
                cpu_after, stat_after = running.cpu_s(), running.cpu_stat_s()
                hwm = running.hwm_kb()
                ids |= running.prog_ids()
                progs_after = procfs.bpftool_progs()
                if bpf_stats:  # else only the stray runs around the load would be counted
                    rec["kernel"] = procfs.run_delta(progs_before, progs_after, ids)
                rec["cpu_s"] = cpu_after - cpu_before
                rec["cpu_stat_s"] = stat_after - stat_before
                rec["hwm_kb"] = sum(v for v in hwm.values() if v)
                rec["hwm_kb_by_proc"] = hwm
            if running is not None:
                exits = running.stop()
                running = None
                rec["exits"] = [e.__dict__ | {"stderr": e.stderr[-300:]} for e in exits]
                summary = next((outputs.parse_kestrel_summary(e.stderr) for e in exits
                                if e.label == "kestrel-raw"), None)
                if summary:
                    rec["kestrel_summary"] = summary
                total = own = 0
                for spec, path in zip(subject.procs, [os.path.join(workdir, f"{s.label}-{i}.out")
                                                      for i, s in enumerate(subject.procs)]):
                    with open(path, errors="replace") as f:
                        t = outputs.tally(spec.fmt, f, workload if workload != "build" else "open",
                                          gen["pids"], self.open_target)
                    total += t.total
                    own += sum(t.by_pid.values())
                rec["delivered_total"] = total
                if workload != "build":
                    rec["delivered_own"] = own
                    rec["loss_pct"] = stats.loss_pct(gen["ops"], own)
                rec["cpu_us_per_event"] = (stats.per_event(rec["cpu_s"] * 1e6, total))
            rec["ok"] = True
        except Exception as e:  # one failed run must not stop the benchmark: record why
            rec["error"] = f"{type(e).__name__}: {e}"
            log(f"{subject.name}/{workload}: {rec['error']}")
        finally:
            if running is not None:
                exits = running.stop()
                rec.setdefault("exits", [e.__dict__ | {"stderr": e.stderr[-300:]} for e in exits])
            shutil.rmtree(workdir, ignore_errors=True)
        return rec

    # -- ladder ---------------------------------------------------------------------------------------

    def ladder(self, subject: tracers.Subject, workload: str, rates: list[float], seconds: float,
               procs: int, *, before_rung=None, after_rung=None) -> dict:
        """Offered rate vs delivered rate (and collector CPU %) for each rung of ``rates`` (total ops/s,
        split over ``procs`` rate-limited generators), with the subject started once.

        ``before_rung(running, rate)`` is called right before a rung's load starts, ``after_rung(running,
        rung)`` after its drain and CPU reading (outside the rung's CPU window), and may add keys to the
        rung's dict (bench/sinks.py: other processes' CPU, a metrics scrape)."""
        rec: dict = {"subject": subject.name, "workload": workload, "ok": False, "rungs": []}
        workdir = tempfile.mkdtemp(prefix=f"ladder-{subject.name}-{workload}-", dir=self.scratch)
        running = None
        rungs = []
        try:
            running = tracers.start(subject, workdir)
            self.wait_attached(running, workload)
            time.sleep(0.2)
            for rate in rates:
                ops = max(1, int(rate / procs * seconds))
                if before_rung is not None:
                    before_rung(running, rate)
                cpu0, t0 = running.cpu_s(), time.monotonic()
                gen = self.run_load(Load(workload, ops, procs, rate / procs, max_seconds=seconds * 3))
                time.sleep(self.drain)
                died = running.dead()
                if died:
                    raise RuntimeError(died)
                cpu = running.cpu_s() - cpu0
                rungs.append({"target_rate": rate, "ops": gen["ops"], "pids": gen["pids"],
                              "elapsed_s": gen["elapsed_s"], "offered_rate": gen["ops"] / gen["elapsed_s"],
                              "cpu_s": cpu, "window_s": time.monotonic() - t0,
                              "cpu_pct": stats.cpu_pct(cpu, gen["elapsed_s"])})
                if after_rung is not None:
                    after_rung(running, rungs[-1])
            rec["hwm_kb"] = sum(v for v in running.hwm_kb().values() if v)
            exits = running.stop()
            running = None
            rec["exits"] = [e.__dict__ | {"stderr": e.stderr[-1200:]} for e in exits]
            summary = next((outputs.parse_kestrel_summary(e.stderr) for e in exits if e.label == "kestrel-raw"),
                           None)
            if summary:
                rec["kestrel_summary"] = summary
            all_pids = [p for r in rungs for p in r["pids"]]
            by_pid = {p: 0 for p in all_pids}
            for i, spec in enumerate(subject.procs):
                with open(os.path.join(workdir, f"{spec.label}-{i}.out"), errors="replace") as f:
                    t = outputs.tally(spec.fmt, f, workload, all_pids, self.open_target)
                for p, n in t.by_pid.items():
                    by_pid[p] += n
            for r in rungs:
                own = sum(by_pid[p] for p in r["pids"])
                r["delivered"] = own
                r["delivered_rate"] = own / r["elapsed_s"]
                r["loss_pct"] = stats.loss_pct(r["ops"], own)
                r["cpu_us_per_event"] = stats.per_event(r["cpu_s"] * 1e6, own)
            rec["rungs"] = rungs
            rec["max_zero_loss_rate"] = stats.max_zero_loss_rate((r["offered_rate"], r["loss_pct"]) for r in rungs)
            rec["ok"] = True
        except Exception as e:
            rec["error"] = f"{type(e).__name__}: {e}"
            rec["rungs"] = rungs
            log(f"ladder {subject.name}/{workload}: {rec['error']}")
        finally:
            if running is not None:
                running.stop()
            shutil.rmtree(workdir, ignore_errors=True)
        return rec

    # -- latency --------------------------------------------------------------------------------------

    def latency(self, subject: tracers.Subject, ops: int, rate: float) -> dict:
        """syscall -> user space at a low rate.  The generator stamps CLOCK_MONOTONIC right before each
        openat("<lat_prefix><seq>") and writes the stamps at its end.

        CLI subjects write to a pipe (stdio tools line-buffered with stdbuf -oL; kestrel-raw to stdout as it
        does in the mode under test); a reader thread here blocks on the pipe and stamps CLOCK_MONOTONIC when
        each chunk arrives: receipt = "a consumer of the output can read the line".  The library subject
        (fmt "kestrel-lib", bench/lib_latency.py) stamps receipt itself, in the collector's process, when the
        event comes out of the collector's channel, and writes the stamps to its output file at the end.

        For each of the generator's events: ``visible_us`` = receipt - the generator's stamp before openat;
        for kestrel-raw also ``kernel_to_visible_us`` = receipt - ts_mono_ns (the program's bpf_ktime_get_ns
        at sys_exit_openat).  ``cpu_pct``: the subject's CPU during the generator's run / its duration."""
        rec: dict = {"subject": subject.name, "ok": False}
        workdir = tempfile.mkdtemp(prefix="lat-", dir=self.scratch)
        running = None
        arrivals: list[tuple[int, str]] = []
        fmt = subject.procs[0].fmt
        in_process = fmt == "kestrel-lib"
        try:
            running = tracers.start(subject, workdir, to_pipe=not in_process)
            prefix = self.lat_prefix
            th = None
            if not in_process:
                pipe = running.popens[0].stdout

                def reader():
                    fd = pipe.fileno()
                    buf = b""
                    while True:
                        chunk = os.read(fd, 1 << 16)
                        now = time.monotonic_ns()
                        if not chunk:
                            return
                        buf += chunk
                        *lines, buf = buf.split(b"\n")
                        for line in lines:
                            if prefix.encode() in line:
                                arrivals.append((now, line.decode("utf-8", "replace")))

                th = threading.Thread(target=reader, daemon=True)
                th.start()
            self.wait_attached(running, "open")
            time.sleep(0.2)
            cpu0 = running.cpu_s()
            gen = self.run_load(Load("openlat", ops, 1, rate, max_seconds=ops / rate * 3 + 5))
            cpu = running.cpu_s() - cpu0
            time.sleep(max(self.drain, 0.5))
            exits = running.stop()
            running = None
            summary = next((outputs.parse_kestrel_summary(e.stderr) for e in exits if e.label == "kestrel-raw"),
                           None)
            if summary:
                rec["kestrel_summary"] = summary
            if th is not None:
                th.join(timeout=10)
            else:
                with open(os.path.join(workdir, f"{subject.procs[0].label}-0.out"), errors="replace") as f:
                    arrivals = outputs.parse_receipts(f, prefix)
            stamps = {}
            with open(gen["stamps"][0]) as f:
                for line in f:
                    seq, ns = line.split()
                    stamps[int(seq)] = int(ns)
            lat = outputs.latencies(arrivals, stamps, gen["pids"][0], prefix,
                                    "kestrel" if in_process else fmt)
            rec.update(ops=gen["ops"], rate=rate, matched=len(lat.visible_us), cpu_s=cpu,
                       cpu_pct=stats.cpu_pct(cpu, gen["elapsed_s"]), measures=(
                           ("in the collector's process: event handed to the collector's channel"
                            if "--stamp" in subject.procs[0].argv else
                            "in the collector's process: event out of the collector's channel") if in_process
                           else "line read from the subject's stdout pipe by the harness"),
                       visible_us=stats.latency_summary(lat.visible_us))
            if lat.kernel_us:
                rec["kernel_to_visible_us"] = stats.latency_summary(lat.kernel_us)
            rec["ok"] = True
        except Exception as e:
            rec["error"] = f"{type(e).__name__}: {e}"
            log(f"latency {subject.name}: {rec['error']}")
        finally:
            if running is not None:
                running.stop()
            shutil.rmtree(workdir, ignore_errors=True)
        return rec

    # -- startup --------------------------------------------------------------------------------------

    def startup(self, subject: tracers.Subject, interval: float = 0.005, timeout: float = 60.0) -> dict:
        """Start -> attached, watched through the output: the harness opens marker paths every ``interval``
        s from the start; attached_s = when the FIRST marker that shows up in the output was opened, minus
        the start; visible_s = when that first showed up (includes the tool's output delay).  stdio tools
        run line-buffered here so the output is seen as written."""
        rec: dict = {"subject": subject.name, "ok": False}
        workdir = tempfile.mkdtemp(prefix=f"start-{subject.name}-", dir=self.scratch)
        running = None
        token = f"{self.marker_prefix}{os.getpid()}-{int(time.monotonic_ns())}-"
        try:
            running = tracers.start(subject, workdir, line_buffered=True)
            path = running.outputs[0]
            issued: list[float] = []
            pos = 0
            parse = outputs.PARSERS[subject.procs[0].fmt]
            while True:
                issued.append(time.monotonic())
                try:
                    os.close(os.open(f"{token}{len(issued) - 1}", os.O_RDONLY))
                except FileNotFoundError:
                    pass
                seen = None
                if os.path.exists(path):
                    with open(path, "rb") as f:
                        f.seek(pos)
                        data = f.read()
                    cut = data.rfind(b"\n") + 1
                    pos += cut
                    for line in data[:cut].decode("utf-8", "replace").splitlines():
                        ev = parse(line)
                        if ev is None or ev.kind != "open" or not ev.text.startswith(token):
                            continue
                        n = ev.text[len(token):]
                        if n.isdigit():
                            seen = int(n) if seen is None else min(seen, int(n))
                if seen is not None:
                    now = time.monotonic()
                    rec.update(attached_s=issued[seen] - running.started, visible_s=now - running.started,
                               markers=len(issued))
                    break
                died = running.dead()
                if died:
                    raise RuntimeError(died)
                if time.monotonic() - running.started > timeout:
                    raise RuntimeError(f"no marker seen after {timeout:.0f} s")
                time.sleep(interval)
            rec["ok"] = True
        except Exception as e:
            rec["error"] = f"{type(e).__name__}: {e}"
            log(f"startup {subject.name}: {rec['error']}")
        finally:
            if running is not None:
                running.stop()
            shutil.rmtree(workdir, ignore_errors=True)
        return rec
