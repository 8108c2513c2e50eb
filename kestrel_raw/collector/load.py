"""Loading: the maps, the kernel's BTF, and the programs, built for the running kernel (tracepoint formats
from tracefs, struct layouts from BTF) and verified.  Nothing is attached here.

Building (``build_programs``) needs no privilege beyond reading tracefs and the kernel's BTF, and no map:
``kestrel-raw disasm`` shows, digests and pins the programs from it exactly as ``load_programs`` loads
them.  The programs read the collector's own tgid from a map (``self_tgid``), not from an immediate, so
their bytes are the same in every run.

Each function that makes kernel objects appends them to the caller's containers as it goes, so that the
caller can close everything made so far when a later step fails.
"""
from __future__ import annotations

import errno
import os
import struct

from kestrel_raw import programs
from kestrel_raw.btf import BTF
from kestrel_raw.collector.peers import FILTER_ENTRIES, FILTER_MAP_NAME, ONLY_MAP_NAME, START, TGID
from kestrel_raw.config import CollectorConfig
from kestrel_raw.errors import BPFError, BTFError, SetupError
from kestrel_raw.kernel import bpf
from kestrel_raw.kernel.prog import Program
from kestrel_raw.kernel.tracefs import find_tracefs, tracepoint_format
from kestrel_raw.kernel.uapi import (
    BPF_F_NO_PREALLOC, BPF_F_RDONLY_PROG, BPF_MAP_TYPE_ARRAY_OF_MAPS, BPF_PROG_TYPE_KPROBE, BPF_PROG_TYPE_TRACING, BPF_TRACE_RAW_TP,
)
from kestrel_raw.maps import ArrayMap, HashMap, LpmTrieMap, Map, PerCPUArrayMap, ProgArrayMap, RingBuf, TaskStorageMap
from kestrel_raw.programs import dns, filtermaps, shell
from kestrel_raw.programs.builder import MAP_SELF_TGID

_U32 = struct.Struct("<I")  # the outer map's key (ring index) and value (ring fd)


def load_btf(path: str) -> BTF:
    try:
        if not os.path.exists(path):
            raise FileNotFoundError(path)
        return BTF.load(path)
    except FileNotFoundError:
        raise SetupError(f"no kernel BTF at {path}: kestrel-raw takes kernel struct layouts from BTF, "
                         f"so it needs a kernel built with CONFIG_DEBUG_INFO_BTF=y") from None
    except (BTFError, ValueError, EOFError, struct.error) as e:
        raise SetupError(f"the kernel BTF at {path} cannot be used: {e}") from None
    except OSError as e:
        raise SetupError(f"cannot read the kernel BTF at {path}: {e.strerror or e}") from None


def create_maps(cfg: CollectorConfig, nprograms: int, maps: dict[str, Map], rings: list[RingBuf]) -> None:
    """The rings, the map of rings the programs pick from, and the programs' other maps."""
    try:
        rings.append(RingBuf(cfg.buffer_size, name="kr_ring0"))
    except BPFError as e:
        if e.errno != errno.EINVAL:
            raise
        raise SetupError(f"this kernel refused a BPF ring buffer ({e}): kestrel-raw needs "
                         f"BPF_MAP_TYPE_RINGBUF, Linux 5.8 or later") from None
    rings += [RingBuf(cfg.buffer_size, name=f"kr_ring{i}") for i in range(1, cfg.buffers)]
    outer = Map(BPF_MAP_TYPE_ARRAY_OF_MAPS, 4, 4, cfg.buffers, name=programs.MAP_RINGS,
                inner_map_fd=rings[0].fd)
    maps[programs.MAP_RINGS] = outer
    fill_outer(outer, [ring.fd for ring in rings])
    maps[programs.MAP_SCRATCH] = PerCPUArrayMap(programs.SCRATCH_SIZE, 1, name=programs.MAP_SCRATCH)
    maps[programs.MAP_STATS] = PerCPUArrayMap(8, programs.STATS_ENTRIES, name=programs.MAP_STATS)
    maps[programs.MAP_SELF_RUNS] = PerCPUArrayMap(8, max(1, nprograms), name=programs.MAP_SELF_RUNS)
    maps[programs.MAP_ENTRY] = TaskStorageMap(programs.ENTRY_VALUE_SIZE, name=programs.MAP_ENTRY)
    maps[programs.MAP_EXEC_ENTRY] = ArrayMap(programs.EXEC_ENTRY_VALUE_SIZE, programs.EXEC_SLOTS,
                                             name=programs.MAP_EXEC_ENTRY)
    maps[programs.MAP_TAILS] = ProgArrayMap(programs.TAILS, name=programs.MAP_TAILS)
    maps[programs.MAP_FORK_TAILS] = ProgArrayMap(programs.FORK_TAILS, name=programs.MAP_FORK_TAILS)
    maps[MAP_SELF_TGID] = self_tgid_map(os.getpid())
    maps[programs.MAP_FILTER] = HashMap(
        TGID.size, START.size, FILTER_ENTRIES, name=FILTER_MAP_NAME if cfg.only_tgids is None else ONLY_MAP_NAME)
    create_filter_maps(maps)


