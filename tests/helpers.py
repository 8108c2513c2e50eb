"""Shared test helpers.  Import them from here, never from another test module.

Records: bytes written out by hand from the record layout table (docs/architecture.md "Records"),
independently of kestrel_raw/spec.py, so that a change of the layout in the spec fails the golden tests
instead of silently moving with them; and a hypothesis strategy of valid records of every kind, derived from
the spec (for tests whose point is the parsers' agreement, not the layout).

Kernel and processes: where bpftool is, the kernel objects a process holds, the collector's CLI in a
subprocess and its JSON lines, a child process that opens on demand, and a kernel-side ring-buffer producer.

ELF and BPF objects: an ELF64 writer for hand-built files (plain ``struct``, independent of kestrel_raw.elf,
so that the reader is tested against a second implementation of the format), a BTF writer, and the clang
that builds BPF objects from tests/bpf_src/*.c.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import strategies as st

from kestrel_raw import spec
from kestrel_raw.asm import (
    BPF_ADD, BPF_DW, BPF_JEQ, BPF_JGT, BPF_JNE, BPF_RSH, BPF_W, R0, R1, R2, R3, R4, R7, R8, R10, alu64_imm,
    call, exit_insn, ja, jmp_imm, label, ld_map_fd, ldx_mem, mov64_imm, mov64_reg, st_mem, stx_mem,
)
from kestrel_raw.asm import opcode as op
from kestrel_raw.kernel import bpf, syscall
from kestrel_raw.kernel.uapi import BPF_MAP_TYPE_HASH as _BPF_MAP_TYPE_HASH
from kestrel_raw.kernel.attach import attach_tracepoint
from kestrel_raw.kernel.prog import Program
from kestrel_raw.maps.array import ArrayMap
from kestrel_raw.maps.ring import roundup_len
from kestrel_raw.maps.ringbuf import PAGE_SIZE, RingBuf

KIND_EXEC, KIND_OPEN, KIND_CONNECT, KIND_EXIT, KIND_FORK = 1, 2, 3, 4, 5
KIND_PROC = 250  # internal: a process's changed context

# --- records by hand --------------------------------------------------------------------------------


def header(kind, flags=0, cpu=3, ts=1_000_000_123, start=999_000, parent_start=555_000, cgroup_id=1, pid=4242,
           tid=4243, ppid=1, uid=1000, gid=100, euid=1000, egid=100, auid=1000, sessionid=7, tty=(136 << 20) | 2,
           comm=b"cat"):
    """The 96-byte header: ts u64, kind u16, flags u16, cpu u32, start u64, parent_start u64, cgroup_id u64,
    pid, tid, ppid, uid, gid, euid, egid, auid, sessionid, tty (u32 each), comm char[16]."""
    return (struct.pack("<QHHI", ts, kind, flags, cpu) + struct.pack("<QQQ", start, parent_start, cgroup_id)
            + struct.pack("<10I", pid, tid, ppid, uid, gid, euid, egid, auid, sessionid, tty)
            + comm.ljust(16, b"\0"))


# The record values header() gives by default, as the record classes name them.
COMMON = dict(ts_ns=1_000_000_123, header_flags=0, cpu=3, start_ns=999_000, parent_start_ns=555_000, cgroup_id=1,
              pid=4242, tid=4243, ppid=1, uid=1000, gid=100, euid=1000, egid=100, auid=1000, sessionid=7,
              tty=(136 << 20) | 2, comm=b"cat")


def context_block(pidns=0, mntns=0, netns=0, utsns=0, ctx_flags=0, exe=b"", cwd=b"", hostname=b""):
    """The context block's fixed part (96 bytes): pidns, mntns, netns, utsns, ctx_flags, exe_len, cwd_len,
    pad (u32 each), hostname char[64]."""
    return struct.pack("<8I", pidns, mntns, netns, utsns, ctx_flags, len(exe), len(cwd), 0) + hostname.ljust(64, b"\0")


def exec_bytes(filename=b"/bin/ls", args=b"ls\0-l\0/tmp\0", args_total=None, flags=0, pad=b"", ret=0,
               caps_effective=0, caps_permitted=0, ctx=None, exe=b"", cwd=b"", **hdr):
    """exec: u32 filename_len, u32 args_len, u32 args_total, i32 ret, u64 caps_effective, u64 caps_permitted,
    the context block, then filename, args, exe, cwd."""
    total = len(args) if args_total is None else args_total
    return (header(KIND_EXEC, flags, **hdr)
            + struct.pack("<IIIiQQ", len(filename), len(args), total, ret, caps_effective, caps_permitted)
            + context_block(exe=exe, cwd=cwd, **(ctx or {})) + filename + args + exe + cwd + pad)


def open_bytes(path=b"/etc/passwd", ret=3, dfd=-100, oflags=0o2000000, mode=0o644, syscall=0, flags=0, pad=b"",
               resolve=0, resolved=b"", **hdr):
    """open: i32 ret, i32 dfd, u64 flags, u64 mode, u64 resolve, u32 path_len, u32 syscall, u32 resolved_len,
    u32 pad, path, resolved_path."""
    return (header(KIND_OPEN, flags, **hdr)
            + struct.pack("<iiQQQIIII", ret, dfd, oflags, mode, resolve, len(path), syscall, len(resolved), 0)
            + path + resolved + pad)


def connect_bytes(addr=b"\x02\x00\x1f\x90\x7f\x00\x00\x01" + bytes(8), addrlen=16, ret=-111, fd=5, flags=0,
                  sk_family=0, sk_dport=0, sk_daddr=bytes(4), sk_daddr6=bytes(16), **hdr):
    """connect: i32 ret, i32 fd, u32 addrlen, u32 addr_len, u16 sk_family, u16 sk_dport (network order),
    u8 sk_daddr[4], u8 sk_daddr6[16], addr."""
    return (header(KIND_CONNECT, flags, **hdr)
            + struct.pack("<iiIIHH4s16s", ret, fd, addrlen, len(addr), sk_family, sk_dport, sk_daddr, sk_daddr6)
            + addr)


def exit_bytes(code=0x0300, **hdr):
    """exit: i32 exit_code, u32 pad."""
    return header(KIND_EXIT, **hdr) + struct.pack("<iI", code, 0)


KIND_SHELL_COMMAND, KIND_DNS_QUERY = 50, 51


def shell_bytes(line=b"ls -l /tmp", flags=0, pad=b"", **hdr):
    """shell_command: u32 line_len, u32 pad, line."""
    return header(KIND_SHELL_COMMAND, flags, **hdr) + struct.pack("<II", len(line), 0) + line + pad


def dns_slot(family: int, port: int, addr: bytes) -> bytes:
    """One of dns_query's 20-byte address slots: u16 family, u16 port (network order), 16 address bytes."""
    return struct.pack("<H", family) + struct.pack(">H", port) + addr.ljust(16, b"\0")


def dns_bytes(query=b"example.test", service=b"443", ret=0, family=0, duration=12_345, slots=(), naddrs=None,
              flags=0, pad=b"", **hdr):
    """dns_query: i32 ret, i32 family, u64 duration_ns, u32 naddrs, u32 query_len, u32 service_len, u32 pad,
    u8 addrs[160] (8 slots of 20), query, service."""
    area = b"".join(slots).ljust(160, b"\0")
    return (header(KIND_DNS_QUERY, flags, **hdr)
            + struct.pack("<iiQIIII", ret, family, duration, len(slots) if naddrs is None else naddrs, len(query),
                          len(service), 0)
            + area + query + service + pad)
def fork_bytes(thread=False, ctx=None, exe=b"", cwd=b"", **hdr):
    """fork: u32 fork_flags (1 THREAD), u32 pad, the context block, exe, cwd."""
    return (header(KIND_FORK, **hdr) + struct.pack("<II", 1 if thread else 0, 0)
            + context_block(exe=exe, cwd=cwd, **(ctx or {})) + exe + cwd)


