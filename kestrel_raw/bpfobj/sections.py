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
USDT = "usdt"
PERF_EVENT = "perf_event"

# prefix -> (kind, sleepable).  Longest prefixes first, so "uprobe.s" is not read as "uprobe" + ".s".
_PREFIXES: tuple[tuple[str, str, bool], ...] = (
    ("tracepoint", TRACEPOINT, False), ("tp", TRACEPOINT, False),
    ("raw_tracepoint", RAW_TRACEPOINT, False), ("raw_tp", RAW_TRACEPOINT, False),
    ("tp_btf", TP_BTF, False),
    ("fentry.s", FENTRY, True), ("fentry", FENTRY, False), ("fexit.s", FEXIT, True), ("fexit", FEXIT, False),
    ("kretprobe", KRETPROBE, False), ("kprobe", KPROBE, False),
    ("uretprobe.s", URETPROBE, True), ("uretprobe", URETPROBE, False),
    ("uprobe.s", UPROBE, True), ("uprobe", UPROBE, False),
    ("usdt", USDT, False), ("perf_event", PERF_EVENT, False),
)
KNOWN_PREFIXES = tuple(p for p, _, _ in _PREFIXES)


@dataclass(frozen=True, slots=True)
class SectionKind:
    """What a program's section name says: its ``kind``, its attach ``target`` ("" when the name has none)
    and whether it is sleepable (``.s``)."""
    kind: str
    target: str
    sleepable: bool = False
    name: str = ""      # the section name as written

    def _bad(self, why: str) -> BpfObjectError:
        return BpfObjectError(f"section {self.name!r}: {why}")

    @property
    def tracepoint(self) -> tuple[str, str]:
        """(group, name) of a tracepoint program: "syscalls/sys_enter_openat" -> ("syscalls", ...)."""
        group, _, name = self.target.partition("/")
        if self.kind != TRACEPOINT or not group or not name or "/" in name:
            raise self._bad("a tracepoint section is tracepoint/GROUP/NAME (or tp/GROUP/NAME), e.g. "
                            "tracepoint/syscalls/sys_enter_openat; attach this program by hand")
        return group, name

    @property
    def uprobe(self) -> tuple[str, str, int]:
        """(binary path, function, offset) of a uprobe's target "path:function[+offset]"."""
        path, colon, func = self.target.rpartition(":")
        if self.kind not in (UPROBE, URETPROBE) or not colon or not path or not func:
            raise self._bad(f"a {self.kind} section is {self.kind}/BINARY:FUNCTION[+OFFSET], e.g. "
                            f"{self.kind}/libc.so.6:getaddrinfo; attach this program by hand")
        func, plus, off = func.partition("+")
        try:
            return path, func, int(off, 0) if plus else 0
        except ValueError:
            raise self._bad(f"offset {off!r} after '+' is not a number") from None


def parse_section(name: str) -> SectionKind | None:
    """The kind of a program section, None when the name is not one this loader knows (libbpf's other
    program types: xdp, tc, lsm...).  The target is not checked here: as with libbpf, a program whose
    section names no usable target (``SEC("uretprobe/readline")``, attached by hand) still loads; asking for
    its ``tracepoint`` or ``uprobe`` parts raises ``BpfObjectError``."""
    for prefix, kind, sleepable in _PREFIXES:
        if name == prefix:
            return SectionKind(kind, "", sleepable, name)
        if name.startswith(prefix + "/"):
            return SectionKind(kind, name[len(prefix) + 1:], sleepable, name)
    return None
