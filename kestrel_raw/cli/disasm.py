"""``kestrel-raw disasm``: every program exactly as ``run`` would load it on this kernel, annotated.

Nothing is loaded and no map is made: the programs are built from this kernel's tracepoint formats
(tracefs) and BTF, as ``run`` builds them with the same options, and printed instruction by instruction in
the verifier's syntax (bpftool's), each block headed by what it does and each constant taken from the
kernel's layout followed by where it came from (the tracefs format field, or the BTF member path and the
struct's type id).  Map loads show the map's name (``map[scratch]``): the fd is the only thing that differs
in what ``run`` loads, and the digests leave it out.  Each program's SHA-256 (what a pin file approves) and
the tag the kernel will report for it (as bpftool shows it) head its listing.

Privilege: reading tracefs and BTF only.  The BTF (/sys/kernel/btf/vmlinux) is world-readable; tracefs
(/sys/kernel/tracing) is root's alone on most systems (mode 0700, formats 0440), so disasm needs root
there unless read access to tracefs was granted; it never mounts tracefs (``run`` does).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from kestrel_raw.cli.common import EXIT_OK, EXIT_SETUP, EXIT_USAGE, error, one_line
from kestrel_raw.cli.shaping import add_shaping_arguments, shaping_kwargs

NAME = "disasm"
HELP = ("print every program exactly as run would load it on this kernel, annotated, with its digests "
        "(loads nothing; reads tracefs, which needs root on most systems, and BTF)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_shaping_arguments(p)
    p.add_argument("--pin-file", metavar="FILE",
                   help="also write a pin file approving these programs (for run --pin FILE)")


def build(args: argparse.Namespace):
    """The config and the built programs for ``args`` (ConfigError, SetupError)."""
    from kestrel_raw import programs
    from kestrel_raw.collector.load import build_programs
    from kestrel_raw.config import CollectorConfig

    config = CollectorConfig(**shaping_kwargs(args))
    return config, build_programs(config, programs.config_specs(config), mount_tracefs=False)


def document(config, built) -> dict:
    """The JSON document: the kernel and options the programs were built for, and each program (where it
    runs, its digests, its instructions with their bytes, comments and provenance)."""
    from kestrel_raw.asm import listing_json, program_digest
    from kestrel_raw.collector.load import attach_point

    uname = os.uname()
    out = {"kernel": uname.release, "machine": uname.machine, "btf": config.btf_path, "options": options(config),
           "programs": []}
    for spec, insns in built:
        digest = program_digest(insns)
        out["programs"].append({"name": spec.name, "attach": attach_point(spec), "sha256": digest.sha256,
                                "tag": digest.tag, "insns": listing_json(insns)})
    return out


def options(config) -> dict:
    """The options the programs' bytes depend on, as ``run`` takes them."""
    return {"events": ",".join(t.label for t in config.event_types), "buffers": config.buffers,
            "buffer_size": config.buffer_size, "wakeup_bytes": config.wakeup_bytes, "latency": config.latency,
            "context": config.context, "threads": config.threads}


def heading(config, built) -> str:
    uname = os.uname()
    opts = " ".join((f"--{'' if v else 'no-'}{k}" if isinstance(v, bool) else f"--{k.replace('_', '-')} {v}")
                    for k, v in options(config).items())
    return (f"; kestrel-raw disasm: {len(built)} program{'s' if len(built) != 1 else ''} for Linux {uname.release} {uname.machine} "
            f"(BTF {config.btf_path}), as `kestrel-raw run {opts}` loads them")


def main(args: argparse.Namespace) -> int:
    from kestrel_raw.asm import program_digest
    from kestrel_raw.audit import format_pins
    from kestrel_raw.collector.load import listing_text
    from kestrel_raw.errors import ConfigError, KestrelError

    try:
        config, built = build(args)
    except ConfigError as e:
        error(str(e))
        return EXIT_USAGE
    except KestrelError as e:
        error(one_line(str(e)))
        return EXIT_SETUP
    if args.format == "json":
        json.dump(document(config, built), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(heading(config, built) + "\n\n")
        sys.stdout.write("\n\n".join(listing_text(spec, insns) for spec, insns in built) + "\n")
    if args.pin_file:
        digests = {spec.name: program_digest(insns).sha256 for spec, insns in built}
        try:
            with open(args.pin_file, "w") as f:
                f.write(format_pins(digests, heading(config, built)[2:]))
        except OSError as e:
            error(f"cannot write the pin file {args.pin_file}: {e.strerror or e}")
            return EXIT_SETUP
        error(f"wrote {len(digests)} program digests to {args.pin_file}")
    return EXIT_OK
