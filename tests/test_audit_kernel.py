"""What kestrel-raw puts into the kernel, read back and checked against the kernel and bpftool.

Every program the collector loads is recorded as it goes into BPF_PROG_LOAD (the exact bytes), then:
its xlated code, decoded by ``kestrel_raw.asm.format_xlated``, equals ``bpftool prog dump xlated`` line
by line; and ``prog_tag`` of the loaded bytes equals the tag the kernel reports (and bpftool shows).

bpftool built from kernel sources before 6.8 (Debian 12's 7.1) prints the per-CPU address move as a
plain ``rD = rS``; there, and only for an instruction whose bytes are that move (off -1), its line is
taken as the same as ours (``rD = &(void __percpu *)(rS)``, the kernel's own disassembler since 6.8).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

import pytest
import trio

from kestrel_raw.asm import (
    R0, R1, R2, KernelSymbols, disassemble_xlated, exit_insn, format_xlated, ld_map_fd, ld_map_value, mov64_imm,
    prog_tag,
)
from kestrel_raw.asm.digest import stable_bytes, tag_hash_for
from kestrel_raw.asm.xlated import KIND_CALL, KIND_MAP, KIND_PERCPU_ADDR
from kestrel_raw.collector import KestrelCollector
from kestrel_raw.config import CollectorConfig
from kestrel_raw.kernel import bpf
from kestrel_raw.kernel.prog import Program
from kestrel_raw.maps import ArrayMap

pytestmark = pytest.mark.kernel

BPFTOOL = shutil.which("bpftool") or next(
    (p for p in ("/usr/sbin/bpftool", "/sbin/bpftool") if os.access(p, os.X_OK)), None)


def _bpftool(*args: str) -> str:
    if BPFTOOL is None:
        pytest.skip("bpftool is not installed (CI installs it: apt-get install bpftool)")
    return subprocess.run([BPFTOOL, *args], capture_output=True, text=True, check=True, timeout=60).stdout


class Loaded:
    """One program as it went into BPF_PROG_LOAD, with what the kernel says of it while it is loaded."""

    def __init__(self, name: str, code: bytes, info: bpf.ProgInfo, xlated: bytes) -> None:
        self.name, self.code, self.info, self.xlated = name, code, info, xlated


@pytest.fixture(scope="module")
def loaded() -> list[tuple[Loaded, list[str], bytes, dict]]:
    """Every program of a collector with all event types: recorded at load, read back, and bpftool's
    text, raw bytes and ``prog show`` for it, all taken while the programs are loaded."""
    recorded: list[tuple[str, bytes, object]] = []
    real_load = bpf.prog_load

    def recording_load(prog_type, insns, *args, **kwargs):
        fd = real_load(prog_type, insns, *args, **kwargs)
        recorded.append((kwargs.get("name", ""), bytes(insns), fd))
        return fd

    mp = pytest.MonkeyPatch()
    mp.setattr(bpf, "prog_load", recording_load)
    send, _recv = trio.open_memory_channel(16)
    collector = KestrelCollector(send, CollectorConfig())
    out = []
    try:
        collector.load()
        mp.undo()
        with tempfile.TemporaryDirectory() as tmp:
            for name, code, fd in recorded:
                info = bpf.prog_info(fd.fileno())
                prog = Loaded(name, code, info, bpf.prog_xlated(fd.fileno()))
                text = _bpftool("prog", "dump", "xlated", "id", str(info.id)).splitlines()
                raw_path = os.path.join(tmp, f"{info.id}.bin")
                _bpftool("prog", "dump", "xlated", "id", str(info.id), "file", raw_path)
                with open(raw_path, "rb") as f:
                    raw = f.read()
                shown = json.loads(_bpftool("--json", "prog", "show", "id", str(info.id)))
                out.append((prog, text, raw, shown))
    finally:
        mp.undo()
        collector.stop()
    assert sorted(p.name for p, *_ in out) == sorted([
        "kr_connect", "kr_connect_e", "kr_exec", "kr_exec_cwd", "kr_exec_exe", "kr_execve_e", "kr_execve_x",
        "kr_execveat_e", "kr_execveat_x", "kr_exit", "kr_fork", "kr_fork_cwd", "kr_fork_exe", "kr_open_fin",
        "kr_openat", "kr_openat2", "kr_openat2_e", "kr_openat_e", "kr_proc_cwd", "kr_chdir", "kr_fchdir",
        "kr_chroot", "kr_unshare", "kr_setns", "kr_sethostname"])
    return out


def _same_line(ours: str, theirs: str, insn) -> bool:
    if ours == theirs:
        return True
    if insn.kind != KIND_PERCPU_ADDR:
        return False
    number = ours.split(":", 1)[0]
    return theirs == f"{number}: (bf) r{insn.dst} = r{insn.src}"  # bpftool before the kernel's 6.8 disasm.c


def test_xlated_decoding_equals_bpftool_line_by_line_for_every_program(loaded) -> None:
    symbols = KernelSymbols.load()
    for prog, bpftool_lines, bpftool_raw, _shown in loaded:
        assert bpftool_raw == prog.xlated, f"{prog.name}: bpftool read other xlated bytes than prog_xlated"
        insns = disassemble_xlated(prog.xlated, symbols)
        ours = format_xlated(prog.xlated, symbols).splitlines()
        assert len(ours) == len(bpftool_lines) == len(insns), prog.name
        different = [(o, t) for o, t, i in zip(ours, bpftool_lines, insns) if not _same_line(o, t, i)]
        assert different == [], f"{prog.name}: lines that differ from bpftool's"
        # The comparison covered the forms the kernel rewrites: calls by address and map ids.
        calls = [i for i in insns if i.kind == KIND_CALL]
        assert calls and all(i.symbol for i in calls if i.address is not None), prog.name
        assert {i.map_id for i in insns if i.kind == KIND_MAP} <= set(prog.info.map_ids)
        assert {i.map_id for i in insns if i.kind == KIND_MAP}, prog.name


def test_tag_of_every_loaded_program_is_the_kernels(loaded) -> None:
    for prog, _text, _raw, shown in loaded:
        assert prog_tag(prog.code) == prog.info.tag, prog.name
        assert shown["tag"] == prog.info.tag.hex(), prog.name
    # The tag leaves out the map fds: a program that loads maps hashes otherwise than its raw bytes.
    prog = loaded[0][0]
    assert stable_bytes(prog.code) != prog.code


def test_map_value_load_reads_back_as_bpftool_prints_it_and_its_tag_leaves_out_the_offset() -> None:
    values = ArrayMap(16, 1, name="kr_audit_v")
    try:
        insns = [ld_map_value(R1, "v", 8), ld_map_fd(R2, "v"), mov64_imm(R0, 0), exit_insn()]
        with Program(insns, maps={"v": values}, name="kr_audit_v") as prog:
            info = prog.info()
            xlated = prog.xlated()
            map_id = values.map_info().id
            assert format_xlated(xlated).splitlines() == [
                f"   0: (18) r1 = map[id:{map_id}][0]+8",
                f"   2: (18) r2 = map[id:{map_id}]",
                "   4: (b7) r0 = 0",
                "   5: (95) exit",
            ]
            assert format_xlated(xlated).splitlines() == _bpftool("prog", "dump", "xlated", "id",
                                                                  str(info.id)).splitlines()
            assert prog_tag(prog.code) == info.tag
            # The kernel zeroes a map value's offset for its tag (both halves of the ld_imm64).
            other = [ld_map_value(R1, "v", 0), ld_map_fd(R2, "v"), mov64_imm(R0, 0), exit_insn()]
            with Program(other, maps={"v": values}, name="kr_audit_v") as prog0:
                assert prog0.info().tag == info.tag
                assert prog_tag(prog0.code) == info.tag
    finally:
        values.close()


def test_tag_hash_is_the_running_kernels() -> None:
    # A program with no map: the tag is the hash of its bytes, so the kernel says which hash it uses.
    insns = [mov64_imm(R0, 7), exit_insn()]
    with Program(insns, name="kr_audit_t") as prog:
        tag = prog.info().tag
    release = os.uname().release
    assert prog_tag(prog.code, tag_hash_for(release)) == tag
    other = "sha1" if tag_hash_for(release) == "sha256" else "sha256"
    assert prog_tag(prog.code, other) != tag
