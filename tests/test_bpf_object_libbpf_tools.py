"""Debian's libbpf-tools (execsnoop, opensnoop, tcpconnect...): real-world BPF objects built by someone else's
clang, with CO-RE guards, bitfields, subprograms, global data and BTF maps.  Each tool embeds its object in
the executable (a libbpf skeleton); the test cuts it out, reads and links it with kestrel_raw.bpfobj against
this kernel's BTF, and compares every program's instructions and every CO-RE patch with what libbpf itself
produces for the same object.

The five whose objects use ``__kconfig`` externs (LINUX_KERNEL_VERSION, LINUX_HAS_BPF_COOKIE) link with the
values resolved from this kernel, which libbpf resolves the same way.  Needs the libbpf-tools package (CI
installs it).
"""
from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest

from kestrel_raw.asm import Instruction
from kestrel_raw.bpfobj import BpfObject
from kestrel_raw.btf import BTF, VMLINUX_BTF
from kestrel_raw.errors import BpfObjectError
from tests.helpers import build_libbpf_reference, libbpf_fds, run_libbpf

EM_BPF = 247
# Tools whose objects reference kconfig externs (LINUX_KERNEL_VERSION, LINUX_HAS_BPF_COOKIE).
USES_EXTERNS = {"biolatency", "biosnoop", "bitesize", "capable", "javagc"}


def _externs(o: BpfObject):
    """The object's extern values as the loader resolves them on this kernel (feature probes included)."""
    from kestrel_raw.bpfobj.externs import HostFacts
    from kestrel_raw.loader import features
    return o.resolve_externs(HostFacts(features=features.feature)) if o.externs else None


