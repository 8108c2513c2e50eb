"""BPF objects loaded by kestrel_raw.loader, compared with libbpf's load of the same object and run.

For each object built from tests/bpf_src (CO-RE reads of task_struct, global data, subprogram calls, the
seed's shape, externs and uprobes), the xlated code of every program the kernel holds after our load equals
what it holds after ``bpftool prog loadall`` (bpftool uses libbpf): the instructions byte for byte (map ids
replaced by map names) and bpftool's ``dump xlated linum`` text, whose source lines and function headers
come from the func info, line info and BTF each loader gave the kernel.  Then the programs run: each
object's events arrive, with the values the kernel's own sources give.

Kernel tests: they run in the qemu guests too (tools/kmx-tests.sh ships the objects built here, as the
guests have no clang), where the CO-RE offsets of task_struct differ from this host's, and where kprobes and
BPF trampolines exist (kprobes.c); this host has neither, and the test checks the one-line refusal.
"""
from __future__ import annotations

import errno
import os
import struct
import time

import pytest
from construct import Int32sl, Int32ul, Int64ul, PaddedString, Struct

from kestrel_raw.btf import BTF
from kestrel_raw.errors import BPFError, SetupError, VerifierError
from kestrel_raw.kernel import bpf
from kestrel_raw.loader import LoadedObject, object_programs
from kestrel_raw.maps.ringbuf import RingBufReader
from tests.helpers import (
    BPFTOOL, Bpffs, bpf_object, bpftool_json, bpftool_loadall, maps_as_bpftool_shows, xlated_as_bpftool_shows,
)

pytestmark = pytest.mark.kernel

# core_task.c's struct sample
Sample = Struct("flags" / Int32ul, "prio" / Int32sl, "pid" / Int32sl, "tgid" / Int32sl, "ppid" / Int32sl,
                "_pad" / Int32ul, "arg_start" / Int64ul, "in_execve" / Int32ul, "state" / Int32ul,
                "sizes" / Int32ul[4], "exists" / Int64ul, "type_ids" / Int64ul[2], "comm" / PaddedString(16, "utf8"))
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")


def _lookup(obj: LoadedObject, name: str, key: bytes) -> bytes | None:
    m = obj.map_defs[name]
    return bpf.map_lookup_elem(obj.maps[name].fileno(), key, m.value_size)


