"""The filter piece of the programs (kestrel_raw/programs/filter.py) instruction by instruction, the filter
image writer's pure parts (kestrel_raw/collector/filtering.py), and the delivery of records written for the
process cache alone (FLAG_FILTERED, FLAG_RATE_LIMITED); FilterWriter on real maps at the end (kernel)."""
from __future__ import annotations

import pytest
import trio

from kestrel_raw.asm import exit_insn, format_program, label, mov64_imm
from kestrel_raw.collector import KestrelCollector
from kestrel_raw.collector.deliver import Delivery
from kestrel_raw.collector.filtering import FilterWriter, filter_counters, rekeyed
from kestrel_raw.collector.load import create_filter_maps
from kestrel_raw.collector.stats import Counts
from kestrel_raw.config import CollectorConfig
from kestrel_raw.programs import filter as piece
from kestrel_raw.programs import filtermaps as fm
from kestrel_raw.programs.builder import STAT_FILTERED, STAT_NAMES, STAT_RATE_LIMITED, STATS_PER_KIND, ProgramBuilder
from kestrel_raw.spec import EXIT, FLAG_FILTERED, FLAG_RATE_LIMITED, OPEN, EventType

from helpers import open_bytes, exit_bytes

# The fast path, one key (uid), the rate limit and the two ways out, for exit with context on (a context
# kind: what a filter drops is flagged and written).  The set is read once and kept in the key's first u32
# (r10 -208); r9 holds the row, then the bucket.
EXIT_PIECES = """\
; filters: the active set (kr_fset, kept in the keys' first u32), the kind's row kr_fcfg[set * 256 + 4]; all zero: no filter
   0: (18) r1 = map[kr_fset][0]+0
   2: (61) r1 = *(u32 *)(r1 +0)
   3: (63) *(u32 *)(r10 -208) = r1
   4: (27) r1 *= 256
   5: (07) r1 += 4
   6: (63) *(u32 *)(r10 -16) = r1
   7: (18) r1 = map[kr_fcfg]
   9: (bf) r2 = r10
  10: (07) r2 += -16
  11: (85) call bpf_map_lookup_elem#1
  12: (15) if r0 == 0x0 goto pc+95
  13: (bf) r9 = r0
  14: (79) r1 = *(u64 *)(r9 +0)
  15: (79) r2 = *(u64 *)(r9 +8)
  16: (4f) r1 |= r2
  17: (15) if r1 == 0x0 goto pc+90
; filter uid: only when the row's include or exclude mask has its bit (0x2)
  18: (61) r1 = *(u32 *)(r9 +0)
  19: (61) r2 = *(u32 *)(r9 +4)
  20: (4f) r1 |= r2
  21: (57) r1 &= 2
  22: (15) if r1 == 0x0 goto pc+21
  23: (61) r1 = *(u32 *)(r8 +52)
  24: (63) *(u32 *)(r10 -204) = r1
  25: (18) r1 = map[kr_fuid]
  27: (bf) r2 = r10
  28: (07) r2 += -208
  29: (85) call bpf_map_lookup_elem#1
  30: (15) if r0 == 0x0 goto pc+1
  31: (61) r0 = *(u32 *)(r0 +0)
  32: (61) r1 = *(u32 *)(r9 +0)
  33: (57) r1 &= 2
  34: (15) if r1 == 0x0 goto pc+3
  35: (bf) r2 = r0
  36: (57) r2 &= 1
  37: (15) if r2 == 0x0 goto pc+56
  38: (61) r1 = *(u32 *)(r9 +4)
  39: (57) r1 &= 2
  40: (15) if r1 == 0x0 goto pc+3
  41: (bf) r2 = r0
  42: (57) r2 &= 2
  43: (55) if r2 != 0x0 goto pc+50
; rate limit: the row's rate (events/s; 0: none), the bucket kr_frate[4]
  44: (61) r1 = *(u32 *)(r9 +12)
  45: (15) if r1 == 0x0 goto pc+62
  46: (7b) *(u64 *)(r10 -184) = r1
  47: (62) *(u32 *)(r10 -16) = 4
  48: (18) r1 = map[kr_frate]
  50: (bf) r2 = r10
  51: (07) r2 += -16
  52: (85) call bpf_map_lookup_elem#1
  53: (15) if r0 == 0x0 goto pc+54
  54: (bf) r9 = r0
  55: (85) call bpf_ktime_get_ns#5
  56: (bf) r3 = r0
  57: (79) r0 = *(u64 *)(r9 +0)
  58: (3d) if r0 >= r3 goto pc+16
  59: (bf) r2 = r3
  60: (1f) r2 -= r0
  61: (b5) if r2 <= 0x3b9aca00 goto pc+1
  62: (b7) r2 = 1000000000
  63: (79) r1 = *(u64 *)(r10 -184)
  64: (2f) r2 *= r1
  65: (37) r2 /= 1000000
  66: (15) if r2 == 0x0 goto pc+8
  67: (bf) r4 = r0
  68: (db) r0 = atomic64_cmpxchg((u64 *)(r9 +0), r0, r3)
  69: (5d) if r0 != r4 goto pc+5
  70: (db) lock *(u64 *)(r9 +8) += r2
  71: (27) r1 *= 1000
  72: (79) r3 = *(u64 *)(r9 +8)
  73: (dd) if r3 s<= r1 goto pc+1
  74: (7b) *(u64 *)(r9 +8) = r1
  75: (b7) r1 = -1000
  76: (db) r1 = atomic64_fetch_add((u64 *)(r9 +8), r1)
  77: (75) if r1 s>= 0x3e8 goto pc+30
  78: (b7) r1 = 1000
  79: (db) lock *(u64 *)(r9 +8) += r1
; stats[exit.rate_limited] += 1 (this CPU)
  80: (62) *(u32 *)(r10 -16) = 19
  81: (18) r1 = map[stats]
  83: (bf) r2 = r10
  84: (07) r2 += -16
  85: (85) call bpf_map_lookup_elem#1
  86: (15) if r0 == 0x0 goto pc+3
  87: (79) r1 = *(u64 *)(r0 +0)
  88: (07) r1 += 1
  89: (7b) *(u64 *)(r0 +0) = r1
; header_flags |= RATE_LIMITED
  90: (69) r1 = *(u16 *)(r8 +10)
  91: (47) r1 |= 32
  92: (6b) *(u16 *)(r8 +10) = r1
  93: (05) goto pc+14
; stats[exit.filtered] += 1 (this CPU)
  94: (62) *(u32 *)(r10 -16) = 18
  95: (18) r1 = map[stats]
  97: (bf) r2 = r10
  98: (07) r2 += -16
  99: (85) call bpf_map_lookup_elem#1
 100: (15) if r0 == 0x0 goto pc+3
 101: (79) r1 = *(u64 *)(r0 +0)
 102: (07) r1 += 1
 103: (7b) *(u64 *)(r0 +0) = r1
; header_flags |= FILTERED
 104: (69) r1 = *(u16 *)(r8 +10)
 105: (47) r1 |= 16
 106: (6b) *(u16 *)(r8 +10) = r1
 107: (05) goto pc+0
 108: (b7) r0 = 0
 109: (95) exit"""


