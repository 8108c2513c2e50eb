"""The benchmark's latency and parse-speed pieces: receipt files, matching events to the generator's stamps,
percentile summaries, the latency targets, the latency subjects' command lines and the report sections.
Pure: values in, values out."""
import json

from bench import outputs, report, stats, tracers

PREFIX = "/tmp/kr-bench-lat-"


def kline(pid: int, seq: str, ts: int) -> str:
    return json.dumps({"type": "open", "ts_mono_ns": ts, "pid": pid, "ppid": 1, "path": f"{PREFIX}{seq}"},
                      separators=(",", ":"))


def test_parse_receipts_keeps_stamped_prefix_lines_only():
    lines = [f"5000 {kline(7, '0', 4000)}\n", "6000 {\"type\":\"open\",\"path\":\"/etc/passwd\"}\n",
             "kestrel-raw: records=2\n", f"x12 {kline(7, '1', 4500)}\n", f"7000 {kline(7, '1', 6500)}"]
    assert outputs.parse_receipts(lines, PREFIX) == [(5000, kline(7, "0", 4000)), (7000, kline(7, "1", 6500))]


def test_latencies_match_by_sequence_and_pid():
    stamps = {0: 1_000, 1: 2_000, 2: 3_000}
    arrivals = [
        (11_000, kline(7, "0", 4_000)),      # visible 10 us, kernel 7 us
        (12_000, kline(8, "1", 4_000)),      # another pid: skipped
        (22_000, kline(7, "1", 5_000)),      # visible 20 us, kernel 17 us
        (30_000, kline(7, "1", 5_000)),      # the same sequence again: its first receipt counts
        (40_000, kline(7, "9", 5_000)),      # no stamp for 9: skipped
        (50_000, kline(7, "2x", 5_000)),     # not a sequence number
    ]
    lat = outputs.latencies(arrivals, stamps, 7, PREFIX, "kestrel")
    assert lat.visible_us == [10.0, 20.0]
    assert lat.kernel_us == [7.0, 17.0]


def test_latencies_of_a_peer_have_no_kernel_timestamps():
    lat = outputs.latencies([(9_000, f"15734  krgen  -1   2 {PREFIX}0")], {0: 4_000}, 15734, PREFIX, "opensnoop")
    assert lat.visible_us == [5.0]
    assert lat.kernel_us == []


def test_latency_summary():
    assert stats.latency_summary([1.0, 2.0, 3.0, 4.0, 5.0]) == {"p50": 3.0, "p90": 4.6, "p99": 4.96, "max": 5.0,
                                                               "n": 5}
    assert stats.latency_summary([]) == {"p50": None, "p90": None, "p99": None, "max": None, "n": 0}


def test_latency_targets():
    lat = [
        {"subject": tracers.LIBRARY_LOW, "ok": True, "visible_us": {"p50": 40.0},
         "kernel_to_visible_us": {"p50": 12.5}},
        {"subject": tracers.LIBRARY_LOW_ONE_RING, "ok": True, "visible_us": {"p50": 30.0},
         "kernel_to_visible_us": {"p50": 8.0}},
        {"subject": "kestrel-raw", "ok": True, "visible_us": {"p50": 50_000.0}},
        {"subject": tracers.LATENCY_LOW, "ok": False, "error": "boom"},
        {"subject": "libbpf-tools", "ok": True, "visible_us": {"p50": 150.0}},
    ]
    got = {t["target"]: t for t in report.targets({}, [], [], lat)}
    lib = next(v for k, v in got.items() if k.startswith("low-latency mode"))
    assert (lib["value"], lib["limit"], lib["status"]) == (12.5, 10, "missed")
    one = got['the same with buffers=1, deliver="json"']
    assert (one["value"], one["status"]) == (8.0, "met")
    default = next(v for k, v in got.items() if k.startswith("CLI default mode"))
    assert (default["value"], default["limit"], default["status"]) == (50_000.0, 150.0, "reported")
    low = next(v for k, v in got.items() if k.startswith("CLI --latency low"))
    assert (low["value"], low["status"]) == (None, "n/a")
    # without a latency phase every latency row is n/a
    assert {t["status"] for t in report.targets({}, [], []) if "latency" in t["target"]} == {"n/a"}


def test_latency_subject_commands():
    subs = {s.name: s for s in tracers.latency_subjects(("kr", "run"), ("py", "lib_latency.py"))}
    assert list(subs) == ["kestrel-raw", tracers.LATENCY_LOW, tracers.LIBRARY_LOW, tracers.LIBRARY_LOW_ONE_RING,
                          tracers.LIBRARY_LOW_HANDOFF, "libbpf-tools", "bpftrace"]
    assert subs["kestrel-raw"].procs[0].command(None, True) == ["kr", "run", "--events", "open"]
    assert subs[tracers.LATENCY_LOW].procs[0].command(None, True) == ["kr", "run", "--events", "open",
                                                                       "--latency", "low"]
    assert subs[tracers.LIBRARY_LOW].procs[0].command("/o", False) == ["py", "lib_latency.py", "--latency", "low",
                                                                        "--output", "/o"]
    assert subs[tracers.LIBRARY_LOW_ONE_RING].procs[0].command("/o", False) == [
        "py", "lib_latency.py", "--latency", "low", "--buffers", "1", "--deliver", "json", "--output", "/o"]
    assert subs[tracers.LIBRARY_LOW_HANDOFF].procs[0].command("/o", False) == [
        "py", "lib_latency.py", "--latency", "low", "--stamp", "handoff", "--output", "/o"]
    assert subs[tracers.LIBRARY_LOW].procs[0].fmt == "kestrel-lib"
    assert subs["libbpf-tools"].procs[0].command(None, True) == ["stdbuf", "-oL", "/usr/sbin/opensnoop"]


def test_markdown_shows_latency_and_parse_speed():
    rep = {
        "meta": {"profile": "quick", "machine": {}, "started": "t", "duration_s": 1.0, "reps": 1},
        "summary": {}, "targets": [], "trials": [], "ladders": [], "startup": [],
        "latency": [{"subject": tracers.LIBRARY_LOW, "ok": True, "rate": 200, "matched": 3, "ops": 3,
                     "measures": "in process", "cpu_pct": 99.94,
                     "visible_us": {"p50": 21.0, "p90": 30.0, "p99": 41.0},
                     "kernel_to_visible_us": {"p50": 11.0, "p90": 20.0, "p99": 31.0}}],
        "parse_speed": {"python": "3.11.7", "n": 1000, "columns": ["struct", "fused"],
                        "rows": {"open": {"struct": 3.811, "fused": 2.984}}},
    }
    md = report.markdown(rep)
    assert f"| {tracers.LIBRARY_LOW} | in process | 200 | 3/3 | 21 / 30 / 41 | 11 / 20 / 31 | 99.9 |" in md
    assert "| kind | struct | fused |" in md
    assert "| open | 3.81 | 2.98 |" in md
    assert "failed:" not in report.markdown(dict(rep, parse_speed={"error": "x"})).split("## Latency")[0]
    assert "failed: x" in report.markdown(dict(rep, parse_speed={"error": "x"}))
