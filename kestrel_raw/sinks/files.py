"""Output files, opened safely, and rotated between whole lines.

``open_output`` is how the collector opens the file it writes events to, as root, often in a directory
others can write (/tmp) or whose path they choose:

- ``O_NOFOLLOW``: a symlink as the last component is refused (ELOOP): root following a link planted by
  another user would append to whatever it points to (/etc/shadow);
- a new file is created with mode 0600: events show what every user runs and opens;
- an existing file is appended to (never truncated), but only when it is a regular file (or a FIFO or
  character device: ``/dev/stdout``, a pipe) that nobody else could have prepared: owned by this user (or
  by ``also_owner``, the unprivileged user the collector becomes, who owns the files it rotates in), not
  writable by group or others, and with no other hard link (a hard link to a file owned by someone else is
  how a planted name points at a file without a symlink).

``RotatingFile`` keeps the file under ``rotate_size`` bytes: when the next lines would not fit, it
writes the lines that do, renames FILE to FILE.1 (FILE.1 to FILE.2, ... up to FILE.``keep``, the oldest
removed) and goes on in a new FILE.  Lines are never split and never written twice: the file object is
the only writer, and a rename moves the whole file.  Every name is resolved through a descriptor of the
file's directory opened at the start, so a directory renamed or replaced later does not redirect the
output.  After the collector dropped its privileges the renames run as the unprivileged user: the
directory must be writable by that user (the CLI checks this before loading anything).
"""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass


class OutputError(OSError):
    """The output file is refused (unsafe) or cannot be opened; str() is the whole reason."""

    def __str__(self) -> str:
        return self.strerror


def _refuse(path, why: str) -> OutputError:
    return OutputError(errno.EPERM, f"{path}: {why}")


