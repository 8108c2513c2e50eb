"""CO-RE ("compile once, run everywhere"): what a ``.BTF.ext`` relocation resolves to against a target BTF.

A relocation names a type of the object's own BTF (the *local* type), an access string ("0:1:2": the root
index, then member or array indexes) and a kind (a field's byte offset, size, existence...; a type's id,
existence, size, match; an enumerator's existence or value).  ``CoreResolver.resolve`` computes the value
the compiler assumed (from the local BTF) and the value for the target (the running kernel's BTF), with
libbpf's rules (tools/lib/bpf/relo_core.c, followed function by function):

- candidates are the target types of a compatible kind whose *essential* name equals the local one:
  a ``___suffix`` flavour is stripped from both (``task_struct___old`` matches ``task_struct``);
- a field is matched by name, through anonymous struct and union members, with compatible types; array
  accesses keep their index (flexible arrays allowed);
- several candidates must agree on the bit offset and on the value, else the relocation is ambiguous;
- no candidate: an existence relocation gives 0, a type relocation 0, the others *poison* the
  instruction (libbpf replaces it with a call to an invalid helper, so that guarded dead code still
  loads and reachable code is refused by the verifier at that instruction).

Candidates found for a local type are cached and narrowed to those that matched, as libbpf does, so
later relocations of the same type see the same choice.  Errors (malformed access strings, anonymous
local types, ambiguity) raise ``CoreRelocationError`` with the spelled-out access path.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from kestrel_raw.btf.kinds import (
    BPF_CORE_ENUMVAL_EXISTS, BPF_CORE_ENUMVAL_VALUE, BPF_CORE_FIELD_BYTE_OFFSET, BPF_CORE_FIELD_BYTE_SIZE,
    BPF_CORE_FIELD_EXISTS, BPF_CORE_FIELD_LSHIFT_U64, BPF_CORE_FIELD_RSHIFT_U64, BPF_CORE_FIELD_SIGNED,
    BPF_CORE_TYPE_EXISTS, BPF_CORE_TYPE_ID_LOCAL, BPF_CORE_TYPE_ID_TARGET, BPF_CORE_TYPE_MATCHES,
    BPF_CORE_TYPE_SIZE, BTF_INT_SIGNED, BTF_KIND_ARRAY, BTF_KIND_ENUM, BTF_KIND_ENUM64, BTF_KIND_FLOAT,
    BTF_KIND_FUNC_PROTO, BTF_KIND_FWD, BTF_KIND_INT, BTF_KIND_PTR, BTF_KIND_STRUCT, BTF_KIND_UNION, BTF_KIND_UNKN,
    CORE_RELO_KIND_NAMES, KIND_NAMES,
)
from kestrel_raw.btf.spec import BTF
from kestrel_raw.btf.types import Type
from kestrel_raw.errors import BTFError, CoreRelocationError

# libbpf's limits: BPF_CORE_SPEC_MAX_LEN accessors, and 32 levels of type recursion.
SPEC_MAX_LEN = 64
MAX_DEPTH = 32

FIELD_KINDS = frozenset({BPF_CORE_FIELD_BYTE_OFFSET, BPF_CORE_FIELD_BYTE_SIZE, BPF_CORE_FIELD_EXISTS,
                         BPF_CORE_FIELD_SIGNED, BPF_CORE_FIELD_LSHIFT_U64, BPF_CORE_FIELD_RSHIFT_U64})
TYPE_KINDS = frozenset({BPF_CORE_TYPE_ID_LOCAL, BPF_CORE_TYPE_ID_TARGET, BPF_CORE_TYPE_EXISTS,
                        BPF_CORE_TYPE_MATCHES, BPF_CORE_TYPE_SIZE})
ENUMVAL_KINDS = frozenset({BPF_CORE_ENUMVAL_EXISTS, BPF_CORE_ENUMVAL_VALUE})

_ENUMS = (BTF_KIND_ENUM, BTF_KIND_ENUM64)
_COMPOSITES = (BTF_KIND_STRUCT, BTF_KIND_UNION)
_U64 = (1 << 64) - 1


class _Poison(Exception):
    """libbpf's -EUCLEAN: the relocation cannot be satisfied; the instruction is to be poisoned."""


