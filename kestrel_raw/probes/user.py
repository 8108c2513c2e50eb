"""Your own programs, assembled with kestrel_raw.asm, attached to any probe type and read by the collector.

The counterpart of a clang-built BPF object (``CollectorConfig(program_path=...)``, kestrel_raw/loader), in
the same words: programs named by where they attach, written as libbpf's ``SEC()`` names are
(kestrel_raw/bpfobj/sections.py), and maps, among them the ring buffers the collector's pollers read.

    events = AsmObject("getpid", maps={"events": AsmMap.ringbuf(1 << 16)}, programs=[
        AsmProgram("ret", insns, "uretprobe/libc.so.6:getpid"),
    ])
    config = CollectorConfig(asm_object=events, record_schema=Record, event_types=())

- ``tracepoint/GROUP/NAME``, ``raw_tracepoint/NAME``, ``tp_btf/NAME``;
- ``uprobe/BINARY:FUNCTION[+OFFSET]``, ``uretprobe/...``: BINARY a path, a name (``libc.so.6``, ``bash``),
  or, with ``AsmProgram(pid=PID)``, a file that process maps (its /proc/PID/maps: a container's library);
  with ``pid`` the probe fires in that process alone, else in every process running the file;
- ``kprobe/FUNCTION[+OFFSET]``, ``kretprobe/FUNCTION``, ``fentry/FUNCTION``, ``fexit/FUNCTION``: where the kernel
  has them (kprobes need CONFIG_KPROBE_EVENTS, fentry/fexit BPF trampolines); where it does not, loading or
  attaching fails with a SetupError that names the probe type.

The program gets the ctx its type gives: a tracepoint's record, the registers (``struct pt_regs``) for a
uprobe or kprobe (``KernelLayout.call_args``/``call_ret`` give a function's argument and return registers),
the function's arguments as u64s for fentry/fexit (the return value after them, for fexit).  Its records
(``ringbuf_output``, or ``ringbuf_reserve``/``ringbuf_submit``, into one of the object's ring buffers) are
handed on as ``ObjectRecord`` values, parsed by ``record_schema``, exactly as an object's are
(kestrel_raw/collector/objects.py).  The license is "GPL" unless given: the probe_read helpers need it.
"""
from __future__ import annotations

import errno
from dataclasses import dataclass, field

from kestrel_raw.bpfobj.sections import (
    FENTRY, FEXIT, KPROBE, KRETPROBE, RAW_TRACEPOINT, TP_BTF, TRACEPOINT, UPROBE, URETPROBE, SectionKind,
    parse_section,
)
from kestrel_raw.errors import BPFError, ConfigError, SetupError, VerifierError
from kestrel_raw.kernel import bpf
from kestrel_raw.kernel.fd import FD
from kestrel_raw.kernel.uapi import (
    BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LRU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY,
    BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_RINGBUF,
)

MAP_TYPES = {"hash": BPF_MAP_TYPE_HASH, "array": BPF_MAP_TYPE_ARRAY, "percpu_hash": BPF_MAP_TYPE_PERCPU_HASH,
             "percpu_array": BPF_MAP_TYPE_PERCPU_ARRAY, "lru_hash": BPF_MAP_TYPE_LRU_HASH,
             "ringbuf": BPF_MAP_TYPE_RINGBUF}
ATTACHED_KINDS = (TRACEPOINT, RAW_TRACEPOINT, TP_BTF, UPROBE, URETPROBE, KPROBE, KRETPROBE, FENTRY, FEXIT)


@dataclass(frozen=True)
class AsmMap:
    """A map of an AsmObject, made when the object is loaded.  ``type``: a name of MAP_TYPES ("hash",
    "array", "percpu_array", "ringbuf"...) or a BPF_MAP_TYPE_* number.  A ring buffer has no key or value;
    its ``max_entries`` is its size in bytes (a power of two, a multiple of the page size)."""
    type: str | int
    key_size: int = 0
    value_size: int = 0
    max_entries: int = 0
    flags: int = 0

    @classmethod
    def ringbuf(cls, size: int) -> "AsmMap":
        return cls("ringbuf", 0, 0, size)

    @property
    def type_id(self) -> int:
        if isinstance(self.type, int):
            return self.type
        try:
            return MAP_TYPES[self.type]
        except KeyError:
            raise ConfigError(f"map type {self.type!r} is unknown; give one of {', '.join(MAP_TYPES)} or a "
                              "BPF_MAP_TYPE_* number") from None


