"""kestrel_raw.bpfobj on BPF objects written byte by byte here: a small object whose linked bytes are pinned,
then one malformed variant per check, each with the message it must give; the SEC name table; .BTF.ext
records and their validation.  No compiler needed."""
from __future__ import annotations

import struct

import pytest

from kestrel_raw.asm import opcode as op
from kestrel_raw.bpfobj import BpfObject, MapRef, parse_section
from kestrel_raw.bpfobj.maps import internal_map_name
from kestrel_raw.btf import BTF
from kestrel_raw.btf.ext import BTFExt
from kestrel_raw.errors import BpfObjectError, BTFError
from kestrel_raw.kernel.uapi import BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_HASH
from tests.helpers import (
    BPF_INSN, HAND_CALL_SUB, HAND_EXIT, HAND_MAP_DEF, HAND_MOV0, HAND_PROG, HAND_PROG_SEC, HAND_TEXT,
    R_BPF_64_32, R_BPF_64_64, SHF_ALLOC, SHF_EXECINSTR, SHF_WRITE, STB_GLOBAL, STB_LOCAL, STT_FUNC, STT_NOTYPE,
    STT_OBJECT, STT_SECTION, BtfBuilder, bpf_insn, bpf_ld64, btf_ext, hand_object,
)

INSN = BPF_INSN
PROG_SEC = HAND_PROG_SEC
PROG, TEXT, MAP_DEF = HAND_PROG, HAND_TEXT, HAND_MAP_DEF
EXIT, MOV0, CALL_SUB = HAND_EXIT, HAND_MOV0, HAND_CALL_SUB
i, ld64, make = bpf_insn, bpf_ld64, hand_object


def test_linked_bytes():
    o = BpfObject(make(), "hand.o")
    assert o.name == "hand" and o.license == "GPL" and list(o.programs) == ["prog"] and list(o.subprograms) == ["sub"]
    assert {n: (m.type, m.key_size, m.value_size, m.max_entries) for n, m in o.maps.items()} == {
        "hmap": (BPF_MAP_TYPE_HASH, 4, 8, 16), ".data": (BPF_MAP_TYPE_ARRAY, 4, 8, 1)}
    p = o.link()["prog"]
    assert p.subprograms == ("sub",)
    assert p.map_refs == (MapRef(0, "hmap", op.BPF_PSEUDO_MAP_FD), MapRef(2, ".data", op.BPF_PSEUDO_MAP_VALUE, 4))
    assert p.insns == (ld64(1, op.BPF_PSEUDO_MAP_FD)                      # r1 = map[hmap] (fd left 0)
                       + i(op.LD_IMM64, 2, op.BPF_PSEUDO_MAP_VALUE) + i(0, imm=4)   # r2 = map[.data][0]+4
                       + i(op.BPF_JMP | op.BPF_CALL, 0, op.BPF_PSEUDO_CALL, 0, 1)  # call pc+1: sub, at slot 6
                       + EXIT + TEXT)
    assert p.with_fds({"hmap": 7, ".data": 9})[:8] == i(op.LD_IMM64, 1, op.BPF_PSEUDO_MAP_FD, 0, 7)
    assert p.with_fds({"hmap": 7, ".data": 9})[16:24] == i(op.LD_IMM64, 2, op.BPF_PSEUDO_MAP_VALUE, 0, 9)
    with pytest.raises(BpfObjectError, match=r"program 'prog' instruction 2 loads map '.data', which was not "
                                             r"given an fd \(given: hmap\)"):
        p.with_fds({"hmap": 7})


def _err(**kw) -> str:
    with pytest.raises(BpfObjectError) as e:
        BpfObject(make(**kw), "bad.o").link()
    return str(e.value)


def _syms(*replace):
    base = [(".data", STB_LOCAL, STT_SECTION, ".data", 0, 0), ("prog", STB_GLOBAL, STT_FUNC, PROG_SEC, 0, 48),
            ("sub", STB_GLOBAL, STT_FUNC, ".text", 0, 16), ("hmap", STB_GLOBAL, STT_OBJECT, "maps", 0, 20)]
    return base + list(replace)


