"""The event spec (kestrel_raw/spec.py): its invariants, what is derived from it, and the docs rendered
from it (README.md and docs/architecture.md carry its tables between markers; a difference fails here)."""
from __future__ import annotations

import re
from pathlib import Path

import construct as cs
import pytest

from kestrel_raw import spec
from kestrel_raw.codec import generate, schema

ROOT = Path(__file__).resolve().parent.parent

# --- the layout --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", spec.KINDS.values(), ids=lambda k: k.label)
def test_construct_struct_sits_on_the_spec_offsets(kind):
    """schema.py derives construct Structs on its own; walk them and compare every offset with the spec's."""
    pos, seen = 0, {}
    for sub in schema.RECORD_STRUCTS[kind.id].subcons:
        name = getattr(sub, "name", None)
        if name is None:  # a Check
            continue
        seen[name] = pos
        try:
            pos += sub.sizeof()
        except cs.SizeofError:
            break  # the first variable part: its start is known, what follows is not
    expected = {w.name: w.offset for w in kind.wire if w.offset >= 0}
    assert seen == expected


def test_every_record_starts_with_the_same_header():
    for kind in spec.KINDS.values():
        assert kind.wire[:len(spec.HEADER)] == spec.EXEC.wire[:len(spec.HEADER)]
        assert kind.fixed_size % 8 == 0


def test_the_timestamp_comes_first_for_the_line_memo():
    assert (spec.HEADER[0].name, spec.HEADER[0].type.size) == ("ts_ns", 8)
    assert spec.OPEN.memo


def test_a_spec_mistake_is_refused_when_the_kind_is_made():
    with pytest.raises(ValueError, match="length field nope is not a wire field"):
        spec.Kind(spec.EventType.OPEN, [spec.Wire("x", spec.Var("nope", 8), spec.Const("?"))], [])
    with pytest.raises(ValueError, match="not aligned"):
        spec.Kind(spec.EventType.OPEN, [spec.Wire("a", spec.U32, spec.Const("?")),
                                         spec.Wire("b", spec.U64, spec.Const("?"))], [])
    with pytest.raises(ValueError, match="a fixed field after a variable part"):
        spec.Kind(spec.EventType.OPEN, [spec.Wire("n", spec.U32, spec.Const("?")),
                                         spec.Wire("_p", spec.U32, spec.Const("?")),
                                         spec.Wire("v", spec.Var("n", 8), spec.Const("?")),
                                         spec.Wire("z", spec.U32, spec.Const("?"))], [])
    with pytest.raises(ValueError, match="a Kestrel field is given twice"):
        spec.Kind(spec.EventType.OPEN, [], [spec.raw_int("pid", spec.FieldId.PID)])


def test_wire_field_lookup_names_the_kind():
    assert spec.OPEN.ret.offset == 96 and spec.OPEN.path.offset == 144 and spec.EXEC.args.offset == -1
    with pytest.raises(AttributeError, match="open has no wire field 'nope'"):
        spec.OPEN.nope


def test_json_keys_follow_the_spec():
    assert spec.json_keys(spec.OPEN) == [
        "type", "event_type_id", "ts_mono_ns", "ts_wall_ns", "entity_key", "pid", "tid", "cpu", "ppid", "uid",
        "gid", "comm", "euid", "egid", "auid", "sessionid", "tty", "cgroup_id", "parent_entity_key", "source",
        "path", "flags", "mode", "ret", "truncated", "fault", "syscall", "resolve", "resolved_path", "toctou",
        "late_read", "cgroup", "container_id", "container_name", "container_image", "exe", "exe_deleted",
        "exe_memfd", "cwd", "pidns", "mntns", "netns", "hostname"]
    assert spec.json_keys(spec.FORK, optional=True)[-3:] == ["netns", "hostname", "ancestors"]
    assert spec.json_keys(spec.STATUS) == ["type", "event_type_id", "ts_mono_ns", "ts_wall_ns", "source", "hostname",
                                           "machine_id", "boot_id", "kernel", "arch", "cloud", "programs",
                                           "reason", "filters", "counters"]


def test_the_line_memo_refuses_a_value_made_from_the_time():
    bad = spec.Kind(spec.EventType.OPEN, [], [spec.Value(spec.FieldId.RET, "ts_ns % 7")], memo=True)
    with pytest.raises(TypeError, match="a value uses ts_ns"):
        generate.kind_source(bad)


def test_generated_source_compiles_and_names_every_kind():
    src = generate.codec_source()
    compile(src, "<test>", "exec")
    for k in spec.KINDS.values():
        for fn in ("values", "event", "event_raw", "line", *(() if k.internal else ("event_line",))):
            assert f"def {fn}_{k.label}(" in src
    assert "def event_line_proc(" not in src  # internal: never an event
    for s in spec.CONTEXT_SCOPES:
        assert f"def ctxtext_{s.name}({s.name}):" in src
    assert ("def event_status(hostname, machine_id, boot_id, kernel, arch, cloud, programs, reason, filters, "
            "counters, ts_mono, ts_wall):") in src
    assert "def event_loss(counts, ts_mono, ts_wall):" in src


def test_context_values_read_what_the_entries_have():
    from kestrel_raw.codec.context import ENTRY_CLASSES

    assert {s.name for s in spec.CONTEXT_SCOPES} == set(ENTRY_CLASSES)
    for v in spec.CONTEXT_VALUES:
        for expr in (v.expr, v.raw or v.expr):
            scope, attr = expr.split(".")
            assert scope == v.context and attr in ENTRY_CLASSES[scope].__slots__


def test_a_kind_that_updates_the_context_keeps_no_line_memo():
    bad = spec.Kind(spec.EventType.OPEN, [], [], memo=True, update="exec")
    with pytest.raises(TypeError, match="cannot keep a line memo"):
        generate.kind_source(bad)
    with pytest.raises(ValueError, match="an internal record kind has no Kestrel values"):
        spec.Kind(spec.RecordKind.PROC, [], [spec.raw_int("pid", spec.FieldId.PID)])


# --- the docs ----------------------------------------------------------------------------------------

def section(path: Path, name: str) -> str:
    text = path.read_text()
    m = re.search(rf"<!-- spec:{name} -->\n(.*?)\n<!-- /spec:{name} -->", text, re.S)
    assert m, f"{path.name} has no <!-- spec:{name} --> section"
    return m.group(1)


@pytest.mark.parametrize("path, name, render", [
    ("README.md", "json", spec.render_json_table),
    ("README.md", "fields", spec.render_field_table),
    ("docs/architecture.md", "records", spec.render_wire_tables),
])
def test_docs_tables_are_the_spec(path, name, render):
    assert section(ROOT / path, name) == render(), (
        f"{path}'s {name} table differs from the spec; regenerate it: "
        f"python -c 'from kestrel_raw import spec; print(spec.{render.__name__}())'")
