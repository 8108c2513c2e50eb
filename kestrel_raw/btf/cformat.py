"""C spelling of BTF types, and a C-like dump of one struct or union with offsets.

``declaration`` writes a declarator the way C reads it (``char *(*fn)(int)``, ``const char *p``,
``struct x *a[4]``), naming types as bpftool's C dump does (``long unsigned int``).  ``format_aggregate``
prints a struct like ``bpftool btf dump ... format c``, with anonymous members expanded in place, plus a
``/* offset: N, size: M */`` comment per member (offsets from the start of the outermost struct) and
``/* offset: N, bit_offset: B, bits: W */`` for a bitfield.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from kestrel_raw.btf.kinds import (
    BTF_KIND_ARRAY, BTF_KIND_CONST, BTF_KIND_ENUM, BTF_KIND_ENUM64, BTF_KIND_FUNC, BTF_KIND_FUNC_PROTO,
    BTF_KIND_FWD, BTF_KIND_PTR, BTF_KIND_RESTRICT, BTF_KIND_STRUCT, BTF_KIND_TYPE_TAG, BTF_KIND_UNION,
    BTF_KIND_VAR, BTF_KIND_VOLATILE,
)
from kestrel_raw.btf.types import Type

if TYPE_CHECKING:
    from kestrel_raw.btf.spec import BTF

_QUALIFIERS = {BTF_KIND_CONST: "const", BTF_KIND_VOLATILE: "volatile", BTF_KIND_RESTRICT: "restrict"}
_TAGS = {BTF_KIND_STRUCT: "struct", BTF_KIND_UNION: "union", BTF_KIND_ENUM: "enum", BTF_KIND_ENUM64: "enum"}


def _join(base: str, inner: str) -> str:
    return f"{base} {inner}" if inner else base


def declaration(btf: "BTF", type_id: int, inner: str, anon_body: str | None = None) -> str:
    """``type_id`` declared with declarator ``inner`` (a name, or "" for the bare type).

    ``anon_body`` replaces the spelling of an anonymous struct/union/enum (the caller's expanded body).
    """
    t = btf.type_by_id(type_id)
    kind = t.kind
    if type_id == 0:
        return _join("void", inner)
    if kind == BTF_KIND_PTR:
        target = btf.type_by_id(t.type)
        # libbpf's btf_dump spaces a star from a following `(` or qualifier (`void * (*start)(...)`,
        # `struct file * const f`); done the same so that our dump diffs cleanly against bpftool's.
        spaced = inner.startswith("(") or inner.split(" ", 1)[0] in _QUALIFIERS.values()
        inner = ("* " if spaced else "*") + inner
        if target.kind in (BTF_KIND_ARRAY, BTF_KIND_FUNC_PROTO):
            inner = f"({inner})"
        return declaration(btf, t.type, inner, anon_body)
    if kind in _QUALIFIERS:
        target = btf.type_by_id(t.type)
        if target.kind == BTF_KIND_PTR:
            # `char *const p`: a qualifier of the pointer itself goes after its star.
            return declaration(btf, t.type, f"{_QUALIFIERS[kind]} {inner}".rstrip(), anon_body)
        qual = _QUALIFIERS[kind]
        rest = declaration(btf, t.type, inner, anon_body)
        # A qualified array qualifies its elements, which BTF may say again: write it once.
        return rest if rest.startswith(qual + " ") else f"{qual} {rest}"
    if kind == BTF_KIND_TYPE_TAG:
        return declaration(btf, t.type, inner, anon_body)
    if kind == BTF_KIND_ARRAY:
        return declaration(btf, t.array.type, f"{inner}[{t.array.nelems}]", anon_body)
    if kind in (BTF_KIND_FUNC_PROTO, BTF_KIND_FUNC):
        proto = t if kind == BTF_KIND_FUNC_PROTO else btf.type_by_id(t.type)
        if kind == BTF_KIND_FUNC:
            inner = t.name + inner
        params = []
        for p in proto.params:
            params.append("..." if p.type == 0 and not p.name else declaration(btf, p.type, p.name))
        return declaration(btf, proto.type, f"{inner}({', '.join(params) or 'void'})", anon_body)
    if kind in _TAGS or kind == BTF_KIND_FWD:
        tag = _TAGS.get(kind) or ("union" if t.kind_flag else "struct")
        if not t.name and anon_body is not None:
            return _join(f"{tag} {anon_body}", inner)
        return _join(f"{tag} {t.name or '(anon)'}", inner)
    if kind == BTF_KIND_VAR:
        return declaration(btf, t.type, t.name, anon_body)
    return _join(t.name or "(anon)", inner)


def format_aggregate(btf: "BTF", t: Type) -> str:
    """A struct or union as C, one member per line with its offset and size in a comment."""
    lines = [f"{_TAGS[t.kind]} {t.name or '(anon)'} {{"]
    _body(btf, t, 0, 1, lines)
    lines.append(f"}}; /* size: {t.size} */")
    return "\n".join(lines)


def _body(btf: "BTF", t: Type, base_bits: int, depth: int, lines: list[str]) -> None:
    indent = "\t" * depth
    for m in t.members:
        bits = base_bits + m.bit_offset
        inner = btf.resolve(m.type)
        if not m.name and inner.kind in (BTF_KIND_STRUCT, BTF_KIND_UNION) and not inner.name:
            quals, q = [], btf.type_by_id(m.type)
            while q.kind in _QUALIFIERS:
                quals.append(_QUALIFIERS[q.kind] + " ")
                q = btf.type_by_id(q.type)
            lines.append(f"{indent}{''.join(quals)}{_TAGS[inner.kind]} {{")
            _body(btf, inner, bits, depth + 1, lines)
            lines.append(f"{indent}}}; /* offset: {bits // 8}, size: {inner.size} */")
            continue
        anon = None
        direct = btf.type_by_id(m.type)
        while direct.kind in _QUALIFIERS or direct.kind in (BTF_KIND_ARRAY, BTF_KIND_PTR):
            direct = btf.type_by_id(direct.array.type if direct.kind == BTF_KIND_ARRAY else direct.type)
        if direct.kind in (BTF_KIND_STRUCT, BTF_KIND_UNION) and not direct.name:
            # A named member of an anonymous struct type: expand it inline as C writes it.
            sub: list[str] = []
            _body(btf, direct, bits, depth + 1, sub)
            anon = "{\n" + "\n".join(sub) + f"\n{indent}}}" if sub else "{}"
        elif direct.kind in (BTF_KIND_ENUM, BTF_KIND_ENUM64) and not direct.name:
            values = "".join(f"{indent}\t{e.name} = {e.value},\n" for e in direct.enumerators)
            anon = "{\n" + values + indent + "}"
        decl = declaration(btf, m.type, m.name, anon)
        if m.bit_size:
            lines.append(f"{indent}{decl}: {m.bit_size}; /* offset: {bits // 8}, bit_offset: {bits}, "
                         f"bits: {m.bit_size} */")
        else:
            lines.append(f"{indent}{decl}; /* offset: {bits // 8}, size: {m.size} */")
