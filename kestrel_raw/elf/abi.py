"""ELF constants, named as <elf.h> names them (the System V gABI, plus the BPF relocation types).

Only the values this reader uses or prints.  Everything else in ``kestrel_raw.elf`` takes its numbers
from here.
"""
from __future__ import annotations

# e_ident
ELFMAG = b"\x7fELF"
EI_CLASS = 4
EI_DATA = 5
EI_VERSION = 6
EI_NIDENT = 16
ELFCLASS32 = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
ELFDATA2MSB = 2
EV_CURRENT = 1

# e_type
ET_NONE = 0
ET_REL = 1
ET_EXEC = 2
ET_DYN = 3
ET_CORE = 4
ET_NAMES = {ET_NONE: "ET_NONE", ET_REL: "ET_REL", ET_EXEC: "ET_EXEC", ET_DYN: "ET_DYN", ET_CORE: "ET_CORE"}

# e_machine (the ones worth naming in a message)
EM_386 = 3
EM_X86_64 = 62
EM_AARCH64 = 183
EM_RISCV = 243
EM_BPF = 247
EM_NAMES = {EM_386: "EM_386", EM_X86_64: "EM_X86_64", EM_AARCH64: "EM_AARCH64", EM_RISCV: "EM_RISCV",
            EM_BPF: "EM_BPF"}

# Special section indexes
SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00
SHN_ABS = 0xFFF1
SHN_COMMON = 0xFFF2
SHN_XINDEX = 0xFFFF

# sh_type
SHT_NULL = 0
SHT_PROGBITS = 1
SHT_SYMTAB = 2
SHT_STRTAB = 3
SHT_RELA = 4
SHT_HASH = 5
SHT_DYNAMIC = 6
SHT_NOTE = 7
SHT_NOBITS = 8
SHT_REL = 9
SHT_DYNSYM = 11
SHT_SYMTAB_SHNDX = 18
SHT_GNU_verdef = 0x6FFFFFFD
SHT_GNU_verneed = 0x6FFFFFFE
SHT_GNU_versym = 0x6FFFFFFF

# sh_flags
SHF_WRITE = 0x1
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4

# p_type, p_flags
PT_NULL = 0
PT_LOAD = 1
PT_DYNAMIC = 2
PT_INTERP = 3
PT_NOTE = 4
PT_PHDR = 6
PF_X = 0x1
PF_W = 0x2
PF_R = 0x4

# st_info: binding in the high nibble, type in the low one
STB_LOCAL = 0
STB_GLOBAL = 1
STB_WEAK = 2
STT_NOTYPE = 0
STT_OBJECT = 1
STT_FUNC = 2
STT_SECTION = 3
STT_FILE = 4
STT_COMMON = 5
STT_TLS = 6
STT_GNU_IFUNC = 10
# st_other: visibility in the low 2 bits
STV_DEFAULT = 0
STV_INTERNAL = 1
STV_HIDDEN = 2
STV_PROTECTED = 3


def ELF64_ST_BIND(info: int) -> int:  # noqa: N802 (the C macro's name)
    return info >> 4


def ELF64_ST_TYPE(info: int) -> int:  # noqa: N802
    return info & 0xF


def ELF64_ST_VISIBILITY(other: int) -> int:  # noqa: N802
    return other & 0x3


def ELF64_R_SYM(info: int) -> int:  # noqa: N802
    return info >> 32


def ELF64_R_TYPE(info: int) -> int:  # noqa: N802
    return info & 0xFFFFFFFF


# GNU symbol versioning (.gnu.version holds one Elf64_Versym per .dynsym entry)
VER_NDX_LOCAL = 0
VER_NDX_GLOBAL = 1
VERSYM_HIDDEN = 0x8000   # the symbol's version is not the default one ("name@V", not "name@@V")
VERSYM_VERSION = 0x7FFF
VER_FLG_BASE = 0x1       # a Verdef that names the file itself, not a version

# Relocation types of EM_BPF objects (llvm's BPF backend; libbpf's bpf_program__record_reloc reads them)
R_BPF_NONE = 0
R_BPF_64_64 = 1          # ld_imm64: a map or global variable's address
R_BPF_64_ABS64 = 2       # data: 64-bit absolute (in .BTF, .BTF.ext, .maps)
R_BPF_64_ABS32 = 3       # data: 32-bit absolute
R_BPF_64_NODYLD32 = 4    # .BTF / .BTF.ext section offsets
R_BPF_64_32 = 10         # call: a bpf-to-bpf call's target
