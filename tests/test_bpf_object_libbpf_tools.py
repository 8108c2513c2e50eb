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