class _Invalid(Exception):
    """libbpf's -EINVAL and friends: the relocation or the BTF is malformed."""


def essential_name_len(name: str) -> int:
    """Length of ``name`` without its flavour: ``task_struct___old`` -> len("task_struct")."""
    for i in range(len(name) - 5, -1, -1):
        if name[i] != "_" and name[i + 1:i + 4] == "___" and name[i + 4] != "_":
            return i + 1
    return len(name)


def essential_name(name: str) -> str:
    return name[:essential_name_len(name)]


def _kind_compat(a: Type, b: Type) -> bool:
    """btf_kind_core_compat: same kind, or both enums (ENUM and ENUM64 are interchangeable)."""
    return a.kind == b.kind or (a.kind in _ENUMS and b.kind in _ENUMS)


@dataclass(slots=True)
class Accessor:
    type_id: int            # the composite (for a member), the element type (array), or the root
    idx: int
    name: str | None        # member or enumerator name; None for an array index


@dataclass(slots=True)
class Spec:
    """bpf_core_spec: an access string resolved in one BTF."""
    btf: BTF
    root_type_id: int
    kind: int
    raw: list[int] = field(default_factory=list)       # the access string's indexes, in this BTF's numbering
    acc: list[Accessor] = field(default_factory=list)  # named members and array indexes (anonymous skipped)
    bit_offset: int = 0

    def describe(self) -> str:
        """The spec as libbpf's bpf_core_format_spec prints it:
        ``<byte_off> [12] struct task_struct.real_parent (0:6 @ offset 16)``."""
        t = self.btf.type_by_id(self.root_type_id)
        out = (f"<{CORE_RELO_KIND_NAMES.get(self.kind, self.kind)}> [{self.root_type_id}] "
               f"{KIND_NAMES[t.kind].lower()} {t.name or '<anon>'}")
        if self.kind in TYPE_KINDS:
            return out
        if self.kind in ENUMVAL_KINDS:
            e = self.btf.resolve(self.root_type_id).enumerators[self.raw[0]]
            return out + f"::{e.name} = {e.value}"
        for i, a in enumerate(self.acc):
            if a.name:
                out += f".{a.name}"
            elif i > 0 or a.idx > 0:
                out += f"[{a.idx}]"
        where = f"{self.bit_offset // 8}" + (f".{self.bit_offset % 8}" if self.bit_offset % 8 else "")
        return out + f" ({':'.join(map(str, self.raw))} @ offset {where})"


@dataclass(frozen=True, slots=True)
class CoreResult:
    """bpf_core_relo_res: what to check in the instruction and what to write there."""
    orig_val: int           # the value the compiler put in (from the local BTF)
    new_val: int            # the value for the target BTF
    poison: bool            # no target: replace the instruction with an invalid helper call
    validate: bool          # check that the instruction holds orig_val before patching
    fail_memsz_adjust: bool  # the field's size changed and a load of it cannot safely change size
    orig_sz: int            # field sizes (byte offset relocations), for load/store size changes
    new_sz: int
    orig_type_id: int
    new_type_id: int
    local_spec: str         # Spec.describe() of the local and of the chosen target spec
    target_spec: str | None


