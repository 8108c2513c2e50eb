"""Extern variables and functions of a BPF object (``__kconfig`` and ``__ksym``), as libbpf reads, lays out
and resolves them (``bpf_object__collect_externs``, ``bpf_object__resolve_externs``).

An extern is an undefined global (or weak) ELF symbol that the object's .BTF declares in one of two
DATASECs:

* ``.kconfig``: values the loader supplies, in a read-only array map of their own (".kconfig", frozen):
  ``CONFIG_*`` options from the kernel's config (/boot/config-$(uname -r), else /proc/config.gz), as bool,
  tristate (``enum libbpf_tristate``), char, integer or string; and the virtual ``LINUX_*`` values:
  ``LINUX_KERNEL_VERSION``, ``LINUX_HAS_BPF_COOKIE``, ``LINUX_HAS_SYSCALL_WRAPPER``.  The variables sit in
  the map ordered by alignment (largest first), then size, then name, each at its alignment.
* ``.ksyms``: kernel symbols.  A typeless one (``extern const void x __ksym``) becomes its address from
  /proc/kallsyms; a typed one (``extern const struct rq runqueues __ksym``) the BTF id of the kernel's
  VAR of that name (``BPF_PSEUDO_BTF_ID``), its type checked against the object's; an extern function a
  kfunc call to the kernel's FUNC of that name (``BPF_PSEUDO_KFUNC_CALL``).  vmlinux only: a symbol that
  only a module's BTF has is not found (said so).

A weak extern that nothing resolves is zero (libbpf's rule); a strong one is an error naming it.  What
the values come from is a ``KernelFacts`` (the running kernel's, by default: ``HostFacts``; the loader
adds the feature probes, which need bpf(2)).  Pure: files and BTF only.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from typing import Callable, Protocol

from kestrel_raw.btf import BTF
from kestrel_raw.btf.core import types_are_compat
from kestrel_raw.btf.kinds import (
    BTF_FUNC_EXTERN, BTF_INT_BOOL, BTF_INT_SIGNED, BTF_KIND_ARRAY, BTF_KIND_DATASEC,
    BTF_KIND_ENUM, BTF_KIND_ENUM64, BTF_KIND_FUNC, BTF_KIND_INT, BTF_KIND_VAR, BTF_VAR_GLOBAL_EXTERN,
)
from kestrel_raw.elf import ElfFile
from kestrel_raw.elf.abi import STB_GLOBAL, STB_WEAK
from kestrel_raw.errors import BpfObjectError, BTFError

KCONFIG_SEC = ".kconfig"
KSYMS_SEC = ".ksyms"
SHN_UNDEF = 0
STT_NOTYPE = 0

EXT_KCFG = "kconfig"
EXT_KSYM = "ksym"

# enum kcfg_type
KCFG_CHAR, KCFG_BOOL, KCFG_INT, KCFG_TRISTATE, KCFG_CHAR_ARR = "char", "bool", "int", "tristate", "char_arr"
# enum libbpf_tristate
TRI_NO, TRI_YES, TRI_MODULE = 0, 1, 2

# The virtual kconfig values libbpf fills in itself, and the kernel feature each needs.
LINUX_KERNEL_VERSION = "LINUX_KERNEL_VERSION"
VIRTUAL_FEATURES = {"LINUX_HAS_BPF_COOKIE": "bpf_cookie", "LINUX_HAS_SYSCALL_WRAPPER": "syscall_wrapper"}


@dataclass(slots=True)
class Extern:
    """One extern of the object.  ``btf_id`` is its VAR (or FUNC) in the object's .BTF."""
    name: str
    type: str                 # EXT_KCFG or EXT_KSYM
    weak: bool
    btf_id: int
    # kconfig: how the value is stored, and where in the .kconfig map
    kcfg_type: str = ""
    size: int = 0
    align: int = 0
    signed: bool = False
    data_off: int = 0
    # ksym: the object's type of the variable (0: typeless), or a function
    type_id: int = 0
    is_func: bool = False


@dataclass(frozen=True, slots=True)
class KsymValue:
    """What a ksym resolved to: an address (typeless), or a kernel BTF id (typed variable, kfunc)."""
    addr: int = 0
    kernel_btf_id: int = 0
    kernel_btf_obj_fd: int = 0    # 0: vmlinux (module BTF is not searched)
    btf_fd_idx: int = 0


