"""Attaching the loaded programs, and the check after attaching: attached means proven.

start() makes each tracepoint fire in the collector's own process and sees its program run (the
provocations and the reason are in kestrel_raw/collector/selfcheck.py), attaching again one the kernel
accepted but does not run.
"""
from __future__ import annotations

import trio

from kestrel_raw import programs
from kestrel_raw.collector import selfcheck
from kestrel_raw.errors import SetupError
from kestrel_raw.kernel.attach import attach_tp_btf, attach_tracepoint, attach_uprobe
from kestrel_raw.kernel.prog import Program
from kestrel_raw.maps import PerCPUArrayMap

SELF_CHECK_TRIES = 3  # attachments made of a tracepoint before one that fires is given up (selfcheck.py)
SELF_CHECK_WAIT = 5.0  # seconds a provoked program has to show its run


def attach(spec: programs.ProgramSpec, prog: Program):
    """Attach ``prog`` where ``spec`` says: a classic tracepoint, a tp_btf program's raw tracepoint, or a
    uprobe on a function of a file (for every process)."""
    if spec.probe is not None:
        path, offset = spec.probe.locate()
        return attach_uprobe(prog, path, offset, retprobe=spec.probe.ret)
    if spec.btf_target is not None:
        return attach_tp_btf(prog, spec.btf_target)
    return attach_tracepoint(prog, spec.group, spec.tracepoint)


def attach_all(loaded: list[tuple[programs.ProgramSpec, Program]], links: dict) -> None:
    """Attach every program where its spec says; ``links[i]`` is the attachment of ``loaded[i]`` (a program
    reached by tail call has none)."""
    for i, (spec, prog) in enumerate(loaded):
        if spec.tail is None:
            links[i] = attach(spec, prog)


async def check_attached(loaded: list[tuple[programs.ProgramSpec, Program]], links: dict,
                         runs: PerCPUArrayMap, reattached: list[str], provoke_also: dict | None = None) -> None:
    """Make each tracepoint fire in this process and see its program run; re-attach the silent ones.

    ``runs`` is MAP_SELF_RUNS, where each program counts its runs for this process.  ``provoke_also`` adds
    provocations that need the collector's state (selfcheck.NEEDS_COLLECTOR: the shell check's bash),
    by (group, tracepoint).  An attachment the
    kernel accepted can stay dead (selfcheck.py).  The silent ones are all detached before any is attached
    again, so that a tracepoint this collector alone uses is turned off and on; each is added to
    ``reattached``.  Raises SetupError when they are still silent after SELF_CHECK_TRIES tries.
    """
    # Program index -> what makes its tracepoint fire here (the exec program has nothing).
    known = {**selfcheck.PROVOKE, **(provoke_also or {})}
    provoke = {i: known[key] for i, (spec, _prog) in enumerate(loaded) if (key := (spec.group, spec.tracepoint)) in known}
    for attempt in range(1, SELF_CHECK_TRIES + 1):
        before = {i: runs.sum_u64(i) for i in provoke}
        for fn in dict.fromkeys(provoke.values()):  # once each: the call and return probes share one
            fn()
        # A syscall's program has run when the syscall returns; a thread's exit comes a little
        # after join().  The wait is only ever long for a program that does not run.
        deadline = trio.current_time() + SELF_CHECK_WAIT
        while True:
            silent = [i for i in provoke if runs.sum_u64(i) == before[i]]
            if not silent or trio.current_time() >= deadline:
                break
            await trio.sleep(0.005)
        if not silent:
            return
        targets = ", ".join(f"{spec.name} at {spec.group}:{spec.tracepoint}"
                            for spec in (loaded[i][0] for i in silent))
        if attempt == SELF_CHECK_TRIES:
            raise SetupError(
                f"the kernel accepted {targets} but does not run it: this process's own calls did not "
                f"reach it in {SELF_CHECK_TRIES} tries, detached and attached again between tries.  "
                f"Events there would be missed without a trace, so the collector stops.  Another "
                f"tracer on the same tracepoint can keep it in that state (`bpftool perf` lists them)")
        reattached.extend(f"{loaded[i][0].group}:{loaded[i][0].tracepoint}" for i in silent)
        for i in silent:
            links[i].close()
        for i in silent:
            spec, prog = loaded[i]
            links[i] = attach(spec, prog)
