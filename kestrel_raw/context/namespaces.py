"""A process's namespaces, as inode numbers (what the kernel events' ``pidns``/``mntns``/``netns`` carry).

Each /proc/PID/ns/<type> is a magic link to the namespace's nsfs inode: its ``stat`` gives the inode
number, which is ``ns->ns.inum`` in the kernel (the number ``readlink`` shows as ``net:[4026531840]``).
``pid`` is the namespace the process's pid lives in (``task_active_pid_ns``), not ``pid_for_children``.
"""
from __future__ import annotations

import os
import re

PROC = "/proc"
# JSON key -> /proc/PID/ns entry
NAMESPACES = {"pidns": "pid", "mntns": "mnt", "netns": "net", "utsns": "uts", "ipcns": "ipc",
              "userns": "user", "cgroupns": "cgroup"}
_LINK = re.compile(r"([a-z_]+):\[(\d+)\]")


def namespace_inode(pid: int | str, ns: str, proc: str = PROC) -> int:
    """The inode number of namespace ``ns`` (``"net"``, ``"pid"``, ...) of process ``pid`` ("self" works).
    FileNotFoundError when the process is gone; PermissionError for another user's without CAP_SYS_PTRACE."""
    return os.stat(f"{proc}/{pid}/ns/{ns}").st_ino


def namespace_inodes(pid: int | str, proc: str = PROC) -> dict[str, int]:
    """``{"pidns": ..., "mntns": ..., "netns": ..., "utsns": ..., "ipcns": ..., "userns": ..., "cgroupns":
    ...}`` for process ``pid``."""
    return {key: namespace_inode(pid, ns, proc) for key, ns in NAMESPACES.items()}


def parse_ns_link(target: str) -> tuple[str, int]:
    """(type, inode) from a /proc/PID/ns link's target, ``"net:[4026531840]"`` -> ("net", 4026531840)."""
    m = _LINK.fullmatch(target)
    if m is None:
        raise ValueError(f"not a namespace link target: {target!r}")
    return m.group(1), int(m.group(2))


__all__ = ["NAMESPACES", "namespace_inode", "namespace_inodes", "parse_ns_link"]
