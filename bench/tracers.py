"""The subjects (kestrel-raw, libbpf-tools, bpftrace, no tracer), and starting, watching and stopping them.

Every subject is one or more processes, each writing its events to its own output file (or a pipe, for
the latency phase).  All are started the same way (own session, stdin from /dev/null), stopped the same
way (SIGINT, as an operator's Ctrl-C, then SIGKILL of the whole session after a timeout), and reaped with
wait4 so their lifetime CPU and peak RSS come from the kernel.  Every process started here is registered
until reaped: ``kill_all()`` (called from the harness's finally block, atexit and signal handlers) leaves
no tracer running.
"""
from __future__ import annotations

import atexit
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from . import procfs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# bpftrace probes per event type, printing the formats bench/outputs.py parses.  Written for bpftrace
# 0.17's syntax (args->field); each mirrors what the libbpf-tools peer reports.
BPFTRACE_PROBES = {
    "open": ("tracepoint:syscalls:sys_enter_openat { @kr_path[tid] = args->filename; }\n"
             "tracepoint:syscalls:sys_exit_openat /@kr_path[tid]/ { "
             "printf(\"open %d %d %s\\n\", pid, args->ret, str(@kr_path[tid])); delete(@kr_path[tid]); }\n"),
    "exec": ("tracepoint:sched:sched_process_exec { "
             "printf(\"exec %d %d %s\\n\", pid, curtask->real_parent->tgid, str(args->filename)); }\n"),
    "exit": ("tracepoint:sched:sched_process_exit /pid == tid/ { "
             "printf(\"exit %d %d %d\\n\", pid, curtask->real_parent->tgid, curtask->exit_code >> 8); }\n"),
    "connect": ("tracepoint:syscalls:sys_exit_connect { printf(\"connect %d %d\\n\", pid, args->ret); }\n"),
}

LIBBPF_TOOLS = {"open": "/usr/sbin/opensnoop", "exec": "/usr/sbin/execsnoop", "exit": "/usr/sbin/exitsnoop"}

# event types each workload is watched with
WORKLOAD_EVENTS = {
    "open": ("open",),
    "exec": ("exec",),
    "exit": ("exit",),
    "connect": ("connect",),
    "build": ("exec", "open", "connect", "exit"),
}

SUBJECTS = ("none", "kestrel-raw", "libbpf-tools", "bpftrace")


@dataclass(frozen=True)
class ProcSpec:
    """One process of a subject."""

    label: str  # kestrel-raw, opensnoop, execsnoop, exitsnoop, bpftrace
    fmt: str  # output format name (bench/outputs.py PARSERS)
    argv: tuple[str, ...]  # to run with stdout redirected to the output
    own_output: bool = False  # True: pass --output FILE instead of redirecting stdout (kestrel-raw)

    def command(self, output: str | None, line_buffered: bool) -> list[str]:
        """argv for a run.  ``output`` None means: write events to stdout (a pipe).  ``line_buffered``
        makes each event visible as soon as it is written (stdbuf -oL for stdio tools; kestrel-raw flushes
        on its own timer, which is part of what is measured)."""
        argv = list(self.argv)
        if self.own_output:
            return argv + (["--output", output] if output else [])
        if line_buffered and self.fmt != "bpftrace":
            return ["stdbuf", "-oL", *argv]
        return argv


@dataclass(frozen=True)
class Subject:
    name: str
    procs: tuple[ProcSpec, ...]


