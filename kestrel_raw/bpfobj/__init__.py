"""BPF ELF objects (clang -target bpf) in pure Python: programs, maps, relocations, CO-RE.

``BpfObject.load(path)`` reads an object: ``programs`` and ``subprograms`` (``ProgramDef``), ``maps``
(``MapDef``: ``.maps``, legacy ``maps`` and global data), ``license``, ``kern_version``, ``btf``, ``btf_ext``.
``obj.link(target_btf)`` applies CO-RE against the target BTF, appends the subprograms each program calls and
marks its map references: ``{name: LinkedProgram}``, each with final instruction bytes whose map fds the
loader fills in (``with_fds``).  Errors are ``BpfObjectError`` and ``CoreRelocationError``, naming the object,
the section and the instruction.
"""
from kestrel_raw.bpfobj.maps import MapDef, internal_map_name
from kestrel_raw.bpfobj.object import (
    BpfObject, CoreApplied, FuncInfoRec, LineInfoRec, LinkedProgram, MapRef, ProgramDef, Reloc,
)
from kestrel_raw.bpfobj.sections import SectionKind, parse_section
from kestrel_raw.errors import BpfObjectError, CoreRelocationError

__all__ = [
    "BpfObject", "BpfObjectError", "CoreApplied", "CoreRelocationError", "FuncInfoRec", "LineInfoRec",
    "LinkedProgram", "MapDef", "MapRef", "ProgramDef", "Reloc", "SectionKind", "internal_map_name",
    "parse_section",
]
