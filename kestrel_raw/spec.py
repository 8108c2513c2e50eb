"""kestrel-schema: the registry of event types and fields.

Every field has a stable numeric id (ids are never reused or renumbered: tests/test_schema.py pins them),
a name, a value type and the event types it appears in.  ``KestrelEvent.fields`` is keyed by these ids.
Values in an event have these Python types:

===============  ===================================================================================
FieldType        Python value
===============  ===================================================================================
STRING           ``str``; bytes that are not valid UTF-8 are kept with ``errors="surrogateescape"``
U64              ``int`` in [0, 2**64)
I64              ``int`` in [-2**63, 2**63)
BYTES            ``bytes``
STRING_LIST      ``tuple[str, ...]`` (surrogateescape as for STRING)
BOOL             ``bool``
===============  ===================================================================================
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class EventType(enum.IntEnum):
    EXEC = 1
    OPEN = 2
    CONNECT = 3
    EXIT = 4

    @property
    def label(self) -> str:
        """The lower-case name used in JSON and on the command line: ``"exec"``..."""
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> "EventType":
        try:
            return cls[label.strip().upper()]
        except KeyError:
            raise ValueError(
                f"unknown event type {label!r}; valid: {', '.join(t.label for t in cls)}"
            ) from None


class FieldType(enum.Enum):
    STRING = "string"
    U64 = "u64"
    I64 = "i64"
    BYTES = "bytes"
    STRING_LIST = "list of strings"
    BOOL = "bool"


class FieldId(enum.IntEnum):
    """Stable field ids.  Append only: never renumber, never reuse."""
    PID = 1
    TID = 2
    PPID = 3
    UID = 4
    GID = 5
    COMM = 6
    PROCESS_START_NS = 7
    CPU = 8
    FILENAME = 9
    ARGV = 10
    TRUNCATED = 11
    PATH = 12
    FLAGS = 13
    MODE = 14
    RET = 15
    DFD = 16
    SYSCALL = 17
    FAULT = 18
    FAMILY = 19
    DADDR = 20
    DPORT = 21
    FD = 22
    EXIT_CODE = 23
    SIGNAL = 24


@dataclass(frozen=True, slots=True)
class Field:
    id: int
    name: str
    type: FieldType
    event_types: frozenset[EventType]
    doc: str


ALL_EVENT_TYPES = frozenset(EventType)
_E, _O, _C, _X = EventType.EXEC, EventType.OPEN, EventType.CONNECT, EventType.EXIT

FIELDS: tuple[Field, ...] = (
    Field(FieldId.PID, "pid", FieldType.U64, ALL_EVENT_TYPES, "process id (tgid)"),
    Field(FieldId.TID, "tid", FieldType.U64, ALL_EVENT_TYPES, "thread id"),
    Field(FieldId.PPID, "ppid", FieldType.U64, ALL_EVENT_TYPES, "parent's process id (real_parent->tgid)"),
    Field(FieldId.UID, "uid", FieldType.U64, ALL_EVENT_TYPES, "real user id"),
    Field(FieldId.GID, "gid", FieldType.U64, ALL_EVENT_TYPES, "real group id"),
    Field(FieldId.COMM, "comm", FieldType.STRING, ALL_EVENT_TYPES, "task command name (at most 15 bytes)"),
    Field(FieldId.PROCESS_START_NS, "process_start_ns", FieldType.U64, ALL_EVENT_TYPES,
          "group leader's start time, CLOCK_MONOTONIC ns"),
    Field(FieldId.CPU, "cpu", FieldType.U64, ALL_EVENT_TYPES, "CPU the event was recorded on"),
    Field(FieldId.FILENAME, "filename", FieldType.STRING, frozenset({_E}), "the file executed"),
    Field(FieldId.ARGV, "argv", FieldType.STRING_LIST, frozenset({_E}), "arguments, argv[0] first"),
    Field(FieldId.TRUNCATED, "truncated", FieldType.BOOL, frozenset({_E, _O}),
          "the argument area or path was longer than what was copied"),
    Field(FieldId.PATH, "path", FieldType.STRING, frozenset({_O}), "path as passed to open (may be relative)"),
    Field(FieldId.FLAGS, "flags", FieldType.U64, frozenset({_O}), "open flags (O_*)"),
    Field(FieldId.MODE, "mode", FieldType.U64, frozenset({_O}), "creation mode"),
    Field(FieldId.RET, "ret", FieldType.I64, frozenset({_O, _C}), "syscall return value (-errno on failure)"),
    Field(FieldId.DFD, "dfd", FieldType.I64, frozenset({_O}), "directory fd the path is relative to"),
    Field(FieldId.SYSCALL, "syscall", FieldType.STRING, frozenset({_O}), "\"openat\" or \"openat2\""),
    Field(FieldId.FAULT, "fault", FieldType.BOOL, frozenset({_E, _O, _C}), "user memory could not be read"),
    Field(FieldId.FAMILY, "family", FieldType.STRING, frozenset({_C}), "address family name (\"AF_INET\"...)"),
    Field(FieldId.DADDR, "daddr", FieldType.STRING, frozenset({_C}), "destination address text"),
    Field(FieldId.DPORT, "dport", FieldType.U64, frozenset({_C}), "destination port (0 when none)"),
    Field(FieldId.FD, "fd", FieldType.I64, frozenset({_C}), "socket fd"),
    Field(FieldId.EXIT_CODE, "exit_code", FieldType.U64, frozenset({_X}), "exit status ((code >> 8) & 0xff)"),
    Field(FieldId.SIGNAL, "signal", FieldType.U64, frozenset({_X}), "terminating signal (code & 0x7f), 0 if none"),
)

FIELDS_BY_ID: dict[int, Field] = {int(f.id): f for f in FIELDS}
FIELDS_BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}
# Field ids as plain ints, by name: what hot paths index ``KestrelEvent.fields`` with.
FIELD_IDS: dict[str, int] = {f.name: int(f.id) for f in FIELDS}


def field(key: int | str) -> Field:
    """The field with id or name ``key``; ``KeyError`` naming the key otherwise."""
    try:
        return FIELDS_BY_NAME[key] if isinstance(key, str) else FIELDS_BY_ID[int(key)]
    except KeyError:
        raise KeyError(f"no kestrel-schema field {key!r}") from None


def fields_of(event_type: EventType | int) -> tuple[Field, ...]:
    """Fields an event of ``event_type`` carries, in id order."""
    et = EventType(event_type)
    return tuple(f for f in FIELDS if et in f.event_types)
