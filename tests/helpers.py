"""Helpers shared by test modules: an ELF64 writer for hand-built files, and the clang used to build BPF
objects from tests/bpf_src/*.c.

The writer lays a file out as: Elf64_Ehdr, program headers, each section's bytes (8-aligned), the section
header table.  It is deliberately independent of kestrel_raw.elf (plain ``struct``), so that the reader is
tested against a second implementation of the format.
"""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
BPF_SRC = TESTS / "bpf_src"

SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_NOBITS, SHT_REL, SHT_DYNSYM = 1, 2, 3, 4, 8, 9, 11
SHT_GNU_verdef, SHT_GNU_verneed, SHT_GNU_versym = 0x6FFFFFFD, 0x6FFFFFFE, 0x6FFFFFFF
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 1, 2, 4
PT_LOAD = 1
ET_REL, ET_EXEC, ET_DYN = 1, 2, 3
EM_X86_64, EM_BPF = 62, 247


class StrTab:
    """A string table under construction: ``add`` returns the offset of the string."""

    def __init__(self) -> None:
        self.data = bytearray(b"\0")
        self._offs: dict[str, int] = {"": 0}

    def add(self, s: str) -> int:
        if s not in self._offs:
            self._offs[s] = len(self.data)
            self.data += s.encode() + b"\0"
        return self._offs[s]


def sym(name: int, bind: int, typ: int, shndx: int, value: int = 0, size: int = 0, other: int = 0) -> bytes:
    """One Elf64_Sym: st_name, st_info (bind << 4 | type), st_other, st_shndx, st_value, st_size."""
    return struct.pack("<IBBHQQ", name, bind << 4 | typ, other, shndx, value, size)


def rel(offset: int, symbol: int, typ: int) -> bytes:
    """One Elf64_Rel: r_offset, r_info (symbol << 32 | type)."""
    return struct.pack("<QQ", offset, symbol << 32 | typ)


@dataclass
class _Sec:
    name: str
    type: int
    data: bytes
    flags: int
    addr: int
    link: int | str
    info: int | str
    entsize: int
    size: int | None
    offset: int = 0


@dataclass
class ElfBuilder:
    """Build an ELF64 LE file.  Sections are numbered from 1 in the order added (0 is the null section);
    ``link``/``info`` may name a section.  ``.shstrtab`` is added last by ``build``."""
    e_type: int = ET_DYN
    machine: int = EM_X86_64
    sections: list[_Sec] = field(default_factory=list)
    segments: list[tuple] = field(default_factory=list)

    def add(self, name: str, sh_type: int, data: bytes = b"", *, flags: int = 0, addr: int = 0,
            link: int | str = 0, info: int | str = 0, entsize: int = 0, size: int | None = None) -> int:
        self.sections.append(_Sec(name, sh_type, bytes(data), flags, addr, link, info, entsize, size))
        return len(self.sections)

    def segment(self, p_type: int, flags: int, section: str, vaddr: int, memsz: int | None = None) -> None:
        """A segment mapping ``section``'s bytes at ``vaddr`` (memsz defaults to the bytes' size)."""
        self.segments.append((p_type, flags, section, vaddr, memsz))

    def index(self, name: str) -> int:
        return next(i for i, s in enumerate(self.sections, 1) if s.name == name)

    def build(self) -> bytes:
        shstr = StrTab()
        names = [shstr.add(s.name) for s in self.sections]
        shstrndx = len(self.sections) + 1
        shstr_name = shstr.add(".shstrtab")
        phoff = 64
        off = phoff + 56 * len(self.segments)
        for s in self.sections:
            off = (off + 7) & ~7
            s.offset = off
            if s.type != SHT_NOBITS:
                off += len(s.data)
        shstr_off = off
        off += len(shstr.data)
        shoff = (off + 7) & ~7
        out = bytearray(shoff + 64 * (len(self.sections) + 2))
        ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
        struct.pack_into("<16sHHIQQQIHHHHHH", out, 0, ident, self.e_type, self.machine, 1, 0,
                         phoff if self.segments else 0, shoff, 0, 64, 56, len(self.segments), 64,
                         len(self.sections) + 2, shstrndx)
        by_name = {s.name: s for s in self.sections}
        for i, (p_type, flags, sec, vaddr, memsz) in enumerate(self.segments):
            s = by_name[sec]
            filesz = 0 if s.type == SHT_NOBITS else len(s.data)
            struct.pack_into("<IIQQQQQQ", out, phoff + 56 * i, p_type, flags, s.offset, vaddr, vaddr, filesz,
                             memsz if memsz is not None else (s.size or len(s.data)), 0x1000)
        for s in self.sections:
            if s.type != SHT_NOBITS:
                out[s.offset:s.offset + len(s.data)] = s.data
        out[shstr_off:shstr_off + len(shstr.data)] = shstr.data

        def ref(v: int | str) -> int:
            return self.index(v) if isinstance(v, str) else v

        for i, s in enumerate(self.sections, 1):
            size = s.size if s.size is not None else len(s.data)
            struct.pack_into("<IIQQQQIIQQ", out, shoff + 64 * i, names[i - 1], s.type, s.flags, s.addr, s.offset,
                             size, ref(s.link), ref(s.info), 8, s.entsize)
        struct.pack_into("<IIQQQQIIQQ", out, shoff + 64 * shstrndx, shstr_name, SHT_STRTAB, 0, 0, shstr_off,
                         len(shstr.data), 0, 0, 1, 0)
        return bytes(out)


