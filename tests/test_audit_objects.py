"""A BPF object's programs as ``disasm`` lists them (kestrel_raw/audit/objects.py): the object written byte by
byte in tests/helpers.py (``hand_object``: a legacy map load, a global-data load at an offset, a bpf-to-bpf
call), each line pinned; then ``kestrel-raw disasm --object`` on the seed (tests/bpf_src/seed.c, clang-built)
linked against Debian 6.1's BTF (tests/data/btf), which needs no privilege, its CO-RE relocations listed.
No kernel needed: the kernel tests are in tests/test_audit_objects_kernel.py.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys

import pytest

from kestrel_raw.asm import opcode as op
from kestrel_raw.asm import tag_hash_for
from kestrel_raw.audit.objects import attach_point, listing_json, listing_text, named_instructions, pin_digests
from kestrel_raw.bpfobj import BpfObject, MapRef
from kestrel_raw.btf import BTF
from kestrel_raw.errors import BpfObjectError
from kestrel_raw.loader import object_programs
from tests.helpers import ENV, REPO, TESTS, bpf_insn, bpf_object, hand_object

DEBIAN_61_BTF = TESTS / "data" / "btf" / "debian-6.1.0-57-cloud-amd64.min.btf"

# hand_object()'s program as linked: r1 = map[hmap] (fd 0); r2 = map[.data][0]+4; call pc+1; exit; sub
LINKED = (bpf_insn(op.LD_IMM64, 1, op.BPF_PSEUDO_MAP_FD) + bpf_insn(0)
          + bpf_insn(op.LD_IMM64, 2, op.BPF_PSEUDO_MAP_VALUE) + bpf_insn(0, imm=4)
          + bpf_insn(op.BPF_JMP | op.BPF_CALL, 0, op.BPF_PSEUDO_CALL, 0, 1)
          + bpf_insn(op.BPF_JMP | op.BPF_EXIT)
          + bpf_insn(op.BPF_ALU64 | op.BPF_MOV | op.BPF_K) + bpf_insn(op.BPF_JMP | op.BPF_EXIT))


def hand_program():
    [prog] = object_programs(BpfObject(hand_object(), "hand.o"))
    assert prog.insns == LINKED
    return prog


def digests_of_linked() -> tuple[str, str]:
    """The SHA-256 (fds zeroed: they are 0 already) and the kernel's tag (both halves of each map load's imm
    zeroed: the .data load's offset 4 too) of LINKED, computed here from the bytes."""
    tag_input = bytearray(LINKED)
    tag_input[28:32] = bytes(4)
    tag = hashlib.new(tag_hash_for(os.uname().release), bytes(tag_input)).hexdigest()[:16]
    return hashlib.sha256(LINKED).hexdigest(), tag


def test_listing_of_a_hand_made_object_names_its_maps():
    sha, tag = digests_of_linked()
    assert listing_text(hand_program(), "hand").splitlines() == [
        '; prog: tracepoint syscalls:sys_enter_getpid, SEC("tp/syscalls/sys_enter_getpid") (BPF object hand)',
        f"; sha256 {sha}",
        f"; tag {tag}",
        "; maps: hmap, .data",
        "   0: (18) r1 = map[hmap]",
        "   2: (18) r2 = map[.data][0]+4",
        "   4: (85) call pc+1",
        "   5: (95) exit",
        "   6: (b7) r0 = 0",
        "   7: (95) exit",
    ]


def test_each_subprogram_is_headed_by_its_name():
    # clang's objects carry func info (tests/test_audit_objects_kernel.py lists subprog.c's); this one is
    # given its functions by hand: prog at slot 0, sub appended at slot 6.
    prog = dataclasses.replace(hand_program(), functions=(("prog", 0), ("sub", 6)))
    lines = listing_text(prog, "hand").splitlines()
    assert lines[4:] == [
        "   0: (18) r1 = map[hmap]",
        "   2: (18) r2 = map[.data][0]+4",
        "   4: (85) call pc+1",
        "   5: (95) exit",
        "; subprogram sub",
        "   6: (b7) r0 = 0",
        "   7: (95) exit",
    ]
    assert [i["comments"] for i in listing_json(prog, "hand")["insns"]] == [[], [], [], [], ["subprogram sub"], []]


def test_json_listing_keeps_the_bytes_loaded_with_fd_0():
    sha, tag = digests_of_linked()
    doc = listing_json(hand_program(), "hand")
    assert {k: v for k, v in doc.items() if k != "insns"} == {
        "name": "prog", "object": "hand", "section": "tp/syscalls/sys_enter_getpid",
        "attach": 'tracepoint syscalls:sys_enter_getpid, SEC("tp/syscalls/sys_enter_getpid")', "sha256": sha,
        "tag": tag, "maps": ["hmap", ".data"], "core": []}
    assert [(i["index"], i["bytes"], i["text"], i.get("map")) for i in doc["insns"]] == [
        (0, LINKED[0:16].hex(), "r1 = map[hmap]", "hmap"),
        (2, LINKED[16:32].hex(), "r2 = map[.data][0]+4", ".data"),
        (4, LINKED[32:40].hex(), "call pc+1", None),
        (5, LINKED[40:48].hex(), "exit", None),
        (6, LINKED[48:56].hex(), "r0 = 0", None),
        (7, LINKED[56:64].hex(), "exit", None),
    ]


