#!/usr/bin/env python3
"""Dump kernel BTF types with kestrel_raw.btf, in formats that can be compared with bpftool's.

  btfdump.py task_struct                  C-like struct, one member per line, with
                                          /* offset: N, size: M */ comments (bytes from the struct's
                                          start; bitfields: /* offset: N, bit_offset: B, bits: W */)
  btfdump.py task_struct.real_parent      offset and size of a member; a path through pointers
  btfdump.py task_struct.mm.arg_start     prints one load (offset, size) per dereference
  btfdump.py --raw                        every type as `bpftool btf dump file F format raw` prints it
  btfdump.py --raw 114 task_struct        the given type ids or names only, same format

The C-like dump follows `bpftool btf dump file F format c` for one type, without bpftool's padding
members (`long: 64;`); anonymous structs and unions are expanded in place, their members' offsets
counted from the outer struct.
"""
from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):
    # Run as `python3 tools/btfdump.py` from a checkout: make the repo's package importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kestrel_raw.btf import BTF, VMLINUX_BTF, format_aggregate, format_raw  # noqa: E402
from kestrel_raw.btf.kinds import (
    BTF_KIND_ENUM, BTF_KIND_ENUM64, BTF_KIND_PTR, BTF_KIND_STRUCT, BTF_KIND_UNION,
)
from kestrel_raw.errors import BTFError  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="btfdump.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME|ID|TYPE.MEMBER...",
                   help="types to dump (names, or ids with --raw), or dotted member paths")
    p.add_argument("--file", default=VMLINUX_BTF, metavar="PATH",
                   help=f"raw BTF file to read (default {VMLINUX_BTF})")
    p.add_argument("--raw", action="store_true",
                   help="print bpftool's raw format; without NAME|ID, every type")
    p.add_argument("--kind", metavar="KIND",
                   help="pick the type of this kind when a name has several (struct, union, enum, typedef...)")
    return p


def _lookup(btf: BTF, arg: str, kind: str | None):
    if arg.isdigit():
        return btf.type_by_id(int(arg))
    return btf.find(arg, kind)


def _dump_path(btf: BTF, arg: str) -> str:
    hops = btf.path(arg)
    # The last member's C type, found by the same walk path() makes.
    parts = arg.split(".")
    current = btf.find(parts[0])
    for name in parts[1:]:
        m = btf.member(btf.resolve(current.id), name)
        current = btf.resolve(m.type)
        if current.kind == BTF_KIND_PTR and name != parts[-1]:
            current = btf.resolve(current.type)
    what = btf.type_name(m.type)
    if len(hops) == 1:
        return f"{arg}: offset {hops[0][0]}, size {hops[0][1]} ({what})"
    lines = [f"{arg}: {len(hops)} loads, one per pointer dereference; the last is a {what}"]
    for n, (off, size) in enumerate(hops, 1):
        lines.append(f"  {n}. offset {off}, size {size}")
    return "\n".join(lines)


def _dump_c(btf: BTF, arg: str, kind: str | None) -> str:
    t = _lookup(btf, arg, kind)
    r = btf.resolve(t.id)
    if r.kind in (BTF_KIND_STRUCT, BTF_KIND_UNION):
        head = f"/* {t.kind_name.lower()} {t.name} -> */\n" if r.id != t.id else ""
        return head + format_aggregate(btf, r)
    if r.kind in (BTF_KIND_ENUM, BTF_KIND_ENUM64):
        body = "\n".join(f"\t{e.name} = {e.value}," for e in r.enumerators)
        return f"enum {r.name or '(anon)'} {{\n{body}\n}}; /* size: {r.size} */"
    return format_raw(btf, t)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.raw and not args.names:
        _parser().error("give a type name or path, or --raw")
    try:
        btf = BTF.load(args.file)
        out = sys.stdout
        if args.raw:
            if args.names:
                for arg in args.names:
                    out.write(format_raw(btf, _lookup(btf, arg, args.kind)) + "\n")
            else:
                for t in btf:
                    out.write(format_raw(btf, t) + "\n")
            return 0
        for arg in args.names:
            text = _dump_path(btf, arg) if "." in arg else _dump_c(btf, arg, args.kind)
            out.write(text + "\n")
    except BTFError as e:
        print(f"btfdump.py: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `btfdump.py --raw | head`: the reader left; not an error.
        sys.stderr.close()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
