"""bpftool's raw BTF dump format (``bpftool btf dump file F format raw``), one type at a time.

The text follows ``dump_btf_type`` in tools/bpf/bpftool/btf.c so that the two outputs can be diffed line
by line: ``[id] KIND 'name'`` then the kind's fields, then one tab-indented line per member, enumerator,
parameter or section variable.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from kestrel_raw.btf.kinds import (
    BTF_FUNC_EXTERN, BTF_FUNC_GLOBAL, BTF_FUNC_STATIC, BTF_INT_BOOL, BTF_INT_CHAR, BTF_INT_SIGNED,
    BTF_KIND_ARRAY, BTF_KIND_CONST, BTF_KIND_DATASEC, BTF_KIND_DECL_TAG, BTF_KIND_ENUM, BTF_KIND_ENUM64,
    BTF_KIND_FLOAT, BTF_KIND_FUNC, BTF_KIND_FUNC_PROTO, BTF_KIND_FWD, BTF_KIND_INT, BTF_KIND_PTR,
    BTF_KIND_RESTRICT, BTF_KIND_STRUCT, BTF_KIND_TYPE_TAG, BTF_KIND_TYPEDEF, BTF_KIND_UNION, BTF_KIND_VAR,
    BTF_KIND_VOLATILE, BTF_VAR_GLOBAL_ALLOCATED, BTF_VAR_GLOBAL_EXTERN, BTF_VAR_STATIC,
)
from kestrel_raw.btf.types import Type

if TYPE_CHECKING:
    from kestrel_raw.btf.spec import BTF

_INT_ENCODINGS = {0: "(none)", BTF_INT_SIGNED: "SIGNED", BTF_INT_CHAR: "CHAR", BTF_INT_BOOL: "BOOL"}
_FUNC_LINKAGE = {BTF_FUNC_STATIC: "static", BTF_FUNC_GLOBAL: "global", BTF_FUNC_EXTERN: "extern"}
_VAR_LINKAGE = {BTF_VAR_STATIC: "static", BTF_VAR_GLOBAL_ALLOCATED: "global", BTF_VAR_GLOBAL_EXTERN: "extern"}
_REFERENCE_KINDS = (BTF_KIND_PTR, BTF_KIND_CONST, BTF_KIND_VOLATILE, BTF_KIND_RESTRICT, BTF_KIND_TYPEDEF,
                    BTF_KIND_TYPE_TAG)


def _name(s: str) -> str:
    return s if s else "(anon)"


def format_raw(btf: "BTF", t: Type) -> str:
    """``t`` as bpftool prints it in a raw dump, without the final newline."""
    out = [f"[{t.id}] {t.kind_name} '{_name(t.name)}'"]
    kind = t.kind
    if kind == BTF_KIND_INT:
        e = t.int_encoding
        out.append(f" size={t.size} bits_offset={e.offset} nr_bits={e.bits} "
                   f"encoding={_INT_ENCODINGS.get(e.encoding, 'UNKN')}")
    elif kind in _REFERENCE_KINDS:
        out.append(f" type_id={t.type}")
    elif kind == BTF_KIND_ARRAY:
        a = t.array
        out.append(f" type_id={a.type} index_type_id={a.index_type} nr_elems={a.nelems}")
    elif kind in (BTF_KIND_STRUCT, BTF_KIND_UNION):
        out.append(f" size={t.size} vlen={t.vlen}")
        for m in t.members:
            bits = m.bit_offset
            if m.bit_size and not t.kind_flag:
                # Member.bit_offset includes the INT's own bit offset; the record (and bpftool) does not.
                bits -= btf.type_by_id(m.type).int_encoding.offset
            out.append(f"\n\t'{_name(m.name)}' type_id={m.type} bits_offset={bits}")
            # bpftool shows a bitfield size only where the kind_flag encoding stores it.
            if t.kind_flag and m.bit_size:
                out.append(f" bitfield_size={m.bit_size}")
    elif kind in (BTF_KIND_ENUM, BTF_KIND_ENUM64):
        out.append(f" encoding={'SIGNED' if t.kind_flag else 'UNSIGNED'} size={t.size} vlen={t.vlen}")
        suffix = ("LL" if t.kind_flag else "ULL") if kind == BTF_KIND_ENUM64 else ""
        for e in t.enumerators:
            out.append(f"\n\t'{_name(e.name)}' val={e.value}{suffix}")
    elif kind == BTF_KIND_FWD:
        out.append(f" fwd_kind={'union' if t.kind_flag else 'struct'}")
    elif kind == BTF_KIND_FUNC:
        out.append(f" type_id={t.type} linkage={_FUNC_LINKAGE.get(t.linkage, '(unknown)')}")
    elif kind == BTF_KIND_FUNC_PROTO:
        out.append(f" ret_type_id={t.type} vlen={t.vlen}")
        for p in t.params:
            out.append(f"\n\t'{_name(p.name)}' type_id={p.type}")
    elif kind == BTF_KIND_VAR:
        out.append(f" type_id={t.type}, linkage={_VAR_LINKAGE.get(t.linkage, '(unknown)')}")
    elif kind == BTF_KIND_DATASEC:
        out.append(f" size={t.size} vlen={t.vlen}")
        for v in t.secinfos:
            out.append(f"\n\ttype_id={v.type} offset={v.offset} size={v.size}")
            if v.type <= len(btf):
                vt = btf.type_by_id(v.type)
                out.append(f" ({vt.kind_name} '{_name(vt.name) if v.type else '(anon)'}')")
    elif kind == BTF_KIND_FLOAT:
        out.append(f" size={t.size}")
    elif kind == BTF_KIND_DECL_TAG:
        out.append(f" type_id={t.type} component_idx={t.component_idx}")
    return "".join(out)