@dataclass(frozen=True, slots=True)
class ExternValues:
    """The resolution of an object's externs: the .kconfig map's bytes, and each ksym set (a name missing
    from ``ksyms`` is an unresolved weak one: zero)."""
    kconfig: bytes
    ksyms: dict[str, KsymValue] = field(default_factory=dict)
    notes: tuple[str, ...] = ()    # weak externs left zero, in libbpf's words


class KernelFacts(Protocol):
    def kernel_version(self) -> int: ...
    def kconfig(self) -> str | None: ...
    def feature(self, name: str) -> bool: ...
    def kallsyms(self) -> list[tuple[str, int]]: ...
    def vmlinux_btf(self) -> BTF: ...


def kernel_version_code(release: str, version_signature: str | None = None) -> int:
    """libbpf's get_kernel_version: KERNEL_VERSION(major, minor, patch) of "6.1.0-27-amd64" (patch capped at
    255), or of Ubuntu's /proc/version_signature ("Ubuntu 5.15.0-91.101-generic 5.15.131") when there is one;
    0 when the release is not N.N.N."""
    def code(text: str) -> int:
        parts = []
        for piece in text.split(".", 2):
            digits = ""
            for ch in piece:
                if not ch.isdigit():
                    break
                digits += ch
            if not digits:
                return 0
            parts.append(int(digits))
        if len(parts) != 3:
            return 0
        major, minor, patch = parts
        return (major << 16) + (minor << 8) + min(patch, 255)

    if version_signature:
        words = version_signature.split()
        if len(words) >= 3 and (v := code(words[2])):
            return v
    return code(release)