def test_the_pieces_of_exit_with_context_instruction_by_instruction():
    b = ProgramBuilder("kr_t", self_tgid=1, nrings=1, wakeup_threshold=0, layout=object(), context=True)
    piece._row(b, EXIT, "p")
    piece._key(b, "uid", EXIT, "p", "d")
    piece._rate(b, EXIT, "p")
    piece._drop(b, EXIT, "l", STAT_RATE_LIMITED, FLAG_RATE_LIMITED, "p")
    piece._drop(b, EXIT, "d", STAT_FILTERED, FLAG_FILTERED, "p")
    b.emit(label("p"), label("out"), mov64_imm(0, 0), exit_insn())
    assert format_program(b.insns) == EXIT_PIECES


def test_without_context_a_dropped_record_leaves_unwritten():
    b = ProgramBuilder("kr_t", self_tgid=1, nrings=1, wakeup_threshold=0, layout=object(), context=False)
    piece._drop(b, EXIT, "d", STAT_FILTERED, FLAG_FILTERED, "p")
    b.emit(label("p"), label("out"), mov64_imm(0, 0), exit_insn())
    text = format_program(b.insns)
    assert "header_flags" not in text and "stats[exit.filtered]" in text
    assert text.splitlines()[-3] == "  10: (05) goto pc+0"  # to "out", past nothing: the submit is skipped


