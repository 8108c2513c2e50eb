"""JSON lines: one Kestrel Event per line.

Each line is one JSON object, compact (no spaces), keys in this order:

- every event: ``type`` (``"exec"``, ``"open"``, ``"connect"`` or ``"exit"``), ``event_type_id``,
  ``ts_mono_ns``, ``ts_wall_ns``, ``entity_key``, ``pid``, ``tid``, ``ppid``, ``uid``, ``gid``, ``comm``,
  ``source``;
- exec: ``filename``, ``argv`` (a list, argv[0] first), ``truncated``, ``fault``;
- open: ``path``, ``flags``, ``mode``, ``ret``, ``truncated``, ``fault``;
- connect: ``family``, ``daddr``, ``dport``, ``ret``, ``fault``;
- exit: ``exit_code``, ``signal``.

``truncated`` (a bool) says a value was longer than what was kept: exec, the argument area was longer
than 4096 bytes and ``argv`` holds its first 4096 bytes (the last element may be cut), or the file name was
longer than 4095 bytes (execveat with a directory fd names it ``/dev/fd/N/<path>``) and ``filename`` holds
its first 4095; open, the path was
longer than 4096 bytes and ``path`` holds its first 4096 (openat then failed with ENAMETOOLONG: the kernel
takes at most 4095 bytes).  ``fault`` (a bool) says user memory could not be read: the syscall got a bad
pointer (a NULL path or address), and the string or address it names is empty.

Non-UTF-8 strings.  Paths, arguments and command names are bytes in Linux, not text.  When a string is
not valid UTF-8, its key carries the text with each invalid byte replaced by U+FFFD, and a sibling key
``<key>_b64`` (right after it) carries the exact bytes in base64.  For ``argv`` the sibling ``argv_b64`` is
the whole list, each element base64-encoded, present only when some element is not valid UTF-8.  A
consumer that needs exact bytes reads ``<key>_b64`` when it is present and ``<key>`` otherwise.  The output
is always valid UTF-8 JSON (never a lone surrogate), so any JSON parser accepts every line.

``encode_event`` builds the line by hand (integers formatted directly, strings escaped with the json
module's C encoder): ~1.6 us against ~4 us for ``json.dumps`` of a dict, and the line is byte for byte
``json.dumps(obj, separators=(",", ":"), ensure_ascii=False)`` of the same keys.

The file sink that writes these lines is kestrel_raw.sinks.jsonl.JsonlSink.
"""
from __future__ import annotations

import base64
import struct
from json.encoder import encode_basestring as _jstr  # the C encoder (c_encode_basestring) when available
from typing import Callable

from kestrel_raw.errors import RecordError
from kestrel_raw.codec.events import KestrelEvent, _entity_key_memo, split_arg_area
from kestrel_raw.codec.records import (
    FIELD_PARSERS, FIXED_FORMATS, KIND_CONNECT, KIND_EXEC, KIND_EXIT, KIND_OPEN, PATH_MAX, field_above_limit,
    field_beyond_record, record_kind, record_too_short,
)
from kestrel_raw.spec import FieldId
from kestrel_raw.codec.sockaddr import decode_sockaddr

_PID = int(FieldId.PID)
_TID = int(FieldId.TID)
_PPID = int(FieldId.PPID)
_UID = int(FieldId.UID)
_GID = int(FieldId.GID)
_COMM = int(FieldId.COMM)
_FILENAME = int(FieldId.FILENAME)
_ARGV = int(FieldId.ARGV)
_TRUNCATED = int(FieldId.TRUNCATED)
_PATH = int(FieldId.PATH)
_FLAGS = int(FieldId.FLAGS)
_MODE = int(FieldId.MODE)
_RET = int(FieldId.RET)
_FAMILY = int(FieldId.FAMILY)
_DADDR = int(FieldId.DADDR)
_DPORT = int(FieldId.DPORT)
_EXIT_CODE = int(FieldId.EXIT_CODE)
_SIGNAL = int(FieldId.SIGNAL)
_FAULT = int(FieldId.FAULT)

_BOOL = {False: "false", True: "true"}
_TYPE_LABELS = {1: "exec", 2: "open", 3: "connect", 4: "exit"}
_NAMES = {int(f): f.name.lower() for f in FieldId}


