"""``LoadedObject``: a BPF ELF object (kestrel_raw.bpfobj) in the kernel, the way libbpf's
``bpf_object__load`` puts it there, then attached the way its ``bpf_program__attach`` does.

1. externs resolved (``__kconfig`` from the kernel's config and version, ``__ksym`` from kallsyms or BTF);
2. the object's .BTF fixed up and, where this kernel lacks some BTF kinds, sanitised (bpfobj/btffix.py),
   then loaded (BPF_BTF_LOAD); a kernel that refuses it gets the programs without BTF, as from libbpf;
3. every map created with its BTF key and value type ids (a map the kernel refuses with BTF is created
   again without, as libbpf does), global data written with its initial values, .rodata and .kconfig
   frozen;
4. every program linked (CO-RE against the kernel's BTF, subprograms, map fds) and loaded with the type,
   expected attach type and attach BTF id its section name says, with its func and line info;
5. on ``attach()``, each program where its section says: tracepoint (perf event), raw_tracepoint, tp_btf,
   fentry/fexit (BTF id), uprobe/uretprobe (the uprobe PMU at the function's file offset), kprobe/
   kretprobe (the kprobe PMU, where the kernel has it).  A section that names no target (``SEC("uprobe")``,
   bashreadline's ``uretprobe/readline``) is left for the caller (``attach_program`` with a target).
"""
from __future__ import annotations

import dataclasses
import errno
import os
import struct

from kestrel_raw.bpfobj import BpfObject, LinkedProgram, MapDef
from kestrel_raw.bpfobj import btffix
from kestrel_raw.bpfobj.externs import ExternValues, HostFacts
from kestrel_raw.bpfobj.sections import (
    FENTRY, FEXIT, KPROBE, KRETPROBE, PERF_EVENT, RAW_TRACEPOINT, TP_BTF, TRACEPOINT, UPROBE, URETPROBE, USDT,
)
from kestrel_raw.btf import BTF
from kestrel_raw.btf.kinds import BTF_KIND_DATASEC, BTF_KIND_FUNC, BTF_KIND_TYPEDEF
from kestrel_raw.errors import BPFError, BpfObjectError, BTFError, SetupError, VerifierError
from kestrel_raw.kernel import bpf
from kestrel_raw.kernel.fd import FD
from kestrel_raw.kernel.uapi import (
    BPF_F_SLEEPABLE, BPF_MAP_TYPE_ARRAY_OF_MAPS, BPF_MAP_TYPE_CGROUP_ARRAY, BPF_MAP_TYPE_CPUMAP,
    BPF_MAP_TYPE_DEVMAP, BPF_MAP_TYPE_DEVMAP_HASH, BPF_MAP_TYPE_HASH_OF_MAPS, BPF_MAP_TYPE_PERF_EVENT_ARRAY,
    BPF_MAP_TYPE_QUEUE, BPF_MAP_TYPE_RINGBUF, BPF_MAP_TYPE_SOCKHASH, BPF_MAP_TYPE_SOCKMAP, BPF_MAP_TYPE_STACK,
    BPF_MAP_TYPE_STACK_TRACE, BPF_MAP_TYPE_XSKMAP, BPF_OBJ_NAME_LEN, BPF_PROG_TYPE_KPROBE, BPF_PROG_TYPE_PERF_EVENT,
    BPF_PROG_TYPE_RAW_TRACEPOINT, BPF_PROG_TYPE_TRACEPOINT, BPF_PROG_TYPE_TRACING, BPF_TRACE_FENTRY,
    BPF_TRACE_FEXIT, BPF_TRACE_RAW_TP,
)
from kestrel_raw.loader import features

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# Map types created without BTF even when the object describes them (libbpf's bpf_object__create_map).
_NO_BTF_MAPS = frozenset({
    BPF_MAP_TYPE_PERF_EVENT_ARRAY, BPF_MAP_TYPE_CGROUP_ARRAY, BPF_MAP_TYPE_STACK_TRACE,
    BPF_MAP_TYPE_ARRAY_OF_MAPS, BPF_MAP_TYPE_HASH_OF_MAPS, BPF_MAP_TYPE_DEVMAP, BPF_MAP_TYPE_DEVMAP_HASH,
    BPF_MAP_TYPE_CPUMAP, BPF_MAP_TYPE_XSKMAP, BPF_MAP_TYPE_SOCKMAP, BPF_MAP_TYPE_SOCKHASH, BPF_MAP_TYPE_QUEUE,
    BPF_MAP_TYPE_STACK,
})

