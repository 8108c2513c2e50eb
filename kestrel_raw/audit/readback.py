"""Reading programs back from the kernel, and checking them against what was meant to be loaded.

``check_program`` takes the instructions that were meant to go into BPF_PROG_LOAD (the exact bytes, or the
built instructions with their maps still named) and a loaded program's fd, and reads what the kernel holds
(BPF_OBJ_GET_INFO_BY_FD: its tag, map ids, run counts, xlated instructions) to show that it is that program:

- the kernel's tag (computed over the bytes it was given, map fds left out) equals ``prog_tag`` of the
  instructions meant;
- the xlated instructions are those instructions with only the kernel's known rewrites
  (kestrel_raw/audit/rewrites.py), each named, every map load naming the map of the same name;
- the maps the program uses (``map_ids``) are the maps those loads name.

``running_collector`` finds the programs and maps of a running collector (another process: by the names
its programs and maps carry, read through pidfd_getfd, as kestrel_raw/collector/peers.py recognises
other collectors), so that ``kestrel-raw verify`` can check them against the programs this kestrel-raw
builds for this kernel.
"""
from __future__ import annotations

import dataclasses
import os

from kestrel_raw.asm import KernelSymbols, disassemble, disassemble_xlated, prog_tag, program_digest, resolve
from kestrel_raw.asm.digest import Code
from kestrel_raw.asm.opcode import LD_IMM64
from kestrel_raw.audit.rewrites import MAP_SRCS, Comparison, compare
from kestrel_raw.collector.peers import borrowed, bpf_fds
from kestrel_raw.errors import BPFError
from kestrel_raw.kernel import bpf
from kestrel_raw.kernel.uapi import BPF_PROG_TYPE_TRACEPOINT


@dataclasses.dataclass(frozen=True)
class ProgramCheck:
    """What ``check_program`` found for one program.  ``problems`` is empty when it is the one meant."""

    name: str
    info: bpf.ProgInfo
    sha256: str  # of the instructions meant (the pin file's digest)
    expected_tag: str
    maps: dict[int, str]  # id -> name of the maps the kernel says the program uses
    comparison: Comparison
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {
            "name": self.name, "id": self.info.id, "ok": self.ok, "problems": list(self.problems),
            "tag": self.info.tag.hex(), "expected_tag": self.expected_tag, "sha256": self.sha256,
            "maps": {str(i): n for i, n in sorted(self.maps.items())},
            "run_cnt": self.info.run_cnt, "run_time_ns": self.info.run_time_ns,
            "recursion_misses": self.info.recursion_misses, "verified_insns": self.info.verified_insns,
            "loaded_insns": self.comparison.loaded_insns, "xlated_insns": self.comparison.xlated_insns,
            "rewrites": [r.to_json() for r in self.comparison.rewrites],
        }

    def text(self) -> str:
        """The report as an auditor reads it: identity, maps, runs, then each rewrite."""
        info = self.info
        verdict = "verified" if self.ok else "NOT VERIFIED"
        tag = info.tag.hex()
        lines = [f"{self.name}: {verdict} (id {info.id}, tag {tag}"
                 f"{' = the tag of the bytes meant' if tag == self.expected_tag else f', expected {self.expected_tag}'}"
                 f", sha256 {self.sha256})"]
        lines += [f"  problem: {p}" for p in self.problems]
        lines.append("  maps: " + (", ".join(f"{n} (id {i})" for i, n in sorted(self.maps.items())) or "none"))
        if info.run_cnt:
            lines.append(f"  runs: {info.run_cnt}, {info.run_time_ns} ns in all ({info.run_time_ns / info.run_cnt:.0f} "
                         f"ns a run), {info.recursion_misses} missed")
        else:
            lines.append("  runs: none counted (the kernel counts them only while BPF stats are enabled: "
                         "sysctl kernel.bpf_stats_enabled=1)")
        c = self.comparison
        lines.append(f"  {c.loaded_insns} instructions loaded, {c.xlated_insns} xlated "
                     f"({info.verified_insns} processed by the verifier): {c.summary()}")
        lines += [f"  {r.line()}" for r in c.rewrites]
        return "\n".join(lines)


def loaded_instructions(code: Code) -> list:
    """The instructions meant: built ones resolved (map names kept), or bytes disassembled."""
    if isinstance(code, (bytes, bytearray, memoryview)):
        return disassemble(code)
    return resolve(code, resolve_maps=False)


