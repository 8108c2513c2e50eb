"""``ElfFile``: an ELF64 little-endian file read in pure Python.

Sections by name, symbol tables (.symtab and .dynsym, GNU symbol versions attached), program headers, and
the file offset of an address or a symbol (what a uprobe is attached at).  Every table is checked against
the file's size before it is read, so a truncated or hostile file raises ``ElfError`` naming the file, the
record and what is wrong, never an IndexError or a silent short read.
"""
from __future__ import annotations

import array
from collections.abc import Iterator

from construct import ConstructError

from kestrel_raw.elf.abi import (
    EI_CLASS, EI_DATA, EI_VERSION, ELFCLASS32, ELFCLASS64, ELFDATA2LSB, ELFDATA2MSB, ELFMAG, EM_NAMES, ET_NAMES,
    ET_REL, EV_CURRENT, ELF64_R_SYM, ELF64_R_TYPE, ELF64_ST_BIND, ELF64_ST_TYPE, ELF64_ST_VISIBILITY, PT_LOAD,
    SHN_ABS, SHN_UNDEF, SHN_XINDEX, SHT_DYNSYM, SHT_GNU_verdef, SHT_GNU_verneed, SHT_GNU_versym,
    SHT_NOBITS, SHT_REL, SHT_RELA, SHT_STRTAB, SHT_SYMTAB, SHT_SYMTAB_SHNDX, VER_FLG_BASE, VER_NDX_GLOBAL,
    VERSYM_HIDDEN, VERSYM_VERSION,
)
from kestrel_raw.elf.structs import (
    EHDR_SIZE, PHDR_SIZE, REL, RELA, SHDR_SIZE, SYM, Elf64_Ehdr, Elf64_Phdr, Elf64_Shdr, Elf64_Verdaux,
    Elf64_Verdef, Elf64_Vernaux, Elf64_Verneed,
)
from kestrel_raw.elf.types import FileHeader, Relocation, Section, Segment, Symbol
from kestrel_raw.errors import ElfError

_CORRUPT = "the file is truncated or corrupt"
_SYMBOL_TABLES = (".symtab", ".dynsym")