# Section kind -> (bpf_prog_type, expected_attach_type), as libbpf's section_defs give them.
PROGRAM_TYPES = {
    TRACEPOINT: (BPF_PROG_TYPE_TRACEPOINT, 0),
    RAW_TRACEPOINT: (BPF_PROG_TYPE_RAW_TRACEPOINT, 0),
    TP_BTF: (BPF_PROG_TYPE_TRACING, BPF_TRACE_RAW_TP),
    FENTRY: (BPF_PROG_TYPE_TRACING, BPF_TRACE_FENTRY),
    FEXIT: (BPF_PROG_TYPE_TRACING, BPF_TRACE_FEXIT),
    KPROBE: (BPF_PROG_TYPE_KPROBE, 0),
    KRETPROBE: (BPF_PROG_TYPE_KPROBE, 0),
    UPROBE: (BPF_PROG_TYPE_KPROBE, 0),
    URETPROBE: (BPF_PROG_TYPE_KPROBE, 0),
    USDT: (BPF_PROG_TYPE_KPROBE, 0),
    PERF_EVENT: (BPF_PROG_TYPE_PERF_EVENT, 0),
}


def possible_cpus(path: str = "/sys/devices/system/cpu/possible") -> int:
    """How many CPUs the kernel may ever have ("0-3,5" -> 5 ranges' worth), as libbpf counts them."""
    with open(path) as f:
        text = f.read().strip()
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n = max(n, int(hi or lo) + 1)
    return n


