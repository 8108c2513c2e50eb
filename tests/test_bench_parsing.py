"""The benchmark harness's parsers: tracer outputs (bench/outputs.py), /proc and bpftool text
(bench/procfs.py), subject command lines (bench/tracers.py).  Pure: text in, values out."""
import json

import pytest

from bench import outputs, procfs, tracers
from bench.outputs import Seen

KESTREL_OPEN = ('{"type":"open","event_type_id":2,"ts_mono_ns":1106385298256,"ts_wall_ns":1,"entity_key":7,'
                '"pid":4242,"tid":4242,"ppid":1,"uid":0,"gid":0,"comm":"krgen","source":"ebpf",'
                '"path":"/tmp/t","flags":524288,"mode":0,"ret":3}')
KESTREL_EXEC = ('{"type":"exec","event_type_id":1,"ts_mono_ns":1,"ts_wall_ns":1,"entity_key":8,"pid":5000,'
                '"tid":5000,"ppid":4242,"uid":0,"gid":0,"comm":"true","source":"ebpf","filename":"/bin/true",'
                '"argv":["true"],"truncated":false}')


def test_parse_kestrel_lines():
    assert outputs.parse_kestrel(KESTREL_OPEN) == Seen("open", 4242, 1, "/tmp/t")
    assert outputs.parse_kestrel(KESTREL_EXEC) == Seen("exec", 5000, 4242, "/bin/true")
    assert outputs.parse_kestrel("kestrel-raw: records=1") is None
    assert outputs.parse_kestrel('{"type":"open",') is None


def test_parse_opensnoop_lines():
    assert outputs.parse_opensnoop("PID    COMM              FD ERR PATH") is None
    assert outputs.parse_opensnoop("15734  python3           12   0 /work/main/a.py\n") == \
        Seen("open", 15734, None, "/work/main/a.py")
    assert outputs.parse_opensnoop("15734  python3           -1   2 /x/y.pyc") == Seen("open", 15734, None, "/x/y.pyc")
    # a command name with a space does not shift the path
    assert outputs.parse_opensnoop("77     Web Content       40   0 /etc/hosts") == Seen("open", 77, None, "/etc/hosts")


def test_parse_execsnoop_and_exitsnoop_lines():
    assert outputs.parse_execsnoop("PCOMM            PID    PPID   RET ARGS") is None
    assert outputs.parse_execsnoop("true             16307  16231    0 /bin/true ") == Seen("exec", 16307, 16231, "/bin/true")
    assert outputs.parse_execsnoop("grep             16307  16231    0 /usr/bin/grep -E ^E") == \
        Seen("exec", 16307, 16231, "/usr/bin/grep")
    assert outputs.parse_exitsnoop("PCOMM            PID     PPID    TID     AGE(s)  EXIT_CODE") is None
    assert outputs.parse_exitsnoop("true             16234   16231   16234   0.00    0") == Seen("exit", 16234, 16231, "")
    assert outputs.parse_exitsnoop("bash             16309   16306   16309   2.01    signal 9 (Killed)") == \
        Seen("exit", 16309, 16306, "")


def test_parse_bpftrace_lines():
    assert outputs.parse_bpftrace("Attaching 2 probes...") is None
    assert outputs.parse_bpftrace("open 12 -2 /tmp/a b") == Seen("open", 12, None, "/tmp/a b")
    assert outputs.parse_bpftrace("exec 13 12 /bin/true") == Seen("exec", 13, 12, "/bin/true")
    assert outputs.parse_bpftrace("exit 13 12 0") == Seen("exit", 13, 12, "")
    assert outputs.parse_bpftrace("connect 14 -111") == Seen("connect", 14, None, "")
    assert outputs.parse_bpftrace("open x 1 /a") is None


def test_belongs_rules():
    pids = frozenset({10})
    assert outputs.belongs("open", Seen("open", 10, None, "/t"), pids, "/t")
    assert not outputs.belongs("open", Seen("open", 10, None, "/other"), pids, "/t")
    assert not outputs.belongs("open", Seen("open", 11, None, "/t"), pids, "/t")
    assert outputs.belongs("openlat", Seen("open", 10, None, "/lat-17"), pids, "/lat-")
    # exec and exit count the generator's CHILDREN (it forks /bin/true), by parent pid
    assert outputs.belongs("exec", Seen("exec", 99, 10, "/bin/true"), pids)
    assert not outputs.belongs("exec", Seen("exec", 10, 1, "/bin/true"), pids)
    assert outputs.belongs("exit", Seen("exit", 99, 10, ""), pids)
    assert outputs.belongs("connect", Seen("connect", 10, None, ""), pids)
    with pytest.raises(ValueError, match="unknown workload"):
        outputs.belongs("fork", Seen("exec", 1, 1, ""), pids)