class HostFacts:
    """The running kernel's facts, from files.  ``features`` answers the feature probes (the loader's, which
    load tiny programs); without it an object that asks for one gets an error saying so."""

    def __init__(self, features: Callable[[str], bool] | None = None, btf: BTF | None = None,
                 kallsyms_path: str = "/proc/kallsyms") -> None:
        self._features = features
        self._btf = btf
        self._kallsyms_path = kallsyms_path

    def kernel_version(self) -> int:
        sig = None
        try:
            with open("/proc/version_signature") as f:
                sig = f.read()
        except OSError:
            pass
        return kernel_version_code(os.uname().release, sig)

    def kconfig(self) -> str | None:
        for path in (f"/boot/config-{os.uname().release}", "/proc/config.gz"):
            try:
                with open(path, "rb") as f:
                    raw = f.read()
            except OSError:
                continue
            return (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8", "replace")
        return None

    def feature(self, name: str) -> bool:
        if self._features is None:
            raise BpfObjectError(f"the object needs to know whether this kernel has {name}, which takes a probe "
                                 "program: load it with kestrel_raw.loader (or pass the extern values)")
        return self._features(name)

    def kallsyms(self) -> list[tuple[str, int]]:
        out = []
        with open(self._kallsyms_path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    out.append((parts[2], int(parts[0], 16)))
        return out

    def vmlinux_btf(self) -> BTF:
        if self._btf is None:
            self._btf = BTF.load()
        return self._btf


# --- collecting ------------------------------------------------------------------------------------------

def _skip_mods(btf: BTF, type_id: int) -> tuple[int, object]:
    t = btf.resolve(type_id)
    return t.id, t


def _kcfg_type(btf: BTF, type_id: int) -> tuple[str | None, bool]:
    """libbpf's find_kcfg_type: (kind, signed), kind None when unsupported."""
    _, t = _skip_mods(btf, type_id)
    if t.kind == BTF_KIND_INT:
        enc = t.int_encoding.encoding
        if enc & BTF_INT_BOOL:
            return (KCFG_BOOL if t.size == 1 else None), False
        signed = bool(enc & BTF_INT_SIGNED)
        if t.size == 1:
            return KCFG_CHAR, signed
        if t.size not in (2, 4, 8):
            return None, signed
        return KCFG_INT, signed
    if t.kind in (BTF_KIND_ENUM, BTF_KIND_ENUM64):
        if t.name != "libbpf_tristate" or (t.kind == BTF_KIND_ENUM and t.size != 4):
            return None, False
        return KCFG_TRISTATE, False
    if t.kind == BTF_KIND_ARRAY:
        if t.array.nelems == 0 or _kcfg_type(btf, t.array.type)[0] != KCFG_CHAR:
            return None, False
        return KCFG_CHAR_ARR, False
    return None, False


def _align_of(btf: BTF, type_id: int) -> int:
    """btf__align_of for the types a kconfig extern can have."""
    _, t = _skip_mods(btf, type_id)
    if t.kind == BTF_KIND_ARRAY:
        return _align_of(btf, t.array.type)
    return min(btf.size_of(t.id), 8)


def collect_externs(elf: ElfFile, btf: BTF | None, source: str) -> list[Extern]:
    """The object's externs in libbpf's order (kconfig first: alignment descending, size ascending, then
    name; then ksyms by name), kconfig ones with their offsets in the .kconfig map."""
    syms = [s for s in elf.symbols() if s.shndx == SHN_UNDEF and s.name and s.bind in (STB_GLOBAL, STB_WEAK)
            and s.type == STT_NOTYPE]
    if not syms:
        return []
    if btf is None:
        raise BpfObjectError(f"{source}: extern {syms[0].name!r} needs the object's .BTF to say what it is, and "
                             "the object has none; build it with clang -g")
    where: dict[int, str] = {}
    for sec in (t for t in btf if t.kind == BTF_KIND_DATASEC and t.name in (KCONFIG_SEC, KSYMS_SEC)):
        for vi in sec.secinfos:
            where[vi.type] = sec.name
    out = []
    for s in syms:
        ids = [t.id for t in btf.find_all(s.name)
               if (t.kind == BTF_KIND_VAR and t.linkage == BTF_VAR_GLOBAL_EXTERN)
               or (t.kind == BTF_KIND_FUNC and t.linkage == BTF_FUNC_EXTERN)]
        if not ids:
            raise BpfObjectError(f"{source}: extern {s.name!r} has no extern VAR or FUNC in the object's .BTF")
        tid = ids[0]
        sec = where.get(tid)
        if sec is None:
            raise BpfObjectError(f"{source}: extern {s.name!r} is in neither {KCONFIG_SEC} nor {KSYMS_SEC}; declare "
                                 "it __kconfig or __ksym")
        t = btf.type_by_id(tid)
        ext = Extern(s.name, EXT_KCFG if sec == KCONFIG_SEC else EXT_KSYM, s.bind == STB_WEAK, tid)
        if ext.type == EXT_KCFG:
            if t.kind == BTF_KIND_FUNC:
                raise BpfObjectError(f"{source}: extern (kcfg) {s.name!r} is a function")
            kind, signed = _kcfg_type(btf, t.type)
            if kind is None:
                raise BpfObjectError(f"{source}: extern (kcfg) {s.name!r}: type is unsupported (bool, char, "
                                     "integers of 1, 2, 4 or 8 bytes, enum libbpf_tristate, char arrays)")
            try:
                ext.size, ext.align = btf.size_of(t.type), _align_of(btf, t.type)
            except BTFError as e:
                raise BpfObjectError(f"{source}: extern (kcfg) {s.name!r}: {e}") from None
            ext.kcfg_type, ext.signed = kind, signed
        else:
            ext.is_func = t.kind == BTF_KIND_FUNC
            if ext.is_func and ext.weak:
                raise BpfObjectError(f"{source}: extern weak function {s.name!r} is unsupported")
            ext.type_id = btf.resolve(t.type).id if not ext.is_func else t.type
        out.append(ext)

    def order(e: Extern):
        if e.type == EXT_KCFG:
            return (0, -e.align, e.size, e.name.encode())
        return (1, 0, 0, e.name.encode())
    out.sort(key=order)
    off = 0
    for e in out:
        if e.type == EXT_KCFG:
            e.data_off = -(-off // e.align) * e.align
            off = e.data_off + e.size
    return out


def kconfig_size(externs: list[Extern]) -> int:
    return max((e.data_off + e.size for e in externs if e.type == EXT_KCFG), default=0)


# --- resolving -------------------------------------------------------------------------------------------

class _Kcfg:
    """The .kconfig map's bytes being filled, as libbpf's set_kcfg_value_* fill them."""

    def __init__(self, externs: list[Extern], source: str) -> None:
        self.data = bytearray(kconfig_size(externs))
        self.set: set[str] = set()
        self.source = source

    def _bad(self, ext: Extern, why: str) -> BpfObjectError:
        return BpfObjectError(f"{self.source}: extern (kcfg) {ext.name!r}: {why}")

    def num(self, ext: Extern, value: int) -> None:
        if ext.kcfg_type not in (KCFG_INT, KCFG_CHAR, KCFG_BOOL):
            raise self._bad(ext, f"value '{value}' implies integer, char, or boolean type")
        if ext.kcfg_type == KCFG_BOOL and value > 1:
            raise self._bad(ext, f"value '{value}' isn't boolean compatible")
        if ext.kcfg_type == KCFG_INT and not _in_range(ext, value):
            raise self._bad(ext, f"value '{value}' doesn't fit in {ext.size} bytes")
        self._store(ext, value)

    def tri(self, ext: Extern, value: str) -> None:
        if ext.kcfg_type == KCFG_BOOL:
            if value == "m":
                raise self._bad(ext, f"value '{value}' implies tristate or char type")
            self._store(ext, int(value == "y"))
        elif ext.kcfg_type == KCFG_TRISTATE:
            self._store(ext, {"y": TRI_YES, "m": TRI_MODULE, "n": TRI_NO}[value])
        elif ext.kcfg_type == KCFG_CHAR:
            self._store(ext, ord(value))
        else:
            raise self._bad(ext, f"value '{value}' implies bool, tristate, or char type")

    def string(self, ext: Extern, value: str) -> None:
        if ext.kcfg_type != KCFG_CHAR_ARR:
            raise self._bad(ext, f"value '{value}' implies char array type")
        if len(value) < 2 or not value.endswith('"'):
            raise self._bad(ext, f"invalid string config '{value}'")
        raw = value[1:-1].encode()[:ext.size - 1]
        self.data[ext.data_off:ext.data_off + ext.size] = raw + bytes(ext.size - len(raw))
        self.set.add(ext.name)

    def _store(self, ext: Extern, value: int) -> None:
        self.data[ext.data_off:ext.data_off + ext.size] = (value & ((1 << 8 * ext.size) - 1)).to_bytes(
            ext.size, "little")
        self.set.add(ext.name)


def _in_range(ext: Extern, value: int) -> bool:
    if ext.size == 8:
        return True
    bits = 8 * ext.size
    if ext.signed:
        return (value + (1 << (bits - 1))) & ((1 << 64) - 1) < 1 << bits
    return value >> bits == 0


def _parse_u64(text: str) -> int | None:
    """strtoull(text, &end, 0) that must consume the whole text."""
    t = text.strip()
    try:
        if t.lower().startswith("0x"):
            v = int(t, 16)
        elif t.startswith("-"):
            v = int(t, 10) & ((1 << 64) - 1)
        elif len(t) > 1 and t.startswith("0"):
            v = int(t, 8)
        else:
            v = int(t, 10)
    except ValueError:
        return None
    return v


def apply_kconfig(kcfg: _Kcfg, externs: dict[str, Extern], text: str) -> None:
    """libbpf's bpf_object__process_kconfig_line over every line of a kernel config."""
    for line in text.splitlines():
        if not line.startswith("CONFIG_"):
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise BpfObjectError(f"{kcfg.source}: kernel config line {line!r}: no separator")
        if not value:
            raise BpfObjectError(f"{kcfg.source}: kernel config line {line!r}: no value")
        ext = externs.get(name)
        if ext is None or ext.type != EXT_KCFG or name in kcfg.set:
            continue
        if value[0] in "ynm":
            kcfg.tri(ext, value[0])
        elif value[0] == '"':
            kcfg.string(ext, value)
        else:
            num = _parse_u64(value)
            if num is None:
                raise kcfg._bad(ext, f"value '{value}' isn't a valid integer")
            if ext.kcfg_type not in (KCFG_INT, KCFG_CHAR):
                raise kcfg._bad(ext, f"value '{value}' implies integer type")
            kcfg.num(ext, num)


def resolve_externs(externs: list[Extern], obj_btf: BTF | None, facts: KernelFacts, source: str) -> ExternValues:
    """Every extern's value (libbpf's bpf_object__resolve_externs); a strong extern left unresolved is an
    error that names it."""
    kcfg = _Kcfg(externs, source)
    by_name = {e.name: e for e in externs}
    need_config = need_kallsyms = need_btf = False
    for e in externs:
        if e.type == EXT_KSYM:
            if e.type_id or e.is_func:
                need_btf = True
            else:
                need_kallsyms = True
            continue
        if e.name.startswith("CONFIG_"):
            need_config = True
            continue
        if e.name == LINUX_KERNEL_VERSION:
            value = facts.kernel_version()
            if not value:
                raise kcfg._bad(e, "failed to get kernel version")
        elif e.name in VIRTUAL_FEATURES:
            value = int(facts.feature(VIRTUAL_FEATURES[e.name]))
        elif not e.name.startswith("LINUX_") or not e.weak:
            raise kcfg._bad(e, "unrecognized virtual extern (libbpf knows CONFIG_* and "
                            f"{', '.join([LINUX_KERNEL_VERSION, *VIRTUAL_FEATURES])})")
        else:
            continue
        kcfg.num(e, value)
    if need_config:
        text = facts.kconfig()
        if text is None:
            raise BpfObjectError(f"{source}: the object reads the kernel's config (CONFIG_* externs) and neither "
                                 f"/boot/config-{os.uname().release} nor /proc/config.gz exists (load the configs "
                                 "module, or install the kernel's config file)")
        apply_kconfig(kcfg, by_name, text)
    ksyms: dict[str, KsymValue] = {}
    if need_kallsyms:
        for name, addr in facts.kallsyms():
            e = by_name.get(name)
            if e is None or e.type != EXT_KSYM or e.type_id or e.is_func:
                continue
            if name in ksyms and ksyms[name].addr != addr:
                raise BpfObjectError(f"{source}: extern (ksym) {name!r}: resolution is ambiguous: "
                                     f"0x{ksyms[name].addr:x} or 0x{addr:x}")
            ksyms.setdefault(name, KsymValue(addr=addr))
    if need_btf:
        kbtf = facts.vmlinux_btf()
        for e in externs:
            if e.type != EXT_KSYM or not (e.type_id or e.is_func):
                continue
            found = _resolve_btf_ksym(e, obj_btf, kbtf, source)
            if found is not None:
                ksyms[e.name] = found
    notes = []
    for e in externs:
        resolved = e.name in kcfg.set if e.type == EXT_KCFG else e.name in ksyms
        if resolved:
            continue
        if not e.weak:
            what = "kcfg" if e.type == EXT_KCFG else "ksym"
            hint = (" (not in this kernel's config)" if e.name.startswith("CONFIG_") else
                    " (not in /proc/kallsyms)" if e.type == EXT_KSYM and not e.type_id and not e.is_func else
                    " (not in the kernel's BTF; module BTF is not searched)" if e.type == EXT_KSYM else "")
            raise BpfObjectError(f"{source}: extern ({what}) {e.name!r} (strong): not resolved{hint}")
        notes.append(f"extern '{e.name}' (weak): not resolved, defaulting to zero")
    return ExternValues(bytes(kcfg.data), ksyms, tuple(notes))


def _resolve_btf_ksym(e: Extern, obj_btf: BTF, kbtf: BTF, source: str) -> KsymValue | None:
    kind = BTF_KIND_FUNC if e.is_func else BTF_KIND_VAR
    ids = [t.id for t in kbtf.find_all(e.name) if t.kind == kind]
    what = "func ksym" if e.is_func else "var ksym"
    if not ids:
        if e.weak:
            return None
        raise BpfObjectError(f"{source}: extern ({what}) {e.name!r}: not found in kernel BTF (module BTF is not "
                             "searched)")
    tid = ids[0]
    targ = kbtf.type_by_id(tid)
    local_type = e.type_id
    targ_type = kbtf.resolve(targ.type).id
    if not types_are_compat(obj_btf, local_type, kbtf, targ_type, 32):
        raise BpfObjectError(f"{source}: extern ({what}) {e.name!r}: incompatible types, expected "
                             f"{obj_btf.type_by_id(local_type)}, but kernel has {kbtf.type_by_id(targ_type)}")
    return KsymValue(kernel_btf_id=tid)
