"""Map definitions of a BPF object: BTF-defined maps (``.maps``), legacy ``struct bpf_map_def`` (``maps``) and
the global-data sections (``.rodata``, ``.data``, ``.bss`` and their ``.name`` variants) as one-element array
maps, each read as libbpf reads it (``parse_btf_map_def``, ``bpf_object__init_user_maps``,
``bpf_object__init_internal_map``).
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from kestrel_raw.btf import BTF
from kestrel_raw.btf.kinds import BTF_KIND_ARRAY, BTF_KIND_DATASEC, BTF_KIND_PTR, BTF_KIND_STRUCT, BTF_KIND_VAR
from kestrel_raw.elf import ElfFile, Section
from kestrel_raw.errors import BpfObjectError, BTFError
from kestrel_raw.kernel.uapi import BPF_F_MMAPABLE, BPF_F_RDONLY_PROG, BPF_MAP_TYPE_ARRAY, BPF_OBJ_NAME_LEN

# Where a map definition came from.
BTF_MAPS_SEC = ".maps"
LEGACY_MAPS_SEC = "maps"
# sizeof(struct bpf_map_def): type, key_size, value_size, max_entries, map_flags (u32 each).
BPF_MAP_DEF_SIZE = 20
# libbpf's enum libbpf_pin_type: LIBBPF_PIN_NONE 0, LIBBPF_PIN_BY_NAME 1.
LIBBPF_PIN_NONE = 0


@dataclass(frozen=True, slots=True)
class MapDef:
    """One map the object defines.

    ``name`` is how instructions refer to it: the variable's name for ``.maps`` and ``maps`` definitions,
    the section's name for global data (".rodata", ".data", ".bss", ".rodata.str1.1").  ``kernel_name`` is
    the name libbpf gives the map in the kernel (at most 15 characters: "objname.rodata").  ``initial`` is a
    global-data map's value before load (zeros for .bss); ``frozen`` says the loader freezes it after writing
    it (.rodata: read-only for programs and, once frozen, for user space).  ``notes`` are what the loader
    ignored, in words.
    """
    name: str
    kernel_name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    map_flags: int = 0
    numa_node: int = 0
    map_extra: int = 0
    key_type_id: int = 0         # BTF ids in the object's .BTF (0: not given)
    value_type_id: int = 0
    pinning: int = LIBBPF_PIN_NONE
    section: str = ""
    section_index: int = 0
    offset: int = 0              # of the definition (or the data) in its section
    initial: bytes | None = None
    frozen: bool = False
    notes: tuple[str, ...] = ()

    @property
    def is_global_data(self) -> bool:
        return self.initial is not None


def data_section_kind(sec: Section) -> str | None:
    """"rodata", "data" or "bss" for a section that becomes a global-data map; None otherwise."""
    name = sec.name
    if name == ".rodata" or name.startswith(".rodata."):
        return "rodata"
    if name == ".data" or name.startswith(".data."):
        return "data"
    if name == ".bss" or name.startswith(".bss."):
        return "bss"
    return None


def internal_map_name(obj_name: str, section: str) -> str:
    """libbpf's internal_map_name: as much of the object's name as fits before the section's (7 characters
    kept for it even when shorter: "myobject.bss" -> "myobject.bss"), none when the section name has a
    second dot (".rodata.str1.1"); characters the kernel refuses become '_'."""
    sfx_len = max(7, len(section))
    if "." in section[1:] or sfx_len >= BPF_OBJ_NAME_LEN:
        pfx_len = 0
    else:
        pfx_len = min(BPF_OBJ_NAME_LEN - sfx_len - 1, len(obj_name))
    name = (obj_name[:pfx_len] + section[:sfx_len])[:BPF_OBJ_NAME_LEN - 1]
    return re.sub(r"[^A-Za-z0-9_.]", "_", name)


def data_maps(elf: ElfFile, obj_name: str) -> list[MapDef]:
    """One array map per non-empty global-data section, its value the section's bytes."""
    out = []
    for sec in elf.sections:
        kind = data_section_kind(sec)
        if kind is None or sec.size == 0:
            continue  # an empty section would be a map of value_size 0, which the kernel refuses; nothing uses it
        flags = BPF_F_MMAPABLE | (BPF_F_RDONLY_PROG if kind == "rodata" else 0)
        out.append(MapDef(name=sec.name, kernel_name=internal_map_name(obj_name, sec.name), type=BPF_MAP_TYPE_ARRAY,
                          key_size=4, value_size=sec.size, max_entries=1, map_flags=flags, section=sec.name,
                          section_index=sec.index, offset=0, initial=elf.section_data(sec),
                          frozen=kind == "rodata"))
    return out


