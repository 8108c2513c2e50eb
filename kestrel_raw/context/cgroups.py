"""cgroup v2 ids and paths.  ``find_cgroup2_mount`` parses mountinfo (pure); ``CgroupPaths`` maps ids to paths.

The kernel's cgroup id (``bpf_get_current_cgroup_id()``, ``cgroup->kn->id``) of a v2 cgroup is the inode
number of that cgroup's directory in the cgroup2 file system (kernfs uses the node id as the inode number on
64-bit kernels), so a path gives its id with one ``stat`` and an id gives its path only by walking the
hierarchy.  The v2 hierarchy is mounted at /sys/fs/cgroup on a pure v2 host and at /sys/fs/cgroup/unified on
a hybrid one (v1 controllers under /sys/fs/cgroup, as on this project's test machine); ``find_cgroup2_mount``
reads /proc/self/mountinfo rather than guessing.

Paths are relative to the root of the mount (``/`` is the root cgroup), as /proc/PID/cgroup's ``0::`` line
shows them from the same cgroup namespace.
"""
from __future__ import annotations

import os
import re
import time
from collections import deque
from dataclasses import dataclass

from kestrel_raw.context.containers import Container, container_from_cgroup

MOUNTINFO = "/proc/self/mountinfo"
PREFERRED_MOUNTS = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified")
DEFAULT_MAX_ENTRIES = 65536
DEFAULT_RESCAN_INTERVAL = 0.5      # seconds between two walks started by unknown ids


def _unescape_mountinfo(field: str) -> str:
    r"""mountinfo escapes space, tab, newline and backslash as \040, \011, \012, \134."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True, slots=True)
class Mount:
    mount_point: str
    root: str            # the directory of the file system the mount shows (/ unless a bind of a subtree)


def walk_cgroups(mount: str):
    """(cgroup id, path relative to the mount) of each cgroup of the v2 hierarchy mounted at ``mount``,
    breadth-first (the shallow ones first, where containers live).  A cgroup's id is its directory's inode
    number (kernfs: the same 64-bit id the kernel's cgroup_id and bpf_get_current_cgroup_id give)."""
    queue = deque([("/", mount)])
    while queue:
        rel, where = queue.popleft()
        try:
            ino = os.stat(where).st_ino
            entries = list(os.scandir(where))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue  # removed while we walked
        yield ino, rel
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    queue.append((rel.rstrip("/") + "/" + e.name, e.path))
            except OSError:
                continue


def cgroup2_mounts(mountinfo: str) -> list[Mount]:
    """Every cgroup2 mount in ``mountinfo``'s text (proc(5): fields, then ``-``, type, source, options)."""
    out = []
    for line in mountinfo.splitlines():
        fields = line.split()
        try:
            sep = fields.index("-")
        except ValueError:
            continue
        if sep + 1 < len(fields) and fields[sep + 1] == "cgroup2":
            out.append(Mount(_unescape_mountinfo(fields[4]), _unescape_mountinfo(fields[3])))
    return out


def find_cgroup2_mount(mountinfo: str) -> Mount | None:
    """The mount to resolve v2 cgroups through: /sys/fs/cgroup (pure v2), else /sys/fs/cgroup/unified
    (hybrid), else the first cgroup2 mount that shows the whole hierarchy; None when there is none."""
    mounts = cgroup2_mounts(mountinfo)
    for preferred in PREFERRED_MOUNTS:
        for m in mounts:
            if m.mount_point == preferred:
                return m
    whole = [m for m in mounts if m.root == "/"]
    return (whole or mounts or [None])[0]


def read_cgroup2_mount(mountinfo_path: str = MOUNTINFO) -> Mount | None:
    with open(mountinfo_path) as f:
        return find_cgroup2_mount(f.read())


class CgroupPaths:
    """cgroup v2 id -> path (and path -> id), from a walk of the hierarchy, cached.

    ``path(id)`` answers from the cache; an unknown id walks the hierarchy again (a cgroup made since the
    last walk), at most once every ``rescan_interval`` seconds, so a stream of ids of cgroups that are gone
    costs one walk per interval, not one per event.  The cache holds at most ``max_entries`` cgroups (a walk
    goes breadth-first and stops there, so the shallow ones, where containers live, are kept); it is
    replaced by each walk, so removed cgroups leave it then.  Not thread-safe: one caller (the event loop).
    """

    def __init__(self, mount: str | Mount | None = None, max_entries: int = DEFAULT_MAX_ENTRIES,
                 rescan_interval: float = DEFAULT_RESCAN_INTERVAL, clock=time.monotonic) -> None:
        if mount is None:
            mount = read_cgroup2_mount()
            if mount is None:
                raise FileNotFoundError("no cgroup2 file system is mounted (no 'cgroup2' line in "
                                        f"{MOUNTINFO}); mount one: mount -t cgroup2 none /sys/fs/cgroup/unified")
        self.mount = mount.mount_point if isinstance(mount, Mount) else mount
        self.max_entries = max_entries
        self.rescan_interval = rescan_interval
        self._clock = clock
        self._by_id: dict[int, str] = {}
        self._containers: dict[int, Container | None] = {}
        self._last_walk: float | None = None
        self.walks = 0
        self.truncated = False          # the last walk stopped at max_entries

    def id_of(self, path: str) -> int:
        """The cgroup id of ``path`` (relative to the v2 root).  FileNotFoundError when there is no such
        cgroup."""
        return os.stat(self._abs(path)).st_ino

    def path(self, cgroup_id: int) -> str | None:
        """The path of the cgroup ``cgroup_id``, or None when it is not (or no longer) in the hierarchy."""
        found = self._by_id.get(cgroup_id)
        if found is not None:
            return found
        now = self._clock()
        if self._last_walk is not None and now - self._last_walk < self.rescan_interval:
            return None
        self.refresh()
        return self._by_id.get(cgroup_id)

    def container(self, cgroup_id: int) -> Container | None:
        """The container of the cgroup ``cgroup_id`` (None for a host cgroup, or an id not found), parsed
        once per id.  On a hybrid host a runtime that uses only the v1 controllers leaves its containers in
        the v2 root: ask ``containers.read_container(pid)`` (all hierarchies) for those, once per process."""
        if cgroup_id in self._containers:
            return self._containers[cgroup_id]
        path = self.path(cgroup_id)
        if path is None:
            return None
        found = self._containers[cgroup_id] = container_from_cgroup(path)
        return found

    def refresh(self) -> None:
        """Walk the hierarchy now (breadth-first, at most ``max_entries`` cgroups)."""
        by_id: dict[int, str] = {}
        self.truncated = False
        for ino, rel in walk_cgroups(self.mount):
            if len(by_id) >= self.max_entries:
                self.truncated = True
                break
            by_id[ino] = rel
        self._by_id = by_id
        self._containers = {k: v for k, v in self._containers.items() if k in by_id}
        self._last_walk = self._clock()
        self.walks += 1

    def __len__(self) -> int:
        return len(self._by_id)

    def _abs(self, path: str) -> str:
        if not path.startswith("/"):
            raise ValueError(f"a cgroup path starts with '/' (relative to the v2 root), got {path!r}")
        return self.mount + path.rstrip("/") if path != "/" else self.mount


__all__ = ["CgroupPaths", "DEFAULT_MAX_ENTRIES", "DEFAULT_RESCAN_INTERVAL", "Mount", "cgroup2_mounts",
           "find_cgroup2_mount", "read_cgroup2_mount"]