class CoreResolver:
    """Resolves CO-RE relocations of one object (``local`` BTF) against one target BTF."""

    def __init__(self, local: BTF, target: BTF) -> None:
        self.local = local
        self.target = target
        self._cands: dict[int, list[int]] = {}
        self._essential: dict[str, list[int]] | None = None

    # --- specs ------------------------------------------------------------------------------------------

    def parse_spec(self, type_id: int, access: str, kind: int) -> Spec:
        """bpf_core_parse_spec: the access string walked through the local BTF."""
        btf = self.local
        spec = Spec(btf, type_id, kind)
        if kind in TYPE_KINDS:
            if access != "0":
                raise _Invalid(f"a type relocation's access string must be \"0\", not {access!r}")
            return spec
        if not re.fullmatch(r"\d+(:\d+)*", access or ""):
            raise _Invalid(f"access string {access!r} is not a list of indexes like \"0:1:2\"")
        spec.raw = [int(x) for x in access.split(":")]
        if len(spec.raw) > SPEC_MAX_LEN:
            raise _Invalid(f"access string has {len(spec.raw)} indexes, more than {SPEC_MAX_LEN}")
        t = btf.resolve(type_id)
        idx = spec.raw[0]
        if kind in ENUMVAL_KINDS:
            if t.kind not in _ENUMS or len(spec.raw) > 1 or idx >= t.vlen:
                raise _Invalid(f"enum value access {access!r} does not name an enumerator of {t}")
            spec.acc.append(Accessor(t.id, idx, t.enumerators[idx].name))
            return spec
        if kind not in FIELD_KINDS:
            raise _Invalid(f"unknown CO-RE relocation kind {kind}")
        spec.acc.append(Accessor(t.id, idx, None))
        spec.bit_offset = idx * self._size(btf, t.id) * 8
        tid = t.id
        for idx in spec.raw[1:]:
            t = btf.resolve(tid)
            if t.kind in _COMPOSITES:
                if idx >= t.vlen:
                    raise _Invalid(f"member index {idx} is past the {t.vlen} members of {t}")
                bit_off, _ = member_bits(btf, t, idx)
                spec.bit_offset += bit_off
                m = t.members[idx]
                if m.name:
                    spec.acc.append(Accessor(t.id, idx, m.name))
                tid = m.type
            elif t.kind == BTF_KIND_ARRAY:
                elem = btf.resolve(t.array.type)
                if not self._is_flex(btf, spec.acc[-1], t) and idx >= t.array.nelems:
                    raise _Invalid(f"array index {idx} is past the {t.array.nelems} elements of {t}")
                spec.acc.append(Accessor(elem.id, idx, None))
                spec.bit_offset += idx * self._size(btf, elem.id) * 8
                tid = elem.id
            else:
                raise _Invalid(f"index {idx} of {access!r} goes into {t}, which is neither a struct, a union "
                               "nor an array")
        return spec

    @staticmethod
    def _is_flex(btf: BTF, parent: Accessor, arr: Type) -> bool:
        """is_flex_arr: a zero-length array that is the last member of its struct."""
        if not parent.name or arr.array.nelems > 0:
            return False
        return parent.idx == btf.type_by_id(parent.type_id).vlen - 1

    @staticmethod
    def _size(btf: BTF, type_id: int) -> int:
        try:
            return btf.size_of(type_id)
        except BTFError as e:
            raise _Invalid(str(e)) from None

    # --- candidates -------------------------------------------------------------------------------------

    def candidates(self, local_id: int) -> list[int]:
        """Target type ids of a compatible kind with the same essential name (cached, narrowed by use)."""
        cands = self._cands.get(local_id)
        if cands is None:
            t = self.local.type_by_id(local_id)
            if not t.name:
                raise _Invalid(f"relocation against an anonymous type ({t}) cannot be resolved: libbpf "
                               "searches candidates by name")
            index = self._essential_index()
            cands = [i for i in index.get(essential_name(t.name), ())
                     if _kind_compat(self.target.type_by_id(i), t)]
            self._cands[local_id] = cands
        return cands

    def _essential_index(self) -> dict[str, list[int]]:
        if self._essential is None:
            index: dict[str, list[int]] = {}
            for name, ids in self.target._names().items():
                index.setdefault(essential_name(name), []).extend(ids)
            for ids in index.values():
                ids.sort()
            self._essential = index
        return self._essential

    # --- matching -----------------------------------------------------------------------------------

    def match(self, local: Spec, targ_id: int) -> Spec | None:
        """bpf_core_spec_match: the target spec for candidate ``targ_id``, or None when it does not match."""
        tb = self.target
        spec = Spec(tb, targ_id, local.kind)
        if local.kind in TYPE_KINDS:
            if local.kind == BPF_CORE_TYPE_MATCHES:
                ok = types_match(self.local, local.root_type_id, tb, targ_id, False, MAX_DEPTH)
            else:
                ok = types_are_compat(self.local, local.root_type_id, tb, targ_id, MAX_DEPTH)
            return spec if ok else None
        if local.kind in ENUMVAL_KINDS:
            t = tb.resolve(targ_id)
            if t.kind not in _ENUMS:
                return None
            want = essential_name(local.acc[0].name)
            for i, e in enumerate(t.enumerators):
                if essential_name(e.name) == want:
                    spec.acc.append(Accessor(t.id, i, e.name))
                    spec.raw.append(i)
                    return spec
            return None
        tid = targ_id
        for i, la in enumerate(local.acc):
            t = tb.resolve(tid)
            tid = t.id
            if la.name:
                found = self._match_member(la, tid, spec)
                if found is None:
                    return None
                tid = found
            else:
                if i > 0:
                    if t.kind != BTF_KIND_ARRAY:
                        return None
                    if not self._is_flex(tb, spec.acc[-1], t) and la.idx >= t.array.nelems:
                        return None
                    tid = tb.resolve(t.array.type).id
                if len(spec.raw) == SPEC_MAX_LEN:
                    raise _Invalid("struct/union/array nesting is too deep")
                spec.acc.append(Accessor(tid, la.idx, None))
                spec.raw.append(la.idx)
                spec.bit_offset += la.idx * self._size(tb, tid) * 8
        return spec

    def _match_member(self, la: Accessor, targ_id: int, spec: Spec) -> int | None:
        """bpf_core_match_member: find the local member's name in the target composite, through anonymous
        members; on success append to ``spec`` and return the member's type id."""
        tb = self.target
        t = tb.resolve(targ_id)
        if t.kind not in _COMPOSITES:
            return None
        local_t = self.local.type_by_id(la.type_id)
        local_m = local_t.members[la.idx]
        for i, m in enumerate(t.members):
            if len(spec.raw) == SPEC_MAX_LEN:
                raise _Invalid("struct/union/array nesting is too deep")
            bit_off, _ = member_bits(tb, t, i)
            spec.bit_offset += bit_off
            spec.raw.append(i)
            if not m.name:
                found = self._match_member(la, m.type, spec)
                if found is not None:
                    return found
            elif m.name == local_m.name:
                spec.acc.append(Accessor(t.id, i, m.name))
                if fields_are_compat(self.local, local_m.type, tb, m.type):
                    return m.type
                spec.acc.pop()
                return None
            spec.bit_offset -= bit_off
            spec.raw.pop()
        return None

    # --- values -------------------------------------------------------------------------------------

    def resolve(self, type_id: int, access: str, kind: int) -> CoreResult:
        """bpf_core_calc_relo_insn: the relocation's local and target values.

        Raises ``CoreRelocationError`` (without object context: the caller adds it) when the relocation
        is malformed or ambiguous.
        """
        try:
            return self._resolve(type_id, access, kind)
        except _Invalid as e:
            raise CoreRelocationError(str(e)) from None

    def _resolve(self, type_id: int, access: str, kind: int) -> CoreResult:
        local = self.parse_spec(type_id, access, kind)
        if kind == BPF_CORE_TYPE_ID_LOCAL:
            return CoreResult(type_id, type_id, False, False, False, 0, 0, 0, 0, local.describe(), None)
        cands = self.candidates(type_id)
        chosen: CoreResult | None = None
        chosen_spec: Spec | None = None
        kept = []
        for cand in cands:
            spec = self.match(local, cand)
            if spec is None:
                continue
            res = self._calc(local, spec)
            if chosen is None:
                chosen, chosen_spec = res, spec
            elif spec.bit_offset != chosen_spec.bit_offset:
                raise _Invalid(f"field offset ambiguity: {local.describe()} matches {chosen_spec.describe()} and "
                               f"{spec.describe()}, at different offsets")
            elif res.poison != chosen.poison or res.new_val != chosen.new_val:
                raise _Invalid(f"relocation decision ambiguity: {local.describe()} gives "
                               f"{'poison' if chosen.poison else chosen.new_val} with {chosen_spec.describe()} but "
                               f"{'poison' if res.poison else res.new_val} with {spec.describe()}")
            kept.append(cand)
        if kept:
            cands[:] = kept     # narrowed for the next relocation of this local type, as libbpf does
        if chosen is None:
            return self._calc(local, None)
        return chosen

    def _calc(self, local: Spec, targ: Spec | None) -> CoreResult:
        """bpf_core_calc_relo."""
        kind = local.kind
        orig_sz = new_sz = orig_tid = new_tid = 0
        fail_memsz = False
        poison = False
        validate = True
        try:
            if kind in FIELD_KINDS:
                orig, orig_sz, orig_tid, validate = _field_value(kind, local)
                new, new_sz, new_tid, _ = _field_value(kind, targ)
                if orig_sz != new_sz:
                    ot = local.btf.type_by_id(orig_tid)
                    nt = targ.btf.type_by_id(new_tid)
                    unsigned_ints = (ot.kind == BTF_KIND_INT and nt.kind == BTF_KIND_INT
                                     and ot.int_encoding.encoding != BTF_INT_SIGNED
                                     and nt.int_encoding.encoding != BTF_INT_SIGNED)
                    if not (ot.kind == BTF_KIND_PTR and nt.kind == BTF_KIND_PTR) and not unsigned_ints:
                        fail_memsz = True
            elif kind in TYPE_KINDS:
                orig, validate = _type_value(kind, local)
                new, _ = _type_value(kind, targ)
            else:
                orig = _enumval_value(kind, local)
                new = _enumval_value(kind, targ)
        except _Poison:
            return CoreResult(0, 0, True, validate, False, 0, 0, 0, 0, local.describe(),
                              targ.describe() if targ else None)
        return CoreResult(orig, new, poison, validate, fail_memsz, orig_sz, new_sz, orig_tid, new_tid,
                          local.describe(), targ.describe() if targ else None)