def test_relocation_errors():
    where = f"bad.o: section '{PROG_SEC}' relocation #0"
    assert _err(rels={PROG_SEC: [(3, "hmap", R_BPF_64_64)]}) == (
        f"{where}: offset 3 is not an instruction of the section")
    assert _err(rels={PROG_SEC: [(40, "hmap", R_BPF_64_64)]}) == (
        f"{where} (program 'prog', instruction 5, symbol 'hmap'): relocation of instruction code 0x95, neither "
        "ld_imm64 nor a call")
    assert _err(rels={PROG_SEC: [(32, "hmap", R_BPF_64_32)]}) == (
        f"{where} (program 'prog', instruction 4, symbol 'hmap'): the call's target is not in .text, where "
        "subprograms must be")
    assert _err(rels={PROG_SEC: [(0, "hmap", R_BPF_64_32)]}) == (
        f"{where} (program 'prog', instruction 0, symbol 'hmap'): ld_imm64 relocation of type 10, expected "
        "R_BPF_64_64 (1)")
    assert _err(symbols=_syms(("lic", STB_GLOBAL, STT_OBJECT, "license", 0, 4)),
                rels={PROG_SEC: [(0, "lic", R_BPF_64_64)]}) == (
        f"{where} (program 'prog', instruction 0, symbol 'lic'): a reference into section 'license', which is "
        "neither a map section nor global data (.rodata, .data, .bss)")
    # an undefined symbol is an extern, which only the object's .BTF can say is __kconfig or __ksym
    assert _err(symbols=_syms(("ext", STB_GLOBAL, STT_NOTYPE, None, 0, 0)),
                rels={PROG_SEC: [(0, "ext", R_BPF_64_64)]}) == (
        "bad.o: extern 'ext' needs the object's .BTF to say what it is, and the object has none; build it "
        "with clang -g")
    # a call inside .text without a relocation (a static callee): its target, 5 + 1 slots on, is no function
    bad_text = i(op.BPF_JMP | op.BPF_CALL, 0, op.BPF_PSEUDO_CALL, 0, 5) + EXIT
    sections = [(PROG_SEC, PROG, SHF_ALLOC | SHF_EXECINSTR), (".text", bad_text, SHF_ALLOC | SHF_EXECINSTR),
                (".data", bytes(8), SHF_ALLOC | SHF_WRITE), ("maps", MAP_DEF, SHF_ALLOC | SHF_WRITE)]
    assert _err(sections=sections) == (
        "bad.o: program 'prog', function 'sub' instruction 0: the call's target (instruction 6 of .text) is no "
        "function of .text")


def test_function_and_section_errors():
    exec_ = SHF_ALLOC | SHF_EXECINSTR
    assert _err(symbols=[("prog", STB_LOCAL, STT_FUNC, PROG_SEC, 0, 48), ("sub", STB_GLOBAL, STT_FUNC, ".text", 0, 16),
                         ("hmap", STB_GLOBAL, STT_OBJECT, "maps", 0, 20)], rels={}) == (
        f"bad.o: section '{PROG_SEC}': program 'prog' is static, which libbpf does not support either; drop "
        "'static' or move it to .text as a subprogram")
    assert _err(sections=[(PROG_SEC, PROG, exec_), (".text", TEXT, exec_)],
                symbols=[("sub", STB_GLOBAL, STT_FUNC, ".text", 0, 16)], rels={}) == (
        f"bad.o: section '{PROG_SEC}' holds code but no function symbol names it; rebuild the object without "
        "stripping its symbols")
    assert _err(sections=[(PROG_SEC, PROG + b"\0", exec_)], symbols=[], rels={}) == (
        f"bad.o: section '{PROG_SEC}' is 49 bytes, not a whole number of 8-byte instructions")
    assert _err(symbols=_syms()[:1] + [("prog", STB_GLOBAL, STT_FUNC, PROG_SEC, 8, 48)] + _syms()[2:], rels={}) == (
        f"bad.o: function 'prog' in '{PROG_SEC}' at 8 + 48 is not a whole number of instructions inside the "
        "section (48 bytes)")
    o = BpfObject(make(sections=[("tracepoint/getpid", EXIT, exec_)],
                       symbols=[("p", STB_GLOBAL, STT_FUNC, "tracepoint/getpid", 0, 8)], rels={}), "tp.o")
    assert (o.programs["p"].kind, o.programs["p"].target) == ("tracepoint", "getpid")   # loads; attach by hand
    with pytest.raises(BpfObjectError, match=r"^x86.o: not a BPF object \(e_type 1, e_machine 62"):
        BpfObject(make(machine=62), "x86.o")


