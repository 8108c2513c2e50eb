"""Python source for the codec, written from the event spec (kestrel_raw/spec.py) and compiled once at import.

Per kind, from the same spec entries:

- ``values_<kind>(data, n)``: parse and validate one record into the tuple of its values
  (``Kind.record_names``), what the record classes hold;
- ``event_<kind>(values, wall, ctx)``: that tuple to a KestrelEvent (``normalize``);
- ``event_raw_<kind>(data, n, wall, ctx)``: raw record to KestrelEvent in one step (``event_from_raw``);
- ``line_<kind>(data, n, wall, ctx)``: raw record to its JSON line in one step (``encode_records``);
- ``event_line_<kind>(event, S, L)``: a KestrelEvent to its JSON line (``encode_event``);
- ``ctxtext_<scope>(entry)``: the JSON text of a context scope's values (``spec.CONTEXT_SCOPES``), for the
  context provider to keep and hand back (``ctx.text(...)``);
- ``event_<user kind>(inputs..., ts_mono, ts_wall)`` and ``event_line_<user kind>``: the events the collector
  makes itself (``spec.USER_KINDS``).

``ctx`` is the context provider (kestrel_raw/collector/enrich.py; ``kestrel_raw.codec.context.NO_CONTEXT``
when there is none): the generated code calls ``ctx.<scope>(keys...)`` for a scope's entry (events),
``ctx.text(keys...)`` for the context values' JSON text (lines), and ``ctx.update_<name>(values)`` with a
record's values for the kinds that change what it knows (``Kind.update``).  An internal kind's record is
only consumed: its functions return None (events) and "" (lines).

Why generated: the hot paths (~1-3 us a record) cannot afford a loop over field descriptors per record, and
the spec must stay the only place a field is named.  So, as ``dataclasses`` and ``namedtuple`` do, the code
is written from the description once and compiled; each function is straight-line code over local names.
``python -m kestrel_raw.codec.generate`` prints all of it, for review.

The JSON encoder keeps text it has made (bounded memos, keyed by record bytes, so nothing stale is ever
reused): the "who" part of every line (entity_key ... source), keyed by the header bytes it is made from;
and, for kinds marked ``memo`` (opens), a line's whole text besides its time, keyed by every record byte
after the timestamp (the spec puts the timestamp first so that this key is one slice).
"""
from __future__ import annotations

import ast
import struct

from kestrel_raw import spec
from kestrel_raw.spec import FIELDS_BY_ID, FieldType, Kind

WHO_MEMO_MAX = 4096  # entries of the who memo; cleared when full
LINE_MEMO_MAX = 2048  # entries of a kind's line memo; cleared when full
LINE_MEMO_VAR_MAX = 256  # records whose variable parts are longer are not kept (at most ~6 MB then)


def fixed_format(kind: Kind) -> str:
    """The ``struct`` format of ``kind``'s header and fixed part."""
    return "<" + "".join(w.type.struct_code for w in kind.fixed)


def _names(expr: str) -> set[str]:
    return {n.id for n in ast.walk(ast.parse(expr, mode="eval")) if isinstance(n, ast.Name)}


def _fixed_targets(kind: Kind) -> str:
    """The unpack targets of the fixed part: wire names, ``_`` for the kind and padding."""
    return ", ".join("_" if (w.name == "kind" or w.padding) else w.name for w in kind.fixed)


def _parse(kind: Kind, data: str = "data", unpack: bool = True) -> list[str]:
    """Statements that check the record and bind every record value (and the variable parts' lengths)."""
    k, fixed = kind.id, kind.fixed_size
    out = [f"if n < {fixed}:", f"    raise record_too_short({k}, {fixed}, n)"]
    if unpack:
        out.append(f"({_fixed_targets(kind)},) = FIXED_{kind.label}.unpack_from({data})")
    for v in kind.var:
        out += [f"if {v.type.length} > {v.type.max}:",
                f"    raise field_above_limit({k}, {v.type.length!r}, {v.type.length}, {v.type.max})"]
    out += _var_slices(kind, data, check=True)
    for w in kind.fixed:
        if isinstance(w.type, spec.Chars) and w.type.cstr:
            out.append(f"{w.name} = cstr({w.name})")
    return out