def legacy_maps(elf: ElfFile, source: str) -> list[MapDef]:
    """The ``struct bpf_map_def`` values of the ``maps`` section, named by their symbols."""
    if not elf.has_section(LEGACY_MAPS_SEC):
        return []
    sec = elf.section(LEGACY_MAPS_SEC)
    data = elf.section_data(sec)
    syms = sorted((s for s in elf.symbols() if s.shndx == sec.index and s.name and not s.is_section),
                  key=lambda s: s.value)
    if not syms:
        if sec.size:
            raise BpfObjectError(f"{source}: section 'maps' holds {sec.size} bytes but no symbol names a map "
                                 "in it; rebuild the object without stripping its symbols")
        return []
    if sec.size % len(syms):
        raise BpfObjectError(f"{source}: section 'maps' is {sec.size} bytes for {len(syms)} maps, not a whole "
                             "number of bytes per definition")
    def_size = sec.size // len(syms)
    out = []
    for s in syms:
        raw = data[s.value:s.value + def_size]
        if s.value + def_size > len(data):
            raise BpfObjectError(f"{source}: legacy map {s.name!r} at offset {s.value} runs past the 'maps' "
                                 "section")
        if len(raw) > BPF_MAP_DEF_SIZE and any(raw[BPF_MAP_DEF_SIZE:]):
            raise BpfObjectError(f"{source}: legacy map {s.name!r}: its definition has {def_size} bytes and the "
                                 f"bytes past struct bpf_map_def's {BPF_MAP_DEF_SIZE} are not zero (fields this "
                                 "loader does not know)")
        fields = struct.unpack("<5I", raw[:BPF_MAP_DEF_SIZE].ljust(BPF_MAP_DEF_SIZE, b"\0"))
        out.append(MapDef(name=s.name, kernel_name=s.name[:BPF_OBJ_NAME_LEN - 1], type=fields[0],
                          key_size=fields[1], value_size=fields[2], max_entries=fields[3], map_flags=fields[4],
                          section=sec.name, section_index=sec.index, offset=s.value))
    return out


_INT_ATTRS = ("type", "max_entries", "map_flags", "numa_node", "key_size", "value_size", "pinning", "map_extra")


def btf_maps(elf: ElfFile, btf: BTF | None, source: str) -> list[MapDef]:
    """The BTF-defined maps of ``.maps``: each variable of the ``.maps`` DATASEC is a struct whose members
    encode the attributes (``__uint(name, N)`` is ``int (*name)[N]``, ``__type(name, T)`` is ``T *name``)."""
    if not elf.has_section(BTF_MAPS_SEC):
        return []
    sec = elf.section(BTF_MAPS_SEC)
    if btf is None:
        raise BpfObjectError(f"{source}: section '.maps' needs the object's .BTF to be read, and the object has "
                             "none; build it with clang -g")
    datasecs = [t for t in btf.find_all(BTF_MAPS_SEC) if t.kind == BTF_KIND_DATASEC]
    if not datasecs:
        raise BpfObjectError(f"{source}: the .BTF has no DATASEC '.maps' describing section '.maps'")
    symbols = {s.name: s for s in elf.symbols() if s.shndx == sec.index and s.name}
    out = []
    for vi in datasecs[0].secinfos:
        var = btf.type_by_id(vi.type)
        if var.kind != BTF_KIND_VAR:
            raise BpfObjectError(f"{source}: '.maps' entry {var} is not a variable")
        name = var.name
        sym = symbols.get(name)
        if sym is None:
            raise BpfObjectError(f"{source}: map {name!r} of '.maps' has no symbol in the ELF symbol table")
        # clang writes 0 as every global variable's DATASEC offset; the symbol has the real one (libbpf's
        # btf_fixup_datasec does the same).
        offset = sym.value
        if offset + vi.size > sec.size:
            raise BpfObjectError(f"{source}: map {name!r} at offset {offset} + {vi.size} runs past '.maps' "
                                 f"({sec.size} bytes)")
        out.append(_parse_btf_map(btf, var, name, sec, offset, source))
    return out


