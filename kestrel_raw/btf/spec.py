"""``BTF``: a parsed BTF blob with lookups by id, by name, by member and by dotted path.

Loading walks the type section once, over the blob viewed as u32 words, to record where each type
starts; types are decoded only when asked for, and the name index is built on the first lookup by name.
That keeps loading vmlinux BTF (about 150k types) near a tenth of a second instead of seconds.
"""
from __future__ import annotations

import difflib
import sys
from array import array
from typing import Iterator

from kestrel_raw.btf.header import Header, parse_header
from kestrel_raw.btf.kinds import (
    BTF_KIND_ARRAY, BTF_KIND_DATASEC, BTF_KIND_DECL_TAG, BTF_KIND_ENUM, BTF_KIND_ENUM64, BTF_KIND_FLOAT,
    BTF_KIND_FUNC, BTF_KIND_FUNC_PROTO, BTF_KIND_FWD, BTF_KIND_INT, BTF_KIND_MAX, BTF_KIND_PTR,
    BTF_KIND_STRUCT, BTF_KIND_TYPEDEF, BTF_KIND_UNION, BTF_KIND_UNKN, BTF_KIND_VAR, EXTRA_WORDS,
    KIND_BY_NAME, KIND_NAMES, MODIFIER_KINDS, SIZED_KINDS, WORDS_PER_VLEN, btf_int_bits, btf_int_encoding,
    btf_int_offset, btf_member_bit_offset, btf_member_bitfield_size,
)
from kestrel_raw.btf.types import VOID, ArrayInfo, Enumerator, IntEncoding, Member, Param, PathHop, Type, VarSecinfo
from kestrel_raw.errors import BTFError

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"

# Which type ``find(name)`` returns when several kinds share a name: complete aggregates first, a
# forward declaration last of the type kinds, then the non-type kinds.
_FIND_PREFERENCE = (BTF_KIND_STRUCT, BTF_KIND_UNION, BTF_KIND_ENUM, BTF_KIND_ENUM64, BTF_KIND_TYPEDEF,
                    BTF_KIND_INT, BTF_KIND_FLOAT, BTF_KIND_FWD, BTF_KIND_FUNC, BTF_KIND_VAR,
                    BTF_KIND_DATASEC, BTF_KIND_DECL_TAG)
_RANK = {kind: rank for rank, kind in enumerate(_FIND_PREFERENCE)}
_AGGREGATES = (BTF_KIND_STRUCT, BTF_KIND_UNION)


def _s32(v: int) -> int:
    return v - (1 << 32) if v & 0x80000000 else v


def _close(word: str, candidates) -> str:
    matches = difflib.get_close_matches(word, list(candidates), n=5, cutoff=0.6)
    return f"; close matches: {', '.join(matches)}" if matches else ""


