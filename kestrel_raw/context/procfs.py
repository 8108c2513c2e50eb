"""A process's state as /proc shows it: parsers of /proc/PID files (pure) and one reader of a /proc tree.

The reader takes the /proc root as an argument, so the tests run it over a directory they built.  Text that
is not valid UTF-8 (paths and arguments are bytes in Linux) becomes ``str`` with ``surrogateescape``, as
the codec decodes the same strings from events (kestrel_raw/codec/event.py), so a seeded argv compares
equal to an event's.  Reading another user's ``exe`` and ``cwd`` needs CAP_SYS_PTRACE (root has it): read
before dropping privileges.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

PROC = "/proc"
DELETED_SUFFIX = " (deleted)"   # what d_path() appends to the path of an unlinked file


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of /proc/PID/stat this package uses (proc(5) numbers them 1, 2, 4, 22)."""
    pid: int
    comm: str
    ppid: int
    starttime: int       # clock ticks since boot (CLOCK_BOOTTIME / USER_HZ) when the process started


def parse_stat(text: str) -> ProcStat:
    """Parse /proc/PID/stat.  The command name is in parentheses and may itself hold spaces and ``)``: the
    fields after it start after the *last* ``)``."""
    open_at, close_at = text.find("("), text.rfind(")")
    if open_at < 0 or close_at < open_at:
        raise ValueError(f"not a /proc/PID/stat line (no '(comm)'): {text[:80]!r}")
    rest = text[close_at + 2:].split()
    if len(rest) < 20:
        raise ValueError(f"/proc/PID/stat has {len(rest) + 2} fields, expected at least 22: {text[:80]!r}")
    # rest[0] is field 3 (state): field n is rest[n - 3]
    return ProcStat(pid=int(text[:open_at]), comm=text[open_at + 1:close_at], ppid=int(rest[1]),
                    starttime=int(rest[19]))


def parse_status_ids(text: str) -> dict[str, int]:
    """uid, euid, gid, egid from /proc/PID/status (``Uid:`` real effective saved fs, same for ``Gid:``)."""
    ids = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid"):
            real, effective = value.split()[:2]
            k = key[0].lower()
            ids[k + "id"], ids["e" + k + "id"] = int(real), int(effective)
    return ids


def parse_cmdline(data: bytes) -> list[str]:
    """argv from /proc/PID/cmdline: NUL-terminated strings (empty for a kernel thread or a zombie)."""
    if not data:
        return []
    if data.endswith(b"\0"):
        data = data[:-1]
    return [a.decode("utf-8", "surrogateescape") for a in data.split(b"\0")]


def split_deleted(path: str) -> tuple[str, bool]:
    """(path, deleted) from a /proc symlink target: the kernel appends `` (deleted)`` to an unlinked file."""
    if path.endswith(DELETED_SUFFIX):
        return path[:-len(DELETED_SUFFIX)], True
    return path, False


@dataclass(frozen=True, slots=True)
class ProcSnapshot:
    """What /proc said about one process.  ``exe``/``cwd`` are None where they cannot be read (a kernel
    thread has none; another user's need CAP_SYS_PTRACE)."""
    pid: int
    ppid: int
    comm: str
    starttime: int               # clock ticks, from stat
    argv: tuple[str, ...]
    exe: str | None
    exe_deleted: bool
    cwd: str | None
    uid: int | None
    gid: int | None
    euid: int | None
    egid: int | None
    # namespace inodes (/proc/PID/ns/*; None where unreadable: another user's without CAP_SYS_PTRACE)
    pidns: int | None = None
    mntns: int | None = None
    netns: int | None = None
    utsns: int | None = None


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except (FileNotFoundError, PermissionError, ProcessLookupError):
        return None


def _ns_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except (FileNotFoundError, PermissionError, ProcessLookupError):
        return None


def list_pids(proc: str = PROC) -> list[int]:
    """The process ids in ``proc`` (its numeric entries; /proc lists thread-group leaders only)."""
    return sorted(int(name) for name in os.listdir(proc) if name.isdigit())


def read_process(pid: int, proc: str = PROC) -> ProcSnapshot | None:
    """The process ``pid`` as ``proc`` shows it, or None when it is gone (it exited while we read)."""
    base = f"{proc}/{pid}"
    try:
        stat = parse_stat(_read(f"{base}/stat").decode("utf-8", "surrogateescape"))
        status = parse_status_ids(_read(f"{base}/status").decode("utf-8", "surrogateescape"))
        argv = parse_cmdline(_read(f"{base}/cmdline"))
    except (FileNotFoundError, ProcessLookupError):
        return None
    exe, deleted = _readlink(f"{base}/exe"), False
    if exe is not None:
        exe, deleted = split_deleted(exe)
    ns = {name: _ns_inode(f"{base}/ns/{name}") for name in ("pid", "mnt", "net", "uts")}
    return ProcSnapshot(pid=stat.pid, ppid=stat.ppid, comm=stat.comm, starttime=stat.starttime,
                        argv=tuple(argv), exe=exe, exe_deleted=deleted, cwd=_readlink(f"{base}/cwd"),
                        uid=status.get("uid"), gid=status.get("gid"), euid=status.get("euid"),
                        egid=status.get("egid"), pidns=ns["pid"], mntns=ns["mnt"], netns=ns["net"],
                        utsns=ns["uts"])


__all__ = ["DELETED_SUFFIX", "PROC", "ProcSnapshot", "ProcStat", "list_pids", "parse_cmdline", "parse_stat",
           "parse_status_ids", "read_process", "split_deleted"]
