from __future__ import annotations

import dataclasses
import os

import pytest

from kestrel_raw.config import CollectorConfig, parse_event_types
from kestrel_raw.errors import ConfigError
from kestrel_raw.spec import EventType

PAGE = os.sysconf("SC_PAGE_SIZE")


def test_defaults():
    c = CollectorConfig()
    assert (c.program_path, c.buffers, c.buffer_size, c.queue_size, c.queue_policy, c.btf_path) == (
        None, min(4, os.cpu_count()), 1 << 20, 8192, "block", "/sys/kernel/btf/vmlinux")
    assert c.event_types == (EventType.EXEC, EventType.OPEN, EventType.CONNECT, EventType.EXIT)
    assert (c.wakeup_bytes, c.poll_interval, c.flush_interval) == (128 * 1024, 0.1, 0.1)
    assert CollectorConfig(buffer_size=256 * 1024).wakeup_bytes == 32 * 1024
    assert CollectorConfig(wakeup_bytes=0).wakeup_bytes == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.buffers = 2


def test_event_types_by_name_or_value():
    c = CollectorConfig(event_types=["open", EventType.EXEC, "open", 4])
    assert c.event_types == (EventType.OPEN, EventType.EXEC, EventType.EXIT)
    assert CollectorConfig(event_types="connect").event_types == (EventType.CONNECT,)


@pytest.mark.parametrize("kwargs, message", [
    (dict(buffer_size=3 * PAGE), f"buffer_size {3 * PAGE} is not a power of two"),
    (dict(buffer_size=PAGE // 2), f"buffer_size {PAGE // 2} is not a multiple of the page size \\({PAGE} bytes\\)"),
    (dict(buffer_size=0), "buffer_size must be at least 1, got 0"),
    (dict(buffers=0), "buffers must be at least 1, got 0"),
    (dict(buffers=-2), "buffers must be at least 1, got -2"),
    (dict(buffers=2.0), "buffers must be an integer, got 2.0"),
    (dict(event_types=["exec", "chdir"]),
     "event_types: unknown event type 'chdir'; valid: exec, open, connect, exit, fork"),
    (dict(event_types=["status"]), "event_types: status is not collected from the kernel"),
    (dict(ancestors=-1), "ancestors must be an integer from 0 to 64, got -1"),
    (dict(ancestors=True), "ancestors must be an integer"),
    (dict(threads="yes"), "threads must be True or False"),
    (dict(event_types=[9]), "unknown event type 9"),
    (dict(event_types=[]), "event_types is empty"),
    (dict(program_path="/nonexistent/kestrel.bin"), "program_path '/nonexistent/kestrel.bin' does not exist"),
    (dict(queue_policy="fifo"), "queue_policy 'fifo' is unknown; valid: block, drop"),
    (dict(queue_size=0), "queue_size must be at least 1"),
    (dict(flush_interval=0), "flush_interval must be a positive number of seconds, got 0"),
    (dict(poll_interval=-1.0), "poll_interval must be a positive number of seconds, got -1.0"),
    (dict(wakeup_bytes=1 << 20), "wakeup_bytes 1048576 must be at least 0 and below buffer_size \\(1048576\\)"),
    (dict(wakeup_bytes=-1), "wakeup_bytes -1 must be at least 0"),
    (dict(wakeup_bytes="1k"), "wakeup_bytes must be an integer, got '1k'"),
])
def test_invalid(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        CollectorConfig(**kwargs)


def test_program_path_that_exists(tmp_path):
    p = tmp_path / "prog.bin"
    p.write_bytes(b"")
    assert CollectorConfig(program_path=p).program_path == str(p)


def test_power_of_two_page_multiples_accepted():
    assert CollectorConfig(buffer_size=PAGE, buffers=1, queue_policy="drop").buffer_size == PAGE
    assert CollectorConfig(buffer_size=PAGE * 1024).buffer_size == PAGE * 1024


def test_parse_event_types():
    assert parse_event_types("exec,open") == (EventType.EXEC, EventType.OPEN)
    assert parse_event_types(" exit , EXEC ") == (EventType.EXIT, EventType.EXEC)
    assert parse_event_types("all") == (EventType.EXEC, EventType.OPEN, EventType.CONNECT, EventType.EXIT,
                                        EventType.FORK)  # every event a program reports (status is the collector's)
    assert parse_event_types("exec,fork") == (EventType.EXEC, EventType.FORK)
    with pytest.raises(ConfigError, match="unknown event type 'chdir'; valid: exec, open, connect, exit, fork"):
        parse_event_types("exec,chdir")
    with pytest.raises(ConfigError, match="none given"):
        parse_event_types(" , ")


@pytest.mark.parametrize("cpus, rings", [(1, 1), (2, 2), (3, 3), (4, 4), (64, 4), (None, 1)])
def test_default_buffers_one_per_cpu_at_most_four(monkeypatch, cpus, rings):
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    assert CollectorConfig().buffers == rings
    assert CollectorConfig(buffers=8).buffers == 8
