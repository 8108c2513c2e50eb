"""Shared test helpers.  Import them from here, never from another test module.

Records: bytes written out by hand from the record layout table (docs/architecture.md "Records"),
independently of kestrel_raw/spec.py, so that a change of the layout in the spec fails the golden tests
instead of silently moving with them; and a hypothesis strategy of valid records of every kind, derived from
the spec (for tests whose point is the parsers' agreement, not the layout).
"""
from __future__ import annotations

import struct

from hypothesis import strategies as st

from kestrel_raw import spec

KIND_EXEC, KIND_OPEN, KIND_CONNECT, KIND_EXIT = 1, 2, 3, 4

# --- records by hand --------------------------------------------------------------------------------


def header(kind, flags=0, cpu=3, ts=1_000_000_123, start=999_000, pid=4242, tid=4243, ppid=1, uid=1000,
           gid=100, comm=b"cat"):
    """The 64-byte header: ts u64, kind u16, flags u16, cpu u32, start u64, pid, tid, ppid, uid, gid, pad
    (u32 each), comm char[16]."""
    return (struct.pack("<QHHI", ts, kind, flags, cpu) + struct.pack("<Q", start)
            + struct.pack("<IIIIII", pid, tid, ppid, uid, gid, 0) + comm.ljust(16, b"\0"))


# The record values header() gives by default, as the record classes name them.
COMMON = dict(ts_ns=1_000_000_123, header_flags=0, cpu=3, start_ns=999_000, pid=4242, tid=4243, ppid=1,
              uid=1000, gid=100, comm=b"cat")


def exec_bytes(filename=b"/bin/ls", args=b"ls\0-l\0/tmp\0", args_total=None, flags=0, pad=b"", **hdr):
    """exec: u32 filename_len, u32 args_len, u32 args_total, u32 pad, filename, args."""
    total = len(args) if args_total is None else args_total
    return (header(KIND_EXEC, flags, **hdr) + struct.pack("<IIII", len(filename), len(args), total, 0)
            + filename + args + pad)


def open_bytes(path=b"/etc/passwd", ret=3, dfd=-100, oflags=0o2000000, mode=0o644, syscall=0, flags=0, pad=b"",
               **hdr):
    """open: i32 ret, i32 dfd, u64 flags, u32 mode, u32 path_len, u32 syscall, u32 pad, path."""
    return (header(KIND_OPEN, flags, **hdr) + struct.pack("<iiQIIII", ret, dfd, oflags, mode, len(path), syscall, 0)
            + path + pad)


def connect_bytes(addr=b"\x02\x00\x1f\x90\x7f\x00\x00\x01" + bytes(8), addrlen=16, ret=-111, fd=5, flags=0,
                  **hdr):
    """connect: i32 ret, i32 fd, u32 addrlen, u32 addr_len, addr."""
    return header(KIND_CONNECT, flags, **hdr) + struct.pack("<iiII", ret, fd, addrlen, len(addr)) + addr


def exit_bytes(code=0x0300, **hdr):
    """exit: i32 exit_code, u32 pad."""
    return header(KIND_EXIT, **hdr) + struct.pack("<iI", code, 0)


# --- records from the spec, for hypothesis ------------------------------------------------------------

def _int(t: spec.Int):
    bits = 8 * t.size
    return st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if t.signed else st.integers(0, (1 << bits) - 1)


def _values(kind: spec.Kind):
    fields = {}
    for w in kind.wire:
        if w.name == "kind" or w.name in kind.lengths:
            continue
        if isinstance(w.type, spec.Int):
            fields[w.name] = _int(w.type)
        elif isinstance(w.type, spec.Chars):
            fields[w.name] = st.binary(max_size=w.type.size)
        else:
            # most draws short (the interesting strings), some up to the limit
            fields[w.name] = st.one_of(st.binary(max_size=64), st.binary(max_size=w.type.max))
    return st.fixed_dictionaries(fields)


@st.composite
def record_values(draw, kinds=None):
    """(kind id, values by wire name) of a valid record of one of ``kinds`` (default: every kind)."""
    kind = draw(st.sampled_from(sorted(kinds or spec.KINDS)))
    return kind, draw(_values(spec.KINDS[kind]))


