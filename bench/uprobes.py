"""What a uprobe event costs per call: dns_query (getaddrinfo) and shell_command (bash's readline).

A uprobe is a breakpoint in the probed process's code: every call traps into the kernel, runs the program
and returns, whether or not an event is wanted.  The cost is paid by the caller, per call, so it is measured
as the caller sees it: the same loop of calls timed untraced and then under each subject, side by side in
one run, with the difference divided by the number of calls.

    sudo python3 bench/uprobes.py [--calls N] [--reps R] [--out FILE]

Subjects: kestrel-raw (``run --events dns_query`` / ``--events shell_command``), libbpf-tools
(``gethostlatency``: uprobe and uretprobe on getaddrinfo, gethostbyname and gethostbyname2; ``bashreadline``:
uretprobe on readline) and bpftrace (a uprobe and uretprobe on getaddrinfo; a uretprobe on readline).

Workloads: a C-speed loop of getaddrinfo("localhost") calls run by Python's socket module in a child
(resolved from /etc/hosts: no network), and an interactive bash on a pseudo-terminal fed N lines of ``:``,
timed until its exit.  Each figure is the median of R repetitions, subjects alternated.  Events delivered
are counted from each subject's output (the calls of the workload's own process).

Printed as a table and written as JSON (default bench/results/uprobes.json).
"""
from __future__ import annotations

import argparse
import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASH = shutil.which("bash") or "/bin/bash"
LIBC_PATHS = ("/lib/x86_64-linux-gnu/libc.so.6", "/lib/aarch64-linux-gnu/libc.so.6", "/usr/lib/libc.so.6")

DNS_LOOP = r"""
import os, socket, sys, time
n = int(sys.argv[1])
print(os.getpid(), flush=True)
sys.stdin.readline()
t = time.perf_counter_ns()
for _ in range(n):
    socket.getaddrinfo("localhost", 80, socket.AF_INET, socket.SOCK_STREAM)
print(time.perf_counter_ns() - t, flush=True)
"""


def libc_path() -> str:
    for p in LIBC_PATHS:
        if os.path.exists(p):
            return p
    raise SystemExit("bench/uprobes.py: no libc.so.6 found in " + ", ".join(LIBC_PATHS))


def subjects(kind: str) -> dict[str, list[str] | None]:
    kestrel = [sys.executable, "-m", "kestrel_raw", "run", "--keep-privileges"]
    if kind == "dns":
        libc = libc_path()
        bt = (f"uprobe:{libc}:getaddrinfo {{ @h[tid] = arg0; }}\n"
              f"uretprobe:{libc}:getaddrinfo /@h[tid]/ {{ printf(\"dns %d %s %d\\n\", pid, str(@h[tid]), retval); "
              f"delete(@h[tid]); }}\n")
        return {"none": None,
                "kestrel-raw": kestrel + ["--events", "dns_query"],
                "libbpf-tools": ["stdbuf", "-oL", "/usr/sbin/gethostlatency"],
                "bpftrace": ["bpftrace", "-e", bt]}
    bt = f"uretprobe:{BASH}:readline {{ printf(\"shell %d %s\\n\", pid, str(retval)); }}\n"
    return {"none": None,
            "kestrel-raw": kestrel + ["--events", "shell_command"],
            "libbpf-tools": ["stdbuf", "-oL", "/usr/sbin/bashreadline", "-s", BASH],
            "bpftrace": ["bpftrace", "-e", bt]}


class Tracer:
    """One subject's process: its events to a file, its stderr to another; attached when its marker shows."""

    MARKERS = {"kestrel-raw": (b"attached", "err"), "libbpf-tools": (b"\n", "out"), "bpftrace": (b"Attaching", "out")}

    def __init__(self, name: str, argv: list[str], workdir: str):
        self.name = name
        self.out = os.path.join(workdir, f"{name}.out")
        self.err = os.path.join(workdir, f"{name}.err")
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         start_new_session=True, cwd=REPO)
        marker, which = self.MARKERS[name]
        path = self.err if which == "err" else self.out
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"bench/uprobes.py: {name} exited with {self.proc.returncode}: "
                                 f"{open(self.err, 'rb').read()[-400:]!r}")
            with open(path, "rb") as f:
                if marker in f.read():
                    time.sleep(0.5)  # bpftrace prints before its last probe is in
                    return
            time.sleep(0.05)
        self.stop()
        raise SystemExit(f"bench/uprobes.py: {name} did not attach in 60 s")

    def stop(self) -> bytes:
        try:
            os.killpg(self.proc.pid, signal.SIGINT)
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass
        with open(self.out, "rb") as f:
            return f.read()