def _until(cond, timeout=5.0, step=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if step:
            step()
        if (v := cond()):
            return v
        time.sleep(0.01)
    return cond()


@pytest.mark.parametrize("source", ["core_task.c", "global_data.c", "subprog.c", "seed.c", "probes.c"])
def test_same_xlated_code_as_bpftool(source, tmp_path):
    if BPFTOOL is None:
        pytest.fail("bpftool is not installed (apt-get install bpftool); the comparison needs it")
    path = bpf_object(source, tmp_path)
    with LoadedObject(path) as ours, Bpffs(tmp_path) as fs:
        pins = fs.path / "progs"
        theirs = bpftool_loadall(path, pins)
        assert set(theirs) == set(ours.progs)
        for name, fd in ours.progs.items():
            mine = xlated_as_bpftool_shows(bpf.prog_info(fd.fileno()).id)
            assert mine == xlated_as_bpftool_shows(theirs[name]), f"{source}: {name}"
            assert "; " in mine[1], "no source line: the line info did not reach the kernel"
        # the maps: types, sizes, flags, frozen (.rodata, .kconfig) and BTF as libbpf made them
        their_maps = {i for pid in theirs.values()
                      for i in bpftool_json("prog", "show", "id", str(pid)).get("map_ids", ())}
        mine = maps_as_bpftool_shows(bpf.map_info(fd.fileno()).id for fd in ours.maps.values())
        assert mine == maps_as_bpftool_shows(their_maps), source
        for name, fd in ours.maps.items():       # and with the key and value types of the object's BTF
            info, m = bpf.map_info(fd.fileno()), ours.map_defs[name]
            want = (0, ours._datasec_id(m.section)) if m.is_global_data else (m.key_type_id, m.value_type_id)
            assert (info.btf_key_type_id, info.btf_value_type_id) == want, (source, name)
        for p in pins.iterdir():
            p.unlink()


def test_object_programs_for_disasm_and_verify(tmp_path):
    """What disasm/verify list: each program's linked instructions, bpf-to-bpf calls included."""
    progs = {p.name: p for p in object_programs(str(bpf_object("subprog.c", tmp_path)))}
    assert set(progs) == {"first", "second", "third"}
    first = [str(i) for i in progs["first"].instructions()]
    assert any(t.startswith("call pc+") for t in first), first
    assert progs["third"].kind == "tp_btf" and progs["first"].section == "tracepoint/syscalls/sys_enter_getppid"


def test_core_task_reads_this_process(tmp_path):
    with LoadedObject(bpf_object("core_task.c", tmp_path)) as obj:
        obj.attach()
        fd, size = obj.ringbufs()["core_events"]
        reader = RingBufReader(fd.fileno(), size)
        me = os.getpid()
        got = []
        try:
            def mine():
                got.extend(reader.poll(0.05))
                return [s for s in map(Sample.parse, got) if s.tgid == me]
            samples = _until(mine, step=os.getppid)
        finally:
            reader.close()
    assert samples, "no sample from this process: the program did not run or its CO-RE reads are wrong"
    s = samples[0]
    host = BTF.load()
    assert (s.pid, s.tgid, s.ppid) == (me, me, os.getppid())
    with open("/proc/self/comm") as f:
        assert s.comm == f.read().strip()
    assert s.sizes == [16, 4, host.size_of("mm_struct"), host.member("task_struct", "comm").offset]
    assert s.type_ids[1] == host.find("task_struct", "struct").id
    with open("/proc/self/stat") as f:
        assert s.arg_start == int(f.read().rsplit(")", 1)[1].split()[45])


def test_global_data_initial_values_counts_and_frozen_rodata(tmp_path):
    with LoadedObject(bpf_object("global_data.c", tmp_path)) as obj:
        data = obj.map_defs[".data"]
        assert _lookup(obj, ".data", bytes(4))[:8] == U64.pack(7)          # calls = 7 before any run
        rodata = _lookup(obj, ".rodata", bytes(4))
        assert U64.unpack_from(rodata, 8)[0] == 3                            # scale
        with pytest.raises(BPFError) as e:
            bpf.map_update_elem(obj.maps[".rodata"].fileno(), bytes(4), rodata)
        assert e.value.errno == errno.EPERM                                  # frozen
        obj.attach()
        for _ in range(20):
            os.getpid()
        value = _lookup(obj, ".data", bytes(4))
        calls = U64.unpack_from(value, 0)[0]
        assert calls >= 7 + 20, calls
        bss = _lookup(obj, ".bss", bytes(4))
        assert U64.unpack_from(bss, 0)[0] % 3 == 0 and U64.unpack_from(bss, 0)[0] >= 60   # hits += scale
        assert data.value_size == len(value)


def test_subprogram_calls_compute(tmp_path):
    """first() calls record(0, pid_tgid), which stores mix(x) = x * 31 + 7 through a nested call."""
    with LoadedObject(bpf_object("subprog.c", tmp_path)) as obj:
        obj.attach()
        me = os.getpid() << 32 | os.getpid()        # this (main) thread's pid_tgid
        want = (me * 31 + 7) & (1 << 64) - 1
        got = _until(lambda: _lookup(obj, "results", U32.pack(0)) == U64.pack(want), step=os.getppid)
        assert got, "results[0] never held mix(this thread's pid_tgid)"
        assert _lookup(obj, "results", U32.pack(1)) != bytes(8)            # the raw tracepoint ran too


def _kconfig() -> dict[str, str]:
    from kestrel_raw.bpfobj.externs import HostFacts
    text = HostFacts().kconfig() or ""
    return dict(line.split("=", 1) for line in text.splitlines() if line.startswith("CONFIG_") and "=" in line)


def test_externs_and_uprobes(tmp_path):
    from kestrel_raw.bpfobj.externs import kernel_version_code
    with LoadedObject(bpf_object("probes.c", tmp_path)) as obj:
        obj.attach()
        assert set(obj.links) == {"read_externs", "getpid_entry", "getpid_exit"}
        os.getppid()
        for _ in range(10):
            os.getpid()
        facts = _lookup(obj, ".bss", bytes(4))
        calls = _lookup(obj, "getpid_calls", U32.pack(os.getpid()))
        returned = _lookup(obj, "getpid_returned", U32.pack(os.getpid()))
    version, bpf_syscall, bpf_events, hz, never, stext = struct.unpack_from("<6Q", facts)
    hostname = facts[48:64].split(b"\0")[0].decode()
    config = _kconfig()
    assert version == kernel_version_code(os.uname().release)
    assert bpf_syscall == 1 and never == 0
    assert bpf_events == {"y": 1, "m": 2}.get(config.get("CONFIG_BPF_EVENTS"), 0)
    assert hz == int(config.get("CONFIG_HZ", "0"))
    assert hostname == config.get("CONFIG_DEFAULT_HOSTNAME", '""').strip('"')
    with open("/proc/kallsyms") as f:
        assert stext == next(int(line.split()[0], 16) for line in f if line.split()[2] == "_stext")
    assert calls is not None and U64.unpack(calls)[0] >= 10
    assert returned == U64.pack(os.getpid())          # what getpid returned, read at its return


def test_kprobes_and_fentry_where_the_kernel_has_them(tmp_path):
    path = bpf_object("kprobes.c", tmp_path)
    # openat2_entry's typed __ksym (bpf_prog_active, a per-CPU variable) is placed by the kernel through
    # kallsyms, which holds data symbols only with CONFIG_KALLSYMS_ALL (Debian's amd64 kernels; not this
    # host's, nor Debian's arm64 6.1): where it is absent the kernel refuses the program, not the loader.
    with open("/proc/kallsyms") as f:
        data_symbols = any(line.split()[2] == "bpf_prog_active" for line in f)
    if not data_symbols:
        with pytest.raises(VerifierError, match="failed to find the address for kernel symbol 'bpf_prog_active'"):
            LoadedObject(path, programs=["openat2_entry"])
    if not os.path.exists("/sys/bus/event_source/devices/kprobe"):
        with LoadedObject(path, programs=["openat2_exit"]) as obj:
            with pytest.raises(SetupError, match=r"^this kernel has no kprobe PMU \(/sys/bus/event_source/devices/"
                                                 r"kprobe/type is absent\): kprobe programs cannot be attached "
                                                 r"here \(the kernel needs CONFIG_KPROBE_EVENTS\)$"):
                obj.attach()
    else:
        with LoadedObject(path, programs=["openat2_exit", *(["openat2_entry"] if data_symbols else [])]) as obj:
            obj.attach()
            fd = os.open("/dev/null", os.O_RDONLY)
            os.close(fd)
            me = os.getpid()
            assert U64.unpack(_lookup(obj, "hits", U32.pack(me << 2 | 1)))[0] >= 1
            assert _lookup(obj, "last_fd", U32.pack(me)) is not None
            if data_symbols:
                assert U64.unpack(_lookup(obj, "hits", U32.pack(me << 2 | 0)))[0] >= 1
                assert struct.unpack("<q", _lookup(obj, "prog_active", U32.pack(me)))[0] == 1
    try:
        obj = LoadedObject(path, programs=["openat2_fentry"])
    except SetupError as e:
        assert str(e).endswith("program 'openat2_fentry' (fentry/do_sys_openat2): this kernel refuses fentry "
                               "programs (BPF trampolines: EPERM; under lockdown, or without "
                               "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS)")
        return
    with obj:
        try:
            obj.attach()
        except SetupError as e:      # loaded, but no trampoline to attach it with (Debian's arm64 6.1)
            assert str(e) == ("this kernel cannot attach fentry programs (ENOTSUPP from BPF_RAW_TRACEPOINT_OPEN: "
                              "no BPF trampoline on this kernel or architecture): program 'openat2_fentry' "
                              "(fentry/do_sys_openat2)"), e
            return
        fd = os.open("/dev/null", os.O_RDONLY)
        os.close(fd)
        assert U64.unpack(_lookup(obj, "hits", U32.pack(os.getpid() << 2 | 2)))[0] >= 1