def ringbuf_size(size: int) -> int:
    """libbpf's adjust_ringbuf_sz: the smallest power-of-two multiple of the page size that holds ``size``."""
    if size and size % PAGE_SIZE == 0 and (size // PAGE_SIZE) & (size // PAGE_SIZE - 1) == 0:
        return size
    n = PAGE_SIZE
    while n < size:
        n *= 2
    return n


def link_for_load(obj: BpfObject, target_btf: BTF | None = None
                  ) -> tuple[ExternValues | None, dict[str, LinkedProgram]]:
    """The object's extern values and its programs linked as ``LoadedObject`` loads them (and so as ``run
    --object`` does, and what ``disasm``/``verify`` show): externs from this kernel, CO-RE against
    ``target_btf`` (the running kernel's BTF when None and the object has CO-RE relocations)."""
    externs = (obj.resolve_externs(HostFacts(features=features.feature, btf=target_btf)) if obj.externs
               else None)
    if has_core_relos(obj) and target_btf is None:
        target_btf = BTF.load()
    return externs, obj.link(target_btf if has_core_relos(obj) else None, externs=externs)


def has_core_relos(obj: BpfObject) -> bool:
    return bool(obj.btf_ext is not None and any(obj.btf_ext.core_relos.values()))


class LoadedObject:
    """An object's maps and programs in the kernel.  ``LoadedObject(path_or_object)`` loads everything
    (nothing is attached until ``attach()``); ``close()`` detaches and closes every fd.

    ``programs`` limits what is loaded to those names (the maps are all created).  ``max_entries`` and
    ``value_size`` (map name -> value) set a map's sizes, as libbpf's bpf_map__set_max_entries and
    bpf_map__set_value_size do before a load (libbpf-tools size some maps at run time:
    ``__uint(max_entries, 0)``, a stack map's value size from the stack depth asked for).  ``target_btf`` is
    the kernel BTF CO-RE relocations and attach ids come from (the running kernel's by default).
    ``log_level`` > 0 keeps the verifier's log of every load.
    """

    def __init__(self, source: str | BpfObject, *, programs: list[str] | None = None,
                 max_entries: dict[str, int] | None = None, value_size: dict[str, int] | None = None,
                 target_btf: BTF | None = None, log_level: int = 0) -> None:
        self.obj = source if isinstance(source, BpfObject) else BpfObject.load(os.fspath(source))
        self.name = self.obj.name
        self.maps: dict[str, FD] = {}
        self.map_defs: dict[str, MapDef] = {}
        self.progs: dict[str, FD] = {}
        self.links: dict[str, object] = {}
        self.btf_fd: FD | None = None
        self.notes: list[str] = []        # what was done differently from the object's wishes, in words
        self._target_btf = target_btf
        try:
            # The BTF loaded once, when CO-RE needs it, serves the attach ids too.
            self.externs, self.linked = link_for_load(
                self.obj, self.target_btf if has_core_relos(self.obj) else target_btf)
            if self.externs is not None:
                self.notes += self.externs.notes
            unknown = [n for n in (programs or ()) if n not in self.linked]
            if unknown:
                raise BpfObjectError(f"{self.obj.source}: no program {', '.join(map(repr, unknown))} (it has "
                                     f"{', '.join(self.linked) or 'none'})")
            self._load_btf()
            self._create_maps(max_entries or {}, value_size or {})
            for name in programs if programs is not None else list(self.linked):
                self.progs[name] = self._load_program(self.linked[name], log_level)
        except BaseException:
            self.close()
            raise

    # -- loading -----------------------------------------------------------------------------------------

    @property
    def target_btf(self) -> BTF:
        if self._target_btf is None:
            self._target_btf = BTF.load()
        return self._target_btf

    def _load_btf(self) -> None:
        if self.obj.btf is None or not features.btf_supported():
            if self.obj.btf is not None:
                self.notes.append("this kernel loads no BTF: the object's .BTF is not loaded")
            return
        blob = btffix.finalize(self.obj.elf.section_data(".BTF"), self.obj.elf, self.obj.externs,
                               self.obj.source)
        have = features.btf_features()
        if btffix.needs_sanitizing(have):
            blob = btffix.sanitize(blob, have)
            lacks = ", ".join(sorted(btffix.ALL_BTF_FEATURES - have))
            self.notes.append(f"BTF kinds this kernel lacks replaced ({lacks})")
        try:
            self.btf_fd = bpf.btf_load(blob)
        except BPFError as e:
            # libbpf: "Error loading .BTF into kernel ... BTF is optional, ignoring."
            self.notes.append(f"the kernel refused the object's .BTF ({e}); loaded without it")

    def _datasec_id(self, name: str) -> int:
        try:
            return self.obj.btf.find(name, BTF_KIND_DATASEC).id if self.obj.btf is not None else 0
        except BTFError:
            return 0

    def _create_maps(self, max_entries: dict[str, int], value_size: dict[str, int]) -> None:
        unknown = sorted((set(max_entries) | set(value_size)) - set(self.obj.maps))
        if unknown:
            raise BpfObjectError(f"{self.obj.source}: no map {', '.join(map(repr, unknown))} to size (it has "
                                 f"{', '.join(self.obj.maps)})")
        for m in self.obj.maps.values():
            entries = max_entries.get(m.name, m.max_entries)
            vsize = value_size.get(m.name, m.value_size)
            if m.type == BPF_MAP_TYPE_PERF_EVENT_ARRAY and entries == 0:
                entries = possible_cpus()
            elif m.type == BPF_MAP_TYPE_RINGBUF:
                entries = ringbuf_size(entries)
            if entries == 0:
                raise BpfObjectError(f"{self.obj.source}: map {m.name!r} has max_entries 0 (its program sets the size "
                                     f"at run time): give it one, LoadedObject(..., max_entries={{{m.name!r}: N}})")
            if m.numa_node or m.map_extra:
                raise BpfObjectError(f"{self.obj.source}: map {m.name!r} asks for numa_node/map_extra, which this "
                                     "loader does not pass")
            key_id, value_id = m.key_type_id, m.value_type_id
            if m.is_global_data:
                key_id, value_id = 0, self._datasec_id(m.section)
            use_btf = self.btf_fd is not None and value_id and m.type not in _NO_BTF_MAPS
            kw = dict(name=m.kernel_name[:BPF_OBJ_NAME_LEN - 1], flags=m.map_flags)
            try:
                if use_btf:
                    fd = bpf.map_create(m.type, m.key_size, vsize, entries, btf_fd=self.btf_fd.fd,
                                        btf_key_type_id=key_id, btf_value_type_id=value_id, **kw)
                else:
                    fd = bpf.map_create(m.type, m.key_size, vsize, entries, **kw)
            except BPFError as e:
                if not use_btf:
                    raise BPFError(e.op, e.errno, f"map {m.name!r} of {self.obj.source}: {e.hint or e}") from None
                self.notes.append(f"map {m.name!r}: created without BTF, the kernel refused it with ({e})")
                fd = bpf.map_create(m.type, m.key_size, vsize, entries, **kw)
            self.maps[m.name] = fd
            self.map_defs[m.name] = dataclasses.replace(m, max_entries=entries, value_size=vsize)
            if m.is_global_data:
                value = self.externs.kconfig if m.name == ".kconfig" and self.externs is not None else m.initial
                bpf.map_update_elem(fd.fileno(), bytes(4), value)
                if m.frozen:
                    bpf.map_freeze(fd.fileno())

    def _load_program(self, p: LinkedProgram, log_level: int) -> FD:
        if p.kind not in PROGRAM_TYPES:
            raise BpfObjectError(f"{self.obj.source}: program {p.name!r} in section {p.section!r}: this loader knows "
                                 f"the program types of {', '.join(sorted(PROGRAM_TYPES))} sections")
        prog_type, attach_type = PROGRAM_TYPES[p.kind]
        attach_btf_id = 0
        if prog_type == BPF_PROG_TYPE_TRACING:
            attach_btf_id = self._attach_btf_id(p)
        kw = {}
        if self.btf_fd is not None:
            kw["prog_btf_fd"] = self.btf_fd.fd
            if p.func_info:
                kw["func_info"] = b"".join(struct.pack("<II", r.insn, r.type_id) for r in p.func_info)
            if p.line_info:
                kw["line_info"] = b"".join(struct.pack("<IIII", r.insn, r.file_name_off, r.line_off, r.line_col)
                                           for r in p.line_info)
        kern_version = p.kern_version or HostFacts().kernel_version()
        try:
            return bpf.prog_load(prog_type, p.with_fds(self.maps), license=p.license, name=p.name[:15],
                                 expected_attach_type=attach_type, attach_btf_id=attach_btf_id,
                                 prog_flags=BPF_F_SLEEPABLE if p.sleepable else 0, kern_version=kern_version,
                                 log_level=log_level, **kw)
        except BPFError as e:
            if e.errno == errno.EPERM and p.kind in (FENTRY, FEXIT) and not isinstance(e, VerifierError):
                raise SetupError(f"{self.obj.source}: program {p.name!r} ({p.section}): this kernel refuses "
                                 f"{p.kind} programs (BPF trampolines: EPERM; under lockdown, or without "
                                 "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS)") from None
            raise

    def _attach_btf_id(self, p: LinkedProgram) -> int:
        if not p.target:
            raise BpfObjectError(f"{self.obj.source}: program {p.name!r}: section {p.section!r} names no kernel "
                                 f"function or tracepoint to load for")
        if p.kind == TP_BTF:
            name, kind = f"btf_trace_{p.target}", BTF_KIND_TYPEDEF
        else:
            name, kind = p.target, BTF_KIND_FUNC
        try:
            return self.target_btf.find(name, kind).id
        except BTFError:
            raise BpfObjectError(f"{self.obj.source}: program {p.name!r} ({p.section}): the kernel's BTF has no "
                                 f"{'typedef' if kind == BTF_KIND_TYPEDEF else 'function'} {name!r} to attach to "
                                 "(module BTF is not searched)") from None

    # -- attaching -----------------------------------------------------------------------------------------

    def attach(self, names: list[str] | None = None) -> dict[str, object]:
        """Attach every loaded program (or ``names``) where its section says; returns the new links by
        program.  A program whose section names no target is skipped, with a note."""
        from kestrel_raw.loader.attach import attach_program, auto_target

        made = {}
        for name in names if names is not None else list(self.progs):
            if name in self.links:
                continue
            p = self.linked[name]
            if auto_target(p) is None:
                self.notes.append(f"program {name!r} (SEC {p.section!r}) names no target: not attached "
                                  "(attach_program with a target)")
                continue
            made[name] = self.links[name] = attach_program(self.progs[name], p)
        return made

    def attach_program(self, name: str, target: str) -> object:
        """Attach program ``name`` to ``target`` given by hand, written as its section would write it
        ("/usr/bin/bash:readline" for a uprobe, "syscalls/sys_enter_openat" for a tracepoint)."""
        from kestrel_raw.loader.attach import attach_program

        link = attach_program(self.progs[name], self.linked[name], target)
        self.links[name] = link
        return link

    # -- what it holds -------------------------------------------------------------------------------------

    def ringbufs(self) -> dict[str, tuple[FD, int]]:
        """The object's ring buffers: map name -> (fd, size in bytes)."""
        return {n: (self.maps[n], m.max_entries) for n, m in self.map_defs.items()
                if m.type == BPF_MAP_TYPE_RINGBUF}

    def xlated(self, name: str) -> bytes:
        return bpf.prog_xlated(self.progs[name].fileno())

    def close(self) -> None:
        for link in getattr(self, "links", {}).values():
            link.close()
        for fd in (*getattr(self, "progs", {}).values(), *getattr(self, "maps", {}).values()):
            fd.close()
        if getattr(self, "btf_fd", None) is not None:
            self.btf_fd.close()

    def __enter__(self) -> "LoadedObject":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<LoadedObject {self.obj.source}: programs {', '.join(self.progs)}; maps {', '.join(self.maps)}>"