def test_legacy_map_errors():
    sections = [(PROG_SEC, EXIT, SHF_ALLOC | SHF_EXECINSTR), ("maps", MAP_DEF + b"\x01\0\0\0", SHF_ALLOC)]
    symbols = [("prog", STB_GLOBAL, STT_FUNC, PROG_SEC, 0, 8), ("m", STB_GLOBAL, STT_OBJECT, "maps", 0, 24)]
    assert _err(sections=sections, symbols=symbols, rels={}) == (
        "bad.o: legacy map 'm': its definition has 24 bytes and the bytes past struct bpf_map_def's 20 are not "
        "zero (fields this loader does not know)")
    # a shorter definition (16 bytes: no map_flags) is read with the missing fields 0
    sections = [(PROG_SEC, EXIT, SHF_ALLOC | SHF_EXECINSTR), ("maps", MAP_DEF[:16] * 2, SHF_ALLOC)]
    symbols = [("prog", STB_GLOBAL, STT_FUNC, PROG_SEC, 0, 8), ("a", STB_GLOBAL, STT_OBJECT, "maps", 0, 16),
               ("b", STB_GLOBAL, STT_OBJECT, "maps", 16, 16)]
    o = BpfObject(make(sections=sections, symbols=symbols, rels={}), "short.o")
    assert [(m.name, m.offset, m.max_entries, m.map_flags) for m in o.maps.values()] == [("a", 0, 16, 0),
                                                                                       ("b", 16, 16, 0)]
    assert _err(sections=[(PROG_SEC, EXIT, SHF_ALLOC | SHF_EXECINSTR), ("maps", MAP_DEF, SHF_ALLOC)],
                symbols=symbols[:1], rels={}) == (
        "bad.o: section 'maps' holds 20 bytes but no symbol names a map in it; rebuild the object without "
        "stripping its symbols")


def _btf_map_object(members) -> bytes:
    """An object whose .maps holds one map 'm', its struct's members given as (name, kind, arg)."""
    b = BtfBuilder()
    int_t = b.int("int", 4, signed=True)
    u64 = b.int("long long unsigned int", 8)
    fields = []
    for name, kind, arg in members:
        if kind == "uint":
            fields.append((name, b.ptr(b.array(int_t, int_t, arg)), 64 * len(fields)))
        elif kind == "type":
            fields.append((name, b.ptr(arg if arg else u64), 64 * len(fields)))
        else:
            fields.append((name, int_t, 64 * len(fields)))
    st = b.struct("", 8 * len(fields), fields)
    var = b.var("m", st)
    b.datasec(".maps", 0, [(var, 0, 8 * len(fields))])
    sections = [(PROG_SEC, EXIT, SHF_ALLOC | SHF_EXECINSTR), (".maps", bytes(8 * len(fields)), SHF_ALLOC | SHF_WRITE)]
    symbols = [("prog", STB_GLOBAL, STT_FUNC, PROG_SEC, 0, 8), ("m", STB_GLOBAL, STT_OBJECT, ".maps", 0,
                                                                8 * len(fields))]
    return make(sections=sections, symbols=symbols, rels={}, btf=b.build())


