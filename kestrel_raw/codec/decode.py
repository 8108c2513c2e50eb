"""The decoders the event spec's value expressions call by name, the JSON text helpers, and the errors of a
malformed record.  Pure.

kestrel_raw/codec/generate.py compiles the spec's expressions in a namespace made of this module's public
names (``NAMESPACE``): a decoder used by a spec entry is defined here, once.
"""
from __future__ import annotations

import base64
import json
from json.encoder import encode_basestring as _jstr  # the C encoder (c_encode_basestring) when available

from kestrel_raw.codec.sockaddr import connect_destination, decode_sockaddr, dns_addresses, family_name
from kestrel_raw.errors import RecordError
from kestrel_raw.spec import KINDS, OPEN_SYSCALL_OPENAT2, OPEN_SYSCALLS

# --- decoders -----------------------------------------------------------------------------------------


def cstr(raw: bytes) -> bytes:
    """``raw`` up to its first NUL (all of it when there is none)."""
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]


def split_arg_area(area: bytes) -> list[bytes]:
    """The arguments in the kernel's argument area ``"a\\0b\\0c\\0"`` (the last NUL is missing when cut short)."""
    if not area:
        return []
    parts = area.split(b"\0")
    if not parts[-1]:
        parts.pop()
    return parts


def split_args(area: bytes) -> tuple[str, ...]:
    """argv from the kernel's argument area, each argument decoded losslessly (surrogateescape)."""
    return tuple(p.decode("utf-8", "surrogateescape") for p in split_arg_area(area))


# include/uapi/asm-generic/fcntl.h (the same on x86_64 and arm64) and include/linux/stat.h
O_CREAT = 0o100
__O_TMPFILE = 0o20000000
S_IALLUGO = 0o7777


def open_flags(syscall: int, flags: int) -> int:
    """The open flags as the kernel reads them: openat's ``int flags`` is the register's low half (the upper
    bits are ignored), openat2's ``open_how.flags`` is a u64 (unknown bits make it fail with EINVAL)."""
    return flags if syscall == OPEN_SYSCALL_OPENAT2 else flags & 0xFFFFFFFF


def open_mode(flags: int, mode: int) -> int:
    """The mode the kernel uses (fs/open.c build_open_how): ``mode & S_IALLUGO`` for a call that can create
    (O_CREAT or O_TMPFILE), else 0."""
    return mode & S_IALLUGO if flags & (O_CREAT | __O_TMPFILE) else 0


def syscall_name(number: int) -> str:
    """The open record's ``syscall`` value as a name (``"openat"``); ``"syscall_<n>"`` when unknown."""
    return OPEN_SYSCALLS.get(number) or f"syscall_{number}"


# Terminals by device major (Documentation/admin-guide/devices.txt): the name the kernel gives the device,
# as /dev shows it.  ``(prefix, minor offset)`` per minor range; the pty slaves' majors number on.
_TTY_MAJORS = {
    4: ((0, 64, "tty", 0), (64, 256, "ttyS", 64)),
    5: ((0, 1, "tty", None), (1, 2, "console", None), (2, 3, "ptmx", None)),
    3: ((0, 256, "ttyp", 0),),
    188: ((0, 256, "ttyUSB", 0),),
    166: ((0, 256, "ttyACM", 0),),
    204: ((64, 256, "ttyAMA", 64),),
    229: ((0, 256, "hvc", 0),),
}
UNIX98_PTY_SLAVE_MAJOR = 136  # 136-143: /dev/pts/N, N = (major - 136) * 256 + minor
UNIX98_PTY_MAJOR_COUNT = 8
MINORBITS = 20  # include/linux/kdev_t.h: the kernel's dev_t is major << 20 | minor


def tty_name(dev: int) -> str:
    """The controlling terminal's name from its kernel dev_t (``MKDEV(major, minor)``): ``"pts/3"``,
    ``"tty1"``, ``"ttyS0"``, ``"console"``; ``"char:MAJ:MIN"`` for a terminal of another driver."""
    major, minor = dev >> MINORBITS, dev & ((1 << MINORBITS) - 1)
    if UNIX98_PTY_SLAVE_MAJOR <= major < UNIX98_PTY_SLAVE_MAJOR + UNIX98_PTY_MAJOR_COUNT:
        return f"pts/{(major - UNIX98_PTY_SLAVE_MAJOR) * 256 + minor}"
    for lo, hi, prefix, base in _TTY_MAJORS.get(major, ()):
        if lo <= minor < hi:
            return prefix if base is None else f"{prefix}{minor - base}"
    return f"char:{major}:{minor}"


# --- JSON text ----------------------------------------------------------------------------------------
#
# Paths, arguments and command names are bytes in Linux, not text.  A string that is not valid UTF-8 is
# written with each invalid byte replaced by U+FFFD and, right after it, a ``<key>_b64`` twin holding the
# exact bytes in base64; a list (argv) has a twin list when any element is not UTF-8.  Every line is valid
# UTF-8 JSON.

