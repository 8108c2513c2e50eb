"""The benchmark harness's arithmetic (bench/stats.py) and report aggregation (bench/report.py): pure,
no kernel, no timing."""
import pytest

from bench import report, stats


def test_median_odd_even_empty():
    assert stats.median([3, 1, 2]) == 2.0
    assert stats.median([4, 1, 3, 2]) == 2.5
    assert stats.median([]) is None


def test_summarize_skips_none():
    assert stats.summarize([2.0, None, 1.0, 5.0]) == {"median": 2.0, "min": 1.0, "max": 5.0, "n": 3}
    assert stats.summarize([None]) == {"median": None, "min": None, "max": None, "n": 0}


def test_percentile_linear_interpolation():
    xs = [10, 20, 30, 40, 50]
    assert stats.percentile(xs, 50) == 30
    assert stats.percentile(xs, 0) == 10
    assert stats.percentile(xs, 100) == 50
    assert stats.percentile(xs, 99) == pytest.approx(49.6)
    assert stats.percentile([1, 2], 25) == pytest.approx(1.25)
    assert stats.percentile([], 50) is None
    with pytest.raises(ValueError, match="within 0..100"):
        stats.percentile(xs, 101)


def test_loss_pct_keeps_surplus_visible():
    assert stats.loss_pct(1000, 990) == 1.0
    assert stats.loss_pct(1000, 1000) == 0.0
    assert stats.loss_pct(1000, 1010) == -1.0
    assert stats.loss_pct(0, 0) is None


def test_ratio_and_per_event():
    assert stats.ratio(3.0, 2.0) == 1.5
    assert stats.ratio(None, 2.0) is None
    assert stats.ratio(1.0, 0.0) is None
    assert stats.per_event(10.0, 4) == 2.5
    assert stats.per_event(10.0, 0) is None


def test_max_zero_loss_rate_stops_at_first_loss():
    rungs = [(100_000, 0.5), (25_000, 0.0), (50_000, 0.0), (150_000, 0.0)]
    assert stats.max_zero_loss_rate(rungs) == 50_000
    assert stats.max_zero_loss_rate([(10, 1.0), (20, 0.0)]) is None
    assert stats.max_zero_loss_rate([(10, 0.0), (20, None), (30, 0.0)]) == 10
    assert stats.max_zero_loss_rate([(10, 0.0), (20, 0.0)]) == 20


def test_max_zero_loss_rate_with_a_tolerance():
    rungs = [(10_000.0, 0.0), (25_000.0, 0.004), (50_000.0, 0.01), (100_000.0, 0.02), (150_000.0, 0.0)]
    assert stats.max_zero_loss_rate(rungs) == 10_000.0
    assert stats.max_zero_loss_rate(rungs, 0.01) == 50_000.0
    assert stats.max_zero_loss_rate([(10_000.0, 0.5)], 0.01) is None


def test_cpu_pct():
    assert stats.cpu_pct(0.5, 2.0) == 25.0
    assert stats.cpu_pct(1.0, 0) is None


def test_alternate_interleaves_and_rotates():
    assert stats.alternate(["A", "B", "C"], 3) == ["A", "B", "C", "B", "C", "A", "C", "A", "B"]
    assert stats.alternate(["A", "B"], 2) == ["A", "B", "B", "A"]
    assert stats.alternate(["A"], 0) == []
    with pytest.raises(ValueError):
        stats.alternate(["A"], -1)


def _trial(subject, workload, elapsed, **kw):
    return {"subject": subject, "workload": workload, "ok": True, "elapsed_s": elapsed, **kw}


def test_summarize_trials_slowdown_against_median_baseline():
    trials = [
        _trial("none", "open", 1.0), _trial("none", "open", 3.0), _trial("none", "open", 2.0),
        _trial("kestrel-raw", "open", 2.4, loss_pct=0.0, kernel={"ns_per_run": 1000.0}, cpu_us_per_event=3.0,
               hwm_kb=20480, attached_s=0.2),
        _trial("kestrel-raw", "open", 3.0, loss_pct=1.0, kernel={"ns_per_run": 1200.0}, cpu_us_per_event=5.0,
               hwm_kb=30720, attached_s=0.4),
        {"subject": "kestrel-raw", "workload": "open", "ok": False, "error": "RuntimeError: boom"},
    ]
    s = report.summarize(trials)["open"]
    assert s["none"]["slowdown"] == {"median": 1.0, "min": 0.5, "max": 1.5, "n": 3}
    k = s["kestrel-raw"]
    assert (k["runs"], k["ok"], k["errors"]) == (3, 2, ["RuntimeError: boom"])
    assert k["slowdown"] == {"median": 1.35, "min": 1.2, "max": 1.5, "n": 2}
    assert k["loss_pct"]["median"] == 0.5
    assert k["kernel_ns_per_run"]["median"] == 1100.0
    assert k["hwm_mb"] == {"median": 25.0, "min": 20.0, "max": 30.0, "n": 2}
    assert "loss_pct" not in s["none"]


