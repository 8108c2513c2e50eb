"""Loss and health in the stream (issue 15 items 4 and 5), without the kernel: the loss and status events
built from given counters, byte for byte; what the loss events report (LossWatch); the counters by type and
cause (CollectorStats, the summary line, the Prometheus metrics); the delivery counting drops and parse
errors by type; status_interval's validation, in the library and on the command line."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import trio

from kestrel_raw import spec
from kestrel_raw.codec.jsonl import encode_event
from kestrel_raw.collector import loss_event, status_event
from kestrel_raw.collector.deliver import Delivery
from kestrel_raw.collector.health import LossWatch, loss_delta
from kestrel_raw.collector.stats import CollectorStats, Counts, snapshot
from kestrel_raw.config import CollectorConfig
from kestrel_raw.context.host import HostIdentity
from kestrel_raw.errors import ConfigError

from helpers import ENV, REPO, KIND_EXEC, KIND_OPEN, exec_bytes, open_bytes

WALL = 1_700_000_000_000_000_000


# -- the events -----------------------------------------------------------------------------------------------

def test_a_loss_event_is_its_counts_byte_for_byte():
    ev = loss_event({"open": {"ringbuf_full": 120, "user_dropped": 3}, "exec": {"prog_missed": 1}}, 5_000, WALL)
    assert (ev.event_type_id, ev.ts_mono, ev.ts_wall, ev.entity_key, ev.source) == (101, 5_000, WALL + 5_000, 0,
                                                                                     "kestrel-raw")
    assert encode_event(ev) == (
        b'{"type":"loss","event_type_id":101,"ts_mono_ns":5000,"ts_wall_ns":1700000000000005000,'
        b'"source":"kestrel-raw","counts":{"open":{"ringbuf_full":120,"user_dropped":3},'
        b'"exec":{"prog_missed":1}}}\n')
    assert ev["counts"] == {"open": {"ringbuf_full": 120, "user_dropped": 3}, "exec": {"prog_missed": 1}}


# The status event's "filters" (issue 15's filters, FieldId 62, from the branch that adds them): "{}" when none.
FILTERS_NONE = b'"filters":{},' if "filters" in spec.json_keys(spec.STATUS) else b""


def host() -> HostIdentity:
    return HostIdentity(hostname="h1", machine_id="m" * 32, boot_id=None, kernel="6.18.44", arch="x86_64",
                        cloud=None, cloud_reason="no provider in DMI")


def test_a_status_event_carries_its_reason_and_the_counters_byte_for_byte():
    counters = {"delivered": {"open": 7, "status": 1}, "lost": {"open": {"ringbuf_full": 2}},
                "filtered": {"open": 4}, "parse_errors": 0}
    ev = status_event(host(), 9, WALL, [{"name": "kr_open", "sha256": "ab", "tag": "cd"}], "interval",
                      counters=counters)
    assert encode_event(ev) == (
        b'{"type":"status","event_type_id":100,"ts_mono_ns":9,"ts_wall_ns":1700000000000000009,'
        b'"source":"kestrel-raw","hostname":"h1","machine_id":"mmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmm","boot_id":null,'
        b'"kernel":"6.18.44","arch":"x86_64","cloud":null,"programs":[{"name":"kr_open","sha256":"ab","tag":"cd"}],'
        b'"reason":"interval",' + FILTERS_NONE + b'"counters":{"delivered":{"open":7,"status":1},"lost":{"open":'
        b'{"ringbuf_full":2}},"filtered":{"open":4},"parse_errors":0}}\n')
    start = status_event(host(), 9, WALL, [], counters=CollectorStats(0, {}, 0, 0).counters())
    assert json.loads(encode_event(start))["reason"] == "start"
    assert json.loads(encode_event(start))["counters"] == {"delivered": {}, "lost": {}, "filtered": {},
                                                          "parse_errors": 0}


def test_loss_and_status_are_the_collectors_own_event_types():
    assert (int(spec.EventType.LOSS), spec.EventType.LOSS.label) == (101, "loss")
    assert spec.json_keys(spec.LOSS) == ["type", "event_type_id", "ts_mono_ns", "ts_wall_ns", "source", "counts"]
    assert spec.LOSS_CAUSES == ("ringbuf_full", "rate_limited", "user_dropped", "parse_error", "prog_missed")
    assert [(int(f.id), f.name, f.type.value) for f in spec.fields_of(spec.EventType.LOSS)] == [(60, "counts", "json")]
    status = [(int(f.id), f.name) for f in spec.fields_of(spec.EventType.STATUS)]
    assert (61, "counters") in status and (63, "reason") in status
    assert spec.json_keys(spec.STATUS)[-1] == "counters"
    for name in ("loss", "status"):
        with pytest.raises(ConfigError, match=f"event_types: {name} is not collected from the kernel"):
            CollectorConfig(event_types=[name])


# -- what a loss event reports --------------------------------------------------------------------------------

def test_each_loss_event_reports_what_grew_since_the_last():
    watch = LossWatch()

    def take(lost):
        counts = watch.pending(lost)
        watch.reported(counts)
        return counts

    assert take({}) == {}
    assert take({"open": {"ringbuf_full": 5}}) == {"open": {"ringbuf_full": 5}}
    assert take({"open": {"ringbuf_full": 5}}) == {}  # nothing new: no loss event
    assert take({"open": {"ringbuf_full": 7, "user_dropped": 1}, "exec": {"parse_error": 2}}) == {
        "open": {"ringbuf_full": 2, "user_dropped": 1}, "exec": {"parse_error": 2}}
    # A count read lower (a program closed: its prog_missed is read no more) reports nothing, and a later
    # growth past what was reported reports only the growth.
    assert take({"open": {"ringbuf_full": 3, "user_dropped": 1}, "exec": {"parse_error": 2}}) == {}
    assert take({"open": {"ringbuf_full": 9, "user_dropped": 1}, "exec": {"parse_error": 2}}) == {
        "open": {"ringbuf_full": 2}}
    assert loss_delta({"a": {"x": 1}}, {"a": {"x": 1}, "b": {"y": 4}}) == {}
    # the loss events' own drops are in the stats, not in a loss event
    assert LossWatch().pending({"loss": {"user_dropped": 2}, "open": {"user_dropped": 1}}) == {
        "open": {"user_dropped": 1}}


# -- the counters ---------------------------------------------------------------------------------------------

def stats_with_everything() -> CollectorStats:
    kernel = {
        "exec": {"ringbuf_full": [0, 0], "read_fault": [0, 1], "filtered": [0, 0], "rate_limited": [0, 0],
                 "prog_missed": [2]},
        "open": {"ringbuf_full": [3, 4], "read_fault": [0, 0], "filtered": [10, 5], "rate_limited": [1, 1],
                 "prog_missed": [0]},
        "connect": {"ringbuf_full": [0, 0], "filtered": [0, 1]},
    }
    return CollectorStats(records=40, delivered={"exec": 1, "open": 20, "connect": 0, "status": 2, "loss": 1},
                          parse_errors=3, user_dropped=6, kernel=kernel, peers=(77,), consumed=11,
                          dropped={"open": 5, "loss": 1}, refused={"unknown": 1, "exec": 2})


def test_lost_and_filtered_by_type_and_cause():
    s = stats_with_everything()
    assert s.lost == {"exec": {"parse_error": 2, "prog_missed": 2},
                      "open": {"ringbuf_full": 7, "rate_limited": 2, "user_dropped": 5},
                      "loss": {"user_dropped": 1}, "unknown": {"parse_error": 1}}
    assert list(s.lost) == ["exec", "open", "loss", "unknown"]  # kind id order; unknown last
    assert s.filtered == {"open": 15, "connect": 1}
    assert s.kernel_lost == 7 + 2 + 2  # ringbuf_full, rate_limited, prog_missed
    assert s.counters() == {"delivered": {"exec": 1, "open": 20, "status": 2, "loss": 1}, "lost": s.lost,
                            "filtered": {"open": 15, "connect": 1}, "parse_errors": 3}


class FakeStatsMap(dict):
    """The programs' per-CPU counters (MAP_STATS) as kernel_counters reads them: index -> per-CPU u64s."""
    closed = False

    def __missing__(self, index):
        return (0, 0)