@dataclass(frozen=True)
class AsmProgram:
    """One program: its kernel ``name`` (at most 15 characters), its instructions (kestrel_raw.asm values,
    labels and map names included), and ``section``, where it attaches, as libbpf's SEC() writes it.
    ``pid``: a uprobe for that process alone, its BINARY found among the files it maps."""
    name: str
    insns: tuple = field(repr=False)
    section: str = ""
    pid: int | None = None
    license: str = "GPL"

    def __post_init__(self) -> None:
        object.__setattr__(self, "insns", tuple(self.insns))

    @property
    def where(self) -> SectionKind:
        sk = parse_section(self.section)
        if sk is None or sk.kind not in ATTACHED_KINDS:
            raise ConfigError(f"program {self.name!r}: section {self.section!r} names no probe type this API "
                              f"attaches; give one of {', '.join(k + '/...' for k in ATTACHED_KINDS)}")
        if not sk.target:
            raise ConfigError(f"program {self.name!r}: section {self.section!r} names no target (write it as "
                              f"{sk.kind}/TARGET)")
        if self.pid is not None and sk.kind not in (UPROBE, URETPROBE):
            raise ConfigError(f"program {self.name!r}: pid is for uprobes; a {sk.kind} program sees every process")
        return sk


@dataclass(frozen=True)
class AsmObject:
    """Programs and the maps they name (by ``ld_map_fd(reg, NAME)``); the ring buffers among the maps are
    read by the collector.  ``name`` names its records (``ObjectRecord.object``)."""
    name: str
    programs: tuple[AsmProgram, ...]
    maps: dict[str, AsmMap] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "programs", tuple(self.programs))
        object.__setattr__(self, "maps", dict(self.maps))
        if not self.programs:
            raise ConfigError(f"AsmObject {self.name!r} has no programs")
        names = [p.name for p in self.programs]
        if len(set(names)) != len(names):
            raise ConfigError(f"AsmObject {self.name!r}: program names repeat ({', '.join(names)})")
        for p in self.programs:
            p.where  # the section is checked now, not at the attach
        for name, m in self.maps.items():
            if not isinstance(m, AsmMap):
                raise ConfigError(f"AsmObject {self.name!r}: map {name!r} is {m!r}, not an AsmMap")
            m.type_id

    def load(self, target_btf=None) -> "LoadedAsmObject":
        return LoadedAsmObject(self, target_btf=target_btf)


