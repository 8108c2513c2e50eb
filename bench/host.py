"""Getting this machine ready for a run, and putting it back: tracefs, the peer tools (Debian packages),
matplotlib (bench-only), kernel.bpf_stats_enabled, and the C load generator built with the machine's gcc.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

TRACEFS = "/sys/kernel/tracing"
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
BUILD_DIR = os.path.join(BENCH_DIR, "build")
GEN_SOURCE = os.path.join(BENCH_DIR, "gen", "krgen.c")

# tool -> Debian package that ships it
PACKAGES = {
    "/usr/sbin/opensnoop": "libbpf-tools",
    "/usr/sbin/execsnoop": "libbpf-tools",
    "/usr/sbin/exitsnoop": "libbpf-tools",
    "bpftrace": "bpftrace",
    "bpftool": "bpftool",
    "gcc": "gcc",
    "stdbuf": "coreutils",
}


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def tracefs_mounted(mountinfo: str) -> bool:
    return any(line.split()[4] == TRACEFS and " - tracefs " in line for line in mountinfo.splitlines()
               if len(line.split()) > 4)


def ensure_tracefs() -> None:
    """Mount tracefs where the peers (and kestrel-raw) look for it; a fresh machine has it unmounted."""
    with open("/proc/self/mountinfo") as f:
        if tracefs_mounted(f.read()):
            return
    log(f"mounting tracefs on {TRACEFS}")
    subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS], check=True)


def _have(tool: str) -> bool:
    return os.path.exists(tool) if tool.startswith("/") else shutil.which(tool) is not None


def ensure_packages() -> list[str]:
    """apt-get install the Debian packages of missing tools; returns the tools still missing after that."""
    missing = sorted({pkg for tool, pkg in PACKAGES.items() if not _have(tool)})
    if missing:
        log(f"installing {' '.join(missing)} with apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-q"], env=env, check=False, stdin=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], env=env,
                       check=False, stdin=subprocess.DEVNULL)
    return [tool for tool in PACKAGES if not _have(tool)]


def ensure_matplotlib() -> bool:
    """matplotlib is a bench-only dependency: pip-install it when missing.  False if it cannot be had."""
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        pass
    log("installing matplotlib (bench-only dependency) with pip")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"], stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        return False
    import importlib
    importlib.invalidate_caches()
    try:
        import matplotlib  # noqa: F401,F811
        return True
    except ImportError:
        return False


BPF_STATS = "/proc/sys/kernel/bpf_stats_enabled"


@contextlib.contextmanager
def bpf_stats(value: str = "1"):
    """kernel.bpf_stats_enabled=``value`` for the block, then the value before.  On ("1") for the whole run:
    the attach check reads program run counts, and the "kernel" phase the accounting.  Off ("0") for the
    timed part of each slowdown run, as a host has it by default: it costs every program run of every
    subject two clock reads."""
    with open(BPF_STATS) as f:
        before = f.read().strip()
    with open(BPF_STATS, "w") as f:
        f.write(value)
    try:
        yield
    finally:
        with open(BPF_STATS, "w") as f:
            f.write(before)


def build_generator() -> str:
    """Compile bench/gen/krgen.c into bench/build/ (not committed) and return the binary's path."""
    os.makedirs(BUILD_DIR, exist_ok=True)
    out = os.path.join(BUILD_DIR, "krgen")
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(GEN_SOURCE):
        log(f"building {out} with gcc")
        subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-o", out, GEN_SOURCE], check=True)
    return out


def machine_facts() -> dict:
    un = os.uname()
    facts = {"kernel": un.release, "machine": un.machine, "cpus": os.cpu_count(), "python": sys.version.split()[0]}
    for tool, args in (("bpftrace", ["--version"]), ("bpftool", ["version"])):
        try:
            out = subprocess.run([tool, *args], capture_output=True, text=True, timeout=10).stdout
            facts[tool] = out.splitlines()[0] if out else None
        except (OSError, subprocess.TimeoutExpired):
            facts[tool] = None
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "libbpf-tools"], capture_output=True,
                             text=True, timeout=10).stdout
        facts["libbpf-tools"] = out or None
    except OSError:
        facts["libbpf-tools"] = None
    try:
        with open("/proc/loadavg") as f:
            facts["loadavg_at_start"] = f.read().split()[:3]
    except OSError:
        pass
    return facts


def git_commit(path: str) -> str | None:
    """HEAD of the git tree at ``path``, with "+dirty" when kestrel_raw/ has uncommitted changes."""
    try:
        head = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", path, "status", "--porcelain", "--", "kestrel_raw"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return None
    return (head + ("+dirty" if dirty else "")) or None


def export_rev(rev: str) -> tuple[str, str]:
    """(full commit id, directory) for ``rev`` of this repository: its kestrel_raw/ exported with git archive
    into a fresh scratch directory (the working tree, which others edit meanwhile, is not used)."""
    repo = os.path.dirname(BENCH_DIR)
    r = subprocess.run(["git", "-C", repo, "rev-parse", "--verify", f"{rev}^{{commit}}"], capture_output=True,
                       text=True, timeout=30)
    if r.returncode != 0:
        raise SystemExit(f"--kestrel-rev {rev}: not a commit of {repo}: {r.stderr.strip()}")
    commit = r.stdout.strip()
    dest = tempfile.mkdtemp(prefix=f"kr-bench-src-{commit[:12]}-")
    archive = subprocess.Popen(["git", "-C", repo, "archive", "--format=tar", commit, "kestrel_raw"],
                               stdout=subprocess.PIPE)
    untar = subprocess.run(["tar", "-x", "-C", dest], stdin=archive.stdout, timeout=120)
    archive.stdout.close()
    if archive.wait(timeout=120) != 0 or untar.returncode != 0:
        raise SystemExit(f"--kestrel-rev {rev}: git archive of kestrel_raw/ at {commit} failed")
    # Byte-compile it, as pip does when it installs a package: otherwise every start of the collector
    # compiles ~40 modules from source (PYTHONDONTWRITEBYTECODE, set on this machine, forbids caching),
    # which is ~60 ms of "start to attached" that no installed collector pays.
    compiled = subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(dest, "kestrel_raw")],
                              capture_output=True, text=True, timeout=300)
    if compiled.returncode != 0:
        raise SystemExit(f"--kestrel-rev {rev}: compileall failed: {compiled.stdout}{compiled.stderr}")
    return commit, dest


def trio_hop(argv: list[str]) -> dict:
    """bench/lib_latency.py --hop: trio's own cost of handing an item from one task to another (no
    kernel, no collector), the floor under the library subjects' "out of the channel" figures."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            return {"error": f"exit {r.returncode}: {r.stderr.strip()[-300:]}"}
        return json.loads(r.stdout)
    except (OSError, subprocess.TimeoutExpired, ValueError) as e:
        return {"error": f"{type(e).__name__}: {e}"}


def parse_speed(argv: list[str], n: int) -> dict:
    """bench/parse_speed.py's figures (run as its own process, so it imports the benchmarked kestrel_raw);
    {"error": ...} when it fails."""
    try:
        r = subprocess.run([*argv, "--n", str(n), "--json"], capture_output=True, text=True, timeout=900,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": f"{type(e).__name__}: {e}"}
    if r.returncode != 0:
        return {"error": f"parse_speed.py exited with {r.returncode}: {r.stderr.strip()[-400:]}"}
    return json.loads(r.stdout)
