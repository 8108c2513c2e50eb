"""The outputs' own parts, without the kernel (issue 18 items 2-5): safe output files and rotation, the
syslog messages, the NATS spool and duplicate check, the Prometheus text."""
from __future__ import annotations

import os
import stat

import pytest

from kestrel_raw.sinks.files import OutputError, RotatingFile, open_output, rotated_names
from kestrel_raw.sinks.jsonl import JsonlSink
from kestrel_raw.sinks.natsmsg import Batch, Dedup, headers, origin, with_host
from kestrel_raw.sinks.spool import HEADER_SIZE, Spool
from kestrel_raw.sinks import syslog

NOBODY = 65534


# -- safe output files ----------------------------------------------------------------------------------------

def test_a_new_file_is_made_0600_and_an_existing_one_appended(tmp_path):
    p = tmp_path / "events.jsonl"
    old = os.umask(0)
    try:
        with JsonlSink(p) as sink:
            sink.write(b'{"a":1}\n')
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    with JsonlSink(p) as sink:
        sink.write(b'{"a":2}\n')
    assert p.read_bytes() == b'{"a":1}\n{"a":2}\n'


def test_a_symlink_is_refused(tmp_path):
    target = tmp_path / "passwd"
    target.write_text("root:x:0:0\n")
    link = tmp_path / "events.jsonl"
    link.symlink_to(target)
    with pytest.raises(OutputError) as e:
        JsonlSink(link)
    assert str(e.value) == f"{link}: is a symbolic link; refusing to follow it (give the file's real path)"
    assert target.read_text() == "root:x:0:0\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_another_users_file_is_refused(tmp_path):
    p = tmp_path / "events.jsonl"
    p.write_text("")
    os.chmod(p, 0o600)
    os.chown(p, 1234, 1234)
    with pytest.raises(OutputError, match=r"exists and belongs to uid 1234, not to this user; refusing to append"):
        open_output(p)
    # ... unless it is the user the collector becomes (its rotated files are that user's).
    os.chown(p, NOBODY, NOBODY)
    os.close(open_output(p, also_owner=NOBODY))


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_a_file_others_can_write_is_refused(tmp_path, mode):
    p = tmp_path / "events.jsonl"
    p.write_text("")
    os.chmod(p, mode)
    with pytest.raises(OutputError, match=rf"exists and others can write it \(mode {mode:04o}\); refusing"):
        open_output(p)


def test_a_hard_linked_file_is_refused(tmp_path):
    p = tmp_path / "events.jsonl"
    p.write_text("")
    os.chmod(p, 0o600)
    os.link(p, tmp_path / "elsewhere")
    with pytest.raises(OutputError, match="has 2 hard links; refusing"):
        open_output(p)


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(OutputError):
        open_output(tmp_path)


# -- rotation --------------------------------------------------------------------------------------------

def lines(n, start=0, width=20):
    return b"".join(b'{"n":%0*d}\n' % (width, i) for i in range(start, start + n))


def test_rotation_cuts_between_whole_lines_and_loses_nothing(tmp_path):
    p = tmp_path / "events.jsonl"
    line_len = len(lines(1))
    f = RotatingFile(p, rotate_size=10 * line_len + 5, keep=3, buffer_size=1 << 20)
    written = 0
    for size in (1, 7, 3, 15, 2, 40, 1):  # chunks of several lines, as the collector hands them on
        f.write(lines(size, written))
        written += size
    f.close()
    names = [n for n in rotated_names(str(p), 3) if os.path.exists(n)]
    assert names == [f"{p}.3", f"{p}.2", f"{p}.1", str(p)]
    data = b"".join(open(n, "rb").read() for n in names)
    # The oldest files were removed (keep=3): what is left is the newest lines, whole, in order, once each.
    got = data.splitlines()
    assert got == lines(written).splitlines()[-len(got):]
    for n in names:
        content = open(n, "rb").read()
        assert content.endswith(b"\n") and len(content) <= 10 * line_len + 5
        assert stat.S_IMODE(os.stat(n).st_mode) == 0o600
    assert f.counts.rotations == written // 10 - (1 if written % 10 == 0 else 0)


def test_a_line_longer_than_the_limit_gets_a_file_of_its_own(tmp_path):
    p = tmp_path / "events.jsonl"
    f = RotatingFile(p, rotate_size=50, keep=5)
    f.write(b"short\n")
    f.write(b"x" * 120 + b"\n")
    f.write(b"after\n")
    f.close()
    assert [open(n, "rb").read() for n in rotated_names(str(p), 5) if os.path.exists(n)] == [
        b"short\n", b"x" * 120 + b"\n", b"after\n"]


def test_rotation_goes_through_the_directory_it_opened(tmp_path):
    # The directory is renamed after the start: the files still rotate in it (not in a new one at the path).
    d = tmp_path / "logs"
    d.mkdir()
    f = RotatingFile(d / "e.jsonl", rotate_size=30, keep=2)
    d.rename(tmp_path / "moved")
    (tmp_path / "logs").mkdir()
    f.write(lines(1))
    f.write(lines(1, 1))
    f.close()
    assert sorted(os.listdir(tmp_path / "moved")) == ["e.jsonl", "e.jsonl.1"]
    assert os.listdir(tmp_path / "logs") == []


# -- syslog ---------------------------------------------------------------------------------------------

