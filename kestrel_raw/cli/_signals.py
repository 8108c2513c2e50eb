"""The first thing the command line does: take SIGINT and SIGTERM away from Python's default handling.

Python's SIGINT handler raises KeyboardInterrupt wherever the interpreter is (in an import, in argparse,
in trio's start-up) and the user gets a traceback; SIGTERM's default action kills the process before it
can detach anything it loaded.  ``install`` replaces both with a handler that only records the signal;
the subcommand asks ``received()`` where it can stop cleanly, and takes over with its own handling (trio's
signal receiver) when it runs.  A SIGHUP before then is ignored: the settings are read afterwards anyway.

This module imports nothing but ``signal``, so that the command line installs the handler within a
millisecond of its first import (``kestrel_raw/cli/__init__.py`` does it first, when it is the program's
entry point).  What runs before that is the interpreter's own start-up (``site``, and the ``.pth`` files
of site-packages), out of kestrel-raw's reach.
"""
from __future__ import annotations

import signal

STOP = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []
_previous: dict[int, object] = {}


def _remember(signum, _frame) -> None:
    _received.append(signum)


def install() -> None:
    """Record SIGINT and SIGTERM, ignore SIGHUP (keeping the handlers in place, to ``restore``)."""
    try:
        for signum in STOP:
            old = signal.signal(signum, _remember)
            _previous.setdefault(signum, old)
        _previous.setdefault(signal.SIGHUP, signal.signal(signal.SIGHUP, signal.SIG_IGN))
    except ValueError:
        pass  # not the main thread (an embedding application): its handlers stay


def restore() -> None:
    for signum, handler in _previous.items():
        signal.signal(signum, handler)
    _previous.clear()


def received() -> int | None:
    """The first SIGINT or SIGTERM received since ``install``, or None."""
    return _received[0] if _received else None


def clear() -> None:
    _received.clear()