def test_every_key_has_its_piece_and_the_kinds_only_theirs():
    assert set(piece._FLAGS) == set(fm.KEY_BITS)
    assert STAT_NAMES[STAT_FILTERED] == "filtered" and STAT_NAMES[STAT_RATE_LIMITED] == "rate_limited"
    assert STATS_PER_KIND == 4 and (FLAG_FILTERED, FLAG_RATE_LIMITED) == (16, 32)


def test_the_internal_proc_record_is_never_filtered():
    from kestrel_raw.spec import PROC

    b = ProgramBuilder("kr_t", self_tgid=1, nrings=1, wakeup_threshold=0)
    piece.apply(b, PROC)
    assert b.insns == []


def test_a_builder_without_the_layout_is_refused_by_name():
    b = ProgramBuilder("kr_x", self_tgid=1, nrings=1, wakeup_threshold=0)
    with pytest.raises(ValueError, match="kr_x: the filters read kernel structs"):
        piece.apply(b, OPEN)


# -- the writer's pure parts ----------------------------------------------------------------------------------


def test_rekeyed_moves_every_key_to_the_set_and_keeps_the_rest():
    image = fm.Image(0, {2: fm.CFG.pack(1, 0, 0, 0)}, {
        fm.MAP_FUID: {fm.KEY_UID.pack(0, 1000): fm.VALUE.pack(1)},
        fm.MAP_FPATH: {fm.KEY_PATH.pack(48, 0, b"/etc/"): fm.VALUE.pack(2)},
        fm.MAP_FDADDR: {fm.KEY_DADDR.pack(48, 0, 2, b"\x7f\0\0\1"): fm.VALUE.pack(1)}})
    moved = rekeyed(image, 1)
    assert moved == fm.Image(1, image.rows, {
        fm.MAP_FUID: {fm.KEY_UID.pack(1, 1000): fm.VALUE.pack(1)},
        fm.MAP_FPATH: {fm.KEY_PATH.pack(48, 1, b"/etc/"): fm.VALUE.pack(2)},
        fm.MAP_FDADDR: {fm.KEY_DADDR.pack(48, 1, 2, b"\x7f\0\0\1"): fm.VALUE.pack(1)}})
    assert rekeyed(image, 0) is image


def test_filter_counters_pick_the_filtered_and_rate_limited_out_of_the_kernel_counters():
    kernel = {"open": {"ringbuf_full": [1, 0], "filtered": [3, 4], "rate_limited": [0, 5]},
              "exec": {"ringbuf_full": [0, 0], "filtered": [0, 0], "rate_limited": [0, 0]}}
    assert filter_counters(kernel) == {"open": {"filtered": 7, "rate_limited": 5}}


# -- delivery ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("deliver", ["events", "json"])
@pytest.mark.parametrize("flag", [FLAG_FILTERED, FLAG_RATE_LIMITED])
def test_a_record_written_for_the_cache_alone_is_never_delivered(deliver, flag):
    send, recv = trio.open_memory_channel(100)
    counts = Counts()
    d = Delivery(send, CollectorConfig(event_types=["open", "exit"], deliver=deliver), counts)
    d.cache_only_records = True  # as the collector sets it once a filter is written with context on
    batch = [open_bytes(path=b"/a"), exit_bytes(flags=flag, pid=77), open_bytes(path=b"/b")]
    if deliver == "json":
        trio.run(d.deliver, batch)
        chunk = recv.receive_nowait()
        assert chunk.count(b"\n") == 2 and b'"/a"' in chunk and b'"/b"' in chunk and b'"exit"' not in chunk
    else:
        d.send_events(batch)
        got = [recv.receive_nowait(), recv.receive_nowait()]
        assert [e["path"] for e in got] == ["/a", "/b"]
    assert counts.delivered[EventType.OPEN] == 2 and counts.delivered[EventType.EXIT] == 0
    assert counts.consumed == 1