def test_a_map_reference_that_names_no_map_load_is_refused():
    prog = hand_program()
    with pytest.raises(BpfObjectError, match=r"program 'prog' slot 4: call pc\+1 is not the load of map 'hmap' its "
                                             r"relocation names"):
        named_instructions(dataclasses.replace(prog, map_refs=(MapRef(4, "hmap", op.BPF_PSEUDO_MAP_FD),)))
    with pytest.raises(BpfObjectError, match=r"program 'prog': map references at slots \[1\] fall inside an "
                                             r"instruction"):
        named_instructions(dataclasses.replace(prog, map_refs=(MapRef(1, "hmap", op.BPF_PSEUDO_MAP_FD),)))


def test_where_each_section_attaches():
    prog = hand_program()

    def at(kind, target, section):
        return attach_point(dataclasses.replace(prog, kind=kind, target=target, section=section))

    assert at("uprobe", "libc.so.6:getpid", "uprobe/libc.so.6:getpid") == (
        'uprobe libc.so.6:getpid, SEC("uprobe/libc.so.6:getpid")')
    assert at("tp_btf", "sched_process_exit", "tp_btf/sched_process_exit") == (
        'tp_btf sched_process_exit, SEC("tp_btf/sched_process_exit")')
    assert at("uretprobe", "", "uretprobe") == (
        'uretprobe, no target in its section: not attached by run, SEC("uretprobe")')


def test_pin_names_are_the_kernels():
    prog = hand_program()
    long = dataclasses.replace(prog, name="a_rather_long_program_name")
    sha = hashlib.sha256(LINKED).hexdigest()
    assert pin_digests([long]) == {"a_rather_long_p": sha}
    with pytest.raises(BpfObjectError, match="two programs of the object are named 'a_rather_long_p' by the kernel"):
        pin_digests([long, dataclasses.replace(prog, name="a_rather_long_program_too")])


def test_disasm_object_lists_the_core_relocations_for_the_btf_given(tmp_path):
    """``disasm --object`` with --btf: no tracefs and no kernel read, so no privilege; the seed's CO-RE
    reads patched to Debian 6.1's offsets (task_struct.real_parent at 2432, tgid at 2420)."""
    seed = bpf_object("seed.c", tmp_path)
    pins = tmp_path / "pins"
    run = subprocess.run([sys.executable, "-m", "kestrel_raw", "disasm", "--object", str(seed), "--btf",
                          str(DEBIAN_61_BTF), "--pin-file", str(pins)], capture_output=True, text=True, env=ENV,
                         cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == (f"; kestrel-raw disasm: 3 programs for Linux {os.uname().release} {os.uname().machine} "
                        f"(BTF {DEBIAN_61_BTF}), as `kestrel-raw run --object {seed}` loads them")
    progs = {p.name: p for p in object_programs(str(seed), BTF.load(str(DEBIAN_61_BTF)))}
    first = lines.index('; trace_execve: tracepoint syscalls:sys_enter_execve, '
                        'SEC("tracepoint/syscalls/sys_enter_execve") (BPF object seed)')
    assert lines[first + 3:first + 6] == [
        "; maps: events, .rodata",
        "; CO-RE prog 'trace_execve': relo #0: patched insn #32 (ALU/ALU64) imm 8 -> 2432: <byte_off> [18] struct "
        "task_struct.real_parent (0:1 @ offset 8) -> <byte_off> [8] struct task_struct.real_parent (0:8 @ offset 2432)",
        "; CO-RE prog 'trace_execve': relo #1: patched insn #39 (ALU/ALU64) imm 0 -> 2420: <byte_off> [18] struct "
        "task_struct.tgid (0:0 @ offset 0) -> <byte_off> [8] struct task_struct.tgid (0:7 @ offset 2420)",
    ]
    execve = lines[first + 6:lines.index("", first)]      # its instructions, up to the blank line
    for line in ("   1: (18) r1 = map[events]", "  23: (18) r2 = map[.rodata][0]+0",
                 "  32: (b7) r1 = 2432", "  39: (b7) r1 = 2420"):      # the map loads, the patched offsets
        assert line in execve
    # the pin file approves the three programs by name, with the digests listed
    approved = [ln.split() for ln in pins.read_text().splitlines() if ln and not ln.startswith("#")]
    listed = {ln.split()[1][:-1]: ln for ln in lines if ln.startswith("; trace_")}
    assert [a[0] for a in approved] == ["trace_execve", "trace_openat", "trace_connect"] == list(listed)
    for name, sha in approved:
        assert f"; sha256 {sha}" == lines[lines.index(listed[name]) + 1]
        assert sha == hashlib.sha256(progs[name].insns).hexdigest()
    doc = json.loads(subprocess.run([sys.executable, "-m", "kestrel_raw", "disasm", "--object", str(seed), "--btf",
                                     str(DEBIAN_61_BTF), "--format", "json"], capture_output=True, text=True,
                                    env=ENV, cwd=REPO, timeout=120, check=True).stdout)
    assert doc["options"] == {"object": str(seed)}
    assert [(p["name"], p["object"], p["sha256"]) for p in doc["programs"]] == [(n, "seed", s) for n, s in approved]
    assert doc["programs"][0]["core"] == [ln[len("; CO-RE "):] for ln in lines[first + 4:first + 6]]
