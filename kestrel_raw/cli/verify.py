"""``kestrel-raw verify``: read the programs back from the kernel and show they are the ones meant.

Two ways, for two questions an auditor asks:

- ``kestrel-raw verify`` (or ``--pid PID``): is what a running collector put into this kernel what this
  kestrel-raw builds?  The running collector's programs and maps are found by what they are (a ``kr_*``
  tracepoint program and a kr_filter/kr_only map in one process, read through pidfd_getfd, as collectors
  find each other); the programs this kestrel-raw builds for this kernel with that collector's options are
  compared with them.  The options are read from the collector where its maps say them (events from its
  programs, --buffers and --buffer-size from its rings); --wakeup-bytes and --latency, which only the
  bytes show, are given or tried (run's default, then --latency low).  Also checked: its own-tgid map
  holds its pid and is frozen.
- ``kestrel-raw verify --load``: load the programs here (nothing attached), check each against the exact
  bytes loaded, and unload them.

With ``--object FILE`` (the object given to ``run --object``) the object's programs are checked too, the
same way (kestrel_raw/audit/objects.py): loaded here with ``--load``, or found in the running collector by
their kernel name and tag (a collector that runs only an object is found by its object's programs, or by
``--pid``).  Without it, the programs of a running collector that are not built-in ones are listed, not
compared, each as a problem: the collector is then not verified.

For each program: the kernel's tag equals the tag of the instructions meant (the kernel computes it over
the bytes it was given); the kernel's xlated instructions are those instructions but for the rewrites the
kernel makes, each named (map fd -> map id, helper id -> the function called, inlined map lookups and
helpers with the per-CPU address move, arguments added, jumps moved, dead code removed); the maps it uses
are the maps its instructions name; run counts when BPF stats are on.  With ``--pin FILE`` the programs'
digests must be approved by FILE too.  Exit status 0 when every program is verified, 1 when one is not or
the kernel cannot be read, 2 for a bad command line.

Privilege: reading another process's fds (pidfd_getfd) and programs needs root, or CAP_SYS_PTRACE and
CAP_SYS_ADMIN (BPF_OBJ_GET_INFO_BY_FD, map and program ids); --load needs what ``run`` needs to load.
"""
from __future__ import annotations

import argparse
import json
import sys

from kestrel_raw.cli.common import EXIT_OK, EXIT_SETUP, EXIT_USAGE, error, one_line
from kestrel_raw.cli.shaping import (
    add_shaping_arguments, as_run_loads, check_loaded, kernel_symbols, shaping_kwargs,
)

NAME = "verify"
HELP = ("read the loaded programs back from the kernel (a running collector's, or --load them here) and "
        "show they are the ones meant, naming each rewrite the kernel made")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_shaping_arguments(p, events_default="those of the collector checked; with --load, {run}, none with "
                                            "--object")
    p.add_argument("--pid", type=int, help="the collector to check (default: every running collector)")
    p.add_argument("--load", action="store_true", help="load the programs here (nothing attached) and check them")
    p.add_argument("--pin", metavar="FILE", help="also require every program's SHA-256 to be approved by FILE")


