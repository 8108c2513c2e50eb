"""BTF format constants, named as include/uapi/linux/btf.h names them.

The encoding of ``btf_type.info``, of the INT word, of a member offset under ``kind_flag``, the kinds and
their trailing records.  Everything else in ``kestrel_raw.btf`` takes these numbers from here.
"""
from __future__ import annotations

BTF_MAGIC = 0xEB9F
BTF_VERSION = 1
# sizeof(struct btf_header): magic u16, version u8, flags u8, then hdr_len, type_off, type_len, str_off,
# str_len as u32.
BTF_HEADER_SIZE = 24
# struct btf_type is name_off, info, then size or type (one u32 shared by both).
BTF_TYPE_SIZE = 12

BTF_KIND_UNKN = 0
BTF_KIND_INT = 1
BTF_KIND_PTR = 2
BTF_KIND_ARRAY = 3
BTF_KIND_STRUCT = 4
BTF_KIND_UNION = 5
BTF_KIND_ENUM = 6
BTF_KIND_FWD = 7
BTF_KIND_TYPEDEF = 8
BTF_KIND_VOLATILE = 9
BTF_KIND_CONST = 10
BTF_KIND_RESTRICT = 11
BTF_KIND_FUNC = 12
BTF_KIND_FUNC_PROTO = 13
BTF_KIND_VAR = 14
BTF_KIND_DATASEC = 15
BTF_KIND_FLOAT = 16
BTF_KIND_DECL_TAG = 17
BTF_KIND_TYPE_TAG = 18
BTF_KIND_ENUM64 = 19
BTF_KIND_MAX = BTF_KIND_ENUM64

# The names bpftool prints in its raw dump (btf_kind_str[] in tools/bpf/bpftool/btf.c).
KIND_NAMES: tuple[str, ...] = (
    "UNKNOWN", "INT", "PTR", "ARRAY", "STRUCT", "UNION", "ENUM", "FWD", "TYPEDEF", "VOLATILE", "CONST",
    "RESTRICT", "FUNC", "FUNC_PROTO", "VAR", "DATASEC", "FLOAT", "DECL_TAG", "TYPE_TAG", "ENUM64",
)
KIND_BY_NAME: dict[str, int] = {name.lower(): kind for kind, name in enumerate(KIND_NAMES)}

# Bytes that follow struct btf_type, per kind: a fixed part, plus a part per vlen entry.
# INT: u32 encoding word.  ARRAY: struct btf_array (type, index_type, nelems).  STRUCT/UNION: struct
# btf_member (name_off, type, offset) each.  ENUM: struct btf_enum (name_off, s32 val).  FUNC_PROTO: struct
# btf_param (name_off, type).  VAR: struct btf_var (linkage).  DATASEC: struct btf_var_secinfo (type,
# offset, size).  DECL_TAG: struct btf_decl_tag (s32 component_idx).  ENUM64: struct btf_enum64
# (name_off, val_lo32, val_hi32).  Counted in 4-byte words: every record is made of u32s.
EXTRA_WORDS: tuple[int, ...] = (0, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0)
WORDS_PER_VLEN: tuple[int, ...] = (0, 0, 0, 0, 3, 3, 2, 0, 0, 0, 0, 0, 0, 2, 0, 3, 0, 0, 0, 3)


def btf_info_kind(info: int) -> int:
    return (info >> 24) & 0x1F


def btf_info_vlen(info: int) -> int:
    return info & 0xFFFF


def btf_info_kflag(info: int) -> bool:
    return bool(info >> 31)


def btf_info_enc(kind: int, kind_flag: bool, vlen: int) -> int:
    """The inverse of the three accessors above (BTF_INFO_ENC in the kernel's selftests)."""
    return (int(kind_flag) << 31) | (kind << 24) | vlen


# The u32 after an INT's btf_type: encoding bits 24..27, bit offset 16..23, number of bits 0..7.
BTF_INT_SIGNED = 1 << 0
BTF_INT_CHAR = 1 << 1
BTF_INT_BOOL = 1 << 2


def btf_int_encoding(word: int) -> int:
    return (word >> 24) & 0x0F


def btf_int_offset(word: int) -> int:
    return (word >> 16) & 0xFF


def btf_int_bits(word: int) -> int:
    return word & 0xFF