def test_tally_counts_total_and_per_generator():
    lines = ["PID    COMM              FD ERR PATH\n",
             "10     krgen              3   0 /t\n",
             "10     krgen              3   0 /t\n",
             "11     krgen              3   0 /t\n",
             "12     other              3   0 /t\n",
             "10     krgen              3   0 /lib/libc.so.6\n"]
    t = outputs.tally("opensnoop", lines, "open", [10, 11], "/t")
    assert t.total == 5
    assert t.by_pid == {10: 2, 11: 1}
    t = outputs.tally("kestrel", [KESTREL_EXEC + "\n", KESTREL_EXEC + "\n"], "exec", [4242])
    assert (t.total, t.by_pid) == (2, {4242: 2})


def test_latency_seq():
    assert outputs.latency_seq(Seen("open", 1, None, "/tmp/kr-lat-42"), "/tmp/kr-lat-") == 42
    assert outputs.latency_seq(Seen("open", 1, None, "/tmp/kr-lat-4x"), "/tmp/kr-lat-") is None
    assert outputs.latency_seq(Seen("exec", 1, None, "/tmp/kr-lat-4"), "/tmp/kr-lat-") is None


def test_parse_kestrel_summary():
    err = ("some warning\nkestrel-raw: records=43075 delivered[connect=0 exec=0 exit=0 open=43075] kernel_lost=5 "
           "user_dropped=2 parse_errors=1 kernel_counters[open.ringbuf_full=5]\n")
    assert outputs.parse_kestrel_summary(err) == {
        "records": 43075, "delivered": {"connect": 0, "exec": 0, "exit": 0, "open": 43075},
        "kernel_lost": 5, "user_dropped": 2, "parse_errors": 1}
    assert outputs.parse_kestrel_summary("Traceback ...") is None


def test_parse_kestrel_outputs():
    err = ("kestrel-raw: records=3 delivered[open=3] kernel_lost=0 user_dropped=0 parse_errors=0\n"
           "kestrel-raw: outputs syslog[sent=3 dropped=0] nats[published=3 spooled=1 dropped=0 resent=1 "
           "spool_bytes=0]\n")
    assert outputs.parse_kestrel_outputs(err) == {
        "syslog": {"sent": 3, "dropped": 0},
        "nats": {"published": 3, "spooled": 1, "dropped": 0, "resent": 1, "spool_bytes": 0}}
    assert outputs.parse_kestrel_outputs("kestrel-raw: records=3") is None


def test_count_open_lines_agrees_with_tally():
    other_pid = KESTREL_OPEN.replace('"pid":4242,', '"pid":4243,')
    longer_path = KESTREL_OPEN.replace('"path":"/tmp/t",', '"path":"/tmp/t2",')
    status = '{"type":"status","event_type_id":100,"pid":4242,"path":"/tmp/t","ppid":0}'
    lines = [KESTREL_OPEN, KESTREL_OPEN, other_pid, longer_path, KESTREL_EXEC, status]
    payload = ("\n".join(lines) + "\n").encode()
    by_pid = {4242: 0}
    assert outputs.count_open_lines(payload, frozenset([4242]), "/tmp/t", by_pid) == 6
    t = outputs.tally("kestrel", [line + "\n" for line in lines], "open", [4242], "/tmp/t")
    assert by_pid == t.by_pid == {4242: 2}


def test_parse_proc_stat_counts_fields_after_last_paren():
    line = ("1234 (we ird) name)) S 1 1234 1234 0 -1 4194560 500 0 0 0 "
            "17 9 0 0 20 0 3 0 100 1000000 300 18446744073709551615\n")
    assert procfs.parse_proc_stat(line) == procfs.CpuTicks(utime=17, stime=9)
    assert procfs.CpuTicks(17, 9).seconds(clk_tck=100) == pytest.approx(0.26)
    with pytest.raises(ValueError, match="no '\\)'"):
        procfs.parse_proc_stat("garbage")


def test_parse_schedstat_and_vm_hwm():
    assert procfs.parse_schedstat_ns("75600296 385758290 217\n") == 75600296
    with pytest.raises(ValueError):
        procfs.parse_schedstat_ns("1 2")
    status = "Name:\tpython3\nVmPeak:\t  300000 kB\nVmHWM:\t   43200 kB\nVmRSS:\t   40000 kB\n"
    assert procfs.parse_vm_hwm_kb(status) == 43200
    assert procfs.parse_vm_hwm_kb("Name:\tkthreadd\n") is None


