"""Loading: the maps, the kernel's BTF, and the programs, built for the running kernel (tracepoint formats
from tracefs, struct layouts from BTF) and verified.  Nothing is attached here.

Each function appends what it made to the caller's containers as it goes, so that the caller can close
everything made so far when a later step fails.
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
from kestrel_raw.kernel.uapi import BPF_MAP_TYPE_ARRAY_OF_MAPS, BPF_PROG_TYPE_TRACING, BPF_TRACE_RAW_TP
from kestrel_raw.maps import ArrayMap, HashMap, Map, PerCPUArrayMap, ProgArrayMap, RingBuf, TaskStorageMap

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
    maps[programs.MAP_FILTER] = HashMap(
        TGID.size, START.size, FILTER_ENTRIES, name=FILTER_MAP_NAME if cfg.only_tgids is None else ONLY_MAP_NAME)


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


def load_programs(cfg: CollectorConfig, specs: list[programs.ProgramSpec], maps: dict[str, Map],
                  loaded: list[tuple[programs.ProgramSpec, Program]],
                  listing: list[tuple[programs.ProgramSpec, list]], btf: BTF | None = None) -> None:
    """Build every program of ``specs`` for this kernel and load it (the verifier runs here).  A program
    reached by tail call (``spec.tail``) goes into its slot of its tail map; the others count their runs for
    this process in MAP_SELF_RUNS at their index in ``loaded``.  A tp_btf program (``spec.btf_target``) is
    loaded as BPF_PROG_TYPE_TRACING for its raw tracepoint's BTF type."""
    filter_mode = programs.FILTER_IGNORE if cfg.only_tgids is None else programs.FILTER_ONLY
    find_tracefs()
    formats = {s.name: tracepoint_format(s.group, s.tracepoint) for s in specs
               if s.tail is None and s.btf_target is None}
    layout = programs.KernelLayout.from_btf(btf if btf is not None else load_btf(cfg.btf_path))
    for spec in specs:
        insns = programs.build(spec, formats.get(spec.name), layout, self_tgid=os.getpid(),
                               nrings=cfg.buffers,
                               wakeup_threshold=-1 if cfg.latency == "low" else cfg.wakeup_bytes,
                               filter_mode=filter_mode, self_index=len(loaded) if spec.tail is None else None,
                               threads=cfg.threads)
        if spec.btf_target is None:
            prog = Program(insns, maps=maps, name=spec.name)
        else:
            prog = Program(insns, maps=maps, name=spec.name, prog_type=BPF_PROG_TYPE_TRACING,
                           expected_attach_type=BPF_TRACE_RAW_TP,
                           attach_btf_id=_btf_target_id(layout, spec.btf_target))
        loaded.append((spec, prog))
        listing.append((spec, insns))
        if spec.tail is not None:
            maps[spec.tail_map][spec.tail] = prog


def _btf_target_id(layout, tracepoint: str) -> int:
    """The BTF id of ``btf_trace_<tracepoint>``, the type a tp_btf program names as its attach target."""
    try:
        return layout.type_id(f"btf_trace_{tracepoint}", "typedef")
    except (BTFError, KeyError, LookupError) as e:
        raise SetupError(f"this kernel's BTF has no btf_trace_{tracepoint} ({e}): the {tracepoint} event needs "
                         f"a tp_btf program (Linux 5.5 or later with BTF)") from None


def listing_text(spec: programs.ProgramSpec, insns: list) -> str:
    """One program as text, as an auditor would read it: where it attaches, then its disassembly."""
    from kestrel_raw.asm import format_program

    if spec.tail is not None:
        where = f"reached by tail call, slot {spec.tail} of {spec.tail_map}"
    elif spec.btf_target is not None:
        where = f"tp_btf {spec.btf_target}"
    else:
        where = f"tracepoint {spec.group}:{spec.tracepoint}"
    return f"; {spec.name}: {where}\n{format_program(insns)}"


def write_listings(path: str, listing: list[tuple[programs.ProgramSpec, list]]) -> None:
    """Write each program's disassembly to ``path`` (a directory) for audit."""
    for spec, insns in listing:
        with open(os.path.join(path, f"{spec.name}.txt"), "w") as f:
            f.write(listing_text(spec, insns) + "\n")