class FakeProg:
    closed = False

    def __init__(self, misses: int) -> None:
        self.misses = misses

    def info(self):
        return type("Info", (), {"recursion_misses": self.misses})()


@pytest.mark.parametrize("names", [("ringbuf_full", "read_fault"),
                                   ("ringbuf_full", "read_fault", "filtered", "rate_limited")])
def test_the_kernels_counters_are_read_by_name(monkeypatch, names):
    # Before the filters' programs (two counters per kind) and after (four: STAT_FILTERED = 2,
    # STAT_RATE_LIMITED = 3): the causes are found by their names in STAT_NAMES, never by index.
    from kestrel_raw import programs
    from kestrel_raw.collector.stats import kernel_counters

    monkeypatch.setattr(programs, "STAT_NAMES", names)
    monkeypatch.setattr(programs, "STATS_PER_KIND", len(names))
    n = len(names)
    stats_map = FakeStatsMap({KIND_OPEN * n + 0: (3, 4)})
    if n == 4:
        stats_map.update({KIND_OPEN * n + 2: (10, 5), KIND_OPEN * n + 3: (0, 2), KIND_EXEC * n + 2: (1, 0)})
    spec_open = type("S", (), {"kind": KIND_OPEN})()
    kernel = kernel_counters(stats_map, [(spec_open, FakeProg(1)), (spec_open, FakeProg(2))])
    stats = snapshot(Counts(), kernel, ())
    if n == 2:
        assert stats.lost == {"open": {"ringbuf_full": 7, "prog_missed": 3}} and stats.filtered == {}
    else:
        assert stats.lost == {"open": {"ringbuf_full": 7, "rate_limited": 2, "prog_missed": 3}}
        assert stats.filtered == {"exec": 1, "open": 15}


