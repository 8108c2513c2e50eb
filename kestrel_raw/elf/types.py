"""What an ELF file holds, as immutable values: the file header, sections, segments, symbols, relocations.

Callers never see construct's containers: ``ElfFile`` converts each record at the boundary.
"""
from __future__ import annotations

from dataclasses import dataclass

from kestrel_raw.elf.abi import (
    PF_R, PF_W, PF_X, SHF_EXECINSTR, SHN_ABS, SHN_COMMON, SHN_UNDEF, SHT_NOBITS, STB_GLOBAL, STB_LOCAL, STB_WEAK,
    STT_FUNC, STT_GNU_IFUNC, STT_OBJECT, STT_SECTION,
)


@dataclass(frozen=True, slots=True)
class FileHeader:
    """The fields of Elf64_Ehdr a caller can use (the rest only locate tables)."""
    type: int      # ET_REL, ET_EXEC, ET_DYN...
    machine: int   # EM_X86_64, EM_BPF...
    entry: int
    flags: int


@dataclass(frozen=True, slots=True)
class Section:
    """One section header, with its name read from the section-name string table."""
    index: int
    name: str
    type: int       # SHT_*
    flags: int      # SHF_*
    addr: int       # virtual address when loaded (0 in a relocatable object)
    offset: int     # in the file
    size: int
    link: int
    info: int
    addralign: int
    entsize: int

    @property
    def is_nobits(self) -> bool:
        """True for a section that takes no bytes in the file (.bss): its contents are zeros."""
        return self.type == SHT_NOBITS

    @property
    def is_exec(self) -> bool:
        return bool(self.flags & SHF_EXECINSTR)


@dataclass(frozen=True, slots=True)
class Segment:
    """One program header (Elf64_Phdr)."""
    index: int
    type: int       # PT_LOAD, PT_DYNAMIC...
    flags: int      # PF_R | PF_W | PF_X
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    align: int

    def contains(self, vaddr: int) -> bool:
        """Whether ``vaddr`` lies in the bytes this segment maps from the file (not its zero-filled tail)."""
        return self.vaddr <= vaddr < self.vaddr + self.filesz

    @property
    def perms(self) -> str:
        """``r-x``-style flags, as /proc/PID/maps shows a mapping."""
        return ("r" if self.flags & PF_R else "-") + ("w" if self.flags & PF_W else "-") + \
            ("x" if self.flags & PF_X else "-")


@dataclass(frozen=True, slots=True)
class Symbol:
    """One Elf64_Sym of a symbol table, its name read and its version (GNU versioning) attached.

    ``name`` never carries a version: ``memcpy@@GLIBC_2.14`` in .symtab and ``memcpy`` with version index
    ``GLIBC_2.14`` in .dynsym both give ``name="memcpy"``, ``version="GLIBC_2.14"``.  ``default_version`` is
    True for the version a plain reference binds to (``@@``) and for an unversioned symbol; False for an
    older, hidden version (``@``) and for a version the file requires from another (.gnu.version_r:
    ``puts@GLIBC_2.2.5``, or a copy-relocated ``stdout@GLIBC_2.2.5``), spelled as readelf spells them.
    """
    index: int          # in its table
    name: str
    value: int          # st_value: an address (executables, shared objects) or an offset in its section
    size: int
    bind: int           # STB_*
    type: int           # STT_*
    visibility: int     # STV_*
    shndx: int          # section index, SHN_XINDEX already resolved; SHN_UNDEF, SHN_ABS, SHN_COMMON
    table: str          # ".symtab" or ".dynsym"
    version: str | None = None
    default_version: bool = True

    @property
    def defined(self) -> bool:
        """True when this file defines the symbol (it is not a reference to another file's)."""
        return self.shndx != SHN_UNDEF

    @property
    def is_function(self) -> bool:
        return self.type in (STT_FUNC, STT_GNU_IFUNC)

    @property
    def is_object(self) -> bool:
        return self.type == STT_OBJECT

    @property
    def is_section(self) -> bool:
        return self.type == STT_SECTION

    @property
    def is_global(self) -> bool:
        return self.bind in (STB_GLOBAL, STB_WEAK)

    @property
    def is_local(self) -> bool:
        return self.bind == STB_LOCAL

    @property
    def has_address(self) -> bool:
        """False for undefined, absolute and common symbols: their value is not an address in a section."""
        return self.shndx not in (SHN_UNDEF, SHN_ABS, SHN_COMMON)

    @property
    def versioned_name(self) -> str:
        """``name@@VERSION``, ``name@VERSION`` or ``name``: the spelling readelf and the linker use."""
        if self.version is None:
            return self.name
        return f"{self.name}{'@@' if self.default_version else '@'}{self.version}"


@dataclass(frozen=True, slots=True)
class Relocation:
    """One Elf64_Rel or Elf64_Rela entry, its symbol index and type split out of r_info."""
    offset: int     # r_offset: byte offset in the section the relocation applies to
    symbol: int     # index in the linked symbol table
    type: int       # R_<arch>_* (R_BPF_64_64...)
    addend: int = 0  # Rela only; a Rel's addend is in the bytes at ``offset``
