"""kestrel-raw's command line: ``kestrel-raw SUBCOMMAND ...`` (also ``python -m kestrel_raw``).

One module per subcommand, each with ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``main(args) -> int``
(the exit status); ``common`` holds what they share (the parser, the exit statuses, error lines).  A new
subcommand is a module here and a line in ``SUBCOMMANDS``.
"""
from __future__ import annotations

import sys as _sys

from kestrel_raw.cli import _signals


def _is_entry_point() -> bool:
    """Whether this import is the program's start (the kestrel-raw script, or python -m kestrel_raw), not a
    library's or a test's import."""
    main = _sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name == "kestrel_raw.__main__":
        return True
    return _sys.argv[0].rsplit("/", 1)[-1] == "kestrel-raw"


if _is_entry_point():
    _signals.install()  # before anything else is imported: see _signals

from kestrel_raw.cli.common import EXIT_OK, EXIT_SETUP, EXIT_USAGE, build_parser, main

SUBCOMMANDS = ("run", "tail", "install_service", "disasm", "verify")  # module names under kestrel_raw.cli, in the order --help lists them

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_SETUP", "EXIT_USAGE", "SUBCOMMANDS"]