# --- compilers ------------------------------------------------------------------------------------------

def need_tool(name: str, package: str) -> str:
    """The path of ``name``; skip when absent, except under CI (.ci/run installs it): there a missing tool
    is a failure, so that no test passes by skipping."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} is not installed (apt-get install {package})"
        if os.environ.get("CI") == "true":
            pytest.fail(msg + "; CI installs it, so this skip would hide a test")
        pytest.skip(msg)
    return path


def need_bpf_headers() -> None:
    if not Path("/usr/include/bpf/bpf_helpers.h").exists():
        msg = "libbpf's BPF headers are not installed (apt-get install libbpf-dev)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg + "; CI installs them, so this skip would hide a test")
        pytest.skip(msg)


def bpf_target_arch() -> str:
    """The __TARGET_ARCH_* name bpf_tracing.h wants for this host."""
    return {"x86_64": "x86", "aarch64": "arm64", "riscv64": "riscv", "s390x": "s390"}.get(os.uname().machine,
                                                                                     os.uname().machine)


def compile_bpf(source: str | Path, out_dir: Path, *extra: str) -> Path:
    """``clang -target bpf -g -O2 -c`` on tests/bpf_src/<source>, into ``out_dir``; the object's path."""
    clang = need_tool("clang", "clang")
    need_bpf_headers()
    src = BPF_SRC / source if not Path(source).is_absolute() else Path(source)
    obj = out_dir / (Path(src).stem + ".o")
    # linux/bpf.h includes asm/types.h, which Debian keeps under the host's multiarch directory.
    multiarch = f"/usr/include/{os.uname().machine}-linux-gnu"
    cmd = [clang, "-target", "bpf", "-g", "-O2", f"-D__TARGET_ARCH_{bpf_target_arch()}", "-I", str(BPF_SRC),
           "-I", multiarch, "-c", str(src), "-o", str(obj), *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise AssertionError(f"clang failed on {src}:\n{r.stderr}")
    return obj


def compile_host(source_text: str, out: Path, *flags: str) -> Path:
    """A host executable or library from C text (clang, or cc), for the ELF reader's tests."""
    cc = shutil.which("clang") or shutil.which("cc")
    if cc is None:
        need_tool("clang", "clang")
    src = out.with_suffix(".c")
    src.write_text(source_text)
    r = subprocess.run([cc, "-O1", "-o", str(out), str(src), *flags], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise AssertionError(f"{cc} failed:\n{r.stderr}")
    return out


# --- BTF ------------------------------------------------------------------------------------------------

BTF_INT, BTF_PTR, BTF_ARRAY, BTF_STRUCT, BTF_UNION, BTF_ENUM, BTF_FWD, BTF_TYPEDEF, BTF_VOLATILE, BTF_CONST = \
    range(1, 11)
BTF_FUNC, BTF_FUNC_PROTO, BTF_VAR, BTF_DATASEC, BTF_FLOAT, BTF_ENUM64 = 12, 13, 14, 15, 16, 19


class BtfBuilder:
    """Raw BTF written word by word (struct btf_type = name_off, info, size|type, then the kind's records),
    ids from 1 in the order added.  Independent of kestrel_raw.btf, so tests check the reader against it."""

    def __init__(self) -> None:
        self.strs = StrTab()
        self.words: list[int] = []
        self.count = 0

    def _add(self, name: str, kind: int, vlen: int, size_or_type: int, extra: list[int], kflag: int = 0) -> int:
        self.words += [self.strs.add(name), kflag << 31 | kind << 24 | vlen, size_or_type, *extra]
        self.count += 1
        return self.count

    def int(self, name: str, size: int, signed: bool = False, bits: int | None = None, offset: int = 0) -> int:
        enc = (1 if signed else 0) << 24 | offset << 16 | (bits if bits is not None else size * 8)
        return self._add(name, BTF_INT, 0, size, [enc])

    def ptr(self, to: int) -> int:
        return self._add("", BTF_PTR, 0, to, [])

    def array(self, elem: int, index: int, n: int) -> int:
        return self._add("", BTF_ARRAY, 0, 0, [elem, index, n])

    def struct(self, name: str, size: int, members: list[tuple], union: bool = False, kflag: bool = False) -> int:
        """members: (name, type id, bit offset[, bitfield size]) each."""
        extra = []
        for m in members:
            off = m[2] | (m[3] << 24 if kflag and len(m) > 3 else 0)
            extra += [self.strs.add(m[0]), m[1], off]
        return self._add(name, BTF_UNION if union else BTF_STRUCT, len(members), size, extra, int(kflag))

    def enum(self, name: str, values: list[tuple[str, int]], size: int = 4, signed: bool = False) -> int:
        extra = []
        for n, v in values:
            extra += [self.strs.add(n), v & 0xFFFFFFFF]
        return self._add(name, BTF_ENUM, len(values), size, extra, int(signed))

    def enum64(self, name: str, values: list[tuple[str, int]], signed: bool = False) -> int:
        extra = []
        for n, v in values:
            v &= (1 << 64) - 1
            extra += [self.strs.add(n), v & 0xFFFFFFFF, v >> 32]
        return self._add(name, BTF_ENUM64, len(values), 8, extra, int(signed))

    def fwd(self, name: str, union: bool = False) -> int:
        return self._add(name, BTF_FWD, 0, 0, [], int(union))

    def typedef(self, name: str, to: int) -> int:
        return self._add(name, BTF_TYPEDEF, 0, to, [])

    def const(self, to: int) -> int:
        return self._add("", BTF_CONST, 0, to, [])

    def func_proto(self, ret: int, params: list[tuple[str, int]]) -> int:
        extra = []
        for n, t in params:
            extra += [self.strs.add(n), t]
        return self._add("", BTF_FUNC_PROTO, len(params), ret, extra)

    def func(self, name: str, proto: int, linkage: int = 1) -> int:
        return self._add(name, BTF_FUNC, linkage, proto, [])

    def var(self, name: str, type_id: int, linkage: int = 1) -> int:
        return self._add(name, BTF_VAR, 0, type_id, [linkage])

    def datasec(self, name: str, size: int, vars_: list[tuple[int, int, int]]) -> int:
        extra = []
        for v in vars_:
            extra += list(v)
        return self._add(name, BTF_DATASEC, len(vars_), size, extra)

    def string(self, s: str) -> int:
        return self.strs.add(s)

    def build(self) -> bytes:
        types = struct.pack(f"<{len(self.words)}I", *self.words)
        strs = bytes(self.strs.data)
        return struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strs)) + types + strs