def _exact_bytes(s: str) -> bytes:
    """The bytes ``s`` stands for: surrogateescape undoes normalize()'s decoding."""
    try:
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that did not come from surrogateescape
        return s.encode("utf-8", "surrogatepass")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _is_utf8(s: str) -> bool:
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _fast_str(key: str, s: str) -> str:
    return f'"{key}":{_jstr(s)}'


def _safe_str(key: str, s: str) -> str:
    if _is_utf8(s):
        return f'"{key}":{_jstr(s)}'
    raw = _exact_bytes(s)
    return f'"{key}":{_jstr(raw.decode("utf-8", "replace"))},"{key}_b64":"{_b64(raw)}"'


def _fast_argv(argv) -> str:
    return '"argv":[' + ",".join([_jstr(a) for a in argv]) + "]"


def _safe_argv(argv) -> str:
    if all(_is_utf8(a) for a in argv):
        return _fast_argv(argv)
    raws = [_exact_bytes(a) for a in argv]
    text = ",".join([_jstr(r.decode("utf-8", "replace")) for r in raws])
    b64 = ",".join([f'"{_b64(r)}"' for r in raws])
    return f'"argv":[{text}],"argv_b64":[{b64}]'


def _line(ev: KestrelEvent, S: Callable[[str, str], str], A: Callable) -> str:
    f = ev.fields
    t = ev.event_type_id
    head = (
        f'{{"type":"{_TYPE_LABELS[t]}","event_type_id":{t},"ts_mono_ns":{ev.ts_mono},'
        f'"ts_wall_ns":{ev.ts_wall},"entity_key":{ev.entity_key},"pid":{f[_PID]},"tid":{f[_TID]},'
        f'"ppid":{f[_PPID]},"uid":{f[_UID]},"gid":{f[_GID]},{S("comm", f[_COMM])},{S("source", ev.source)},'
    )
    if t == 2:
        tail = (f'{S("path", f[_PATH])},"flags":{f[_FLAGS]},"mode":{f[_MODE]},"ret":{f[_RET]},'
                f'"truncated":{_BOOL[f[_TRUNCATED]]},"fault":{_BOOL[f[_FAULT]]}}}\n')
    elif t == 1:
        tail = (f'{S("filename", f[_FILENAME])},{A(f[_ARGV])},'
                f'"truncated":{_BOOL[f[_TRUNCATED]]},"fault":{_BOOL[f[_FAULT]]}}}\n')
    elif t == 3:
        tail = (f'{S("family", f[_FAMILY])},{S("daddr", f[_DADDR])},"dport":{f[_DPORT]},'
                f'"ret":{f[_RET]},"fault":{_BOOL[f[_FAULT]]}}}\n')
    else:
        tail = f'"exit_code":{f[_EXIT_CODE]},"signal":{f[_SIGNAL]}}}\n'
    return head + tail


def encode_event(event: KestrelEvent) -> bytes:
    """One JSON line (ending in ``\\n``) for ``event``, as the module docstring describes."""
    if event.event_type_id not in _TYPE_LABELS:
        raise ValueError(f"cannot encode event type {event.event_type_id}: known are 1 exec, 2 open, "
                         "3 connect, 4 exit")
    try:
        line = _line(event, _fast_str, _fast_argv)
        try:
            return line.encode("utf-8")
        except UnicodeEncodeError:  # a surrogateescape'd string: rebuild with replacement text + base64
            return _line(event, _safe_str, _safe_argv).encode("utf-8")
    except KeyError as e:
        key = e.args[0]
        name = _NAMES.get(key, key)
        raise ValueError(f"{_TYPE_LABELS[event.event_type_id]} event lacks field {name!r} "
                         f"(id {key}); build events with events.normalize") from None


# --- records straight to lines ------------------------------------------------------------------------
#
# encode_record(raw, wall) is encode_event(normalize(parse_record(raw), wall)) without the two objects in
# between: the same validation (records.FIELD_PARSERS), the same entity key, the same text byte for byte
# (tests/test_jsonl_records.py checks it on hypothesis records of every kind, hostile strings included).
# It is the collector's JSON hot path: ~2.5 us a record instead of ~6.


def _bstr(key: str, raw: bytes) -> str:
    try:
        return f'"{key}":{_jstr(raw.decode("utf-8"))}'
    except UnicodeDecodeError:
        return f'"{key}":{_jstr(raw.decode("utf-8", "replace"))},"{key}_b64":"{_b64(raw)}"'