def test_the_delivery_looks_for_cache_only_records_once_a_filter_is_set_with_context():
    from kestrel_raw.filters import Filters

    for context, filters, expected in ((True, Filters.parse({"uid": [0]}), True), (False, Filters.parse({"uid": [0]}), False),
                                       (True, None, False)):
        send, _recv = trio.open_memory_channel(1)
        c = KestrelCollector(send, CollectorConfig(event_types=["open"], context=context, filters=filters))
        assert c._delivery.cache_only_records is False
        c._note_cache_only()
        assert c._delivery.cache_only_records is expected, (context, filters)


# -- FilterWriter on real maps ---------------------------------------------------------------------------------


@pytest.mark.kernel
def test_the_writer_fills_the_inactive_set_flips_and_clears_the_old_one():
    maps = {}
    create_filter_maps(maps)
    try:
        w = FilterWriter(maps)
        uid, path = fm.KEY_UID.pack(0, 7), fm.KEY_PATH.pack(40, 0, b"/tmp")
        first = fm.Image(0, {OPEN.id: fm.CFG.pack(fm.KEY_BITS["uid"], 0, 0, 0)}, {fm.MAP_FUID: {uid: fm.VALUE.pack(1)}})
        w.write(first)
        assert maps[fm.MAP_FSET][0] == fm.VALUE.pack(0)
        assert maps[fm.MAP_FCFG][OPEN.id] == first.rows[OPEN.id]
        second = fm.Image(0, {EXIT.id: fm.CFG.pack(0, 0, 0, 5)}, {fm.MAP_FPATH: {path: fm.VALUE.pack(2)}})
        w.write(second)
        assert maps[fm.MAP_FSET][0] == fm.VALUE.pack(1)
        assert maps[fm.MAP_FCFG][fm.FILTER_KINDS + EXIT.id] == second.rows[EXIT.id]
        # the old set: its entries deleted, its row zeroed
        assert list(maps[fm.MAP_FUID].keys()) == []
        assert maps[fm.MAP_FCFG][OPEN.id] == bytes(fm.CFG.size)
        assert list(maps[fm.MAP_FPATH].keys()) == [fm.KEY_PATH.pack(40, 1, b"/tmp")]
        # a longest-prefix lookup from user space finds it for a longer path
        assert maps[fm.MAP_FPATH].get(fm.KEY_PATH.pack(8 * 12, 1, b"/tmp/a/b/c/d")) == fm.VALUE.pack(2)
        # a write the maps cannot take changes nothing in force
        too_many = {fm.KEY_PORT.pack(0, p): fm.VALUE.pack(1) for p in range(fm.MAX_VALUES + 1)}
        with pytest.raises(ValueError, match="more than one set holds"):
            w.write(fm.Image(0, {}, {fm.MAP_FPORT: too_many}))
        assert maps[fm.MAP_FSET][0] == fm.VALUE.pack(1) and w.current.set == 1
        # no filter at all: both sets empty after the next write
        w.write(fm.Image(0, {}, {}))
        assert all(maps[fm.MAP_FCFG][i] == bytes(fm.CFG.size) for i in range(fm.SETS * fm.FILTER_KINDS))
        assert all(list(maps[name].keys()) == [] for name in fm.KEY_STRUCTS)
    finally:
        for m in maps.values():
            m.close()