def _parse_btf_map(btf: BTF, var, name: str, sec: Section, offset: int, source: str) -> MapDef:
    def bad(why: str) -> BpfObjectError:
        return BpfObjectError(f"{source}: map {name!r} in '.maps': {why}")

    def_t = btf.resolve(var.type)
    if def_t.kind != BTF_KIND_STRUCT:
        raise bad(f"its definition is a {def_t.kind_name.lower()}, not a struct")
    attrs: dict[str, int] = {}
    key_tid = value_tid = 0
    key_sz = value_sz = None
    notes = []
    for m in def_t.members:
        if m.name in _INT_ATTRS:
            pt = btf.resolve(m.type)
            if pt.kind != BTF_KIND_PTR:
                raise bad(f"attribute {m.name!r} is a {pt.kind_name.lower()}, expected the pointer to an array "
                          "that __uint() declares")
            arr = btf.resolve(pt.type)
            if arr.kind != BTF_KIND_ARRAY:
                raise bad(f"attribute {m.name!r} points to a {arr.kind_name.lower()}, expected the array that "
                          "__uint() declares")
            attrs[m.name] = arr.array.nelems
        elif m.name in ("key", "value"):
            pt = btf.resolve(m.type)
            if pt.kind != BTF_KIND_PTR:
                raise bad(f"{m.name!r} is a {pt.kind_name.lower()}, expected the pointer that __type() declares")
            try:
                size = btf.size_of(pt.type)
            except BTFError as e:
                raise bad(f"cannot size its {m.name} type: {e}") from None
            if m.name == "key":
                key_tid, key_sz = pt.type, size
            else:
                value_tid, value_sz = pt.type, size
        elif m.name == "values":
            raise bad("initial values (.values, for map-in-map and program arrays) are not supported")
        else:
            raise bad(f"unknown attribute {m.name!r} (known: {', '.join(_INT_ATTRS + ('key', 'value'))})")
    if "type" not in attrs:
        raise bad("it has no type (__uint(type, BPF_MAP_TYPE_...))")
    for which, from_type in (("key", key_sz), ("value", value_sz)):
        given = attrs.get(f"{which}_size")
        if from_type is not None and given is not None and given != from_type:
            raise bad(f"{which}_size {given} conflicts with the size of its {which} type ({from_type})")
    pinning = attrs.get("pinning", LIBBPF_PIN_NONE)
    if pinning != LIBBPF_PIN_NONE:
        notes.append(f"pinning {pinning} ignored: kestrel-raw creates every map afresh and pins nothing")
    return MapDef(name=name, kernel_name=name[:BPF_OBJ_NAME_LEN - 1], type=attrs["type"],
                  key_size=key_sz if key_sz is not None else attrs.get("key_size", 0),
                  value_size=value_sz if value_sz is not None else attrs.get("value_size", 0),
                  max_entries=attrs.get("max_entries", 0), map_flags=attrs.get("map_flags", 0),
                  numa_node=attrs.get("numa_node", 0), map_extra=attrs.get("map_extra", 0), key_type_id=key_tid,
                  value_type_id=value_tid, pinning=pinning, section=sec.name, section_index=sec.index,
                  offset=offset, notes=tuple(notes))
