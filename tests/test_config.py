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
        None, min(4, os.cpu_count()), 8 << 20, 8192, "block", "/sys/kernel/btf/vmlinux")
    assert c.event_types == (EventType.EXEC, EventType.OPEN, EventType.CONNECT, EventType.EXIT)
    assert (c.wakeup_bytes, c.poll_interval, c.flush_interval) == (1 << 20, 0.1, 0.1)
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
    (dict(program_path="/nonexistent/kestrel.o"), "program_path '/nonexistent/kestrel.o' does not exist; give the "
                                                  "path of a BPF object file"),
    (dict(dump_dir="/nonexistent/dir"), "dump_dir '/nonexistent/dir' is not a directory"),
    (dict(record_schema=object()), "record_schema parses the records of a BPF object: give program_path \\(or "
                                   "asm_object\\) too"),
    (dict(asm_object="probe.o"), "asm_object must be a kestrel_raw.probes.user.AsmObject, got 'probe.o'"),
    (dict(queue_policy="fifo"), "queue_policy 'fifo' is unknown; valid: block, drop"),
    (dict(queue_size=0), "queue_size must be at least 1"),
    (dict(flush_interval=0), "flush_interval must be a positive number of seconds, got 0"),
    (dict(poll_interval=-1.0), "poll_interval must be a positive number of seconds, got -1.0"),
    (dict(wakeup_bytes=8 << 20), "wakeup_bytes 8388608 must be at least 0 and below buffer_size \\(8388608\\)"),
    (dict(wakeup_bytes=-1), "wakeup_bytes -1 must be at least 0"),
    (dict(wakeup_bytes="1k"), "wakeup_bytes must be an integer, got '1k'"),
])
def test_invalid(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        CollectorConfig(**kwargs)


def test_program_path_that_exists(tmp_path):
    p = tmp_path / "prog.o"
    p.write_bytes(b"")
    assert CollectorConfig(program_path=p).program_path == str(p)
    # with an object, no built-in event type is needed
    assert CollectorConfig(program_path=p, event_types=()).event_types == ()


def test_asm_object_is_one_object_and_needs_no_event_type(tmp_path):
    from kestrel_raw.asm import exit_insn, mov64_imm
    from kestrel_raw.probes import AsmMap, AsmObject, AsmProgram

    obj = AsmObject("t", [AsmProgram("p", [mov64_imm(0, 0), exit_insn()], "tracepoint/syscalls/sys_enter_getpid")],
                    maps={"events": AsmMap.ringbuf(PAGE)})
    assert CollectorConfig(asm_object=obj, event_types=()).asm_object is obj
    p = tmp_path / "prog.o"
    p.write_bytes(b"")
    with pytest.raises(ConfigError, match="program_path and asm_object are both given: the collector loads one "
                                          "object; give one of them"):
        CollectorConfig(asm_object=obj, program_path=p)


def test_program_path_directory_says_it_was_renamed(tmp_path):
    """program_path used to be the listing directory; a directory given there says where it went."""
    with pytest.raises(ConfigError) as e:
        CollectorConfig(program_path=tmp_path)
    assert str(e.value) == (f"program_path {str(tmp_path)!r} is a directory: program_path is now the BPF object "
                            "file to load; the directory for program listings is named dump_dir (CLI: "
                            "--dump-programs)")
    assert CollectorConfig(dump_dir=tmp_path).dump_dir == str(tmp_path)


def test_record_schema(tmp_path):
    from construct import Int32ul, Struct
    p = tmp_path / "prog.o"
    p.write_bytes(b"")
    s = Struct("x" / Int32ul)
    assert CollectorConfig(program_path=p, record_schema=s).record_schema is s
    assert CollectorConfig(program_path=p, record_schema={"events": s}).record_schema == {"events": s}
    with pytest.raises(ConfigError, match="record_schema must be a construct"):
        CollectorConfig(program_path=p, record_schema={"events": 5})


def test_power_of_two_page_multiples_accepted():
    assert CollectorConfig(buffer_size=PAGE, buffers=1, queue_policy="drop").buffer_size == PAGE
    assert CollectorConfig(buffer_size=PAGE * 1024).buffer_size == PAGE * 1024


def test_parse_event_types():
    assert parse_event_types("exec,open") == (EventType.EXEC, EventType.OPEN)
    assert parse_event_types(" exit , EXEC ") == (EventType.EXIT, EventType.EXEC)
    assert parse_event_types("all") == (EventType.EXEC, EventType.OPEN, EventType.CONNECT, EventType.EXIT,
                                        EventType.FORK, EventType.SHELL_COMMAND, EventType.DNS_QUERY)
    # every event a program reports (status is the collector's)
    assert CollectorConfig().event_types == (EventType.EXEC, EventType.OPEN, EventType.CONNECT, EventType.EXIT)
    assert parse_event_types("exec,fork") == (EventType.EXEC, EventType.FORK)
    with pytest.raises(ConfigError, match="unknown event type 'chdir'; valid: exec, open, connect, exit, fork, "
                                          "shell_command, dns_query"):
        parse_event_types("exec,chdir")
    with pytest.raises(ConfigError, match="none given"):
        parse_event_types(" , ")


@pytest.mark.parametrize("cpus, rings", [(1, 1), (2, 2), (3, 3), (4, 4), (64, 4), (None, 1)])
def test_default_buffers_one_per_cpu_at_most_four(monkeypatch, cpus, rings):
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    assert CollectorConfig().buffers == rings
    assert CollectorConfig(buffers=8).buffers == 8
