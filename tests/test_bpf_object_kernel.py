"""The linked programs of the clang-built objects, loaded into this kernel with the bare bpf(2) calls (this
test creates the maps and picks the program types itself, apart from kestrel_raw.loader, which
tests/test_bpf_object_load.py tests against bpftool's load), attached,
and run: the verifier accepts what kestrel_raw.bpfobj produced, the CO-RE reads return this process's own
pid, tgid, parent and comm, and the seed-shaped object's ExecveEvent/OpenEvent/ConnectEvent records arrive in
its ring buffer and parse with a construct schema of those structs.

Needs clang (tests/helpers.compile_bpf) and the privilege to load programs; it is not marked ``kernel``
(test_bpf_object_load.py, which is, runs in the guests on objects tools/kmx-tests.sh builds for them).
"""
from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest
from construct import Bytes, CString, Int32sl, Int32ul, Int64ul, Padded, PaddedString, Struct

from kestrel_raw.bpfobj import BpfObject, LinkedProgram
from kestrel_raw.btf import BTF, VMLINUX_BTF
from kestrel_raw.kernel import bpf
from kestrel_raw.kernel.attach import attach_tracepoint
from kestrel_raw.kernel.uapi import (
    BPF_PROG_TYPE_RAW_TRACEPOINT, BPF_PROG_TYPE_TRACEPOINT, BPF_PROG_TYPE_TRACING, BPF_TRACE_RAW_TP,
)
from kestrel_raw.maps.ringbuf import RingBufReader
from tests.helpers import compile_bpf

# The seed's records (tests/bpf_src/seed_events.h), byte for byte.  A path is a C string in a padded field:
# bpf_probe_read_user_str leaves the reserved ring memory past its NUL as it was.


def CStr(size: int):
    return Padded(size, CString("utf8"))


EventHeader = Struct("type" / Int32ul, "pid" / Int32ul, "tid" / Int32ul, "uid" / Int32ul, "ts_ns" / Int64ul,
                     "comm" / PaddedString(16, "utf8"))
ExecveEvent = Struct("hdr" / EventHeader, "ppid" / Int32ul, "fault" / Int32sl, "filename" / CStr(256))
OpenEvent = Struct("hdr" / EventHeader, "dfd" / Int32sl, "flags" / Int32sl, "mode" / Int32ul, "fault" / Int32sl,
                   "path" / CStr(256))
ConnectEvent = Struct("hdr" / EventHeader, "fd" / Int32sl, "addrlen" / Int32ul, "addr" / Bytes(28),
                      "fault" / Int32sl)
SCHEMAS = {1: ExecveEvent, 2: OpenEvent, 3: ConnectEvent}
# core_task.c's struct sample
Sample = Struct("flags" / Int32ul, "prio" / Int32sl, "pid" / Int32sl, "tgid" / Int32sl, "ppid" / Int32sl,
                "_pad" / Int32ul, "arg_start" / Int64ul, "in_execve" / Int32ul, "state" / Int32ul,
                "sizes" / Int32ul[4], "exists" / Int64ul, "type_ids" / Int64ul[2], "comm" / PaddedString(16, "utf8"))


@pytest.fixture(scope="module")
def privileged():
    from tests.conftest import kernel_privilege_problem
    problem = kernel_privilege_problem()
    if problem:
        pytest.skip(problem)
    if not os.path.exists(VMLINUX_BTF):
        pytest.skip(f"{VMLINUX_BTF} is absent")


class Loaded:
    """The maps and programs of one object, created and loaded the way the phase-2 loader will."""

    def __init__(self, obj: BpfObject, programs: dict[str, LinkedProgram]) -> None:
        self.fds = {}
        self.progs = {}
        self.links = []
        for m in obj.maps.values():
            fd = bpf.map_create(m.type, m.key_size, m.value_size, m.max_entries, name=m.kernel_name,
                                flags=m.map_flags)
            self.fds[m.name] = fd
            if m.initial is not None:
                bpf.map_update_elem(fd.fileno(), bytes(4), m.initial)
        vmlinux = None
        for name, p in programs.items():
            kw = {}
            if p.kind == "tracepoint":
                ptype = BPF_PROG_TYPE_TRACEPOINT
            elif p.kind == "raw_tracepoint":
                ptype = BPF_PROG_TYPE_RAW_TRACEPOINT
            elif p.kind == "tp_btf":
                vmlinux = vmlinux or BTF.load()
                ptype = BPF_PROG_TYPE_TRACING
                kw = dict(expected_attach_type=BPF_TRACE_RAW_TP,
                          attach_btf_id=vmlinux.find(f"btf_trace_{p.target}", "typedef").id)
            else:
                raise AssertionError(f"no program type for {p.kind}")
            self.progs[name] = bpf.prog_load(ptype, p.with_fds(self.fds), license=p.license, name=name[:15], **kw)

    def close(self) -> None:
        for x in (*self.links, *self.progs.values(), *self.fds.values()):
            x.close()