def subject_for(name: str, workload: str, kestrel_argv: tuple[str, ...] | None = None) -> Subject | None:
    """The subject ``name`` set up to report the workload's event types; None when it cannot (e.g.
    libbpf-tools has no connect tracer that works without kprobes/fentry)."""
    events = WORKLOAD_EVENTS[workload]
    if name == "none":
        return Subject("none", ())
    if name == "kestrel-raw":
        base = kestrel_argv or (sys.executable, "-m", "kestrel_raw", "run")
        return Subject(name, (ProcSpec("kestrel-raw", "kestrel", (*base, "--events", ",".join(events)),
                                       own_output=True),))
    if name == "libbpf-tools":
        if any(e not in LIBBPF_TOOLS for e in events):
            tools = [e for e in events if e in LIBBPF_TOOLS]
            if workload != "build" or not tools:
                return None
        else:
            tools = list(events)
        procs = tuple(ProcSpec(os.path.basename(LIBBPF_TOOLS[e]), os.path.basename(LIBBPF_TOOLS[e]),
                               (LIBBPF_TOOLS[e],)) for e in tools)
        return Subject(name, procs)
    if name == "bpftrace":
        script = "".join(BPFTRACE_PROBES[e] for e in events)
        return Subject(name, (ProcSpec("bpftrace", "bpftrace", ("bpftrace", "-e", script)),))
    raise ValueError(f"unknown subject {name!r}: expected one of {', '.join(SUBJECTS)}")


LATENCY_LOW = "kestrel-raw --latency low"
LIBRARY_LOW = "kestrel-raw library, low latency"
LIBRARY_LOW_ONE_RING = "kestrel-raw library, low latency, 1 ring, json"
LIBRARY_LOW_HANDOFF = "kestrel-raw library, low latency, at handoff"


def latency_subjects(kestrel_argv: tuple[str, ...] | None = None,
                     library_argv: tuple[str, ...] | None = None) -> list[Subject]:
    """The latency phase's subjects: kestrel-raw's CLI in its default mode (--latency batch) and with
    --latency low, the library read in-process with latency="low" (bench/lib_latency.py, which writes its
    receipt stamps to --output at the end) with its defaults (one ring per CPU up to 4, KestrelEvent objects) and with one
    ring and JSON chunks (fewer poller tasks, no event objects), and the peers' open tracers."""
    base = kestrel_argv or (sys.executable, "-m", "kestrel_raw", "run")
    lib = library_argv or (sys.executable, os.path.join(REPO, "bench", "lib_latency.py"))
    return [
        subject_for("kestrel-raw", "open", kestrel_argv),
        Subject(LATENCY_LOW, (ProcSpec("kestrel-raw", "kestrel", (*base, "--events", "open", "--latency", "low"),
                                       own_output=True),)),
        Subject(LIBRARY_LOW, (ProcSpec("kestrel-raw", "kestrel-lib", (*lib, "--latency", "low"),
                                       own_output=True),)),
        Subject(LIBRARY_LOW_ONE_RING, (ProcSpec("kestrel-raw", "kestrel-lib",
                                                (*lib, "--latency", "low", "--buffers", "1", "--deliver", "json"),
                                                own_output=True),)),
        Subject(LIBRARY_LOW_HANDOFF, (ProcSpec("kestrel-raw", "kestrel-lib",
                                               (*lib, "--latency", "low", "--stamp", "handoff"),
                                               own_output=True),)),
        subject_for("libbpf-tools", "open"),
        subject_for("bpftrace", "open"),
    ]


# -- process registry --------------------------------------------------------------------------------

_LIVE: dict[int, subprocess.Popen] = {}


def kill_all() -> None:
    """SIGKILL every process (and its session) this module started and has not reaped."""
    for pid, p in list(_LIVE.items()):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        p.returncode = -9
        _LIVE.pop(pid, None)


atexit.register(kill_all)


@dataclass
class Exit:
    label: str
    returncode: int | None
    clean: bool  # exited by itself within the timeout after SIGINT
    cpu_s: float  # user + sys over the whole life (wait4 rusage)
    maxrss_kb: int  # peak RSS over the whole life (wait4 rusage)
    stderr: str