def _var_slices(kind: Kind, data: str, check: bool) -> list[str]:
    out, start = [], str(kind.fixed_size)
    for i, v in enumerate(kind.var):
        out.append(f"_e{i} = {start} + {v.type.length}")
        start = f"_e{i}"
    if kind.var and check:
        last = f"_e{len(kind.var) - 1}"
        parts = " and ".join(v.name for v in kind.var)
        out += [f"if {last} > n:", f"    raise field_beyond_record({kind.id}, {parts!r}, {last}, n)"]
    start = str(kind.fixed_size)
    for i, v in enumerate(kind.var):
        piece = f"bytes({data}[{start}:_e{i}])"
        out.append(f"{v.name} = {'cstr(' + piece + ')' if v.type.cstr else piece}")
        start = f"_e{i}"
    return out


def _locals(kind: Kind) -> list[str]:
    return [f"{loc.name} = {loc.expr}" for loc in kind.locals]


def _value_expr(v: spec.Value) -> str:
    if not v.null or v.null == f"{v.expr} is None":
        return v.expr
    return f"(None if {v.null} else {v.expr})"


def _fields_dict(values) -> str:
    return "{" + ", ".join(f"{int(v.id)}: {_value_expr(v)}" for v in values if not v.omit) + "}"


def nullable_ids() -> frozenset[int]:
    """Field ids some kind may leave None (JSON null)."""
    return frozenset(int(v.id) for k in spec.ALL_KINDS.values() for v in k.values if v.null)


def omitted_ids() -> frozenset[int]:
    """Field ids whose JSON key is left out when the value is None (``Value.omit``)."""
    return frozenset(int(v.id) for k in spec.ALL_KINDS.values() for v in k.values if v.omit)


def _scopes_of(values) -> list[spec.Scope]:
    used = {v.context for v in values if v.context}
    return [s for s in spec.CONTEXT_SCOPES if s.name in used]


def _scope_lookups(values) -> list[str]:
    """Statements binding each scope entry the values read (``proc = ctx.proc(pid, start_ns, tid)``)."""
    return [f"{s.name} = ctx.{s.name}({', '.join(s.keys)})" for s in _scopes_of(values)]


def _event_build(kind: Kind) -> list[str]:
    """Statements that make the event (``_ev``) from the bound record values and scope entries."""
    out = [*_scope_lookups(kind.values), f"_f = {_fields_dict(kind.values)}"]
    for v in kind.values:
        if v.omit:
            out += [f"if {v.expr} is not None:", f"    _f[{int(v.id)}] = {v.expr}"]
    out.append(f"_ev = make_event({kind.id}, ts_ns, ts_ns + wall, entity_key_memo(pid, start_ns), proxy(_f))")
    return out


def _values_tuple(kind: Kind) -> str:
    return "(" + ", ".join(kind.record_names) + ",)"


def _update(kind: Kind, after: bool) -> list[str]:
    """The call that hands the record's values to the context provider, if ``kind`` has one here."""
    if kind.update is None or kind.update_after != after:
        return []
    return [f"ctx.update_{kind.update}({_values_tuple(kind)})"]


def _event_body(kind: Kind) -> list[str]:
    """After the record values are bound: update, make the event, update after, return it."""
    if kind.internal:
        return [*_update(kind, False), "return None"]
    return [*_update(kind, False), *_event_build(kind), *_update(kind, True), "return _ev"]


def _json_expr(name: str, ftype: FieldType, value: str, raw: str | None) -> str:
    """A Python expression giving the text ``"name":<value>`` (for the pieces an f-string cannot nest)."""
    if ftype in (FieldType.U64, FieldType.I64):
        return f"'\"{name}\":' + str({value})"
    if ftype is FieldType.BOOL:
        return f"'\"{name}\":' + JSON_BOOL[{value}]"
    if ftype is FieldType.JSON:
        return f"'\"{name}\":' + {raw}" if raw else f"'\"{name}\":' + json_value({value})"
    if ftype is FieldType.STRING:
        return f"json_bytes({name!r}, {raw})" if raw else f"json_str({name!r}, {value})"
    if ftype is FieldType.STRING_LIST:
        return f"json_bytes_list({name!r}, {raw})" if raw else f"json_str_list({name!r}, {value})"
    raise TypeError(f"no JSON form for {ftype}")


