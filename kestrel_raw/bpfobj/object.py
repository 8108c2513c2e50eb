"""``BpfObject``: a clang-built BPF ELF object (``clang -target bpf -g -O2 -c``) read in pure Python.

Reading (``BpfObject.load(path)``) finds what the object holds: its programs (every function symbol of an
executable section but ``.text``, several per section allowed), its subprograms (the functions of
``.text``), its maps (``.maps``, legacy ``maps``, global data), ``license``, ``version``, ``.BTF`` and
``.BTF.ext``, and each program's relocations (map references, global-data references, bpf-to-bpf calls).

Linking (``obj.link(target_btf)``) does what libbpf's ``bpf_object__relocate`` does, in the same order:

1. CO-RE: every ``.BTF.ext`` relocation is resolved against the target BTF (the running kernel's) and
   written into its instruction (``corepatch``), in each program's and subprogram's own copy;
2. calls: each main program gets the subprograms it calls (transitively) appended in first-call order, and
   every call's offset is fixed for that program's layout;
3. data: every ld_imm64 that loads a map becomes ``BPF_PSEUDO_MAP_FD`` and every global-data reference
   ``BPF_PSEUDO_MAP_VALUE`` with its offset in the second half; the fd half is left 0 and named by a
   ``MapRef``, for the loader to fill in (``LinkedProgram.with_fds``).

Func and line info are rebased the same way, so each program carries the records BPF_PROG_LOAD takes.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from kestrel_raw.asm import opcode as op
from kestrel_raw.bpfobj import corepatch
from kestrel_raw.bpfobj.externs import (
    EXT_KCFG, KCONFIG_SEC, ExternValues, HostFacts, KernelFacts, collect_externs, kconfig_size, resolve_externs,
)
from kestrel_raw.bpfobj.maps import (
    BTF_MAPS_SEC, LEGACY_MAPS_SEC, MapDef, btf_maps, data_maps, data_section_kind, internal_map_name,
    legacy_maps,
)
from kestrel_raw.bpfobj.sections import SectionKind, parse_section
from kestrel_raw.btf import BTF
from kestrel_raw.btf.core import CoreResolver, CoreResult
from kestrel_raw.btf.ext import BTFExt
from kestrel_raw.btf.kinds import CORE_RELO_KIND_NAMES
from kestrel_raw.elf import ElfFile, Section, Symbol
from kestrel_raw.elf.abi import EM_BPF, ET_REL, R_BPF_64_32, R_BPF_64_64, SHT_REL, STB_GLOBAL, STT_SECTION
from kestrel_raw.errors import BpfObjectError, BTFError, CoreRelocationError
from kestrel_raw.kernel.uapi import BPF_F_MMAPABLE, BPF_F_RDONLY_PROG, BPF_MAP_TYPE_ARRAY

INSN_SIZE = 8
_INSN = struct.Struct("<BBhi")
TEXT_SEC = ".text"

# What a relocation of a program section refers to (libbpf's enum reloc_type, the ones kept here).
RELO_CALL = "call"             # a bpf-to-bpf call to a subprogram in .text
RELO_SUBPROG_ADDR = "subprog"  # ld_imm64 of a subprogram's address (a callback)
RELO_MAP = "map"               # ld_imm64 of a map (.maps or maps)
RELO_DATA = "data"             # ld_imm64 of an address in a global-data section
RELO_EXTERN_VAR = "extern_var"    # ld_imm64 of a __kconfig or __ksym extern variable
RELO_EXTERN_FUNC = "extern_func"  # a call of a __ksym extern function (a kfunc)


@dataclass(frozen=True, slots=True)
class Reloc:
    """One relocation of a program, recorded as libbpf's ``bpf_program__record_reloc`` does."""
    insn: int        # slot index in the program
    type: str        # RELO_*
    symbol: str      # the relocation's symbol, for messages
    map: str = ""    # RELO_MAP, RELO_DATA: the map's name
    sym_off: int = 0  # RELO_CALL, RELO_SUBPROG_ADDR, RELO_DATA: the symbol's value (bytes in its section)


