"""What the codec asks a context provider for, and the provider that knows nothing.  Pure.

The spec's CONTEXT_VALUES are filled in user space, from what the collector knows of a cgroup, of a process
and of its ancestors (``spec.CONTEXT_SCOPES``).  The generated codec (kestrel_raw/codec/generate.py) asks a
*context provider* ``ctx``:

- ``ctx.cgroup(cgroup_id)``, ``ctx.proc(pid, start_ns, tid)``, ``ctx.lineage(pid, start_ns)``: the scope's
  entry (a ``CgroupEntry``, ``ProcEntry``, ``LineageEntry``), whose attributes the values read, for events;
- ``ctx.text(cgroup_id, pid, start_ns, tid)``: the same values as JSON text (``",\"cgroup\":..."``), for
  lines: the provider keeps the text it made with the generated ``ctxtext_<scope>`` functions;
- ``ctx.update_<name>(values)``: a record of a kind that changes what it knows (``Kind.update``: exec, fork,
  exit, and the internal proc record), as the tuple of its values (``Kind.record_names``).

``NO_CONTEXT`` answers None for every context value (JSON ``null``, and no ``ancestors``) and ignores the
updates: what the codec uses when no collector stands behind it (``encode_record(raw, wall)`` in a test).
The collector's provider is kestrel_raw/collector/enrich.py.
"""
from __future__ import annotations

from kestrel_raw import spec


class CgroupEntry:
    """The ``cgroup`` scope: the v2 cgroup's path and the container it names."""

    __slots__ = ("path", "container_id", "container_name", "container_image")

    def __init__(self, path=None, container_id=None, container_name=None, container_image=None) -> None:
        self.path, self.container_id = path, container_id
        self.container_name, self.container_image = container_name, container_image


class ProcEntry:
    """The ``proc`` scope: what the process cache knows of the process (of the thread, for its cwd)."""

    __slots__ = ("exe", "exe_deleted", "exe_memfd", "cwd", "pidns", "mntns", "netns", "hostname")

    def __init__(self, exe=None, exe_deleted=None, exe_memfd=None, cwd=None, pidns=None, mntns=None, netns=None,
                 hostname=None) -> None:
        self.exe, self.exe_deleted, self.exe_memfd, self.cwd = exe, exe_deleted, exe_memfd, cwd
        self.pidns, self.mntns, self.netns, self.hostname = pidns, mntns, netns, hostname


class LineageEntry:
    """The ``lineage`` scope: the ancestors (a list of dicts, nearest first) and their JSON text; None when
    not asked for."""

    __slots__ = ("ancestors", "ancestors_json")

    def __init__(self, ancestors=None, ancestors_json=None) -> None:
        self.ancestors, self.ancestors_json = ancestors, ancestors_json


ENTRY_CLASSES = {"cgroup": CgroupEntry, "proc": ProcEntry, "lineage": LineageEntry}

NO_CGROUP, NO_PROC, NO_LINEAGE = CgroupEntry(), ProcEntry(), LineageEntry()


class NoContext:
    """The provider that knows nothing: every context value None, updates ignored."""

    def __init__(self) -> None:
        from kestrel_raw.codec.compiled import CODEC

        self._text = (CODEC["ctxtext_cgroup"](NO_CGROUP) + CODEC["ctxtext_proc"](NO_PROC)
                      + CODEC["ctxtext_lineage"](NO_LINEAGE))

    def cgroup(self, cgroup_id: int) -> CgroupEntry:
        return NO_CGROUP

    def proc(self, pid: int, start_ns: int, tid: int) -> ProcEntry:
        return NO_PROC

    def lineage(self, pid: int, start_ns: int) -> LineageEntry:
        return NO_LINEAGE

    def text(self, cgroup_id: int, pid: int, start_ns: int, tid: int) -> str:
        return self._text


def _ignore(self, values: tuple) -> None:
    return None


for _kind in spec.KINDS.values():
    if _kind.update:
        setattr(NoContext, f"update_{_kind.update}", _ignore)

NO_CONTEXT = NoContext()

__all__ = ["CgroupEntry", "ENTRY_CLASSES", "LineageEntry", "NO_CGROUP", "NO_CONTEXT", "NO_LINEAGE", "NO_PROC",
           "NoContext", "ProcEntry"]