@st.composite
def records(draw, kinds=None):
    """The bytes of a valid record (built with the construct schema), padded like a ring-buffer sample."""
    from kestrel_raw.codec.schema import build_record

    kind, values = draw(record_values(kinds))
    return build_record(kind, **values) + draw(st.binary(max_size=16))


KIND_AT = 8  # the kind's offset in the header (u16)
# The fixed parts' sizes and the offsets of the length fields, by kind (the table, by hand).
FIXED = {KIND_EXEC: 80, KIND_OPEN: 96, KIND_CONNECT: 80, KIND_EXIT: 72}
LENGTH_FIELDS = {KIND_EXEC: (64, 68), KIND_OPEN: (84,), KIND_CONNECT: (76,), KIND_EXIT: ()}


def with_kind(kind: int, data: bytes) -> bytes:
    """``data`` (at least KIND_AT + 2 bytes long, else padded with zeros) with its kind field set."""
    data = data.ljust(KIND_AT + 2, b"\0")
    return data[:KIND_AT] + struct.pack("<H", kind) + data[KIND_AT + 2:]


# --- a /proc tree for the process table's tests (issue 14) ---------------------------------------------------

def fake_proc(root, processes) -> str:
    """Write a /proc-like tree under ``root`` (a pathlib.Path) and return its path.

    ``processes``: dicts with pid, ppid, comm, starttime (clock ticks) and optionally argv (list of bytes),
    exe and cwd (symlink targets; None: no link, as for a kernel thread), uid/euid/gid/egid.  The files are
    laid out as the kernel's: ``stat`` (52 fields; 4 is ppid, 22 starttime), ``status`` (``Uid:``/``Gid:``
    lines, real effective saved fs), ``cmdline`` (NUL-terminated arguments), ``exe`` and ``cwd`` links.
    """
    import os

    for p in processes:
        d = root / str(p["pid"])
        d.mkdir(parents=True)
        after_comm = [0] * 50                   # fields 3..52: field n at index n - 3
        for field, value in ((3, "S"), (4, p["ppid"]), (5, p["pid"]), (6, p["pid"]), (8, -1), (9, 4194304),
                             (18, 20), (20, 1), (22, p["starttime"]), (23, 3133440), (24, 416)):
            after_comm[field - 3] = value
        (d / "stat").write_text(f"{p['pid']} ({p['comm']}) " + " ".join(map(str, after_comm)) + "\n")
        uid, euid, gid, egid = (p.get(k, 0) for k in ("uid", "euid", "gid", "egid"))
        (d / "status").write_text(f"Name:\t{p['comm'][:15]}\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t{p['pid']}\n"
                                  f"PPid:\t{p['ppid']}\nUid:\t{uid}\t{euid}\t{euid}\t{euid}\n"
                                  f"Gid:\t{gid}\t{egid}\t{egid}\t{egid}\n")
        (d / "cmdline").write_bytes(b"".join(a + b"\0" for a in p.get("argv", [])))
        for link in ("exe", "cwd"):
            if p.get(link) is not None:
                os.symlink(p[link], d / link)
    (root / "self").mkdir(exist_ok=True)   # a non-numeric entry, as the real one has many
    return str(root)


# --- namespaces (issue 14): children in new namespaces, a network namespace with a veth pair ----------------

def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def _wait(predicate, timeout: float, what: str):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise TimeoutError(f"waited {timeout}s for {what}")


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