def test_the_summary_line_has_filtered_by_type():
    assert stats_with_everything().summary() == (
        "kestrel-raw: records=40 delivered[connect=0 exec=1 loss=1 open=20 status=2] kernel_lost=11 "
        "user_dropped=6 parse_errors=3 consumed=11 filtered[connect=1 open=15] kernel_counters[connect.filtered=1 "
        "exec.prog_missed=2 exec.read_fault=1 open.filtered=15 open.rate_limited=2 open.ringbuf_full=7] peers[77]")
    assert CollectorStats(0, {}, 0, 0).summary() == (
        "kestrel-raw: records=0 delivered[] kernel_lost=0 user_dropped=0 parse_errors=0 consumed=0 filtered[] "
        "kernel_counters[none] peers[]")


def test_prometheus_lost_by_type_and_cause_and_filtered():
    from prometheus_client.core import CollectorRegistry
    from prometheus_client.exposition import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from kestrel_raw.metrics import Snapshot, families

    s = stats_with_everything()
    snap = Snapshot(delivered=dict(s.delivered), kernel={k: {n: sum(c) for n, c in v.items()}
                                                         for k, v in s.kernel.items()},
                    user_dropped=s.user_dropped, parse_errors=s.parse_errors, dropped=s.dropped, refused=s.refused)

    class C:
        def collect(self):
            return families(snap)

    reg = CollectorRegistry()
    reg.register(C())
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(generate_latest(reg).decode()) for s in fam.samples}
    lost = {labels: v for (name, labels), v in samples.items() if name == "kestrel_events_lost_total"}
    assert lost == {
        (("cause", c), ("type", t)): v for (t, c), v in {
            ("connect", "ringbuf_full"): 0, ("connect", "rate_limited"): 0, ("connect", "prog_missed"): 0,
            ("exec", "ringbuf_full"): 0, ("exec", "rate_limited"): 0, ("exec", "prog_missed"): 2,
            ("open", "ringbuf_full"): 7, ("open", "rate_limited"): 2, ("open", "prog_missed"): 0,
            ("loss", "user_dropped"): 1, ("open", "user_dropped"): 5, ("exec", "user_dropped"): 0,
            ("connect", "user_dropped"): 0,
            ("exec", "parse_error"): 2, ("unknown", "parse_error"): 1, ("open", "parse_error"): 0,
            ("connect", "parse_error"): 0}.items()}
    assert {labels: v for (name, labels), v in samples.items() if name == "kestrel_events_filtered_total"} == {
        (("type", "connect"),): 1, (("type", "exec"),): 0, (("type", "open"),): 15}