def _json_item(name: str, ftype: FieldType, v: spec.Value) -> str:
    """The f-string piece for one key, from the record's values.  An omitted value's piece carries its own
    leading comma: join pieces with ``_join``."""
    if v.omit:
        return f"{{'' if {v.expr} is None else ',' + {_json_expr(name, ftype, v.expr, v.raw)}}}"
    if v.null:
        inner = _json_item(name, ftype, spec.Value(v.id, v.expr, v.raw, v.json, v.doc))
        if inner.startswith(f'"{name}":{{'):  # a number, a bool, JSON: just the value is conditional
            return f'"{name}":{{"null" if {v.null} else {inner[len(name) + 4:-1]}}}'
        return f"{{'\"{name}\":null' if {v.null} else {inner[1:-1]}}}"
    if ftype is FieldType.JSON:
        return f'"{name}":{{{v.raw}}}' if v.raw else f'"{name}":{{json_value({v.expr})}}'
    if ftype in (FieldType.U64, FieldType.I64):
        return f'"{name}":{{{v.expr}}}'
    if ftype is FieldType.BOOL:
        return f'"{name}":{{JSON_BOOL[{v.expr}]}}'
    if ftype is FieldType.STRING:
        return f"{{json_bytes({name!r}, {v.raw})}}" if v.raw else f"{{json_str({name!r}, {v.expr})}}"
    if ftype is FieldType.STRING_LIST:
        return f"{{json_bytes_list({name!r}, {v.raw})}}" if v.raw else f"{{json_str_list({name!r}, {v.expr})}}"
    raise TypeError(f"no JSON form for {ftype}")


def _join(pieces: list[str]) -> str:
    """Pieces joined with commas, but for those that bring their own (omitted values: ``{'' if ...}``)."""
    out = ""
    for p in pieces:
        out += p if (not out or p.startswith("{'' if ")) else "," + p
    return out


def _event_json_item(name: str, ftype: FieldType, fid: int) -> str:
    """The f-string piece for one key, from a KestrelEvent's fields (``f``)."""
    if fid in omitted_ids():
        if ftype is FieldType.STRING:
            text = f"S({name!r}, f[{fid}])"
        elif ftype is FieldType.STRING_LIST:
            text = f"L({name!r}, f[{fid}])"
        else:
            text = _json_expr(name, ftype, f"f[{fid}]", None)
        return f"{{'' if f.get({fid}) is None else ',' + {text}}}"
    if ftype is FieldType.JSON:
        if fid in nullable_ids():
            return f'"{name}":{{"null" if f[{fid}] is None else json_value(f[{fid}])}}'
        return f'"{name}":{{json_value(f[{fid}])}}'
    if fid in nullable_ids():
        if ftype in (FieldType.U64, FieldType.I64, FieldType.BOOL):
            value = f"f[{fid}]" if ftype is not FieldType.BOOL else f"JSON_BOOL[f[{fid}]]"
            return f'"{name}":{{"null" if f[{fid}] is None else {value}}}'
        call = "S" if ftype is FieldType.STRING else "L"
        return f"{{'\"{name}\":null' if f[{fid}] is None else {call}({name!r}, f[{fid}])}}"
    if ftype in (FieldType.U64, FieldType.I64):
        return f'"{name}":{{f[{fid}]}}'
    if ftype is FieldType.BOOL:
        return f'"{name}":{{JSON_BOOL[f[{fid}]]}}'
    if ftype is FieldType.STRING:
        return f"{{S({name!r}, f[{fid}])}}"
    if ftype is FieldType.STRING_LIST:
        return f"{{L({name!r}, f[{fid}])}}"
    raise TypeError(f"no JSON form for {ftype}")


def _fstr(text: str) -> str:
    """``text`` (JSON with {expressions}) as a triple-quoted f-string literal.  Expressions may hold single
    quotes (Python 3.11 allows them inside a triple-quoted f-string); the literal text holds none."""
    if "\\" in text or "\'\'\'" in text:
        raise ValueError(f"cannot write {text!r} as an f-string literal")
    return "f\'\'\'" + text.replace("\n", "\\n") + "\'\'\'"


# --- the who part ---------------------------------------------------------------------------------------