def run_dns(calls: int) -> tuple[int, int]:
    """(pid, ns for ``calls`` getaddrinfo calls)."""
    p = subprocess.Popen([sys.executable, "-c", DNS_LOOP, str(calls)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    pid = int(p.stdout.readline())
    p.stdin.write("go\n")
    p.stdin.flush()
    ns = int(p.stdout.readline())
    p.wait()
    return pid, ns


def run_shell(lines: int) -> tuple[int, int]:
    """(pid, ns for an interactive bash to read ``lines`` lines of ':' and exit)."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(BASH, [BASH, "--norc", "--noprofile", "-i"], {"PS1": "$ ", "TERM": "dumb", "HOME": "/"})
    payload = b":\n" * lines + b"exit\n"
    t = time.perf_counter_ns()
    sent = 0
    while True:
        w = [fd] if sent < len(payload) else []
        r, w, _ = select.select([fd], w, [], 30)
        if not r and not w:
            break
        if w:
            # A little at a time: a line typed before bash reads it waits in the terminal's canonical-mode
            # buffer, whose size is limited.
            sent += os.write(fd, payload[sent:sent + 256])
        if r:
            try:
                if not os.read(fd, 65536):
                    break
            except OSError:  # EIO: bash has exited and the pty closed
                break
    _, status = os.waitpid(pid, 0)
    ns = time.perf_counter_ns() - t
    os.close(fd)
    return pid, ns


def delivered(name: str, output: bytes, pid: int, kind: str) -> int:
    lines = output.decode("utf-8", "replace").splitlines()
    if name == "kestrel-raw":
        want = "dns_query" if kind == "dns" else "shell_command"
        return sum(1 for ln in lines if ln.startswith("{") and json.loads(ln).get("type") == want
                   and json.loads(ln).get("pid") == pid)
    if name == "bpftrace":
        return sum(1 for ln in lines if ln.split()[1:2] == [str(pid)])
    # gethostlatency: TIME PID COMM LATms HOST; bashreadline: TIME PID COMMAND
    return sum(1 for ln in lines if ln.split()[1:2] == [str(pid)])


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=20000, help="getaddrinfo calls per run (default 20000)")
    ap.add_argument("--lines", type=int, default=2000, help="lines typed into bash per run (default 2000)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per subject (default 3)")
    ap.add_argument("--subjects", default="none,kestrel-raw,libbpf-tools,bpftrace")
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results", "uprobes.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/uprobes.py: run as root (uprobes need CAP_BPF, CAP_PERFMON)")
    sys.path.insert(0, REPO)
    from bench.host import ensure_packages

    still_missing = ensure_packages()  # libbpf-tools and bpftrace, with apt-get, as bench/run.py does
    chosen = [s for s in args.subjects.split(",")
              if not (s == "bpftrace" and "bpftrace" in still_missing)
              and not (s == "libbpf-tools" and any(t.startswith("/usr/sbin/") for t in still_missing))]
    results = {}
    for kind, n, run in (("dns", args.calls, run_dns), ("shell", args.lines, run_shell)):
        table = subjects(kind)
        times = {s: [] for s in chosen}
        got = {s: [] for s in chosen}
        with tempfile.TemporaryDirectory(prefix="kr-uprobes-") as work:
            for rep in range(args.reps):
                for s in (chosen if rep % 2 == 0 else chosen[::-1]):
                    argv = table[s]
                    tracer = Tracer(s, argv, work) if argv else None
                    try:
                        pid, ns = run(n)
                        time.sleep(1.0)  # the tracer writes out what it read
                    finally:
                        output = tracer.stop() if tracer else b""
                    times[s].append(ns)
                    got[s].append(delivered(s, output, pid, kind) if tracer else None)
                    print(f"{kind} rep {rep} {s}: {ns / n:.0f} ns/call, delivered {got[s][-1]}", file=sys.stderr)
        base = median(times["none"]) if "none" in times else None
        results[kind] = {s: {"calls": n, "ns_per_call": median(times[s]) / n,
                             "added_ns_per_call": (median(times[s]) - base) / n if base else None,
                             "delivered": median([g for g in got[s] if g is not None]) if s != "none" else None,
                             "runs_ns": times[s]} for s in chosen}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"machine": os.uname()._asdict() if hasattr(os.uname(), "_asdict") else list(os.uname()),
                   "results": results}, f, indent=1)
    for kind, rows in results.items():
        what = "getaddrinfo calls" if kind == "dns" else "bash lines"
        print(f"\n{kind}: {rows[chosen[0]]['calls']} {what}, median of {args.reps}")
        print("| subject | ns per call | added ns per call | delivered |\n|---|---|---|---|")
        for s, r in rows.items():
            added = "" if r["added_ns_per_call"] is None else f"{r['added_ns_per_call']:.0f}"
            print(f"| {s} | {r['ns_per_call']:.0f} | {added} | {'' if r['delivered'] is None else r['delivered']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
