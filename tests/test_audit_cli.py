"""kestrel-raw disasm, run --pin / --verify / --verifier-log, verify: on the running kernel.

Every program is recorded as it goes into BPF_PROG_LOAD (the exact bytes) where the test needs what was
loaded; the CLI runs in a subprocess, as a user runs it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import trio

from kestrel_raw import programs
from kestrel_raw.asm import R0, assemble, disassemble, format_program, mov64_imm, prog_tag, program_digest, resolve
from kestrel_raw.asm.digest import stable_bytes
from kestrel_raw.audit import PinError, PinFile
from kestrel_raw.audit.readback import check_program
from kestrel_raw.collector import KestrelCollector
from kestrel_raw.collector import load as load_module
from kestrel_raw.config import CollectorConfig
from kestrel_raw.kernel import bpf
from kestrel_raw.programs.builder import MAP_SELF_TGID, ProgramBuilder

from helpers import ENV, REPO, Cli

pytestmark = pytest.mark.kernel
# run's default: exec, open, connect, exit, and with context (the default) what keeps the process cache current
ALL = ["kr_exec", "kr_exec_exe", "kr_exec_cwd", "kr_execve_e", "kr_execveat_e", "kr_execve_x", "kr_execveat_x",
       "kr_openat_e", "kr_openat2_e", "kr_openat", "kr_openat2", "kr_open_fin", "kr_connect_e", "kr_connect",
       "kr_exit", "kr_fork_exe", "kr_fork_cwd", "kr_fork", "kr_proc_cwd", "kr_chdir", "kr_fchdir", "kr_chroot",
       "kr_unshare", "kr_setns", "kr_sethostname"]
# reached by tail call (not attached): they run after the attached program's own-tgid check
TAILS = {"kr_exec_exe", "kr_exec_cwd", "kr_open_fin", "kr_fork_exe", "kr_fork_cwd", "kr_proc_cwd"}


def kestrel_raw(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "kestrel_raw", *args], capture_output=True, text=True, env=ENV,
                          cwd=REPO, timeout=120)
    if check and proc.returncode != 0:
        wrong = [ln for ln in proc.stdout.splitlines() if "problem" in ln or "unexplained" in ln or "NOT" in ln]
        raise AssertionError(f"kestrel-raw {' '.join(args)}: exit {proc.returncode}: {proc.stderr}\n"
                             + "\n".join(wrong[:40]))
    return proc


@pytest.fixture
def recorded(monkeypatch):
    """(name, bytes) of every BPF_PROG_LOAD, in order."""
    seen: list[tuple[str, bytes]] = []
    real = bpf.prog_load

    def recording(prog_type, insns, *args, **kwargs):
        seen.append((kwargs.get("name", ""), bytes(insns)))
        return real(prog_type, insns, *args, **kwargs)

    monkeypatch.setattr(bpf, "prog_load", recording)
    return seen


def load_collector(config: CollectorConfig) -> KestrelCollector:
    send, _recv = trio.open_memory_channel(1)
    collector = KestrelCollector(send, config)
    collector.load()
    return collector


def test_disasm_of_every_program_is_what_run_loads(recorded) -> None:
    shown = json.loads(kestrel_raw("disasm", "--format", "json", "--buffers", "3").stdout)
    text = kestrel_raw("disasm", "--buffers", "3").stdout
    collector = load_collector(CollectorConfig(buffers=3))
    try:
        digests = collector.program_digests()
    finally:
        collector.stop()
    assert [p["name"] for p in shown["programs"]] == [name for name, _ in recorded] == ALL
    size = CollectorConfig().buffer_size  # run's defaults
    assert shown["options"] == {"events": "exec,open,connect,exit", "buffers": 3, "buffer_size": size,
                                "wakeup_bytes": size // 8, "latency": "batch", "context": True, "threads": False}
    for program, (name, code) in zip(shown["programs"], recorded):
        # The instructions shown, byte for byte, are the ones loaded (map fds, which change each run, as 0).
        assert bytes.fromhex("".join(i["bytes"] for i in program["insns"])) == stable_bytes(code), name
        assert [i["text"] for i in program["insns"] if "map" not in i] == [
            str(i) for i in disassemble(code) if not (i.opcode == 0x18 and i.src in (1, 2))], name
        assert program["sha256"] == program_digest(code).sha256 == digests[name]["sha256"], name
        assert program["tag"] == prog_tag(code).hex() == digests[name]["tag"], name
        # The text listing has the same instruction lines (map loads by name), each program headed by its
        # digests, every layout constant of the listing with its provenance.
        section = text.split(f"; {name}: ", 1)[1].split("\n\n", 1)[0]
        assert f"; sha256 {program['sha256']}\n; tag {program['tag']}\n" in section
        lines = [ln for ln in section.splitlines() if ln[:1] == " "]
        assert [ln.split(")", 1)[1].split("  ;", 1)[0].strip() for ln in lines] == [i["text"] for i in program["insns"]]
    assert "; btf task_struct.real_parent (type id " in text
    assert "; tracefs sched:sched_process_exec filename" in text
    assert "; btf pt_regs." in text


def test_annotations_change_no_byte(monkeypatch) -> None:
    config = CollectorConfig()
    specs = programs.specs([int(t) for t in config.event_types])
    annotated = load_module.build_programs(config, specs)
    monkeypatch.setattr(ProgramBuilder, "annotate", False)
    plain = load_module.build_programs(config, specs, annotate=False)
    fds = {name: 3 + i for i, name in enumerate(sorted({i.map_name for _, insns in annotated
                                                          for i in resolve(insns, resolve_maps=False) if i.map_name}))}
    for (spec, a), (_, p) in zip(annotated, plain):
        assert assemble(a, fds) == assemble(p, fds), spec.name
        assert "; " in format_program(a) and "; " not in format_program(p), spec.name


def test_a_pin_file_accepts_the_programs_and_refuses_one_changed_by_one_instruction(tmp_path, monkeypatch,
                                                                                     recorded) -> None:
    pins = tmp_path / "pins.txt"
    kestrel_raw("disasm", "--events", "open,exit", "--no-context", "--pin-file", str(pins))
    approved = PinFile.load(str(pins))
    assert sorted(approved.digests) == ["kr_exit", "kr_open_fin", "kr_openat", "kr_openat2", "kr_openat2_e",
                                        "kr_openat_e"]
    collector = load_collector(CollectorConfig(event_types=("open", "exit"), context=False, pin=approved))
    collector.stop()
    assert len(recorded) == 6
    # kr_exit with its last "r0 = 0" made "r0 = 1": refused by name, before anything is loaded.
    recorded.clear()
    real = programs.build

    def changed(spec, *args, **kwargs):
        insns = real(spec, *args, **kwargs)
        if spec.name == "kr_exit":
            insns[len(insns) - 1 - insns[::-1].index(mov64_imm(R0, 0))] = mov64_imm(R0, 1)
        return insns

    monkeypatch.setattr(programs, "build", changed)
    with pytest.raises(PinError) as info:
        load_collector(CollectorConfig(event_types=("open", "exit"), context=False, pin=approved))
    assert str(info.value).startswith("program kr_exit has sha256 ")
    assert str(info.value).endswith(f", which the pin file {pins} does not approve (1 digest listed for it): "
                                    f"nothing loaded; `kestrel-raw disasm` shows the program")
    assert recorded == []


def test_run_with_a_pin_file(tmp_path) -> None:
    pins = tmp_path / "pins.txt"
    kestrel_raw("disasm", "--events", "exit", "--no-context", "--pin-file", str(pins))
    assert kestrel_raw("run", "--events", "exit", "--no-context", "--pin", str(pins), "--duration", "0.5", "--output",
                       str(tmp_path / "out")).returncode == 0
    text = pins.read_text()
    name, digest = text.splitlines()[-1].split()
    pins.write_text(text.replace(digest, digest[:-1] + ("0" if digest[-1] != "0" else "1")))
    refused = kestrel_raw("run", "--events", "exit", "--no-context", "--pin", str(pins), "--duration", "0.5", check=False)
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        f"kestrel-raw: program kr_exit has sha256 {digest}, which the pin file {pins} does not approve (1 digest "
        f"listed for it): nothing loaded; `kestrel-raw disasm` shows the program"]


def test_run_verify_and_verifier_log(tmp_path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    done = kestrel_raw("run", "--events", "exit", "--no-context", "--verify", "--verifier-log", "2", str(logs), "--duration", "0.5",
                       "--output", str(tmp_path / "out"))
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("kestrel-raw: verify: ")]
    assert len(lines) == 1 and lines[0].startswith("kestrel-raw: verify: kr_exit: verified (id "), done.stderr
    log = (logs / "kr_exit.log").read_text()
    # Level 2: the state after every instruction, and the verifier's closing statistics.
    assert "(85) call bpf_get_current_pid_tgid#14" in log and "R10=fp0" in log
    assert "processed " in log.splitlines()[-1] or "processed " in log


def test_verify_names_the_kernels_rewrites_of_a_running_collector(tmp_path) -> None:
    c = Cli(tmp_path)
    try:
        c.wait_attached()
        report = json.loads(kestrel_raw("verify", "--pid", str(c.proc.pid), "--format", "json").stdout)
        text = kestrel_raw("verify", "--pid", str(c.proc.pid)).stdout
    finally:
        c.stop()
    assert report["ok"] and len(report["collectors"]) == 1
    collector = report["collectors"][0]
    assert collector["problems"] == []
    checked = collector["programs"]
    assert [p["name"] for p in checked] == ALL and all(p["ok"] and p["tag"] == p["expected_tag"] for p in checked)
    for p in checked:
        kinds = {r["kind"] for r in p["rewrites"]}
        assert {"map", "call"} <= kinds, p["name"]
        assert sorted(p["maps"].values()) == sorted({r["text"].rsplit("(map ", 1)[1][:-1] for r in p["rewrites"]
                                                     if r["kind"] == "map"}), p["name"]
        # Every attached program reads the collector's own tgid from its map (the tail-called ones are not
        # attached: they run only from the programs that call them, after their check).
        assert ("self_tgid" in p["maps"].values()) == (p["name"] not in TAILS), p["name"]
    rewrites = [r["text"] for p in checked for r in p["rewrites"]]
    # Helper calls resolved to their functions, a hash lookup sent to the map's own function, array lookups
    # inlined: what the kernel does to these programs on every kernel kestrel-raw supports.
    assert any("resolved to the address of its function, bpf_get_current_pid_tgid" in t for t in rewrites)
    assert any("of map kr_filter -> call __htab_map_lookup_elem" in t for t in rewrites)
    assert any("of map rings -> inlined" in t for t in rewrites)
    assert "; every program verified" in text and "kr_openat: verified (id " in text


def test_verify_refuses_a_program_that_is_not_the_one_meant() -> None:
    collector = load_collector(CollectorConfig(event_types=("exit",), context=False))
    try:
        [(spec, prog)] = collector._programs
        [(_, insns)] = collector._listing
        names = {m.fileno(): n for n, m in collector._maps.items()}
        assert check_program(spec.name, prog.code, prog.fileno(), fd_names=names).ok
        other = list(insns)
        other[len(other) - 1 - other[::-1].index(mov64_imm(R0, 0))] = mov64_imm(R0, 1)
        result = check_program(spec.name, other, prog.fileno())
        assert not result.ok
        assert result.problems[0].startswith(f"the kernel's tag {prog.info().tag.hex()} is not the tag ")
        assert any("r0 = 1" in p and "no rewrite the kernel makes explains it" in p for p in result.problems)
    finally:
        collector.stop()


def test_the_own_tgid_is_in_a_frozen_map_nobody_can_change() -> None:
    collector = load_collector(CollectorConfig(event_types=("exit",)))
    try:
        m = collector._maps[MAP_SELF_TGID]
        assert int.from_bytes(m[0], "little") == os.getpid()
        with open(f"/proc/self/fdinfo/{m.fileno()}") as f:
            assert "frozen:\t1\n" in f.read()
        with pytest.raises(Exception) as info:
            m[0] = (1).to_bytes(4, "little")
        assert info.value.errno == 1  # EPERM: frozen
    finally:
        collector.stop()
