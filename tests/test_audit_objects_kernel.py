"""A BPF object's programs through the audit commands, on the running kernel: ``disasm --object`` lists the
bytes ``run --object`` loads, ``verify --load --object`` reads each program back and names every rewrite
(bpf-to-bpf calls, dead code, global data, CO-RE, externs), ``verify`` checks a running collector's copies,
and a pin file written by ``disasm --object --pin-file`` gates ``run --pin --object``.

The objects are tests/bpf_src/*.c (clang-built here, or the ones tools/kmx-tests.sh ships to the guests);
kprobes.c is left out: its kprobe and fentry programs load on no kernel of this host's kind (no kprobes,
trampolines refused), and tests/test_bpf_object_load.py checks that refusal.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import trio

from kestrel_raw.asm.digest import sha256, stable_bytes
from kestrel_raw.collector import KestrelCollector
from kestrel_raw.config import CollectorConfig
from kestrel_raw.kernel import bpf
from tests.helpers import ENV, REPO, Cli, bpf_object

pytestmark = pytest.mark.kernel

LOADABLE = ("core_task.c", "global_data.c", "subprog.c", "seed.c", "probes.c")
SEED = ["trace_execve", "trace_openat", "trace_connect"]


def kestrel_raw(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "kestrel_raw", *args], capture_output=True, text=True, env=ENV,
                          cwd=REPO, timeout=180)
    if check and proc.returncode != 0:
        raise AssertionError(f"kestrel-raw {' '.join(args)}: exit {proc.returncode}: {proc.stderr}\n{proc.stdout}")
    return proc


def loaded_by_run(path, monkeypatch) -> dict[str, bytes]:
    """name -> the bytes BPF_PROG_LOAD got for each program when the collector loads ``path`` (run --object)."""
    seen: dict[str, bytes] = {}
    real = bpf.prog_load

    def recording(prog_type, insns, *args, **kwargs):
        seen[kwargs.get("name", "")] = bytes(insns)
        return real(prog_type, insns, *args, **kwargs)

    monkeypatch.setattr(bpf, "prog_load", recording)
    send, _recv = trio.open_memory_channel(1)
    collector = KestrelCollector(send, CollectorConfig(program_path=str(path), event_types=()))
    collector.load()
    collector.stop()
    return seen


@pytest.mark.parametrize("source", LOADABLE)
def test_disasm_object_lists_the_bytes_run_loads(source, tmp_path, monkeypatch):
    path = bpf_object(source, tmp_path)
    doc = json.loads(kestrel_raw("disasm", "--object", str(path), "--format", "json").stdout)
    listed = {p["name"][:15]: p for p in doc["programs"]}
    loaded = loaded_by_run(path, monkeypatch)
    assert set(listed) == set(loaded), source
    for name, code in loaded.items():
        p = listed[name]
        # the same bytes but the map fds: the digest, and every instruction's bytes once the fds are zeroed
        assert p["sha256"] == sha256(code), (source, name)
        assert bytes.fromhex("".join(i["bytes"] for i in p["insns"])) == stable_bytes(code), name
        for i in p["insns"]:
            if "map" in i:
                assert i["text"].startswith(f"r{int(i['bytes'][3], 16)} = map[{i['map']}]"), (name, i)


def test_disasm_with_object_and_events_lists_both(tmp_path):
    path = bpf_object("seed.c", tmp_path)
    # --no-context: the exit program alone (with context, the process cache's programs come too)
    text = kestrel_raw("disasm", "--events", "exit", "--no-context", "--object", str(path)).stdout
    heads = [ln.split(":")[0][2:] for ln in text.splitlines() if ln.startswith("; ") and ": tracepoint " in ln]
    assert heads == ["kr_exit", *SEED]
    assert text.splitlines()[0].endswith(f"--latency batch --no-context --no-threads --object {path}` loads them")


@pytest.mark.parametrize("source", LOADABLE)
def test_verify_load_object_verifies_every_program(source, tmp_path):
    path = bpf_object(source, tmp_path)
    done = kestrel_raw("verify", "--load", "--object", str(path), "--format", "json")
    report = json.loads(done.stdout)
    assert report["ok"], done.stdout
    [here] = report["collectors"]
    assert here["problems"] == [] and here["options"] == {"object": str(path)}
    names = [p["name"] for p in here["programs"]]
    listed = [p["name"] for p in json.loads(kestrel_raw("disasm", "--object", str(path), "--format",
                                                         "json").stdout)["programs"]]
    assert names == listed and names, source
    for p in here["programs"]:
        assert p["ok"] and p["tag"] == p["expected_tag"] and not p["problems"], (source, p)
    assert kestrel_raw("verify", "--load", "--object", str(path)).stdout.splitlines()[-1] == "; every program verified"


def test_verify_load_object_names_the_subprogram_calls_it_moved(tmp_path):
    path = bpf_object("subprog.c", tmp_path)
    listing = kestrel_raw("disasm", "--object", str(path)).stdout.split("\n\n")
    first = next(block for block in listing if block.startswith("; first: "))
    # first(): calls record() (call pc+1 at slot 3), which calls mix() (call pc+3 at slot 16)
    assert "   3: (85) call pc+1\n   4: (95) exit\n; subprogram record\n   5: " in first
    assert "  16: (85) call pc+3\n" in first and "; subprogram mix\n  20: " in first
    report = json.loads(kestrel_raw("verify", "--load", "--object", str(path), "--format", "json").stdout)
    rewrites = {p["name"]: p["rewrites"] for p in report["collectors"][0]["programs"]}
    # third() calls a subprogram past code the verifier proved dead: the call lands on the same function
    moved = [r for r in rewrites["third"] if r["kind"] == "jump" and r["text"].startswith("call pc+")]
    assert moved and all("(same target, " in r["text"] for r in moved)
    assert any(r["kind"] == "removed" for r in rewrites["third"])


def _wait_attached(cli: Cli, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while "attached" not in cli.stderr():
        if cli.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"collector did not attach (rc {cli.proc.poll()}): {cli.stderr()}")
        time.sleep(0.05)


def test_verify_checks_a_running_collectors_object_programs(tmp_path):
    seed = bpf_object("seed.c", tmp_path)
    only_object = Cli(tmp_path, "--object", str(seed), name="object")
    both = Cli(tmp_path, "--object", str(seed), "--events", "exit", "--no-context", name="both")
    try:
        _wait_attached(only_object)
        _wait_attached(both)
        for c, builtin in ((only_object, []), (both, ["kr_exit"])):
            report = json.loads(kestrel_raw("verify", "--pid", str(c.proc.pid), "--object", str(seed),
                                            "--format", "json").stdout)
            assert report["ok"], report
            [checked] = report["collectors"]
            assert checked["problems"] == []
            assert [p["name"] for p in checked["programs"]] == builtin + SEED
            assert all(p["ok"] and p["tag"] == p["expected_tag"] for p in checked["programs"])
            assert sorted(checked["programs"][-1]["maps"].values()) == [".rodata", "events"]
        # without --object its programs are listed, not compared: not verified
        told = kestrel_raw("verify", "--pid", str(only_object.proc.pid), check=False)
        assert told.returncode == 1
        assert [ln for ln in told.stdout.splitlines() if ln.startswith("; problem: ")] == [
            f"; problem: program {name} (id {bpf_id}) is not a built-in program (of the collector's BPF object?): "
            "listed, not compared; give --object FILE, the object the collector runs"
            for name, bpf_id in _ids(told.stdout)]
        assert len(_ids(told.stdout)) == 3 and told.stdout.splitlines()[-1] == "; NOT VERIFIED"
    finally:
        only_object.stop()
        both.stop()


def _ids(text: str) -> list[tuple[str, str]]:
    out = []
    for ln in text.splitlines():
        if ln.startswith("; problem: program "):
            words = ln.split()
            out.append((words[3], words[5].rstrip(")")))
    return out


def test_a_pin_file_from_disasm_gates_run_object(tmp_path):
    seed = bpf_object("seed.c", tmp_path)
    pins = tmp_path / "pins.txt"
    kestrel_raw("disasm", "--object", str(seed), "--pin-file", str(pins))
    assert kestrel_raw("run", "--object", str(seed), "--pin", str(pins), "--duration", "0.5", "--output",
                       str(tmp_path / "out")).returncode == 0
    text = pins.read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("trace_openat "))
    pins.write_text(text.replace(line + "\n", ""))
    refused = kestrel_raw("run", "--object", str(seed), "--pin", str(pins), "--duration", "0.5", check=False)
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        f"kestrel-raw: program trace_openat (sha256 {line.split()[1]}) is not in the pin file {pins}: nothing "
        "loaded; `kestrel-raw disasm` shows the program"]


def test_run_verify_checks_the_objects_programs(tmp_path):
    path = bpf_object("subprog.c", tmp_path)
    done = kestrel_raw("run", "--object", str(path), "--verify", "--duration", "0.5", "--output",
                       str(tmp_path / "out"))
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("kestrel-raw: verify: ")]
    assert [ln.split()[2] for ln in lines] == ["first:", "second:", "third:"], done.stderr
    assert all(ln.split()[3] == "verified" for ln in lines), done.stderr


def test_run_verify_checks_assembled_programs_too():
    """``run --verify`` on a collector with your own assembled programs (CollectorConfig.asm_object): each
    checked against its instructions, its map loads by name."""
    from kestrel_raw.asm import (
        BPF_ADD, BPF_DW, R0, R1, R2, R10, alu64_imm, call, exit_insn, ld_map_fd, mov64_imm, mov64_reg, stx_mem,
    )
    from kestrel_raw.cli.shaping import check_loaded
    from kestrel_raw.probes.user import AsmMap, AsmObject, AsmProgram

    insns = (mov64_imm(R0, 0), stx_mem(BPF_DW, R10, R0, -8), ld_map_fd(R1, "counts"), mov64_reg(R2, R10),
             alu64_imm(BPF_ADD, R2, -8), call("map_lookup_elem"), mov64_imm(R0, 0), exit_insn())
    obj = AsmObject("mine", [AsmProgram("mine_getpid", insns, "tracepoint/syscalls/sys_enter_getpid")],
                    maps={"counts": AsmMap("hash", 8, 8, 16)})
    send, _recv = trio.open_memory_channel(1)
    collector = KestrelCollector(send, CollectorConfig(asm_object=obj, event_types=()))
    collector.load()
    try:
        [check] = check_loaded(collector)
    finally:
        collector.stop()
    assert check.name == "mine_getpid" and check.ok, check.text()
    assert list(check.maps.values()) == ["counts"]