def member_bits(btf: BTF, t: Type, idx: int) -> tuple[int, int]:
    """(bit offset, bitfield size) of member ``idx`` as the record stores them (btf_member_bit_offset,
    btf_member_bitfield_size): without kind_flag the size is 0 and the INT's own bit offset is not added."""
    m = t.members[idx]
    if t.kind_flag:
        return m.bit_offset, m.bit_size
    if m.bit_size:
        mt = btf.type_by_id(m.type)
        if mt.kind == BTF_KIND_INT:
            return m.bit_offset - mt.int_encoding.offset, 0
    return m.bit_offset, 0


def _field_value(kind: int, spec: Spec | None) -> tuple[int, int, int, bool]:
    """bpf_core_calc_field_relo: (value, field size for loads, field type id, validate)."""
    if kind == BPF_CORE_FIELD_EXISTS:
        return (1 if spec is not None else 0), 0, 0, True
    if spec is None:
        raise _Poison()
    btf = spec.btf
    acc = spec.acc[-1]
    if not acc.name:  # a[n]: the element itself
        size = CoreResolver._size(btf, acc.type_id)
        if kind == BPF_CORE_FIELD_BYTE_OFFSET:
            return spec.bit_offset // 8, size, acc.type_id, True
        if kind == BPF_CORE_FIELD_BYTE_SIZE:
            return size, 0, 0, True
        raise _Invalid(f"relocation {CORE_RELO_KIND_NAMES.get(kind)} cannot be applied to an array element")
    t = btf.type_by_id(acc.type_id)
    m = t.members[acc.idx]
    mt = btf.resolve(m.type)
    bit_off = spec.bit_offset
    _, bit_sz = member_bits(btf, t, acc.idx)
    bitfield = bit_sz > 0
    if bitfield:
        byte_sz = mt.size
        byte_off = bit_off // 8 // byte_sz * byte_sz
        while bit_off + bit_sz - byte_off * 8 > byte_sz * 8:
            if byte_sz >= 8:
                raise _Invalid(f"bitfield {m.name} cannot be read with a 64-bit load")
            byte_sz *= 2
            byte_off = bit_off // 8 // byte_sz * byte_sz
    else:
        byte_sz = CoreResolver._size(btf, mt.id)
        byte_off = bit_off // 8
        bit_sz = byte_sz * 8
    validate = not bitfield  # the compiler and libbpf may pick different loads for a bitfield
    if kind == BPF_CORE_FIELD_BYTE_OFFSET:
        return byte_off, (0 if bitfield else byte_sz), (0 if bitfield else mt.id), validate
    if kind == BPF_CORE_FIELD_BYTE_SIZE:
        return byte_sz, 0, 0, validate
    if kind == BPF_CORE_FIELD_SIGNED:
        signed = (mt.kind in _ENUMS and mt.kind_flag) or (
            mt.kind == BTF_KIND_INT and bool(mt.int_encoding.encoding & BTF_INT_SIGNED))
        return int(signed), 0, 0, True
    if kind == BPF_CORE_FIELD_LSHIFT_U64:  # little-endian hosts
        return 64 - (bit_off + bit_sz - byte_off * 8), 0, 0, validate
    if kind == BPF_CORE_FIELD_RSHIFT_U64:
        return 64 - bit_sz, 0, 0, True
    raise _Invalid(f"unknown field relocation kind {kind}")


