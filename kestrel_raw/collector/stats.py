"""What the collector counts: the user-side counters the pollers and the delivery update as records pass
(``Counts``), the kernel's own counters (``kernel_counters``), and the frozen value ``stats()`` returns
(``CollectorStats``).  Nothing is lost without being counted here."""
from __future__ import annotations

from dataclasses import dataclass, field

from kestrel_raw import programs, spec as kspec
from kestrel_raw.errors import BPFError
from kestrel_raw.maps import PerCPUArrayMap

KIND_NAMES = {k.id: k.label for k in (*kspec.KINDS.values(), *kspec.USER_KINDS.values())}


class Counts:
    """The user-side counters since the collector was made (mutable: the hot path adds to them)."""

    __slots__ = ("records", "parse_errors", "user_dropped", "delivered", "consumed")

    def __init__(self) -> None:
        self.records = 0  # records read from the ring buffers
        self.parse_errors = 0  # records that could not be parsed (counted and skipped)
        self.user_dropped = 0  # events (with an EventBus: subscribers' copies) dropped for a slow consumer
        self.delivered = {kind: 0 for kind in kspec.ALL_KINDS}  # events handed on, by kind id
        # records read for the process cache alone: the internal ones, and events not asked for
        self.consumed = 0

    def handled(self) -> int:
        """Records accounted for so far: delivered, dropped or malformed."""
        return sum(self.delivered.values()) + self.user_dropped + self.parse_errors


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
    # records = sum(delivered) - the status event + user_dropped (events) + parse_errors + consumed
    consumed: int = 0

    @property
    def kernel_lost(self) -> int:
        """Events the kernel side could not report (ring buffer full, program run skipped)."""
        return sum(
            sum(per_cpu)
            for counters in self.kernel.values()
            for name, per_cpu in counters.items()
            if name in ("ringbuf_full", "prog_missed")
        )

    def summary(self) -> str:
        delivered = " ".join(f"{k}={v}" for k, v in sorted(self.delivered.items()))
        lost = {
            f"{kind}.{name}": sum(cpus)
            for kind, counters in self.kernel.items()
            for name, cpus in counters.items()
            if sum(cpus)
        }
        lost_text = " ".join(f"{k}={v}" for k, v in sorted(lost.items())) or "none"
        return (f"kestrel-raw: records={self.records} delivered[{delivered}] kernel_lost={self.kernel_lost} "
                f"user_dropped={self.user_dropped} parse_errors={self.parse_errors} consumed={self.consumed} "
                f"kernel_counters[{lost_text}] peers[{' '.join(map(str, self.peers))}]")


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
