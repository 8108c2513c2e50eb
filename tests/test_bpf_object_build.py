"""BPF objects compiled here from tests/bpf_src/*.c with clang (-target bpf -g -O2), read and linked by
kestrel_raw.bpfobj: programs, maps, global data, subprogram calls, CO-RE against this host's BTF and against
Debian 6.1's (tests/data/btf), and the seed's shape.  Then the same objects through libbpf itself
(tests/bpf_src/libbpf_reference.c): every program's final instructions must equal libbpf's byte for byte,
and every CO-RE patch must be the one libbpf logs.

Without clang (or libbpf-dev) these tests skip; under CI (which installs them) a skip is a failure.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from kestrel_raw.asm import opcode as op
from kestrel_raw.bpfobj import BpfObject, MapRef
from kestrel_raw.btf import BTF, VMLINUX_BTF
from kestrel_raw.errors import BpfObjectError, CoreRelocationError
from kestrel_raw.kernel.uapi import (
    BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, BPF_F_RDONLY_PROG, BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_HASH,
    BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_RINGBUF,
)
from tests.helpers import TESTS, build_libbpf_reference, compile_bpf, libbpf_fds, run_libbpf

DEBIAN_61_BTF = TESTS / "data" / "btf" / "debian-6.1.0-57-cloud-amd64.min.btf"
DEBIAN_612_BTF = TESTS / "data" / "btf" / "debian-6.12.118-cloud-amd64.min.btf"
INSN = struct.Struct("<BBhi")
TP = "tracepoint/syscalls/sys_enter_getppid"


@pytest.fixture(scope="module")
def objs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("bpf")
    built = {name: compile_bpf(f"{name}.c", out) for name in ("core_task", "global_data", "subprog", "maps", "seed")}
    crossdir = out / "libbpf"
    crossdir.mkdir()
    # libbpf 1.x refuses legacy "maps" and would pin into /sys/fs/bpf: its variant of maps.c has neither.
    built["maps_libbpf"] = compile_bpf("maps.c", crossdir, "-DNO_LEGACY_MAPS", "-DNO_PINNING")
    return built


def insn(prog_bytes: bytes, slot: int) -> tuple[int, int, int, int, int]:
    code, regs, off, imm = INSN.unpack_from(prog_bytes, slot * 8)
    return code, regs & 0xF, regs >> 4, off, imm


def host_btf() -> BTF:
    if not os.path.exists(VMLINUX_BTF):
        pytest.skip(f"{VMLINUX_BTF} is absent: this kernel has no BTF")
    return BTF.load()


# --- reading ----------------------------------------------------------------------------------------------

def test_programs_sections_and_subprograms(objs):
    o = BpfObject.load(str(objs["subprog"]))
    assert o.name == "subprog" and o.license == "GPL" and o.kern_version == 0
    assert {n: (p.section, p.kind, p.target) for n, p in o.programs.items()} == {
        "first": (TP, "tracepoint", "syscalls/sys_enter_getppid"),
        "second": ("raw_tracepoint/sys_enter", "raw_tracepoint", "sys_enter"),
        "third": ("tp_btf/sched_process_exit", "tp_btf", "sched_process_exit"),
    }
    assert o.programs["first"].section_kind.tracepoint == ("syscalls", "sys_enter_getppid")
    # .text: record (global) at 0, mix (static) at slot 15, twice (static) at 19, as llvm-objdump shows them
    assert {n: (p.insn_offset, p.slots, p.is_global) for n, p in o.subprograms.items()} == {
        "record": (0, 15, True), "mix": (15, 4, False), "twice": (19, 8, False)}
    m = BpfObject.load(str(objs["maps"]))
    assert m.kern_version == 0x060100 and m.license == "GPL"


def test_btf_and_legacy_maps(objs):
    o = BpfObject.load(str(objs["maps"]))
    got = {n: (m.type, m.key_size, m.value_size, m.max_entries, m.map_flags, m.section, m.offset, m.pinning)
           for n, m in o.maps.items()}
    assert got == {
        "by_key": (BPF_MAP_TYPE_HASH, 8, 24, 1024, BPF_F_NO_PREALLOC, ".maps", 0, 0),
        "counters": (BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 2, 0, ".maps", 40, 1),
        "ring": (BPF_MAP_TYPE_RINGBUF, 0, 0, 1 << 16, 0, ".maps", 80, 0),
        "legacy_hash": (BPF_MAP_TYPE_HASH, 4, 8, 64, 0, "maps", 0, 0),
        "legacy_array": (BPF_MAP_TYPE_ARRAY, 4, 16, 8, 0, "maps", 20, 0),
    }
    # key and value sizes of by_key come from the BTF types struct key and struct value
    btf = o.btf
    assert btf.type_by_id(o.maps["by_key"].key_type_id).name == "key"
    assert btf.type_by_id(o.maps["by_key"].value_type_id).name == "value"
    assert o.maps["counters"].notes == ("pinning 1 ignored: kestrel-raw creates every map afresh and pins nothing",)
    linked = o.link()["use_maps"]
    assert linked.maps_used == ("by_key", "counters", "legacy_hash", "legacy_array", "ring")
    for ref in linked.map_refs:
        code, dst, src, off, imm = insn(linked.insns, ref.insn)
        assert (code, src, imm, ref.pseudo) == (op.LD_IMM64, op.BPF_PSEUDO_MAP_FD, 0, op.BPF_PSEUDO_MAP_FD)


def test_global_data(objs):
    o = BpfObject.load(str(objs["global_data"]))
    rodata, data, bss = o.maps[".rodata"], o.maps[".data"], o.maps[".bss"]
    assert (rodata.kernel_name, data.kernel_name, bss.kernel_name) == ("global_d.rodata", "global_d.data",
                                                                       "global_d.bss")
    assert (rodata.type, rodata.key_size, rodata.max_entries) == (BPF_MAP_TYPE_ARRAY, 4, 1)
    assert rodata.map_flags == BPF_F_MMAPABLE | BPF_F_RDONLY_PROG and rodata.frozen
    assert data.map_flags == BPF_F_MMAPABLE and not data.frozen
    # .data: calls = 7 at 0, last_seen = {1, 2, 3, 4} at 8
    assert data.initial == struct.pack("<5Q", 7, 1, 2, 3, 4)
    # .rodata: target_tgid = 0 at 0, scale = 3 at 8, bpf_printk's format string at 16
    assert rodata.initial == struct.pack("<IIQ", 0, 0, 3) + b"getpid from %u\0"
    # .bss: hits (8), zeros (32), internal_counter (4): all zero, 44 bytes
    assert bss.initial == bytes(44) and bss.value_size == 44
    p = o.link()["count_getpid"]
    refs = [(r.map, r.offset) for r in p.map_refs]
    # every variable is reached through its section's map at its own offset; internal_counter, a static,
    # through the .bss section symbol with the offset (40) in the instruction's imm
    assert sorted(refs) == sorted([(".rodata", 0), (".data", 0), (".bss", 8), (".rodata", 8), (".bss", 40),
                                   (".bss", 0), (".data", 8), (".rodata", 16), (".rodata.str1.1", 0)])
    # the string literal's section is a map too, named by its section alone (libbpf's rule for a second dot)
    strs = o.maps[".rodata.str1.1"]
    assert (strs.kernel_name, strs.initial, strs.frozen) == (".rodata.str1.1", b"tgid %u\n\0", True)
    for ref in p.map_refs:
        code, dst, src, off, imm = insn(p.insns, ref.insn)
        assert (code, src, imm) == (op.LD_IMM64, op.BPF_PSEUDO_MAP_VALUE, 0)
        assert insn(p.insns, ref.insn + 1)[4] == ref.offset     # the value offset in the second half


def _calls(prog: bytes) -> list[tuple[int, int]]:
    """(slot, target slot) of every bpf-to-bpf call."""
    out = []
    for slot in range(len(prog) // 8):
        code, dst, src, off, imm = insn(prog, slot)
        if code == op.BPF_JMP | op.BPF_CALL and src == op.BPF_PSEUDO_CALL:
            out.append((slot, slot + imm + 1))
    return out


def test_subprogram_calls_are_appended_and_fixed(objs):
    o = BpfObject.load(str(objs["subprog"]))
    linked = o.link()
    sub = o.subprograms
    # first: 5 own slots, then record (15) appended at 5, then mix (4) at 20, which record calls
    first = linked["first"]
    assert first.subprograms == ("record", "mix")
    assert len(first.insns) // 8 == 5 + 15 + 4
    assert first.insns[5 * 8:20 * 8] != sub["record"].insns            # its call to mix was fixed...
    assert first.insns[20 * 8:] == sub["mix"].insns                     # ...mix has no calls: unchanged
    assert _calls(first.insns) == [(3, 5), (5 + 11, 20)]
    # second calls twice first (appended at 7), twice calls mix (at 15), then record (at 19)
    second = linked["second"]
    assert second.subprograms == ("twice", "mix", "record")
    assert _calls(second.insns) == [(2, 7), (5, 19), (7 + 1, 15), (7 + 5, 15), (19 + 11, 15)]
    # record's map reference moved with it
    assert second.map_refs == (MapRef(19 + 4, "results", op.BPF_PSEUDO_MAP_FD),)
    assert linked["third"].subprograms == ("twice", "mix")
    # func info: one record per function, at its place in the linked program, named by the BTF
    names = [(f.insn, o.btf.type_by_id(f.type_id).name) for f in second.func_info]
    assert names == [(0, "second"), (7, "twice"), (15, "mix"), (19, "record")]
    assert all(0 <= li.insn < len(second.insns) // 8 for li in second.line_info)
    assert [li.insn for li in second.line_info] == sorted(li.insn for li in second.line_info)


# --- CO-RE ----------------------------------------------------------------------------------------------

# core_read_task's relocations, in order: (slot, what the patched value is, from the target BTF)
def _expected_core(btf: BTF) -> dict[int, int]:
    task = btf.find("task_struct", "struct")
    m = lambda n: btf.member(task, n)  # noqa: E731
    return {
        10: m("flags").offset, 19: m("prio").offset, 28: m("pid").offset, 37: m("tgid").offset,
        46: m("real_parent").offset, 61: m("mm").offset,
        68: btf.member("mm_struct", "arg_start").offset,            # through mm_struct's anonymous struct
        104: m("__state").offset, 113: m("comm").size, 115: m("exit_code").size,
        117: btf.size_of("mm_struct"), 119: m("comm").offset,
    }


def _patched_values(p) -> dict[int, int]:
    out = {}
    for slot in range(len(p.insns) // 8):
        code, dst, src, off, imm = insn(p.insns, slot)
        out[slot] = imm if op.BPF_CLASS(code) in (op.BPF_ALU, op.BPF_ALU64) else off
    return out


@pytest.mark.parametrize("which", ["host", "debian-6.1", "debian-6.12"])
def test_core_reads_of_task_struct(objs, which):
    saved = {"debian-6.1": DEBIAN_61_BTF, "debian-6.12": DEBIAN_612_BTF}
    btf = host_btf() if which == "host" else BTF.load(str(saved[which]))
    o = BpfObject.load(str(objs["core_task"]))
    p = o.link(btf)["core_read_task"]
    values = _patched_values(p)
    for slot, want in _expected_core(btf).items():
        assert values[slot] == want, slot
    by_slot = {c.insn: c for c in p.core}
    # the bitfield in_execve: a 4-byte load containing it, and the shifts that extract it
    bit = btf.member("task_struct", "in_execve").bit_offset
    assert values[78] == bit // 8 // 4 * 4 and values[83] == 4
    assert values[86] == 64 - (bit + 1 - values[78] * 8) and values[89] == values[91] == 63
    # flavours: task_struct___old.state exists on neither kernel: exists = 0, its read poisoned
    assert values[93] == 0
    assert by_slot[95].poisoned and insn(p.insns, 95)[:1] == (op.BPF_JMP | op.BPF_CALL,)
    assert insn(p.insns, 95)[4] == 195896080
    # type and enum relocations (ld_imm64 or mov): exists, PIDTYPE_PGID, local and kernel type ids
    assert values[121] == 1 and values[126] == 1
    assert insn(p.insns, 131)[4] == btf.enum_value("pid_type", "PIDTYPE_PGID")
    assert insn(p.insns, 136)[4] == o.btf.find("task_struct", "struct").id
    assert insn(p.insns, 139)[4] == btf.find("task_struct", "struct").id
    assert [c.poisoned for c in p.core].count(True) == 1
    assert by_slot[28].local_spec == "<byte_off> [12] struct task_struct.pid (0:2 @ offset 8)"


def test_core_offsets_differ_between_kernels(objs):
    """The point of CO-RE: the same object gets this host's offsets and 6.1's, and they differ."""
    o = BpfObject.load(str(objs["core_task"]))
    here = _patched_values(o.link(host_btf())["core_read_task"])
    there = _patched_values(o.link(BTF.load(str(DEBIAN_61_BTF)))["core_read_task"])
    newer = _patched_values(o.link(BTF.load(str(DEBIAN_612_BTF)))["core_read_task"])
    assert [here[s] != there[s] for s in (28, 46, 61, 68, 119)] == [True] * 5
    assert there[28] == 2416 and there[46] == 2432 and there[68] == 312    # Debian 6.1 amd64, from its BTF
    assert newer[46] == 2448 != there[46]                                  # 6.12: real_parent moved again


def test_unresolvable_relocation_names_object_section_insn_and_access(objs, tmp_path):
    o = BpfObject.load(str(objs["core_task"]))
    # strict: the poisoned __state read of task_struct___old is an error
    with pytest.raises(CoreRelocationError) as e:
        o.link(BTF.load(str(DEBIAN_61_BTF)), strict=True)
    assert str(e.value) == (
        f"{objs['core_task']}: section '{TP}', program 'core_read_task', instruction 95: CO-RE relocation #14 "
        f"(byte_off of struct task_struct___old, access \"0:0\"): <byte_off> [20] struct task_struct___old.state "
        f"(0:0 @ offset 0) has no match in the target BTF ({DEBIAN_61_BTF})")


def test_core_without_the_target_type(objs):
    """A target BTF without task_struct at all: the byte offsets are poisoned, existence is 0."""
    from tests.helpers import BtfBuilder
    b = BtfBuilder()
    b.int("int", 4, signed=True)
    o = BpfObject.load(str(objs["core_task"]))
    p = o.link(BTF.parse(b.build(), "empty"))["core_read_task"]
    by_slot = {c.insn: c for c in p.core}
    assert by_slot[10].poisoned and by_slot[10].target_spec is None
    assert _patched_values(p)[121] == 0 and _patched_values(p)[126] == 0      # type_exists, field_exists


# --- the seed's shape -----------------------------------------------------------------------------------

def test_seed_object(objs):
    o = BpfObject.load(str(objs["seed"]))
    assert list(o.programs) == ["trace_execve", "trace_openat", "trace_connect"]
    assert [p.target for p in o.programs.values()] == ["syscalls/sys_enter_execve", "syscalls/sys_enter_openat",
                                                       "syscalls/sys_enter_connect"]
    assert (o.maps["events"].type, o.maps["events"].max_entries) == (BPF_MAP_TYPE_RINGBUF, 1 << 18)
    assert o.maps[".rodata"].initial == bytes(4)                         # self_tgid
    linked = o.link(BTF.load(str(DEBIAN_61_BTF)))
    execve = linked["trace_execve"]
    assert [c.log for c in execve.core] == [
        ("prog 'trace_execve': relo #0: patched insn #32 (ALU/ALU64) imm 8 -> 2432",),
        ("prog 'trace_execve': relo #1: patched insn #39 (ALU/ALU64) imm 0 -> 2420",)]
    assert {r.map for p in linked.values() for r in p.map_refs} == {"events", ".rodata"}


# --- errors on compiled objects -------------------------------------------------------------------------

def test_not_a_bpf_object():
    with pytest.raises(BpfObjectError, match=r"^/bin/true: not a BPF object \(e_type 3, e_machine 62; a BPF "
                                             r"object is ET_REL for EM_BPF 247\)"):
        BpfObject.load("/bin/true")
    with pytest.raises(BpfObjectError, match=r"cannot read BPF object /nonexistent.o: No such file"):
        BpfObject.load("/nonexistent.o")


# --- against libbpf -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def libbpf_ref(tmp_path_factory) -> Path:
    return build_libbpf_reference(tmp_path_factory.mktemp("ref"))


@pytest.mark.crosscheck
@pytest.mark.parametrize("name, btf", [
    ("core_task", None), ("core_task", DEBIAN_61_BTF), ("core_task", DEBIAN_612_BTF), ("global_data", None),
    ("subprog", None), ("maps_libbpf", None), ("seed", None), ("seed", DEBIAN_61_BTF),
])
def test_same_instructions_as_libbpf(objs, libbpf_ref, name, btf):
    ref = run_libbpf(libbpf_ref, objs[name], btf)
    maps, progs, log = ref.maps, ref.progs, ref.core_log
    assert ref.relocated, ref.stderr[-2000:]
    o = BpfObject.load(str(objs[name]))
    linked = o.link(BTF.load(str(btf)) if btf else None)
    assert set(progs) == set(linked)
    fds = libbpf_fds(o, maps)
    for pname, p in linked.items():
        assert p.with_fds(fds) == progs[pname], pname
    # the CO-RE patches, line for line as libbpf logs them (a subprogram's once, as libbpf relocates it once)
    mine = list(dict.fromkeys(line for p in linked.values() for c in p.core for line in c.log))
    assert sorted(mine) == sorted(log)
    if name == "core_task":
        assert len(log) == 26
