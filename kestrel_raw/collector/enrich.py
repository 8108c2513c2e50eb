"""The collector's context provider: what it adds to every event from what user space knows, and what keeps
that knowledge current.

The generated codec (kestrel_raw/codec/generate.py, kestrel_raw/codec/context.py) asks it, per event, for
the spec's CONTEXT_VALUES by scope, and hands it the records that change them:

- ``cgroup``: the v2 cgroup's path (kestrel_raw/context/cgroups.py: the hierarchy walked once, an unknown id
  walked again at most every half second), the container the path names (kestrel_raw/context/containers.py)
  and its name and image (kestrel_raw/context/containerinfo.py: looked up once per container on a worker
  thread, never on this path; until the answer comes the event has null, after it the name);
- ``proc``: the process cache (kestrel_raw/context/proctable.py), seeded from /proc at start and kept current
  by the exec, fork and exit records and the internal proc records (chdir, fchdir, chroot, unshare, setns,
  sethostname), each of which carries the process's whole context: exe (with deleted and memfd), cwd,
  namespaces and nodename.  A nodename belongs to a UTS namespace, not a process: it is kept per namespace,
  so one sethostname shows on every process in it.  A thread with an fs_struct of its own (unshare(CLONE_FS))
  that changes directory has a cwd of its own;
- ``lineage``: up to ``ancestors`` ancestors from the process cache (none when 0: the key is left out).

Costs: the JSON text of a cgroup and of a process is made once and kept (``Process.ctx_text``, a dict of
cgroup texts) until it changes, so an event costs a few dict lookups and a concatenation.  Not thread-safe:
the pollers run in one trio thread.
"""
from __future__ import annotations

import os
from typing import Callable

from kestrel_raw import spec
from kestrel_raw.codec.compiled import CODEC
from kestrel_raw.codec.context import NO_CGROUP, NO_LINEAGE, NO_PROC, CgroupEntry, LineageEntry, ProcEntry
from kestrel_raw.codec.event import entity_key_memo
from kestrel_raw.context.proctable import MEMFD_PREFIX, Process, ProcessTable

CGROUP_TEXTS_MAX = 8192  # cgroup texts kept; emptied when full (and every expire())
MEMFD_NAME = MEMFD_PREFIX[1:]  # "memfd:": the name memfd_create gives the file


def _indexes(kind: spec.Kind) -> dict[str, int]:
    return {name: i for i, name in enumerate(kind.record_names)}


