"""Where a uprobe goes: a file, and the offset in it of the function probed.

The kernel places a uprobe on a file (its inode) at a file offset, and puts the breakpoint into every process
that maps that file's code, now or later (pid -1), or into one process's (a pid).  So a target is a file
and a symbol:

- the file by path (``/usr/bin/bash``); by name (``libc.so.6``, ``bash``) as libbpf resolves one
  (kestrel_raw/loader/attach.py ``find_binary``: LD_LIBRARY_PATH and the library directories for a .so,
  PATH otherwise); or through a running process: the file it maps under that name, read from
  /proc/PID/maps and opened as /proc/PID/map_files/START-END, which is the very file the process mapped,
  in its own mount namespace (a container's library), even if it was replaced or deleted since;
- the symbol's file offset from the file's ELF symbol tables, .symtab or .dynsym (a stripped file keeps
  the latter), with GNU symbol versions (kestrel_raw/elf: ``symbol_file_offset``).

Pure Python over /proc and the file: nothing here talks to the kernel's BPF side.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

from kestrel_raw.errors import ElfError, SetupError


@dataclass(frozen=True, slots=True)
class Mapping:
    """One line of /proc/PID/maps that maps a file."""
    start: int
    end: int
    perms: str
    offset: int
    path: str           # as the process sees it, without " (deleted)"
    deleted: bool


def maps_of(pid: int) -> list[Mapping]:
    """The file mappings of process ``pid`` (/proc/PID/maps); SetupError when it cannot be read."""
    try:
        with open(f"/proc/{pid}/maps", "rb") as f:
            text = f.read()
    except FileNotFoundError:
        raise SetupError(f"no process {pid} (/proc/{pid}/maps is absent): it exited, or the pid is wrong") from None
    except OSError as e:
        raise SetupError(f"cannot read /proc/{pid}/maps: {e.strerror or e} (reading another user's process "
                         "needs CAP_SYS_PTRACE)") from None
    out = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6 or not parts[5].startswith(b"/"):
            continue   # anonymous, [heap], [stack], [vdso]...
        span, perms, offset, path = parts[0], parts[1], parts[2], parts[5].decode("utf-8", "surrogateescape")
        deleted = path.endswith(" (deleted)")
        lo, _, hi = span.partition(b"-")
        out.append(Mapping(int(lo, 16), int(hi, 16), perms.decode(), int(offset, 16),
                           path[:-len(" (deleted)")] if deleted else path, deleted))
    return out


def _matches(path: str, name: str) -> bool:
    """``name`` is the path itself, or its file name, or the start of it before a version (``libc`` for
    libc.so.6 or libc-2.31.so; ``libc.so.6`` exactly)."""
    if "/" in name:
        return path == name
    base = os.path.basename(path)
    return base == name or base.startswith(name + ".so") or base.startswith(name + "-")


def mapped_file(pid: int, name: str) -> tuple[str, str]:
    """The file process ``pid`` maps under ``name`` (a path, a file name such as ``libc.so.6``, or its stem
    ``libc``): (a path that opens that very file, the path as the process sees it).

    The path opened is /proc/PID/map_files/START-END of its first mapping (the file mapped, even if replaced
    or deleted since: the kernel follows that link for the uprobe too; it needs CAP_SYS_ADMIN), else
    /proc/PID/root/PATH (the file now at that path in the process's mount namespace)."""
    found = [m for m in maps_of(pid) if _matches(m.path, name)]
    if not found:
        names = sorted({os.path.basename(m.path) for m in maps_of(pid)})
        raise SetupError(f"process {pid} maps no file named {name!r} (it maps: {', '.join(names) or 'none'})")
    m = found[0]
    link = f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}"
    try:
        with open(link, "rb"):
            return link, m.path
    except OSError:
        return f"/proc/{pid}/root{m.path}", m.path


def resolve_binary(binary: str, pid: int | None = None) -> tuple[str, str]:
    """The file a uprobe on ``binary`` goes on: (path to open, path to show).  With ``pid``, a name is first
    looked for among that process's mappings (what it runs), then as a path or name on this host."""
    if pid is not None and pid > 0:
        try:
            return mapped_file(pid, binary)
        except SetupError:
            if "/" not in binary:
                raise
    from kestrel_raw.loader.attach import find_binary

    try:
        path = find_binary(binary)
    except ElfError as e:
        raise SetupError(str(e)) from None
    if not os.path.isfile(path):
        raise SetupError(f"uprobe target {path!r} is not a file")
    return path, path


@lru_cache(maxsize=64)
def _offset(path: str, identity: tuple[int, int, int, int], symbol: str) -> int:
    from kestrel_raw.elf import ElfFile

    return ElfFile.load(path).symbol_file_offset(symbol)


def function_offset(path: str, symbol: str) -> int:
    """The file offset of ``symbol`` (``name``, ``name@VERSION``) in the ELF file at ``path`` (kept per
    file identity: parsing libc takes ~40 ms).  SetupError naming the file when it has no such symbol."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise SetupError(f"cannot open uprobe target {path!r}: {e.strerror or e}") from None
    try:
        return _offset(path, (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size), symbol)
    except ElfError as e:
        raise SetupError(f"cannot place a uprobe on {symbol!r}: {e}") from None


@dataclass(frozen=True)
class Uprobe:
    """Where a built-in program attaches: ``symbol`` of the file ``binary()`` names (found when the collector
    loads), at the function's first instruction or (``ret``) at its return, in every process."""
    symbol: str
    ret: bool
    binary: Callable[[], str]

    @property
    def kind(self) -> str:
        return "uretprobe" if self.ret else "uprobe"

    def locate(self) -> tuple[str, int]:
        """(the file, the symbol's offset in it)."""
        path = self.binary()
        return path, function_offset(path, self.symbol)


# --- the built-in events' files ---------------------------------------------------------------------

BASH = "/bin/bash"


def bash_binary() -> str:
    """The system's bash (its real path: /bin is a link to /usr/bin on merged-/usr systems, and a uprobe is
    on the file, whichever path names it)."""
    path = os.path.realpath(BASH)
    if not os.path.isfile(path):
        raise SetupError(f"shell_command needs bash at {BASH}, which is absent")
    return path


def libc_binary() -> str:
    """The C library this process runs with (/proc/self/maps: libc.so.6, or an older glibc's libc-2.NN.so,
    or musl's libc.musl-*.so.1): the one a program started now on this host uses."""
    for m in maps_of(os.getpid()):
        base = os.path.basename(m.path)
        if base.startswith(("libc.so", "libc-", "libc.musl")) or base.startswith("ld-musl"):
            if os.path.isfile(m.path):
                return m.path
    raise SetupError("dns_query needs the C library's getaddrinfo, but this process maps no libc (a static "
                     "Python?): no file to place the uprobe on")


__all__ = ["Mapping", "Uprobe", "maps_of", "mapped_file", "resolve_binary", "function_offset", "bash_binary",
           "libc_binary"]
