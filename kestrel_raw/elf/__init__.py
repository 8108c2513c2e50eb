"""ELF files in pure Python: the reader uprobes need and the BPF object loader builds on.

``ElfFile.load(path)`` / ``ElfFile(data, source)``: ``sections``, ``section(name)``, ``section_data``,
``symbols(".symtab" | ".dynsym")`` (GNU symbol versions attached), ``symbol(name)`` (``name``,
``name@VERSION``, ``name@@VERSION``), ``segments``, ``file_offset(vaddr)`` and ``symbol_file_offset(name)``
(the offset a uprobe is attached at), ``relocations(section)``.  ELF64 little-endian only; anything else, or a
truncated or hostile file, raises ``ElfError`` naming the file and what is wrong.
"""
from kestrel_raw.elf.reader import ElfFile
from kestrel_raw.elf.types import FileHeader, Relocation, Section, Segment, Symbol
from kestrel_raw.errors import ElfError

__all__ = ["ElfError", "ElfFile", "FileHeader", "Relocation", "Section", "Segment", "Symbol"]