class unshared:
    """A child process in new namespaces, made with util-linux's ``unshare --fork``, as a context manager.

    ``with unshared(["sleep", "600"], pid=True, mnt=True, net=True) as child:`` -- ``child.pid`` is the
    host pid of the process running the command (unshare's child, pid 1 of a new pid namespace), once it has
    exec'd the command.  ``setup`` is shell run inside first (e.g. ``hostname x`` with ``uts=True``).  On
    exit (or a failure while starting) the command is killed and reaped by unshare, which is reaped here.
    """

    def __init__(self, argv, *, pid=False, mnt=False, net=False, uts=False, setup: str = "",
                 timeout: float = 10.0) -> None:
        import shlex

        flags = [f for f, on in (("--pid", pid), ("--mount", mnt), ("--net", net), ("--uts", uts)) if on]
        if pid and mnt:
            flags.append("--mount-proc")   # a /proc of the new pid namespace, in the new mount namespace
        script = (setup + "; " if setup else "") + "exec " + shlex.join(argv)
        self.argv = ["unshare", "--fork", "--kill-child", *flags, "sh", "-c", script]
        self.comm = argv[0].rsplit("/", 1)[-1][:15]
        self.timeout = timeout
        self.proc = None
        self.pid = None

    def __enter__(self) -> "unshared":
        import subprocess

        self.proc = subprocess.Popen(self.argv, start_new_session=True)
        try:
            self.pid = _wait(lambda: next((c for c in _children(self.proc.pid) if _comm(c) == self.comm), None),
                             self.timeout, f"{self.argv} to exec {self.comm}")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        import os
        import signal
        import subprocess

        if self.proc is None:
            return
        # Kill the command first: unshare reaps it and exits, so that nothing is left for init to reap.
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def uts_nodename(pid: int) -> str:
    """The hostname (UTS nodename) process ``pid`` sees: ``uname -n`` run in its UTS namespace (nsenter)."""
    import subprocess

    return subprocess.run(["nsenter", f"--target={pid}", "--uts", "uname", "-n"], check=True,
                          capture_output=True, text=True, timeout=10).stdout.strip()


class veth_netns:
    """A network namespace joined to this one by a veth pair, made with pyroute2, as a context manager.

    ``with veth_netns() as ns:`` -- ``ns.name`` (the namespace, /run/netns/NAME, as ``ip netns`` makes it),
    ``ns.host_if``/``ns.peer_if`` (the pair's ends: here, and inside), ``ns.host_addr``/``ns.peer_addr``
    (IPv4 addresses of a /30 between them, both ends up), ``ns.inode`` (the namespace's inode number),
    ``ns.popen(argv)`` runs a command inside (util-linux ``nsenter``: the CI guests have no iproute2).
    Everything made is removed on exit, and on a failure half-way through setting up.
    """

    def __init__(self, subnet: int | None = None) -> None:
        import os

        n = os.getpid() % 60000
        self.name = f"kr-ns-{os.getpid()}"
        self.host_if, self.peer_if = f"krh{n}", f"krp{n}"
        third = (subnet if subnet is not None else os.getpid()) % 250
        self.host_addr, self.peer_addr = f"10.213.{third}.1", f"10.213.{third}.2"
        self.inode = None
        self._procs = []

    def __enter__(self) -> "veth_netns":
        import os

        from pyroute2 import IPRoute, NetNS, netns

        made_ns = made_link = False
        try:
            netns.create(self.name)
            made_ns = True
            self.inode = os.stat(f"/var/run/netns/{self.name}").st_ino
            with IPRoute() as ip:
                ip.link("add", ifname=self.host_if, kind="veth", peer=self.peer_if)
                made_link = True
                peer = ip.link_lookup(ifname=self.peer_if)[0]
                ip.link("set", index=peer, net_ns_fd=self.name)
                host = ip.link_lookup(ifname=self.host_if)[0]
                ip.addr("add", index=host, address=self.host_addr, prefixlen=30)
                ip.link("set", index=host, state="up")
            with NetNS(self.name) as ns:
                peer = ns.link_lookup(ifname=self.peer_if)[0]
                ns.addr("add", index=peer, address=self.peer_addr, prefixlen=30)
                ns.link("set", index=peer, state="up")
                lo = ns.link_lookup(ifname="lo")[0]
                ns.link("set", index=lo, state="up")
        except BaseException:
            self._cleanup(made_ns, made_link)
            raise
        return self

    def popen(self, argv, **kwargs):
        import subprocess

        p = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{self.name}", *argv], **kwargs)
        self._procs.append(p)
        return p

    def __exit__(self, *exc) -> None:
        self._cleanup(True, True)

    def _cleanup(self, made_ns: bool, made_link: bool) -> None:
        from pyroute2 import IPRoute, netns

        for p in self._procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
        if made_link:
            with IPRoute() as ip:
                for index in ip.link_lookup(ifname=self.host_if):
                    ip.link("del", index=index)   # deleting one end deletes the pair
        if made_ns and self.name in netns.listnetns():
            netns.remove(self.name)