def map_names_by_id(ids) -> dict[int, str]:
    """Map id -> the map's name, for each id the kernel still has."""
    out = {}
    for map_id in ids:
        try:
            fd = bpf.map_get_fd_by_id(map_id)
        except BPFError:
            continue
        try:
            out[map_id] = bpf.map_info(fd.fileno()).name
        finally:
            fd.close()
    return out


def check_program(name: str, code: Code, prog_fd: int, *, fd_names: dict[int, str] | None = None,
                  id_names: dict[int, str] | None = None, symbols: KernelSymbols | None = None,
                  map_aliases: dict[str, str] | None = None) -> ProgramCheck:
    """Check the program loaded as ``prog_fd`` against ``code``, what was meant to be loaded.

    ``fd_names`` names the maps of map loads that hold an fd (the bytes as loaded); ``id_names`` names the
    kernel's maps by id (default: asked from the kernel); ``map_aliases`` maps a name in the code to the
    kernel name of its map when they differ (the filter map of an only-mode collector is ``kr_only``).
    """
    info = bpf.prog_info(prog_fd)
    xlated = bpf.prog_xlated(prog_fd)
    ids = id_names if id_names is not None else map_names_by_id(info.map_ids)
    aliases = map_aliases or {}
    loaded = loaded_instructions(code)
    if aliases:
        loaded = [dataclasses.replace(i, map_name=aliases.get(i.map_name, i.map_name)) if i.map_name else i
                  for i in loaded]
        fd_names = {fd: aliases.get(n, n) for fd, n in (fd_names or {}).items()}
    comparison = compare(loaded, disassemble_xlated(xlated, symbols), fd_names=fd_names, id_names=ids)
    digest = program_digest(code)
    expected_tag = prog_tag(code).hex()
    problems = []
    if info.tag.hex() != expected_tag:
        problems.append(f"the kernel's tag {info.tag.hex()} is not the tag {expected_tag} of the instructions meant: "
                        f"other bytes were loaded")
    if not comparison.ok:
        problems += [f"slot {r.loaded[0]}: {r.text}" for r in comparison.rewrites if r.kind == "unexplained"]
    used = {ids.get(i, f"id {i}") for i in info.map_ids}
    named = {i.map_name or (fd_names or {}).get(i.imm & 0xFFFFFFFF, f"fd {i.imm & 0xFFFFFFFF}")
             for i in loaded if i.opcode == LD_IMM64 and i.src in MAP_SRCS}
    if used != named:
        problems.append(f"the kernel says the program uses the maps {sorted(map(str, used))}, its instructions name "
                        f"{sorted(named)}")
    if info.name != name[:15]:
        problems.append(f"the kernel names the program {info.name!r}, not {name!r}")
    return ProgramCheck(name, info, digest.sha256, expected_tag, {i: ids.get(i, "?") for i in info.map_ids},
                        comparison, tuple(problems))


@dataclasses.dataclass
class RunningCollector:
    """A running collector's programs and maps, as fds of this process (duplicated from it): close()."""

    pid: int
    programs: dict[str, int]  # name -> fd
    maps: dict[str, tuple[int, bpf.MapInfo]]  # name -> (fd, info)
    frozen: dict[str, bool]  # map name -> the kernel says it is frozen (fdinfo)
    # (fd, info) of every other program it holds: those of its BPF object (run --object), if it has one
    others: list[tuple[int, bpf.ProgInfo]] = dataclasses.field(default_factory=list)

    def close(self) -> None:
        for fd in self.programs.values():
            os.close(fd)
        for fd, _info in self.maps.values():
            os.close(fd)
        for fd, _info in self.others:
            os.close(fd)
        self.programs.clear()
        self.maps.clear()
        self.others.clear()