def _package_tools() -> list[str]:
    try:
        out = subprocess.run(["dpkg", "-L", "libbpf-tools"], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        out = None
    if out is None or out.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("libbpf-tools is not installed; CI installs it (apt-get install libbpf-tools)")
        pytest.skip("libbpf-tools is not installed (apt-get install libbpf-tools)")
    return sorted(p for p in out.stdout.split() if "/sbin/" in p and os.path.isfile(p))


def embedded_objects(path: str) -> list[bytes]:
    """The BPF ELF objects a libbpf skeleton carries inside an executable: ET_REL, EM_BPF, up to the end
    of their section header table."""
    data = Path(path).read_bytes()
    out = []
    pos = data.find(b"\x7fELF", 1)
    while pos >= 0:
        if len(data) >= pos + 64 and data[pos + 4:pos + 6] == b"\x02\x01":
            e_type, e_machine = struct.unpack_from("<HH", data, pos + 16)
            if (e_type, e_machine) == (1, EM_BPF):
                (shoff,) = struct.unpack_from("<Q", data, pos + 40)
                shentsize, shnum = struct.unpack_from("<HH", data, pos + 58)
                out.append(data[pos:pos + shoff + shentsize * shnum])
        pos = data.find(b"\x7fELF", pos + 1)
    return out


@pytest.fixture(scope="module")
def tool_objects(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("libbpf-tools")
    objs = {}
    for exe in _package_tools():
        for n, data in enumerate(embedded_objects(exe)):
            name = os.path.basename(exe) + (f".{n}" if n else "")
            path = out / f"{name}.bpf.o"
            path.write_bytes(data)
            objs[name] = path
    assert len(objs) > 50, f"only {len(objs)} objects found in libbpf-tools"
    return objs


@pytest.fixture(scope="module")
def host_btf() -> BTF:
    if not os.path.exists(VMLINUX_BTF):
        pytest.skip(f"{VMLINUX_BTF} is absent")
    return BTF.load()


def test_every_tool_object_reads_and_links(tool_objects, host_btf):
    linked = {}
    for name, path in tool_objects.items():
        o = BpfObject.load(str(path))
        assert bool(o.externs) == (name in USES_EXTERNS), name
        linked[name] = o.link(host_btf, externs=_externs(o))
        assert linked[name], name
        for p in linked[name].values():     # what disasm shows: every instruction decodes (pseudo calls too)
            slot = 0
            while slot < len(p.insns) // 8:
                slot += Instruction.decode(p.insns, slot).size
    assert {"execsnoop", "opensnoop", "tcpconnect", "bashreadline", "runqslower"} <= set(linked)
    # execsnoop: two tracepoints on execve, its ring/perf buffer and its .rodata knobs
    e = linked["execsnoop"]
    assert {p.target for p in e.values()} == {"syscalls/sys_enter_execve", "syscalls/sys_exit_execve"}
    # bashreadline attaches by hand: its section names no binary, yet it loads
    assert [p.target for p in linked["bashreadline"].values()] == ["readline"]


@pytest.mark.crosscheck
def test_same_instructions_as_libbpf(tool_objects, host_btf, tmp_path_factory):
    ref = build_libbpf_reference(tmp_path_factory.mktemp("ref"))
    compared = 0
    externs = 0
    for name, path in tool_objects.items():
        r = run_libbpf(ref, path)
        if not r.relocated:
            continue        # libbpf stopped at a map the tool sizes at run time, before relocating
        o = BpfObject.load(str(path))
        linked = o.link(host_btf, externs=_externs(o))
        externs += name in USES_EXTERNS
        fds = libbpf_fds(o, r.maps)
        assert set(r.progs) == set(linked), name
        for pname, p in linked.items():
            assert p.with_fds(fds) == r.progs[pname], f"{name}: {pname}"
        mine = list(dict.fromkeys(line for p in linked.values() for c in p.core for line in c.log))
        # libbpf also relocates a .text function that no program calls (javagc's bpf_usdt_arg); no linked
        # program holds it, so its lines are not among ours
        used = {f for p in linked.values() for f in (p.name, *p.subprograms)}
        theirs = [ln for ln in r.core_log if ln.split("'")[1] in used]
        assert sorted(mine) == sorted(theirs), name
        compared += 1
    assert compared >= 49 and externs >= 4, (compared, externs)


# What each tool sets before its own load that the object leaves open (maps sized at run time): stack maps'
# value size is the stack depth asked for (the tools' default, 127 frames of u64), entries their default.
STACK_DEPTH_VALUE = 127 * 8
# Objects whose programs reach a CO-RE relocation that found no target in this kernel (libbpf leaves the
# same invalid call: the instructions are compared with libbpf's above), which the verifier refuses: on this
# host bindsnoop (with its .rodata defaults, which the tool's own settings change) and runqlen
# (task->se.cfs_rq, absent without CONFIG_FAIR_GROUP_SCHED).  Another kernel may have the fields.
POISONED = "invalid func unknown#195896080"
REFUSED_WITH_DEFAULTS = {"bindsnoop", "runqlen"}


@pytest.fixture(scope="module")
def privileged():
    from tests.conftest import kernel_privilege_problem
    problem = kernel_privilege_problem()
    if problem:
        pytest.skip(problem)


def test_tool_objects_load_and_attach(tool_objects, host_btf, privileged):
    """Every tool object's programs loaded by kestrel_raw.loader (fentry/fexit where the kernel has BPF
    trampolines) and attached where their sections say; the attached ones run (the kernel's run counts)."""
    from kestrel_raw.errors import SetupError, VerifierError
    from kestrel_raw.kernel import bpf
    from kestrel_raw.kernel.uapi import BPF_MAP_TYPE_STACK_TRACE, BPF_STATS_RUN_TIME
    from kestrel_raw.loader import LoadedObject

    has_kprobes = os.path.exists("/sys/bus/event_source/devices/kprobe")
    stats = bpf.enable_stats(BPF_STATS_RUN_TIME)
    loaded = attached = refused = 0
    ran: dict[str, int] = {}
    kinds_attached: set[str] = set()
    try:
        for name, path in tool_objects.items():
            o = BpfObject.load(str(path))
            sizes = {m.name: 1024 for m in o.maps.values() if m.max_entries == 0 and m.type not in (4, 27)}
            values = {m.name: STACK_DEPTH_VALUE for m in o.maps.values()
                      if m.type == BPF_MAP_TYPE_STACK_TRACE and m.value_size == 0}
            progs = list(o.programs)
            try:
                obj = LoadedObject(o, programs=progs, max_entries=sizes, value_size=values, target_btf=host_btf)
            except (SetupError, BpfObjectError) as e:
                # fentry/fexit on a kernel without trampolines, aimed at a placeholder the tool retargets at
                # run time (btrfsdist's fentry/dummy_file_read) or at a module's function (mdflush's
                # md_flush_request; module BTF is not searched): the rest of the object loads without them
                assert ("this kernel refuses fentry programs" in str(e) or "refuses fexit programs" in str(e)
                        or "the kernel's BTF has no function" in str(e)), e
                progs = [n for n, p in o.programs.items() if p.kind not in ("fentry", "fexit")]
                if not progs:
                    continue
                obj = LoadedObject(o, programs=progs, max_entries=sizes, value_size=values, target_btf=host_btf)
            except VerifierError as e:
                assert name in REFUSED_WITH_DEFAULTS and POISONED in e.log, (name, e)
                refused += 1
                continue
            with obj:
                loaded += 1
                for pname in obj.progs:
                    kind = obj.linked[pname].kind
                    try:
                        made = obj.attach([pname])
                    except SetupError as e:
                        assert not has_kprobes and kind in ("kprobe", "kretprobe"), (name, pname, e)
                        assert str(e).startswith("this kernel has no kprobe PMU"), e
                        continue
                    if made:
                        attached += 1
                        kinds_attached.add(kind)
                if name in ("syscount", "opensnoop", "statsnoop"):
                    for _ in range(50):
                        os.close(os.open("/dev/null", os.O_RDONLY))
                        os.stat("/")
                    ran[name] = sum(bpf.prog_info(fd.fileno()).run_cnt for fd in obj.progs.values())
    finally:
        stats.close()
    assert loaded >= 50 and attached >= 60 and refused <= len(REFUSED_WITH_DEFAULTS), (loaded, attached, refused)
    assert {"tracepoint", "raw_tracepoint", "tp_btf"} <= kinds_attached
    assert all(n > 0 for n in ran.values()) and len(ran) == 3, ran
