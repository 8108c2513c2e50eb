"""The ELF reader: on files built byte by byte here (tests/helpers.ElfBuilder), on hostile variants of
them, and on real binaries (/bin/true, libc, a stripped and a non-PIE binary built here), against
readelf's view of the same files."""
from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

from kestrel_raw.elf import ElfError, ElfFile
from kestrel_raw.elf.abi import (
    PF_R, PF_W, PF_X, SHN_ABS, STB_GLOBAL, STB_LOCAL, STB_WEAK, STT_FUNC, STT_OBJECT, STT_SECTION,
)
from tests.helpers import (
    EM_BPF, ET_REL, PT_LOAD, SHF_ALLOC, SHF_EXECINSTR, SHF_WRITE, SHT_DYNSYM, SHT_GNU_verdef, SHT_GNU_verneed,
    SHT_GNU_versym, SHT_NOBITS, SHT_PROGBITS, SHT_REL, SHT_STRTAB, SHT_SYMTAB, ElfBuilder, StrTab, compile_host,
    rel, sym,
)

TEXT = bytes(range(256)) * 2          # 512 bytes of "code"
DATA = b"initial!" * 4                # 32 bytes


def _verdef(ndx: int, flags: int, name: int, next_: int) -> bytes:
    # Elf64_Verdef (vd_version 1, vd_flags, vd_ndx, vd_cnt 1, vd_hash, vd_aux 20, vd_next) + one Verdaux
    return struct.pack("<HHHHIII", 1, flags, ndx, 1, 0, 20, next_) + struct.pack("<II", name, 0)


def sample() -> tuple[ElfBuilder, dict[str, int]]:
    """A small shared library: .text at vaddr 0x401000 (file offset != vaddr), .data with a .bss tail,
    .symtab (with a "name@@VERSION" spelling) and .dynsym with GNU versions."""
    b = ElfBuilder()
    strs, dstr = StrTab(), StrTab()
    b.add(".text", SHT_PROGBITS, TEXT, flags=SHF_ALLOC | SHF_EXECINSTR, addr=0x401000)   # 1
    b.add(".data", SHT_PROGBITS, DATA, flags=SHF_ALLOC | SHF_WRITE, addr=0x402000)       # 2
    symtab = (sym(0, 0, 0, 0)
              + sym(strs.add("lib.c"), STB_LOCAL, 4, SHN_ABS)
              + sym(0, STB_LOCAL, STT_SECTION, 1, 0x401000)
              + sym(strs.add("helper"), STB_LOCAL, STT_FUNC, 1, 0x401010, 16)
              + sym(strs.add("counter"), STB_GLOBAL, STT_OBJECT, 2, 0x402008, 8)
              + sym(strs.add("in_bss"), STB_GLOBAL, STT_OBJECT, 2, 0x402040, 8)
              + sym(strs.add("main"), STB_GLOBAL, STT_FUNC, 1, 0x401100, 32)
              + sym(strs.add("foo@@V_2"), STB_GLOBAL, STT_FUNC, 1, 0x401180, 8)
              + sym(strs.add("twice"), STB_LOCAL, STT_FUNC, 1, 0x401020, 4)
              + sym(strs.add("twice"), STB_LOCAL, STT_FUNC, 1, 0x401030, 4))
    b.add(".symtab", SHT_SYMTAB, symtab, link=".strtab", info=3, entsize=24)             # 3
    b.add(".strtab", SHT_STRTAB, strs.data)                                               # 4
    dynsym = (sym(0, 0, 0, 0)
              + sym(dstr.add("foo"), STB_GLOBAL, STT_FUNC, 1, 0x401140, 8)
              + sym(dstr.add("foo"), STB_GLOBAL, STT_FUNC, 1, 0x401180, 8)
              + sym(dstr.add("bar"), STB_WEAK, STT_FUNC, 1, 0x4011c0, 8)
              + sym(dstr.add("puts"), STB_GLOBAL, STT_FUNC, 0))
    b.add(".dynsym", SHT_DYNSYM, dynsym, flags=SHF_ALLOC, link=".dynstr", info=1, entsize=24)  # 5
    names = {n: dstr.add(n) for n in ("libt.so", "V_1", "V_2", "libc.so.6", "GLIBC_2.2.5")}
    b.add(".dynstr", SHT_STRTAB, dstr.data, flags=SHF_ALLOC)                               # 6
    # .gnu.version: one Elf64_Versym per .dynsym entry; 0x8000 marks a hidden (non-default) version.
    b.add(".gnu.version", SHT_GNU_versym, struct.pack("<5H", 0, 0x8002, 3, 1, 4), link=".dynsym",
          entsize=2)                                                                     # 7
    verdefs = (_verdef(1, 1, names["libt.so"], 28) + _verdef(2, 0, names["V_1"], 28)
               + _verdef(3, 0, names["V_2"], 0))
    b.add(".gnu.version_d", SHT_GNU_verdef, verdefs, link=".dynstr", info=3)              # 8
    # Elf64_Verneed (vn_version 1, vn_cnt 1, vn_file, vn_aux 16, vn_next 0) + Vernaux (hash, flags, other 4,
    # name, next 0)
    verneed = struct.pack("<HHIII", 1, 1, names["libc.so.6"], 16, 0) + struct.pack(
        "<IHHII", 0, 0, 4, names["GLIBC_2.2.5"], 0)
    b.add(".gnu.version_r", SHT_GNU_verneed, verneed, link=".dynstr", info=1)             # 9
    b.segment(PT_LOAD, PF_R | PF_X, ".text", 0x401000)
    b.segment(PT_LOAD, PF_R | PF_W, ".data", 0x402000, memsz=0x100)
    return b, names