def open_output(path: str | os.PathLike, *, dir_fd: int | None = None, also_owner: int | None = None,
                exclusive: bool = False, read_write: bool = False, shown: str | None = None) -> int:
    """Open ``path`` for appending (``read_write``: for reading and writing at offsets, a spool) as
    described above; returns the fd (O_CLOEXEC).  Raises OutputError with a one-line reason that starts
    with ``shown`` (default: the path)."""
    shown = os.fspath(path) if shown is None else shown
    flags = os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
    flags |= os.O_RDWR if read_write else os.O_WRONLY | os.O_APPEND
    if exclusive:
        flags |= os.O_EXCL
    try:
        fd = os.open(path, flags, 0o600, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _refuse(shown, "is a symbolic link; refusing to follow it (give the file's real path)") from None
        raise OutputError(e.errno, f"{shown}: {e.strerror}") from None
    try:
        check_output(shown, os.fstat(fd), also_owner)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_output(path, st: os.stat_result, also_owner: int | None = None) -> None:
    """Raise OutputError unless ``st`` is a file this process may safely append to (see the module)."""
    owners = {os.geteuid()} | ({also_owner} if also_owner is not None else set())
    mode = st.st_mode
    if stat.S_ISREG(mode):
        if st.st_uid not in owners:
            raise _refuse(path, f"exists and belongs to uid {st.st_uid}, not to this user; refusing to append "
                                f"to another user's file (remove it or choose another path)")
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise _refuse(path, f"exists and others can write it (mode {stat.S_IMODE(mode):04o}); refusing to "
                                f"append to it (chmod go-w, or choose another path)")
        if st.st_nlink > 1:
            raise _refuse(path, f"has {st.st_nlink} hard links; refusing to append to a file reachable under "
                                f"another name")
    elif stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        if st.st_uid not in owners | {0}:
            raise _refuse(path, f"is a pipe or device owned by uid {st.st_uid}; refusing it")
    else:
        raise _refuse(path, "is not a regular file, a pipe or a character device")


@dataclass
class RotationCounts:
    rotations: int = 0
    bytes_written: int = 0


class RotatingFile:
    """A binary file object appending to ``path``, buffered, rotated at ``rotate_size`` bytes (None: never)
    keeping ``keep`` old files.  ``write`` takes whole lines (bytes ending in a newline)."""

    def __init__(self, path: str | os.PathLike, *, rotate_size: int | None = None, keep: int = 5,
                 buffer_size: int = 1 << 16, also_owner: int | None = None) -> None:
        if rotate_size is not None and rotate_size <= 0:
            raise ValueError(f"rotate_size must be a positive number of bytes, got {rotate_size!r}")
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep!r}")
        self.path = os.fspath(path)
        directory, self._name = os.path.split(self.path)
        try:
            self._dir_fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise OutputError(e.errno, f"{self.path}: {e.strerror}") from None
        try:
            self._fd = open_output(self._name, dir_fd=self._dir_fd, also_owner=also_owner, shown=self.path)
            st = os.fstat(self._fd)
        except BaseException:
            os.close(self._dir_fd)
            raise
        self._rotating = rotate_size is not None and stat.S_ISREG(st.st_mode)
        self.rotate_size = rotate_size
        self.keep = keep
        self._also_owner = also_owner
        self._size = st.st_size if stat.S_ISREG(st.st_mode) else 0
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._buffer_size = buffer_size
        self.counts = RotationCounts()

    # -- writing ------------------------------------------------------------------------------------------

    def write(self, data: bytes) -> int:
        if self._fd < 0:
            raise ValueError("write to a closed output file")
        n = len(data)
        if self._rotating:
            limit = self.rotate_size
            while self._size + self._pending_bytes + len(data) > limit:
                room = limit - self._size - self._pending_bytes
                cut = data.rfind(b"\n", 0, room) + 1 if room > 0 else 0
                if cut == 0 and self._size + self._pending_bytes == 0:
                    # A single line longer than rotate_size: it gets a file of its own.
                    cut = data.find(b"\n") + 1 or len(data)
                if cut:
                    self._append(data[:cut])
                    data = data[cut:]
                self.rotate()
                if not data:
                    return n
        self._append(data)
        if self._pending_bytes >= self._buffer_size:
            self.flush()
        return n

    def _append(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_bytes += len(data)

    def flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending.clear()
        self._pending_bytes = 0
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
                self._size += written
                self.counts.bytes_written += written
        except BaseException:
            if view:  # keep what was not written: a later flush (or close) tries again
                self._pending.append(bytes(view))
                self._pending_bytes = len(view)
            raise

    # -- rotating -----------------------------------------------------------------------------------------

    def rotate(self) -> None:
        """FILE -> FILE.1 -> ... -> FILE.keep (the oldest removed), then a new, empty FILE."""
        self.flush()
        d = self._dir_fd
        for i in range(self.keep - 1, 0, -1):
            try:
                os.rename(f"{self._name}.{i}", f"{self._name}.{i + 1}", src_dir_fd=d, dst_dir_fd=d)
            except FileNotFoundError:
                pass
        os.rename(self._name, f"{self._name}.1", src_dir_fd=d, dst_dir_fd=d)
        old = self._fd
        self._fd = -1
        os.close(old)
        self._fd = open_output(self._name, dir_fd=d, also_owner=self._also_owner, exclusive=True, shown=self.path)
        self._size = 0
        self.counts.rotations += 1

    # -- closing ------------------------------------------------------------------------------------------

    def close(self) -> None:
        if self._fd < 0 and self._dir_fd < 0:
            return
        try:
            if self._fd >= 0:
                self.flush()
        finally:
            for attr in ("_fd", "_dir_fd"):
                fd = getattr(self, attr)
                if fd >= 0:
                    setattr(self, attr, -1)
                    os.close(fd)

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def fileno(self) -> int:
        return self._fd


def rotated_names(path: str, keep: int) -> list[str]:
    """FILE.keep ... FILE.1, FILE: the files of a rotated output, oldest first."""
    return [f"{path}.{i}" for i in range(keep, 0, -1)] + [path]
