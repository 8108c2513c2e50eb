"""The collector's BPF programs, written with kestrel_raw.asm, one module per event type.

``specs(event_types)`` lists the programs an event type needs and where each attaches;
``build(spec, ...)`` assembles the instruction list for the running kernel, taking every layout from the
tracepoint's format (tracefs) and from BTF (``KernelLayout``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from kestrel_raw.spec import DNS_QUERY, EXEC, EXIT, CONNECT, FORK, OPEN, OPEN_SYSCALL_OPENAT, OPEN_SYSCALL_OPENAT2, PROC
from kestrel_raw.spec import SHELL_COMMAND
from kestrel_raw.probes.targets import Uprobe, bash_binary, libc_binary
from kestrel_raw.programs import connect, context, dns, entry, exec as exec_, exit as exit_, fork, open as open_, proc
from kestrel_raw.programs import shell
from kestrel_raw.programs.builder import (
    FILTER_IGNORE, FILTER_ONLY, MAP_FILTER, MAP_RINGS, MAP_SCRATCH, MAP_SELF_RUNS, MAP_STATS, SCRATCH_SIZE,
    STAT_NAMES, STATS_ENTRIES, STATS_PER_KIND, ProgramBuilder,
)
from kestrel_raw.programs.builder import (
    FORK_TAILS, MAP_FORK_TAILS, MAP_TAILS, TAIL_EXEC_CWD, TAIL_EXEC_EXE, TAIL_FORK_CWD, TAIL_FORK_EXE,
    TAIL_OPEN_FINISH, TAIL_PROC_CWD, TAILS,
)
from kestrel_raw.programs.entry import ENTRY_VALUE_SIZE, MAP_ENTRY
from kestrel_raw.programs.exec import EXEC_SLOTS, MAP_EXEC_ENTRY, XE_VALUE_SIZE as EXEC_ENTRY_VALUE_SIZE
from kestrel_raw.programs.layout import KernelLayout

TP_BTF = "tp_btf"  # ProgramSpec.group of a tp_btf program: attached through its BTF type, not tracefs


@dataclass(frozen=True)
class ProgramSpec:
    name: str  # program name in the kernel (<= 15 chars)
    kind: int  # the event type id (record kind) it serves
    group: str | None  # tracepoint group (None: not attached, see tail)
    tracepoint: str | None
    _build: Callable  # (builder, fmt, layout) -> instructions
    # A program reached by bpf_tail_call from others (slot ``tail`` of ``tail_map``) instead of attached: the
    # second half of a program too long to verify as one (its paths multiply), verified on its own.
    tail: int | None = None
    tail_map: str = MAP_TAILS
    # A tp_btf program (BPF_PROG_TYPE_TRACING) attached to this raw tracepoint through its BTF type
    # btf_trace_<name> (and the tail programs it calls, loaded for the same target); None: a classic
    # tracepoint program (BPF_PROG_TYPE_TRACEPOINT).
    btf_target: str | None = None
    # A uprobe program (BPF_PROG_TYPE_KPROBE, ctx = the registers) attached where ``probe`` says; group is then
    # "uprobe" or "uretprobe" and tracepoint the symbol, which name it in listings and in the check after
    # attaching.  None: a tracepoint program.
    probe: Uprobe | None = None


def _spec(name, kind, group, tp, fn, tail=None, tail_map=MAP_TAILS, btf_target=None, probe=None):
    return ProgramSpec(name, kind, group, tp, fn, tail, tail_map, btf_target, probe)


def _uprobe(name, kind, symbol, ret, binary, fn):
    probe = Uprobe(symbol, ret, binary)
    return _spec(name, kind, probe.kind, symbol, fn, probe=probe)


def _walk(kind, what, next_tail=None, tail_map=MAP_TAILS):
    return lambda b, f, l: context.build_walk(b, l, kind, what, next_tail, tail_map)


def _proc(name, syscall):
    return _spec(name, PROC.id, "syscalls", f"sys_exit_{syscall}", lambda b, f, l: proc.build(b, f, l, syscall))


SPECS = {
    EXEC.id: (
        _spec("kr_exec", EXEC.id, "sched", "sched_process_exec", exec_.build),
        _spec("kr_exec_exe", EXEC.id, None, None, _walk(EXEC, "exe", TAIL_EXEC_CWD), tail=TAIL_EXEC_EXE),
        _spec("kr_exec_cwd", EXEC.id, None, None, _walk(EXEC, "cwd"), tail=TAIL_EXEC_CWD),
        # failed execs: the arguments copied at the entry, reported at the exit when it failed
        _spec("kr_execve_e", EXEC.id, "syscalls", "sys_enter_execve", lambda b, f, l: exec_.build_entry(b, f)),
        _spec("kr_execveat_e", EXEC.id, "syscalls", "sys_enter_execveat", lambda b, f, l: exec_.build_entry(b, f)),
        _spec("kr_execve_x", EXEC.id, "syscalls", "sys_exit_execve",
              lambda b, f, l: exec_.build_failed(b, f, l, "execve")),
        _spec("kr_execveat_x", EXEC.id, "syscalls", "sys_exit_execveat",
              lambda b, f, l: exec_.build_failed(b, f, l, "execveat")),
    ),
    OPEN.id: (
        # the entry copies first: a syscall whose exit is traced has had its arguments copied
        _spec("kr_openat_e", OPEN.id, "syscalls", "sys_enter_openat",
              lambda b, f, l: entry.build_string_entry(b, f, OPEN, "filename", entry.MARK_OPENAT)),
        _spec("kr_openat2_e", OPEN.id, "syscalls", "sys_enter_openat2",
              lambda b, f, l: entry.build_string_entry(b, f, OPEN, "filename", entry.MARK_OPENAT2)),
        _spec("kr_openat", OPEN.id, "syscalls", "sys_exit_openat",
              lambda b, f, l: open_.build(b, f, l, OPEN_SYSCALL_OPENAT)),
        _spec("kr_openat2", OPEN.id, "syscalls", "sys_exit_openat2",
              lambda b, f, l: open_.build(b, f, l, OPEN_SYSCALL_OPENAT2)),
        _spec("kr_open_fin", OPEN.id, None, None, open_.build_finish, tail=TAIL_OPEN_FINISH),
    ),
    CONNECT.id: (
        _spec("kr_connect_e", CONNECT.id, "syscalls", "sys_enter_connect",
              lambda b, f, l: entry.build_sockaddr_entry(b, f, CONNECT, entry.MARK_CONNECT)),
        _spec("kr_connect", CONNECT.id, "syscalls", "sys_exit_connect", connect.build),
    ),
    EXIT.id: (
        _spec("kr_exit", EXIT.id, "sched", "sched_process_exit", exit_.build),
    ),
    FORK.id: (
        _spec("kr_fork_exe", FORK.id, None, None, _walk(FORK, "exe", TAIL_FORK_CWD, MAP_FORK_TAILS), tail=TAIL_FORK_EXE,
              tail_map=MAP_FORK_TAILS, btf_target=fork.BTF_TARGET),
        _spec("kr_fork_cwd", FORK.id, None, None, _walk(FORK, "cwd", None, MAP_FORK_TAILS), tail=TAIL_FORK_CWD,
              tail_map=MAP_FORK_TAILS, btf_target=fork.BTF_TARGET),
        _spec("kr_fork", FORK.id, TP_BTF, fork.BTF_TARGET, fork.build, btf_target=fork.BTF_TARGET),
    ),
    SHELL_COMMAND.id: (
        _uprobe("kr_shell", SHELL_COMMAND.id, "readline", True, bash_binary, shell.build),
    ),
    DNS_QUERY.id: (
        # the call's copy first: a return whose call was seen has its arguments
        _uprobe("kr_dns_call", DNS_QUERY.id, "getaddrinfo", False, libc_binary, dns.build_call),
        _uprobe("kr_dns_ret", DNS_QUERY.id, "getaddrinfo", True, libc_binary, dns.build_return),
    ),
    # The internal proc record: the process cache's view of a changed context (no event).
    PROC.id: (
        _spec("kr_proc_cwd", PROC.id, None, None, _walk(PROC, "cwd"), tail=TAIL_PROC_CWD),
        _proc("kr_chdir", "chdir"),
        _proc("kr_fchdir", "fchdir"),
        _proc("kr_chroot", "chroot"),
        _proc("kr_unshare", "unshare"),
        _proc("kr_setns", "setns"),
        _proc("kr_sethostname", "sethostname"),
    ),
}
# What the process cache needs to stay current (kestrel_raw/collector/enrich.py): loaded whenever the
# collector carries context, whatever events were asked for.
CONTEXT_KINDS = (EXEC.id, EXIT.id, FORK.id, PROC.id)


def specs(kinds) -> list[ProgramSpec]:
    return [spec for kind in sorted(set(int(k) for k in kinds)) for spec in SPECS[kind]]


def kinds_for(event_types, context: bool) -> list[int]:
    """The record kinds whose programs a collector loads: the events asked for, and with context what keeps
    the process cache current (whose events are read but delivered only when asked for).  No built-in event
    asked for (a user's BPF object alone): no built-in program, context or none."""
    kinds = {int(t) for t in event_types}
    if context and kinds:
        kinds |= set(CONTEXT_KINDS)
    return sorted(kinds)


def config_specs(config) -> list[ProgramSpec]:
    """The programs a collector with ``config`` (a CollectorConfig) loads, in load order: what ``run`` loads
    is what ``disasm`` shows and ``verify`` checks."""
    return specs(kinds_for(config.event_types, config.context))


def build(spec: ProgramSpec, fmt, layout: KernelLayout, *, self_tgid: int | None, nrings: int,
          wakeup_threshold: int, filter_mode: str = FILTER_IGNORE, self_index: int | None = None,
          threads: bool = False, context: bool = False) -> list:
    """The instructions of ``spec`` for the tracepoint format ``fmt`` and the kernel ``layout``.

    ``self_index``: the program's slot in MAP_SELF_RUNS, where it counts its runs for ``self_tgid``.
    ``threads``: the fork program reports new threads too.  ``context``: the collector carries context
    (the filters still write the exec, exit and fork records they drop, flagged: programs/filter.py).
    """
    b = ProgramBuilder(spec.name, self_tgid=self_tgid, nrings=nrings, wakeup_threshold=wakeup_threshold,
                       filter_mode=filter_mode, self_index=self_index, threads=threads, layout=layout,
                       context=context)
    return spec._build(b, fmt, layout)


__all__ = [
    "KernelLayout", "ProgramSpec", "SPECS", "specs", "kinds_for", "config_specs", "build", "MAP_FILTER", "FILTER_IGNORE", "FILTER_ONLY",
    "MAP_RINGS", "MAP_SCRATCH", "MAP_SELF_RUNS", "MAP_STATS", "MAP_ENTRY", "ENTRY_VALUE_SIZE", "MAP_TAILS",
    "TAILS", "MAP_FORK_TAILS", "FORK_TAILS", "MAP_EXEC_ENTRY", "EXEC_ENTRY_VALUE_SIZE", "EXEC_SLOTS", "CONTEXT_KINDS", "TP_BTF",
    "SCRATCH_SIZE", "STATS_ENTRIES", "Uprobe",
    "STATS_PER_KIND", "STAT_NAMES",
]