def _type_value(kind: int, spec: Spec | None) -> tuple[int, bool]:
    """bpf_core_calc_type_relo: (value, validate)."""
    if spec is None:
        return 0, True
    if kind == BPF_CORE_TYPE_ID_TARGET:
        return spec.root_type_id, False  # ids change when objects are linked: nothing to check
    if kind in (BPF_CORE_TYPE_EXISTS, BPF_CORE_TYPE_MATCHES):
        return 1, True
    if kind == BPF_CORE_TYPE_SIZE:
        return CoreResolver._size(spec.btf, spec.root_type_id), True
    raise _Invalid(f"unknown type relocation kind {kind}")


def _enumval_value(kind: int, spec: Spec | None) -> int:
    if kind == BPF_CORE_ENUMVAL_EXISTS:
        return 1 if spec is not None else 0
    if spec is None:
        raise _Poison()
    t = spec.btf.type_by_id(spec.acc[0].type_id)
    # libbpf stores a 32-bit enumerator sign-extended into its u64 result; ENUM64 as is.
    return t.enumerators[spec.acc[0].idx].value & _U64


# --- type compatibility (three relations, as libbpf defines them) ----------------------------------------

def fields_are_compat(lb: BTF, lid: int, tb: BTF, tid: int) -> bool:
    """bpf_core_fields_are_compat: may a field of type ``lid`` be read as one of type ``tid``?"""
    for _ in range(MAX_DEPTH):
        lt, tt = lb.resolve(lid), tb.resolve(tid)
        if lt.kind in _COMPOSITES and tt.kind in _COMPOSITES:
            return True
        if not _kind_compat(lt, tt):
            return False
        if lt.kind in (BTF_KIND_PTR, BTF_KIND_FLOAT):
            return True
        if lt.kind in (BTF_KIND_FWD, BTF_KIND_ENUM, BTF_KIND_ENUM64):
            ln, tn = essential_name(lt.name), essential_name(tt.name)
            return not ln or not tn or ln == tn
        if lt.kind == BTF_KIND_INT:
            return lt.int_encoding.offset == 0 and tt.int_encoding.offset == 0
        if lt.kind == BTF_KIND_ARRAY:
            lid, tid = lt.array.type, tt.array.type
            continue
        return False
    raise _Invalid("type nesting deeper than 32 levels")