def btf_ext(sections: dict[str, list[tuple]], strs: StrTab, kind: str = "core") -> bytes:
    """A .BTF.ext blob holding one table ("func", "line" or "core") of ``sections``: name -> records (tuples
    of u32), with the section names added to ``strs`` (the .BTF string table they index)."""
    sizes = {"func": 8, "line": 16, "core": 16}
    body = struct.pack("<I", sizes[kind])
    for name, recs in sections.items():
        body += struct.pack("<II", strs.add(name), len(recs))
        for r in recs:
            body += struct.pack(f"<{len(r)}I", *r)
    offs = {"func": (0, 0), "line": (0, 0), "core": (0, 0)}
    offs[kind] = (0, len(body))
    hdr = struct.pack("<HBBI", 0xEB9F, 1, 0, 32) + struct.pack("<6I", *offs["func"], *offs["line"], *offs["core"])
    return hdr + body


# --- libbpf as the reference ----------------------------------------------------------------------------

def build_libbpf_reference(out_dir: Path) -> Path:
    """tests/bpf_src/libbpf_reference.c built against the system's libbpf (skips without the privilege to
    create maps and load programs, which libbpf needs to get as far as relocating)."""
    from tests.conftest import kernel_privilege_problem
    problem = kernel_privilege_problem()
    if problem:
        pytest.skip(f"libbpf creates maps and loads programs: {problem}")
    need_tool("clang", "clang")
    need_bpf_headers()
    return compile_host((BPF_SRC / "libbpf_reference.c").read_text(), out_dir / "libbpf_reference", "-lbpf")


@dataclass
class LibbpfResult:
    maps: dict[str, int]          # libbpf's map name -> the fd it created
    progs: dict[str, bytes]       # program -> the instructions libbpf gave the kernel
    core_log: list[str]           # its CO-RE patch lines, "prog 'p': relo #3: patched insn #7 ..."
    load: int                     # bpf_object__load's result
    stderr: str

    @property
    def relocated(self) -> bool:
        """Whether libbpf got as far as relocating: it creates the maps first, and stops at a map it cannot
        create (a libbpf-tool sizes some maps at run time, before loading)."""
        return "failed to create" not in self.stderr and "failed to open" not in self.stderr


def run_libbpf(ref: Path, obj: Path, btf: Path | None = None) -> LibbpfResult:
    args = [str(ref), str(obj)] + ([str(btf)] if btf else [])
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    maps, progs, load = {}, {}, None
    for line in r.stdout.splitlines():
        kind, *rest = line.split()
        if kind == "map":
            maps[rest[0]] = int(rest[1])
        elif kind == "prog":
            progs[rest[0]] = bytes.fromhex(rest[1]) if len(rest) > 1 else b""
        elif kind == "load":
            load = int(rest[0])
    log = [ln.removeprefix("libbpf: ") for ln in r.stderr.splitlines()
           if "patched insn" in ln or "substituting insn" in ln]
    return LibbpfResult(maps, progs, log, load, r.stderr)


def libbpf_fds(obj, maps: dict[str, int]) -> dict[str, int]:
    """Our map names -> the fds libbpf created: libbpf logs a BTF or legacy map by its full name, a
    global-data map by its internal name (our ``kernel_name``)."""
    return {n: maps[m.kernel_name if m.is_global_data else m.name] for n, m in obj.maps.items()}
