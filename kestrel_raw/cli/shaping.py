"""What the audit subcommands share with ``run``: the options that change a program's bytes, and ``run``'s
audit options (--pin, --verify, --verifier-log).

A program's bytes depend on this kernel (tracepoint formats, BTF layouts) and on these options alone: the
event types, the ring count (``tgid % N``), the wakeup threshold (``--wakeup-bytes``, derived from
``--buffer-size`` by default, or none with ``--latency low``).  ``disasm`` and ``verify`` take them with the
same names, meanings and defaults as ``run``, so that the programs they show are the ones ``run`` loads with
the same options.
"""
from __future__ import annotations

import argparse
import os
import sys

from kestrel_raw.cli.common import error


def add_shaping_arguments(p: argparse.ArgumentParser, *, events_default: str = "{run}, none with --object") -> None:
    """The options; ``events_default`` says what --events defaults to, ``{run}`` standing for run's default."""
    from kestrel_raw.config import DEFAULT_EVENT_TYPES

    run_default = ",".join(t.label for t in DEFAULT_EVENT_TYPES)
    p.add_argument("--events", default=None, help="comma-separated event types, as given to run (default: "
                                                  f"{events_default.format(run=run_default)})")
    p.add_argument("--object", metavar="FILE",
                   help="the BPF object FILE, as given to run --object: its programs too, linked for this kernel "
                        "as run loads them")
    p.add_argument("--buffers", type=int, default=None,
                   help="number of ring buffers, as given to run (default: run's, one per CPU, at most 4)")
    p.add_argument("--buffer-size", type=int, default=None, help="bytes per ring buffer, as given to run (default: run's)")
    p.add_argument("--wakeup-bytes", type=int, default=None, help="as given to run (default buffer size / 8)")
    p.add_argument("--latency", choices=("batch", "low"), default=None, help="as given to run (default batch)")
    p.add_argument("--context", action=argparse.BooleanOptionalAction, default=None,
                   help="as given to run (default on: the process cache's programs are loaded too)")
    p.add_argument("--threads", action=argparse.BooleanOptionalAction, default=None,
                   help="as given to run (default off; changes the fork program)")
    p.add_argument("--btf", metavar="PATH", default=os.environ.get("KESTREL_BTF"),
                   help="kernel BTF to take struct layouts from (default $KESTREL_BTF, else /sys/kernel/btf/vmlinux)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="text (default) or json")


def shaping_kwargs(args: argparse.Namespace) -> dict:
    """CollectorConfig keyword arguments from the shaping options that were given."""
    from kestrel_raw.config import parse_event_types

    kwargs: dict = {}
    if args.events:
        kwargs["event_types"] = parse_event_types(args.events)
    for name in ("buffers", "buffer_size", "wakeup_bytes", "latency", "context", "threads"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    if args.btf:
        kwargs["btf_path"] = args.btf
    if getattr(args, "object", None):
        kwargs["program_path"] = args.object
    return kwargs


def as_run_loads(kwargs: dict) -> dict:
    """``kwargs`` with run's default event types: every type, or none when a BPF object is given."""
    if "event_types" not in kwargs and "program_path" in kwargs:
        return {**kwargs, "event_types": ()}
    return kwargs


# --- run's audit options -------------------------------------------------------------------------------------

def add_run_audit_arguments(run) -> None:
    """run's audit options, on ``run`` (a parser or an argument group); every default None (cli/settings.py:
    a value not given)."""
    run.add_argument("--pin", metavar="FILE",
                     help="load nothing unless every program's SHA-256 is approved in FILE (kestrel-raw disasm "
                          "--pin-file FILE writes one; docs/audit.md); a program not approved: exit 2")
    run.add_argument("--verify", action="store_true", default=None,
                     help="after loading, read every program back from the kernel and check that it is the one "
                          "loaded, rewrites named (kestrel-raw verify shows them all); one line each on stderr")
    run.add_argument("--verifier-log", nargs=2, metavar=("LEVEL", "DIR"),
                     help="write the verifier's log of each program to DIR/NAME.log (LEVEL 1: the instructions "
                          "as verified; 2: every state; 4: statistics)")


def run_audit_kwargs(args: argparse.Namespace) -> dict:
    """CollectorConfig keyword arguments for --pin and --verifier-log (from ``args``, the parsed options or
    the merged settings); ConfigError (PinError) when bad."""
    from kestrel_raw.audit import PinFile
    from kestrel_raw.errors import ConfigError

    kwargs: dict = {}
    if getattr(args, "pin", None):
        kwargs["pin"] = PinFile.load(args.pin)
    if getattr(args, "verifier_log", None):
        level, directory = args.verifier_log
        try:
            kwargs["verifier_log_level"] = int(level)
        except ValueError:
            raise ConfigError(f"--verifier-log LEVEL must be 1, 2 or 4, got {level!r}") from None
        kwargs["verifier_log_path"] = directory
    return kwargs


def verify_loaded(collector) -> None:
    """run --verify: check each program the collector loaded against the bytes it loaded; one line each on
    stderr.  Raises SetupError naming the first program that is not verified."""
    from kestrel_raw.errors import SetupError

    checks = check_loaded(collector, symbols=kernel_symbols())
    for c in checks:
        print(f"kestrel-raw: verify: {c.name}: {'verified' if c.ok else 'NOT VERIFIED'} (id {c.info.id}, tag "
              f"{c.info.tag.hex()}, sha256 {c.sha256}; {c.comparison.summary()})", file=sys.stderr)
    bad = [c for c in checks if not c.ok]
    if bad:
        raise SetupError(f"verify: {bad[0].name} is not the program loaded: {bad[0].problems[0]}")


def check_loaded(collector, symbols=None) -> list:
    """A ``ProgramCheck`` of every program ``collector`` loaded (the built-in ones, then those of its BPF
    object), against the exact bytes it loaded."""
    from kestrel_raw.audit import objects
    from kestrel_raw.audit.readback import check_program

    # The maps by the names the programs give them (the kernel's name of the filter differs in only-mode).
    fd_names = {m.fileno(): name for name, m in collector._maps.items()}
    id_names = {m.map_info().id: name for name, m in collector._maps.items()}
    checks = [check_program(spec.name, prog.code, prog.fileno(), fd_names=fd_names, id_names=id_names,
                            symbols=symbols)
              for spec, prog in collector._programs]
    if collector.bpf_object is not None:
        checks += objects.check_loaded(collector.bpf_object, symbols)
    return checks


def kernel_symbols():
    """Kernel symbols to name the calls, or None (with a note) when /proc/kallsyms cannot be read."""
    from kestrel_raw.asm import KernelSymbols

    try:
        return KernelSymbols.load()
    except OSError as e:
        error(f"cannot read /proc/kallsyms ({e.strerror or e}): calls are shown by address")
        return None