class BTF:
    """Parsed BTF.  ``BTF.load(path)`` or ``BTF.parse(data)``; ids run 1..len(btf), 0 is void."""

    def __init__(self, data: bytes, source: str = "<bytes>") -> None:
        self.source = source
        self.header: Header = parse_header(data)
        hdr = self.header
        # The collector's peak RSS counts every copy of a 5 MB vmlinux BTF: in the host's byte order the
        # type section is read in place, as u32 words through a memoryview of ``data`` (which it keeps
        # alive); only foreign-endian BTF is copied into an array to be byte-swapped.
        view = memoryview(data)
        section = view[hdr.type_start:hdr.type_start + hdr.type_len]
        native = (hdr.byteorder == "little") == (sys.byteorder == "little")
        if native and hdr.type_start % 4 == 0:
            words = section.cast("B").cast("I")
        else:
            words = array("I")
            words.frombytes(section)
            if not native:
                words.byteswap()
        self._words = words
        self._strs = bytes(view[hdr.str_start:hdr.str_start + hdr.str_len])
        self._starts = self._walk(words)
        self._cache: dict[int, Type] = {}
        self._str_cache: dict[int, str] = {}
        self._by_name: dict[str, list[int]] | None = None
        self._name_offs: bytes | None = None  # every type's name_off as packed u32s, id 1 first
        self._ids_by_name: dict[str, list[int]] = {}  # names looked up so far (each costs a section scan)
        self._ptr_size: int | None = None

    @classmethod
    def parse(cls, data: bytes, source: str = "<bytes>") -> "BTF":
        return cls(data, source)

    @classmethod
    def load(cls, path: str = VMLINUX_BTF) -> "BTF":
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise BTFError(f"cannot read BTF from {path}: no such file; the kernel needs CONFIG_DEBUG_INFO_BTF=y "
                           f"for /sys/kernel/btf/vmlinux, or pass another file") from None
        except OSError as e:
            raise BTFError(f"cannot read BTF from {path}: {e.strerror}; check the path and its "
                           "permissions") from None
        return cls(data, path)

    # --- the type section ---------------------------------------------------------------------------

    @staticmethod
    def _walk(words) -> array:
        """Word index of every type's btf_type, id 1 at position 0; the last entry is the end.

        The fast loop (the collector walks ~150k vmlinux types at every start) only sizes each type; an
        unknown kind sizes as "past the end".  Anything that does not end exactly at the section's end is
        walked again by ``_walk_checked``, which says what is wrong.
        """
        n = len(words)
        past = n + 1
        steps = [past] * 32
        for kind in range(1, BTF_KIND_MAX + 1):
            steps[kind] = 3 + EXTRA_WORDS[kind]
        per_vlen = [0] * 32
        for kind in range(1, BTF_KIND_MAX + 1):
            per_vlen[kind] = WORDS_PER_VLEN[kind]
        starts = array("I")
        append = starts.append
        i = 0
        try:
            while i < n:
                append(i)
                info = words[i + 1]
                kind = info >> 24 & 0x1F
                i += steps[kind] + (info & 0xFFFF) * per_vlen[kind]
        except IndexError:  # a type header cut by the end of the section
            i = -1
        if i != n:
            BTF._walk_checked(words)  # raises the precise error
            raise BTFError("BTF type section is corrupt")  # not reached: the checked walk found it
        append(n)
        return starts

    @staticmethod
    def _walk_checked(words) -> None:
        extra, per_vlen = EXTRA_WORDS, WORDS_PER_VLEN
        n = len(words)
        i = count = 0
        while i < n:
            count += 1
            if i + 3 > n:
                raise BTFError(f"BTF type section truncated: type id {count} starts at byte {i * 4} "
                               f"but the section is {n * 4} bytes; the BTF blob is corrupt")
            info = words[i + 1]
            kind = (info >> 24) & 0x1F
            if kind == BTF_KIND_UNKN or kind > BTF_KIND_MAX:
                raise BTFError(f"Invalid BTF kind {kind} at type id {count} (byte {i * 4} of the type "
                               f"section); this reader knows kinds 1..{BTF_KIND_MAX}: the blob is corrupt or "
                               "from a newer kernel")
            i += 3 + extra[kind] + (info & 0xFFFF) * per_vlen[kind]
        if i != n:
            raise BTFError(f"BTF type section truncated: type id {count} runs to byte {i * 4} past the "
                           f"section's end ({n * 4}); the BTF blob is corrupt")

    def __len__(self) -> int:
        return len(self._starts) - 1

    def __iter__(self) -> Iterator[Type]:
        for type_id in range(1, len(self._starts)):
            yield self.type_by_id(type_id)

    def type_by_id(self, type_id: int) -> Type:
        """The type with this id; 0 is void."""
        t = self._cache.get(type_id)
        if t is not None:
            return t
        if type_id == 0:
            return VOID
        if not 0 < type_id < len(self._starts):
            raise BTFError(f"no BTF type id {type_id}: ids run 0..{len(self._starts) - 1} in {self.source}")
        t = self._decode(type_id)
        self._cache[type_id] = t
        return t

    def _decode(self, type_id: int) -> Type:
        w = self._words
        i = self._starts[type_id - 1]
        name_off, info, size_type = w[i], w[i + 1], w[i + 2]
        kind = (info >> 24) & 0x1F
        vlen = info & 0xFFFF
        kflag = bool(info >> 31)
        name = self.string(name_off)
        j = i + 3
        common = dict(id=type_id, kind=kind, name=name, kind_flag=kflag, vlen=vlen)
        if kind in SIZED_KINDS:
            common["size"] = size_type
        else:
            common["type"] = size_type
        if kind == BTF_KIND_INT:
            word = w[j]
            return Type(**common, int_encoding=IntEncoding(btf_int_encoding(word), btf_int_offset(word),
                                                           btf_int_bits(word)))
        if kind == BTF_KIND_ARRAY:
            # An ARRAY's third word is unused (0); the element type is in struct btf_array.
            return Type(**common, array=ArrayInfo(w[j], w[j + 1], w[j + 2]))
        if kind in _AGGREGATES:
            return Type(**common, members=tuple(self._members(j, vlen, kflag)))
        if kind == BTF_KIND_ENUM:
            vals = w[j:j + 2 * vlen]
            conv = _s32 if kflag else int
            return Type(**common, enumerators=tuple(
                Enumerator(self.string(vals[k]), conv(vals[k + 1])) for k in range(0, 2 * vlen, 2)))
        if kind == BTF_KIND_ENUM64:
            vals = w[j:j + 3 * vlen]
            out = []
            for k in range(0, 3 * vlen, 3):
                v = vals[k + 2] << 32 | vals[k + 1]
                if kflag and v >> 63:
                    v -= 1 << 64
                out.append(Enumerator(self.string(vals[k]), v))
            return Type(**common, enumerators=tuple(out))
        if kind == BTF_KIND_FUNC_PROTO:
            vals = w[j:j + 2 * vlen]
            return Type(**common, params=tuple(
                Param(self.string(vals[k]), vals[k + 1]) for k in range(0, 2 * vlen, 2)))
        if kind == BTF_KIND_FUNC:
            return Type(**common, linkage=vlen)
        if kind == BTF_KIND_VAR:
            return Type(**common, linkage=w[j])
        if kind == BTF_KIND_DATASEC:
            vals = w[j:j + 3 * vlen]
            return Type(**common, secinfos=tuple(
                VarSecinfo(vals[k], vals[k + 1], vals[k + 2]) for k in range(0, 3 * vlen, 3)))
        if kind == BTF_KIND_DECL_TAG:
            return Type(**common, component_idx=_s32(w[j]))
        return Type(**common)

    def _members(self, j: int, vlen: int, kflag: bool) -> Iterator[Member]:
        w = self._words
        for k in range(vlen):
            name_off, mtype, offset = w[j + 3 * k], w[j + 3 * k + 1], w[j + 3 * k + 2]
            if kflag:
                bit_offset, bit_size = btf_member_bit_offset(offset), btf_member_bitfield_size(offset)
            else:
                bit_offset, bit_size = offset, 0
                # Without kind_flag a bitfield is told by its INT type: fewer bits than the INT's size, or
                # an INT bit offset; that offset adds to the member's.
                mt = self.type_by_id(mtype)
                if mt.kind == BTF_KIND_INT:
                    enc = mt.int_encoding
                    if enc.offset or enc.bits != mt.size * 8:
                        bit_offset, bit_size = offset + enc.offset, enc.bits
            yield Member(self.string(name_off), bit_offset // 8, self._size_or_zero(mtype), bit_offset,
                         bit_size, mtype)

    # --- strings and names --------------------------------------------------------------------------

    def string(self, offset: int) -> str:
        """The NUL-terminated string at ``offset`` of the string section (decoded on demand, cached)."""
        cache = self._str_cache
        s = cache.get(offset)
        if s is not None:
            return s
        strs = self._strs
        if not 0 <= offset < len(strs):
            raise BTFError(f"Invalid BTF string offset {offset}: the string section is {len(strs)} "
                           f"bytes; the BTF blob in {self.source} is corrupt")
        s = cache[offset] = strs[offset:strs.index(b"\0", offset)].decode("utf-8", "replace")
        return s

    def _names(self) -> dict[str, list[int]]:
        """name -> ids of every named type (built once; lookups by one name use ``_ids_named``)."""
        if self._by_name is None:
            string = self.string
            w, starts = self._words, self._starts
            by_name: dict[str, list[int]] = {}
            for type_id in range(1, len(starts)):
                off = w[starts[type_id - 1]]
                if off:
                    by_name.setdefault(string(off), []).append(type_id)
            self._by_name = by_name
        return self._by_name

    def _ids_named(self, name: str) -> list[int]:
        """Ids of the types called ``name``, by id.

        Rather than decode 100k names, find the name in the string section and its offset among the
        types' name_off words, both by C-speed byte search.  That finds every type when each name_off
        points at the start of a string, which is checked once; BTF whose names share string tails
        falls back to the full index.  Each lookup is kept (the programs' layout asks for task_struct
        six times).
        """
        if self._by_name is not None:
            return self._by_name.get(name, [])
        ids = self._ids_by_name.get(name)
        if ids is None:
            ids = self._ids_by_name[name] = self._scan_name(name)
        return list(ids)

    def _scan_name(self, name: str) -> list[int]:
        if self._name_offs is None:
            w = self._words
            offs = array("I", map(w.__getitem__, self._starts[:-1]))
            strs = self._strs
            if not all(strs[o - 1] == 0 for o in offs if o):
                return self._names().get(name, [])
            self._name_offs = offs.tobytes()
        blob, strs = self._name_offs, self._strs
        needle = b"\0" + name.encode("utf-8") + b"\0"
        ids: list[int] = []
        pos = strs.find(needle)
        while pos >= 0:
            pattern = array("I", [pos + 1]).tobytes()
            at = blob.find(pattern)
            while at >= 0:
                if at % 4 == 0:
                    ids.append(at // 4 + 1)
                at = blob.find(pattern, at + 1)
            pos = strs.find(needle, pos + 1)
        ids.sort()
        return ids

    def _kind_of(self, type_id: int) -> int:
        return (self._words[self._starts[type_id - 1] + 1] >> 24) & 0x1F

    def find(self, name: str, kind: str | int | None = None) -> Type:
        """The type named ``name``.

        ``kind`` picks one kind ("struct", "union", "enum", "typedef", "func"..., or a BTF_KIND_* number).
        Without it, a struct or union comes first, then enum, enum64, typedef, int, float, a forward
        declaration, func, var, datasec; among types of one kind the lowest id.
        """
        want = self._kind_number(kind)
        ids = self._ids_named(name)
        if want is not None:
            ids = [i for i in ids if self._kind_of(i) == want]
        if not ids:
            raise BTFError(self._missing_type_message(name, want))
        best = min(ids, key=lambda i: (_RANK.get(self._kind_of(i), len(_RANK)), i))
        return self.type_by_id(best)

    def find_all(self, name: str) -> list[Type]:
        """Every type named ``name``, by id."""
        return [self.type_by_id(i) for i in self._ids_named(name)]

    @staticmethod
    def _kind_number(kind: str | int | None) -> int | None:
        if kind is None or isinstance(kind, int):
            return kind
        number = KIND_BY_NAME.get(kind.lower())
        if number is None or number == BTF_KIND_UNKN:
            raise BTFError(f"unknown BTF kind {kind!r}; use one of "
                           f"{', '.join(k.lower() for k in KIND_NAMES[1:])}")
        return number

    def _missing_type_message(self, name: str, want: int | None) -> str:
        what = f"{KIND_NAMES[want].lower()} " if want is not None else ""
        ids = self._ids_named(name)
        if ids:
            kinds = sorted({KIND_NAMES[self._kind_of(i)].lower() for i in ids})
            return (f"no {what}type named {name!r} in BTF from {self.source}: that name is a "
                    f"{' and a '.join(kinds)}")
        # Compare against names of the kind asked for (or of aggregates, enums and typedefs): difflib
        # over all 100k names would take seconds.
        kinds = {want} if want is not None else {BTF_KIND_STRUCT, BTF_KIND_UNION, BTF_KIND_ENUM,
                                                 BTF_KIND_ENUM64, BTF_KIND_TYPEDEF, BTF_KIND_INT}
        candidates = [n for n, ids in self._names().items() if self._kind_of(ids[0]) in kinds]
        return f"no {what}type named {name!r} in BTF from {self.source}{_close(name, candidates)}"

    # --- sizes, members, paths ----------------------------------------------------------------------

    @property
    def pointer_size(self) -> int:
        """Bytes in a pointer: the size of ``long`` as this BTF records it (libbpf does the same)."""
        if self._ptr_size is None:
            size = 8
            for name in ("long int", "long unsigned int", "long", "unsigned long"):
                for i in self._ids_named(name):
                    t = self.type_by_id(i)
                    if t.kind == BTF_KIND_INT and t.size in (4, 8):
                        size = t.size
                        break
                else:
                    continue
                break
            self._ptr_size = size
        return self._ptr_size

    def resolve(self, type_id: int) -> Type:
        """The type behind typedefs, const, volatile, restrict and type tags."""
        seen = 0
        t = self.type_by_id(type_id)
        while t.kind in MODIFIER_KINDS:
            seen += 1
            if seen > 64:
                raise BTFError(f"BTF type {type_id} is a loop of typedefs/modifiers; the blob is corrupt")
            t = self.type_by_id(t.type)
        return t

    def _type_arg(self, what: str | int | Type) -> Type:
        if isinstance(what, Type):
            return what
        if isinstance(what, int):
            return self.type_by_id(what)
        return self.find(what)

    def size_of(self, what: str | int | Type) -> int:
        """Byte size of a type given by name, id or value, typedefs and modifiers followed."""
        t = self._type_arg(what)
        return self._size(t.id, t)

    def _size(self, type_id: int, t: Type | None = None) -> int:
        for _ in range(64):
            t = t if t is not None else self.type_by_id(type_id)
            if t.kind in SIZED_KINDS:
                return t.size
            if t.kind == BTF_KIND_PTR:
                return self.pointer_size
            if t.kind == BTF_KIND_ARRAY:
                return t.array.nelems * self._size(t.array.type)
            if t.kind in MODIFIER_KINDS or t.kind == BTF_KIND_VAR:
                type_id, t = t.type, None
                continue
            raise BTFError(f"BTF type {t} has no size: a {t.kind_name.lower()} "
                           f"{'(void) ' if t.id == 0 else ''}is not an object type")
        raise BTFError(f"BTF type {type_id} nests more than 64 levels; the blob is corrupt")

    def _size_or_zero(self, type_id: int) -> int:
        try:
            return self._size(type_id)
        except BTFError:
            return 0

    def _aggregate(self, what: str | int | Type) -> Type:
        t = self._type_arg(what)
        r = self.resolve(t.id)
        if r.kind not in _AGGREGATES:
            raise BTFError(f"BTF type {t} is not a struct or union (it resolves to a {r.kind_name.lower()}): "
                           "it has no members")
        return r

    def members(self, what: str | int | Type) -> tuple[Member, ...]:
        """The direct members of a struct or union (anonymous members as they are, not flattened)."""
        return self._aggregate(what).members

    def member(self, what: str | int | Type, name: str) -> Member:
        """Member ``name`` of a struct or union, searched through anonymous struct/union members too.

        Offsets count from the start of ``what``: the offsets of the anonymous members passed through are
        added in.
        """
        agg = self._aggregate(what)
        found = self._find_member(agg, name, 0)
        if found is None:
            names = sorted(self._member_names(agg))
            label = agg.name or f"(anon) [{agg.id}]"
            raise BTFError(f"{agg.kind_name.lower()} {label} has no member {name!r} (anonymous members searched "
                           f"too) in BTF from {self.source}{_close(name, names)}")
        return found

    def _find_member(self, agg: Type, name: str, base_bits: int) -> Member | None:
        for m in agg.members:
            if m.name == name:
                bits = base_bits + m.bit_offset
                return Member(name, bits // 8, m.size, bits, m.bit_size, m.type)
        for m in agg.members:
            if not m.name:
                inner = self.resolve(m.type)
                if inner.kind in _AGGREGATES:
                    found = self._find_member(inner, name, base_bits + m.bit_offset)
                    if found is not None:
                        return found
        return None

    def _member_names(self, agg: Type) -> set[str]:
        names = set()
        for m in agg.members:
            if m.name:
                names.add(m.name)
            else:
                inner = self.resolve(m.type)
                if inner.kind in _AGGREGATES:
                    names |= self._member_names(inner)
        return names

    def path(self, dotted: str) -> list[tuple[int, int]]:
        """Loads needed to read ``"type.member.member..."``: one ``(offset, size)`` hop per dereference.

        Members of embedded structs add their offsets to the current hop; a pointer ends the hop (its
        size is the pointer size) and the next member is read from where it points.  The last hop's size
        is the last member's.  A member that is neither a struct, union nor a pointer to one cannot be
        gone through; a bitfield cannot be loaded by bytes: both raise ``BTFError``.  ``path_hops`` says
        which struct and members each hop reads.
        """
        return [(hop.offset, hop.size) for hop in self.path_hops(dotted)]

    def path_hops(self, dotted: str) -> list[PathHop]:
        """The hops of ``path(dotted)``, each with the struct it reads in (name and type id) and the
        members it goes through: where each offset came from."""
        parts = dotted.split(".")
        if len(parts) < 2 or not all(parts):
            raise BTFError(f"path {dotted!r} must be 'type.member[.member...]', e.g. 'task_struct.mm.arg_start'")
        current = self._aggregate(parts[0])
        hops: list[PathHop] = []
        offset = 0
        walked = parts[0]
        start, members = current, []
        for k, name in enumerate(parts[1:], start=1):
            m = self.member(current, name)
            walked += "." + name
            members.append(name)
            if m.bit_size:
                raise BTFError(f"{walked} is a {m.bit_size}-bit bitfield: path() gives byte loads; read its "
                               f"storage and shift (bit offset {m.bit_offset} in {current.name or 'its struct'})")
            offset += m.offset
            if k == len(parts) - 1:
                hops.append(PathHop(offset, m.size, start.id, start.name, tuple(members)))
                break
            target = self.resolve(m.type)
            if target.kind == BTF_KIND_PTR:
                hops.append(PathHop(offset, self.pointer_size, start.id, start.name, tuple(members)))
                offset = 0
                target = self.resolve(target.type)
                if target.kind == BTF_KIND_FWD:
                    raise BTFError(f"{walked} points to {target.name!r}, which this BTF only declares "
                                   "(no members known)")
                start, members = target, []
            if target.kind not in _AGGREGATES:
                raise BTFError(f"{walked} has type {self.type_name(m.type)}: only a struct, a union or a pointer "
                               f"to one can be gone through to reach {parts[k + 1]!r}")
            current = target
        return hops

    # --- enums --------------------------------------------------------------------------------------

    def _enum(self, enum: str | int | Type) -> Type:
        if isinstance(enum, str):
            ids = [i for i in self._ids_named(enum)
                   if self._kind_of(i) in (BTF_KIND_ENUM, BTF_KIND_ENUM64)]
            if not ids:
                raise BTFError(self._missing_type_message(enum, BTF_KIND_ENUM))
            return self.type_by_id(ids[0])
        t = self.resolve(self._type_arg(enum).id)
        if t.kind not in (BTF_KIND_ENUM, BTF_KIND_ENUM64):
            raise BTFError(f"BTF type {t} is not an enum")
        return t

    def enum_values(self, enum: str | int | Type) -> dict[str, int]:
        """Enumerator name -> value of an ENUM or ENUM64 (signed when its kind_flag says so)."""
        return {e.name: e.value for e in self._enum(enum).enumerators}

    def enum_value(self, enum: str | int | Type, name: str) -> int:
        t = self._enum(enum)
        for e in t.enumerators:
            if e.name == name:
                return e.value
        raise BTFError(f"enum {t.name or t.id} has no value {name!r} in BTF from {self.source}"
                       f"{_close(name, [e.name for e in t.enumerators])}")

    # --- C names ------------------------------------------------------------------------------------

    def type_name(self, type_id: int) -> str:
        """A C spelling of the type, as in a cast: ``struct task_struct *``, ``char [16]``."""
        from kestrel_raw.btf.cformat import declaration
        return declaration(self, type_id, "")
