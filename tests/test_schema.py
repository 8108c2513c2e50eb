"""kestrel-schema: ids are pinned forever."""
from __future__ import annotations

import pytest

from kestrel_raw.spec import FIELDS, FIELD_IDS, EventType, FieldType, field, fields_of

E, O, C, X = "exec", "open", "connect", "exit"
SH, DNS = "shell_command", "dns_query"
ALL = {E, O, C, X, SH, DNS}

# (id, name, type, event types): changing any of these breaks stored events.  Append, never edit.
PINNED = [
    (1, "pid", "u64", ALL),
    (2, "tid", "u64", ALL),
    (3, "ppid", "u64", ALL),
    (4, "uid", "u64", ALL),
    (5, "gid", "u64", ALL),
    (6, "comm", "string", ALL),
    (7, "process_start_ns", "u64", ALL),
    (8, "cpu", "u64", ALL),
    (9, "filename", "string", {E}),
    (10, "argv", "list of strings", {E}),
    (11, "truncated", "bool", {E, O, SH, DNS}),
    (12, "path", "string", {O}),
    (13, "flags", "u64", {O}),
    (14, "mode", "u64", {O}),
    (15, "ret", "i64", {O, C, DNS}),
    (16, "dfd", "i64", {O}),
    (17, "syscall", "string", {O}),
    (18, "fault", "bool", {E, O, C, SH, DNS}),
    (19, "family", "string", {C, DNS}),
    (20, "daddr", "string", {C}),
    (21, "dport", "u64", {C}),
    (22, "fd", "i64", {C}),
    (23, "exit_code", "u64", {X}),
    (24, "signal", "u64", {X}),
    (25, "resolved_path", "string", {O}),
    (26, "toctou", "bool", {O, C}),
    (27, "core_dumped", "bool", {X}),
    (28, "resolve", "u64", {O}),
    (29, "late_read", "bool", {O, C}),
    (130, "command", "string", {SH}),
    (131, "query", "string", {DNS}),
    (132, "service", "string", {DNS}),
    (133, "addresses", "list of strings", {DNS}),
    (134, "duration_ns", "u64", {DNS}),
]


def test_every_field_pinned():
    got = [(int(f.id), f.name, f.type.value, {t.label for t in f.event_types}) for f in FIELDS]
    assert got == PINNED


def test_ids_and_names_unique():
    assert len({f.id for f in FIELDS}) == len({f.name for f in FIELDS}) == len(FIELDS)
    assert FIELD_IDS["daddr"] == 20


def test_event_types():
    assert [(int(t), t.label) for t in EventType] == [(1, "exec"), (2, "open"), (3, "connect"), (4, "exit"),
                                                      (50, "shell_command"), (51, "dns_query")]
    assert EventType.from_label(" Connect ") is EventType.CONNECT
    with pytest.raises(ValueError, match="unknown event type 'fork'; valid: exec, open, connect, exit, "
                                         "shell_command, dns_query"):
        EventType.from_label("fork")


def test_field_types_are_the_six():
    assert [t.value for t in FieldType] == ["string", "u64", "i64", "bytes", "list of strings", "bool"]


def test_lookup():
    assert field("argv") is field(10)
    with pytest.raises(KeyError, match="no kestrel-schema field 'nope'"):
        field("nope")
    with pytest.raises(KeyError):
        field(999)


def test_fields_of_exit():
    assert [f.name for f in fields_of(EventType.EXIT)] == [
        "pid", "tid", "ppid", "uid", "gid", "comm", "process_start_ns", "cpu", "exit_code", "signal", "core_dumped"]
    assert [f.name for f in fields_of(3)][-8:] == ["ret", "fault", "family", "daddr", "dport", "fd", "toctou",
                                                   "late_read"]