def proc_bytes(syscall=0, ctx=None, exe=b"", cwd=b"", **hdr):
    """proc (internal): u32 syscall, u32 pad, the context block, exe, cwd."""
    return (header(KIND_PROC, **hdr) + struct.pack("<II", syscall, 0)
            + context_block(exe=exe, cwd=cwd, **(ctx or {})) + exe + cwd)


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
FIXED = {KIND_EXEC: 224, KIND_OPEN: 144, KIND_CONNECT: 136, KIND_EXIT: 104, KIND_FORK: 200, KIND_PROC: 200}
LENGTH_FIELDS = {KIND_EXEC: (96, 100, 148, 152), KIND_OPEN: (128, 136), KIND_CONNECT: (108,), KIND_EXIT: (),
                 KIND_FORK: (124, 128), KIND_PROC: (124, 128), KIND_SHELL_COMMAND: (96,),
                 KIND_DNS_QUERY: (112, 116, 120)}


def with_kind(kind: int, data: bytes) -> bytes:
    """``data`` (at least KIND_AT + 2 bytes long, else padded with zeros) with its kind field set."""
    data = data.ljust(KIND_AT + 2, b"\0")
    return data[:KIND_AT] + struct.pack("<H", kind) + data[KIND_AT + 2:]


# --- kernel and processes ----------------------------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=REPO)  # a child Python imports this checkout's kestrel_raw
# bpftool, a test dependency (the crosscheck tests); Debian puts it in /usr/sbin, which a user's PATH may lack.
BPFTOOL = shutil.which("bpftool") or next(
    (p for p in ("/usr/sbin/bpftool", "/sbin/bpftool") if os.access(p, os.X_OK)), None)


# -- kernel objects ----------------------------------------------------------------------------------------

_KINDS = {"anon_inode:bpf-prog": "prog", "anon_inode:bpf-map": "map", "anon_inode:bpf_link": "link"}


def kernel_objects(pid: int) -> dict[str, set[int]]:
    """The ids of the BPF programs, maps and links process ``pid`` holds."""
    out = {"prog": set(), "map": set(), "link": set()}
    pidfd = os.pidfd_open(pid)
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                kind = _KINDS.get(os.readlink(f"/proc/{pid}/fd/{name}"))
            except OSError:
                continue
            if kind is None:
                continue
            fd = syscall.pidfd_getfd(pidfd, int(name))
            try:
                info = {"prog": bpf.prog_info, "map": bpf.map_info, "link": bpf.link_info}[kind](fd)
                out[kind].add(info.id)
            finally:
                os.close(fd)
    finally:
        os.close(pidfd)
    return out


def program_tags(pid: int) -> dict[str, str]:
    """name -> tag (hex) of each BPF program process ``pid`` holds, as the kernel reports them."""
    out = {}
    pidfd = os.pidfd_open(pid)
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if _KINDS.get(os.readlink(f"/proc/{pid}/fd/{name}")) != "prog":
                    continue
            except OSError:
                continue
            fd = syscall.pidfd_getfd(pidfd, int(name))
            try:
                info = bpf.prog_info(fd)
                out[info.name] = info.tag.hex()
            finally:
                os.close(fd)
    finally:
        os.close(pidfd)
    return out


def live_objects() -> dict[str, set[int]]:
    return {"prog": set(bpf.prog_ids()), "map": set(bpf.map_ids()), "link": set(bpf.link_ids())}


def wait_gone(objects: dict[str, set[int]], timeout: float = 10.0) -> None:
    # Programs go after an RCU grace period, maps from a workqueue after that.
    deadline = time.monotonic() + timeout
    while True:
        live = live_objects()
        left = {k: objects[k] & live[k] for k in objects}
        if not any(left.values()):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"still in the kernel {timeout}s after the collector ended: {left}")
        time.sleep(0.05)


# -- the CLI in a subprocess -------------------------------------------------------------------------------

class JsonlTail:
    """Every event written to ``path`` so far.  Reads only what was appended since the last call (the
    collector watches the whole host: re-reading the file on every poll is quadratic), and only whole
    lines (the sink writes in large chunks, so the file may end mid-line)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._events: list[dict] = []

    def events(self) -> list[dict]:
        if self.path.exists():
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
            end = data.rfind(b"\n") + 1
            self._offset += end
            self._events.extend(json.loads(line) for line in data[:end].splitlines() if line.strip())
        return self._events


class Cli:
    """`python -m kestrel_raw run` in a subprocess, JSON lines to a file (or to ``stdout``)."""

    def __init__(self, tmp_path, *args, output=True, stdout=subprocess.DEVNULL, name="c"):
        self.out = tmp_path / f"{name}.jsonl"
        self.err = tmp_path / f"{name}.stderr"
        self._tail = JsonlTail(self.out)
        cmd = [sys.executable, "-m", "kestrel_raw", "run", *args]
        if output:
            cmd += ["--output", str(self.out)]
        self.proc = subprocess.Popen(cmd, stdout=stdout, stderr=open(self.err, "wb"), env=ENV, cwd=REPO,
                                     stdin=subprocess.DEVNULL)

    def stderr(self) -> str:
        return self.err.read_text()

    def wait_attached(self, timeout=30.0):
        """Wait for the 'attached' line, then for events to flow; returns the marker event."""
        deadline = time.monotonic() + timeout
        while "attached" not in self.stderr():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"collector did not attach (rc {self.proc.poll()}): {self.stderr()}")
            time.sleep(0.05)
        marker = f"/tmp/kestrel-ready-{uuid.uuid4().hex}"
        while time.monotonic() < deadline:
            subprocess.run(["/bin/cat", marker], stderr=subprocess.DEVNULL)
            found = [e for e in self.events() if e.get("path") == marker]
            if found:
                return found[0]
            time.sleep(0.1)
        rc, err = self.stop()  # for the summary line in the message
        raise AssertionError(f"the collector's output never showed the marker {marker} in {timeout} s; it "
                             f"stopped with {rc}, {len(self.events())} events written; stderr: {err}")

    def events(self):
        """Every event so far (only whole lines; see JsonlTail)."""
        return self._tail.events()

    def wait_for(self, pred, what, timeout=10.0, count=1):
        """The events for which ``pred`` holds, as soon as there are ``count``; AssertionError after
        ``timeout`` (three times as long in a tools/kmx-tests.sh guest: software emulation, arm64's above all,
        runs a loaded suite many times slower, and a wait that ends early only makes a test fail sooner)."""
        if os.environ.get("KESTREL_KMX_GUEST"):
            timeout *= 3
        deadline = time.monotonic() + timeout
        found = []
        while time.monotonic() < deadline:
            found = [e for e in self.events() if pred(e)]
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{len(found)} of {count} events for {what} within {timeout}s")

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"collector did not stop within {timeout}s of {sig!r}")
        return self.proc.returncode, self.stderr()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Collector(Cli):
    """`kestrel-raw run --events EVENTS --output FILE`, attached and delivering when made."""

    def __init__(self, tmp_path, events="exec,open,connect,exit"):
        super().__init__(tmp_path, "--events", events, name="events")
        try:
            self.wait_attached(timeout=60)  # generous: emulated (TCG) guests once needed more than 30 s
        except BaseException:
            self.kill()
            raise


# -- a child that opens on demand ----------------------------------------------------------------------------

_OPENER = """
import sys
for line in sys.stdin:
    tag, n = line.split()
    for i in range(int(n)):
        try:
            open(f"/nonexistent-kestrel-{tag}-{i}")
        except OSError:
            pass
    print("done", flush=True)