@dataclass(slots=True)
class ProgramDef:
    """A function of the object: a program (``kind`` from its section name) or a .text subprogram."""
    name: str
    section: str
    section_index: int
    offset: int                  # bytes from the start of its section
    insns: bytes
    section_kind: SectionKind | None
    is_global: bool
    relocs: list[Reloc] = field(default_factory=list)

    @property
    def insn_offset(self) -> int:
        """First slot of this function in its section (libbpf's sec_insn_off)."""
        return self.offset // INSN_SIZE

    @property
    def slots(self) -> int:
        return len(self.insns) // INSN_SIZE

    @property
    def kind(self) -> str | None:
        return self.section_kind.kind if self.section_kind else None

    @property
    def target(self) -> str:
        return self.section_kind.target if self.section_kind else ""


@dataclass(frozen=True, slots=True)
class MapRef:
    """An ld_imm64 at ``insn`` (slot) that loads map ``map``: its fd goes into the low imm (src_reg says
    BPF_PSEUDO_MAP_FD or BPF_PSEUDO_MAP_VALUE; for the latter the second slot's imm holds ``offset``)."""
    insn: int
    map: str
    pseudo: int
    offset: int = 0


@dataclass(frozen=True, slots=True)
class CoreApplied:
    """A CO-RE relocation as applied: where (libbpf's numbering: the record's index in its section and the
    instruction's slot in the function that holds it), what, and the result."""
    section: str
    relo_index: int
    function: str
    insn: int
    kind: str
    access: str
    local_spec: str
    target_spec: str | None
    result: CoreResult
    patch: tuple[str, ...]   # what was done, in libbpf's debug-log words

    @property
    def poisoned(self) -> bool:
        """True when the instruction was replaced by an invalid helper call: no target (or a field whose
        size changed in a way a load cannot follow)."""
        return any("w/ invalid insn" in p for p in self.patch)

    @property
    def log(self) -> tuple[str, ...]:
        """The lines libbpf's debug log has for this relocation's patch: "prog 'p': relo #3: patched ..."."""
        return tuple(f"prog '{self.function}': relo #{self.relo_index}: {p}" for p in self.patch)


@dataclass(frozen=True, slots=True)
class FuncInfoRec:
    insn: int        # slot in the linked program
    type_id: int


@dataclass(frozen=True, slots=True)
class LineInfoRec:
    insn: int
    file_name_off: int
    line_off: int
    line_col: int


@dataclass(frozen=True, slots=True)
class LinkedProgram:
    """A program ready to load: its final instructions (map fds left 0, named by ``map_refs``), its
    subprograms appended, its CO-RE relocations applied."""
    name: str
    section: str
    kind: str | None
    target: str
    sleepable: bool
    license: str
    kern_version: int
    insns: bytes
    map_refs: tuple[MapRef, ...]
    subprograms: tuple[str, ...]        # appended, in order
    func_info: tuple[FuncInfoRec, ...]
    line_info: tuple[LineInfoRec, ...]
    core: tuple[CoreApplied, ...]       # the relocations of this program and of its subprograms

    @property
    def maps_used(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.map for r in self.map_refs))

    @property
    def poisoned(self) -> tuple[CoreApplied, ...]:
        """CO-RE relocations that found no target and left an invalid call (see ``CoreApplied``)."""
        return tuple(c for c in self.core if c.poisoned)

    def with_fds(self, fds) -> bytes:
        """The instructions with each map's fd written in: ``fds`` maps a map name to an fd (or an object
        with ``fileno()`` or ``.fd``)."""
        buf = bytearray(self.insns)
        for ref in self.map_refs:
            if ref.map not in fds:
                given = ", ".join(sorted(fds)) or "none"
                raise BpfObjectError(f"program {self.name!r} instruction {ref.insn} loads map {ref.map!r}, which "
                                     f"was not given an fd (given: {given})")
            fd = fds[ref.map]
            fd = getattr(fd, "fd", fd)
            fd = fd.fileno() if hasattr(fd, "fileno") else fd
            struct.pack_into("<i", buf, ref.insn * INSN_SIZE + 4, fd)
        return bytes(buf)


