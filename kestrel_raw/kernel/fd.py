"""``FD``: the owner of one file descriptor."""
from __future__ import annotations

import os


class FD:
    """Owns one file descriptor and closes it exactly once.

    ``close()`` is idempotent and leaves ``fd`` at -1, so a closed holder can never close a number the
    process has since reused for something else.
    """

    __slots__ = ("_fd", "__weakref__")

    def __init__(self, fd: int) -> None:
        if fd < 0:
            raise ValueError(f"FD needs a valid file descriptor, got {fd}")
        self._fd = fd

    @property
    def fd(self) -> int:
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError("I/O on a closed file descriptor")
        return self._fd

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> "FD":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A leaked holder still releases the kernel object (a program or a link would otherwise stay attached
        # until the process exits).
        try:
            self.close()
        except OSError:
            pass

    def __repr__(self) -> str:
        return f"FD({self._fd})" if self._fd >= 0 else "FD(closed)"


class FDOwner:
    """Base of the objects that own one kernel object through one ``FD`` (``self._fd``): a program, a map.
    Gives them ``fd`` (-1 once closed), ``closed``, ``fileno()``, ``close()`` (idempotent) and ``with``."""

    _fd: FD

    @property
    def fd(self) -> int:
        """The file descriptor (-1 once closed)."""
        return self._fd.fd

    @property
    def closed(self) -> bool:
        return self._fd.closed

    def fileno(self) -> int:
        return self._fd.fileno()

    def close(self) -> None:
        self._fd.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