def test_rfc5424_messages():
    head = syslog.header(syslog.FACILITIES["daemon"], hostname="host1", pid=42)
    chunk = b'{"type":"open","pid":1}\n{"type":"exec","pid":2}\n'
    msgs = syslog.messages(chunk, head, now=1796304631.25)
    assert msgs == [
        b'<30>1 2026-12-03T13:30:31.250000Z host1 kestrel-raw 42 open - {"type":"open","pid":1}',
        b'<30>1 2026-12-03T13:30:31.250000Z host1 kestrel-raw 42 exec - {"type":"exec","pid":2}',
    ]
    assert syslog.frame(msgs[:1]) == b"%d %s" % (len(msgs[0]), msgs[0])
    assert syslog.header(syslog.FACILITIES["local3"], "h", 1)[0] == b"<158>1 "


@pytest.mark.parametrize("text, address", [
    ("/dev/log", syslog.Address("unix", path="/dev/log")),
    ("unix:///run/x.sock", syslog.Address("unix", path="/run/x.sock")),
    ("udp://127.0.0.1:514", syslog.Address("udp", host="127.0.0.1", port=514)),
    ("tcp://[::1]:601", syslog.Address("tcp", host="::1", port=601)),
])
def test_syslog_addresses(text, address):
    assert syslog.parse_address(text) == address


# -- the NATS spool and the consumer's duplicate check --------------------------------------------------------

def test_spool_is_a_bounded_fifo_that_survives_a_restart(tmp_path):
    p = str(tmp_path / "spool")
    s = Spool(p, 1000)
    assert os.stat(p).st_size == HEADER_SIZE + 1000 and os.stat(p).st_blocks * 512 < HEADER_SIZE + 1000  # sparse
    batches = [Batch(7, i * 10, 10, b"x" * (100 + i)) for i in range(20)]
    pushed = [b for b in batches if s.push(b.pack())]
    assert len(pushed) == 7  # 7 records of ~130 bytes fit in 1000; the rest is refused, not overwritten
    got = s.peek(3)
    s.pop(got[-1][0])
    assert [Batch.unpack(r) for _pos, r in got] == pushed[:3]
    assert s.push(batches[7].pack()) and s.push(batches[8].pack())  # room again, across the end (wraps)
    s.close()
    s = Spool(p, 1000)  # the next run finds them, in order
    assert [Batch.unpack(r) for _pos, r in s.peek(100)] == pushed[3:] + batches[7:9]
    s.close()


def test_a_spool_that_does_not_check_out_starts_empty(tmp_path):
    p = str(tmp_path / "spool")
    s = Spool(p, 1000)
    s.push(b"a" * 50)
    s.close()
    with open(p, "r+b") as f:  # a torn record
        f.seek(HEADER_SIZE + 10)
        f.write(b"\xff")
    s = Spool(p, 1000)
    assert (s.used, s.discarded) == (0, 58)


def test_message_headers_and_dedup():
    b = Batch(run=123, seq=40, count=3, lines=b"a\nb\nc\n")
    h = headers(b, "machine", "host1")
    assert h == {"Nats-Msg-Id": "machine.123.40", "Kestrel-Host": "host1", "Kestrel-Host-Id": "machine",
                 "Kestrel-Run": "123", "Kestrel-Seq": "40", "Kestrel-Count": "3"}
    assert origin(h) == ("machine", "host1", 123, 40, 3)
    d = Dedup()
    seen = [d.first_time("m", 1, s, c) for s, c in [(10, 5), (0, 5), (10, 5), (5, 5), (0, 5), (15, 1), (3, 1)]]
    assert seen == [True, True, False, True, False, True, False]
    assert d.first_time("m", 2, 0, 5) and d.first_time("other", 1, 0, 5)  # another run, another host
    assert with_host(b'{"type":"open"}', "h1", 41) == b'{"type":"open","host":"h1","host_seq":41}'


# -- Prometheus text ------------------------------------------------------------------------------------

def test_metrics_text_parses_with_prometheus_own_parser():
    from prometheus_client.core import CollectorRegistry
    from prometheus_client.exposition import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from kestrel_raw.metrics import Snapshot, families

    snap = Snapshot(delivered={"open": 5, "exec": 1}, kernel={"open": {"ringbuf_full": 2, "prog_missed": 1}},
                    records=6, user_dropped=3, parse_errors=0, dropped={"open": 3}, rings=[(1024, 4096, 7)],
                    programs=[("kr_openat", 10, 2000)], attached=1, bpf_stats=1,
                    outputs={"nats": {"published": 5, "dropped": 0, "spool_bytes": 0, "connected": 1}})

    class C:
        def collect(self):
            return families(snap)

    reg = CollectorRegistry()
    reg.register(C())
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(generate_latest(reg).decode()) for s in fam.samples}
    assert samples[("kestrel_events_total", (("type", "open"),))] == 5
    assert samples[("kestrel_events_lost_total", (("cause", "ringbuf_full"), ("type", "open")))] == 2
    assert samples[("kestrel_events_lost_total", (("cause", "user_dropped"), ("type", "open")))] == 3
    assert samples[("kestrel_ring_buffer_fill_ratio", (("ring", "0"),))] == 0.25
    assert samples[("kestrel_poll_wakeups_total", (("ring", "0"),))] == 7
    assert samples[("kestrel_bpf_program_ns_per_run", (("program", "kr_openat"),))] == 200
    assert samples[("kestrel_output_events_total", (("output", "nats"),))] == 5
    assert samples[("kestrel_nats_connected", ())] == 1