JSON_BOOL = {False: "false", True: "true"}


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def exact_bytes(s: str) -> bytes:
    """The bytes ``s`` stands for: surrogateescape undoes the decoding of a Kestrel string value."""
    try:
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that did not come from surrogateescape
        return s.encode("utf-8", "surrogatepass")


def is_utf8(s: str) -> bool:
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_bytes(key: str, raw: bytes) -> str:
    """``"key":"text"`` for bytes, with the ``_b64`` twin when they are not UTF-8."""
    try:
        return f'"{key}":{_jstr(raw.decode("utf-8"))}'
    except UnicodeDecodeError:
        return f'"{key}":{_jstr(raw.decode("utf-8", "replace"))},"{key}_b64":"{b64(raw)}"'


def json_bytes_list(key: str, parts: list[bytes]) -> str:
    """``"key":["a","b"]`` for a list of bytes, with the ``_b64`` twin list when one is not UTF-8."""
    try:
        return f'"{key}":[' + ",".join([_jstr(p.decode("utf-8")) for p in parts]) + "]"
    except UnicodeDecodeError:
        text = ",".join([_jstr(p.decode("utf-8", "replace")) for p in parts])
        twins = ",".join([f'"{b64(p)}"' for p in parts])
        return f'"{key}":[{text}],"{key}_b64":[{twins}]'


def json_fast_str(key: str, s: str) -> str:
    """``"key":"s"`` for a string known to hold no surrogate (the common case; see encode_event)."""
    return f'"{key}":{_jstr(s)}'


def json_str(key: str, s: str) -> str:
    """``"key":"s"`` for a Kestrel string value (surrogateescape'd bytes get the ``_b64`` twin)."""
    if is_utf8(s):
        return f'"{key}":{_jstr(s)}'
    return json_bytes(key, exact_bytes(s))


def json_fast_str_list(key: str, items) -> str:
    return f'"{key}":[' + ",".join([_jstr(a) for a in items]) + "]"


def json_str_list(key: str, items) -> str:
    if all(is_utf8(a) for a in items):
        return json_fast_str_list(key, items)
    return json_bytes_list(key, [exact_bytes(a) for a in items])


def _utf8_text(value):
    """``value`` with every string's surrogateescape'd bytes replaced by U+FFFD (valid UTF-8 text)."""
    if isinstance(value, str):
        return value if is_utf8(value) else exact_bytes(value).decode("utf-8", "replace")
    if isinstance(value, dict):
        return {k: _utf8_text(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_utf8_text(v) for v in value]
    return value


def json_value(value) -> str:
    """A JSON value (a dict, a list: ``ancestors``, ``cloud``) as compact JSON text.  Strings that are not
    UTF-8 (surrogateescape'd) have their invalid bytes replaced by U+FFFD: no ``_b64`` twins inside."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if is_utf8(text):
        return text
    return json.dumps(_utf8_text(value), ensure_ascii=False, separators=(",", ":"))


# --- a malformed record ---------------------------------------------------------------------------------

def _label(kind: int) -> str:
    k = KINDS.get(kind)
    return k.label if k is not None else f"kind {kind}"


def record_too_short(kind: int, need: int, have: int) -> RecordError:
    return RecordError(
        f"{_label(kind)} record is {have} bytes, shorter than its {need}-byte fixed part; "
        "the ring buffer gave a truncated record (producer and parser disagree on the layout?)"
    )


def field_above_limit(kind: int, field: str, value: int, limit: int) -> RecordError:
    return RecordError(f"{_label(kind)} record {field} is {value}, above the limit {limit}: corrupt record")


def field_beyond_record(kind: int, field: str, end: int, have: int) -> RecordError:
    return RecordError(
        f"{_label(kind)} record {field} ends at byte {end}, beyond the {have}-byte record: corrupt record"
    )


def unknown_kind(kind: int) -> RecordError:
    known = ", ".join(f"{k.id} {k.label}" for k in KINDS.values())
    return RecordError(f"record kind {kind} is unknown (known: {known})")


# The names the generated code sees (kestrel_raw/codec/generate.py).
NAMESPACE = {
    "cstr": cstr, "split_arg_area": split_arg_area, "split_args": split_args, "syscall_name": syscall_name,
    "decode_sockaddr": decode_sockaddr, "connect_destination": connect_destination, "open_flags": open_flags,
    "open_mode": open_mode, "_jstr": _jstr, "JSON_BOOL": JSON_BOOL, "json_bytes": json_bytes,
    "json_bytes_list": json_bytes_list, "json_str": json_str, "json_fast_str": json_fast_str,
    "json_str_list": json_str_list, "json_fast_str_list": json_fast_str_list, "json_value": json_value,
    "tty_name": tty_name,
    "record_too_short": record_too_short, "field_above_limit": field_above_limit,
    "field_beyond_record": field_beyond_record, "unknown_kind": unknown_kind,
    "dns_addresses": dns_addresses, "family_name": family_name,
}