# -- the delivery counts drops and parse errors by type -------------------------------------------------------

@pytest.mark.parametrize("deliver", ["events", "json"])
async def test_drops_and_parse_errors_are_counted_by_type(deliver):
    send, recv = trio.open_memory_channel(1)
    counts = Counts()
    d = Delivery(send, CollectorConfig(event_types=["exec", "open"], queue_policy="drop", deliver=deliver), counts)
    bad_open = open_bytes()[:-20]  # its path runs past the end of the record
    garbage = b"\x01\x02\x03"  # too short to name a kind
    await d.deliver([open_bytes(), exec_bytes(), bad_open, garbage, open_bytes()])
    if deliver == "events":
        # one event fits in the channel; the exec and the second open are dropped
        assert (counts.delivered[KIND_OPEN], dict(counts.dropped)) == (1, {KIND_EXEC: 1, KIND_OPEN: 1})
    else:
        # one chunk fits: the whole batch's lines are delivered; the next batch's are dropped
        await d.deliver([open_bytes(), open_bytes(), exec_bytes()])
        assert (counts.delivered[KIND_OPEN], dict(counts.dropped)) == (2, {KIND_OPEN: 2, KIND_EXEC: 1})
    assert counts.refused == {KIND_OPEN: 1, "unknown": 1} and counts.parse_errors == 2
    assert counts.user_dropped == sum(counts.dropped.values())
    stats = snapshot(counts, {}, ())
    assert stats.lost == {"exec": {"user_dropped": 1}, "open": {"user_dropped": counts.dropped[KIND_OPEN],
                                                                 "parse_error": 1},
                          "unknown": {"parse_error": 1}}
    # The collector's own events: a status event the full queue cannot take is dropped and counted as
    # its type's; a loss event offered without waiting is not sent and nothing is counted (its counts go
    # with the next one); waiting, it takes the next free slot.
    d2 = Delivery(send, CollectorConfig(queue_policy="drop", deliver=deliver), counts)
    status = status_event(host(), 1, 0, [], counters={})
    await d2.deliver_event(status)
    assert counts.dropped[int(spec.EventType.STATUS)] == 1
    loss = loss_event({"open": {"ringbuf_full": 1}}, 1, 0)
    assert not await d2.offer_event(loss, wait=False)
    assert int(spec.EventType.LOSS) not in counts.dropped and counts.delivered[int(spec.EventType.LOSS)] == 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(d2.offer_event, loss, True)
        await trio.sleep(0.01)
        await recv.receive()  # the first item out, the waiting loss event in
    assert counts.delivered[int(spec.EventType.LOSS)] == 1
    last = recv.receive_nowait()
    assert (last.event_type_id if deliver == "events" else json.loads(last)["type"]) in (101, "loss")


# -- status_interval ------------------------------------------------------------------------------------------

def test_status_interval_is_checked():
    assert CollectorConfig().status_interval == 60 and CollectorConfig(status_interval=0).status_interval == 0
    assert CollectorConfig(status_interval=0.5).status_interval == 0.5
    for bad in (-1, float("nan"), float("inf"), True, "5"):
        with pytest.raises(ConfigError, match=r"^status_interval must be a number of seconds \(0: no periodic "
                                              r"status event\), got "):
            CollectorConfig(status_interval=bad)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kestrel_raw", "run", *args], env=ENV, cwd=REPO,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_a_bad_status_interval_flag_is_one_line_exit_2(value):
    proc = run_cli("--status-interval", value)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"kestrel-raw: --status-interval must be a number of seconds (0: no periodic "
                                        f"status event), got {float(value)!r}"]


def test_a_bad_status_interval_in_the_config_file_names_file_and_line(tmp_path):
    cfg = tmp_path / "k.toml"
    cfg.write_text('events = ["open"]\nstatus-interval = -2.5\n')
    proc = run_cli("--config", str(cfg))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"kestrel-raw: {cfg} line 2: status-interval must be a number of seconds "
                                        f"(0: no periodic status event), got -2.5"]