class LoadedAsmObject:
    """An AsmObject in the kernel: maps made, programs verified (``attach()`` attaches them, ``close()``
    detaches and closes everything).  The same shape as kestrel_raw.loader.LoadedObject: ``name``, ``maps``
    (name -> fd), ``progs``, ``links``, ``notes``, ``ringbufs()``."""

    def __init__(self, obj: AsmObject, target_btf=None) -> None:
        from kestrel_raw.asm import assemble
        from kestrel_raw.loader.objload import PROGRAM_TYPES

        self.obj = obj
        self.name = obj.name
        self.maps: dict[str, FD] = {}
        self.progs: dict[str, FD] = {}
        self.links: dict[str, object] = {}
        self.notes: list[str] = []
        self._btf = target_btf
        try:
            for name, m in obj.maps.items():
                self.maps[name] = bpf.map_create(m.type_id, m.key_size, m.value_size, m.max_entries,
                                                 name=name[:15], flags=m.flags)
            for p in obj.programs:
                sk = p.where
                prog_type, attach_type = PROGRAM_TYPES[sk.kind]
                btf_id = self._btf_id(p, sk) if sk.kind in (TP_BTF, FENTRY, FEXIT) else 0
                code = assemble(p.insns, maps=self.maps)
                try:
                    self.progs[p.name] = bpf.prog_load(prog_type, code, license=p.license, name=p.name,
                                                       expected_attach_type=attach_type, attach_btf_id=btf_id)
                except BPFError as e:
                    if e.errno == errno.EPERM and sk.kind in (FENTRY, FEXIT) and not isinstance(e, VerifierError):
                        raise SetupError(f"program {p.name!r} ({p.section}): this kernel refuses {sk.kind} programs "
                                         "(BPF trampolines: EPERM; under lockdown, or without "
                                         "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS)") from None
                    raise
        except BaseException:
            self.close()
            raise

    def _btf_id(self, p: AsmProgram, sk: SectionKind) -> int:
        from kestrel_raw.btf import BTF
        from kestrel_raw.btf.kinds import BTF_KIND_FUNC, BTF_KIND_TYPEDEF
        from kestrel_raw.errors import BTFError

        if self._btf is None:
            self._btf = BTF.load()
        name, kind = (f"btf_trace_{sk.target}", BTF_KIND_TYPEDEF) if sk.kind == TP_BTF else (sk.target, BTF_KIND_FUNC)
        try:
            return self._btf.find(name, kind).id
        except BTFError:
            raise SetupError(f"program {p.name!r} ({p.section}): the kernel's BTF has no "
                             f"{'typedef' if sk.kind == TP_BTF else 'function'} {name!r} to attach to") from None

    def attach(self) -> dict[str, object]:
        """Attach every program where its section says; returns the new links by program name."""
        from kestrel_raw.kernel.attach import attach_uprobe
        from kestrel_raw.loader.attach import attach_program
        from kestrel_raw.probes.targets import function_offset, resolve_binary

        made = {}
        for p in self.obj.programs:
            if p.name in self.links:
                continue
            sk = p.where
            if sk.kind in (UPROBE, URETPROBE):
                binary, function, offset = sk.uprobe
                path, _shown = resolve_binary(binary, p.pid)
                link = attach_uprobe(self.progs[p.name], path, function_offset(path, function) + offset,
                                     retprobe=sk.kind == URETPROBE, pid=-1 if p.pid is None else p.pid)
            else:
                link = attach_program(self.progs[p.name], _Section(p.name, sk))
            made[p.name] = self.links[p.name] = link
        return made

    def ringbufs(self) -> dict[str, tuple[FD, int]]:
        """The ring buffers: map name -> (fd, size in bytes)."""
        return {n: (self.maps[n], m.max_entries) for n, m in self.obj.maps.items()
                if m.type_id == BPF_MAP_TYPE_RINGBUF}

    def close(self) -> None:
        for link in self.links.values():
            link.close()
        for fd in (*self.progs.values(), *self.maps.values()):
            fd.close()

    def __enter__(self) -> "LoadedAsmObject":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<LoadedAsmObject {self.name}: programs {', '.join(self.progs)}; maps {', '.join(self.maps)}>"


@dataclass(frozen=True)
class CallRegisters:
    """Where a function's arguments 0..5 (``args``) and its return value (``ret``) are in a uprobe's or
    kprobe's ctx (struct pt_regs) on this machine: byte offsets for ``ldx_mem(BPF_DW, dst, ctx, offset)``."""
    args: tuple[int, ...]
    ret: int


def call_registers(btf=None) -> CallRegisters:
    """The calling convention's registers (kestrel_raw/programs/layout.py), at their offsets in the kernel's
    BTF struct pt_regs (``btf``: the running kernel's by default)."""
    from kestrel_raw.btf import BTF
    from kestrel_raw.programs.layout import call_arg_offsets, call_ret_offset

    btf = btf if btf is not None else BTF.load()
    return CallRegisters(call_arg_offsets(btf), call_ret_offset(btf))


@dataclass(frozen=True)
class _Section:
    """What kestrel_raw.loader.attach.attach_program reads of a program: its name and what its section says."""
    name: str
    sk: SectionKind

    @property
    def kind(self) -> str:
        return self.sk.kind

    @property
    def target(self) -> str:
        return self.sk.target

    @property
    def sleepable(self) -> bool:
        return self.sk.sleepable

    @property
    def section(self) -> str:
        return self.sk.name


__all__ = ["AsmMap", "AsmProgram", "AsmObject", "LoadedAsmObject", "CallRegisters", "call_registers", "MAP_TYPES"]