def main(args: argparse.Namespace) -> int:
    from kestrel_raw.audit import PinFile
    from kestrel_raw.audit.pin import pin_name
    from kestrel_raw.errors import ConfigError, KestrelError

    try:
        pins = PinFile.load(args.pin) if args.pin else None
        kwargs = shaping_kwargs(args)
        if args.load and args.pid is not None:
            raise ConfigError("--load checks programs loaded here, --pid a running collector's: give one")
    except ConfigError as e:
        error(str(e))
        return EXIT_USAGE
    symbols = kernel_symbols()
    try:
        reports = _load_here(kwargs, symbols) if args.load else _running(args, kwargs, symbols)
    except ConfigError as e:
        error(str(e))
        return EXIT_USAGE
    except (KestrelError, OSError) as e:
        error(one_line(str(e)))
        return EXIT_SETUP
    if reports is None:
        return EXIT_SETUP
    ok = True
    for report in reports:
        if pins is not None:
            for check in report["checks"]:
                why = pins.refusal(pin_name(check.name), check.sha256)
                if why is not None:
                    report["problems"].append(why)
        ok = ok and not report["problems"] and all(c.ok for c in report["checks"])
    if args.format == "json":
        json.dump({"ok": ok, "collectors": [
            {"collector": r["collector"], "options": r["options"], "problems": r["problems"],
             "programs": [c.to_json() for c in r["checks"]]} for r in reports]}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        for r in reports:
            built = ' '.join(f'--{k} {v}' for k, v in r['options'].items())
            print(f"; {r['collector']}" + (f", built with {built}" if built else ""))
            for p in r["problems"]:
                print(f"; problem: {p}")
            for c in r["checks"]:
                print(c.text())
        print(f"; {'every program verified' if ok else 'NOT VERIFIED'}")
    return EXIT_OK if ok else EXIT_SETUP


def _load_here(kwargs: dict, symbols) -> list[dict]:
    import trio

    from kestrel_raw.cli.disasm import options
    from kestrel_raw.collector import KestrelCollector
    from kestrel_raw.config import CollectorConfig

    config = CollectorConfig(**as_run_loads(kwargs))
    send, _recv = trio.open_memory_channel(1)
    collector = KestrelCollector(send, config)
    collector.load()
    try:
        checks = check_loaded(collector, symbols)
    finally:
        collector.stop()
    return [{"collector": "loaded here (nothing attached), checked against the bytes loaded",
             "options": _flags(options(config)), "problems": [], "checks": checks}]


def _running(args: argparse.Namespace, kwargs: dict, symbols) -> list[dict] | None:
    from kestrel_raw.asm import prog_tag
    from kestrel_raw.audit.pin import pin_name
    from kestrel_raw.audit.readback import collector_pids, running_collector

    obj = _object(kwargs)
    tags = {(pin_name(p.name), prog_tag(p.insns)) for p in obj[1]} if obj is not None else None
    pids = [args.pid] if args.pid is not None else collector_pids(tags)
    if not pids:
        error("no running collector found (a process holding kr_* programs and a kr_filter map"
              f"{', or the programs of ' + kwargs['program_path'] if obj is not None else ''}); start one, give "
              "--pid, or use --load to load and check the programs here")
        return None
    reports = []
    for pid in pids:
        # A process named by --pid, or found by its object's programs, may hold no built-in program.
        rc = running_collector(pid, object_only=obj is not None or args.pid is not None)
        if rc is None:
            error(f"process {pid} is no collector kestrel-raw can read (no kr_* programs and kr_filter map, or "
                  f"its fds cannot be taken: that needs root or CAP_SYS_PTRACE)")
            return None
        try:
            reports.append(_check_running(rc, kwargs, symbols, obj))
        finally:
            rc.close()
    return reports


def _object(kwargs: dict):
    """(BpfObject, its programs linked as run links them) of --object, or None."""
    from kestrel_raw.bpfobj import BpfObject
    from kestrel_raw.collector.load import load_btf
    from kestrel_raw.config import CollectorConfig
    from kestrel_raw.loader import object_programs

    if "program_path" not in kwargs:
        return None
    config = CollectorConfig(**as_run_loads(kwargs))      # the path checked as run checks it
    obj = BpfObject.load(config.program_path)
    return obj, object_programs(obj, load_btf(config.btf_path))


def _check_running(rc, kwargs: dict, symbols, obj) -> dict:
    from kestrel_raw import programs
    from kestrel_raw.audit import objects
    from kestrel_raw.audit.readback import check_collector, kinds_of, self_tgid_problems
    from kestrel_raw.cli.disasm import options
    from kestrel_raw.config import CollectorConfig
    from kestrel_raw.spec import FORK, PROC, EventType

    base = dict(kwargs)
    kinds = kinds_of(rc.programs)
    # The event kinds it loaded (with context, exec, fork and exit are loaded whatever was asked for: their
    # programs are the same either way); the internal proc record's programs say it carries context.
    base.setdefault("event_types", tuple(EventType(k) for k in kinds if k in EventType.__members__.values())
                    or None)
    if base["event_types"] is None:
        base.pop("event_types")
    base.setdefault("context", PROC.id in kinds)
    checks, problems = [], []
    opts = {"object": obj[0].source} if obj is not None else {}
    if rc.programs:             # its built-in programs (none: run --object without --events)
        if programs.MAP_RINGS in rc.maps:
            base.setdefault("buffers", rc.maps[programs.MAP_RINGS][1].max_entries)
        if "kr_ring0" in rc.maps:
            base.setdefault("buffer_size", rc.maps["kr_ring0"][1].max_entries)
        if "kr_only" in rc.maps:
            base["only_tgids"] = (rc.pid,)  # only the filter's mode changes the bytes, not its tgids
        variants: list[dict] = [{}]
        if "wakeup_bytes" not in kwargs and "latency" not in kwargs:
            variants.append({"latency": "low"})
        if "threads" not in kwargs and FORK.id in kinds:  # --threads changes the fork program
            variants += [{**v, "threads": True} for v in variants]
        candidates = [CollectorConfig(**base, **v) for v in variants]
        config, checks = check_collector(rc, candidates, symbols)
        opts = options(config)
        problems = self_tgid_problems(rc)
        built = {c.name for c in checks}
        problems += [f"program {name} is not one this kestrel-raw builds with these options"
                     for name in sorted(set(rc.programs) - built)]
    if obj is not None:
        object_checks, object_problems = objects.check_running(rc.others, obj[0], obj[1], symbols)
        checks += object_checks
        problems += object_problems
    else:
        problems += [f"program {info.name} (id {info.id}) is not a built-in program (of the collector's BPF object?): "
                     "listed, not compared; give --object FILE, the object the collector runs"
                     for _fd, info in rc.others]
    return {"collector": f"collector pid {rc.pid}", "options": _flags(opts), "problems": problems,
            "checks": checks}


def _flags(opts: dict) -> dict:
    return {k.replace("_", "-"): v for k, v in opts.items()}
