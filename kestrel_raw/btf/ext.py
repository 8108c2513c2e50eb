"""``.BTF.ext``: the per-instruction records clang writes beside ``.BTF`` in a BPF object.

Three tables, each grouped by ELF section (named through the object's ``.BTF`` strings): func info (which
BTF FUNC starts at an instruction), line info (source file, line and column of an instruction) and the CO-RE
relocations (``struct bpf_core_relo``).  Offsets of instructions are in bytes from the start of the section,
as the object stores them; the loader turns them into instruction indexes.  Validated as libbpf's
``btf_ext_parse_hdr`` and ``btf_ext_setup_info`` do; each error says which table and which record.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from kestrel_raw.btf.kinds import (
    BPF_CORE_RELO_SIZE, BPF_FUNC_INFO_SIZE, BPF_LINE_INFO_SIZE, BTF_EXT_HEADER_CORE, BTF_EXT_HEADER_MIN, BTF_MAGIC,
    BTF_VERSION, CORE_RELO_KIND_NAMES,
)
from kestrel_raw.btf.spec import BTF
from kestrel_raw.errors import BTFError

_CORRUPT = "the .BTF.ext section is truncated or corrupt; rebuild the object"


@dataclass(frozen=True, slots=True)
class FuncInfo:
    """struct bpf_func_info: the BTF FUNC ``type_id`` of the function that starts at ``insn_off``."""
    insn_off: int   # bytes from the start of the section
    type_id: int


@dataclass(frozen=True, slots=True)
class LineInfo:
    """struct bpf_line_info, with its strings read: ``line_col`` is line << 10 | column."""
    insn_off: int
    file_name_off: int
    line_off: int
    line_col: int
    file_name: str
    line_text: str

    @property
    def line(self) -> int:
        return self.line_col >> 10

    @property
    def column(self) -> int:
        return self.line_col & 0x3FF


@dataclass(frozen=True, slots=True)
class CoreRelo:
    """struct bpf_core_relo: at ``insn_off``, ``kind`` of the type ``type_id`` through ``access`` ("0:1:2")."""
    insn_off: int
    type_id: int
    access_str_off: int
    kind: int
    access: str

    @property
    def kind_name(self) -> str:
        return CORE_RELO_KIND_NAMES.get(self.kind, f"kind {self.kind}")


@dataclass(frozen=True, slots=True)
class BTFExt:
    """The three tables, each section name -> its records in order."""
    func_info: dict[str, tuple[FuncInfo, ...]]
    line_info: dict[str, tuple[LineInfo, ...]]
    core_relos: dict[str, tuple[CoreRelo, ...]]
    func_info_rec_size: int
    line_info_rec_size: int
    core_relo_rec_size: int

    @classmethod
    def parse(cls, data: bytes, btf: BTF, source: str = "<bytes>") -> "BTFExt":
        return _parse(bytes(data), btf, source)


def _parse(data: bytes, btf: BTF, source: str) -> BTFExt:
    def err(what: str) -> BTFError:
        return BTFError(f"{source}: .BTF.ext {what}; {_CORRUPT}")

    if len(data) < BTF_EXT_HEADER_MIN:
        raise err(f"header truncated: {len(data)} bytes, struct btf_ext_header needs {BTF_EXT_HEADER_MIN}")
    magic, version, flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
    if magic != BTF_MAGIC:
        if magic == int.from_bytes(BTF_MAGIC.to_bytes(2, "little"), "big"):
            raise BTFError(f"{source}: .BTF.ext is big-endian; this reader handles little-endian objects only")
        raise err(f"has invalid magic 0x{magic:x} (expected 0x{BTF_MAGIC:x})")
    if version != BTF_VERSION:
        raise err(f"has unsupported version {version} (this reader knows {BTF_VERSION})")
    if flags:
        raise err(f"has unsupported flags 0x{flags:x}")
    if hdr_len < BTF_EXT_HEADER_MIN or hdr_len > len(data):
        raise err(f"header length {hdr_len} is outside {BTF_EXT_HEADER_MIN}..{len(data)}")
    func_off, func_len, line_off, line_len = struct.unpack_from("<IIII", data, 8)
    core_off = core_len = 0
    if hdr_len >= BTF_EXT_HEADER_CORE:
        core_off, core_len = struct.unpack_from("<II", data, 24)

    def table(name: str, off: int, length: int, min_size: int):
        """(record size, {section: [raw record tuples]}) of one info table."""
        if length == 0:
            return min_size, {}
        start = hdr_len + off
        end = start + length
        if off % 4 or end > len(data):
            raise err(f"{name} at {off} + {length} does not fit the section ({len(data) - hdr_len} bytes after "
                      "the header) or is not 4-byte aligned")
        if length < 4:
            raise err(f"{name} is {length} bytes, too short for its record size")
        (rec_size,) = struct.unpack_from("<I", data, start)
        if rec_size < min_size or rec_size % 4:
            raise err(f"{name} record size {rec_size} is smaller than {min_size} or not a multiple of 4")
        pos = start + 4
        out: dict[str, list[tuple]] = {}
        while pos < end:
            if pos + 8 > end:
                raise err(f"{name}: section header at byte {pos - hdr_len} is cut by the end of the table")
            sec_name_off, count = struct.unpack_from("<II", data, pos)
            pos += 8
            if count == 0:
                raise err(f"{name}: a section has no records (libbpf refuses that too)")
            if pos + count * rec_size > end:
                raise err(f"{name}: {count} records of {rec_size} bytes at byte {pos - hdr_len} run past the "
                          "table's end")
            try:
                sec = btf.string(sec_name_off)
            except BTFError:
                raise err(f"{name}: section name offset {sec_name_off} is not in the .BTF strings") from None
            if not sec:
                raise err(f"{name}: a section's name is empty")
            fmt = "<" + "I" * (min_size // 4)
            out.setdefault(sec, []).extend(struct.unpack_from(fmt, data, pos + i * rec_size) for i in range(count))
            pos += count * rec_size
        return rec_size, out

    def string(name: str, off: int) -> str:
        try:
            return btf.string(off)
        except BTFError:
            raise err(f"{name}: string offset {off} is not in the .BTF strings") from None

    fsize, funcs = table("func_info", func_off, func_len, BPF_FUNC_INFO_SIZE)
    lsize, lines = table("line_info", line_off, line_len, BPF_LINE_INFO_SIZE)
    csize, cores = table("core_relo", core_off, core_len, BPF_CORE_RELO_SIZE)
    return BTFExt(
        func_info={s: tuple(FuncInfo(*r) for r in recs) for s, recs in funcs.items()},
        line_info={s: tuple(LineInfo(r[0], r[1], r[2], r[3], string("line_info", r[1]), string("line_info", r[2]))
                            for r in recs) for s, recs in lines.items()},
        core_relos={s: tuple(CoreRelo(r[0], r[1], r[2], r[3], string("core_relo", r[2])) for r in recs)
                    for s, recs in cores.items()},
        func_info_rec_size=fsize, line_info_rec_size=lsize, core_relo_rec_size=csize)
