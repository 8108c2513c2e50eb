"""Reading what each tracer printed: one parser per output format, turning a line into a ``Seen`` event
(or None for headers and noise), and the rules that decide which events belong to a generator.

Formats:
- ``kestrel``: kestrel-raw JSON lines (kestrel_raw/codec/jsonl.py);
- ``opensnoop``, ``execsnoop``, ``exitsnoop``: libbpf-tools' default columns;
- ``bpftrace``: the one-line formats of bench/tracers.py's scripts: ``open PID RET PATH``,
  ``exec PID PPID FILENAME``, ``exit PID PPID CODE``, ``connect PID RET``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Callable, Iterable


@dataclass(frozen=True)
class Seen:
    kind: str  # open, exec, exit, connect
    pid: int
    ppid: int | None  # None where the format does not carry it
    text: str  # open: path; exec: filename (or args); others: ""


def parse_kestrel(line: str) -> Seen | None:
    if not line.startswith("{"):
        return None
    try:
        o = json.loads(line)
    except ValueError:
        return None
    kind = o.get("type")
    if kind == "status" or "pid" not in o:  # the collector's own status line, first of every run
        return None
    text = o.get("path") if kind == "open" else o.get("filename") if kind == "exec" else ""
    return Seen(kind, int(o["pid"]), int(o["ppid"]), text or "")


# opensnoop: "%-6d %-16s %3d %3d %s" PID COMM FD ERR PATH (comm may hold spaces)
_OPENSNOOP = re.compile(r"^(\d+)\s+(.*?)\s+(-?\d+)\s+(\d+)\s(.*)$")
# execsnoop: "%-16s %-6d %-6d %3d %s" PCOMM PID PPID RET ARGS
_EXECSNOOP = re.compile(r"^(.*?)\s+(\d+)\s+(\d+)\s+(-?\d+)\s(.*)$")
# exitsnoop: "%-16s %-7d %-7d %-7d %-7.2f %s" PCOMM PID PPID TID AGE(s) EXIT_CODE
_EXITSNOOP = re.compile(r"^(.*?)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+\.\d+)\s+(.*)$")


def parse_opensnoop(line: str) -> Seen | None:
    m = _OPENSNOOP.match(line.rstrip("\n"))
    if not m:
        return None
    return Seen("open", int(m.group(1)), None, m.group(5).strip())


def parse_execsnoop(line: str) -> Seen | None:
    m = _EXECSNOOP.match(line.rstrip("\n"))
    if not m:
        return None
    args = m.group(5).strip()
    return Seen("exec", int(m.group(2)), int(m.group(3)), args.split(" ", 1)[0])


def parse_exitsnoop(line: str) -> Seen | None:
    m = _EXITSNOOP.match(line.rstrip("\n"))
    if not m:
        return None
    return Seen("exit", int(m.group(2)), int(m.group(3)), "")


def parse_bpftrace(line: str) -> Seen | None:
    parts = line.rstrip("\n").split(" ", 3)
    try:
        kind = parts[0]
        if kind == "open" and len(parts) == 4:
            return Seen("open", int(parts[1]), None, parts[3])
        if kind in ("exec", "exit") and len(parts) >= 3:
            return Seen(kind, int(parts[1]), int(parts[2]), parts[3] if kind == "exec" and len(parts) == 4 else "")
        if kind == "connect" and len(parts) >= 2:
            return Seen("connect", int(parts[1]), None, "")
    except ValueError:
        return None
    return None


PARSERS: dict[str, Callable[[str], Seen | None]] = {
    "kestrel": parse_kestrel,
    "opensnoop": parse_opensnoop,
    "execsnoop": parse_execsnoop,
    "exitsnoop": parse_exitsnoop,
    "bpftrace": parse_bpftrace,
}


def belongs(workload: str, ev: Seen, pids: frozenset[int], target: str = "") -> bool:
    """Does ``ev`` count as one of the operations the generators ``pids`` made?

    open: an open of ``target`` by a generator; openlat: an open of ``target<seq>`` by a generator;
    exec / exit: an exec or exit of a CHILD of a generator (the generator forks /bin/true); connect: a
    connect by a generator.
    """
    if workload == "open":
        return ev.kind == "open" and ev.pid in pids and ev.text == target
    if workload == "openlat":
        return ev.kind == "open" and ev.pid in pids and ev.text.startswith(target)
    if workload == "exec":
        return ev.kind == "exec" and ev.ppid in pids
    if workload == "exit":
        return ev.kind == "exit" and ev.ppid in pids
    if workload == "connect":
        return ev.kind == "connect" and ev.pid in pids
    raise ValueError(f"unknown workload {workload!r}: expected open, openlat, exec, exit or connect")


@dataclass(frozen=True)
class Tally:
    total: int  # events of any process in the output (what the tracer delivered)
    by_pid: dict[int, int]  # events that belong to each generator pid (exec/exit: by parent pid)


def tally(fmt: str, lines: Iterable[str], workload: str, pids: Iterable[int], target: str = "") -> Tally:
    parse = PARSERS[fmt]
    pidset = frozenset(pids)
    by_pid = {p: 0 for p in pidset}
    total = 0
    by_parent = workload in ("exec", "exit")
    for line in lines:
        ev = parse(line)
        if ev is None:
            continue
        total += 1
        if belongs(workload, ev, pidset, target):
            by_pid[ev.ppid if by_parent else ev.pid] += 1
    return Tally(total, by_pid)


def latency_seq(ev: Seen, prefix: str) -> int | None:
    """The sequence number of an openlat path ``prefix<seq>`` (None for anything else)."""
    if ev.kind != "open" or not ev.text.startswith(prefix):
        return None
    tail = ev.text[len(prefix):]
    return int(tail) if tail.isdigit() else None


def parse_receipts(lines: Iterable[str], prefix: str) -> list[tuple[int, str]]:
    """bench/lib_latency.py's output: ``<receipt_ns> <JSON line>`` per event -> [(receipt_ns, JSON line)]
    for the lines that mention ``prefix`` (the latency generator's paths)."""
    out = []
    for line in lines:
        stamp, _, rest = line.rstrip("\n").partition(" ")
        if prefix in rest and stamp.isdigit():
            out.append((int(stamp), rest))
    return out


@dataclass(frozen=True)
class Latencies:
    visible_us: list[float]  # receipt - the generator's stamp before openat
    kernel_us: list[float]  # receipt - the event's ts_mono_ns (kestrel-raw only)


def latencies(arrivals: Iterable[tuple[int, str]], stamps: dict[int, int], pid: int, prefix: str,
              fmt: str) -> Latencies:
    """Match each received line of format ``fmt`` to the generator's stamp by its path's sequence number;
    lines of other pids, other paths or unknown sequence numbers are skipped; a sequence number seen
    twice counts once (its first receipt)."""
    parse = PARSERS[fmt]
    visible, kernel, seen = [], [], set()
    for now, line in arrivals:
        ev = parse(line)
        if ev is None or ev.pid != pid:
            continue
        seq = latency_seq(ev, prefix)
        if seq is None or seq not in stamps or seq in seen:
            continue
        seen.add(seq)
        visible.append((now - stamps[seq]) / 1e3)
        if fmt == "kestrel":
            ts = json.loads(line).get("ts_mono_ns")
            if ts:
                kernel.append((now - ts) / 1e3)
    return Latencies(visible, kernel)


_SUMMARY = re.compile(r"kestrel-raw: records=(\d+) delivered\[([^\]]*)\] kernel_lost=(\d+) user_dropped=(\d+) "
                      r"parse_errors=(\d+)")


def parse_kestrel_summary(stderr: str) -> dict | None:
    """The stats line kestrel-raw prints on stderr at exit, as a dict; None if it is absent."""
    found = None
    for line in stderr.splitlines():
        m = _SUMMARY.search(line)
        if m:
            delivered = {}
            for item in m.group(2).split():
                k, _, v = item.partition("=")
                delivered[k] = int(v)
            found = {"records": int(m.group(1)), "delivered": delivered, "kernel_lost": int(m.group(3)),
                     "user_dropped": int(m.group(4)), "parse_errors": int(m.group(5))}
    return found


_OUTPUTS = re.compile(r"kestrel-raw: outputs (.*)$")
_OUTPUT_ITEM = re.compile(r"(\w+)\[([^\]]*)\]")


def parse_kestrel_outputs(stderr: str) -> dict | None:
    """The outputs line kestrel-raw prints on stderr at exit (``kestrel-raw: outputs nats[published=N
    spooled=N dropped=N resent=N spool_bytes=N]``) as {output: {counter: value}}; None if it is absent."""
    found = None
    for line in stderr.splitlines():
        m = _OUTPUTS.search(line)
        if m:
            found = {name: {k: int(v) for k, _, v in (item.partition("=") for item in body.split())}
                     for name, body in _OUTPUT_ITEM.findall(m.group(1))}
    return found


_PID = re.compile(rb',"pid":(\d+),')


def count_open_lines(payload: bytes, pids: frozenset[int], target: str, by_pid: dict[int, int]) -> int:
    """The same rule as ``tally(..., "open", ...)`` over a chunk of kestrel-raw JSON lines (a NATS message's
    payload), without decoding each line: adds the opens of ``target`` by each of ``pids`` to ``by_pid``
    and returns the number of event lines in the chunk.  Exact for kestrel-raw's encoder, which writes
    "type" first, "pid" before "path", and no spaces."""
    path_key = b',"path":' + json.dumps(target).encode() + b','
    lines = 0
    for line in payload.split(b"\n"):
        if not line:
            continue
        lines += 1
        if line.startswith(b'{"type":"open",') and path_key in line:
            m = _PID.search(line)
            if m:
                pid = int(m.group(1))
                if pid in pids:
                    by_pid[pid] += 1
    return lines
