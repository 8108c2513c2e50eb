"""What the kernel says about a tracer process and its BPF programs: /proc/PID/stat CPU ticks, VmHWM,
the program ids behind its BPF fds (/proc/PID/fdinfo), and per-program run statistics from
``bpftool prog show --json``.  Parsers are pure (text in, values out); readers are thin wrappers.
"""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuTicks:
    utime: int  # clock ticks in user mode (field 14 of /proc/PID/stat)
    stime: int  # clock ticks in kernel mode (field 15)

    def seconds(self, clk_tck: int = CLK_TCK) -> float:
        return (self.utime + self.stime) / clk_tck


def parse_proc_stat(text: str) -> CpuTicks:
    """utime and stime from a /proc/PID/stat line.  The command name (field 2) may hold spaces and
    parentheses, so fields are counted from the LAST ')'."""
    end = text.rfind(")")
    if end < 0:
        raise ValueError(f"not a /proc/PID/stat line (no ')'): {text[:80]!r}")
    rest = text[end + 2:].split()
    # rest[0] is field 3 (state): field n is rest[n - 3]
    return CpuTicks(utime=int(rest[14 - 3]), stime=int(rest[15 - 3]))


def parse_schedstat_ns(text: str) -> int:
    """Time on CPU in ns (user + system) from /proc/PID/task/TID/schedstat: the first of its three
    fields (sum_exec_runtime).  Unlike /proc/PID/stat's 10 ms ticks, it is exact to the nanosecond as of
    the thread's last scheduling event."""
    fields = text.split()
    if len(fields) != 3:
        raise ValueError(f"not a schedstat line (want 3 fields): {text[:80]!r}")
    return int(fields[0])


def parse_vm_hwm_kb(status_text: str) -> int | None:
    """Peak resident set size in kB (``VmHWM:`` of /proc/PID/status); None if absent (a kernel thread)."""
    for line in status_text.splitlines():
        if line.startswith("VmHWM:"):
            parts = line.split()
            if len(parts) < 3 or parts[2] != "kB":
                raise ValueError(f"unexpected VmHWM line: {line!r}")
            return int(parts[1])
    return None


def parse_fdinfo_prog_id(text: str) -> int | None:
    """The ``prog_id:`` of one /proc/PID/fdinfo/N (a BPF program fd, or a BPF link fd, which names the
    program it holds); None for any other fd."""
    for line in text.splitlines():
        if line.startswith("prog_id:"):
            return int(line.split()[1])
    return None


@dataclass(frozen=True)
class ProgStats:
    id: int
    name: str
    run_cnt: int
    run_time_ns: int


def parse_bpftool_progs(doc: str | list) -> dict[int, ProgStats]:
    """Programs from ``bpftool prog show --json``, by id.  run_cnt and run_time_ns are present only while
    kernel.bpf_stats_enabled=1; they read as 0 otherwise."""
    items = json.loads(doc) if isinstance(doc, str) else doc
    return {
        int(p["id"]): ProgStats(int(p["id"]), p.get("name", ""), int(p.get("run_cnt", 0)),
                                int(p.get("run_time_ns", 0)))
        for p in items
    }


def run_delta(before: dict[int, ProgStats], after: dict[int, ProgStats], ids) -> dict:
    """Runs and kernel nanoseconds spent by programs ``ids`` between two snapshots: {"runs", "ns",
    "ns_per_run", "programs": {name: {"runs", "ns"}}}.  A program missing from ``before`` (loaded in
    between) counts from zero."""
    runs = ns = 0
    progs = {}
    for i in sorted(ids):
        if i not in after:
            continue
        a = after[i]
        b = before.get(i, ProgStats(i, a.name, 0, 0))
        d_runs, d_ns = a.run_cnt - b.run_cnt, a.run_time_ns - b.run_time_ns
        runs += d_runs
        ns += d_ns
        key = f"{a.name}#{i}"
        progs[key] = {"runs": d_runs, "ns": d_ns}
    return {"runs": runs, "ns": ns, "ns_per_run": ns / runs if runs else None, "programs": progs}


# -- readers ---------------------------------------------------------------------------------------

def read_cpu(pid: int) -> CpuTicks | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return parse_proc_stat(f.read())
    except (FileNotFoundError, ProcessLookupError):
        return None


def read_cpu_ns(pid: int) -> int | None:
    """CPU time of every live thread of ``pid`` in ns (sum of their schedstat); None if it is gone."""
    base = f"/proc/{pid}/task"
    try:
        tids = os.listdir(base)
    except (FileNotFoundError, ProcessLookupError):
        return None
    total = 0
    for tid in tids:
        try:
            with open(f"{base}/{tid}/schedstat") as f:
                total += parse_schedstat_ns(f.read())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def read_vm_hwm_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return parse_vm_hwm_kb(f.read())
    except (FileNotFoundError, ProcessLookupError):
        return None


def prog_ids_of(pid: int) -> set[int]:
    """Ids of the BPF programs process ``pid`` holds through program or link fds."""
    ids = set()
    base = f"/proc/{pid}/fdinfo"
    try:
        names = os.listdir(base)
    except (FileNotFoundError, ProcessLookupError):
        return ids
    for name in names:
        try:
            with open(f"{base}/{name}") as f:
                prog_id = parse_fdinfo_prog_id(f.read())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if prog_id is not None:
            ids.add(prog_id)
    return ids


def bpftool_progs(bpftool: str = "bpftool") -> dict[int, ProgStats]:
    out = subprocess.run([bpftool, "prog", "show", "--json"], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    return parse_bpftool_progs(out or "[]")