@pytest.fixture
def elf() -> ElfFile:
    return ElfFile(sample()[0].build(), "sample.so")


def test_header_sections_segments(elf):
    b, _ = sample()
    data = b.build()
    assert (elf.header.type, elf.header.machine) == (3, 62)
    assert [s.name for s in elf.sections] == ["", ".text", ".data", ".symtab", ".strtab", ".dynsym", ".dynstr",
                                              ".gnu.version", ".gnu.version_d", ".gnu.version_r", ".shstrtab"]
    text = elf.section(".text")
    assert (text.index, text.type, text.addr, text.size, text.is_exec) == (1, SHT_PROGBITS, 0x401000, 512, True)
    assert elf.section_data(".text") == TEXT
    assert data[text.offset:text.offset + 512] == TEXT
    assert [(s.type, s.flags, s.vaddr, s.filesz, s.memsz, s.perms) for s in elf.segments] == [
        (PT_LOAD, PF_R | PF_X, 0x401000, 512, 512, "r-x"), (PT_LOAD, PF_R | PF_W, 0x402000, 32, 0x100, "rw-")]


def test_symtab_and_versioned_names(elf):
    syms = elf.symbols(".symtab")
    assert [s.name for s in syms] == ["", "lib.c", "", "helper", "counter", "in_bss", "main", "foo", "twice",
                                      "twice"]
    foo = syms[7]
    assert (foo.version, foo.default_version, foo.versioned_name) == ("V_2", True, "foo@@V_2")
    assert (syms[3].bind, syms[3].type, syms[3].value, syms[3].size) == (STB_LOCAL, STT_FUNC, 0x401010, 16)
    dyn = elf.symbols(".dynsym")
    assert [(s.name, s.version, s.default_version, s.defined) for s in dyn] == [
        ("", None, True, False), ("foo", "V_1", False, True), ("foo", "V_2", True, True), ("bar", None, True, True),
        ("puts", "GLIBC_2.2.5", False, False)]
    assert [s.versioned_name for s in dyn[1:]] == ["foo@V_1", "foo@@V_2", "bar", "puts@GLIBC_2.2.5"]


def test_symbol_lookup_and_file_offsets(elf):
    text = elf.section(".text")
    assert elf.symbol("main").value == 0x401100
    # .text is mapped at 0x401000 from file offset text.offset: offset = vaddr - p_vaddr + p_offset.
    assert elf.symbol_file_offset("main") == text.offset + 0x100
    assert elf.file_offset(0x401000) == text.offset
    assert elf.symbol("foo").versioned_name == "foo@@V_2"                  # the default version
    assert elf.symbol("foo@V_1", ".dynsym").value == 0x401140
    assert elf.symbol("foo@@V_2", ".dynsym").value == 0x401180
    assert elf.symbol_file_offset("foo@V_1", ".dynsym") == text.offset + 0x140
    assert elf.symbol("bar").table == ".dynsym"                           # not in .symtab: found in .dynsym
    assert elf.symbol("counter").value == 0x402008
    assert elf.symbol_file_offset("counter") == elf.section(".data").offset + 8