"""


class Opener:
    """A child process that opens ``/nonexistent-kestrel-<tag><n>-<i>`` for i < n when asked, and says
    when it is done: opens on demand, from one known tgid.  Each open fails with ENOENT."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([os.environ.get("PYTHON", "python3"), "-c", _OPENER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        self.tag = uuid.uuid4().hex
        try:
            # The child's start-up opens (its libraries) must be over before a collector attaches, or they
            # are the records a test sees first.
            self.ask(0)
            with open(f"/proc/{self.pid}/comm") as f:
                self.comm = f.read().rstrip("\n")  # its command name, as the events carry it
        except BaseException:
            self.close()
            raise

    def ask(self, n: int) -> None:
        self.proc.stdin.write(f"{self.tag}{n} {n}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "done\n"

    def paths(self, n: int) -> list[str]:
        return [f"/nonexistent-kestrel-{self.tag}{n}-{i}" for i in range(n)]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> "Opener":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- a child that runs Python statements on demand (issue 15's filter tests) ----------------------------------

_DOER = """
import ctypes, os, socket, sys, time
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_NAME = 15
def comm(name):
    libc.prctl(PR_SET_NAME, name.encode(), 0, 0, 0)
def try_open(path):
    try:
        os.close(os.open(path, os.O_RDONLY))
    except OSError:
        pass
def connect(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.connect((host, port))
        except OSError:
            pass
for line in sys.stdin:
    try:
        exec(eval(line))
        print("done", flush=True)
    except BaseException as e:
        print("error", repr(e).replace(chr(10), " "), flush=True)
"""


class Doer:
    """A child Python that runs the statements it is sent (``do``), from one known tgid, and says when they
    are done: events on demand from a process a collector can be told about (``only_tgids``) before it runs
    anything.  Helpers in its namespace: ``comm(name)`` (prctl PR_SET_NAME), ``try_open(path)`` (an open that
    may fail), ``connect(host, port)`` (a TCP connect that may fail); os, socket, time, ctypes imported (so
    that nothing it is sent opens a module file)."""

    def __init__(self, executable: str | None = None) -> None:
        self.proc = subprocess.Popen([executable or sys.executable, "-c", _DOER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        try:
            self.do("pass")  # its start-up opens are over before a collector attaches
        except BaseException:
            self.close()
            raise

    def do(self, code: str, timeout: float = 60) -> None:
        self.proc.stdin.write(repr(code) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if line != "done\n":
            raise AssertionError(f"the child (pid {self.pid}) failed running {code!r}: {line.strip() or 'it exited'}")

    def exec_(self, path: str, *args: str) -> int:
        """Replace the child by ``path args``, and wait for it to end: its exit status."""
        self.proc.stdin.write(repr(f"os.execv({path!r}, {[path, *args]!r})") + "\n")
        self.proc.stdin.flush()
        return self.proc.wait(timeout=30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> "Doer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def cgroup2_mount() -> str:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup/unified on a hybrid host, /sys/fs/cgroup on a
    v2 one); mounted at /run/kestrel-test-cgroup2 when it is nowhere (a test guest): the hierarchy and its
    cgroup ids are the kernel's whatever the mount point."""
    with open("/proc/self/mounts") as f:
        for line in f:
            _dev, where, fstype, *_ = line.split()
            if fstype == "cgroup2":
                return where
    where = "/run/kestrel-test-cgroup2"
    os.makedirs(where, exist_ok=True)
    subprocess.run(["mount", "-t", "cgroup2", "cgroup2", where], check=True)
    return where


def kernel_dev(st_dev: int) -> int:
    """stat()'s st_dev as the kernel's dev_t (major << 20 | minor: include/linux/kdev_t.h), what
    super_block.s_dev holds."""
    return os.major(st_dev) << 20 | os.minor(st_dev)


# -- a kernel-side ring-buffer producer ------------------------------------------------------------------------
# A program attached at ``syscalls:sys_enter_getppid`` for this process only writes the record the test
# asked for in the ``ctl`` array map (see tests/test_ringbuf_kernel.py).

SIZE = PAGE_SIZE  # one page: records wrap after a few kilobytes
MAX_PAYLOAD = SIZE - 8
OP_OUTPUT, OP_DISCARD, OP_RESERVE = 0, 1, 2
DISCARD_LEN = 24
RESERVE_LEN = 16
MARKER = 0x5A5A5A5A


def producer(pid: int) -> list:
    return [
        call("get_current_pid_tgid"),
        alu64_imm(BPF_RSH, R0, 32),
        jmp_imm(BPF_JNE, R0, pid, "out"),                 # only this process's getppid()
        st_mem(BPF_W, R10, -4, 0),                        # key = 0
        ld_map_fd(R1, "ctl"),
        mov64_reg(R2, R10),
        alu64_imm(BPF_ADD, R2, -4),
        call("map_lookup_elem"),
        jmp_imm(BPF_JEQ, R0, 0, "out"),
        mov64_reg(R7, R0),                                # r7 = ctl value: u32 len, u32 op, payload
        ldx_mem(BPF_W, R8, R7, 4),
        jmp_imm(BPF_JEQ, R8, OP_DISCARD, "discard"),
        jmp_imm(BPF_JEQ, R8, OP_RESERVE, "reserve"),
        ldx_mem(BPF_W, R3, R7, 0),                        # OP_OUTPUT | flags << 8:
        jmp_imm(BPF_JGT, R3, MAX_PAYLOAD, "out"),         #   ringbuf_output(rb, payload, len, flags)
        ld_map_fd(R1, "rb"),
        mov64_reg(R2, R7),
        alu64_imm(BPF_ADD, R2, 8),
        mov64_reg(R4, R8),
        alu64_imm(BPF_RSH, R4, 8),
        call("ringbuf_output"),
        ja("out"),
        label("discard"),                                 # reserve 24 bytes, then drop them
        ld_map_fd(R1, "rb"),
        mov64_imm(R2, DISCARD_LEN),
        mov64_imm(R3, 0),
        call("ringbuf_reserve"),
        jmp_imm(BPF_JEQ, R0, 0, "out"),
        mov64_reg(R1, R0),
        mov64_imm(R2, 0),
        call("ringbuf_discard"),
        ja("out"),
        label("reserve"),                                 # reserve 16: payload[0:8] then MARKER
        ld_map_fd(R1, "rb"),
        mov64_imm(R2, RESERVE_LEN),
        mov64_imm(R3, 0),
        call("ringbuf_reserve"),
        jmp_imm(BPF_JEQ, R0, 0, "out"),
        ldx_mem(BPF_DW, R1, R7, 8),
        stx_mem(BPF_DW, R0, R1, 0),
        st_mem(BPF_DW, R0, 8, MARKER),
        mov64_reg(R1, R0),
        mov64_imm(R2, 0),
        call("ringbuf_submit"),
        label("out"),
        mov64_imm(R0, 0),
        exit_insn(),
    ]


class Producer:
    """The attached program and the way to make it write one record."""

    def __init__(self) -> None:
        self.rb = RingBuf(SIZE, name="kr_test_rb")
        self.ctl = ArrayMap(8 + MAX_PAYLOAD, 1, name="kr_test_ctl")
        self.prog = Program(producer(os.getpid()), maps={"rb": self.rb, "ctl": self.ctl}, name="kr_test_rb")
        self.link = attach_tracepoint(self.prog, "syscalls", "sys_enter_getppid")
        self.pos = 0  # where the next record starts, as the kernel will place it

    def _fire(self, op: int, payload: bytes, length: int) -> int:
        self.ctl[0] = struct.pack("<II", length, op) + payload.ljust(MAX_PAYLOAD, b"\0")
        os.getppid()
        pos, self.pos = self.pos, self.pos + roundup_len(length)
        return pos

    def output(self, payload: bytes, flags: int = 0) -> int:
        return self._fire(OP_OUTPUT | flags << 8, payload, len(payload))

    def discard(self) -> int:
        return self._fire(OP_DISCARD, b"", DISCARD_LEN)

    def reserve(self, first8: bytes) -> bytes:
        self._fire(OP_RESERVE, first8, RESERVE_LEN)
        return first8 + struct.pack("<Q", MARKER)

    def close(self) -> None:
        self.link.close()
        self.prog.close()
        self.ctl.close()
        self.rb.close()

    def __enter__(self) -> "Producer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- ELF files, BPF objects, compilers -----------------------------------------------------------------

TESTS = Path(__file__).resolve().parent
BPF_SRC = TESTS / "bpf_src"

SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_NOBITS, SHT_REL, SHT_DYNSYM = 1, 2, 3, 4, 8, 9, 11
SHT_GNU_verdef, SHT_GNU_verneed, SHT_GNU_versym = 0x6FFFFFFD, 0x6FFFFFFE, 0x6FFFFFFF
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 1, 2, 4
PT_LOAD = 1
ET_REL, ET_EXEC, ET_DYN = 1, 2, 3
EM_X86_64, EM_BPF = 62, 247


class StrTab:
    """A string table under construction: ``add`` returns the offset of the string."""

    def __init__(self) -> None:
        self.data = bytearray(b"\0")
        self._offs: dict[str, int] = {"": 0}

    def add(self, s: str) -> int:
        if s not in self._offs:
            self._offs[s] = len(self.data)
            self.data += s.encode() + b"\0"
        return self._offs[s]


def sym(name: int, bind: int, typ: int, shndx: int, value: int = 0, size: int = 0, other: int = 0) -> bytes:
    """One Elf64_Sym: st_name, st_info (bind << 4 | type), st_other, st_shndx, st_value, st_size."""
    return struct.pack("<IBBHQQ", name, bind << 4 | typ, other, shndx, value, size)


def rel(offset: int, symbol: int, typ: int) -> bytes:
    """One Elf64_Rel: r_offset, r_info (symbol << 32 | type)."""
    return struct.pack("<QQ", offset, symbol << 32 | typ)


@dataclass
class _Sec:
    name: str
    type: int
    data: bytes
    flags: int
    addr: int
    link: int | str
    info: int | str
    entsize: int
    size: int | None
    offset: int = 0


@dataclass
class ElfBuilder:
    """Build an ELF64 LE file.  Sections are numbered from 1 in the order added (0 is the null section);
    ``link``/``info`` may name a section.  ``.shstrtab`` is added last by ``build``."""
    e_type: int = ET_DYN
    machine: int = EM_X86_64
    sections: list[_Sec] = field(default_factory=list)
    segments: list[tuple] = field(default_factory=list)

    def add(self, name: str, sh_type: int, data: bytes = b"", *, flags: int = 0, addr: int = 0,
            link: int | str = 0, info: int | str = 0, entsize: int = 0, size: int | None = None) -> int:
        self.sections.append(_Sec(name, sh_type, bytes(data), flags, addr, link, info, entsize, size))
        return len(self.sections)

    def segment(self, p_type: int, flags: int, section: str, vaddr: int, memsz: int | None = None) -> None:
        """A segment mapping ``section``'s bytes at ``vaddr`` (memsz defaults to the bytes' size)."""
        self.segments.append((p_type, flags, section, vaddr, memsz))

    def index(self, name: str) -> int:
        return next(i for i, s in enumerate(self.sections, 1) if s.name == name)

    def build(self) -> bytes:
        shstr = StrTab()
        names = [shstr.add(s.name) for s in self.sections]
        shstrndx = len(self.sections) + 1
        shstr_name = shstr.add(".shstrtab")
        phoff = 64
        off = phoff + 56 * len(self.segments)
        for s in self.sections:
            off = (off + 7) & ~7
            s.offset = off
            if s.type != SHT_NOBITS:
                off += len(s.data)
        shstr_off = off
        off += len(shstr.data)
        shoff = (off + 7) & ~7
        out = bytearray(shoff + 64 * (len(self.sections) + 2))
        ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
        struct.pack_into("<16sHHIQQQIHHHHHH", out, 0, ident, self.e_type, self.machine, 1, 0,
                         phoff if self.segments else 0, shoff, 0, 64, 56, len(self.segments), 64,
                         len(self.sections) + 2, shstrndx)
        by_name = {s.name: s for s in self.sections}
        for i, (p_type, flags, sec, vaddr, memsz) in enumerate(self.segments):
            s = by_name[sec]
            filesz = 0 if s.type == SHT_NOBITS else len(s.data)
            struct.pack_into("<IIQQQQQQ", out, phoff + 56 * i, p_type, flags, s.offset, vaddr, vaddr, filesz,
                             memsz if memsz is not None else (s.size or len(s.data)), 0x1000)
        for s in self.sections:
            if s.type != SHT_NOBITS:
                out[s.offset:s.offset + len(s.data)] = s.data
        out[shstr_off:shstr_off + len(shstr.data)] = shstr.data

        def ref(v: int | str) -> int:
            return self.index(v) if isinstance(v, str) else v

        for i, s in enumerate(self.sections, 1):
            size = s.size if s.size is not None else len(s.data)
            struct.pack_into("<IIQQQQIIQQ", out, shoff + 64 * i, names[i - 1], s.type, s.flags, s.addr, s.offset,
                             size, ref(s.link), ref(s.info), 8, s.entsize)
        struct.pack_into("<IIQQQQIIQQ", out, shoff + 64 * shstrndx, shstr_name, SHT_STRTAB, 0, 0, shstr_off,
                         len(shstr.data), 0, 0, 1, 0)
        return bytes(out)


# --- hand-made BPF objects ------------------------------------------------------------------------------

BPF_INSN = struct.Struct("<BBhi")
R_BPF_64_64, R_BPF_64_32 = 1, 10
STB_LOCAL, STB_GLOBAL = 0, 1
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION = 0, 1, 2, 3
HAND_PROG_SEC = "tp/syscalls/sys_enter_getpid"


def bpf_insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return BPF_INSN.pack(code, src << 4 | dst, off, imm)


def bpf_ld64(dst: int, src: int = 0, imm: int = 0) -> bytes:
    return bpf_insn(op.LD_IMM64, dst, src, 0, imm) + bpf_insn(0)


HAND_EXIT = bpf_insn(op.BPF_JMP | op.BPF_EXIT)
HAND_MOV0 = bpf_insn(op.BPF_ALU64 | op.BPF_MOV | op.BPF_K, 0, 0, 0, 0)
HAND_CALL_SUB = bpf_insn(op.BPF_JMP | op.BPF_CALL, 0, op.BPF_PSEUDO_CALL, 0, -1)

# The program: r1 = &legacy map; r2 = &.data + 4 (through the section symbol, addend 4 in imm); call sub; exit
HAND_PROG = bpf_ld64(1) + bpf_ld64(2, 0, 4) + HAND_CALL_SUB + HAND_EXIT
# .text: sub: r0 = 0; exit
HAND_TEXT = HAND_MOV0 + HAND_EXIT
HAND_MAP_DEF = struct.pack("<5I", _BPF_MAP_TYPE_HASH, 4, 8, 16, 0)


def hand_object(sections=None, symbols=None, rels=None, *, btf: bytes | None = None, ext: bytes | None = None,
                machine: int = EM_BPF) -> bytes:
    """A BPF object written byte by byte (tests/test_bpf_object_handmade.py pins how it links): an ET_REL
    object: ``sections`` [(name, data, flags)], ``symbols`` [(name, bind, type, section, value,
    size)] (section None: undefined), ``rels`` {section: [(offset, symbol name, type)]}."""
    if sections is None:
        sections = [(HAND_PROG_SEC, HAND_PROG, SHF_ALLOC | SHF_EXECINSTR),
                    (".text", HAND_TEXT, SHF_ALLOC | SHF_EXECINSTR),
                    (".data", b"\x01\x02\x03\x04\x05\x06\x07\x08", SHF_ALLOC | SHF_WRITE),
                    ("maps", HAND_MAP_DEF, SHF_ALLOC | SHF_WRITE), ("license", b"GPL\0", SHF_ALLOC | SHF_WRITE)]
    if symbols is None:
        symbols = [(".data", STB_LOCAL, STT_SECTION, ".data", 0, 0),
                   ("prog", STB_GLOBAL, STT_FUNC, HAND_PROG_SEC, 0, 48),
                   ("sub", STB_GLOBAL, STT_FUNC, ".text", 0, 16), ("hmap", STB_GLOBAL, STT_OBJECT, "maps", 0, 20)]
    if rels is None:
        rels = {HAND_PROG_SEC: [(0, "hmap", R_BPF_64_64), (16, ".data", R_BPF_64_64), (32, "sub", R_BPF_64_32)]}
    b = ElfBuilder(e_type=ET_REL, machine=machine)
    for name, data, flags in sections:
        b.add(name, SHT_PROGBITS, data, flags=flags)
    names = [s[0] for s in sections]
    strs = StrTab()
    table = sym(0, 0, 0, 0)
    index = {}
    for n, (name, bind, typ, sec, value, size) in enumerate(symbols, 1):
        shndx = names.index(sec) + 1 if sec is not None else 0
        table += sym(strs.add(name) if typ != STT_SECTION else 0, bind, typ, shndx, value, size)
        index[name] = n
    symtab = len(sections) + len(rels) + 1
    for sec, entries in rels.items():
        b.add(".rel" + sec, SHT_REL, b"".join(rel(off, index[s], t) for off, s, t in entries), link=symtab,
              info=names.index(sec) + 1, entsize=16)
    b.add(".symtab", SHT_SYMTAB, table, link=".strtab", info=1, entsize=24)
    b.add(".strtab", SHT_STRTAB, strs.data)
    if btf is not None:
        b.add(".BTF", SHT_PROGBITS, btf)
    if ext is not None:
        b.add(".BTF.ext", SHT_PROGBITS, ext)
    return b.build()


# --- compilers ------------------------------------------------------------------------------------------

def need_tool(name: str, package: str) -> str:
    """The path of ``name``; skip when absent, except under CI (.ci/run installs it): there a missing tool
    is a failure, so that no test passes by skipping."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} is not installed (apt-get install {package})"
        if os.environ.get("CI") == "true":
            pytest.fail(msg + "; CI installs it, so this skip would hide a test")
        pytest.skip(msg)
    return path


def need_bpf_headers() -> None:
    if not Path("/usr/include/bpf/bpf_helpers.h").exists():
        msg = "libbpf's BPF headers are not installed (apt-get install libbpf-dev)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg + "; CI installs them, so this skip would hide a test")
        pytest.skip(msg)


def bpf_target_arch() -> str:
    """The __TARGET_ARCH_* name bpf_tracing.h wants for this host."""
    return {"x86_64": "x86", "aarch64": "arm64", "riscv64": "riscv", "s390x": "s390"}.get(os.uname().machine,
                                                                                     os.uname().machine)


def compile_bpf(source: str | Path, out_dir: Path, *extra: str) -> Path:
    """``clang -target bpf -g -O2 -c`` on tests/bpf_src/<source>, into ``out_dir``; the object's path."""
    clang = need_tool("clang", "clang")
    need_bpf_headers()
    src = BPF_SRC / source if not Path(source).is_absolute() else Path(source)
    obj = out_dir / (Path(src).stem + ".o")
    # linux/bpf.h includes asm/types.h, which Debian keeps under the host's multiarch directory.
    multiarch = f"/usr/include/{os.uname().machine}-linux-gnu"
    cmd = [clang, "-target", "bpf", "-g", "-O2", f"-D__TARGET_ARCH_{bpf_target_arch()}", "-I", str(BPF_SRC),
           "-I", multiarch, "-c", str(src), "-o", str(obj), *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise AssertionError(f"clang failed on {src}:\n{r.stderr}")
    return obj


def compile_host(source_text: str, out: Path, *flags: str) -> Path:
    """A host executable or library from C text (clang, or cc), for the ELF reader's tests."""
    cc = shutil.which("clang") or shutil.which("cc")
    if cc is None:
        need_tool("clang", "clang")
    src = out.with_suffix(".c")
    src.write_text(source_text)
    r = subprocess.run([cc, "-O1", "-o", str(out), str(src), *flags], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise AssertionError(f"{cc} failed:\n{r.stderr}")
    return out


# --- BTF ------------------------------------------------------------------------------------------------

BTF_INT, BTF_PTR, BTF_ARRAY, BTF_STRUCT, BTF_UNION, BTF_ENUM, BTF_FWD, BTF_TYPEDEF, BTF_VOLATILE, BTF_CONST = \
    range(1, 11)
BTF_FUNC, BTF_FUNC_PROTO, BTF_VAR, BTF_DATASEC, BTF_FLOAT, BTF_ENUM64 = 12, 13, 14, 15, 16, 19


class BtfBuilder:
    """Raw BTF written word by word (struct btf_type = name_off, info, size|type, then the kind's records),
    ids from 1 in the order added.  Independent of kestrel_raw.btf, so tests check the reader against it."""

    def __init__(self) -> None:
        self.strs = StrTab()
        self.words: list[int] = []
        self.count = 0

    def _add(self, name: str, kind: int, vlen: int, size_or_type: int, extra: list[int], kflag: int = 0) -> int:
        self.words += [self.strs.add(name), kflag << 31 | kind << 24 | vlen, size_or_type, *extra]
        self.count += 1
        return self.count

    def int(self, name: str, size: int, signed: bool = False, bits: int | None = None, offset: int = 0) -> int:
        enc = (1 if signed else 0) << 24 | offset << 16 | (bits if bits is not None else size * 8)
        return self._add(name, BTF_INT, 0, size, [enc])

    def ptr(self, to: int) -> int:
        return self._add("", BTF_PTR, 0, to, [])

    def array(self, elem: int, index: int, n: int) -> int:
        return self._add("", BTF_ARRAY, 0, 0, [elem, index, n])

    def struct(self, name: str, size: int, members: list[tuple], union: bool = False, kflag: bool = False) -> int:
        """members: (name, type id, bit offset[, bitfield size]) each."""
        extra = []
        for m in members:
            off = m[2] | (m[3] << 24 if kflag and len(m) > 3 else 0)
            extra += [self.strs.add(m[0]), m[1], off]
        return self._add(name, BTF_UNION if union else BTF_STRUCT, len(members), size, extra, int(kflag))

    def enum(self, name: str, values: list[tuple[str, int]], size: int = 4, signed: bool = False) -> int:
        extra = []
        for n, v in values:
            extra += [self.strs.add(n), v & 0xFFFFFFFF]
        return self._add(name, BTF_ENUM, len(values), size, extra, int(signed))

    def enum64(self, name: str, values: list[tuple[str, int]], signed: bool = False) -> int:
        extra = []
        for n, v in values:
            v &= (1 << 64) - 1
            extra += [self.strs.add(n), v & 0xFFFFFFFF, v >> 32]
        return self._add(name, BTF_ENUM64, len(values), 8, extra, int(signed))

    def fwd(self, name: str, union: bool = False) -> int:
        return self._add(name, BTF_FWD, 0, 0, [], int(union))

    def typedef(self, name: str, to: int) -> int:
        return self._add(name, BTF_TYPEDEF, 0, to, [])

    def const(self, to: int) -> int:
        return self._add("", BTF_CONST, 0, to, [])

    def func_proto(self, ret: int, params: list[tuple[str, int]]) -> int:
        extra = []
        for n, t in params:
            extra += [self.strs.add(n), t]
        return self._add("", BTF_FUNC_PROTO, len(params), ret, extra)

    def func(self, name: str, proto: int, linkage: int = 1) -> int:
        return self._add(name, BTF_FUNC, linkage, proto, [])

    def var(self, name: str, type_id: int, linkage: int = 1) -> int:
        return self._add(name, BTF_VAR, 0, type_id, [linkage])

    def datasec(self, name: str, size: int, vars_: list[tuple[int, int, int]]) -> int:
        extra = []
        for v in vars_:
            extra += list(v)
        return self._add(name, BTF_DATASEC, len(vars_), size, extra)

    def string(self, s: str) -> int:
        return self.strs.add(s)

    def build(self) -> bytes:
        types = struct.pack(f"<{len(self.words)}I", *self.words)
        strs = bytes(self.strs.data)
        return struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strs)) + types + strs


def btf_ext(sections: dict[str, list[tuple]], strs: StrTab, kind: str = "core") -> bytes:
    """A .BTF.ext blob holding one table ("func", "line" or "core") of ``sections``: name -> records (tuples
    of u32), with the section names added to ``strs`` (the .BTF string table they index)."""
    sizes = {"func": 8, "line": 16, "core": 16}
    body = struct.pack("<I", sizes[kind])
    for name, recs in sections.items():
        body += struct.pack("<II", strs.add(name), len(recs))
        for r in recs:
            body += struct.pack(f"<{len(r)}I", *r)
    offs = {"func": (0, 0), "line": (0, 0), "core": (0, 0)}
    offs[kind] = (0, len(body))
    hdr = struct.pack("<HBBI", 0xEB9F, 1, 0, 32) + struct.pack("<6I", *offs["func"], *offs["line"], *offs["core"])
    return hdr + body


# --- libbpf as the reference ----------------------------------------------------------------------------

def build_libbpf_reference(out_dir: Path) -> Path:
    """tests/bpf_src/libbpf_reference.c built against the system's libbpf (skips without the privilege to
    create maps and load programs, which libbpf needs to get as far as relocating)."""
    from tests.conftest import kernel_privilege_problem
    problem = kernel_privilege_problem()
    if problem:
        pytest.skip(f"libbpf creates maps and loads programs: {problem}")
    need_tool("clang", "clang")
    need_bpf_headers()
    return compile_host((BPF_SRC / "libbpf_reference.c").read_text(), out_dir / "libbpf_reference", "-lbpf")


@dataclass
class LibbpfResult:
    maps: dict[str, int]          # libbpf's map name -> the fd it created
    progs: dict[str, bytes]       # program -> the instructions libbpf gave the kernel
    core_log: list[str]           # its CO-RE patch lines, "prog 'p': relo #3: patched insn #7 ..."
    load: int                     # bpf_object__load's result
    stderr: str

    @property
    def relocated(self) -> bool:
        """Whether libbpf got as far as relocating: it creates the maps first, and stops at a map it cannot
        create (a libbpf-tool sizes some maps at run time, before loading)."""
        return "failed to create" not in self.stderr and "failed to open" not in self.stderr


def run_libbpf(ref: Path, obj: Path, btf: Path | None = None) -> LibbpfResult:
    args = [str(ref), str(obj)] + ([str(btf)] if btf else [])
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    maps, progs, load = {}, {}, None
    for line in r.stdout.splitlines():
        kind, *rest = line.split()
        if kind == "map":
            maps[rest[0]] = int(rest[1])
        elif kind == "prog":
            progs[rest[0]] = bytes.fromhex(rest[1]) if len(rest) > 1 else b""
        elif kind == "load":
            load = int(rest[0])
    log = [ln.removeprefix("libbpf: ") for ln in r.stderr.splitlines()
           if "patched insn" in ln or "substituting insn" in ln]
    return LibbpfResult(maps, progs, log, load, r.stderr)


def libbpf_fds(obj, maps: dict[str, int]) -> dict[str, int]:
    """Our map names -> the fds libbpf created: libbpf logs a BTF or legacy map by its full name, a
    global-data map by its internal name (our ``kernel_name``)."""
    return {n: maps[m.kernel_name if m.is_global_data else m.name] for n, m in obj.maps.items()}


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
        for number, value in ((3, "S"), (4, p["ppid"]), (5, p["pid"]), (6, p["pid"]), (8, -1), (9, 4194304),
                             (18, 20), (20, 1), (22, p["starttime"]), (23, 3133440), (24, 416)):
            after_comm[number - 3] = value
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


# --- the CLI as a service sees it, and the servers it sends to (issue 18) -----------------------------
#
# Servers the tests start themselves on loopback ports, with private configuration and work directories:
# Debian's nats-server and rsyslogd.  Without them a test skips, except under CI (CI=true), where a
# missing server is a failure: .ci/run installs them.

import os as _os
import shutil as _shutil
import signal as _signal
import socket as _socket
import subprocess as _subprocess
import sys as _sys
import time as _time

CLI_ENV = ENV  # the output tests' name for it


def need(tool: str, module: str | None = None) -> str | None:
    """The path of ``tool`` (and that ``module`` imports); skip the test without it, fail under CI."""
    import pytest

    path = _shutil.which(tool) or next((p for p in (f"/usr/sbin/{tool}", f"/usr/bin/{tool}")
                                        if _os.path.exists(p)), None)
    missing = None if path else f"{tool} is not installed"
    if module and not missing:
        try:
            __import__(module)
        except ImportError:
            missing = f"the Python module {module} is not installed"
    if missing:
        if _os.environ.get("CI") == "true":
            pytest.fail(f"{missing}; CI must install it (.ci/run)")
        pytest.skip(missing)
    return path


def free_port() -> int:
    with _socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = _time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if _time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        _time.sleep(interval)


class RunningCli:
    """``python -m kestrel_raw run ARGS`` in a child, stderr to a file."""

    def __init__(self, tmp_path, *args, name="cli", stdout=_subprocess.DEVNULL, env=None):
        self.err = tmp_path / f"{name}.stderr"
        self.proc = _subprocess.Popen([_sys.executable, "-m", "kestrel_raw", "run", *args], stdout=stdout,
                                      stderr=open(self.err, "wb"), env=env or CLI_ENV, cwd=REPO,
                                      stdin=_subprocess.DEVNULL)

    def stderr(self) -> str:
        return self.err.read_text()

    def wait_attached(self, timeout=60.0) -> None:
        wait_for(lambda: "attached" in self.stderr() or self.proc.poll() is not None, timeout, "attached")
        assert self.proc.poll() is None, f"the collector ended (rc {self.proc.returncode}): {self.stderr()}"

    def stop(self, sig=_signal.SIGTERM, timeout=60) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except _subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the collector did not stop within {timeout}s: {self.stderr()}")
        return self.proc.returncode, self.stderr()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def summary_counts(stderr: str) -> dict[str, int]:
    """The numbers of the collector's summary line: records, delivered (sum), kernel_lost, user_dropped."""
    import re

    m = re.search(r"records=(\d+) delivered\[([^\]]*)\] kernel_lost=(\d+) user_dropped=(\d+)", stderr)
    assert m, f"no summary line in: {stderr}"
    delivered = {k: int(v) for k, v in (kv.split("=") for kv in m.group(2).split())}
    return {"records": int(m.group(1)), "delivered": sum(delivered.values()), "kernel_lost": int(m.group(3)),
            "user_dropped": int(m.group(4)), **{f"delivered_{k}": v for k, v in delivered.items()}}


def open_storm(prefix: str, processes: int, opens: int) -> list[str]:
    """``processes`` children each opening ``opens`` distinct missing paths ``prefix-P-N`` as fast as they
    can; returns every path opened (each open is one event)."""
    script = ("import os, sys\np, n = sys.argv[1], int(sys.argv[2])\nfor i in range(n):\n"
              "    try:\n        os.open(f'{p}-{i}', os.O_RDONLY)\n    except OSError:\n        pass\n")
    procs = [_subprocess.Popen([_sys.executable, "-c", script, f"{prefix}-{k}", str(opens)])
             for k in range(processes)]
    for p in procs:
        assert p.wait(timeout=300) == 0
    return [f"{prefix}-{k}-{i}" for k in range(processes) for i in range(opens)]


class NatsCluster:
    """A cluster of ``n`` nats-server processes with JetStream on loopback ports, in ``root``."""

    def __init__(self, root, n: int = 3) -> None:
        self.binary = need("nats-server", "nats")
        self.root = root
        self.ports = [free_port() for _ in range(n)]
        self.cluster_ports = [free_port() for _ in range(n)]
        self.procs: list[_subprocess.Popen | None] = [None] * n
        for i in range(n):
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for j, p in enumerate(self.cluster_ports) if j != i)
            store = root / f"n{i}"
            store.mkdir(parents=True, exist_ok=True)
            cluster = (f"cluster {{ name: kr, listen: 127.0.0.1:{self.cluster_ports[i]}, routes: [{routes}] }}\n"
                       if n > 1 else "")
            (root / f"n{i}.conf").write_text(
                f"server_name: n{i}\nlisten: 127.0.0.1:{self.ports[i]}\n"
                f"jetstream {{ store_dir: \"{store}\", max_memory_store: 64MB, max_file_store: 2GB }}\n" + cluster)
        for i in range(n):
            self.start(i)

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{p}" for p in self.ports]

    def start(self, i: int) -> None:
        log = open(self.root / f"n{i}.log", "ab")
        self.procs[i] = _subprocess.Popen([self.binary, "-c", str(self.root / f"n{i}.conf")], stdout=log,
                                          stderr=log, stdin=_subprocess.DEVNULL)
        wait_for(lambda: _connects(self.ports[i]), 20, f"nats-server n{i} to listen")

    def kill(self, i: int) -> None:
        p = self.procs[i]
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()
        self.procs[i] = None

    def stop(self) -> None:
        for i in range(len(self.procs)):
            self.kill(i)


def _connects(port: int) -> bool:
    try:
        with _socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def nats_run(coro_fn, *args, timeout: float = 120):
    """Run ``coro_fn(nc, js, *args)`` against a cluster, in a fresh asyncio loop (tests are trio)."""
    import asyncio

    async def main(urls):
        import nats

        nc = await nats.connect(servers=urls, connect_timeout=2, max_reconnect_attempts=60,
                                reconnect_time_wait=0.5, error_cb=_quiet, disconnected_cb=_quiet0,
                                closed_cb=_quiet0)
        try:
            return await asyncio.wait_for(coro_fn(nc, nc.jetstream(), *args[1:]), timeout)
        finally:
            await nc.close()

    return asyncio.run(main(args[0]))


async def _quiet(_e=None):
    pass


async def _quiet0():
    pass


async def add_stream(nc, js, name: str, subjects: list[str], replicas: int):
    """Make the stream, retrying while the cluster elects its leaders."""
    import asyncio

    from nats.js.api import StreamConfig

    deadline = asyncio.get_running_loop().time() + 60
    while True:
        try:
            return await js.add_stream(StreamConfig(name=name, subjects=subjects, num_replicas=replicas,
                                                    duplicate_window=120.0))
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)


async def read_stream(nc, js, subject: str, idle: float = 3.0):
    """Every message the stream holds on ``subject``: [(headers, payload)], read with an ordered consumer
    until none comes for ``idle`` seconds."""
    import asyncio

    out = []
    deadline = asyncio.get_running_loop().time() + 60
    while True:  # a cluster that just lost a node may take a few seconds to make the consumer
        try:
            sub = await js.subscribe(subject, ordered_consumer=True)
            break
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(1)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=idle)
            except (asyncio.TimeoutError, Exception) as e:
                if type(e).__name__ in ("TimeoutError", "NatsTimeoutError"):
                    return out
                raise
            out.append((dict(msg.headers or {}), msg.data))
    finally:
        await sub.unsubscribe()


class Rsyslog:
    """Debian's rsyslogd in the foreground with a private config: UDP and TCP on loopback ports and a unix
    socket in ``root``, every message written to ``root/messages`` as ``PRI TIMESTAMP HOST APP PROCID
    MSGID MSG``."""

    def __init__(self, root) -> None:
        binary = need("rsyslogd")
        self.root = root
        self.udp, self.tcp = free_port(), free_port()
        self.socket = root / "log.sock"
        self.out = root / "messages"
        work = root / "work"
        work.mkdir()
        conf = root / "rsyslog.conf"
        conf.write_text(f'''
global(workDirectory="{work}" maxMessageSize="64k")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{self.socket}" UseSpecialParser="off" ParseHostname="on")
module(load="imudp")
# a receive buffer for a burst: a datagram that finds the default one full is dropped unseen
input(type="imudp" address="127.0.0.1" port="{self.udp}" rcvbufSize="8m")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{self.tcp}")
template(name="kr" type="string" string="%PRI% %TIMESTAMP:::date-rfc3339% %HOSTNAME% %APP-NAME% %PROCID% %MSGID% %msg%\\n")
*.* action(type="omfile" file="{self.out}" template="kr")
''')
        log = open(root / "rsyslogd.log", "wb")
        self.proc = _subprocess.Popen([binary, "-n", "-f", str(conf), "-i", str(root / "rsyslogd.pid")],
                                      stdout=log, stderr=log, stdin=_subprocess.DEVNULL)
        wait_for(lambda: _connects(self.tcp) and self.socket.exists(), 20, "rsyslogd to listen")

    def lines(self) -> list[str]:
        try:
            return self.out.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except _subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- BPF objects: built here, or shipped into a guest without clang -------------------------------------

# tools/kmx-tests.sh builds the objects of tests/bpf_src on the host (for the guest's architecture) into this
# untracked directory of the copy the guest sees: the guests have no clang.
PREBUILT_OBJECTS = TESTS / "data" / "bpfobj"
# The sources of the objects the kernel-marked tests load (what kmx-tests.sh builds).
KERNEL_TEST_OBJECTS = ("core_task.c", "global_data.c", "subprog.c", "seed.c", "probes.c", "kprobes.c")


# Host programs the kernel tests probe (uprobes), from tests/c_src: name -> (source, compiler flags).  Built
# here with the C compiler, or (in the qemu guests, which have none) built by tools/kmx-tests.sh on the host
# for the guest's architecture into PREBUILT_BINARIES.
C_SRC = TESTS / "c_src"
PREBUILT_BINARIES = TESTS / "data" / "bin"
KERNEL_TEST_BINARIES = {
    "uprobe_target": ("uprobe_target.c", ("-O1", "-rdynamic")),
    "uprobe_target_stripped": ("uprobe_target.c", ("-O1", "-rdynamic", "-s")),   # .dynsym only
}


def probe_binary(name: str, out_dir: Path) -> Path:
    """The program ``name`` of KERNEL_TEST_BINARIES: compiled now when a C compiler is here (cc, gcc or clang),
    else the one tools/kmx-tests.sh shipped; neither is a failure that says what is missing."""
    source, flags = KERNEL_TEST_BINARIES[name]
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is not None:
        out = out_dir / name
        r = subprocess.run([cc, *flags, "-o", str(out), str(C_SRC / source)], capture_output=True, text=True,
                           timeout=120)
        if r.returncode != 0:
            raise AssertionError(f"{cc} failed on {source}:\n{r.stderr}")
        return out
    prebuilt = PREBUILT_BINARIES / name
    if prebuilt.exists():
        return prebuilt
    raise AssertionError(f"no C compiler here and no {prebuilt} (tools/kmx-tests.sh builds it for the qemu guests "
                         "on a host with a C compiler: apt-get install gcc, and gcc-aarch64-linux-gnu for arm64)")


def bpf_object(source: str, out_dir: Path) -> Path:
    """tests/bpf_src/<source> as a BPF object: built with clang when it is here, else the one tools/kmx-tests.sh
    built on the host and shipped (tests/data/bpfobj/); neither is a skip (a failure under CI)."""
    if shutil.which("clang") and Path("/usr/include/bpf/bpf_helpers.h").exists():
        return compile_bpf(source, out_dir)
    prebuilt = PREBUILT_OBJECTS / (Path(source).stem + ".o")
    if prebuilt.exists():
        return prebuilt
    return compile_bpf(source, out_dir)     # says what is missing


class Bpffs:
    """A bpf file system mounted on a fresh directory (for ``bpftool prog loadall``), unmounted on close."""

    def __init__(self, where: Path) -> None:
        self.path = where / "bpffs"
        self.path.mkdir()
        subprocess.run(["mount", "-t", "bpf", "bpf", str(self.path)], check=True, capture_output=True)

    def close(self) -> None:
        subprocess.run(["umount", str(self.path)], capture_output=True)

    def __enter__(self) -> "Bpffs":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bpftool_json(*args: str):
    r = subprocess.run([BPFTOOL, "-j", *args], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise AssertionError(f"bpftool {' '.join(args)} failed: {r.stderr or r.stdout}")
    return json.loads(r.stdout) if r.stdout.strip() else None


def bpftool_loadall(obj: Path, pin_dir: Path) -> dict[str, int]:
    """``bpftool prog loadall OBJ DIR`` (libbpf loads the object): program name -> its id."""
    r = subprocess.run([BPFTOOL, "prog", "loadall", str(obj), str(pin_dir)], capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0:
        raise AssertionError(f"bpftool prog loadall {obj} failed:\n{r.stderr}")
    return {p.name: bpftool_json("prog", "show", "pinned", str(p))["id"] for p in pin_dir.iterdir()}


def xlated_as_bpftool_shows(prog_id: int) -> tuple[bytes, str]:
    """A loaded program's xlated code, comparable between two loads of one object: the raw instructions
    with each map reference's id (which differs per load) replaced by the map's name, and bpftool's
    ``dump xlated linum`` text (source lines from the line info, function headers from the func info and
    BTF) with ``map[id:N]`` replaced the same way."""
    import re
    names: dict[int, str] = {}

    def name_of(map_id: int) -> str:
        if map_id not in names:
            names[map_id] = bpftool_json("map", "show", "id", str(map_id))["name"]
        return names[map_id]

    with tempfile_path() as raw_path:
        subprocess.run([BPFTOOL, "prog", "dump", "xlated", "id", str(prog_id), "file", str(raw_path)], check=True,
                       capture_output=True, timeout=120)
        raw = bytearray(raw_path.read_bytes())
    for slot in range(len(raw) // 8):
        code, regs = raw[slot * 8], raw[slot * 8 + 1]
        if code == 0x18 and regs >> 4 in (1, 2):   # ld_imm64 BPF_PSEUDO_MAP_FD / _VALUE: imm is the map's id
            (map_id,) = struct.unpack_from("<I", raw, slot * 8 + 4)
            tag = name_of(map_id).encode()[:4].ljust(4, b"\0")
            raw[slot * 8 + 4:slot * 8 + 8] = tag
    r = subprocess.run([BPFTOOL, "prog", "dump", "xlated", "id", str(prog_id), "linum"], capture_output=True,
                       text=True, timeout=120, check=True)
    text = re.sub(r"map\[id:(\d+)\]", lambda m: f"map[{name_of(int(m.group(1)))}]", r.stdout)
    return bytes(raw), text


class tempfile_path:
    def __enter__(self) -> Path:
        import tempfile
        fd, name = tempfile.mkstemp(prefix="kr-xlated-")
        os.close(fd)
        self.path = Path(name)
        return self.path

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)


def maps_as_bpftool_shows(map_ids) -> dict[str, dict]:
    """``bpftool map show`` of each map, by name, without what differs between two loads (the ids, the
    memory charged); whether the map has BTF is kept (``btf``)."""
    out = {}
    for map_id in map_ids:
        m = bpftool_json("map", "show", "id", str(map_id))
        m["btf"] = "btf_id" in m
        for key in ("id", "btf_id", "bytes_memlock", "pids"):
            m.pop(key, None)
        out[m["name"]] = m
    return out
# --- what the collector should report of a process's identity and context (issue 14), from /proc ------------

UNSET = 4294967295  # (u32)-1: loginuid and sessionid not set


def kernel_start_ns(pid: int) -> int:
    """The process's task->start_time (what its entity_key is made from), from the BPF task iterator."""
    from kestrel_raw.context.tasks import read_task_starts

    return read_task_starts()[pid].start_ns


def tty_of(pid: int) -> str | None:
    """The controlling terminal /proc/PID/stat's tty_nr names (major: bits 15-8; minor: bits 31-20 and 7-0),
    written as the collector writes a header's tty (decode.tty_name); None when there is none."""
    from kestrel_raw.codec.decode import tty_name

    with open(f"/proc/{pid}/stat") as f:
        tty_nr = int(f.read().rsplit(")", 1)[1].split()[4])
    if tty_nr == 0:
        return None
    major, minor = (tty_nr >> 8) & 0xFFF, (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)
    return tty_name(major << 20 | minor)


def identity_and_context(pid: int) -> dict:
    """The JSON keys the collector adds for process ``pid`` beyond pid, tid, ppid, uid, gid and comm (the
    header's other ids, and the context keys but ancestors), as /proc shows the process now: what its events
    carry, and what a child it forks starts with (but ``parent_entity_key`` and ``exe``)."""
    from kestrel_raw.codec.event import entity_key
    from kestrel_raw.context.cgroups import read_cgroup2_mount
    from kestrel_raw.context.containers import read_container, v2_path

    with open(f"/proc/{pid}/status") as f:
        ids = {k: v.split() for k, v in (line.split(":", 1) for line in f if ":" in line)}
    with open(f"/proc/{pid}/stat") as f:
        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
    loginuid = int(open(f"/proc/{pid}/loginuid").read())
    sessionid = int(open(f"/proc/{pid}/sessionid").read())
    with open(f"/proc/{pid}/cgroup") as f:
        path = v2_path(f.read())
    mount = read_cgroup2_mount()
    container = read_container(pid)
    exe = os.readlink(f"/proc/{pid}/exe")
    deleted = exe.endswith(" (deleted)")
    ns = {name: os.stat(f"/proc/{pid}/ns/{name}").st_ino for name in ("pid", "mnt", "net")}
    return {
        "euid": int(ids["Uid"][1]), "egid": int(ids["Gid"][1]),
        "auid": None if loginuid == UNSET else loginuid, "sessionid": None if sessionid == UNSET else sessionid,
        "tty": tty_of(pid), "cgroup_id": os.stat(mount.mount_point + (path if path != "/" else "")).st_ino,
        "parent_entity_key": entity_key(ppid, kernel_start_ns(ppid)) if ppid else None,
        "cgroup": path, "container_id": container.id if container else None,
        "container_name": None, "container_image": None,
        "exe": exe.removesuffix(" (deleted)"), "exe_deleted": deleted,
        "exe_memfd": deleted and exe.startswith("/memfd:"), "cwd": os.readlink(f"/proc/{pid}/cwd"),
        "pidns": ns["pid"], "mntns": ns["mnt"], "netns": ns["net"], "hostname": uts_nodename(pid),
    }


def inherited(pid: int | None = None, **changed) -> dict:
    """What a child of ``pid`` (default: this process) reports before it changes anything: its parent's
    ``identity_and_context`` with the parent's key as parent_entity_key, and ``changed`` (its own exe...)."""
    from kestrel_raw.codec.event import entity_key

    pid = pid or os.getpid()
    return {**identity_and_context(pid), "parent_entity_key": entity_key(pid, kernel_start_ns(pid)), **changed}
