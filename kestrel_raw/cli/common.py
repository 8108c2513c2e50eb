"""What the subcommands share: the top-level parser, the exit statuses, one-line errors on stderr, and the
quiet handling of a signal that comes before a subcommand is ready for it.

Exit status: 0 after a clean stop; 2 for a bad command line or configuration; 1 when the host cannot do
what was asked (privilege, tracefs, BTF, kernel) or the output cannot be written, with one line on stderr
that says what is wrong.

Signals: see ``_signals``: SIGINT and SIGTERM are only recorded until a subcommand takes them over; it asks
``stop_requested()`` where it can stop cleanly.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import textwrap

from kestrel_raw import __version__
from kestrel_raw.cli import _signals

EXIT_OK = 0
EXIT_SETUP = 1
EXIT_USAGE = 2


def stop_requested() -> int | None:
    """The first SIGINT or SIGTERM received since the command line started, or None."""
    return _signals.received()


def _subcommands():
    from kestrel_raw.cli import SUBCOMMANDS

    return [importlib.import_module(f"kestrel_raw.cli.{name}") for name in SUBCOMMANDS]


class _Formatter(argparse.HelpFormatter):
    """argparse's help, wrapped at spaces only: "--poll-interval" stays whole at the end of a line."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False, break_long_words=False)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kestrel-raw", formatter_class=_Formatter,
                                description="kestrel-raw: a Linux security event collector speaking eBPF "
                                            "from pure Python.")
    p.add_argument("--version", action="version", version=f"kestrel-raw {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _subcommands():
        sp = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP, formatter_class=_Formatter)
        module.add_arguments(sp)
        sp.set_defaults(_main=module.main, _parser=sp)
    return p


def main(argv: list[str] | None = None) -> int:
    entry = bool(_signals._previous)  # installed at import: the program's start, with what came before
    if not entry:
        _signals.clear()
        _signals.install()  # called in-process (a test, an application): restored at the end
    try:
        args = build_parser().parse_args(argv)
        if stop_requested():
            return EXIT_OK
        return args._main(args)
    finally:
        if not entry:
            _signals.restore()


def error(message: str) -> None:
    print(f"kestrel-raw: {message}", file=sys.stderr)


def silence_stdout() -> None:
    """Point stdout at /dev/null after its reader went away: Python would report the broken pipe again
    when it flushes stdout at exit."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except OSError:
        pass


def one_line(text: str) -> str:
    # Set-up errors may quote a tool's several lines (mount(8)); the user gets one.
    return " ".join(text.split())