def who_range() -> tuple[int, int]:
    """Header bytes [lo, hi) the common JSON keys are made from (entity_key needs pid and start_ns)."""
    used = {"pid", "start_ns"}
    for v in spec.COMMON_VALUES:
        if v.json:
            used |= _names(v.expr) | (_names(v.raw) if v.raw else set())
    fields = [w for w in spec.HEADER if w.name in used]
    return min(w.offset for w in spec.EXEC.fixed if w.name in used), \
        max(w.offset + w.type.size for w in spec.EXEC.fixed if w.name in used) if fields else (0, 0)


def _who_source() -> str:
    lo, hi = who_range()
    header = [w for w in spec.EXEC.fixed[:len(spec.HEADER)] if w.offset >= lo and w.offset + w.type.size <= hi]
    fmt = "<" + "".join(w.type.struct_code for w in header)
    if struct.calcsize(fmt) != hi - lo:
        raise TypeError(f"who range [{lo}, {hi}) does not split into whole header fields")
    targets = ", ".join("_" if (w.padding or w.name == "kind") else w.name for w in header)
    pieces = ['"entity_key":{entity_key_memo(pid, start_ns)}']
    for v in spec.COMMON_VALUES:
        if v.json:
            f = FIELDS_BY_ID[int(v.id)]
            pieces.append(_json_item(f.name, f.type, v))
    pieces.append(f'"{spec.JSON_SOURCE_KEY}":"{SOURCE_EBPF}"')
    lines = [f"WHO_FORMAT = struct.Struct({fmt!r})", "", "def who_text(key):",
             f"    ({targets},) = WHO_FORMAT.unpack(key)"]
    lines += [f"    {w.name} = cstr({w.name})" for w in header if isinstance(w.type, spec.Chars) and w.type.cstr]
    lines += [f"    text = {_fstr(','.join(pieces))}",
              "    if len(WHO_MEMO) >= WHO_MEMO_MAX:", "        WHO_MEMO.clear()",
              "    WHO_MEMO[key] = text", "    return text", ""]
    return "\n".join(lines)


SOURCE_EBPF = "ebpf"


# --- per kind --------------------------------------------------------------------------------------------

def _indent(lines: list[str], n: int = 4) -> list[str]:
    return [" " * n + line if line else line for line in lines]


def _own_json_pieces(kind: Kind) -> list[str]:
    pieces = []
    for v in kind.own_values:
        if v.json:
            f = FIELDS_BY_ID[int(v.id)]
            pieces.append(_json_item(f.name, f.type, v))
    return pieces


# The context values' text of a line: after the kind's own values, before the closing brace.
CONTEXT_TEXT = f"{{ctx.text({', '.join(spec.CONTEXT_KEYS)})}}"


def _check_memo_key(kind: Kind) -> None:
    """A kind's line memo keys on every byte after the timestamp: nothing in a line but the time may come
    from the timestamp, and the timestamp must be the record's first 8 bytes."""
    ts = spec.HEADER[0]
    if (ts.name, ts.type.size) != ("ts_ns", 8):
        raise TypeError("the header must start with the 8-byte ts_ns: the line memo keys on the bytes after it")
    for v in kind.values:
        if "ts_ns" in _names(v.expr) or (v.raw and "ts_ns" in _names(v.raw)):
            raise TypeError(f"{kind.label}: a value uses ts_ns, which the line memo does not key on")
    for loc in kind.locals:
        if "ts_ns" in _names(loc.expr):
            raise TypeError(f"{kind.label}: local {loc.name} uses ts_ns, which the line memo does not key on")
    if kind.update is not None:
        raise TypeError(f"{kind.label}: a kind whose records update the context cannot keep a line memo "
                        "(a memo hit skips the parse the update needs)")


def _internal_source(kind: Kind) -> list[str]:
    """An internal kind: its records are handed to the context provider, nothing is made of them."""
    label, names = kind.label, kind.record_names
    return [f"def event_{label}(v, wall, ctx):", f"    ({', '.join(names)},) = v", *_indent(_locals(kind)),
            *_indent(_update(kind, False)), "    return None", "",
            f"def event_raw_{label}(data, n, wall, ctx):", *_indent(_parse(kind)), *_indent(_locals(kind)),
            *_indent(_update(kind, False)), "    return None", "",
            f"def line_{label}(data, n, wall, ctx):", *_indent(_parse(kind)), *_indent(_locals(kind)),
            *_indent(_update(kind, False)), "    return ''", ""]


