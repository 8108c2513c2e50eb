"""Pure arithmetic of the benchmark: medians and ranges, percentiles, loss, ratios, the zero-loss rate.

Every function takes plain numbers and returns plain numbers or dicts of them, so the report's figures
can be recomputed from the raw samples in the JSON report and are tested without a kernel.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence


def median(xs: Iterable[float]) -> float | None:
    """The median (mean of the two middle values for an even count); None for no samples."""
    s = sorted(xs)
    n = len(s)
    if n == 0:
        return None
    mid = n // 2
    return float(s[mid]) if n % 2 else (s[mid - 1] + s[mid]) / 2


def summarize(xs: Iterable[float | None]) -> dict:
    """{"median", "min", "max", "n"} of the samples that are not None (None everywhere when none are)."""
    s = sorted(x for x in xs if x is not None)
    if not s:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": median(s), "min": float(s[0]), "max": float(s[-1]), "n": len(s)}


def percentile(xs: Sequence[float], p: float) -> float | None:
    """The p-th percentile (0..100) with linear interpolation between closest ranks (numpy's default)."""
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be within 0..100, got {p}")
    s = sorted(xs)
    if not s:
        return None
    pos = (len(s) - 1) * p / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def latency_summary(us: Sequence[float]) -> dict:
    """{"p50", "p90", "p99", "max", "n"} of latencies in us (None figures when there are none)."""
    return {"p50": percentile(us, 50), "p90": percentile(us, 90), "p99": percentile(us, 99),
            "max": max(us) if us else None, "n": len(us)}


def loss_pct(offered: int, delivered: int) -> float | None:
    """Percent of offered events missing from the output.  Negative when the output holds MORE events
    than were offered (a counting bug or duplicates): kept visible rather than clamped."""
    if offered <= 0:
        return None
    return 100.0 * (offered - delivered) / offered


def ratio(x: float | None, base: float | None) -> float | None:
    if x is None or base is None or base <= 0:
        return None
    return x / base


def per_event(total: float | None, events: int) -> float | None:
    if total is None or events <= 0:
        return None
    return total / events


def max_zero_loss_rate(rungs: Iterable[tuple[float, float | None]], max_loss_pct: float = 0.0) -> float | None:
    """Highest offered rate of a ladder below which loss STAYS zero (or at most ``max_loss_pct``).

    ``rungs`` are (offered_rate, loss_pct) pairs in any order.  Walking up from the lowest rate, the answer
    is the last rate reached before the first rung with loss > max_loss_pct (or with no loss figure); None
    when the lowest rung already loses more.  A lucky loss-free rung above a lossy one does not count.
    """
    best = None
    for rate, loss in sorted(rungs, key=lambda r: r[0]):
        if loss is None or loss > max_loss_pct:
            break
        best = rate
    return best


def cpu_pct(cpu_seconds: float, wall_seconds: float) -> float | None:
    """CPU time as a percent of one CPU over the wall interval."""
    if wall_seconds <= 0:
        return None
    return 100.0 * cpu_seconds / wall_seconds


def alternate(subjects: Sequence[str], reps: int) -> list[str]:
    """Run order A B C, B C A, C A B, ...: each subject runs ``reps`` times, interleaved with the others,
    and the starting subject rotates so no subject always runs first (right after a cold start) or last."""
    if reps < 0:
        raise ValueError(f"reps must be >= 0, got {reps}")
    n = len(subjects)
    return [subjects[(i + r) % n] for r in range(reps) for i in range(n)]
