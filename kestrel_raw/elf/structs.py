"""The ELF64 little-endian records as declarative construct ``Struct`` values, named as <elf.h> names them.

Each record is declared once here.  Headers are parsed with construct; tables of thousands of fixed-size
records (symbols, relocations) are decoded with a ``struct.Struct`` derived from the same declaration
(``packed_format``), because construct spends ~25 us per record and libc has thousands.
"""
from __future__ import annotations

import struct

from construct import Bytes, Int16ul, Int32ul, Int64sl, Int64ul, Int8ul, Struct

Elf64_Ehdr = Struct(
    "e_ident" / Bytes(16),
    "e_type" / Int16ul,
    "e_machine" / Int16ul,
    "e_version" / Int32ul,
    "e_entry" / Int64ul,
    "e_phoff" / Int64ul,
    "e_shoff" / Int64ul,
    "e_flags" / Int32ul,
    "e_ehsize" / Int16ul,
    "e_phentsize" / Int16ul,
    "e_phnum" / Int16ul,
    "e_shentsize" / Int16ul,
    "e_shnum" / Int16ul,
    "e_shstrndx" / Int16ul,
)

Elf64_Shdr = Struct(
    "sh_name" / Int32ul,
    "sh_type" / Int32ul,
    "sh_flags" / Int64ul,
    "sh_addr" / Int64ul,
    "sh_offset" / Int64ul,
    "sh_size" / Int64ul,
    "sh_link" / Int32ul,
    "sh_info" / Int32ul,
    "sh_addralign" / Int64ul,
    "sh_entsize" / Int64ul,
)

Elf64_Phdr = Struct(
    "p_type" / Int32ul,
    "p_flags" / Int32ul,
    "p_offset" / Int64ul,
    "p_vaddr" / Int64ul,
    "p_paddr" / Int64ul,
    "p_filesz" / Int64ul,
    "p_memsz" / Int64ul,
    "p_align" / Int64ul,
)

Elf64_Sym = Struct(
    "st_name" / Int32ul,
    "st_info" / Int8ul,
    "st_other" / Int8ul,
    "st_shndx" / Int16ul,
    "st_value" / Int64ul,
    "st_size" / Int64ul,
)

Elf64_Rel = Struct(
    "r_offset" / Int64ul,
    "r_info" / Int64ul,
)

Elf64_Rela = Struct(
    "r_offset" / Int64ul,
    "r_info" / Int64ul,
    "r_addend" / Int64sl,
)

# GNU symbol versioning: .gnu.version_d holds Verdef records, each followed by Verdaux records;
# .gnu.version_r holds Verneed records, each followed by Vernaux records.  All chained by byte offsets.
Elf64_Verdef = Struct(
    "vd_version" / Int16ul,
    "vd_flags" / Int16ul,
    "vd_ndx" / Int16ul,
    "vd_cnt" / Int16ul,
    "vd_hash" / Int32ul,
    "vd_aux" / Int32ul,
    "vd_next" / Int32ul,
)
Elf64_Verdaux = Struct(
    "vda_name" / Int32ul,
    "vda_next" / Int32ul,
)
Elf64_Verneed = Struct(
    "vn_version" / Int16ul,
    "vn_cnt" / Int16ul,
    "vn_file" / Int32ul,
    "vn_aux" / Int32ul,
    "vn_next" / Int32ul,
)
Elf64_Vernaux = Struct(
    "vna_hash" / Int32ul,
    "vna_flags" / Int16ul,
    "vna_other" / Int16ul,
    "vna_name" / Int32ul,
    "vna_next" / Int32ul,
)


def packed_format(record: Struct) -> struct.Struct:
    """The ``struct.Struct`` that decodes ``record`` (a Struct of fixed-size little-endian integers)."""
    codes = []
    for sub in record.subcons:
        fmt = getattr(sub.subcon, "fmtstr", None)
        if fmt is None or fmt[0] != "<":
            raise TypeError(f"{sub.name} is not a little-endian integer field")
        codes.append(fmt[1:])
    packed = struct.Struct("<" + "".join(codes))
    assert packed.size == record.sizeof()
    return packed


SYM = packed_format(Elf64_Sym)
REL = packed_format(Elf64_Rel)
RELA = packed_format(Elf64_Rela)
EHDR_SIZE = Elf64_Ehdr.sizeof()
SHDR_SIZE = Elf64_Shdr.sizeof()
PHDR_SIZE = Elf64_Phdr.sizeof()