def types_are_compat(lb: BTF, lid: int, tb: BTF, tid: int, level: int) -> bool:
    """__bpf_core_types_are_compat: the relation TYPE_EXISTS, TYPE_SIZE and TYPE_ID_TARGET use."""
    if level <= 0:
        raise _Invalid("type nesting deeper than 32 levels")
    for _ in range(MAX_DEPTH):
        lt, tt = lb.resolve(lid), tb.resolve(tid)
        if not _kind_compat(lt, tt):
            return False
        k = lt.kind
        if k in (BTF_KIND_UNKN, BTF_KIND_STRUCT, BTF_KIND_UNION, BTF_KIND_ENUM, BTF_KIND_FWD, BTF_KIND_ENUM64):
            return True
        if k == BTF_KIND_INT:
            return lt.int_encoding.offset == 0 and tt.int_encoding.offset == 0
        if k == BTF_KIND_PTR:
            lid, tid = lt.type, tt.type
            continue
        if k == BTF_KIND_ARRAY:
            lid, tid = lt.array.type, tt.array.type
            continue
        if k == BTF_KIND_FUNC_PROTO:
            if lt.vlen != tt.vlen:
                return False
            for lp, tp in zip(lt.params, tt.params):
                if not types_are_compat(lb, lb.resolve(lp.type).id, tb, tb.resolve(tp.type).id, level - 1):
                    return False
            lid, tid = lt.type, tt.type
            continue
        return False
    raise _Invalid("type nesting deeper than 32 levels")