def collector_pids(object_tags: set[tuple[str, bytes]] | None = None) -> list[int]:
    """The processes that hold a ``kr_*`` tracepoint program and a kr_filter or kr_only map (collectors),
    and with ``object_tags`` ((kernel name, tag) of a BPF object's programs) those that hold one of those
    programs (a collector of that object, ``run --object`` with or without built-in programs)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            maps, progs = bpf_fds(int(entry))
            if progs and (maps or object_tags):
                rc = running_collector(int(entry), object_only=bool(object_tags))
                if rc is not None:
                    if rc.programs or any((i.name, i.tag) in object_tags for _fd, i in rc.others):
                        found.append(rc.pid)
                    rc.close()
    return sorted(found)


def running_collector(pid: int, *, object_only: bool = False) -> RunningCollector | None:
    """The ``kr_*`` programs, the other programs and the maps of process ``pid``, or None when it is no
    collector (or cannot be read: pidfd_getfd needs CAP_SYS_PTRACE, or root over a root process).  With
    ``object_only`` a process that holds programs but no built-in ones (``run --object`` without
    ``--events``) counts as one too."""
    maps, progs = bpf_fds(pid)
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    found = RunningCollector(pid, {}, {}, {})
    try:
        for _, dup, info in borrowed(pidfd, progs, bpf.prog_info):
            if info.name.startswith("kr_") and info.name not in found.programs:
                found.programs[info.name] = dup
            elif not info.name.startswith("kr_"):
                found.others.append((dup, info))
            else:
                os.close(dup)
        for fd, dup, info in borrowed(pidfd, maps, bpf.map_info):
            if info.name not in found.maps:
                found.maps[info.name] = (dup, info)
                found.frozen[info.name] = _frozen(pid, fd)
            else:
                os.close(dup)
    finally:
        os.close(pidfd)
    is_collector = any(bpf.prog_info(fd).type == BPF_PROG_TYPE_TRACEPOINT for fd in found.programs.values()) and (
        "kr_filter" in found.maps or "kr_only" in found.maps) or (object_only and not found.programs
                                                                 and bool(found.others))
    if not is_collector:
        found.close()
        return None
    return found


def _frozen(pid: int, fd: int) -> bool:
    """What /proc/PID/fdinfo/FD says of a map's ``frozen`` (kernel/bpf/syscall.c bpf_map_show_fdinfo)."""
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key == "frozen":
                    return value.strip() == "1"
    except OSError:
        pass
    return False


def kinds_of(program_names) -> list[int]:
    """The event types whose programs are all among ``program_names`` (a running collector's)."""
    from kestrel_raw import programs

    names = set(program_names)
    return [kind for kind, specs in programs.SPECS.items() if all(s.name in names for s in specs)]


def self_tgid_problems(rc: RunningCollector) -> list[str]:
    """What is wrong with the collector's own-tgid map: it must hold its pid and be frozen (else a process
    could be hidden from it by writing its tgid there)."""
    from kestrel_raw.programs.builder import MAP_SELF_TGID

    entry = rc.maps.get(MAP_SELF_TGID)
    if entry is None:
        return [f"the collector has no {MAP_SELF_TGID} map"]
    fd, _info = entry
    value = bpf.map_lookup_elem(fd, (0).to_bytes(4, "little"), 4)
    problems = []
    tgid = int.from_bytes(value or bytes(4), "little")
    if tgid != rc.pid:
        problems.append(f"{MAP_SELF_TGID} holds {tgid}, not the collector's pid {rc.pid}: the programs skip that "
                        f"process")
    if not rc.frozen.get(MAP_SELF_TGID):
        problems.append(f"{MAP_SELF_TGID} is not frozen: anyone with its fd could change which process is skipped")
    return problems


def check_collector(rc: RunningCollector, configs, symbols: KernelSymbols | None = None) -> tuple[object, list[ProgramCheck]]:
    """Check a running collector's programs against the programs this kestrel-raw builds on this kernel.

    ``configs``: the CollectorConfig candidates it may have been started with (options that change the
    programs' bytes: ring count, wakeup threshold, latency, filter mode); the one whose programs' tags all
    match the kernel's is used (else the one with most matches, and the others are reported).  Returns it
    and one ``ProgramCheck`` per program of the collector.
    """
    from kestrel_raw import programs
    from kestrel_raw.collector.load import build_programs

    tags = {name: bpf.prog_info(fd).tag.hex() for name, fd in rc.programs.items()}
    best = None
    for cfg in configs:
        built = build_programs(cfg, programs.config_specs(cfg), mount_tracefs=False)
        matches = sum(tags.get(spec.name) == prog_tag(insns).hex() for spec, insns in built)
        if best is None or matches > best[0]:
            best = (matches, cfg, built)
        if matches == len(built) == len(rc.programs):
            break
    _matches, cfg, built = best
    ids = {info.id: name for name, (_fd, info) in rc.maps.items()}
    aliases = {programs.MAP_FILTER: "kr_only"} if "kr_only" in rc.maps else {}
    checks = []
    for spec, insns in built:
        fd = rc.programs.get(spec.name)
        if fd is None:
            continue
        checks.append(check_program(spec.name, insns, fd, id_names=ids, symbols=symbols, map_aliases=aliases))
    return cfg, checks