@dataclass
class Running:
    subject: Subject
    outputs: list[str | None]
    popens: list[subprocess.Popen]
    started: float  # time.monotonic() right before the first Popen
    stderr_paths: list[str] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.popens]

    def dead(self) -> str | None:
        """A message for the first process that has exited (None while all run)."""
        for spec, p in zip(self.subject.procs, self.popens):
            if p.poll() is not None:
                _LIVE.pop(p.pid, None)
                return f"{spec.label} exited with status {p.returncode}: {self.stderr_tail(spec.label)}"
        return None

    def stderr_tail(self, label: str, n: int = 600) -> str:
        for spec, path in zip(self.subject.procs, self.stderr_paths):
            if spec.label == label:
                try:
                    with open(path, errors="replace") as f:
                        return f.read()[-n:].strip()
                except OSError:
                    return ""
        return ""

    def cpu_s(self) -> float:
        """CPU seconds (user + sys) of all the subject's processes so far, from the threads' schedstat."""
        return sum(procfs.read_cpu_ns(pid) or 0 for pid in self.pids) / 1e9

    def cpu_stat_s(self) -> float:
        """The same from /proc/PID/stat utime + stime (10 ms ticks; includes exited threads)."""
        total = 0.0
        for pid in self.pids:
            t = procfs.read_cpu(pid)
            if t is not None:
                total += t.seconds()
        return total

    def hwm_kb(self) -> dict[str, int | None]:
        return {spec.label: procfs.read_vm_hwm_kb(p.pid) for spec, p in zip(self.subject.procs, self.popens)}

    def prog_ids(self) -> set[int]:
        ids: set[int] = set()
        for pid in self.pids:
            ids |= procfs.prog_ids_of(pid)
        return ids

    def stop(self, timeout: float = 15.0) -> list[Exit]:
        """SIGINT each process, wait up to ``timeout`` s for all, SIGKILL the sessions of the rest; reap
        all with wait4."""
        for p in self.popens:
            if p.returncode is None:
                try:
                    os.kill(p.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        results: dict[int, tuple[int, object, bool]] = {}
        while len(results) < len(self.popens):
            for p in self.popens:
                if p.pid in results:
                    continue
                try:
                    pid, status, ru = os.wait4(p.pid, os.WNOHANG)
                except ChildProcessError:  # reaped by poll() already: no rusage left
                    results[p.pid] = (p.returncode, None, True)
                    continue
                if pid:
                    results[p.pid] = (os.waitstatus_to_exitcode(status), ru, True)
            if len(results) == len(self.popens):
                break
            if time.monotonic() > deadline:
                for p in self.popens:
                    if p.pid not in results:
                        try:
                            os.killpg(p.pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                        _, status, ru = os.wait4(p.pid, 0)
                        results[p.pid] = (os.waitstatus_to_exitcode(status), ru, False)
                break
            time.sleep(0.02)
        exits = []
        for spec, p, err in zip(self.subject.procs, self.popens, self.stderr_paths):
            code, ru, clean = results[p.pid]
            p.returncode = code
            _LIVE.pop(p.pid, None)
            # Kill what the tracer may have left in its session (nothing, normally).
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            exits.append(Exit(spec.label, code, clean,
                              (ru.ru_utime + ru.ru_stime) if ru else float("nan"),
                              int(ru.ru_maxrss) if ru else 0, self.stderr_tail(spec.label, 4000)))
        return exits


def start(subject: Subject, workdir: str, *, line_buffered: bool = False, to_pipe: bool = False) -> Running:
    """Start every process of ``subject``; outputs go to files in ``workdir`` (or to pipes)."""
    popens, outputs, errs = [], [], []
    started = time.monotonic()
    try:
        for i, spec in enumerate(subject.procs):
            out = None if to_pipe else os.path.join(workdir, f"{spec.label}-{i}.out")
            err = os.path.join(workdir, f"{spec.label}-{i}.err")
            cmd = spec.command(out, line_buffered or to_pipe)
            if to_pipe:
                stdout = subprocess.PIPE
            elif spec.own_output:
                stdout = subprocess.DEVNULL
            else:
                stdout = open(out, "wb")
            with open(err, "wb") as errf:
                p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=errf,
                                     start_new_session=True, cwd=REPO,
                                     env=dict(os.environ, PYTHONUNBUFFERED="0"))
            if stdout not in (subprocess.PIPE, subprocess.DEVNULL):
                stdout.close()
            _LIVE[p.pid] = p
            popens.append(p)
            outputs.append(out)
            errs.append(err)
    except BaseException:
        for p in popens:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        kill_all()
        raise
    return Running(subject, outputs, popens, started, errs)


def memlock_note() -> str:
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return f"RLIMIT_MEMLOCK soft={soft} hard={hard}"