def test_btf_map_definitions():
    o = BpfObject(_btf_map_object([("type", "uint", 1), ("key", "type", None), ("value_size", "uint", 12),
                                   ("max_entries", "uint", 5), ("map_flags", "uint", 1)]), "m.o")
    m = o.maps["m"]
    assert (m.type, m.key_size, m.value_size, m.max_entries, m.map_flags, m.kernel_name) == (1, 8, 12, 5, 1, "m")

    def err(members) -> str:
        with pytest.raises(BpfObjectError) as e:
            BpfObject(_btf_map_object(members), "m.o")
        return str(e.value)

    assert err([("type", "uint", 1), ("color", "uint", 3)]) == (
        "m.o: map 'm' in '.maps': unknown attribute 'color' (known: type, max_entries, map_flags, numa_node, "
        "key_size, value_size, pinning, map_extra, key, value)")
    assert err([("max_entries", "uint", 3)]) == "m.o: map 'm' in '.maps': it has no type (__uint(type, " \
                                                "BPF_MAP_TYPE_...))"
    assert err([("type", "uint", 1), ("key", "type", None), ("key_size", "uint", 4)]) == (
        "m.o: map 'm' in '.maps': key_size 4 conflicts with the size of its key type (8)")
    assert err([("type", "plain", 1)]) == (
        "m.o: map 'm' in '.maps': attribute 'type' is a int, expected the pointer to an array that __uint() "
        "declares")
    assert err([("type", "uint", 12), ("values", "type", None)]) == (
        "m.o: map 'm' in '.maps': initial values (.values, for map-in-map and program arrays) are not supported")
    no_btf = make(sections=[(PROG_SEC, EXIT, SHF_ALLOC | SHF_EXECINSTR), (".maps", bytes(8), SHF_ALLOC)],
                  symbols=[("prog", STB_GLOBAL, STT_FUNC, PROG_SEC, 0, 8)], rels={})
    with pytest.raises(BpfObjectError, match=r"section '.maps' needs the object's .BTF to be read, and the object "
                                             r"has none; build it with clang -g"):
        BpfObject(no_btf, "nobtf.o")


def test_section_names():
    cases = {
        "tracepoint/syscalls/sys_enter_openat": ("tracepoint", "syscalls/sys_enter_openat", False),
        "tp/sched/sched_process_exec": ("tracepoint", "sched/sched_process_exec", False),
        "raw_tracepoint/sys_enter": ("raw_tracepoint", "sys_enter", False),
        "raw_tp/sys_exit": ("raw_tracepoint", "sys_exit", False),
        "tp_btf/sched_process_fork": ("tp_btf", "sched_process_fork", False),
        "fentry/do_unlinkat": ("fentry", "do_unlinkat", False), "fexit/do_unlinkat": ("fexit", "do_unlinkat", False),
        "fentry.s/bpf_fentry_test1": ("fentry", "bpf_fentry_test1", True),
        "kprobe/do_sys_openat2": ("kprobe", "do_sys_openat2", False),
        "kretprobe/do_sys_openat2": ("kretprobe", "do_sys_openat2", False),
        "uprobe//usr/lib/x86_64-linux-gnu/libc.so.6:getaddrinfo": (
            "uprobe", "/usr/lib/x86_64-linux-gnu/libc.so.6:getaddrinfo", False),
        "uretprobe/bash:readline": ("uretprobe", "bash:readline", False),
        "uprobe.s/libc.so.6:malloc+0x10": ("uprobe", "libc.so.6:malloc+0x10", True),
        "kprobe": ("kprobe", "", False), "uprobe": ("uprobe", "", False),
    }
    for name, want in cases.items():
        k = parse_section(name)
        assert (k.kind, k.target, k.sleepable) == want, name
    assert parse_section("uprobe.s/libc.so.6:malloc+0x10").uprobe == ("libc.so.6", "malloc", 16)
    assert parse_section("uprobe//bin/bash:readline").uprobe == ("/bin/bash", "readline", 0)
    assert parse_section("xdp") is None and parse_section("tpx/a/b") is None and parse_section(".text") is None
    # a target the section cannot give (attached by hand, as bashreadline's SEC("uretprobe/readline") is)
    # loads; asking for its parts says why not
    with pytest.raises(BpfObjectError, match=r"^section 'uretprobe/readline': a uretprobe section is "
                                             r"uretprobe/BINARY:FUNCTION\[\+OFFSET\], e.g. "
                                             r"uretprobe/libc.so.6:getaddrinfo; attach this program by hand$"):
        parse_section("uretprobe/readline").uprobe
    with pytest.raises(BpfObjectError, match=r"offset 'x' after '\+' is not a number"):
        parse_section("uretprobe/bash:readline+x").uprobe
    with pytest.raises(BpfObjectError, match=r"^section 'tp/getpid': a tracepoint section is "
                                             r"tracepoint/GROUP/NAME"):
        parse_section("tp/getpid").tracepoint
    with pytest.raises(BpfObjectError, match=r"^section 'kprobe/x': a tracepoint section is"):
        parse_section("kprobe/x").tracepoint