@pytest.mark.kernel
@pytest.mark.parametrize("context", [True, False])
def test_every_program_with_the_filters_is_accepted_by_the_verifier(context):
    # Every event type's programs (the filters in each submit), with and without context (the flagged way
    # out of exec, exit and fork), with new threads reported (fork's second submit).
    from kestrel_raw.spec import EVENT_KINDS

    send, _recv = trio.open_memory_channel(1)
    c = KestrelCollector(send, CollectorConfig(event_types=[k.label for k in EVENT_KINDS.values()],
                                               context=context, threads=True))
    try:
        c.load()
        names = {spec.name for spec, _prog in c._programs}
    finally:
        c.stop()
    assert {"kr_openat", "kr_open_fin", "kr_connect", "kr_exec_cwd", "kr_execve_x", "kr_exit", "kr_fork",
            "kr_fork_cwd", "kr_shell", "kr_dns_ret"} <= names


# -- the task's keys, before a program's costly part ----------------------------------------------------------


@pytest.mark.kernel
def test_the_early_piece_tests_only_the_task_keys_and_counts_only_at_the_exit():
    # (the running kernel's BTF: the exe and pid keys and the header read kernel structs)
    from kestrel_raw.collector.load import load_btf
    from kestrel_raw.programs.layout import KernelLayout

    layout = KernelLayout(load_btf("/sys/kernel/btf/vmlinux"))

    def early(kind, **kw):
        b = ProgramBuilder("kr_t", self_tgid=1, nrings=1, wakeup_threshold=0, layout=layout, context=True)
        piece.apply_early(b, kind, **kw)
        if not b.insns:
            return ""
        b.emit(label("out"), mov64_imm(0, 0), exit_insn())
        return format_program(b.insns)

    exit_ = early(OPEN, build_header=True, count=True)
    assert f"r1 &= {piece.TASK_BITS}" in exit_ and "stats[open.filtered]" in exit_
    assert "filter uid" in exit_ and "filter pid" in exit_ and "filter path" not in exit_
    assert "filter outcome" not in exit_ and "rate limit" not in exit_
    # not the whole header (its clock, CPU and tty): only what the task's keys read, past the mask test (a
    # kind with no task key pays the row's lookup and nothing more)
    assert "record header" not in exit_ and "ktime_get_ns" not in exit_
    fields = "the header fields the task's keys read"
    assert exit_.index(f"r1 &= {piece.TASK_BITS}") < exit_.index(fields) < exit_.index("filter uid")
    for name in ("pid", "uid", "comm", "cgroup_id"):
        assert f"record.{name}" in exit_ or name == "pid", name
    entry_ = early(OPEN, build_header=True, count=False)
    assert "stats[open.filtered]" not in entry_  # the exit program counts the event it drops
    assert early(EXIT, build_header=False, count=True) == ""  # context kind, context on: flagged at the submit
    assert piece.TASK_BITS == sum(fm.KEY_BITS[k] for k in ("pid", "uid", "comm", "exe", "cgroup", "container"))


@pytest.mark.kernel
def test_open_and_connect_drop_on_the_task_keys_before_the_copies():
    # In the programs as loaded: the early piece comes before the entry's copy and the exit's path read
    # and sockaddr read, so that an event the task's keys drop costs none of them.
    from kestrel_raw.asm import format_program as listing
    from kestrel_raw.collector.load import build_programs

    cfg = CollectorConfig(event_types=["open", "connect"])
    built = {spec.name: listing(insns) for spec, insns in build_programs(cfg, __import__(
        "kestrel_raw.programs", fromlist=["config_specs"]).config_specs(cfg), mount_tracefs=False)}
    for name, costly in (("kr_openat_e", "probe_read_user_str"), ("kr_openat", "probe_read_user_str"),
                         ("kr_openat2", "probe_read_user"), ("kr_connect_e", "probe_read_user"),
                         ("kr_connect", "task_storage_get")):
        text = built[name]
        assert "filters at the start" in text, name
        assert text.index("filters at the start") < text.index(costly), name
