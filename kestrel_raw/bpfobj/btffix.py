"""The object's .BTF as the kernel is given it (BPF_BTF_LOAD): libbpf's fix-ups, then its sanitisation.

clang leaves a DATASEC's size and its variables' offsets 0 for the linker to fill in; there is no linker
here, so, as libbpf's ``btf_fixup_datasec`` does, the size comes from the ELF section and each global
variable's offset from its symbol, and the variables are sorted by offset (the kernel checks that order).
The extern DATASECs get what ``bpf_object__collect_externs`` gives them: ``.kconfig`` variables their
offsets in the .kconfig map, ``.ksyms`` variables an int's place each (their real types are the kernel's)
and ``.ksyms`` functions a dummy variable (a DATASEC holds variables only).

A kernel older than a BTF kind the object uses refuses the whole blob, so kinds it lacks are replaced by
ones of the same length (``bpf_object__sanitize_btf``): VAR and DECL_TAG by an INT, DATASEC by a STRUCT,
FUNC_PROTO by an ENUM and FUNC by a TYPEDEF (no BTF func support), a global FUNC by a static one, FLOAT by
an empty STRUCT, TYPE_TAG by a CONST, ENUM64 by a UNION of a placeholder INT (and ENUM's kind_flag
cleared).  ``features`` names what the kernel has (``BTF_FEATURES``, probed by the loader).  Pure.
"""
from __future__ import annotations

from kestrel_raw.btf.edit import BtfEditor
from kestrel_raw.btf.kinds import (
    BTF_FUNC_GLOBAL, BTF_FUNC_STATIC, BTF_KIND_CONST, BTF_KIND_DATASEC, BTF_KIND_DECL_TAG, BTF_KIND_ENUM,
    BTF_KIND_ENUM64, BTF_KIND_FLOAT, BTF_KIND_FUNC, BTF_KIND_FUNC_PROTO, BTF_KIND_INT, BTF_KIND_STRUCT,
    BTF_KIND_TYPE_TAG, BTF_KIND_TYPEDEF, BTF_KIND_UNION, BTF_KIND_VAR, BTF_VAR_GLOBAL_ALLOCATED,
    BTF_VAR_GLOBAL_EXTERN, BTF_VAR_STATIC, btf_info_enc,
)
from kestrel_raw.elf import ElfFile
from kestrel_raw.errors import BpfObjectError

KCONFIG_SEC = ".kconfig"
KSYMS_SEC = ".ksyms"
DUMMY_KSYM = "dummy_ksym"

# What a kernel may lack, oldest first (the kernel version that added it).
BTF_FEATURES = (
    "btf_func",          # 5.0: FUNC and FUNC_PROTO
    "btf_datasec",       # 5.2: VAR and DATASEC
    "btf_func_global",   # 5.6: FUNC with global linkage
    "btf_float",         # 5.13: FLOAT
    "btf_decl_tag",      # 5.16: DECL_TAG
    "btf_type_tag",      # 5.17: TYPE_TAG
    "btf_enum64",        # 6.0: ENUM64 (and ENUM's kind_flag: signedness)
)
ALL_BTF_FEATURES = frozenset(BTF_FEATURES)


def _int32_id(ed: BtfEditor) -> int:
    """libbpf's find_int_btf_id: the first 32-bit INT."""
    for i in range(1, len(ed) + 1):
        if ed.kind(i) == BTF_KIND_INT and ed.types[i][3] & 0xFF == 32:
            return i
    return 0


def finalize(data: bytes, elf: ElfFile, externs, source: str) -> bytes:
    """The object's .BTF with its DATASECs filled in (see the module's docstring)."""
    ed = BtfEditor(data, f"{source} .BTF")
    symbols = {s.name: s for s in elf.symbols() if s.name and s.defined and not s.is_section}
    by_name = {e.name: e for e in externs}
    for i in range(1, len(ed) + 1):
        if ed.kind(i) != BTF_KIND_DATASEC:
            continue
        name = ed.name(i)
        if name == KCONFIG_SEC:
            _fix_kconfig(ed, i, by_name, source)
        elif name == KSYMS_SEC:
            _fix_ksyms(ed, i, by_name, source)
        elif ed.types[i][2] == 0:
            if not elf.has_section(name):
                raise BpfObjectError(f"{source}: .BTF DATASEC {name!r} has no ELF section to take its size from")
            ed.types[i][2] = elf.section(name).size
            for v in range(ed.vlen(i)):
                var = ed.types[i][3 + 3 * v]
                if ed.kind(var) != BTF_KIND_VAR or ed.types[var][3] in (BTF_VAR_STATIC, BTF_VAR_GLOBAL_EXTERN):
                    continue
                sym = symbols.get(ed.name(var))
                if sym is None:
                    raise BpfObjectError(f"{source}: .BTF variable {ed.name(var)!r} of {name!r} has no ELF symbol "
                                         "to take its offset from")
                ed.types[i][3 + 3 * v + 1] = sym.value
        _sort_vars(ed, i)
    return ed.encode()


def _sort_vars(ed: BtfEditor, i: int) -> None:
    t = ed.types[i]
    recs = sorted((t[3 + 3 * v:6 + 3 * v] for v in range(ed.vlen(i))), key=lambda r: r[1])
    t[3:] = [w for r in recs for w in r]