def test_symbol_errors_say_why(elf):
    with pytest.raises(ElfError, match=r"^sample.so: no symbol 'foo@V_3'; this file has foo@@V_2, foo@V_1"):
        elf.symbol("foo@V_3", ".dynsym")
    with pytest.raises(ElfError, match=r"'puts' is only referenced here \(undefined in .dynsym, "
                                       r"puts@GLIBC_2.2.5\), not defined; give the library that defines it"):
        elf.symbol("puts")
    with pytest.raises(ElfError, match=r"'twice' is defined 2 times in .symtab \(twice at 0x401020, twice at "
                                       r"0x401030\); name a version"):
        elf.symbol("twice")
    with pytest.raises(ElfError, match=r"no symbol 'nothere' in .symtab or .dynsym; check the name"):
        elf.symbol("nothere")
    with pytest.raises(ElfError, match=r"address 0x402040 is in the zero-filled part of PT_LOAD segment 1 "
                                       r"\(0x402020..0x402100, .bss\): it has no bytes in the file"):
        elf.symbol_file_offset("in_bss")
    with pytest.raises(ElfError, match=r"address 0x500000 is in no PT_LOAD segment \(0x401000..0x401200, "
                                       r"0x402000..0x402020\)"):
        elf.file_offset(0x500000)
    with pytest.raises(ElfError, match=r"no section named '.BTF' \(sections: .text, .data, .symtab"):
        elf.section(".BTF")


def test_relocatable_object_relocations_and_bss():
    b = ElfBuilder(e_type=ET_REL, machine=EM_BPF)
    strs = StrTab()
    b.add("tp/x", SHT_PROGBITS, bytes(32), flags=SHF_ALLOC | SHF_EXECINSTR)
    b.add(".bss", SHT_NOBITS, flags=SHF_ALLOC | SHF_WRITE, size=24)
    b.add(".symtab", SHT_SYMTAB, sym(0, 0, 0, 0) + sym(strs.add("prog"), STB_GLOBAL, STT_FUNC, 1, 0, 32)
          + sym(strs.add("zeros"), STB_GLOBAL, STT_OBJECT, 2, 8, 16), link=".strtab", info=1, entsize=24)
    b.add(".strtab", SHT_STRTAB, strs.data)
    b.add(".reltp/x", SHT_REL, rel(8, 2, 1) + rel(24, 1, 10), link=".symtab", info="tp/x", entsize=16)
    elf = ElfFile(b.build(), "obj.o")
    assert elf.is_relocatable and elf.segments == ()
    assert elf.section_data(".bss") == bytes(24)
    r = elf.relocations(".reltp/x")
    assert [(x.offset, x.symbol, x.type) for x in r] == [(8, 2, 1), (24, 1, 10)]
    assert elf.symbol("zeros").value == 8
    with pytest.raises(ElfError, match=r"obj.o: a relocatable object \(ET_REL\) has no PT_LOAD segment"):
        elf.symbol_file_offset("prog")
    with pytest.raises(ElfError, match=r"section 'tp/x' is not a relocation section"):
        elf.relocations("tp/x")


# --- hostile files --------------------------------------------------------------------------------------

def _patch(data: bytes, offset: int, fmt: str, *values) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


def _shdr(data: bytes, index: int) -> int:
    shoff = struct.unpack_from("<Q", data, 40)[0]
    return shoff + 64 * index


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d[:3], r"not an ELF file \(starts with b'\\x7fEL'"),
    (lambda d: d[:40], r"ELF header truncated: the file is 40 bytes, Elf64_Ehdr needs 64"),
    (lambda d: _patch(d, 4, "<B", 1), r"32-bit ELF \(ELFCLASS32\) is not supported"),
    (lambda d: _patch(d, 5, "<B", 2), r"big-endian ELF \(ELFDATA2MSB\) is not supported"),
    (lambda d: _patch(d, 6, "<B", 7), r"invalid ELF version 7"),
    (lambda d: d[:len(d) - 10], r"section header table: 11 entries of 64 bytes at offset \d+ end at \d+, past "
                                r"the end of the file"),
    (lambda d: _patch(d, 58, "<H", 40), r"section header table: entry size 40, expected 64 for ELF64"),
    (lambda d: _patch(d, 60, "<H", 0xFFF0), r"section header table claims 65520 sections, more than the file"),
    (lambda d: _patch(d, 62, "<H", 30), r"section-name string table index 30 is not a section \(there are 11\)"),
    (lambda d: _patch(d, 62, "<H", 1), r"section-name string table \(section 1\) has type 1, not SHT_STRTAB"),
    (lambda d: _patch(d, _shdr(d, 1) + 32, "<Q", 1 << 40), r"section 1 \(1099511627776 bytes at offset \d+\) ends "
                                                           r"past the end of the file"),
    (lambda d: _patch(d, _shdr(d, 1), "<I", 100000), r"name of section 1: string offset 100000 is past the end"),
    (lambda d: _patch(d, _shdr(d, 2) + 32, "<Q", 1 << 30), r"section 2 .* ends past the end of the file"),
    (lambda d: _patch(d, 32, "<Q", 1 << 32), r"program header table: 2 entries of 56 bytes at offset 4294967296"),
    (lambda d: _patch(d, 64 + 32, "<Q", 1 << 20), r"PT_LOAD segment 0 \(1048576 bytes at offset \d+\) ends past"),
    (lambda d: _patch(d, 64 + 56 + 40, "<Q", 0x10), r"PT_LOAD segment 1 has p_filesz 32 larger than p_memsz 16"),
])
def test_hostile_headers(mutate, message):
    data = mutate(sample()[0].build())
    with pytest.raises(ElfError, match=r"^bad.so: " + message):
        ElfFile(data, "bad.so")