# With kind_flag set on a STRUCT or UNION, a member's offset holds the bitfield size in bits 24..31 and the
# bit offset in bits 0..23; without it the whole u32 is the bit offset.
def btf_member_bit_offset(offset: int) -> int:
    return offset & 0xFFFFFF


def btf_member_bitfield_size(offset: int) -> int:
    return offset >> 24


# FUNC linkage lives in vlen; VAR linkage in struct btf_var.
BTF_FUNC_STATIC = 0
BTF_FUNC_GLOBAL = 1
BTF_FUNC_EXTERN = 2
BTF_VAR_STATIC = 0
BTF_VAR_GLOBAL_ALLOCATED = 1
BTF_VAR_GLOBAL_EXTERN = 2

# Kinds that only qualify or rename another type: followed when sizes and members are resolved.
MODIFIER_KINDS = frozenset({BTF_KIND_TYPEDEF, BTF_KIND_VOLATILE, BTF_KIND_CONST, BTF_KIND_RESTRICT,
                            BTF_KIND_TYPE_TAG})
# Kinds whose btf_type's third word is a size; in the others it is a type id.
SIZED_KINDS = frozenset({BTF_KIND_INT, BTF_KIND_STRUCT, BTF_KIND_UNION, BTF_KIND_ENUM, BTF_KIND_DATASEC,
                         BTF_KIND_FLOAT, BTF_KIND_ENUM64})

# --- .BTF.ext (tools/lib/bpf/libbpf_internal.h: struct btf_ext_header) ------------------------------------
# magic u16, version u8, flags u8, hdr_len u32, then func_info_off/len and line_info_off/len (u32 each);
# core_relo_off/len follow in headers of 32 bytes.  Offsets count from the end of the header.
BTF_EXT_HEADER_MIN = 24
BTF_EXT_HEADER_CORE = 32
# Smallest record of each info kind: struct bpf_func_info (insn_off, type_id), struct bpf_line_info
# (insn_off, file_name_off, line_off, line_col), struct bpf_core_relo (insn_off, type_id, access_str_off, kind).
BPF_FUNC_INFO_SIZE = 8
BPF_LINE_INFO_SIZE = 16
BPF_CORE_RELO_SIZE = 16

# enum bpf_core_relo_kind (include/uapi/linux/bpf.h): what a CO-RE relocation computes.
BPF_CORE_FIELD_BYTE_OFFSET = 0
BPF_CORE_FIELD_BYTE_SIZE = 1
BPF_CORE_FIELD_EXISTS = 2
BPF_CORE_FIELD_SIGNED = 3
BPF_CORE_FIELD_LSHIFT_U64 = 4
BPF_CORE_FIELD_RSHIFT_U64 = 5
BPF_CORE_TYPE_ID_LOCAL = 6
BPF_CORE_TYPE_ID_TARGET = 7
BPF_CORE_TYPE_EXISTS = 8
BPF_CORE_TYPE_SIZE = 9
BPF_CORE_ENUMVAL_EXISTS = 10
BPF_CORE_ENUMVAL_VALUE = 11
BPF_CORE_TYPE_MATCHES = 12
# The names libbpf prints in its relocation log (core_relo_kind_str in tools/lib/bpf/relo_core.c).
CORE_RELO_KIND_NAMES = {
    BPF_CORE_FIELD_BYTE_OFFSET: "byte_off", BPF_CORE_FIELD_BYTE_SIZE: "byte_sz",
    BPF_CORE_FIELD_EXISTS: "field_exists", BPF_CORE_FIELD_SIGNED: "signed",
    BPF_CORE_FIELD_LSHIFT_U64: "lshift_u64", BPF_CORE_FIELD_RSHIFT_U64: "rshift_u64",
    BPF_CORE_TYPE_ID_LOCAL: "local_type_id", BPF_CORE_TYPE_ID_TARGET: "target_type_id",
    BPF_CORE_TYPE_EXISTS: "type_exists", BPF_CORE_TYPE_MATCHES: "type_matches", BPF_CORE_TYPE_SIZE: "type_size",
    BPF_CORE_ENUMVAL_EXISTS: "enumval_exists", BPF_CORE_ENUMVAL_VALUE: "enumval_value",
}