def _bargv(parts: list[bytes]) -> str:
    try:
        return '"argv":[' + ",".join([_jstr(p.decode("utf-8")) for p in parts]) + "]"
    except UnicodeDecodeError:
        text = ",".join([_jstr(p.decode("utf-8", "replace")) for p in parts])
        b64 = ",".join([f'"{_b64(p)}"' for p in parts])
        return f'"argv":[{text}],"argv_b64":[{b64}]'


def _head(t: int, label: str, wall: int, hflags, cpu, ts, start, pid, tid, ppid, uid, gid, comm) -> str:
    return (
        f'{{"type":"{label}","event_type_id":{t},"ts_mono_ns":{ts},"ts_wall_ns":{ts + wall},'
        f'"entity_key":{_entity_key_memo(pid, start)},"pid":{pid},"tid":{tid},"ppid":{ppid},"uid":{uid},'
        f'"gid":{gid},{_bstr("comm", comm)},"source":"ebpf",'
    )


def _exec_line(v: tuple, wall: int) -> str:
    hflags, args, args_total = v[0], v[11], v[12]
    truncated = bool(hflags & 1) or args_total > len(args)
    return (_head(1, "exec", wall, *v[:10]) + _bstr("filename", v[10]) + "," + _bargv(split_arg_area(args)) +
            f',"truncated":{_BOOL[truncated]},"fault":{_BOOL[bool(hflags & 2)]}}}\n')


def _connect_line(v: tuple, wall: int) -> str:
    sa = decode_sockaddr(v[13], v[12])
    return (_head(3, "connect", wall, *v[:10]) + _safe_str("family", sa.family) + "," +
            _safe_str("daddr", sa.address) +
            f',"dport":{sa.port},"ret":{v[10]},"fault":{_BOOL[bool(v[0] & 2)]}}}\n')


def _exit_line(v: tuple, wall: int) -> str:
    code = v[10]
    return _head(4, "exit", wall, *v[:10]) + f'"exit_code":{(code >> 8) & 0xFF},"signal":{code & 0x7F}}}\n'


# Opens, most records by far, have a line of their own below (_open_record_line), without the field tuple.
_LINES = {KIND_EXEC: _exec_line, KIND_CONNECT: _connect_line, KIND_EXIT: _exit_line}


# Who did it: header bytes 16..63 (start time, pid, tid, ppid, uid, gid, reserved, comm) are the same for
# every event of one thread, and their text is a third of a line: it is formatted once per thread and
# kept, keyed by those 48 bytes (a different byte anywhere is a different key, so nothing stale is ever
# reused).  Bounded like the entity-key memo: cleared when full.
_WHO_AT, _WHO_END = 16, 64
_WHO = struct.Struct("<QLLLLL4x16s")
_WHO_MEMO: dict[bytes, str] = {}
_WHO_MEMO_MAX = 4096
assert _WHO.size == _WHO_END - _WHO_AT


def _who(key: bytes) -> str:
    start, pid, tid, ppid, uid, gid, comm = _WHO.unpack(key)
    end = comm.find(b"\0")
    text = (f'"entity_key":{_entity_key_memo(pid, start)},"pid":{pid},"tid":{tid},"ppid":{ppid},"uid":{uid},'
            f'"gid":{gid},{_bstr("comm", comm if end < 0 else comm[:end])},"source":"ebpf",')
    if len(_WHO_MEMO) >= _WHO_MEMO_MAX:
        _WHO_MEMO.clear()
    _WHO_MEMO[key] = text
    return text


# The open record's fields the line needs, beyond the header's: flags (header), ts, ret, flags, mode,
# path_len (dfd and syscall are not in the line).  Offsets from the pinned FIXED_FORMATS[KIND_OPEN].
_OPEN_LINE = struct.Struct("<2xH4xQ48xl4xQLL")
_OPEN_SIZE = FIXED_FORMATS[KIND_OPEN].size
_OPEN_KIND = struct.pack("<H", KIND_OPEN)  # a record's first field, its kind
assert _OPEN_LINE.size <= _OPEN_SIZE and FIXED_FORMATS[KIND_OPEN].format == "<HHLQQLLLLLL16sllQLLLL"