def test_internal_map_names():
    assert internal_map_name("global_data", ".rodata") == "global_d.rodata"
    assert internal_map_name("global_data", ".bss") == "global_d.bss"
    assert internal_map_name("ab", ".data") == "ab.data"
    assert internal_map_name("global_data", ".rodata.str1.1") == ".rodata.str1.1"
    assert internal_map_name("my-obj", ".data") == "my_obj.data"
    assert internal_map_name("x", ".data.a_very_long_name") == ".data.a_very_lo"


# --- .BTF.ext -------------------------------------------------------------------------------------------

def _ext_btf() -> tuple[BtfBuilder, bytes]:
    b = BtfBuilder()
    b.int("int", 4, signed=True)
    b.string("prog.c")
    b.string("\treturn 0;")
    b.string("0:1")
    return b


def test_btf_ext_records():
    b = _ext_btf()
    core = btf_ext({PROG_SEC: [(8, 1, b.string("0:1"), 0), (24, 1, b.string("0:1"), 1)]}, b.strs, "core")
    btf = BTF.parse(b.build())
    ext = BTFExt.parse(core, btf, "x.o")
    assert list(ext.core_relos) == [PROG_SEC] and ext.func_info == {} and ext.line_info == {}
    r = ext.core_relos[PROG_SEC]
    assert [(x.insn_off, x.type_id, x.access, x.kind_name) for x in r] == [(8, 1, "0:1", "byte_off"),
                                                                        (24, 1, "0:1", "byte_sz")]
    b = _ext_btf()
    lines = btf_ext({PROG_SEC: [(0, b.string("prog.c"), b.string("\treturn 0;"), 7 << 10 | 2)]}, b.strs, "line")
    li = BTFExt.parse(lines, BTF.parse(b.build()), "x.o").line_info[PROG_SEC][0]
    assert (li.file_name, li.line_text, li.line, li.column) == ("prog.c", "\treturn 0;", 7, 2)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d[:20], r"header truncated: 20 bytes, struct btf_ext_header needs 24"),
    (lambda d: b"\x00\x00" + d[2:], r"has invalid magic 0x0 \(expected 0xeb9f\)"),
    (lambda d: b"\xeb\x9f" + d[2:], r"is big-endian; this reader handles little-endian objects only"),
    (lambda d: d[:2] + b"\x02" + d[3:], r"has unsupported version 2"),
    (lambda d: d[:4] + struct.pack("<I", 4096) + d[8:], r"header length 4096 is outside 24\.\.\d+"),
    (lambda d: d[:28] + struct.pack("<I", 4096) + d[32:], r"core_relo at 0 \+ 4096 does not fit the section"),
    (lambda d: d[:32] + struct.pack("<I", 12) + d[36:], r"core_relo record size 12 is smaller than 16"),
    (lambda d: d[:36] + struct.pack("<I", 9999) + d[40:], r"core_relo: section name offset 9999 is not in the "
                                                          r"\.BTF strings"),
    (lambda d: d[:40] + struct.pack("<I", 5) + d[44:], r"core_relo: 5 records of 16 bytes at byte \d+ run past"),
    (lambda d: d[:40] + struct.pack("<I", 0) + d[44:], r"core_relo: a section has no records"),
    (lambda d: d[:52] + struct.pack("<I", 99999) + d[56:], r"core_relo: string offset 99999 is not in the \.BTF "
                                                           r"strings"),
])
def test_btf_ext_hostile(mutate, message):
    b = _ext_btf()
    core = btf_ext({PROG_SEC: [(8, 1, b.string("0:1"), 0)]}, b.strs, "core")
    btf = BTF.parse(b.build())
    with pytest.raises(BTFError, match=r"^x.o: \.BTF\.ext " + message):
        BTFExt.parse(mutate(core), btf, "x.o")


def test_core_relocation_for_a_missing_section():
    b = _ext_btf()
    ext = btf_ext({"nosuch": [(0, 1, b.string("0:1"), 0)]}, b.strs, "core")
    data = make(btf=b.build(), ext=ext)
    with pytest.raises(BpfObjectError, match=r"^bad.o: .BTF.ext has CO-RE relocations for section 'nosuch', which "
                                             r"the object lacks"):
        BpfObject(data, "bad.o").link(BTF.parse(_ext_btf().build()))
