"""The check after attaching for shell_command: a bash that reads lines with readline, started by the
collector so that the uretprobe on readline can be seen to run (kestrel_raw/collector/selfcheck.py).

The collector's own process cannot call bash's readline (bash is an executable: it cannot be loaded as a
library), so it starts ``bash --norc --noprofile -c 'while read -e line; do :; done'`` on a pseudo-terminal
(``read -e`` reads with readline when its input is a terminal) before the programs are built and attached,
and each provocation types two empty lines into it: the first ends the readline call that may have begun
before the probe was attached (a uretprobe sees only the returns of calls that began after it), the second's
call began after.  A few milliseconds of one bash, and only when shell_command is collected.

That bash is not reported: its tgid is in the shell program's MAP_CHECK slot, which counts its runs as the
collector's own (kestrel_raw/programs/shell.py), and in the collector's filter map (ignore mode), which the
other programs skip (its start-up opens, its exit).  Both entries are removed once it is killed, before it
is reaped, so that its pid, when reused, names an ordinary process again.  Other collectors see it as any
process.
"""
from __future__ import annotations

import os
import pty
import signal
import subprocess

from kestrel_raw.errors import SetupError

SCRIPT = "while read -e line; do :; done"
LINES = b"\n\n"  # see the module docstring: two, and empty (the program reports nothing for them anyway)


class ShellCheck:
    """A bash reading lines with readline on a pty; ``pid`` is its tgid."""

    def __init__(self, bash: str) -> None:
        master, slave = pty.openpty()
        try:
            self._proc = subprocess.Popen(
                [bash, "--norc", "--noprofile", "-c", SCRIPT], stdin=slave, stdout=slave, stderr=slave,
                start_new_session=True, close_fds=True, cwd="/",
                env={"PATH": "/usr/bin:/bin", "TERM": "dumb", "INPUTRC": "/dev/null", "HISTFILE": ""})
        except OSError as e:
            os.close(master)
            raise SetupError(f"cannot start {bash} for the shell_command check: {e.strerror or e}") from None
        finally:
            os.close(slave)
        self._master = master
        self.pid = self._proc.pid

    def provoke(self) -> None:
        """Type the lines (the pty holds them until bash reads)."""
        if self._master >= 0:
            os.write(self._master, LINES)

    def kill(self) -> None:
        """Stop it (it is reaped by ``reap``)."""
        if self._proc.poll() is None:
            try:
                self._proc.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass

    def reap(self) -> None:
        self.kill()
        self._proc.wait()
        if self._master >= 0:
            os.close(self._master)
            self._master = -1


__all__ = ["ShellCheck"]
