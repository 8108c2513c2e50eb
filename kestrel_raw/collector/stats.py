"""What the collector counts: the user-side counters the pollers and the delivery update as records pass
(``Counts``), the kernel's own counters (``kernel_counters``), and the frozen value ``stats()`` returns
(``CollectorStats``).  Nothing is lost without being counted here."""
from __future__ import annotations

from dataclasses import dataclass, field

from kestrel_raw import programs, spec as kspec
from kestrel_raw.codec.records import KIND_OFFSET
from kestrel_raw.errors import BPFError
from kestrel_raw.maps import PerCPUArrayMap

KIND_NAMES = {k.id: k.label for k in (*kspec.KINDS.values(), *kspec.USER_KINDS.values())}


class Counts:
    """The user-side counters since the collector was made (mutable: the hot path adds to them)."""

    __slots__ = ("records", "parse_errors", "user_dropped", "delivered", "consumed", "dropped", "refused")

    def __init__(self) -> None:
        self.records = 0  # records read from the ring buffers
        self.parse_errors = 0  # records that could not be parsed (counted and skipped)
        self.user_dropped = 0  # events (with an EventBus: subscribers' copies) dropped for a slow consumer
        self.delivered = {kind: 0 for kind in kspec.ALL_KINDS}  # events handed on, by kind id
        # records read for the process cache alone: the internal ones, and events not asked for
        self.consumed = 0
        # user_dropped and parse_errors by kind (a kind id, a BPF object's "<object>:<ring>", or for a record
        # too short or too strange to name its kind, UNKNOWN_KIND): what the loss events report by type
        self.dropped: dict[int | str, int] = {}
        self.refused: dict[int | str, int] = {}

    def drop(self, kind: int | str, n: int = 1) -> None:
        """``n`` events of ``kind`` dropped for a slow consumer."""
        if n:
            self.user_dropped += n
            self.dropped[kind] = self.dropped.get(kind, 0) + n

    def refuse(self, raw) -> None:
        """The parser refused the record ``raw``."""
        self.parse_errors += 1
        kind = raw_kind(raw)
        self.refused[kind] = self.refused.get(kind, 0) + 1

    def handled(self) -> int:
        """Records accounted for so far: delivered, dropped, malformed or consumed."""
        return sum(self.delivered.values()) + self.user_dropped + self.parse_errors + self.consumed


UNKNOWN_KIND = "unknown"  # the type a loss names for a record whose kind could not be read


def raw_kind(raw) -> int | str:
    """The kind id a raw record names in its header, if the spec knows it; else UNKNOWN_KIND."""
    if len(raw) < KIND_OFFSET + 2:
        return UNKNOWN_KIND
    kind = int.from_bytes(bytes(raw[KIND_OFFSET:KIND_OFFSET + 2]), "little")
    return kind if kind in kspec.KINDS else UNKNOWN_KIND


# The causes of loss the programs count per kind (read by name from STAT_NAMES: programs built before the
# rate limits count no "rate_limited"), and the kernel's own count of runs it skipped (kernel_counters).
KERNEL_CAUSES = ("ringbuf_full", "rate_limited", "prog_missed")
FILTERED = "filtered"  # the programs' counter of events their filters held back (STAT_NAMES)