def _names_match(ln: str, tn: str) -> bool:
    """bpf_core_names_match: anonymous matches anything; otherwise essential names are equal."""
    if not ln or not tn:
        return True
    return essential_name(ln) == essential_name(tn)


def types_match(lb: BTF, lid: int, tb: BTF, tid: int, behind_ptr: bool, level: int) -> bool:
    """__bpf_core_types_match: the stricter relation of TYPE_MATCHES (members, enumerators, signedness)."""
    if level <= 0:
        raise _Invalid("type nesting deeper than 32 levels")
    for _ in range(MAX_DEPTH):
        lt, tt = lb.resolve(lid), tb.resolve(tid)
        if not _names_match(lt.name, tt.name):
            return False
        lk, tk = lt.kind, tt.kind
        if lk == BTF_KIND_UNKN:
            return lk == tk
        if lk == BTF_KIND_FWD:
            if behind_ptr:
                if lk == tk:
                    return lt.kind_flag == tt.kind_flag
                return (tk == BTF_KIND_STRUCT and not lt.kind_flag) or (tk == BTF_KIND_UNION and lt.kind_flag)
            return lk == tk and lt.kind_flag == tt.kind_flag
        if lk in _ENUMS:
            if tk not in _ENUMS or lt.size != tt.size or lt.vlen > tt.vlen:
                return False
            return all(any(_names_match(le.name, te.name) for te in tt.enumerators) for le in lt.enumerators)
        if lk in _COMPOSITES:
            if behind_ptr:
                if lk == tk:
                    return True
                return tk == BTF_KIND_FWD and (lk == BTF_KIND_UNION) == tt.kind_flag
            if lk != tk or lt.vlen > tt.vlen:
                return False
            for lm in lt.members:
                if not any(_names_match(lm.name, tm.name) and types_match(lb, lm.type, tb, tm.type, behind_ptr,
                                                                          level - 1)
                           for tm in tt.members):
                    return False
            return True
        if lk == BTF_KIND_INT:
            return (lk == tk and lt.size == tt.size
                    and (lt.int_encoding.encoding & BTF_INT_SIGNED) == (tt.int_encoding.encoding & BTF_INT_SIGNED))
        if lk == BTF_KIND_PTR:
            if lk != tk:
                return False
            behind_ptr = True
            lid, tid = lt.type, tt.type
            continue
        if lk == BTF_KIND_ARRAY:
            if lk != tk or lt.array.nelems != tt.array.nelems:
                return False
            lid, tid = lt.array.type, tt.array.type
            continue
        if lk == BTF_KIND_FUNC_PROTO:
            if lk != tk or lt.vlen != tt.vlen:
                return False
            for lp, tp in zip(lt.params, tt.params):
                if not types_match(lb, lp.type, tb, tp.type, behind_ptr, level - 1):
                    return False
            lid, tid = lt.type, tt.type
            continue
        return False
    raise _Invalid("type nesting deeper than 32 levels")