def kind_source(kind: Kind) -> str:
    """The codec functions of ``kind`` (see the module docstring)."""
    label, names = kind.label, kind.record_names
    values_tuple = _values_tuple(kind)
    lo, hi = who_range()
    out = [f"FIXED_{label} = struct.Struct({fixed_format(kind)!r})", ""]
    out += [f"def values_{label}(data, n):", *_indent(_parse(kind)), f"    return {values_tuple}", ""]
    if kind.internal:
        return "\n".join(out + _internal_source(kind))

    head = (f'{{{{"type":"{label}","event_type_id":{kind.id},"ts_mono_ns":{{ts_ns}},'
            f'"ts_wall_ns":{{ts_ns + wall}},')
    rest = _join(["{_who}", *_own_json_pieces(kind)])  # the line after its time, before the context
    tail = CONTEXT_TEXT + "}}\n"

    out += [f"def event_{label}(v, wall, ctx):", f"    ({', '.join(names)},) = v", *_indent(_locals(kind)),
            *_indent(_event_body(kind)), ""]

    out += [f"def event_raw_{label}(data, n, wall, ctx):", *_indent(_parse(kind)), *_indent(_locals(kind)),
            *_indent(_event_body(kind)), ""]

    who = [f"_wk = data[{lo}:{hi}]", "_who = WHO_MEMO.get(_wk) or who_text(_wk)"]
    if not kind.memo:
        out += [f"def line_{label}(data, n, wall, ctx):", *_indent(_parse(kind)), *_indent(_locals(kind)),
                *_indent(_update(kind, False)), *_indent(who), f"    _line = {_fstr(head + rest + tail)}",
                *_indent(_update(kind, True)), "    return _line", ""]
    else:
        _check_memo_key(kind)
        # A hit reads only the time, the variable parts' lengths and the context's keys: a format with the
        # rest as pad bytes.
        read = {"ts_ns", *kind.lengths, *spec.CONTEXT_KEYS}
        hit_fmt = "<" + "".join(w.type.struct_code if w.name in read else f"{w.type.size}x" for w in kind.fixed)
        targets = [w.name for w in kind.fixed if w.name in read]
        ends = _var_slices(kind, "data", check=True)
        n_var = len(kind.var)
        last = f"_e{n_var - 1}" if n_var else str(kind.fixed_size)
        var_total = f"{last} - {kind.fixed_size}"
        checks = [s for v in kind.var for s in (
            f"if {v.type.length} > {v.type.max}:",
            f"    raise field_above_limit({kind.id}, {v.type.length!r}, {v.type.length}, {v.type.max})")]
        miss = [f"({_fixed_targets(kind)},) = FIXED_{label}.unpack_from(data)",
                *(ends[n_var + 2:] if n_var else []),
                *[f"{w.name} = cstr({w.name})" for w in kind.fixed if isinstance(w.type, spec.Chars) and w.type.cstr],
                *_locals(kind), *who,
                f"_t = {_fstr(rest)}",
                f"if {var_total} <= LINE_MEMO_VAR_MAX:",
                f"    if len(LINE_MEMO_{label}) >= LINE_MEMO_MAX:", f"        LINE_MEMO_{label}.clear()",
                f"    LINE_MEMO_{label}[_k] = _t"]
        out += [f"HIT_{label} = struct.Struct({hit_fmt!r})", f"LINE_MEMO_{label} = {{}}", "",
                f"def line_{label}(data, n, wall, ctx):",
                f"    if n < {kind.fixed_size}:", f"        raise record_too_short({kind.id}, {kind.fixed_size}, n)",
                f"    ({', '.join(targets)},) = HIT_{label}.unpack_from(data)",
                *_indent(checks), *_indent(ends[:n_var + 2] if n_var else []),
                f"    _k = data[{spec.HEADER[0].type.size}:{last}]",
                f"    _t = LINE_MEMO_{label}.get(_k)",
                "    if _t is None:", *_indent(miss, 8),
                f"    return {_fstr(head + '{_t}' + tail)}", ""]

    # The record class's bool properties (``OpenRecord.truncated``): the same expressions, over attributes.
    local_names = {loc.name for loc in kind.locals}
    for v in kind.values:
        f = FIELDS_BY_ID[int(v.id)]
        used = _names(v.expr)
        if f.type is FieldType.BOOL and v.context is None and not used & local_names:
            out += [f"def prop_{label}_{f.name}(self):",
                    *[f"    {n} = self.{n}" for n in sorted(used) if n in names],
                    f"    return {v.expr}", ""]

    items = []
    for v in kind.values:
        if v.json:
            f = FIELDS_BY_ID[int(v.id)]
            items.append(_event_json_item(f.name, f.type, int(v.id)))
    n_common = sum(1 for v in spec.COMMON_VALUES if v.json)
    pieces = ['"entity_key":{ev.entity_key}', *items[:n_common], f'{{S("{spec.JSON_SOURCE_KEY}", ev.source)}}',
              *items[n_common:]]
    ev_head = (f'{{{{"type":"{label}","event_type_id":{kind.id},"ts_mono_ns":{{ev.ts_mono}},'
               f'"ts_wall_ns":{{ev.ts_wall}},')
    out += [f"def event_line_{label}(ev, S, L):", "    f = ev.fields",
            f"    return {_fstr(ev_head + _join(pieces) + '}}' + chr(10))}", ""]
    return "\n".join(out)