@dataclass(frozen=True)
class CollectorStats:
    """Counts since load().  Nothing is lost without being counted here."""

    records: int  # records read from the ring buffers
    delivered: dict[str, int]  # events handed on, by type name
    parse_errors: int  # records that could not be parsed (counted and skipped)
    user_dropped: int  # events dropped because the consumer was slow (queue_policy="drop")
    kernel: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # type -> counter -> per CPU
    peers: tuple[int, ...] = ()  # tgids of the other collectors this one ignores
    # records read for the context alone (the process cache's: internal records, events not asked for).
    # records = sum(delivered) - the collector's own events (status, loss) + user_dropped (events)
    #           + parse_errors + consumed
    consumed: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # user_dropped by type name
    refused: dict[str, int] = field(default_factory=dict)  # parse_errors by type name ("unknown": unreadable)

    @property
    def kernel_lost(self) -> int:
        """Events the kernel side could not report (ring buffer full, rate limited, program run skipped)."""
        return sum(
            sum(per_cpu)
            for counters in self.kernel.values()
            for name, per_cpu in counters.items()
            if name in KERNEL_CAUSES
        )

    @property
    def lost(self) -> dict[str, dict[str, int]]:
        """Every event lost, by type and cause (``spec.LOSS_CAUSES``): what the loss events report, summed.
        Types and causes with a count only; types in kind order, causes in LOSS_CAUSES order."""
        by_type: dict[str, dict[str, int]] = {}
        for kind, counters in self.kernel.items():
            for cause in KERNEL_CAUSES:
                n = sum(counters.get(cause, ()))
                if n:
                    by_type.setdefault(kind, {})[cause] = n
        for cause, table in (("user_dropped", self.dropped), ("parse_error", self.refused)):
            for kind, n in table.items():
                if n:
                    by_type.setdefault(kind, {})[cause] = n
        return {kind: {c: by_type[kind][c] for c in kspec.LOSS_CAUSES if c in by_type[kind]}
                for kind in sorted(by_type, key=_type_order)}

    @property
    def filtered(self) -> dict[str, int]:
        """Events the programs' filters held back, by type (types with a count only)."""
        out = {kind: sum(counters.get(FILTERED, ())) for kind, counters in self.kernel.items()}
        return {kind: n for kind, n in sorted(out.items(), key=lambda kv: _type_order(kv[0])) if n}

    def counters(self) -> dict:
        """What a status event carries (``counters``): delivered, lost and filtered by type, parse errors."""
        delivered = {k: v for k, v in sorted(self.delivered.items(), key=lambda kv: _type_order(kv[0])) if v}
        return {"delivered": delivered, "lost": self.lost, "filtered": self.filtered,
                "parse_errors": self.parse_errors}

    def summary(self) -> str:
        delivered = " ".join(f"{k}={v}" for k, v in sorted(self.delivered.items()))
        lost = {
            f"{kind}.{name}": sum(cpus)
            for kind, counters in self.kernel.items()
            for name, cpus in counters.items()
            if sum(cpus)
        }
        lost_text = " ".join(f"{k}={v}" for k, v in sorted(lost.items())) or "none"
        filtered = " ".join(f"{k}={v}" for k, v in sorted(self.filtered.items()))
        return (f"kestrel-raw: records={self.records} delivered[{delivered}] kernel_lost={self.kernel_lost} "
                f"user_dropped={self.user_dropped} parse_errors={self.parse_errors} consumed={self.consumed} "
                f"filtered[{filtered}] kernel_counters[{lost_text}] peers[{' '.join(map(str, self.peers))}]")


_ORDER = {label: i for i, label in enumerate(KIND_NAMES[k] for k in sorted(KIND_NAMES))}


def _type_order(label: str) -> tuple[int, str]:
    """Types in kind id order; a BPF object's rings and "unknown" after, by name."""
    return (_ORDER.get(label, len(_ORDER)), label)


def snapshot(counts: Counts, kernel: dict[str, dict[str, list[int]]], peers: tuple[int, ...]) -> CollectorStats:
    return CollectorStats(
        records=counts.records,
        # a BPF object's records are counted under "<object>:<ring>" (collector/objects.py)
        delivered={KIND_NAMES.get(k, k): v for k, v in counts.delivered.items()},
        parse_errors=counts.parse_errors,
        user_dropped=counts.user_dropped,
        kernel=kernel,
        peers=peers,
        consumed=counts.consumed,
        dropped={KIND_NAMES.get(k, k): v for k, v in counts.dropped.items()},
        refused={KIND_NAMES.get(k, k): v for k, v in counts.refused.items()},
    )


def kernel_counters(stats_map: PerCPUArrayMap | None, loaded: list) -> dict[str, dict[str, list[int]]]:
    """The programs' counters (MAP_STATS, per CPU) and the kernel's count of runs it skipped, by type.

    ``loaded``: the (ProgramSpec, Program) pairs; closed maps and programs are left out."""
    kernel: dict[str, dict[str, list[int]]] = {}
    if stats_map is not None and not stats_map.closed:
        for kind in kspec.KINDS:
            counters = {}
            for c, name in enumerate(programs.STAT_NAMES):
                values = stats_map[kind * programs.STATS_PER_KIND + c]
                counters[name] = [_u64(v) for v in values]
            kernel[KIND_NAMES[kind]] = counters
    # Runs the kernel skipped (BPF_OBJ_GET_INFO_BY_FD recursion_misses): a program that would have
    # started while another BPF program was running on that CPU.  The event is lost before any of our
    # code runs, so only the kernel can count it.
    for spec, prog in loaded:
        if prog.closed:
            continue
        try:
            missed = prog.info().recursion_misses
        except BPFError:
            continue
        counters = kernel.setdefault(KIND_NAMES[spec.kind], {})
        counters["prog_missed"] = [counters.get("prog_missed", [0])[0] + missed]
    return kernel


def _u64(v) -> int:
    return int.from_bytes(v, "little") if isinstance(v, (bytes, bytearray)) else int(v)