def test_parse_fdinfo_prog_id():
    prog_fd = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1057\nprog_type:\t5\nprog_jited:\t1\nprog_tag:\tabc\nprog_id:\t236\n"
    link_fd = "pos:\t0\nflags:\t02000000\nlink_type:\tperf\nlink_id:\t9\nprog_tag:\tabc\nprog_id:\t77\n"
    assert procfs.parse_fdinfo_prog_id(prog_fd) == 236
    assert procfs.parse_fdinfo_prog_id(link_fd) == 77
    assert procfs.parse_fdinfo_prog_id("pos:\t0\nflags:\t02\nmap_type:\t27\n") is None


def test_bpftool_progs_and_run_delta():
    before = procfs.parse_bpftool_progs(json.dumps([
        {"id": 235, "type": "tracepoint", "name": "sys_enter_opena", "run_time_ns": 1000, "run_cnt": 10},
        {"id": 300, "type": "kprobe", "name": "other"}]))
    assert before[300] == procfs.ProgStats(300, "other", 0, 0)
    after = procfs.parse_bpftool_progs([
        {"id": 235, "name": "sys_enter_opena", "run_time_ns": 5000, "run_cnt": 20},
        {"id": 236, "name": "sys_exit_openat", "run_time_ns": 3000, "run_cnt": 10},
        {"id": 300, "name": "other", "run_time_ns": 99999, "run_cnt": 1}])
    d = procfs.run_delta(before, after, {235, 236, 999})
    assert d == {"runs": 20, "ns": 7000, "ns_per_run": 350.0,
                 "programs": {"sys_enter_opena#235": {"runs": 10, "ns": 4000},
                              "sys_exit_openat#236": {"runs": 10, "ns": 3000}}}
    assert procfs.run_delta(before, before, {235})["ns_per_run"] is None


def test_subject_commands():
    k = tracers.subject_for("kestrel-raw", "build", ("kestrel-raw", "run"))
    assert k.procs[0].command("/o.jsonl", False) == ["kestrel-raw", "run", "--events", "exec,open,connect,exit",
                                                     "--output", "/o.jsonl"]
    assert k.procs[0].command(None, True) == ["kestrel-raw", "run", "--events", "exec,open,connect,exit"]
    o = tracers.subject_for("libbpf-tools", "open")
    assert [p.command("/o", False) for p in o.procs] == [["/usr/sbin/opensnoop"]]
    assert o.procs[0].command("/o", True) == ["stdbuf", "-oL", "/usr/sbin/opensnoop"]
    assert [p.label for p in tracers.subject_for("libbpf-tools", "build").procs] == ["execsnoop", "opensnoop",
                                                                                       "exitsnoop"]
    assert tracers.subject_for("libbpf-tools", "connect") is None
    b = tracers.subject_for("bpftrace", "exit")
    assert b.procs[0].command("/o", True) == ["bpftrace", "-e", tracers.BPFTRACE_PROBES["exit"]]
    assert tracers.subject_for("none", "open").procs == ()
    with pytest.raises(ValueError, match="unknown subject"):
        tracers.subject_for("strace", "open")


def test_summarize_pyspy(tmp_path):
    from bench.sinks import summarize_pyspy

    raw = tmp_path / "raw.txt"
    raw.write_text(
        "thread (1): MainThread;run (trio/_core/_run.py:1);poll_ring (kestrel_raw/collector/poll.py:5);"
        "Delivery._encode_batch (kestrel_raw/collector/deliver.py:9) 3\n"
        "thread (1): MainThread;run (trio/_core/_run.py:1);_run.<locals>.write_events (kestrel_raw/cli/run.py:2);"
        "NatsSink.send (kestrel_raw/sinks/nats.py:7) 1\n"
        "thread (2): kestrel-raw nats;NatsSink._pump (kestrel_raw/sinks/nats.py:3);"
        "NatsSink._publish_one (kestrel_raw/sinks/nats.py:4) 4\n")
    s = summarize_pyspy(str(raw), ticks=16)
    assert s["samples"] == 8
    assert s["threads_pct"] == {"MainThread": 50.0, "kestrel-raw nats": 50.0}
    assert s["threads_active_pct"] == {"MainThread": 25.0, "kestrel-raw nats": 25.0}
    parts = s["parts_pct"]
    assert parts["trio thread: poll_ring (ring read, parse, hand-off)"] == 37.5
    assert parts["trio thread: JSON encode (Delivery._encode_batch)"] == 37.5
    assert parts["trio thread: NatsSink.send (queue + wake the NATS thread)"] == 12.5
    assert parts["NATS thread: _publish_one (js.publish_async)"] == 50.0
    assert s["top_self_pct"]["MainThread"] == [("Delivery._encode_batch (kestrel_raw/collector/deliver.py)", 37.5),
                                               ("NatsSink.send (kestrel_raw/sinks/nats.py)", 12.5)]