@pytest.fixture
def load(privileged, tmp_path):
    made = []

    def _load(source: str, target_btf=None) -> tuple[BpfObject, Loaded]:
        obj = BpfObject.load(str(compile_bpf(source, tmp_path)))
        loaded = Loaded(obj, obj.link(target_btf))
        made.append(loaded)
        return obj, loaded

    yield _load
    for loaded in made:
        loaded.close()


def test_verifier_accepts_every_linked_program(load):
    for source in ("global_data.c", "subprog.c", "seed.c", "core_task.c"):
        obj, loaded = load(source)
        assert set(loaded.progs) == set(obj.programs)
        for fd in loaded.progs.values():
            assert bpf.prog_info(fd.fileno()).id > 0


def _poll(reader, want, deadline=5.0):
    out = []
    end = time.monotonic() + deadline
    while time.monotonic() < end and not want(out):
        out.extend(reader.poll(0.1))
    return out


def test_core_reads_return_this_process(load):
    obj, loaded = load("core_task.c")
    link = attach_tracepoint(loaded.progs["core_read_task"], "syscalls", "sys_enter_getppid")
    loaded.links.append(link)
    reader = RingBufReader(loaded.fds["core_events"].fileno(), obj.maps["core_events"].max_entries)
    try:
        me = os.getpid()


        def want(out):
            os.getppid()                     # the event: each poll round makes one more
            return any(Sample.parse(r).tgid == me for r in out)

        records = _poll(reader, want)
    finally:
        reader.close()
    mine = [Sample.parse(r) for r in records if Sample.parse(r).tgid == me]
    assert mine, "no record from this process: the program did not run, or its CO-RE reads are wrong"
    s = mine[0]
    with open("/proc/self/comm") as f:
        comm = f.read().strip()
    host = BTF.load()
    assert (s.pid, s.tgid, s.ppid) == (me, me, os.getppid())   # the main thread: pid == tgid
    assert s.comm == comm
    assert s.sizes == [16, 4, host.size_of("mm_struct"), host.member("task_struct", "comm").offset]
    # type_exists | enumval_exists(PIDTYPE_TGID) << 1 | field_exists(exit_code) << 2 | PIDTYPE_PGID << 8
    assert s.exists == 1 | 1 << 1 | 1 << 2 | host.enum_value("pid_type", "PIDTYPE_PGID") << 8
    assert s.type_ids[1] == host.find("task_struct", "struct").id
    assert s.state == 0                                          # running: __state (TASK_RUNNING) read via ___new
    with open("/proc/self/stat") as f:
        arg_start = int(f.read().rsplit(")", 1)[1].split()[45])     # field 48 of /proc/PID/stat: arg_start
    assert s.arg_start == arg_start


def test_seed_records_arrive_and_parse(load):
    obj, loaded = load("seed.c")
    for name, p in obj.programs.items():
        group, event = p.section_kind.tracepoint
        loaded.links.append(attach_tracepoint(loaded.progs[name], group, event))
    reader = RingBufReader(loaded.fds["events"].fileno(), obj.maps["events"].max_entries)
    marker = f"/tmp/kr-seed-{os.getpid()}-{time.monotonic_ns()}"
    try:
        child = subprocess.run(["/bin/true", marker], check=True)
        try:
            os.open(marker, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            pass
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", 9))
        except OSError:
            pass
        s.close()
        me = os.getpid()

        def parsed(out):
            return [SCHEMAS[int.from_bytes(r[:4], "little")].parse(r) for r in out
                    if int.from_bytes(r[:4], "little") in SCHEMAS]

        def done(out):
            evs = parsed(out)
            return (any(e.hdr.type == 1 and e.filename == "/bin/true" and e.ppid == me for e in evs)
                    and any(e.hdr.type == 2 and e.path == marker for e in evs)
                    and any(e.hdr.type == 3 and e.hdr.pid == me and e.addrlen == 16 for e in evs))

        records = _poll(reader, done)
    finally:
        reader.close()
    evs = parsed(records)
    assert child.returncode == 0
    execve = [e for e in evs if e.hdr.type == 1 and e.filename == "/bin/true" and e.ppid == me]
    opened = [e for e in evs if e.hdr.type == 2 and e.path == marker]
    conn = [e for e in evs if e.hdr.type == 3 and e.hdr.pid == me and e.addrlen == 16]
    assert execve and opened and conn, f"missing events among {len(evs)}"
    assert (opened[0].hdr.pid, opened[0].flags & 3, opened[0].fault) == (me, os.O_RDONLY, 0)
    # struct sockaddr_in for 127.0.0.1:9: AF_INET (2), port 9 big-endian, the address
    assert conn[0].addr[:8] == bytes([2, 0, 0, 9, 127, 0, 0, 1]) and conn[0].fault == 0
    assert execve[0].fault == 0 and execve[0].hdr.uid == os.getuid()