def scope_source(scope: spec.Scope) -> str:
    """``ctxtext_<scope>(entry)``: the JSON text of the context values read from ``scope``'s entry, each
    after a comma (the line's text before them ends with a value)."""
    pieces = []
    for v in spec.CONTEXT_VALUES:
        if v.context == scope.name and v.json:
            f = FIELDS_BY_ID[int(v.id)]
            piece = _json_item(f.name, f.type, v)
            pieces.append(piece if piece.startswith("{'' if ") else "," + piece)
    return "\n".join([f"def ctxtext_{scope.name}({scope.name}):", f"    return {_fstr(''.join(pieces))}", ""])


def user_kind_source(kind: spec.UserKind) -> str:
    """``event_<label>(inputs..., ts_mono, ts_wall)`` and ``event_line_<label>(ev, S, L)`` of a kind the
    collector makes itself."""
    label = kind.label
    out = [f"def event_{label}({', '.join(kind.inputs)}, ts_mono, ts_wall):",
           f"    return make_event({kind.id}, ts_mono, ts_wall, 0, proxy({_fields_dict(kind.values)}), "
           f"{spec.SOURCE_USER!r})", ""]
    items = []
    for v in kind.values:
        if v.json:
            f = FIELDS_BY_ID[int(v.id)]
            items.append(_event_json_item(f.name, f.type, int(v.id)))
    ev_head = (f'{{{{"type":"{label}","event_type_id":{kind.id},"ts_mono_ns":{{ev.ts_mono}},'
               f'"ts_wall_ns":{{ev.ts_wall}},')
    pieces = [f'{{S("{spec.JSON_SOURCE_KEY}", ev.source)}}', *items]
    out += [f"def event_line_{label}(ev, S, L):", "    f = ev.fields",
            f"    return {_fstr(ev_head + _join(pieces) + '}}' + chr(10))}", ""]
    return "\n".join(out)


def codec_source() -> str:
    """The whole generated codec: the who part, then every kind's functions, the context scopes' texts, and
    the user kinds' functions."""
    parts = ["# Generated by kestrel_raw/codec/generate.py from kestrel_raw/spec.py: do not edit.\n",
             _who_source()]
    parts += [kind_source(k) for k in spec.KINDS.values()]
    parts += [scope_source(s) for s in spec.CONTEXT_SCOPES]
    parts += [user_kind_source(k) for k in spec.USER_KINDS.values()]
    return "\n".join(parts)


def compile_codec(namespace: dict) -> dict:
    """Compile the generated codec in ``namespace`` (which must provide make_event, proxy, entity_key_memo
    and the names of kestrel_raw.codec.decode) and return it."""
    ns = dict(namespace)
    ns.setdefault("struct", struct)
    ns.setdefault("WHO_MEMO", {})
    # The memos' bounds are names, not literals, so that a test can shrink them (CODEC["WHO_MEMO_MAX"]).
    ns.update(WHO_MEMO_MAX=WHO_MEMO_MAX, LINE_MEMO_MAX=LINE_MEMO_MAX, LINE_MEMO_VAR_MAX=LINE_MEMO_VAR_MAX)
    code = compile(codec_source(), "<kestrel_raw codec, generated from kestrel_raw/spec.py>", "exec")
    exec(code, ns)
    return ns


if __name__ == "__main__":
    print(codec_source())