# The filter maps whose entries are allocated as they are written (BPF_F_NO_PREALLOC) rather than all at
# creation: the cgroup keys hold SETS * MAX_CGROUPS entries each (131072), which preallocated would charge
# ~15 MB of BPF memory to the collector's cgroup for maps that are empty unless --cgroup/--container is
# given.  A lookup in such a map costs the same; an update allocates (user space writes them, not the
# programs, so no program ever waits on an allocation).  The other hash maps are small (2048 entries):
# preallocated, as hash maps are by default.
_NO_PREALLOC = (filtermaps.MAP_FCGROUP, filtermaps.MAP_FCONTAINER)


def create_filter_maps(maps: dict[str, Map]) -> None:
    """The filter maps of kestrel_raw/programs/filtermaps.py (names, sizes and layouts there), empty: no
    filter until one is written (kestrel_raw/collector/filtering.py)."""
    maps[filtermaps.MAP_FSET] = ArrayMap(4, 1, name=filtermaps.MAP_FSET)
    maps[filtermaps.MAP_FCFG] = ArrayMap(filtermaps.CFG.size, filtermaps.SETS * filtermaps.FILTER_KINDS,
                                         name=filtermaps.MAP_FCFG)
    maps[filtermaps.MAP_FRATE] = ArrayMap(filtermaps.RATE.size, filtermaps.FILTER_KINDS, name=filtermaps.MAP_FRATE)
    for name, key in filtermaps.KEY_STRUCTS.items():
        entries = filtermaps.ENTRIES[name]
        if name in filtermaps.LPM_MAPS:
            maps[name] = LpmTrieMap(key.size, filtermaps.VALUE.size, entries, name=name)
        else:
            maps[name] = HashMap(key.size, filtermaps.VALUE.size, entries, name=name,
                                 flags=BPF_F_NO_PREALLOC if name in _NO_PREALLOC else 0)


def self_tgid_map(tgid: int) -> ArrayMap:
    """The map the programs read the collector's own tgid from: one u32, read-only for programs
    (BPF_F_RDONLY_PROG) and frozen once written, so that nobody can change it afterwards (a tgid put there
    would be hidden from the collector) and the verifier takes it as a constant."""
    m = ArrayMap(TGID.size, 1, name=MAP_SELF_TGID, flags=BPF_F_RDONLY_PROG)
    try:
        m[0] = TGID.pack(tgid)
        bpf.map_freeze(m.fileno())
    except BaseException:
        m.close()
        raise
    return m
def create_probe_maps(specs: list[programs.ProgramSpec], maps: dict[str, Map]) -> None:
    """The maps only the uprobe programs use, when they are loaded: dns_query's per-thread slot joining a
    getaddrinfo call to its return, and the shell check's tgid (kestrel_raw/collector/shellcheck.py)."""
    names = {s.name for s in specs}
    if {"kr_dns_call", "kr_dns_ret"} & names:
        maps[dns.MAP_DNS] = TaskStorageMap(dns.DNS_VALUE_SIZE, name=dns.MAP_DNS)
    if "kr_shell" in names:
        maps[shell.MAP_CHECK] = ArrayMap(4, 1, name=shell.MAP_CHECK)


def fill_only(filter_map: HashMap, tgids: tuple[int, ...]) -> None:
    """An only-mode filter: the programs report these tgids alone."""
    for tgid in tgids:
        filter_map[TGID.pack(tgid)] = START.pack(0)


def fill_outer(outer: Map, fds: list[int]) -> None:
    """outer[i] = fds[i], in one BPF_MAP_UPDATE_BATCH where the kernel has it for maps of maps: it waits
    for an RCU grace period after each update of such a map, once per batch (~14 ms each here)."""
    keys = b"".join(_U32.pack(i) for i in range(len(fds)))
    values = b"".join(_U32.pack(fd) for fd in fds)
    try:
        if bpf.map_update_batch(outer.fd, keys, values, len(fds)) == len(fds):
            return
    except BPFError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, 524):  # 524: the kernel's ENOTSUPP
            raise
    for i, fd in enumerate(fds):
        outer.update(_U32.pack(i), _U32.pack(fd))