def _symtab_error(patch) -> str:
    data = sample()[0].build()
    e = ElfFile(data, "bad.so")
    data = patch(data, e)
    with pytest.raises(ElfError) as info:
        e2 = ElfFile(data, "bad.so")
        e2.symbols(".symtab"), e2.symbols(".dynsym")
    return str(info.value)


def test_hostile_symbol_tables():
    st = lambda e: e.section(".symtab")  # noqa: E731
    assert "symbol table '.symtab' (section 3): entry size 16, expected 24 (Elf64_Sym)" in _symtab_error(
        lambda d, e: _patch(d, _shdr(d, 3) + 56, "<Q", 16))
    assert "symbol table '.symtab' (section 3): size 239 is not a multiple of 24" in _symtab_error(
        lambda d, e: _patch(d, _shdr(d, 3) + 32, "<Q", st(e).size - 1))
    assert "its string table (sh_link 1) is not a SHT_STRTAB section" in _symtab_error(
        lambda d, e: _patch(d, _shdr(d, 3) + 40, "<I", 1))
    assert "symbol table '.symtab' (section 3) entry 3: string offset 5000 is past the end" in _symtab_error(
        lambda d, e: _patch(d, st(e).offset + 3 * 24, "<I", 5000))
    # the .strtab's last string loses its NUL: the section ends one byte earlier
    assert "is not NUL-terminated" in _symtab_error(
        lambda d, e: _patch(d, _shdr(d, 4) + 32, "<Q", e.section(".strtab").size - 1))
    assert ".gnu.version entry 1 names version index 9, which neither .gnu.version_d nor .gnu.version_r " \
           "defines" in _symtab_error(lambda d, e: _patch(d, e.section(".gnu.version").offset + 2, "<H", 9))
    assert "section '.gnu.version_d': record at offset 1000 runs past the section's end" in _symtab_error(
        lambda d, e: _patch(d, e.section(".gnu.version_d").offset + 16, "<I", 1000))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_only_elferror(data):
    """Random byte overwrites of a valid file: reading everything either works or raises ElfError."""
    raw = bytearray(sample()[0].build())
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    try:
        e = ElfFile(bytes(raw), "fuzz")
        for table in (".symtab", ".dynsym"):
            for s in e.symbols(table):
                if s.name and s.defined:
                    try:
                        e.symbol_file_offset(s.versioned_name, table)
                    except ElfError:
                        pass
    except ElfError:
        pass


# --- real binaries --------------------------------------------------------------------------------------

def _readelf() -> str:
    path = shutil.which("readelf") or shutil.which("llvm-readelf")
    if path is None:
        pytest.skip("neither readelf (binutils) nor llvm-readelf (llvm) is installed")
    return path


_DYNSYM_LINE = re.compile(r"^\s*(\d+): ([0-9a-f]+)\s+(\d+|0x[0-9a-f]+) (\w+)\s+(\w+)\s+\w+\s+(\w+) ?(\S*)")


def _readelf_dynsyms(path: str) -> dict[int, tuple[int, int, str, str]]:
    out = subprocess.run([_readelf(), "--dyn-syms", "-W", path], capture_output=True, text=True, check=True).stdout
    syms = {}
    for line in out.splitlines():
        m = _DYNSYM_LINE.match(line)
        if m:
            name = re.sub(r" \(\d+\)$", "", m.group(7))
            syms[int(m.group(1))] = (int(m.group(2), 16), int(m.group(3), 0), m.group(6), name)
    return syms


def _libc() -> str:
    for p in ("/lib/x86_64-linux-gnu/libc.so.6", "/lib/aarch64-linux-gnu/libc.so.6", "/lib64/libc.so.6"):
        if os.path.exists(p):
            return p
    pytest.skip("no libc.so.6 at a known path")