# What an open's line says besides its time: who (header bytes 16..63), then ret, flags, mode and path.
# A thread that opens the same path the same way again (a library, a config file, /proc/self/stat in a
# polling loop) gets the same text: it is made once and kept, keyed by every record byte from 16 to the
# path's end (the open's own fields and the path included, so a different byte is a different key).  The
# time is formatted per record; the header flags pick one of four tails.  Bounded: records with paths over
# _WHAT_PATH_MAX bytes are not kept, and the memo is cleared when it holds _WHAT_MEMO_MAX entries (at most
# about 6 MB then, were every path the longest and all escapes).
_WHAT_MEMO: dict[bytes, str] = {}
_WHAT_MEMO_MAX = 2048
_WHAT_PATH_MAX = 256
_OPEN_TAILS = tuple(f'"truncated":{_BOOL[bool(h & 1)]},"fault":{_BOOL[bool(h & 2)]}}}\n' for h in range(4))


def _open_record_line(raw: bytes, n: int, wall: int) -> str:
    # records._fields_open's checks, in its order, with its errors; then one f-string.
    if n < _OPEN_SIZE:
        raise record_too_short(KIND_OPEN, _OPEN_SIZE, n)
    hflags, ts, ret, flags, mode, path_len = _OPEN_LINE.unpack_from(raw)
    if path_len > PATH_MAX:
        raise field_above_limit(KIND_OPEN, "path_len", path_len, PATH_MAX)
    end = _OPEN_SIZE + path_len
    if end > n:
        raise field_beyond_record(KIND_OPEN, "path", end, n)
    key = raw[_WHO_AT:end]
    what = _WHAT_MEMO.get(key)
    if what is None:  # in line, not a function of its own: a miss costs ~0.2 us more than no memo at all
        who_key = raw[_WHO_AT:_WHO_END]
        who = _WHO_MEMO.get(who_key) or _who(who_key)
        path = raw[_OPEN_SIZE:end]
        nul = path.find(b"\0")
        if nul >= 0:
            path = path[:nul]
        try:
            path_text = '"path":' + _jstr(path.decode("utf-8"))
        except UnicodeDecodeError:
            path_text = _bstr("path", path)
        what = f'{who}{path_text},"flags":{flags},"mode":{mode},"ret":{ret},'
        if path_len <= _WHAT_PATH_MAX:
            if len(_WHAT_MEMO) >= _WHAT_MEMO_MAX:
                _WHAT_MEMO.clear()
            _WHAT_MEMO[key] = what
    return (f'{{"type":"open","event_type_id":2,"ts_mono_ns":{ts},"ts_wall_ns":{ts + wall},{what}'
            f'{_OPEN_TAILS[hflags & 3]}')


def _record_line(raw: bytes | memoryview, wall_offset_ns: int) -> str:
    kind = record_kind(raw)
    if kind == KIND_OPEN:
        if type(raw) is not bytes:
            raw = bytes(raw)  # the per-thread memo keys on a slice of it
        return _open_record_line(raw, len(raw), wall_offset_ns)
    return _LINES[kind](FIELD_PARSERS[kind](raw, len(raw)), wall_offset_ns)


def encode_record(raw: bytes | memoryview, wall_offset_ns: int) -> bytes:
    """The JSON line of the raw ring-buffer record ``raw``; raises ``RecordError`` when it is malformed."""
    return _record_line(raw, wall_offset_ns).encode("utf-8")


def encode_records(batch, wall_offset_ns: int) -> tuple[bytes, list[int], int]:
    """``encode_record`` over a batch: (the lines joined, the kind of each record encoded, how many were
    malformed and skipped).  One UTF-8 encode for the whole chunk instead of one per line."""
    lines: list[str] = []
    kinds: list[int] = []
    add_line, add_kind = lines.append, kinds.append
    open_kind = _OPEN_KIND
    bad = 0
    for raw in batch:
        try:
            if type(raw) is bytes and raw.startswith(open_kind):  # most records: _record_line's open case
                add_line(_open_record_line(raw, len(raw), wall_offset_ns))
            else:
                add_line(_record_line(raw, wall_offset_ns))
        except RecordError:
            bad += 1
            continue
        add_kind(raw[0])  # the kind's low byte; record_kind checked it is 1..4
    return "".join(lines).encode("utf-8"), kinds, bad