class BpfObject:
    """A BPF ELF object.  ``BpfObject.load(path)`` or ``BpfObject(data, source)``."""

    def __init__(self, data: bytes, source: str = "<bytes>", name: str | None = None) -> None:
        self.source = source
        self.elf = ElfFile(data, source)
        if self.elf.header.type != ET_REL or self.elf.header.machine != EM_BPF:
            raise BpfObjectError(f"{source}: not a BPF object (e_type {self.elf.header.type}, e_machine "
                                 f"{self.elf.header.machine}; a BPF object is ET_REL for EM_BPF {EM_BPF}): build "
                                 "it with clang -target bpf -c")
        # libbpf's object name: the file's base name up to its first dot.
        self.name = name if name is not None else os.path.basename(source).split(".")[0]
        self.license = self._license()
        self.kern_version = self._version()
        self.btf = self._btf()
        self.btf_ext = self._btf_ext()
        self.maps: dict[str, MapDef] = {}
        for m in btf_maps(self.elf, self.btf, source) + legacy_maps(self.elf, source) + data_maps(self.elf, self.name):
            if m.name in self.maps:
                raise BpfObjectError(f"{source}: two maps are named {m.name!r} (in {self.maps[m.name].section!r} "
                                     f"and {m.section!r})")
            self.maps[m.name] = m
        self.externs = collect_externs(self.elf, self.btf, source)
        if size := kconfig_size(self.externs):
            # The __kconfig values' map (libbpf's LIBBPF_MAP_KCONFIG): filled when the externs are resolved.
            self.maps[KCONFIG_SEC] = MapDef(
                name=KCONFIG_SEC, kernel_name=internal_map_name(self.name, KCONFIG_SEC), type=BPF_MAP_TYPE_ARRAY,
                key_size=4, value_size=size, max_entries=1, map_flags=BPF_F_MMAPABLE | BPF_F_RDONLY_PROG,
                section=KCONFIG_SEC, section_index=-1, initial=bytes(size), frozen=True)
        self.programs: dict[str, ProgramDef] = {}
        self.subprograms: dict[str, ProgramDef] = {}
        self._functions: dict[int, list[ProgramDef]] = {}   # section index -> its functions by offset
        self._collect_functions()
        self._collect_relocations()

    @classmethod
    def load(cls, path: str, name: str | None = None) -> "BpfObject":
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise BpfObjectError(f"cannot read BPF object {path}: {e.strerror}; check the path") from None
        return cls(data, path, name)

    def __repr__(self) -> str:
        return (f"<BpfObject {self.source}: programs {', '.join(self.programs) or 'none'}; maps "
                f"{', '.join(self.maps) or 'none'}>")

    def _error(self, what: str) -> BpfObjectError:
        return BpfObjectError(f"{self.source}: {what}")

    # --- sections -----------------------------------------------------------------------------------

    def _license(self) -> str:
        if not self.elf.has_section("license"):
            return ""
        raw = self.elf.section_data("license")
        return raw.split(b"\0", 1)[0].decode("ascii", "replace")

    def _version(self) -> int:
        if not self.elf.has_section("version"):
            return 0
        raw = self.elf.section_data("version")
        if len(raw) != 4:
            raise self._error(f"section 'version' is {len(raw)} bytes, expected a u32 (4)")
        return struct.unpack("<I", raw)[0]

    def _btf(self) -> BTF | None:
        if not self.elf.has_section(".BTF"):
            return None
        try:
            return BTF.parse(self.elf.section_data(".BTF"), f"{self.source} .BTF")
        except BTFError as e:
            raise self._error(f"section .BTF: {e}") from None

    def _btf_ext(self) -> BTFExt | None:
        if not self.elf.has_section(".BTF.ext"):
            return None
        if self.btf is None:
            raise self._error("it has .BTF.ext but no .BTF, whose strings .BTF.ext refers to")
        return BTFExt.parse(self.elf.section_data(".BTF.ext"), self.btf, self.source)

    # --- functions ----------------------------------------------------------------------------------

    def _collect_functions(self) -> None:
        elf = self.elf
        for sec in elf.sections:
            if not sec.is_exec or sec.size == 0:
                continue
            if sec.size % INSN_SIZE:
                raise self._error(f"section {sec.name!r} is {sec.size} bytes, not a whole number of 8-byte "
                                  "instructions")
            is_text = sec.name == TEXT_SEC
            kind = None if is_text else parse_section(sec.name)
            data = elf.section_data(sec)
            funcs = sorted((s for s in elf.symbols() if s.shndx == sec.index and s.is_function),
                           key=lambda s: s.value)
            if not funcs:
                raise self._error(f"section {sec.name!r} holds code but no function symbol names it; rebuild the "
                                  "object without stripping its symbols")
            found = []
            for s in funcs:
                if s.value % INSN_SIZE or s.size % INSN_SIZE or s.value + s.size > sec.size or s.size == 0:
                    raise self._error(f"function {s.name!r} in {sec.name!r} at {s.value} + {s.size} is not a "
                                      f"whole number of instructions inside the section ({sec.size} bytes)")
                if not is_text and s.is_local:
                    raise self._error(f"section {sec.name!r}: program {s.name!r} is static, which libbpf does "
                                      "not support either; drop 'static' or move it to .text as a subprogram")
                prog = ProgramDef(s.name, sec.name, sec.index, s.value, data[s.value:s.value + s.size], kind,
                                  s.bind == STB_GLOBAL)
                found.append(prog)
                table = self.subprograms if is_text else self.programs
                if s.name in self.programs or s.name in self.subprograms:
                    raise self._error(f"two functions are named {s.name!r}")
                table[s.name] = prog
            self._functions[sec.index] = found

    def function_at(self, section_index: int, slot: int) -> ProgramDef | None:
        """The function of a section whose slots hold ``slot`` (libbpf's find_prog_by_sec_insn)."""
        for f in self._functions.get(section_index, ()):
            if f.insn_offset <= slot < f.insn_offset + f.slots:
                return f
        return None

    @property
    def text_index(self) -> int:
        return self.elf.section(TEXT_SEC).index if self.elf.has_section(TEXT_SEC) else -1

    # --- relocations --------------------------------------------------------------------------------

    def _collect_relocations(self) -> None:
        elf = self.elf
        symtab = elf.symbols()
        for rsec in elf.sections:
            if rsec.type != SHT_REL:
                continue
            target = elf.section_by_index(rsec.info)
            if target.index not in self._functions:
                continue  # .rel.BTF, .rel.debug_*: not program code
            for n, r in enumerate(elf.relocations(rsec)):
                where = f"section {target.name!r} relocation #{n}"
                if r.offset % INSN_SIZE or r.offset >= target.size:
                    raise self._error(f"{where}: offset {r.offset} is not an instruction of the section")
                if not 0 < r.symbol < len(symtab):
                    raise self._error(f"{where}: symbol index {r.symbol} is not in .symtab")
                sym = symtab[r.symbol]
                slot = r.offset // INSN_SIZE
                prog = self.function_at(target.index, slot)
                if prog is None:
                    continue  # in no function (an overridden weak function's leftovers): libbpf skips it too
                prog.relocs.append(self._record(prog, slot - prog.insn_offset, sym, r.type, where))

    def _record(self, prog: ProgramDef, slot: int, sym: Symbol, rtype: int, where: str) -> Reloc:
        """bpf_program__record_reloc."""
        code, regs, _off, _imm = _INSN.unpack_from(prog.insns, slot * INSN_SIZE)
        name = sym.name
        if not name and sym.shndx < len(self.elf.sections):
            name = self.elf.section_by_index(sym.shndx).name   # a section symbol: name it by its section
        where = f"{where} (program {prog.name!r}, instruction {slot}, symbol {name!r})"
        if code != op.BPF_JMP | op.BPF_CALL and code != op.LD_IMM64:
            raise self._error(f"{where}: relocation of instruction code 0x{code:02x}, neither ld_imm64 nor a call")
        if not sym.defined:
            if not any(e.name == name for e in self.externs):
                raise self._error(f"{where}: the symbol is undefined and no __kconfig or __ksym extern of the "
                                  ".BTF declares it")
            return Reloc(slot, RELO_EXTERN_FUNC if code == op.BPF_JMP | op.BPF_CALL else RELO_EXTERN_VAR, name)
        if code == op.BPF_JMP | op.BPF_CALL:
            if regs >> 4 != op.BPF_PSEUDO_CALL:
                raise self._error(f"{where}: a call relocation on an instruction that is not a bpf-to-bpf call")
            if rtype != R_BPF_64_32:
                raise self._error(f"{where}: call relocation of type {rtype}, expected R_BPF_64_32 ({R_BPF_64_32})")
            if sym.shndx != self.text_index:
                raise self._error(f"{where}: the call's target is not in .text, where subprograms must be")
            if sym.value % INSN_SIZE:
                raise self._error(f"{where}: the call's target is not at an instruction boundary")
            return Reloc(slot, RELO_CALL, name, sym_off=sym.value)
        if code != op.LD_IMM64:
            raise self._error(f"{where}: relocation of instruction code 0x{code:02x}, neither ld_imm64 nor a call")
        if rtype != R_BPF_64_64:
            raise self._error(f"{where}: ld_imm64 relocation of type {rtype}, expected R_BPF_64_64 ({R_BPF_64_64})")
        if sym.shndx == self.text_index and (sym.type == STT_SECTION or (sym.is_function and sym.is_global)):
            return Reloc(slot, RELO_SUBPROG_ADDR, name, sym_off=sym.value)
        sec = self.elf.section_by_index(sym.shndx)
        if sec.name in (BTF_MAPS_SEC, LEGACY_MAPS_SEC):
            for m in self.maps.values():
                if m.section_index == sec.index and m.offset == sym.value and not m.is_global_data:
                    return Reloc(slot, RELO_MAP, name, map=m.name)
            raise self._error(f"{where}: no map of {sec.name!r} starts at offset {sym.value}")
        if data_section_kind(sec) is None:
            raise self._error(f"{where}: a reference into section {sec.name!r}, which is neither a map section "
                              "nor global data (.rodata, .data, .bss)")
        if sec.name not in self.maps:
            raise self._error(f"{where}: a reference into the empty section {sec.name!r}")
        return Reloc(slot, RELO_DATA, name, map=sec.name, sym_off=sym.value)

    # --- linking ------------------------------------------------------------------------------------

    def resolve_externs(self, facts: KernelFacts | None = None) -> ExternValues:
        """The values of the object's __kconfig and __ksym externs, from ``facts`` (by default the running
        kernel's files, ``HostFacts``: an extern that needs a feature probe then raises)."""
        return resolve_externs(self.externs, self.btf, facts or HostFacts(), self.source)

    def link(self, target_btf: BTF | None = None, *, strict: bool = False,
             externs: ExternValues | None = None) -> dict[str, LinkedProgram]:
        """Every program, relocated and linked (see the module's docstring).

        ``target_btf`` is what CO-RE relocations resolve against (the running kernel's, by default loaded
        from /sys/kernel/btf/vmlinux when the object has any).  With ``strict`` a relocation that finds no
        target is an error instead of a poisoned instruction.  ``externs`` are the values of the object's
        externs (``resolve_externs``; resolved from the running kernel when not given).
        """
        if self.externs and externs is None:
            externs = self.resolve_externs(HostFacts(btf=target_btf))
        code = {f.name: bytearray(f.insns) for f in (*self.programs.values(), *self.subprograms.values())}
        core = self._apply_core(code, target_btf, strict)
        return {name: self._link_one(prog, code, core, externs) for name, prog in self.programs.items()}

    def _apply_core(self, code: dict[str, bytearray], target_btf: BTF | None,
                    strict: bool) -> dict[str, list[CoreApplied]]:
        out: dict[str, list[CoreApplied]] = {}
        if self.btf_ext is None or not any(self.btf_ext.core_relos.values()):
            return out
        if target_btf is None:
            target_btf = BTF.load()
        resolver = CoreResolver(self.btf, target_btf)
        for sec_name, relos in self.btf_ext.core_relos.items():
            if not self.elf.has_section(sec_name):
                raise self._error(f".BTF.ext has CO-RE relocations for section {sec_name!r}, which the object lacks")
            sec = self.elf.section(sec_name)
            for i, rec in enumerate(relos):
                if rec.insn_off % INSN_SIZE:
                    raise self._error(f"section {sec_name!r} CO-RE relocation #{i}: instruction offset "
                                      f"{rec.insn_off} is not a multiple of 8")
                prog = self.function_at(sec.index, rec.insn_off // INSN_SIZE)
                if prog is None:
                    continue  # an eliminated weak function's record: libbpf skips it too
                slot = rec.insn_off // INSN_SIZE - prog.insn_offset
                where = self._core_where(sec, i, prog, slot, rec)
                try:
                    res = resolver.resolve(rec.type_id, rec.access, rec.kind)
                except (CoreRelocationError, BTFError) as e:
                    raise CoreRelocationError(f"{where}: {e}") from None
                if res.poison and strict:
                    raise CoreRelocationError(f"{where}: {res.local_spec} has no match in the target BTF "
                                              f"({target_btf.source})")
                try:
                    done = corepatch.patch(code[prog.name], slot, res)
                except corepatch.PatchError as e:
                    raise CoreRelocationError(f"{where}: {res.local_spec}: {e}") from None
                out.setdefault(prog.name, []).append(CoreApplied(
                    sec_name, i, prog.name, slot, CORE_RELO_KIND_NAMES.get(rec.kind, str(rec.kind)), rec.access,
                    res.local_spec, res.target_spec, res, done))
        return out

    def _core_where(self, sec: Section, index: int, prog: ProgramDef, slot: int, rec) -> str:
        t = self.btf.type_by_id(rec.type_id) if 0 <= rec.type_id <= len(self.btf) else None
        what = f"{t.kind_name.lower()} {t.name or '<anon>'}" if t is not None else f"type id {rec.type_id}"
        return (f"{self.source}: section {sec.name!r}, program {prog.name!r}, instruction {slot}: CO-RE "
                f"relocation #{index} ({CORE_RELO_KIND_NAMES.get(rec.kind, rec.kind)} of {what}, access "
                f"\"{rec.access}\")")

    def _link_one(self, main: ProgramDef, code: dict[str, bytearray], core: dict[str, list[CoreApplied]],
                  externs: ExternValues | None) -> LinkedProgram:
        buf = bytearray(code[main.name])
        placed: dict[str, int] = {main.name: 0}      # function -> its first slot in this program (sub_insn_off)
        order: list[ProgramDef] = []
        relocs: list[Reloc] = list(main.relocs)
        text = self.text_index

        def reloc_code(prog: ProgramDef) -> None:
            """bpf_object__reloc_code: fix the calls of ``prog`` (placed at placed[prog]), appending callees."""
            base = placed[prog.name]
            by_slot = {r.insn: r for r in prog.relocs}
            for slot in range(prog.slots):
                at = (base + slot) * INSN_SIZE
                c, regs, off, imm = _INSN.unpack_from(buf, at)
                is_call = c == op.BPF_JMP | op.BPF_CALL and regs >> 4 == op.BPF_PSEUDO_CALL
                relo = by_slot.get(slot)
                if relo is not None and relo.type == RELO_EXTERN_FUNC:
                    continue    # a kfunc: written with the data relocations
                is_func = c == op.LD_IMM64 and relo is not None and relo.type == RELO_SUBPROG_ADDR
                if not is_call and not is_func:
                    continue
                where = f"program {main.name!r}, function {prog.name!r} instruction {slot}"
                if relo is not None and relo.type not in (RELO_CALL, RELO_SUBPROG_ADDR):
                    raise self._error(f"{where}: unexpected {relo.type} relocation on a call")
                if relo is not None and relo.type == RELO_CALL:
                    target = relo.sym_off // INSN_SIZE + imm + 1
                elif relo is not None:
                    target = (relo.sym_off + imm) // INSN_SIZE
                else:
                    if prog.section_index != text:
                        raise self._error(f"{where}: a call inside section {prog.section!r}; subprograms must be "
                                          "in .text")
                    target = prog.insn_offset + slot + imm + 1
                sub = self.function_at(text, target)
                if sub is None:
                    raise self._error(f"{where}: the call's target (instruction {target} of .text) is no function "
                                      "of .text")
                if sub.name not in placed:
                    placed[sub.name] = len(buf) // INSN_SIZE
                    buf.extend(code[sub.name])
                    order.append(sub)
                    relocs.extend(Reloc(r.insn + placed[sub.name], r.type, r.symbol, r.map, r.sym_off)
                                  for r in sub.relocs)
                    reloc_code(sub)
                new_imm = placed[sub.name] - (base + slot) - 1
                if is_func:
                    _INSN.pack_into(buf, at, c, (regs & 0x0F) | op.BPF_PSEUDO_FUNC << 4, off, new_imm)
                else:
                    _INSN.pack_into(buf, at, c, regs, off, new_imm)

        reloc_code(main)

        refs = []
        ext_by_name = {e.name: e for e in self.externs}
        for r in relocs:
            if r.type not in (RELO_MAP, RELO_DATA, RELO_EXTERN_VAR, RELO_EXTERN_FUNC):
                continue
            at = r.insn * INSN_SIZE
            c, regs, off, imm = _INSN.unpack_from(buf, at)
            if r.type in (RELO_EXTERN_VAR, RELO_EXTERN_FUNC):
                ref = self._extern(buf, r, ext_by_name[r.symbol], externs)
                if ref is not None:
                    refs.append(ref)
            elif r.type == RELO_MAP:
                _INSN.pack_into(buf, at, c, (regs & 0x0F) | op.BPF_PSEUDO_MAP_FD << 4, off, 0)
                refs.append(MapRef(r.insn, r.map, op.BPF_PSEUDO_MAP_FD))
            else:
                value_off = imm + r.sym_off    # the addend clang left in imm, plus the symbol's offset
                _INSN.pack_into(buf, at, c, (regs & 0x0F) | op.BPF_PSEUDO_MAP_VALUE << 4, off, 0)
                c2, regs2, off2, _ = _INSN.unpack_from(buf, at + INSN_SIZE)
                _INSN.pack_into(buf, at + INSN_SIZE, c2, regs2, off2, value_off)
                refs.append(MapRef(r.insn, r.map, op.BPF_PSEUDO_MAP_VALUE, value_off))
        refs.sort(key=lambda m: m.insn)

        funcs, lines = self._ext_info(main, order, placed)
        applied = tuple(c for f in (main, *order) for c in core.get(f.name, ()))
        sk = main.section_kind
        return LinkedProgram(main.name, main.section, main.kind, main.target, bool(sk and sk.sleepable),
                             self.license, self.kern_version, bytes(buf), tuple(refs),
                             tuple(f.name for f in order), funcs, lines, applied)

    @staticmethod
    def _extern(buf: bytearray, r: Reloc, ext, values: ExternValues) -> MapRef | None:
        """Write an extern's value into its instruction, as libbpf's bpf_object__relocate_data does."""
        at = r.insn * INSN_SIZE
        c, regs, off, _imm = _INSN.unpack_from(buf, at)
        dst = regs & 0x0F
        if r.type == RELO_EXTERN_FUNC:
            ks = values.ksyms.get(ext.name)
            _INSN.pack_into(buf, at, c, dst | op.BPF_PSEUDO_KFUNC_CALL << 4, ks.btf_fd_idx if ks else 0,
                            ks.kernel_btf_id if ks else 0)
            return None
        c2, regs2, off2, _ = _INSN.unpack_from(buf, at + INSN_SIZE)
        if ext.type == EXT_KCFG:
            _INSN.pack_into(buf, at, c, dst | op.BPF_PSEUDO_MAP_VALUE << 4, off, 0)
            _INSN.pack_into(buf, at + INSN_SIZE, c2, regs2, off2, ext.data_off)
            return MapRef(r.insn, KCONFIG_SEC, op.BPF_PSEUDO_MAP_VALUE, ext.data_off)
        ks = values.ksyms.get(ext.name)
        if ext.type_id and ks is not None:
            _INSN.pack_into(buf, at, c, dst | op.BPF_PSEUDO_BTF_ID << 4, off, ks.kernel_btf_id)
            _INSN.pack_into(buf, at + INSN_SIZE, c2, regs2, off2, ks.kernel_btf_obj_fd)
        else:
            addr = ks.addr if ks is not None else 0
            _INSN.pack_into(buf, at, c, regs, off, _s32(addr))
            _INSN.pack_into(buf, at + INSN_SIZE, c2, regs2, off2, _s32(addr >> 32))
        return None

    def _ext_info(self, main: ProgramDef, order: list[ProgramDef],
                  placed: dict[str, int]) -> tuple[tuple[FuncInfoRec, ...], tuple[LineInfoRec, ...]]:
        """Func and line info of the linked program: each function's records, moved to where it now sits
        (libbpf's adjust_prog_btf_ext_info), instruction offsets in slots as the kernel takes them."""
        if self.btf_ext is None:
            return (), ()
        funcs: list[FuncInfoRec] = []
        lines: list[LineInfoRec] = []
        for f in (main, *order):
            lo, hi = f.offset, f.offset + len(f.insns)
            shift = placed[f.name] - f.insn_offset
            for r in self.btf_ext.func_info.get(f.section, ()):
                if lo <= r.insn_off < hi:
                    funcs.append(FuncInfoRec(r.insn_off // INSN_SIZE + shift, r.type_id))
            for r in self.btf_ext.line_info.get(f.section, ()):
                if lo <= r.insn_off < hi:
                    lines.append(LineInfoRec(r.insn_off // INSN_SIZE + shift, r.file_name_off, r.line_off,
                                             r.line_col))
        return tuple(funcs), tuple(lines)


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >> 31 else v