def _fix_kconfig(ed: BtfEditor, i: int, externs: dict, source: str) -> None:
    size = 0
    for v in range(ed.vlen(i)):
        var = ed.types[i][3 + 3 * v]
        ext = externs.get(ed.name(var))
        if ext is None:
            raise BpfObjectError(f"{source}: .kconfig variable {ed.name(var)!r} is no extern of the object")
        ed.types[var][3] = BTF_VAR_GLOBAL_ALLOCATED
        ed.types[i][3 + 3 * v + 1] = ext.data_off
        size = max(size, ext.data_off + ext.size)
    ed.types[i][2] = size


def _fix_ksyms(ed: BtfEditor, i: int, externs: dict, source: str) -> None:
    int_id = _int32_id(ed)
    dummy = 0
    if any(ed.kind(ed.types[i][3 + 3 * v]) == BTF_KIND_FUNC for v in range(ed.vlen(i))):
        dummy = ed.add_type([ed.add_string(DUMMY_KSYM), btf_info_enc(BTF_KIND_VAR, False, 0), int_id,
                             BTF_VAR_GLOBAL_ALLOCATED])
    for v in range(ed.vlen(i)):
        rec = 3 + 3 * v
        vt = ed.types[i][rec]
        if ed.name(vt) not in externs:
            raise BpfObjectError(f"{source}: failed to find extern definition for BTF '{ed.name(vt)}' of .ksyms")
        if ed.kind(vt) == BTF_KIND_FUNC:
            proto = ed.types[vt][2]
            if ed.kind(proto) == BTF_KIND_FUNC_PROTO:
                for p in range(ed.vlen(proto)):
                    if ed.types[proto][3 + 2 * p + 1] and not ed.types[proto][3 + 2 * p]:
                        ed.types[proto][3 + 2 * p] = ed.types[dummy][0]
            ed.types[i][rec] = dummy
            ed.types[vt][1] = btf_info_enc(BTF_KIND_FUNC, False, BTF_FUNC_GLOBAL)
        else:
            ed.types[vt][3] = BTF_VAR_GLOBAL_ALLOCATED
            ed.types[vt][2] = int_id
        ed.types[i][rec + 1] = 4 * v
        ed.types[i][rec + 2] = 4
    ed.types[i][2] = 4 * ed.vlen(i)


def needs_sanitizing(features: frozenset[str] | set[str]) -> bool:
    return not ALL_BTF_FEATURES <= set(features)


def sanitize(data: bytes, features: frozenset[str] | set[str]) -> bytes:
    """``data`` with every kind the kernel lacks replaced (see the module's docstring)."""
    if not needs_sanitizing(features):
        return data
    has = set(features)
    ed = BtfEditor(data)
    placeholder = 0
    for i in range(1, len(ed) + 1):
        t = ed.types[i]
        kind, vlen = ed.kind(i), ed.vlen(i)
        if (kind == BTF_KIND_VAR and "btf_datasec" not in has) or (kind == BTF_KIND_DECL_TAG
                                                                    and "btf_decl_tag" not in has):
            # the same length: btf_type and one word; size 1 is what any variable's storage can take
            t[1:] = [btf_info_enc(BTF_KIND_INT, False, 0), 1, 8]
        elif kind == BTF_KIND_DATASEC and "btf_datasec" not in has:
            name = ed.name(i).replace(".", "_")
            t[0] = ed.add_string(name)
            t[1] = btf_info_enc(BTF_KIND_STRUCT, False, vlen)
            for v in range(vlen):
                var, off = t[3 + 3 * v], t[4 + 3 * v]
                t[3 + 3 * v:6 + 3 * v] = [ed.types[var][0], var, off * 8]
        elif kind == BTF_KIND_FUNC_PROTO and "btf_func" not in has:
            t[1], t[2] = btf_info_enc(BTF_KIND_ENUM, False, vlen), 4
        elif kind == BTF_KIND_FUNC and "btf_func" not in has:
            t[1] = btf_info_enc(BTF_KIND_TYPEDEF, False, 0)
        elif kind == BTF_KIND_FUNC and "btf_func_global" not in has:
            t[1] = btf_info_enc(BTF_KIND_FUNC, False, BTF_FUNC_STATIC)
        elif kind == BTF_KIND_FLOAT and "btf_float" not in has:
            t[0], t[1] = 0, btf_info_enc(BTF_KIND_STRUCT, False, 0)
        elif kind == BTF_KIND_TYPE_TAG and "btf_type_tag" not in has:
            t[0], t[1] = 0, btf_info_enc(BTF_KIND_CONST, False, 0)
        elif kind == BTF_KIND_ENUM and "btf_enum64" not in has:
            t[1] = btf_info_enc(BTF_KIND_ENUM, False, vlen)
        elif kind == BTF_KIND_ENUM64 and "btf_enum64" not in has:
            if not placeholder:
                placeholder = ed.add_type([ed.add_string("enum64_placeholder"),
                                           btf_info_enc(BTF_KIND_INT, False, 0), 1, 8])
            t[1] = btf_info_enc(BTF_KIND_UNION, False, vlen)
            for v in range(vlen):
                t[4 + 3 * v], t[5 + 3 * v] = placeholder, 0
    return ed.encode()
