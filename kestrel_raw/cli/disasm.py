"""``kestrel-raw disasm``: every program exactly as ``run`` would load it on this kernel, annotated.

Nothing is loaded and no map is made: the programs are built from this kernel's tracepoint formats
(tracefs) and BTF, as ``run`` builds them with the same options, and printed instruction by instruction in
the verifier's syntax (bpftool's), each block headed by what it does and each constant taken from the
kernel's layout followed by where it came from (the tracefs format field, or the BTF member path and the
struct's type id).  Map loads show the map's name (``map[scratch]``): the fd is the only thing that differs
in what ``run`` loads, and the digests leave it out.  Each program's SHA-256 (what a pin file approves) and
the tag the kernel will report for it (as bpftool shows it) head its listing.

With ``--object FILE`` the BPF object's programs are listed too (only they without ``--events``, as ``run``
loads them): linked as ``run --object`` links them (kestrel_raw/audit/objects.py), each headed by its
``SEC()`` name, digests, maps and the CO-RE relocations applied; ``--pin-file`` approves them by their kernel
names.  Listing only an object reads no tracefs: with ``--btf`` and a readable object it needs no privilege.

Privilege: reading tracefs and BTF only.  The BTF (/sys/kernel/btf/vmlinux) is world-readable; tracefs
(/sys/kernel/tracing) is root's alone on most systems (mode 0700, formats 0440), so disasm needs root
there unless read access to tracefs was granted; it never mounts tracefs (``run`` does).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from kestrel_raw.cli.common import EXIT_OK, EXIT_SETUP, EXIT_USAGE, error, one_line
from kestrel_raw.cli.shaping import add_shaping_arguments, as_run_loads, shaping_kwargs

NAME = "disasm"
HELP = ("print every program exactly as run would load it on this kernel, annotated, with its digests "
        "(loads nothing; reads tracefs, which needs root on most systems, and BTF)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_shaping_arguments(p)
    p.add_argument("--pin-file", metavar="FILE",
                   help="also write a pin file approving these programs (for run --pin FILE)")


@dataclasses.dataclass
class Built:
    """What ``disasm`` lists: the built-in programs (spec, instructions) and the BPF object's programs
    (``object_programs``), each as ``run`` with the same options loads it."""
    config: object
    builtin: list
    object_name: str | None = None
    object_programs: list = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.builtin) + len(self.object_programs)


def build(args: argparse.Namespace) -> Built:
    """The programs for ``args`` (ConfigError, SetupError, BpfObjectError)."""
    from kestrel_raw import programs
    from kestrel_raw.bpfobj import BpfObject
    from kestrel_raw.collector.load import build_programs, load_btf
    from kestrel_raw.config import CollectorConfig
    from kestrel_raw.loader import object_programs

    config = CollectorConfig(**as_run_loads(shaping_kwargs(args)))
    specs = programs.config_specs(config)
    built = Built(config, build_programs(config, specs, mount_tracefs=False) if specs else [])
    if config.program_path is not None:
        # As the collector links it: against the BTF of --btf (collector.objects.load_object).
        obj = BpfObject.load(config.program_path)
        built.object_name = obj.name
        built.object_programs = object_programs(obj, load_btf(config.btf_path))
    return built


def document(built: Built) -> dict:
    """The JSON document: the kernel and options the programs were built for, and each program (where it
    runs, its digests, its instructions with their bytes, comments and provenance; an object's program
    also its section, maps and CO-RE relocations)."""
    from kestrel_raw.asm import listing_json, program_digest
    from kestrel_raw.audit import objects
    from kestrel_raw.collector.load import attach_point

    config = built.config
    uname = os.uname()
    out = {"kernel": uname.release, "machine": uname.machine, "btf": config.btf_path, "options": options(config),
           "programs": []}
    for spec, insns in built.builtin:
        digest = program_digest(insns)
        out["programs"].append({"name": spec.name, "attach": attach_point(spec), "sha256": digest.sha256,
                                "tag": digest.tag, "insns": listing_json(insns)})
    out["programs"] += [objects.listing_json(p, built.object_name) for p in built.object_programs]
    return out


def options(config) -> dict:
    """The options the programs' bytes depend on, as ``run`` takes them (the ring options only shape the
    built-in programs)."""
    out: dict = {}
    if config.event_types:
        out = {"events": ",".join(t.label for t in config.event_types), "buffers": config.buffers,
               "buffer_size": config.buffer_size, "wakeup_bytes": config.wakeup_bytes, "latency": config.latency,
               "context": config.context, "threads": config.threads}
    if config.program_path is not None:
        out["object"] = config.program_path
    return out


def heading(built: Built) -> str:
    config = built.config
    uname = os.uname()
    opts = " ".join((f"--{'' if v else 'no-'}{k}" if isinstance(v, bool) else f"--{k.replace('_', '-')} {v}")
                    for k, v in options(config).items())
    return (f"; kestrel-raw disasm: {len(built)} program{'s' if len(built) != 1 else ''} for Linux {uname.release} "
            f"{uname.machine} (BTF {config.btf_path}), as `kestrel-raw run {opts}` loads them")


def pin_digests(built: Built) -> dict[str, str]:
    """pin name -> SHA-256 of every program listed (ConfigError when an object's program has the kernel name
    of a built-in one)."""
    from kestrel_raw.asm import program_digest
    from kestrel_raw.audit import objects
    from kestrel_raw.errors import ConfigError

    digests = {spec.name: program_digest(insns).sha256 for spec, insns in built.builtin}
    theirs = objects.pin_digests(built.object_programs)
    clash = sorted(set(digests) & set(theirs))
    if clash:
        raise ConfigError(f"the BPF object's program {clash[0]} has the name of a built-in program: a pin file "
                          "cannot tell them apart; rename it")
    return digests | theirs


def main(args: argparse.Namespace) -> int:
    from kestrel_raw.audit import format_pins, objects
    from kestrel_raw.collector.load import listing_text
    from kestrel_raw.errors import ConfigError, KestrelError

    try:
        built = build(args)
        digests = pin_digests(built) if args.pin_file else {}
    except ConfigError as e:
        error(str(e))
        return EXIT_USAGE
    except KestrelError as e:
        error(one_line(str(e)))
        return EXIT_SETUP
    if args.format == "json":
        json.dump(document(built), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(heading(built) + "\n\n")
        listings = [listing_text(spec, insns) for spec, insns in built.builtin]
        listings += [objects.listing_text(p, built.object_name) for p in built.object_programs]
        sys.stdout.write("\n\n".join(listings) + "\n")
    if args.pin_file:
        try:
            with open(args.pin_file, "w") as f:
                f.write(format_pins(digests, heading(built)[2:]))
        except OSError as e:
            error(f"cannot write the pin file {args.pin_file}: {e.strerror or e}")
            return EXIT_SETUP
        error(f"wrote {len(digests)} program digests to {args.pin_file}")
    return EXIT_OK