def build_programs(cfg: CollectorConfig, specs: list[programs.ProgramSpec], *, mount_tracefs: bool = True,
                   annotate: bool = True, btf: BTF | None = None) -> list[tuple[programs.ProgramSpec, list]]:
    """The instructions of every program of ``specs``, as ``load_programs`` loads them on this kernel.

    Reads the tracepoint formats (tracefs; mounted when it is not and ``mount_tracefs``) and the kernel's
    BTF (``btf``, or read from ``cfg.btf_path``); makes no kernel object.  A program counts its runs for this process in
    MAP_SELF_RUNS at its index in ``specs``; one reached by tail call (``spec.tail``) does not.
    ``annotate``: the layout constants carry their provenance (False: plain ints; the bytes are the same).
    """
    filter_mode = programs.FILTER_IGNORE if cfg.only_tgids is None else programs.FILTER_ONLY
    find_tracefs(mount=mount_tracefs)
    formats = {s.name: tracepoint_format(s.group, s.tracepoint, annotate=annotate) for s in specs
               if s.tail is None and s.probe is None and s.btf_target is None}
    layout = programs.KernelLayout.from_btf(btf if btf is not None else load_btf(cfg.btf_path), annotate=annotate)
    built = []
    for index, spec in enumerate(specs):
        if spec.probe is not None:
            spec.probe.locate()  # the file and the symbol exist: say so now, not at the attach
        insns = programs.build(spec, formats.get(spec.name), layout, self_tgid=None, nrings=cfg.buffers,
                               wakeup_threshold=-1 if cfg.latency == "low" else cfg.wakeup_bytes,
                               filter_mode=filter_mode, self_index=index if spec.tail is None else None,
                               threads=cfg.threads, context=cfg.context)
        built.append((spec, insns))
    return built


def load_programs(cfg: CollectorConfig, built: list[tuple[programs.ProgramSpec, list]], maps: dict[str, Map],
                  loaded: list[tuple[programs.ProgramSpec, Program]],
                  listing: list[tuple[programs.ProgramSpec, list]], btf: BTF | None = None) -> None:
    """Load every program of ``built`` (``build_programs``; the verifier runs here).  A program reached by
    tail call (``spec.tail``) goes into its slot of its tail map (``spec.tail_map``); a uprobe's program is
    loaded as a kprobe program (the type uprobes take); a tp_btf program (``spec.btf_target``) as
    BPF_PROG_TYPE_TRACING for its raw tracepoint's BTF type (from ``btf``, or read from ``cfg.btf_path``).  With ``cfg.verifier_log_level``, the verifier's
    log of each program is written to ``cfg.verifier_log_path``/NAME.log."""
    for spec, insns in built:
        if spec.btf_target is not None and btf is None:
            btf = load_btf(cfg.btf_path)
        if spec.probe is not None:
            kind = {"prog_type": BPF_PROG_TYPE_KPROBE}
        elif spec.btf_target is not None:
            kind = {"prog_type": BPF_PROG_TYPE_TRACING, "expected_attach_type": BPF_TRACE_RAW_TP,
                    "attach_btf_id": _btf_target_id(btf, spec.btf_target)}
        else:
            kind = {}
        prog = Program(insns, maps=maps, name=spec.name, log_level=cfg.verifier_log_level, **kind)
        loaded.append((spec, prog))
        listing.append((spec, insns))
        if cfg.verifier_log_level:
            write_verifier_log(cfg.verifier_log_path, spec.name, prog.verifier_log)
        if spec.tail is not None:
            maps[spec.tail_map][spec.tail] = prog


def _btf_target_id(btf: BTF, tracepoint: str) -> int:
    """The BTF id of ``btf_trace_<tracepoint>``, the type a tp_btf program names as its attach target."""
    try:
        return btf.find(f"btf_trace_{tracepoint}", "typedef").id
    except (BTFError, KeyError, LookupError) as e:
        raise SetupError(f"this kernel's BTF has no btf_trace_{tracepoint} ({e}): the {tracepoint} event needs "
                         f"a tp_btf program (Linux 5.5 or later with BTF)") from None


def write_verifier_log(directory: str, name: str, log: str) -> None:
    """``directory``/``name``.log: the verifier's log of one program."""
    with open(os.path.join(directory, f"{name}.log"), "w") as f:
        f.write(log)


def attach_point(spec: programs.ProgramSpec) -> str:
    """Where a program runs: ``tracepoint sched:sched_process_exec``, a tp_btf raw tracepoint, a uprobe's
    file, symbol and offset, or the tail-call slot it sits in."""
    if spec.probe is not None:
        path, offset = spec.probe.locate()
        return f"{spec.probe.kind} {path}:{spec.probe.symbol} (file offset 0x{offset:x})"
    if spec.tail is not None:
        return f"reached by tail call, slot {spec.tail} of {spec.tail_map}"
    if spec.btf_target is not None:
        return f"tp_btf {spec.btf_target}"
    return f"tracepoint {spec.group}:{spec.tracepoint}"


def listing_text(spec: programs.ProgramSpec, insns: list) -> str:
    """One program as text, as an auditor would read it: where it attaches, its digests (the SHA-256 a pin
    file names, the tag the kernel will report), then its annotated disassembly."""
    from kestrel_raw.asm import format_program, program_digest

    digest = program_digest(insns)
    return (f"; {spec.name}: {attach_point(spec)}\n; sha256 {digest.sha256}\n; tag {digest.tag}\n"
            f"{format_program(insns)}")


def write_listings(path: str, listing: list[tuple[programs.ProgramSpec, list]]) -> None:
    """Write each program's disassembly to ``path`` (a directory) for audit."""
    for spec, insns in listing:
        with open(os.path.join(path, f"{spec.name}.txt"), "w") as f:
            f.write(listing_text(spec, insns) + "\n")
