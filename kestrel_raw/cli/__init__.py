"""kestrel-raw's command line: ``kestrel-raw SUBCOMMAND ...`` (also ``python -m kestrel_raw``).

One module per subcommand, each with ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``main(args) -> int``
(the exit status); ``common`` holds what they share (the parser, the exit statuses, error lines).  A new
subcommand is a module here and a line in ``SUBCOMMANDS``.
"""
from __future__ import annotations

from kestrel_raw.cli.common import EXIT_OK, EXIT_SETUP, EXIT_USAGE, build_parser, main

SUBCOMMANDS = ("run", "tail", "install_service")  # module names under kestrel_raw.cli, in the order --help lists them

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_SETUP", "EXIT_USAGE", "SUBCOMMANDS"]