def test_cpu_slowdown_is_the_workloads_cpu_time_against_the_baseline_median():
    trials = [_trial("none", "build", 1.0, workload_cpu_s=2.0), _trial("none", "build", 1.0, workload_cpu_s=4.0),
              _trial("none", "build", 1.0, workload_cpu_s=3.0),
              _trial("kestrel-raw", "build", 1.0, workload_cpu_s=4.5),
              _trial("kestrel-raw", "build", 1.0)]  # a record made before the figure existed: left out
    s = report.summarize(trials)["build"]
    assert s["none"]["cpu_slowdown"]["median"] == 1.0
    assert s["kestrel-raw"]["cpu_slowdown"] == {"median": 1.5, "min": 1.5, "max": 1.5, "n": 1}


def test_kernel_time_comes_from_the_kernel_runs_when_there_are_some():
    # The matrix runs have bpf_stats off (no kernel figure); the "kernel" phase's runs carry it.
    trials = [_trial("none", "open", 1.0),
              _trial("kestrel-raw", "open", 1.3, kernel={"ns_per_run": None}),
              _trial("libbpf-tools", "open", 5.0, kernel={"ns_per_run": None})]
    kernel = [_trial("kestrel-raw", "open", 1.4, kernel={"ns_per_run": 400.0}),
              _trial("kestrel-raw", "open", 1.4, kernel={"ns_per_run": 500.0}),
              _trial("kestrel-raw", "exec", 1.4, kernel={"ns_per_run": 9999.0})]
    s = report.summarize(trials, kernel)["open"]
    assert s["kestrel-raw"]["kernel_ns_per_run"] == {"median": 450.0, "min": 400.0, "max": 500.0, "n": 2}
    assert s["kestrel-raw"]["slowdown"]["median"] == 1.3  # from the matrix runs only
    assert s["libbpf-tools"]["kernel_ns_per_run"]["n"] == 0
    assert "kernel_ns_per_run" not in s["none"]


def test_targets_status():
    summary = {
        "open": {"kestrel-raw": {"kernel_ns_per_run": {"median": 900.0}, "slowdown": {"median": 1.4},
                                 "cpu_us_per_event": {"median": 2.0}, "hwm_mb": {"max": 35.0}},
                 "libbpf-tools": {"kernel_ns_per_run": {"median": 1000.0}, "cpu_us_per_event": {"median": 4.0}}},
    }
    ladders = [{"subject": "kestrel-raw", "workload": "open", "ok": True, "max_zero_loss_rate": 120_000.0,
                "rungs": [{"offered_rate": 60_000.0, "loss_pct": 0.0}, {"offered_rate": 120_000.0, "loss_pct": 0.0},
                          {"offered_rate": 150_000.0, "loss_pct": 0.005}, {"offered_rate": 180_000.0,
                                                                           "loss_pct": 0.5}]},
               {"subject": "kestrel-raw", "workload": "exec", "ok": True,
                "rungs": [{"target_rate": 1600, "cpu_pct": 5.0}]},
               {"subject": "libbpf-tools", "workload": "exec", "ok": True,
                "rungs": [{"target_rate": 1600, "cpu_pct": 4.0}]}]
    startup = [{"subject": "kestrel-raw", "ok": True, "attached_s": 0.25}]
    got = {t["target"]: (t["value"], t["status"]) for t in report.targets(summary, ladders, startup)}
    assert got["kernel time per program run (open) <= libbpf-tools'"] == (900.0, "met")
    assert got["kernel time per program run (exec) <= libbpf-tools'"] == (None, "n/a")
    assert got["openat+close loop slowdown with open events on"] == (1.4, "missed")
    assert got["collector CPU per delivered open event < opensnoop's"] == (2.0, "met")
    assert got["open events/s delivered to JSON lines with 0 loss (2+ generators)"] == (120_000.0, "met")
    assert got["open events/s delivered with loss <= 0.01% on every rung up to it"] == (150_000.0, "reported")
    assert got["start to attached"] == (0.25, "met")
    assert got["peak RSS (largest over all runs)"] == (35.0, "met")
    assert got["collector CPU at 1,600 exec/s <= execsnoop's"] == (5.0, "missed")
    assert got["typical workload (gcc builds) slowdown, all four event types"] == (None, "n/a")


def test_fmt_summary():
    assert report.fmt_summary({"median": 1.5, "min": 1.0, "max": 2.0, "n": 3}) == "1.50 [1.00–2.00]"
    assert report.fmt_summary({"median": 1.5, "min": 1.5, "max": 1.5, "n": 1}) == "1.50"
    assert report.fmt_summary({"median": None}) == "-"
    assert report.fmt_summary(None) == "-"
