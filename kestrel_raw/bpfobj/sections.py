"""Program section names (libbpf's ``SEC("...")`` conventions) and what they say about a program.

``SEC("tracepoint/syscalls/sys_enter_openat")`` makes a tracepoint program attached to that event;
``SEC("tp_btf/sched_process_exec")`` a BTF-typed raw tracepoint, and so on.  The table follows libbpf's
``section_defs`` for the probe types kestrel-raw attaches; a bare prefix (``SEC("kprobe")``) leaves the target
to the caller.  Which bpf_prog_type and expected_attach_type each kind loads as is the loader's business.
"""
from __future__ import annotations

from dataclasses import dataclass

from kestrel_raw.errors import BpfObjectError

TRACEPOINT = "tracepoint"
RAW_TRACEPOINT = "raw_tracepoint"
TP_BTF = "tp_btf"
FENTRY = "fentry"
FEXIT = "fexit"
KPROBE = "kprobe"
KRETPROBE = "kretprobe"
UPROBE = "uprobe"
URETPROBE = "uretprobe"

# prefix -> (kind, sleepable).  Longest prefixes first, so "uprobe.s" is not read as "uprobe" + ".s".
_PREFIXES: tuple[tuple[str, str, bool], ...] = (
    ("tracepoint", TRACEPOINT, False), ("tp", TRACEPOINT, False),
    ("raw_tracepoint", RAW_TRACEPOINT, False), ("raw_tp", RAW_TRACEPOINT, False),
    ("tp_btf", TP_BTF, False),
    ("fentry.s", FENTRY, True), ("fentry", FENTRY, False), ("fexit.s", FEXIT, True), ("fexit", FEXIT, False),
    ("kretprobe", KRETPROBE, False), ("kprobe", KPROBE, False),
    ("uretprobe.s", URETPROBE, True), ("uretprobe", URETPROBE, False),
    ("uprobe.s", UPROBE, True), ("uprobe", UPROBE, False),
)
KNOWN_PREFIXES = tuple(p for p, _, _ in _PREFIXES)


@dataclass(frozen=True, slots=True)
class SectionKind:
    """What a program's section name says: its ``kind``, its attach ``target`` ("" when the name has none)
    and whether it is sleepable (``.s``)."""
    kind: str
    target: str
    sleepable: bool = False

    @property
    def tracepoint(self) -> tuple[str, str]:
        """(group, name) of a tracepoint program: "syscalls/sys_enter_openat" -> ("syscalls", ...)."""
        group, _, name = self.target.partition("/")
        return group, name

    @property
    def uprobe(self) -> tuple[str, str, int]:
        """(binary path, function, offset) of a uprobe's target "path:function[+offset]"."""
        path, _, func = self.target.rpartition(":")
        func, _, off = func.partition("+")
        return path, func, int(off, 0) if off else 0


def parse_section(name: str, source: str = "<object>") -> SectionKind | None:
    """The kind of a program section, None when the name is not one this loader knows (libbpf's other
    program types: xdp, tc, lsm...).  A known prefix with a malformed target raises ``BpfObjectError``."""
    for prefix, kind, sleepable in _PREFIXES:
        if name == prefix:
            return SectionKind(kind, "", sleepable)
        if name.startswith(prefix + "/"):
            target = name[len(prefix) + 1:]
            _check_target(kind, target, name, source)
            return SectionKind(kind, target, sleepable)
    return None


def _check_target(kind: str, target: str, name: str, source: str) -> None:
    def bad(why: str) -> BpfObjectError:
        return BpfObjectError(f"{source}: section {name!r}: {why}")

    if not target:
        raise bad(f"the {kind} target after '/' is empty")
    if kind == TRACEPOINT:
        group, _, event = target.partition("/")
        if not group or not event or "/" in event:
            raise bad("a tracepoint section is tracepoint/GROUP/NAME (or tp/GROUP/NAME), e.g. "
                      "tracepoint/syscalls/sys_enter_openat")
    elif kind in (UPROBE, URETPROBE):
        path, colon, func = target.rpartition(":")
        if not colon or not path:
            raise bad(f"a {kind} section is {kind}/BINARY:FUNCTION[+OFFSET], e.g. {kind}/libc.so.6:getaddrinfo")
        func, plus, off = func.partition("+")
        if plus:
            try:
                int(off, 0)
            except ValueError:
                raise bad(f"offset {off!r} after '+' is not a number") from None
