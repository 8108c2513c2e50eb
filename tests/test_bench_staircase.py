"""bench/staircase.py: each stage is the one before plus one piece, and every stage passes the verifier."""
from __future__ import annotations

import pytest
import trio

from bench import staircase
from kestrel_raw import programs
from kestrel_raw.asm import Comment, call
from kestrel_raw.collector import KestrelCollector
from kestrel_raw.config import CollectorConfig
from kestrel_raw.kernel.prog import Program
from kestrel_raw.kernel.tracefs import tracepoint_format


@pytest.mark.kernel
def test_every_stage_loads_and_grows_from_the_one_before():
    send, _recv = trio.open_memory_channel(1)
    config = CollectorConfig(event_types=("open",), buffers=1)
    collector = KestrelCollector(send, config)
    collector.load()
    try:
        fmt = tracepoint_format("syscalls", "sys_exit_openat")
        layout = programs.KernelLayout.from_btf(collector._load_btf())
        built = {s: staircase.stage_program(s, fmt, layout, config.wakeup_bytes) for s in staircase.STAGES[1:]}
        for stage, insns in built.items():
            with Program(insns, maps=collector._maps, name="kr_stair"):
                pass
        # Each cut stage is a prefix of the next one's instructions (but for its epilogue; the builder's
        # comments, which are not instructions, left out).
        cut = ("prologue", "header", "path")
        items = {s: [i for i in built[s] if not isinstance(i, Comment)] for s in cut}
        for a, b in zip(cut, cut[1:]):
            body = items[a][:-3]  # label "out", r0 = 0, exit
            assert items[b][:len(body)] == body, (a, b)
        # "submit" never wakes a reader; "full" decides wakeups as the collector's program does.
        assert call("ringbuf_query") not in built["submit"] and call("ringbuf_query") in built["full"]
    finally:
        collector.stop()
