"""What the subcommands share: the top-level parser, the exit statuses, and one-line errors on stderr.

Exit status: 0 after a clean stop; 2 for a bad command line or configuration; 1 when the host cannot do
what was asked (privilege, tracefs, BTF, kernel) or the output cannot be written, with one line on stderr
that says what is wrong.
"""
from __future__ import annotations

import argparse
import importlib
import sys

EXIT_OK = 0
EXIT_SETUP = 1
EXIT_USAGE = 2


def _subcommands():
    from kestrel_raw.cli import SUBCOMMANDS

    return [importlib.import_module(f"kestrel_raw.cli.{name}") for name in SUBCOMMANDS]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kestrel-raw",
                                description="kestrel-raw: a Linux security event collector speaking eBPF "
                                            "from pure Python.")
    sub = p.add_subparsers(dest="command", required=True)
    for module in _subcommands():
        sp = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(sp)
        sp.set_defaults(_main=module.main)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args._main(args)


def error(message: str) -> None:
    print(f"kestrel-raw: {message}", file=sys.stderr)


def one_line(text: str) -> str:
    # Set-up errors may quote a tool's several lines (mount(8)); the user gets one.
    return " ".join(text.split())