_EXEC, _FORK, _EXIT, _PROC = (_indexes(k) for k in (spec.EXEC, spec.FORK, spec.EXIT, spec.PROC))


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class Enricher:
    """The context provider (see the module docstring).

    ``table``: the process cache.  ``cgroups``: a ``CgroupPaths`` (None: no cgroup v2 hierarchy, paths and
    containers are null).  ``names``: a ``ContainerInfoCache`` (None: names and images are null).
    ``ancestors``: how many ancestors each event carries (0: none).  ``hostnames``: UTS namespace inode ->
    nodename, known at start (the collector's own).
    """

    def __init__(self, table: ProcessTable, cgroups=None, names=None, ancestors: int = 0,
                 hostnames: dict[int, str] | None = None) -> None:
        self.table = table
        self.cgroups = cgroups
        self.names = names
        self.ancestors = ancestors
        self.hostnames: dict[int, str] = dict(hostnames or {})
        self.version = 0  # bumped when a nodename changes: the processes' texts are made again
        self._entries = table._entries  # read on every event: no method call
        self._cgroup_texts: dict[int, str] = {}
        self._proc_text: Callable = CODEC["ctxtext_proc"]
        self._cgroup_text: Callable = CODEC["ctxtext_cgroup"]
        self._lineage_text: Callable = CODEC["ctxtext_lineage"]
        self._unknown_text = self._proc_text(NO_PROC)
        self.unknown = 0  # events of a process the cache did not hold (its fork record lost, say)

    # -- the cgroup scope ----------------------------------------------------------------------------------

    def cgroup(self, cgroup_id: int) -> CgroupEntry:
        return self._cgroup(cgroup_id)[0]

    def _cgroup(self, cgroup_id: int) -> tuple[CgroupEntry, bool]:
        """The cgroup's entry, and whether it is final (a path not found yet, a name being looked up: no)."""
        paths = self.cgroups
        if paths is None:
            return NO_CGROUP, True
        path = paths.path(cgroup_id)
        if path is None:
            return NO_CGROUP, False
        container = paths.container(cgroup_id)
        if container is None:
            return CgroupEntry(path), True
        name = image = None
        final = True
        if self.names is not None:
            info, final = self.names.lookup(container.id)
            if info is not None:
                name, image = info.name, info.image
        return CgroupEntry(path, container.id, name, image), final

    def cgroup_text(self, cgroup_id: int) -> str:
        text = self._cgroup_texts.get(cgroup_id)
        if text is None:
            entry, final = self._cgroup(cgroup_id)
            text = self._cgroup_text(entry)
            if final:
                if len(self._cgroup_texts) >= CGROUP_TEXTS_MAX:
                    self._cgroup_texts.clear()
                self._cgroup_texts[cgroup_id] = text
        return text

    def expire(self) -> None:
        """Forget the cgroup texts (the collector calls this now and then): a container the runtime did not
        know yet, or a cgroup gone and its id's text with it, is asked again."""
        self._cgroup_texts.clear()

    # -- the proc scope --------------------------------------------------------------------------------------

    def _process(self, pid: int, start_ns: int) -> Process | None:
        p = self._entries.get(entity_key_memo(pid, start_ns))
        if p is None and pid:
            self.unknown += 1
        return p

    def proc(self, pid: int, start_ns: int, tid: int) -> ProcEntry:
        p = self._process(pid, start_ns)
        if p is None:
            return NO_PROC
        return self._proc_entry(p, tid)

    def _proc_entry(self, p: Process, tid: int) -> ProcEntry:
        cwd = p.cwd
        if p.thread_cwd is not None:
            cwd = p.thread_cwd.get(tid, cwd)
        return ProcEntry(p.exe, p.exe_deleted, p.exe_memfd, cwd, p.pidns, p.mntns, p.netns,
                         self.hostnames.get(p.utsns) if p.utsns is not None else None)

    def proc_text(self, p: Process, tid: int) -> str:
        if p.thread_cwd is not None and tid in p.thread_cwd:
            return self._proc_text(self._proc_entry(p, tid))
        if p.ctx_text is None or p.ctx_version != self.version:
            p.ctx_text = self._proc_text(self._proc_entry(p, tid))
            p.ctx_version = self.version
        return p.ctx_text

    # -- the lineage scope -----------------------------------------------------------------------------------

    def lineage(self, pid: int, start_ns: int) -> LineageEntry:
        if not self.ancestors:
            return NO_LINEAGE
        key = entity_key_memo(pid, start_ns)
        chain = self.table.ancestors(key, self.ancestors)
        return LineageEntry(chain, self._ancestors_json(key, chain))

    def _ancestors_json(self, key: int, chain: list[dict]) -> str:
        entries = self._entries
        texts = []
        for item in chain:
            p = entries.get(item["entity_key"])
            texts.append(p.summary_json() if p is not None else CODEC["json_value"](item))
        return "[" + ",".join(texts) + "]"

    # -- the line's text ---------------------------------------------------------------------------------------

    def text(self, cgroup_id: int, pid: int, start_ns: int, tid: int) -> str:
        """The JSON text of every context value of an event (``ctx.text`` of the generated line functions)."""
        cg = self._cgroup_texts.get(cgroup_id)
        if cg is None:
            cg = self.cgroup_text(cgroup_id)
        key = entity_key_memo(pid, start_ns)
        p = self._entries.get(key)
        if p is None:
            if pid:
                self.unknown += 1
            pt = self._unknown_text
        elif p.ctx_text is not None and p.ctx_version == self.version and p.thread_cwd is None:
            pt = p.ctx_text
        else:
            pt = self.proc_text(p, tid)
        if self.ancestors:
            chain = self.table.ancestors(key, self.ancestors)
            pt += self._lineage_text(LineageEntry(chain, self._ancestors_json(key, chain)))
        return cg + pt

    # -- the records that change what it knows -----------------------------------------------------------------

    def _snapshot(self, p: Process, v: tuple, ix: dict[str, int], tid: int, exec_: bool = False) -> None:
        """Take the record's context block (spec.CONTEXT_WIRE) into ``p``."""
        flags = v[ix["ctx_flags"]]
        if not flags & spec.CTX_SNAPSHOT:
            return
        p.pidns, p.mntns, p.netns = v[ix["pidns"]] or None, v[ix["mntns"]] or None, v[ix["netns"]] or None
        utsns = v[ix["utsns"]] or None
        if utsns is not None:
            p.utsns = utsns
            hostname = _text(v[ix["hostname"]])
            if self.hostnames.get(utsns) != hostname:
                self.hostnames[utsns] = hostname
                self.version += 1
        exe = v[ix["exe"]]
        if exe:
            pseudo = bool(flags & spec.CTX_EXE_PSEUDO)
            p.exe = _text(exe)
            p.exe_memfd = pseudo and p.exe.startswith(MEMFD_PREFIX)
            # a pseudo file (a memfd) is unlinked from the start: /proc/PID/exe says "(deleted)" too
            p.exe_deleted = bool(flags & spec.CTX_EXE_DELETED) or pseudo
        cwd = v[ix["cwd"]]
        if cwd:
            if flags & spec.CTX_FS_PRIVATE and not exec_:
                if p.thread_cwd is None:
                    p.thread_cwd = {}
                p.thread_cwd[tid] = _text(cwd)
            else:
                p.cwd = _text(cwd)
        if exec_:
            p.thread_cwd = None  # exec ends every other thread
        p.changed()

    def _parent_key(self, v: tuple, ix: dict[str, int]) -> int | None:
        ppid = v[ix["ppid"]]
        return entity_key_memo(ppid, v[ix["parent_start_ns"]]) if ppid else None

    def update_exec(self, v: tuple) -> None:
        ix = _EXEC
        if v[ix["ret"]] != 0:
            return  # a failed exec changed nothing
        pid, start_ns = v[ix["pid"]], v[ix["start_ns"]]
        argv = [a.decode("utf-8", "surrogateescape") for a in CODEC["split_arg_area"](v[ix["args"]])]
        exe = v[ix["exe"]]
        p = self.table.on_exec(entity_key_memo(pid, start_ns), pid, exe=_text(exe) if exe else None,
                               argv=argv, start_ns=start_ns, comm=_text(v[ix["comm"]]),
                               parent_key=self._parent_key(v, ix), ppid=v[ix["ppid"]], uid=v[ix["uid"]],
                               gid=v[ix["gid"]], euid=v[ix["euid"]], egid=v[ix["egid"]])
        if p is not None:
            self._snapshot(p, v, ix, v[ix["tid"]], exec_=True)

    def update_fork(self, v: tuple) -> None:
        ix = _FORK
        if v[ix["fork_flags"]] & spec.FORK_THREAD:
            return  # a thread shares its process's context
        pid, start_ns = v[ix["pid"]], v[ix["start_ns"]]
        p = self.table.on_fork(entity_key_memo(pid, start_ns), pid, parent_key=self._parent_key(v, ix),
                               ppid=v[ix["ppid"]], start_ns=start_ns)
        if p is not None:
            if p.comm is None:
                p.comm = _text(v[ix["comm"]])
            self._snapshot(p, v, ix, v[ix["tid"]])

    def update_exit(self, v: tuple) -> None:
        ix = _EXIT
        self.table.on_exit(entity_key_memo(v[ix["pid"]], v[ix["start_ns"]]))

    def update_proc(self, v: tuple) -> None:
        ix = _PROC
        pid, start_ns = v[ix["pid"]], v[ix["start_ns"]]
        key = entity_key_memo(pid, start_ns)
        p = self._entries.get(key)
        if p is None:  # not seen yet (its fork record lost): it is now
            p = self.table.on_fork(key, pid, parent_key=self._parent_key(v, ix), ppid=v[ix["ppid"]],
                                   start_ns=start_ns)
            if p is None:
                return
        self._snapshot(p, v, ix, v[ix["tid"]])


def own_hostnames() -> dict[int, str]:
    """This process's UTS namespace and nodename: what the processes seeded in it show until a record
    reports the nodename of theirs."""
    try:
        return {os.stat("/proc/self/ns/uts").st_ino: os.uname().nodename}
    except OSError:
        return {}


__all__ = ["Enricher", "own_hostnames"]