def test_libc_dynsym_matches_readelf():
    path = _libc()
    e = ElfFile.load(path)
    want = _readelf_dynsyms(path)
    syms = e.symbols(".dynsym")
    assert len(want) == len(syms) > 1000
    for i, (value, size, ndx, name) in want.items():
        s = syms[i]
        assert (s.value, s.size, s.versioned_name) == (value, size, name), i
        assert s.defined == (ndx != "UND"), i


def test_libc_versioned_lookups_and_offsets():
    path = _libc()
    e = ElfFile.load(path)
    by_name = {v[3]: v for v in _readelf_dynsyms(path).values()}
    default_memcpy = next(n for n in by_name if n.startswith("memcpy@@"))
    old_memcpy = next((n for n in by_name if n.startswith("memcpy@GLIBC")), None)
    assert e.symbol("memcpy").versioned_name == default_memcpy
    if old_memcpy is not None:      # x86_64 keeps memcpy@GLIBC_2.2.5 beside memcpy@@GLIBC_2.14
        assert e.symbol(old_memcpy).value == by_name[old_memcpy][0]
        assert e.symbol(old_memcpy).value != e.symbol("memcpy").value
    gai = e.symbol("getaddrinfo")
    # The file offset through the section that holds it (libbpf's way) equals the one through PT_LOAD.
    sec = e.sections[gai.shndx]
    assert e.symbol_file_offset("getaddrinfo") == gai.value - sec.addr + sec.offset
    code = e.data[e.symbol_file_offset("getaddrinfo"):][:16]
    assert code == e.section_data(sec)[gai.value - sec.addr:][:16]


def test_bin_true():
    e = ElfFile.load("/bin/true")
    assert e.header.type in (2, 3) and e.symbols(".symtab") == ()   # Debian strips it
    dyn = e.symbols(".dynsym")
    want = _readelf_dynsyms("/bin/true")
    assert [s.versioned_name for s in dyn] == [want[i][3] for i in range(len(dyn))]
    with pytest.raises(ElfError, match=r"'abort' is only referenced here \(undefined in .dynsym, abort@GLIBC_"):
        e.symbol("abort")
    entry = e.file_offset(e.header.entry)
    text = e.section(".text")
    assert text.offset <= entry < text.offset + text.size


PROGRAM = r"""
#include <stdio.h>
__attribute__((noinline)) int kr_probe_me(int x) { return x * 3 + 1; }
__attribute__((visibility("default"))) int kr_exported(int x) { return kr_probe_me(x) + 2; }
int main(int argc, char **argv) { printf("%d\n", kr_exported(argc)); return 0; }
"""


def test_non_pie_and_stripped_binaries(tmp_path):
    exe = compile_host(PROGRAM, tmp_path / "nopie", "-no-pie", "-fno-pie")
    e = ElfFile.load(str(exe))
    fn = e.symbol("kr_probe_me")
    assert fn.table == ".symtab" and fn.is_function
    seg = next(s for s in e.load_segments() if s.contains(fn.value))
    assert seg.vaddr != seg.offset                    # non-PIE: 0x401000 maps from offset 0x1000
    sec = e.sections[fn.shndx]
    assert e.symbol_file_offset("kr_probe_me") == fn.value - sec.addr + sec.offset == fn.value - seg.vaddr + seg.offset

    lib = compile_host(PROGRAM.replace("int main", "int kr_unused_main"), tmp_path / "libkr.so", "-shared", "-fPIC",
                       "-s")
    s = ElfFile.load(str(lib))
    assert s.symbols(".symtab") == ()                # stripped: only .dynsym is left
    exported = s.symbol("kr_exported")
    assert exported.table == ".dynsym"
    want = {v[3]: v for v in _readelf_dynsyms(str(lib)).values()}
    assert exported.value == want["kr_exported"][0]
    off = s.symbol_file_offset("kr_exported")
    sec = s.sections[exported.shndx]
    assert off == exported.value - sec.addr + sec.offset


def test_public_names_and_purity():
    import kestrel_raw.bpfobj as bpfobj
    import kestrel_raw.elf as elf
    for mod in (elf, bpfobj):
        assert len(mod.__all__) == len(set(mod.__all__))
        assert [n for n in mod.__all__ if not hasattr(mod, n)] == []
    # the ELF reader, .BTF.ext and CO-RE are pure: neither ctypes nor trio comes with them
    code = ("import sys, kestrel_raw.elf, kestrel_raw.btf.ext, kestrel_raw.btf.core; "
            "print(sorted(m for m in ('ctypes', 'trio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.strip() == "[]"