class ElfFile:
    """A parsed ELF64 little-endian file.  ``ElfFile.load(path)`` or ``ElfFile(data, source)``."""

    def __init__(self, data: bytes, source: str = "<bytes>") -> None:
        self.source = source
        self.data = bytes(data)
        self.header = self._parse_header()
        self.sections: tuple[Section, ...] = self._parse_sections()
        self.segments: tuple[Segment, ...] = self._parse_segments()
        self._by_name: dict[str, Section] = {}
        for s in self.sections:
            self._by_name.setdefault(s.name, s)
        self._symbols: dict[str, tuple[Symbol, ...]] = {}
        self._sym_index: dict[str, dict[str, list[Symbol]]] = {}

    @classmethod
    def load(cls, path: str) -> "ElfFile":
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ElfError(f"cannot read ELF file {path}: {e.strerror}; check the path and its "
                           "permissions") from None
        return cls(data, path)

    def _error(self, what: str, remedy: str = _CORRUPT) -> ElfError:
        return ElfError(f"{self.source}: {what}; {remedy}")

    # --- headers ------------------------------------------------------------------------------------

    def _parse_header(self) -> FileHeader:
        data = self.data
        if len(data) < 4 or data[:4] != ELFMAG:
            raise self._error(f"not an ELF file (starts with {data[:4]!r}, ELF files start with {ELFMAG!r})",
                              "give the path of an executable, a shared library or an object file")
        if len(data) < EHDR_SIZE:
            raise self._error(f"ELF header truncated: the file is {len(data)} bytes, Elf64_Ehdr needs "
                              f"{EHDR_SIZE}")
        if data[EI_CLASS] == ELFCLASS32:
            raise self._error("32-bit ELF (ELFCLASS32) is not supported", "this reader handles ELF64 only")
        if data[EI_CLASS] != ELFCLASS64:
            raise self._error(f"invalid ELF class {data[EI_CLASS]} (ELFCLASS64 is {ELFCLASS64})")
        if data[EI_DATA] == ELFDATA2MSB:
            raise self._error("big-endian ELF (ELFDATA2MSB) is not supported",
                              "this reader handles little-endian ELF only")
        if data[EI_DATA] != ELFDATA2LSB:
            raise self._error(f"invalid ELF data encoding {data[EI_DATA]} (ELFDATA2LSB is {ELFDATA2LSB})")
        if data[EI_VERSION] != EV_CURRENT:
            raise self._error(f"invalid ELF version {data[EI_VERSION]} (EV_CURRENT is {EV_CURRENT})")
        h = Elf64_Ehdr.parse(data)
        self._ehdr = h
        return FileHeader(type=h.e_type, machine=h.e_machine, entry=h.e_entry, flags=h.e_flags)

    def _table(self, what: str, offset: int, count: int, entsize: int, expected: int, record) -> list:
        """``count`` records of ``record`` at ``offset``, after checking the entry size and the bounds."""
        if count == 0:
            return []
        if entsize != expected:
            raise self._error(f"{what}: entry size {entsize}, expected {expected} for ELF64")
        end = offset + count * entsize
        if end > len(self.data):
            raise self._error(f"{what}: {count} entries of {entsize} bytes at offset {offset} end at {end}, "
                              f"past the end of the file ({len(self.data)} bytes)")
        try:
            return [record.parse(self.data[offset + i * entsize:offset + (i + 1) * entsize])
                    for i in range(count)]
        except ConstructError as e:  # not reached after the bounds check; kept so no construct error leaks
            raise self._error(f"{what}: {e}") from None

    def _parse_sections(self) -> tuple[Section, ...]:
        h = self._ehdr
        shnum, shstrndx = h.e_shnum, h.e_shstrndx
        if h.e_shoff == 0:
            return ()
        if shnum == 0 or shstrndx == SHN_XINDEX:
            # Extended numbering: section 0 holds the real count (sh_size) and string-table index (sh_link).
            first = self._table("section header 0", h.e_shoff, 1, h.e_shentsize, SHDR_SIZE, Elf64_Shdr)[0]
            if shnum == 0:
                shnum = first.sh_size
            if shstrndx == SHN_XINDEX:
                shstrndx = first.sh_link
        if shnum > len(self.data) // SHDR_SIZE:
            raise self._error(f"section header table claims {shnum} sections, more than the file "
                              f"({len(self.data)} bytes) can hold")
        raw = self._table("section header table", h.e_shoff, shnum, h.e_shentsize, SHDR_SIZE, Elf64_Shdr)
        for i, s in enumerate(raw):
            if s.sh_type != SHT_NOBITS and s.sh_type != 0 and s.sh_offset + s.sh_size > len(self.data):
                raise self._error(f"section {i} ({s.sh_size} bytes at offset {s.sh_offset}) ends past the end "
                                  f"of the file ({len(self.data)} bytes)")
        if shstrndx == SHN_UNDEF:
            names = b""
        else:
            if shstrndx >= shnum:
                raise self._error(f"section-name string table index {shstrndx} is not a section "
                                  f"(there are {shnum})")
            st = raw[shstrndx]
            if st.sh_type != SHT_STRTAB:
                raise self._error(f"section-name string table (section {shstrndx}) has type {st.sh_type}, "
                                  f"not SHT_STRTAB")
            names = self.data[st.sh_offset:st.sh_offset + st.sh_size]
        out = []
        for i, s in enumerate(raw):
            name = self._cstring(names, s.sh_name, f"name of section {i}") if names else ""
            out.append(Section(i, name, s.sh_type, s.sh_flags, s.sh_addr, s.sh_offset, s.sh_size, s.sh_link,
                               s.sh_info, s.sh_addralign, s.sh_entsize))
        return tuple(out)

    def _parse_segments(self) -> tuple[Segment, ...]:
        h = self._ehdr
        if h.e_phoff == 0 or h.e_phnum == 0:
            return ()
        raw = self._table("program header table", h.e_phoff, h.e_phnum, h.e_phentsize, PHDR_SIZE, Elf64_Phdr)
        out = []
        for i, p in enumerate(raw):
            if p.p_type == PT_LOAD:
                if p.p_offset + p.p_filesz > len(self.data):
                    raise self._error(f"PT_LOAD segment {i} ({p.p_filesz} bytes at offset {p.p_offset}) ends "
                                      f"past the end of the file ({len(self.data)} bytes)")
                if p.p_filesz > p.p_memsz:
                    raise self._error(f"PT_LOAD segment {i} has p_filesz {p.p_filesz} larger than p_memsz "
                                      f"{p.p_memsz}")
            out.append(Segment(i, p.p_type, p.p_flags, p.p_offset, p.p_vaddr, p.p_paddr, p.p_filesz, p.p_memsz,
                               p.p_align))
        return tuple(out)

    def _cstring(self, table: bytes, offset: int, what: str) -> str:
        if offset >= len(table):
            raise self._error(f"{what}: string offset {offset} is past the end of its string table "
                              f"({len(table)} bytes)")
        end = table.find(b"\0", offset)
        if end < 0:
            raise self._error(f"{what}: the string at offset {offset} is not NUL-terminated")
        # Names are bytes in ELF; surrogateescape keeps any byte sequence and round-trips it.
        return table[offset:end].decode("utf-8", "surrogateescape")

    def __repr__(self) -> str:
        kind = ET_NAMES.get(self.header.type, str(self.header.type))
        machine = EM_NAMES.get(self.header.machine, str(self.header.machine))
        return f"<ElfFile {self.source} {kind} {machine}, {len(self.sections)} sections>"

    # --- sections -----------------------------------------------------------------------------------

    @property
    def is_relocatable(self) -> bool:
        return self.header.type == ET_REL

    def has_section(self, name: str) -> bool:
        return name in self._by_name

    def section(self, name: str) -> Section:
        """The (first) section called ``name``."""
        s = self._by_name.get(name)
        if s is None:
            known = ", ".join(n for n in self._by_name if n) or "none"
            raise self._error(f"no section named {name!r} (sections: {known})",
                              "check the name, or whether the file was stripped")
        return s

    def section_by_index(self, index: int) -> Section:
        if not 0 <= index < len(self.sections):
            raise self._error(f"no section {index} (there are {len(self.sections)})")
        return self.sections[index]

    def section_data(self, section: Section | str) -> bytes:
        """A section's bytes; zeros for SHT_NOBITS (.bss)."""
        s = self.section(section) if isinstance(section, str) else section
        if s.is_nobits:
            return bytes(s.size)
        return self.data[s.offset:s.offset + s.size]

    # --- symbols ------------------------------------------------------------------------------------

    def symbols(self, table: str = ".symtab") -> tuple[Symbol, ...]:
        """Every entry of ``table`` (".symtab" or ".dynsym"), index 0 (the null symbol) included.

        A file without that table (a stripped binary has no .symtab) gives ``()``.
        """
        if table not in _SYMBOL_TABLES:
            raise ValueError(f"symbol table must be one of {', '.join(_SYMBOL_TABLES)}, not {table!r}")
        cached = self._symbols.get(table)
        if cached is None:
            want = SHT_SYMTAB if table == ".symtab" else SHT_DYNSYM
            sec = next((s for s in self.sections if s.type == want), None)
            cached = self._symbols[table] = self._read_symbols(sec, table) if sec is not None else ()
        return cached

    def _read_symbols(self, sec: Section, table: str) -> tuple[Symbol, ...]:
        what = f"symbol table {sec.name!r} (section {sec.index})"
        if sec.entsize != SYM.size:
            raise self._error(f"{what}: entry size {sec.entsize}, expected {SYM.size} (Elf64_Sym)")
        if sec.size % SYM.size:
            raise self._error(f"{what}: size {sec.size} is not a multiple of {SYM.size} (Elf64_Sym)")
        if not 0 < sec.link < len(self.sections) or self.sections[sec.link].type != SHT_STRTAB:
            raise self._error(f"{what}: its string table (sh_link {sec.link}) is not a SHT_STRTAB section")
        strtab = self.section_data(self.sections[sec.link])
        xindex = self._xindex_table(sec)
        versions = self._versions(sec) if table == ".dynsym" else None
        out = []
        raw = self.data[sec.offset:sec.offset + sec.size]
        for i, (st_name, st_info, st_other, st_shndx, st_value, st_size) in enumerate(SYM.iter_unpack(raw)):
            name = self._cstring(strtab, st_name, f"{what} entry {i}") if st_name else ""
            if st_shndx == SHN_XINDEX:
                if xindex is None or i >= len(xindex):
                    raise self._error(f"{what} entry {i} ({name!r}) has st_shndx SHN_XINDEX but the file has "
                                      "no SHT_SYMTAB_SHNDX entry for it")
                st_shndx = xindex[i]
            version, default = None, True
            if "@" in name and table == ".symtab":
                # .symtab spells versions in the name: "memcpy@@GLIBC_2.14" (default) or "memcpy@GLIBC_2.2.5".
                base, _, rest = name.partition("@")
                default = rest.startswith("@")
                name, version = base, rest.lstrip("@") or None
            elif versions is not None and i < len(versions):
                version, default = versions[i]
                if version == name and st_shndx == SHN_ABS:
                    version = None  # the marker symbol that names a version (GLIBC_2.10) has none itself
            out.append(Symbol(i, name, st_value, st_size, ELF64_ST_BIND(st_info), ELF64_ST_TYPE(st_info),
                              ELF64_ST_VISIBILITY(st_other), st_shndx, table, version, default))
        return tuple(out)

    def _xindex_table(self, symtab: Section) -> list[int] | None:
        for s in self.sections:
            if s.type == SHT_SYMTAB_SHNDX and s.link == symtab.index:
                words = array.array("I")
                words.frombytes(self.section_data(s)[:s.size - s.size % 4])
                return list(words)
        return None

    def _versions(self, dynsym: Section) -> list[tuple[str | None, bool]] | None:
        """Per .dynsym entry: (version name or None, is the default version), from .gnu.version."""
        versym = next((s for s in self.sections if s.type == SHT_GNU_versym and s.link == dynsym.index), None)
        if versym is None:
            return None
        # index -> (name, defined here): a version this file defines can be the default one ("@@"); one it
        # requires from another file (verneed) is always spelled with one "@", as readelf does.
        names: dict[int, tuple[str, bool]] = {}
        for s in self.sections:
            if s.type == SHT_GNU_verdef:
                names.update((k, (v, True)) for k, v in self._verdefs(s).items())
            elif s.type == SHT_GNU_verneed:
                names.update((k, (v, False)) for k, v in self._verneeds(s).items())
        raw = self.section_data(versym)
        halves = array.array("H")
        halves.frombytes(raw[:len(raw) - len(raw) % 2])
        out: list[tuple[str | None, bool]] = []
        for i, v in enumerate(halves):
            index = v & VERSYM_VERSION
            if index <= VER_NDX_GLOBAL:
                out.append((None, True))
                continue
            found = names.get(index)
            if found is None:
                raise self._error(f".gnu.version entry {i} names version index {index}, which neither "
                                  ".gnu.version_d nor .gnu.version_r defines")
            out.append((found[0], found[1] and not v & VERSYM_HIDDEN))
        return out

    def _strtab_of(self, sec: Section) -> bytes:
        if not 0 < sec.link < len(self.sections) or self.sections[sec.link].type != SHT_STRTAB:
            raise self._error(f"section {sec.name!r}: its string table (sh_link {sec.link}) is not a SHT_STRTAB "
                              "section")
        return self.section_data(self.sections[sec.link])

    def _chain(self, sec: Section, record, next_field: str) -> Iterator[tuple[int, object]]:
        """The records of a Verdef/Verneed chain: (offset in the section, record), bounds-checked."""
        data = self.section_data(sec)
        off, seen = 0, 0
        # sh_info counts the records; a hostile chain that loops is cut there (or at what the section holds).
        limit = sec.info or len(data) // record.sizeof() + 1
        while True:
            if off + record.sizeof() > len(data):
                raise self._error(f"section {sec.name!r}: record at offset {off} runs past the section's end "
                                  f"({len(data)} bytes)")
            r = record.parse(data[off:off + record.sizeof()])
            yield off, r
            seen += 1
            step = getattr(r, next_field)
            if step == 0 or seen >= limit:
                return
            off += step

    def _aux_names(self, sec: Section, strtab: bytes, start: int, count: int, record, name_field: str,
                   next_field: str) -> Iterator[tuple[object, str]]:
        data = self.section_data(sec)
        off = start
        for _ in range(count):
            if off + record.sizeof() > len(data):
                raise self._error(f"section {sec.name!r}: auxiliary record at offset {off} runs past the "
                                  f"section's end ({len(data)} bytes)")
            aux = record.parse(data[off:off + record.sizeof()])
            yield aux, self._cstring(strtab, getattr(aux, name_field), f"section {sec.name!r} version name")
            if getattr(aux, next_field) == 0:
                return
            off += getattr(aux, next_field)

    def _verdefs(self, sec: Section) -> dict[int, str]:
        strtab = self._strtab_of(sec)
        out = {}
        for off, vd in self._chain(sec, Elf64_Verdef, "vd_next"):
            if vd.vd_flags & VER_FLG_BASE or vd.vd_cnt == 0:
                continue  # the file's own name, not a version
            for _aux, name in self._aux_names(sec, strtab, off + vd.vd_aux, 1, Elf64_Verdaux, "vda_name",
                                              "vda_next"):
                out[vd.vd_ndx & VERSYM_VERSION] = name
        return out

    def _verneeds(self, sec: Section) -> dict[int, str]:
        strtab = self._strtab_of(sec)
        out = {}
        for off, vn in self._chain(sec, Elf64_Verneed, "vn_next"):
            for aux, name in self._aux_names(sec, strtab, off + vn.vn_aux, vn.vn_cnt, Elf64_Vernaux, "vna_name",
                                             "vna_next"):
                out[aux.vna_other & VERSYM_VERSION] = name
        return out

    def _named(self, table: str) -> dict[str, list[Symbol]]:
        index = self._sym_index.get(table)
        if index is None:
            index = {}
            for sym in self.symbols(table):
                if sym.name:
                    index.setdefault(sym.name, []).append(sym)
            self._sym_index[table] = index
        return index

    def symbol(self, name: str, table: str | None = None) -> Symbol:
        """The symbol this file defines under ``name``: ``"getaddrinfo"``, ``"memcpy@GLIBC_2.2.5"`` (that
        version) or ``"memcpy@@GLIBC_2.14"`` (that version, the default one).

        .symtab is searched first, then .dynsym (a stripped file has only the latter), unless ``table``
        names one.  A plain name binds as the dynamic linker binds it: to the default version.  Several
        definitions with no default among them (two local ``static`` functions of one name) are ambiguous:
        the error lists them, ask for one by address instead.
        """
        base, at, version = name.partition("@")
        want_default = version.startswith("@")
        version = version.lstrip("@")
        tables = (table,) if table is not None else _SYMBOL_TABLES
        for t in tables:
            found = [s for s in self._named(t).get(base, ()) if s.defined]
            if at:
                found = [s for s in found if s.version == version and (not want_default or s.default_version)]
            if not found:
                continue
            if len(found) > 1:
                defaults = [s for s in found if s.default_version]
                if len(defaults) == 1:
                    return defaults[0]
                # The same address under several entries (a global and its local alias) is one symbol.
                if len({(s.value, s.shndx) for s in found}) == 1:
                    return found[0]
                listing = ", ".join(f"{s.versioned_name} at 0x{s.value:x}" for s in found)
                raise self._error(f"{base!r} is defined {len(found)} times in {t} ({listing})",
                                  "name a version (name@VERSION) or use an address")
            return found[0]
        self._raise_missing(base, name, tables)

    def _raise_missing(self, base: str, name: str, tables: tuple[str, ...]) -> None:
        present = [t for t in tables if self.symbols(t)]
        if not present:
            raise self._error(f"no symbol {name!r}: the file has no symbol table ({' or '.join(tables)})",
                              "it was stripped; use an address")
        undefined = [s for t in present for s in self._named(t).get(base, ()) if not s.defined]
        if undefined:
            raise self._error(f"{base!r} is only referenced here (undefined in {undefined[0].table}, "
                              f"{undefined[0].versioned_name}), not defined",
                              "give the library that defines it (ldd lists them)")
        versions = sorted({s.versioned_name for t in present for s in self._named(t).get(base, ())})
        if versions:
            raise self._error(f"no symbol {name!r}; this file has {', '.join(versions)}",
                              "name one of those versions")
        raise self._error(f"no symbol {name!r} in {' or '.join(present)}", "check the name")

    # --- addresses ----------------------------------------------------------------------------------

    def load_segments(self) -> tuple[Segment, ...]:
        return tuple(s for s in self.segments if s.type == PT_LOAD)

    def file_offset(self, vaddr: int) -> int:
        """The file offset at which the byte loaded at ``vaddr`` is stored, through its PT_LOAD segment.

        That is what the kernel's uprobe PMU takes (``uprobe_path`` + ``probe_offset``): for an executable
        and a shared library alike, ``vaddr - p_vaddr + p_offset`` of the segment that maps it.
        """
        loads = self.load_segments()
        if not loads:
            what = "a relocatable object (ET_REL)" if self.is_relocatable else "this file"
            raise self._error(f"{what} has no PT_LOAD segment, so address 0x{vaddr:x} has no file offset",
                              "give an executable or a shared library")
        for seg in loads:
            if seg.contains(vaddr):
                return vaddr - seg.vaddr + seg.offset
        for seg in loads:
            if seg.vaddr <= vaddr < seg.vaddr + seg.memsz:
                raise self._error(f"address 0x{vaddr:x} is in the zero-filled part of PT_LOAD segment "
                                  f"{seg.index} (0x{seg.vaddr + seg.filesz:x}..0x{seg.vaddr + seg.memsz:x}, "
                                  ".bss): it has no bytes in the file", "probe code, not data")
        spans = ", ".join(f"0x{s.vaddr:x}..0x{s.vaddr + s.filesz:x}" for s in loads)
        raise self._error(f"address 0x{vaddr:x} is in no PT_LOAD segment ({spans})", "check the address")

    def symbol_file_offset(self, name: str, table: str | None = None) -> int:
        """The file offset of the code or data a symbol names: ``file_offset(symbol(name).value)``."""
        sym = self.symbol(name, table)
        if not sym.has_address:
            raise self._error(f"symbol {sym.versioned_name!r} ({sym.table}) is absolute or common, not an "
                              "address in a section", "probe a function")
        return self.file_offset(sym.value)

    # --- relocations --------------------------------------------------------------------------------

    def relocations(self, section: Section | str) -> tuple[Relocation, ...]:
        """The entries of a SHT_REL or SHT_RELA section."""
        s = self.section(section) if isinstance(section, str) else section
        if s.type == SHT_REL:
            rec = REL
        elif s.type == SHT_RELA:
            rec = RELA
        else:
            raise self._error(f"section {s.name!r} is not a relocation section (type {s.type})")
        if s.entsize not in (0, rec.size) or s.size % rec.size:
            raise self._error(f"relocation section {s.name!r}: entry size {s.entsize} and size {s.size} do "
                              f"not fit {rec.size}-byte records")
        out = []
        for fields in rec.iter_unpack(self.section_data(s)):
            info = fields[1]
            out.append(Relocation(fields[0], ELF64_R_SYM(info), ELF64_R_TYPE(info),
                                  fields[2] if len(fields) > 2 else 0))
        return tuple(out)
