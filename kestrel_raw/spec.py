"""The event spec: the one place where an event's fields are named.

For each event kind it says, field by field, what the BPF program writes into the ring-buffer record (the
wire type and size, and where the kernel value comes from: a tracepoint argument, a syscall argument, a BTF
path, a helper) and what the Kestrel Event and the JSON line carry (the stable field id, the value type, the
JSON key, and how the value is decoded from the record).  Everything else is derived from it, once, at
import:

- the record layout (offsets), here: ``OPEN.ret.offset``; the programs write through it
  (``b.store(OPEN.ret, R1)``, kestrel_raw/programs);
- the parser's ``struct`` formats, the record classes, the normalizer and the JSON line encoders
  (kestrel_raw/codec/generate.py writes their source from this spec and compiles it);
- the construct ``Struct`` of each record (kestrel_raw/codec/schema.py: the schema and the test oracle);
- the tables of the README and of docs/architecture.md (``render_*`` below; tests fail when the docs differ).

Pure: imports neither ctypes nor trio, nor anything else of the package.

Vocabulary.  A *wire field* (``Wire``) is a field of the record as the program writes it.  A *Kestrel field*
(``Field``) is a field of the Kestrel Event, with a stable numeric id (``FieldId``: append only, never
renumbered, never reused).  A kind lists its Kestrel fields in JSON order, each with a ``Value``: the Python
expression, over the record's parsed values, that gives the Kestrel value (and, for strings, the raw bytes the
JSON line is written from).  Expressions may call the decoders of kestrel_raw/codec/decode.py by name.

Record layout.  Every record starts with the common header (``HEADER``), then its kind's fixed part, then its
variable parts in order, each exactly as long as its length field says (the ring buffer pads the record to 8
bytes: a parser ignores the tail).  The header starts with the timestamp, the only bytes of a record that
differ between two events of one thread doing the same thing again: the JSON encoder keys its memo on
everything after it (kestrel_raw/codec/generate.py).  Host byte order, little-endian on every supported
architecture (x86_64, aarch64).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterator

# --------------------------------------------------------------------------------------------------------
# Event types and field ids: stable numbers.


class EventType(enum.IntEnum):
    """Kestrel event type ids; also the record kind (the u16 every record carries)."""

    EXEC = 1
    OPEN = 2
    CONNECT = 3
    EXIT = 4
    FORK = 5
    # Issue 17: events from uprobes on user-space functions, off unless asked for (EventType 50-59).
    SHELL_COMMAND = 50
    DNS_QUERY = 51
    STATUS = 100  # made by the collector itself at start and periodically (host identity, counters), not by a program
    LOSS = 101  # made by the collector itself when events were lost (issue 15)

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


class RecordKind(enum.IntEnum):
    """Record kinds that are no event: records the programs write for user space's own bookkeeping, never
    delivered.  They share the u16 kind space with EventType (below 256: the JSON encoder dispatches on the
    kind's low byte), from the top down."""

    PROC = 250  # a process's changed context (cwd, namespaces, hostname), consumed by the process cache

    @property
    def label(self) -> str:
        return self.name.lower()


class FieldType(enum.Enum):
    """The Python type of a Kestrel field's value.

    ==============  ===================================================================================
    STRING          ``str``; bytes that are not valid UTF-8 are kept with ``errors="surrogateescape"``
    U64             ``int`` in [0, 2**64)
    I64             ``int`` in [-2**63, 2**63)
    BYTES           ``bytes``
    STRING_LIST     ``tuple[str, ...]`` (surrogateescape as for STRING)
    BOOL            ``bool``
    JSON            a JSON value: ``dict`` or ``list`` of str, int, bool, None (``ancestors``, ``cloud``)
    ==============  ===================================================================================
    """

    STRING = "string"
    U64 = "u64"
    I64 = "i64"
    BYTES = "bytes"
    STRING_LIST = "list of strings"
    BOOL = "bool"
    JSON = "json"


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
    RESOLVED_PATH = 25
    TOCTOU = 26
    CORE_DUMPED = 27
    RESOLVE = 28
    LATE_READ = 29
    # issue 14 (who and where): 30-59
    EUID = 30
    EGID = 31
    AUID = 32
    SESSIONID = 33
    TTY = 34
    CGROUP_ID = 35
    CGROUP = 36
    CONTAINER_ID = 37
    CONTAINER_NAME = 38
    CONTAINER_IMAGE = 39
    PARENT_ENTITY_KEY = 40
    EXE = 41
    EXE_DELETED = 42
    EXE_MEMFD = 43
    CWD = 44
    PIDNS = 45
    MNTNS = 46
    NETNS = 47
    HOSTNAME = 48
    ANCESTORS = 49
    CAPS_EFFECTIVE = 50
    CAPS_PERMITTED = 51
    THREAD = 52
    MACHINE_ID = 53
    BOOT_ID = 54
    KERNEL = 55
    ARCH = 56
    CLOUD = 57
    PROGRAMS = 58
    # Issue 15 (filters, loss and health): 60-69.
    COUNTS = 60
    COUNTERS = 61
    FILTERS = 62
    REASON = 63
    # Issue 17 (uprobe events): 130-139.
    COMMAND = 130
    QUERY = 131
    SERVICE = 132
    ADDRESSES = 133
    DURATION_NS = 134


# --------------------------------------------------------------------------------------------------------
# Where a wire value comes from (what the program does to get it).  Data: the programs read these (the
# header is built from them) and the docs print them.


@dataclass(frozen=True)
class Helper:
    """The result of a BPF helper call (``bpf_<name>``)."""
    name: str

    def describe(self) -> str:
        return f"bpf_{self.name}()"


@dataclass(frozen=True)
class Btf:
    """A kernel struct member reached from the current task through BTF (``task_struct.real_parent.tgid``);
    the offsets come from the running kernel's BTF at load time."""
    path: str

    def describe(self) -> str:
        return self.path


@dataclass(frozen=True)
class PidTgid:
    """A half of ``bpf_get_current_pid_tgid()``: ``"tgid"`` (upper 32 bits) or ``"pid"`` (the thread)."""
    half: str

    def describe(self) -> str:
        return f"bpf_get_current_pid_tgid() {'>> 32' if self.half == 'tgid' else '& 0xffffffff'}"


@dataclass(frozen=True)
class TpField:
    """A field of the tracepoint's record, at the offset its tracefs ``format`` file gives."""
    name: str

    def describe(self) -> str:
        return f"tracepoint field {self.name}"


@dataclass(frozen=True)
class SyscallArg:
    """Syscall argument ``index`` (0-based), from the task's saved user registers at the syscall's exit."""
    index: int
    name: str

    def describe(self) -> str:
        return f"syscall argument {self.index} ({self.name})"


@dataclass(frozen=True)
class CallArg:
    """Argument ``index`` (0-based) of a probed function, from the caller's registers at the function's first
    instruction (a uprobe: the program's ctx is the registers, struct pt_regs; the calling convention's
    table is in kestrel_raw/programs/layout.py)."""
    index: int
    name: str

    def describe(self) -> str:
        return f"function argument {self.index} ({self.name}), at the call"


@dataclass(frozen=True)
class CallRet:
    """The probed function's return value, from the registers at its return (a uretprobe)."""
    what: str

    def describe(self) -> str:
        return f"the function's return value ({self.what})"


@dataclass(frozen=True)
class Const:
    """A value the program writes as an immediate (per program: the record kind, the syscall number)."""
    what: str

    def describe(self) -> str:
        return self.what


@dataclass(frozen=True)
class Computed:
    """A value the program computes or copies (a length, a user-memory read); ``how`` says how."""
    how: str

    def describe(self) -> str:
        return self.how


@dataclass(frozen=True)
class TtyDevice:
    """The controlling terminal's device number, ``MKDEV(tty->driver->major, tty->driver->minor_start +
    tty->index)`` of ``task->signal->tty`` (BTF), as ``/proc/PID/stat``'s tty_nr has it but in the kernel's
    dev_t encoding (major << 20 | minor); 0 when the process has none."""

    def describe(self) -> str:
        return "task_struct.signal.tty: driver.major << 20 | (driver.minor_start + index)"


Source = Helper | Btf | PidTgid | TpField | SyscallArg | CallArg | CallRet | Const | Computed | TtyDevice


# --------------------------------------------------------------------------------------------------------
# Wire types.


@dataclass(frozen=True)
class Int:
    size: int
    signed: bool

    @property
    def name(self) -> str:
        return f"{'i' if self.signed else 'u'}{self.size * 8}"

    @property
    def struct_code(self) -> str:
        """The ``struct`` module's code for it (standard sizes: the formats start with ``<``)."""
        code = {1: "b", 2: "h", 4: "l", 8: "q"}[self.size]
        return code if self.signed else code.upper()


U16 = Int(2, False)
U32 = Int(4, False)
U64 = Int(8, False)
I32 = Int(4, True)
I64 = Int(8, True)


@dataclass(frozen=True)
class Chars:
    """A fixed-size byte array.  ``cstr`` (the default): NUL-padded text (``comm``), the value is the bytes
    up to the first NUL; else raw bytes (an IPv6 address), all of them."""
    size: int
    cstr: bool = True

    @property
    def name(self) -> str:
        return f"char[{self.size}]" if self.cstr else f"u8[{self.size}]"

    @property
    def struct_code(self) -> str:
        return f"{self.size}s"


@dataclass(frozen=True)
class Var:
    """A variable-length part after the fixed part, exactly ``length`` bytes long (``length`` names a wire
    field of the same kind), at most ``max`` (a larger length is a corrupt record).  ``cstr``: the value is
    cut at the first NUL (a string the program copied with its terminator)."""
    length: str
    max: int
    cstr: bool = False

    @property
    def name(self) -> str:
        return f"u8[{self.length}]"


WireType = Int | Chars | Var


@dataclass(frozen=True)
class Wire:
    """One field of the record.  ``offset`` is filled in by ``Kind`` (fixed fields; for variable parts the
    offset of the first one, the others following it)."""
    name: str
    type: WireType
    source: Source
    doc: str = ""
    offset: int = -1

    @property
    def size(self) -> int:
        if isinstance(self.type, Var):
            raise TypeError(f"wire field {self.name} is variable-length: its size is its length field's value")
        return self.type.size

    @property
    def padding(self) -> bool:
        """Padding: written as zero, parsed and dropped (name starts with ``_``)."""
        return self.name.startswith("_")


# --------------------------------------------------------------------------------------------------------
# Kestrel fields and their values.


@dataclass(frozen=True)
class Field:
    """A Kestrel field: stable id, name (also its JSON key), value type, the event types it appears in."""
    id: FieldId
    name: str
    type: FieldType
    event_types: frozenset[EventType]
    doc: str


@dataclass(frozen=True)
class Value:
    """How a kind fills one Kestrel field from the parsed record.

    ``expr``: Python expression over the record's values (wire names and the kind's ``Local`` names) giving
    the Kestrel value.  ``raw``: for STRING and STRING_LIST fields, an expression giving the bytes (a list of
    bytes for STRING_LIST) that the value decodes, so that the JSON encoder works from bytes and writes a
    ``<key>_b64`` twin for bytes that are not UTF-8.  ``json``: whether the JSON line carries it.
    ``doc``: what the JSON key means for this kind (the README's table).  ``null``: an expression that, when
    true, makes the value None (JSON ``null``): the value does not exist for this event (the resolved path of
    a failed open).

    ``context``: the value is filled in user space from what the collector knows, not from the record: the
    name of a ``Scope`` (``CONTEXT_SCOPES``), whose entry ``expr`` reads (``"proc.cwd"``).  ``omit``: the
    JSON key is left out when the value is None (a value the collector adds only when asked:
    ``ancestors``).  For a JSON-typed value, ``raw`` is an expression giving its JSON text, ready made.
    """
    id: FieldId
    expr: str
    raw: str | None = None
    json: bool = True
    doc: str = ""
    null: str | None = None
    context: str | None = None
    omit: bool = False


@dataclass(frozen=True)
class Local:
    """A value computed once per record from others, for several fields to use (a decoded sockaddr)."""
    name: str
    expr: str


def raw_int(wire: str, fid: FieldId, *, json: bool = True, doc: str = "") -> Value:
    """The wire integer as it is."""
    return Value(fid, wire, json=json, doc=doc)


def text(wire: str, fid: FieldId, *, doc: str = "") -> Value:
    """Bytes decoded losslessly (surrogateescape); JSON: UTF-8 text with a ``_b64`` twin when not UTF-8."""
    return Value(fid, f"{wire}.decode('utf-8', 'surrogateescape')", raw=wire, doc=doc)


def flag(bit: int, fid: FieldId, *, doc: str = "") -> Value:
    """A bit of the record's header flags."""
    return Value(fid, f"(header_flags & {bit}) != 0", doc=doc)


@dataclass(frozen=True)
class Scope:
    """Where user space looks context values up: ``name`` is what the values' expressions call the entry
    (``proc.exe``), ``keys`` the header wire fields it is looked up by."""
    name: str
    keys: tuple[str, ...]
    doc: str


def context(scope: str, attr: str, fid: FieldId, *, doc: str = "", null: bool = True, raw: str | None = None,
            omit: bool = False) -> Value:
    """A value user space fills from the ``scope`` entry's attribute ``attr`` (None: JSON null)."""
    expr = f"{scope}.{attr}"
    return Value(fid, expr, raw=raw, doc=doc, null=f"{expr} is None" if null and not omit else None,
                 context=scope, omit=omit)


# --------------------------------------------------------------------------------------------------------
# Record flags (the header's u16 flags): bits the programs set.

FLAG_TRUNCATED = 1 << 0  # a string or the argument area was longer than its limit
FLAG_FAULT = 1 << 1  # user memory could not be read (bad pointer, page not present)
# The argument read at the syscall's entry (what the kernel copied) and read again at its exit differ:
# another thread rewrote the caller's memory during the syscall.
FLAG_TOCTOU = 1 << 2
# The argument could be read only at the syscall's exit (its page was not in memory at entry, or the syscall
# began before the collector attached): a racing thread could have changed it before that read.
FLAG_LATE_READ = 1 << 3
# Internal (issue 15): a filter dropped the record, or its kind's rate limit held it back, but it was written
# for the process cache (exec, exit and fork with context on, kestrel_raw/programs/filtermaps.py): user space
# uses it for the cache and never delivers it.
FLAG_FILTERED = 1 << 4
FLAG_RATE_LIMITED = 1 << 5

TASK_COMM_LEN = 16
MAX_PATH = 4096  # open path bytes kept, without the NUL; a longer path is cut here and flagged TRUNCATED
MAX_FILENAME = 4096  # exec file name bytes (PATH_MAX, counting the NUL the kernel stores)
MAX_ARGS = 4096  # bytes of the exec argument area copied
MAX_SOCKADDR = 128  # sizeof(struct sockaddr_storage)

# shell_command: bytes of the line kept, without its NUL; a longer line is cut here and flagged TRUNCATED.
MAX_COMMAND = 4096
# dns_query: bytes of the name (getaddrinfo's node) and of the service kept, without the NUL (a DNS name has
# at most 253; node may be any string, an address literal too); longer ones are cut and flagged TRUNCATED.
MAX_QUERY = 256
MAX_SERVICE = 32
# dns_query: the result list's first distinct addresses kept, each in a slot of DNS_ADDR_SIZE bytes: the
# sockaddr's family (u16), port (u16, network order), then the address (4 or 16 bytes, zero-padded).
DNS_ADDRS = 8
DNS_ADDR_SIZE = 20

# open record "syscall" values, and their names in the Kestrel field
OPEN_SYSCALLS = {0: "openat", 1: "openat2"}
OPEN_SYSCALL_OPENAT = 0
OPEN_SYSCALL_OPENAT2 = 1


# --------------------------------------------------------------------------------------------------------
# Kinds.


class Kind:
    """One record kind / event type: its wire fields (after the header), its locals and its values.

    Attribute access gives the wire fields with their offsets: ``OPEN.ret.offset``; ``OPEN.fixed_size`` is
    the size of the header and fixed part, where the first variable part starts.
    """

    def __init__(self, event_type: EventType | RecordKind, wire: list[Wire], values: list[Value],
                 locals_: list[Local] = (), *, header: tuple[Wire, ...] | None = None, memo: bool = False,
                 doc: str = "", update: str | None = None, update_after: bool = False) -> None:
        self.event_type = event_type
        self.id = int(event_type)
        self.label = event_type.label
        # An internal kind (RecordKind) is no event: user space consumes it (``update``) and delivers nothing.
        self.internal = isinstance(event_type, RecordKind)
        self.memo = memo  # the JSON encoder keeps whole lines' text besides the time (repeated events)
        self.doc = doc
        # The context provider's method the record's values go to (``ctx.update_<name>(values)``), before the
        # event is made (exec, fork: the event shows the context the record brings), or after it
        # (``update_after``: exit, whose event still shows the process it ends).
        self.update = update
        self.update_after = update_after
        fields, offset = [], 0
        for w in (*(header if header is not None else HEADER), *wire):
            if isinstance(w.type, Var):
                # The first variable part starts after the fixed part; the others follow it, at offsets that
                # depend on its length (-1: not a constant).
                fields.append(_with_offset(w, -1 if any(isinstance(f.type, Var) for f in fields) else offset))
                continue
            if any(isinstance(f.type, Var) for f in fields):
                raise ValueError(f"{event_type.label}.{w.name}: a fixed field after a variable part")
            if offset % w.type.size and isinstance(w.type, Int):
                raise ValueError(f"{event_type.label}.{w.name}: offset {offset} not aligned to {w.type.size}")
            fields.append(_with_offset(w, offset))
            offset += w.type.size
        self.wire: tuple[Wire, ...] = tuple(fields)
        self.fixed: tuple[Wire, ...] = tuple(w for w in fields if not isinstance(w.type, Var))
        self.var: tuple[Wire, ...] = tuple(w for w in fields if isinstance(w.type, Var))
        self.fixed_size = offset
        if self.fixed_size % 8:
            raise ValueError(f"{event_type.label}: fixed part is {self.fixed_size} bytes, not a multiple of 8")
        self.locals: tuple[Local, ...] = tuple(locals_)
        if self.internal:
            if values:
                raise ValueError(f"{event_type.label}: an internal record kind has no Kestrel values")
            self.values: tuple[Value, ...] = ()
        elif header is None:
            self.values = (*COMMON_VALUES, *values, *CONTEXT_VALUES)
        else:
            self.values = tuple(values)
        self._by_name = {w.name: w for w in fields}
        for v in self.var:
            if v.type.length not in self._by_name:
                raise ValueError(f"{event_type.label}.{v.name}: length field {v.type.length} is not a wire field")
        ids = [int(v.id) for v in self.values]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{event_type.label}: a Kestrel field is given twice")
        if any(v.context for v in values):
            raise ValueError(f"{event_type.label}: context values are the common CONTEXT_VALUES, after the "
                             "kind's own")

    @property
    def own_values(self) -> tuple[Value, ...]:
        """The kind's own values: after the common ones, before the context ones."""
        if self.internal:
            return ()
        return tuple(v for v in self.values[len(COMMON_VALUES):] if v.context is None)

    def __getattr__(self, name: str) -> Wire:
        try:
            return self.__dict__["_by_name"][name]
        except KeyError:
            raise AttributeError(f"{self.__dict__.get('label', 'kind')} has no wire field {name!r}") from None

    def __repr__(self) -> str:
        return f"Kind({self.label})"

    @property
    def lengths(self) -> frozenset[str]:
        """Names of the wire fields that are lengths of variable parts."""
        return frozenset(v.type.length for v in self.var)

    @property
    def record_names(self) -> tuple[str, ...]:
        """The parsed record's values, in order: every wire field but the kind, padding and the lengths of
        variable parts (the parts themselves carry those)."""
        return tuple(w.name for w in self.wire if w.name != "kind" and not w.padding and w.name not in self.lengths)


def _with_offset(w: Wire, offset: int) -> Wire:
    return Wire(w.name, w.type, w.source, w.doc, offset)


# The common header.  The timestamp comes first: the only bytes that differ between two events of one
# thread doing the same thing again (the JSON encoder's memo keys on everything after it).  What it carries
# beyond the process's ids is what can change at any moment without a hook to see it change (credentials,
# the login session, the terminal, the cgroup, the parent when it dies): read at every event, a load each.
# What changes only at a syscall that can be watched (exe, cwd, namespaces, hostname) is not here: the
# programs report it when it changes (CONTEXT_WIRE) and user space carries it per process (CONTEXT_VALUES).
HEADER: tuple[Wire, ...] = (
    Wire("ts_ns", U64, Helper("ktime_get_ns"), "time of the event, CLOCK_MONOTONIC ns"),
    Wire("kind", U16, Const("the record kind (event type id)")),
    Wire("header_flags", U16, Computed("bits set by the program: 1 TRUNCATED, 2 FAULT, 4 TOCTOU, 8 LATE_READ"),
         "bit 0 TRUNCATED (a value was cut at its limit), bit 1 FAULT (user memory could not be read), "
         "bit 2 TOCTOU, bit 3 LATE_READ"),
    Wire("cpu", U32, Helper("get_smp_processor_id"), "CPU the program ran on"),
    Wire("start_ns", U64, Btf("task_struct.group_leader.start_time"),
         "the process's start time, CLOCK_MONOTONIC ns"),
    Wire("parent_start_ns", U64, Btf("task_struct.real_parent.group_leader.start_time"),
         "the real parent's start time: with ppid, the parent's entity_key"),
    Wire("cgroup_id", U64, Btf("task_struct.cgroups.dfl_cgrp.kn.id"),
         "the cgroup v2 id, as bpf_get_current_cgroup_id() gives it (the cgroup directory's inode number)"),
    Wire("pid", U32, PidTgid("tgid"), "process id (tgid)"),
    Wire("tid", U32, PidTgid("pid"), "thread id"),
    Wire("ppid", U32, Btf("task_struct.real_parent.tgid"), "the real parent's tgid"),
    Wire("uid", U32, Btf("task_struct.cred.uid.val"), "real user id (current_cred()->uid)"),
    Wire("gid", U32, Btf("task_struct.cred.gid.val"), "real group id"),
    Wire("euid", U32, Btf("task_struct.cred.euid.val"), "effective user id"),
    Wire("egid", U32, Btf("task_struct.cred.egid.val"), "effective group id"),
    Wire("auid", U32, Btf("task_struct.loginuid.val"), "login uid (audit), 4294967295 when unset"),
    Wire("sessionid", U32, Btf("task_struct.sessionid"), "audit session id, 4294967295 when unset"),
    Wire("tty", U32, TtyDevice(), "controlling terminal, major << 20 | minor; 0: none"),
    Wire("comm", Chars(TASK_COMM_LEN), Btf("task_struct.comm"), "the thread's command name"),
)
HEADER_SIZE = sum(w.type.size for w in HEADER)
HEADER_FLAGS_OFFSET = 10  # header_flags' offset: after ts_ns (8) and kind (2); checked below
assert sum(w.type.size for w in HEADER[:[w.name for w in HEADER].index("header_flags")]) == HEADER_FLAGS_OFFSET

AUDIT_UNSET = 0xFFFFFFFF  # (u32)-1: AUDIT_UID_UNSET (include/linux/uidgid.h), AUDIT_SID_UNSET (include/linux/audit.h)

# Kestrel fields every event carries, in JSON order (after type, event_type_id, ts_mono_ns, ts_wall_ns and
# entity_key, which the event itself holds; and before source).
COMMON_VALUES: tuple[Value, ...] = (
    raw_int("pid", FieldId.PID),
    raw_int("tid", FieldId.TID),
    raw_int("cpu", FieldId.CPU),
    raw_int("ppid", FieldId.PPID),
    raw_int("uid", FieldId.UID),
    raw_int("gid", FieldId.GID),
    text("comm", FieldId.COMM),
    raw_int("euid", FieldId.EUID),
    raw_int("egid", FieldId.EGID),
    Value(FieldId.AUID, "auid", null=f"auid == {AUDIT_UNSET}"),
    Value(FieldId.SESSIONID, "sessionid", null=f"sessionid == {AUDIT_UNSET}"),
    Value(FieldId.TTY, "tty_name(tty)", null="tty == 0"),
    raw_int("cgroup_id", FieldId.CGROUP_ID),
    Value(FieldId.PARENT_ENTITY_KEY, "entity_key_memo(ppid, parent_start_ns)", null="ppid == 0"),
    raw_int("start_ns", FieldId.PROCESS_START_NS, json=False),
)

# Where user space looks up what it adds to every event (kestrel_raw/collector/enrich.py provides them).
CONTEXT_SCOPES: tuple[Scope, ...] = (
    Scope("cgroup", ("cgroup_id",), "the cgroup v2 id's path and the container it names "
                                     "(kestrel_raw/context/cgroups.py, containerinfo.py)"),
    Scope("proc", ("pid", "start_ns", "tid"), "the process cache (kestrel_raw/context/proctable.py): what the "
                                              "programs reported when the process forked, exec'd or changed"),
    Scope("lineage", ("pid", "start_ns"), "the process's ancestors in the process cache (--ancestors N)"),
)
CONTEXT_KEYS: tuple[str, ...] = tuple(dict.fromkeys(k for s in CONTEXT_SCOPES for k in s.keys))

# Kestrel fields user space adds to every event, in JSON order, after the kind's own.
CONTEXT_VALUES: tuple[Value, ...] = (
    context("cgroup", "path", FieldId.CGROUP,
            doc="the v2 cgroup's path, from cgroup_id; `null` when not found"),
    context("cgroup", "container_id", FieldId.CONTAINER_ID,
            doc="the container the cgroup names (docker, containerd/CRI, CRI-O, podman, LXC, systemd-nspawn); "
                "`null` on the host"),
    context("cgroup", "container_name", FieldId.CONTAINER_NAME,
            doc="from the runtime's API socket, once known"),
    context("cgroup", "container_image", FieldId.CONTAINER_IMAGE, doc="from the runtime's API socket"),
    context("proc", "exe", FieldId.EXE, doc="the executable's full path, as /proc/PID/exe"),
    context("proc", "exe_deleted", FieldId.EXE_DELETED,
            doc="the executable was unlinked when the process exec'd it (a memfd too, as /proc says)"),
    context("proc", "exe_memfd", FieldId.EXE_MEMFD, doc="the executable is a memfd"),
    context("proc", "cwd", FieldId.CWD, doc="the working directory at the time of the event"),
    context("proc", "pidns", FieldId.PIDNS, doc="pid namespace inode"),
    context("proc", "mntns", FieldId.MNTNS, doc="mount namespace inode"),
    context("proc", "netns", FieldId.NETNS, doc="network namespace inode"),
    context("proc", "hostname", FieldId.HOSTNAME, doc="the UTS nodename the process sees"),
    context("lineage", "ancestors", FieldId.ANCESTORS, raw="lineage.ancestors_json", omit=True,
            doc="with `--ancestors N`: up to N ancestors, nearest first, each `{\"pid\", \"entity_key\", "
                "\"exe\", \"argv\"}`"),
)

# What a program reports of its process's context when it may have changed (exec, fork, and the internal
# ``proc`` record at chdir, fchdir, chroot, unshare, setns, sethostname): the whole of it, so that a
# record alone brings the process cache up to date.  Fixed part, then the two paths (variable parts).
CTX_SNAPSHOT = 1 << 0  # the block is filled (a failed exec's record and a thread's fork carry none)
CTX_EXE_DELETED = 1 << 1  # the exe's dentry is unlinked (d_unlinked)
CTX_EXE_PSEUDO = 1 << 2  # the exe is a file of no directory (a memfd): its path is "/" + its name
CTX_FS_PRIVATE = 1 << 3  # the thread's fs_struct is not its process leader's: the cwd is the thread's own

CONTEXT_WIRE: tuple[Wire, ...] = (
    Wire("pidns", U32, Computed("task->thread_pid->numbers[level].ns->ns.inum: the active pid namespace"),
         "pid namespace inode"),
    Wire("mntns", U32, Btf("task_struct.nsproxy.mnt_ns.ns.inum"), "mount namespace inode"),
    Wire("netns", U32, Btf("task_struct.nsproxy.net_ns.ns.inum"), "network namespace inode"),
    Wire("utsns", U32, Btf("task_struct.nsproxy.uts_ns.ns.inum"), "UTS namespace inode"),
    Wire("ctx_flags", U32, Computed("1 SNAPSHOT, 2 EXE_DELETED, 4 EXE_PSEUDO, 8 FS_PRIVATE")),
    Wire("exe_len", U32, Computed("bytes of the exe's path (0: none)")),
    Wire("cwd_len", U32, Computed("bytes of the working directory's path (0: none)")),
    Wire("_padc", U32, Const("0")),
    Wire("hostname", Chars(64), Btf("task_struct.nsproxy.uts_ns.name.nodename"),
         "the UTS nodename (64 bytes: the kernel's 65th is always NUL)"),
)


def context_paths() -> tuple[Wire, ...]:
    """The snapshot's variable parts: the exe's and the working directory's paths (walked back through
    dentries and mounts to the task's root, kestrel_raw/programs/resolve.py)."""
    return (
        Wire("exe", Var("exe_len", MAX_PATH), Computed("task->mm->exe_file's path (the walk)"),
             "the executable's absolute path"),
        Wire("cwd", Var("cwd_len", MAX_PATH), Computed("task->fs->pwd's path (the walk)"),
             "the working directory's absolute path"),
    )


EXEC = Kind(
    EventType.EXEC,
    wire=[
        Wire("filename_len", U32, Computed("bytes of the file name copied, without its NUL")),
        Wire("args_len", U32, Computed("bytes of the argument area copied (0 when unreadable)")),
        Wire("args_total", U32, Computed("task->mm->arg_end - task->mm->arg_start (BTF); a failed exec: "
                                         "the bytes copied"),
             "the argument area's whole length"),
        Wire("ret", I32, Computed("0 (sched_process_exec); a failed exec: sys_exit_execve(at)'s ret"),
             "0, or -errno"),
        Wire("caps_effective", U64, Btf("task_struct.cred.cap_effective"), "effective capabilities"),
        Wire("caps_permitted", U64, Btf("task_struct.cred.cap_permitted"), "permitted capabilities"),
        *CONTEXT_WIRE,
        Wire("filename", Var("filename_len", MAX_FILENAME, cstr=True),
             Computed("the tracepoint's __data_loc filename, copied with bpf_probe_read_kernel_str; a failed "
                      "exec: the filename argument, copied at the syscall's entry"),
             "the file executed"),
        Wire("args", Var("args_len", MAX_ARGS),
             Computed("the new mm's argument area, bpf_probe_read_user; a failed exec: the argv strings, copied "
                      "at the syscall's entry"),
             "NUL-separated argv strings"),
        *context_paths(),
    ],
    locals_=[Local("argv_parts", "split_arg_area(args)")],
    values=[
        text("filename", FieldId.FILENAME, doc="as the kernel names it; a failed exec: as passed"),
        Value(FieldId.ARGV, "tuple([p.decode('utf-8', 'surrogateescape') for p in argv_parts])",
              raw="argv_parts", doc="list, argv[0] first, as the new program sees it (a failed exec: as "
                                    "passed, at most 64 arguments)"),
        Value(FieldId.TRUNCATED, f"(header_flags & {FLAG_TRUNCATED}) != 0 or args_total > len(args)",
              doc="the argument area was longer than 4096 bytes, or the file name longer than PATH_MAX"),
        flag(FLAG_FAULT, FieldId.FAULT),
        raw_int("ret", FieldId.RET, doc="0, or -errno for a failed execve/execveat (ENOENT, EACCES, ENOEXEC...)"),
        raw_int("caps_effective", FieldId.CAPS_EFFECTIVE,
                doc="the effective capability set (bit n: capability n), after the exec"),
        raw_int("caps_permitted", FieldId.CAPS_PERMITTED, doc="the permitted capability set"),
        flag(FLAG_LATE_READ, FieldId.LATE_READ,
             doc="a failed exec whose arguments could be read only at the syscall's exit (its entry was not "
                 "seen, or another thread's exec took its slot), so they may not be what the kernel was given"),
    ],
    update="exec",
    doc="each execve/execveat: a successful one at sched:sched_process_exec, with the new image's context; a "
        "failed one at the syscall's exit, with what the caller passed",
)

OPEN = Kind(
    EventType.OPEN,
    wire=[
        Wire("ret", I32, TpField("ret"), "the fd, or -errno"),
        Wire("dfd", I32, SyscallArg(0, "dfd")),
        # flags, mode, resolve: struct open_how's layout, so that openat2's is copied onto them in one read
        Wire("flags", U64, SyscallArg(2, "flags; openat2: open_how.flags"), "open flags register (O_*)"),
        Wire("mode", U64, SyscallArg(3, "mode; openat2: open_how.mode"), "mode register"),
        Wire("resolve", U64, Computed("openat2: open_how.resolve; openat: 0"), "RESOLVE_* flags"),
        Wire("path_len", U32, Computed("bytes of the path copied, without its NUL")),
        Wire("syscall", U32, Const("0 openat, 1 openat2")),
        Wire("resolved_len", U32, Computed("bytes of the opened file's path (0: none)")),
        Wire("_pad1", U32, Const("0")),
        Wire("path", Var("path_len", MAX_PATH, cstr=True),
             Computed("syscall argument 1 (filename), copied at the syscall's entry (kr_entry task storage)"),
             "the path the kernel was given"),
        Wire("resolved_path", Var("resolved_len", MAX_PATH),
             Computed("the returned fd's file: dentry and mount chain up to the task's root, at the exit"),
             "the opened file's absolute path"),
    ],
    values=[
        text("path", FieldId.PATH, doc="as passed (copied at the syscall's entry: what the kernel was given), "
                                       "up to 4096 bytes"),
        Value(FieldId.FLAGS, "open_flags(syscall, flags)",
              doc="as the kernel reads them: openat's int (the register's upper half ignored), openat2's u64"),
        Value(FieldId.MODE, "open_mode(flags, mode)",
              doc="the mode the kernel uses: mode & 07777 with O_CREAT or O_TMPFILE, else 0"),
        raw_int("ret", FieldId.RET, doc="the fd, or -errno"),
        raw_int("dfd", FieldId.DFD, json=False),
        flag(FLAG_TRUNCATED, FieldId.TRUNCATED, doc="the path was longer than 4096 bytes and is cut there"),
        flag(FLAG_FAULT, FieldId.FAULT),
        Value(FieldId.SYSCALL, "syscall_name(syscall)", doc='`"openat"` or `"openat2"`'),
        raw_int("resolve", FieldId.RESOLVE, doc="openat2's RESOLVE_* bits, 0 for openat"),
        Value(FieldId.RESOLVED_PATH, "resolved_path.decode('utf-8', 'surrogateescape')", raw="resolved_path",
              null="ret < 0 or not resolved_path",
              doc="the absolute path of the file the kernel opened (relative to the process's root), `null` "
                  "when the open failed"),
        flag(FLAG_TOCTOU, FieldId.TOCTOU,
             doc="the path in the caller's memory changed during the syscall (another thread rewrote it); "
                 "`path` is what the kernel was given"),
        flag(FLAG_LATE_READ, FieldId.LATE_READ,
             doc="the path could be read only at the syscall's exit (its page was not in memory at entry), "
                 "so it may not be what the kernel was given; `resolved_path` is"),
    ],
    memo=True,
    doc="each openat and openat2, at the syscall's exit (the path copied at its entry)",
)

CONNECT = Kind(
    EventType.CONNECT,
    wire=[
        Wire("ret", I32, TpField("ret"), "0 or -errno"),
        Wire("fd", I32, SyscallArg(0, "fd")),
        Wire("addrlen", U32, SyscallArg(2, "addrlen"), "as passed to connect(2)"),
        Wire("addr_len", U32, Computed("bytes of the address copied (0 when unreadable)")),
        # the destination the socket holds after the syscall (struct sock_common, through the fd's file)
        Wire("sk_family", U16, Computed("sock->sk->__sk_common.skc_family (0: no socket read)")),
        Wire("sk_dport", U16, Computed("skc_dport, network byte order")),
        Wire("sk_daddr", Chars(4, cstr=False), Computed("skc_daddr, network byte order")),
        Wire("sk_daddr6", Chars(16, cstr=False), Computed("skc_v6_daddr")),
        Wire("addr", Var("addr_len", MAX_SOCKADDR),
             Computed("syscall argument 1 (uservaddr), copied at the syscall's entry (kr_entry task storage)"),
             "the raw sockaddr the kernel was given"),
    ],
    locals_=[Local("dest", "connect_destination(addr, addrlen, sk_family, sk_dport, sk_daddr, sk_daddr6)")],
    values=[
        Value(FieldId.FAMILY, "dest.family",
              doc='`"AF_INET"`, `"AF_INET6"`, `"AF_UNIX"`; `"AF_UNSPEC"` when no address could be read'),
        Value(FieldId.DADDR, "dest.address",
              doc='the destination the socket holds after the call (IPv4/IPv6), else the address copied at '
                  'the syscall\'s entry: `"127.0.0.1"`, `"::1"`, `"::ffff:127.0.0.1"`, or the socket path; an '
                  'abstract name starts with `@`'),
        Value(FieldId.DPORT, "dest.port", doc="0 for AF_UNIX"),
        raw_int("ret", FieldId.RET, doc="0 or -errno; -115 EINPROGRESS for a non-blocking connect"),
        raw_int("fd", FieldId.FD, json=False),
        flag(FLAG_FAULT, FieldId.FAULT),
        Value(FieldId.TOCTOU, f"dest.toctou or (header_flags & {FLAG_TOCTOU}) != 0",
              doc="the address copied at entry and the socket's destination disagree (another thread "
                  "rewrote the caller's memory): `daddr` is the socket's"),
        flag(FLAG_LATE_READ, FieldId.LATE_READ, doc="the address could be read only at the syscall's exit"),
    ],
    doc="each connect, at the syscall's exit (the address copied at its entry)",
)

EXIT = Kind(
    EventType.EXIT,
    wire=[
        Wire("exit_code", I32, Btf("task_struct.exit_code"), "raw exit code: status << 8 | signal"),
        Wire("_pad1", U32, Const("0")),
    ],
    values=[
        Value(FieldId.EXIT_CODE, "(exit_code >> 8) & 0xFF", doc="one event per process exit, not per thread"),
        Value(FieldId.SIGNAL, "exit_code & 0x7F", doc="0 if none"),
        Value(FieldId.CORE_DUMPED, "(exit_code & 0x80) != 0", doc="the process dumped core"),
    ],
    update="exit",
    update_after=True,
    doc="each process exit (the last thread of the group; sched:sched_process_exit)",
)

FORK_THREAD = 1 << 0  # fork_flags: the new task is a thread of its parent's process (CLONE_THREAD)

FORK = Kind(
    EventType.FORK,
    wire=[
        Wire("fork_flags", U32, Computed("1 THREAD: child->pid != child->tgid")),
        Wire("_pad1", U32, Const("0")),
        *CONTEXT_WIRE,
        *context_paths(),
    ],
    values=[
        Value(FieldId.THREAD, f"(fork_flags & {FORK_THREAD}) != 0",
              doc="a new thread (only with `--threads`); else a new process"),
    ],
    update="fork",
    doc="each new process (tp_btf sched_process_fork), the header describing the child (pid, its start "
        "time: entity_key; ppid and parent_entity_key its parent); new threads with --threads",
)

# The internal ``proc`` record's syscall field.
PROC_SYSCALLS = {0: "chdir", 1: "fchdir", 2: "chroot", 3: "unshare", 4: "setns", 5: "sethostname"}

PROC = Kind(
    RecordKind.PROC,
    wire=[
        Wire("syscall", U32, Const("0 chdir, 1 fchdir, 2 chroot, 3 unshare, 4 setns, 5 sethostname")),
        Wire("_pad1", U32, Const("0")),
        *CONTEXT_WIRE,
        *context_paths(),
    ],
    values=[],
    update="proc",
    doc="internal: a successful chdir, fchdir, chroot, unshare, setns or sethostname (at the syscall's exit): "
        "the process's context after it, for the process cache; never delivered",
)

SHELL_COMMAND = Kind(
    EventType.SHELL_COMMAND,
    wire=[
        Wire("line_len", U32, Computed("bytes of the line copied, without its NUL")),
        Wire("_pad1", U32, Const("0")),
        Wire("line", Var("line_len", MAX_COMMAND, cstr=True),
             CallRet("char *: the line, bash's own memory, copied with bpf_probe_read_user_str"),
             "the command line bash's readline returned"),
    ],
    values=[
        text("line", FieldId.COMMAND, doc="the line as typed (after readline's editing), without its newline; up "
                                          "to 4096 bytes"),
        flag(FLAG_TRUNCATED, FieldId.TRUNCATED, doc="the line was longer than 4096 bytes and is cut there"),
        flag(FLAG_FAULT, FieldId.FAULT),
    ],
    doc="each non-empty line an interactive bash read (a uretprobe on bash's readline)",
)

DNS_QUERY = Kind(
    EventType.DNS_QUERY,
    wire=[
        Wire("ret", I32, CallRet("int"), "0, or an EAI_* code (negative)"),
        Wire("family", I32, Computed("hints->ai_family (function argument 2), copied at the call; 0 without hints"),
             "the address family asked for"),
        Wire("duration_ns", U64, Computed("bpf_ktime_get_ns() at the return minus at the call")),
        Wire("naddrs", U32, Computed(f"addresses kept in addrs (at most {DNS_ADDRS})")),
        Wire("query_len", U32, Computed("bytes of the name copied, without its NUL")),
        Wire("service_len", U32, Computed("bytes of the service copied, without its NUL")),
        Wire("_pad1", U32, Const("0")),
        Wire("addrs", Chars(DNS_ADDRS * DNS_ADDR_SIZE, cstr=False),
             Computed("the result list (*res, the pointer saved at the call) walked at the return: each distinct "
                      "address of its first 16 entries, family u16, port u16, address"),
             f"{DNS_ADDRS} slots of {DNS_ADDR_SIZE} bytes"),
        Wire("query", Var("query_len", MAX_QUERY, cstr=True),
             CallArg(0, "node, copied at the call into the thread's kr_dns task storage slot"),
             "the name asked for"),
        Wire("service", Var("service_len", MAX_SERVICE, cstr=True),
             CallArg(1, "service, copied at the call with the name"),
             "the service asked for"),
    ],
    locals_=[Local("dns_addrs", "dns_addresses(addrs, naddrs)")],
    values=[
        Value(FieldId.QUERY, "query.decode('utf-8', 'surrogateescape')", raw="query", null="not query",
              doc="the name asked for (getaddrinfo's node, copied at the call), up to 256 bytes; `null` when none "
                  "was given"),
        Value(FieldId.SERVICE, "service.decode('utf-8', 'surrogateescape')", raw="service", null="not service",
              doc="the service asked for (`\"https\"`, `\"443\"`), `null` when none was given"),
        Value(FieldId.FAMILY, "family_name(family)",
              doc='the family asked for (hints): `"AF_UNSPEC"` (either), `"AF_INET"`, `"AF_INET6"`'),
        raw_int("ret", FieldId.RET, doc="getaddrinfo's return: 0, or an EAI_* code (-2 EAI_NONAME, -3 EAI_AGAIN...)"),
        Value(FieldId.ADDRESSES, "tuple([a.decode('ascii') for a in dns_addrs])", raw="dns_addrs",
              doc=f"the first {DNS_ADDRS} distinct addresses of the result, in its order (`[]` when it failed): "
                  "what a later connect's `daddr` is compared with"),
        raw_int("duration_ns", FieldId.DURATION_NS, doc="from the call to its return"),
        Value(FieldId.TRUNCATED, f"(header_flags & {FLAG_TRUNCATED}) != 0",
              doc=f"the name or service was cut, or the result had more than {DNS_ADDRS} distinct addresses in its "
                  "first 16 entries"),
        flag(FLAG_FAULT, FieldId.FAULT),
    ],
    doc="each getaddrinfo call of the C library (a uprobe at the call, a uretprobe at its return)",
)

KINDS: dict[int, Kind] = {k.id: k for k in (EXEC, OPEN, CONNECT, EXIT, FORK, SHELL_COMMAND, DNS_QUERY, PROC)}
# The kinds that are events (delivered), and those user space makes itself (no record).
EVENT_KINDS: dict[int, Kind] = {k.id: k for k in KINDS.values() if not k.internal}
# The largest record a program can emit: exec with a full file name, argument area, exe and cwd.
MAX_RECORD = max(k.fixed_size + sum(v.type.max for v in k.var) for k in KINDS.values())


class UserKind:
    """An event kind the collector makes itself, with no record and no program: ``inputs`` are the names
    its values' expressions read (``event_<label>(inputs..., ts_mono, ts_wall)`` makes the event)."""

    def __init__(self, event_type: EventType, inputs: tuple[str, ...], values: list[Value], doc: str) -> None:
        self.event_type = event_type
        self.id = int(event_type)
        self.label = event_type.label
        self.inputs = inputs
        self.values: tuple[Value, ...] = tuple(values)
        self.doc = doc
        ids = [int(v.id) for v in self.values]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{self.label}: a Kestrel field is given twice")

    @property
    def own_values(self) -> tuple[Value, ...]:
        return self.values

    def __repr__(self) -> str:
        return f"UserKind({self.label})"


STATUS = UserKind(
    EventType.STATUS,
    inputs=("hostname", "machine_id", "boot_id", "kernel", "arch", "cloud", "programs", "reason", "filters",
            "counters"),
    values=[
        Value(FieldId.HOSTNAME, "hostname", doc="the host's name"),
        Value(FieldId.MACHINE_ID, "machine_id", null="machine_id is None", doc="/etc/machine-id"),
        Value(FieldId.BOOT_ID, "boot_id", null="boot_id is None", doc="/proc/sys/kernel/random/boot_id"),
        Value(FieldId.KERNEL, "kernel", doc="uname -r"),
        Value(FieldId.ARCH, "arch", doc="uname -m"),
        Value(FieldId.CLOUD, "cloud", null="cloud is None",
              doc='`null` off a cloud, else `{"provider", "instance_id", "region", "zone"}` from the '
                  "provider's instance metadata service (AWS IMDSv2, GCP, Azure), found from DMI first"),
        Value(FieldId.PROGRAMS, "programs",
              doc='every program the collector loaded, in load order: `{"name", "sha256", "tag"}` (the '
                  "SHA-256 of its bytes, as a pin file approves them, and the tag the kernel reports; "
                  "`kestrel-raw disasm` prints the same)"),
        Value(FieldId.REASON, "reason",
              doc='why it was written: `"start"` (the first), `"interval"` (every `--status-interval` seconds), '
                  '`"filters_changed"` (SIGHUP or `set_filters` changed the filters)'),
        Value(FieldId.FILTERS, "filters",
              doc='the filters in force, keyed as the config file keys them (`{"uid": [0], "exclude-comm": '
                  '["sshd"], "failed-only": true, "rate-limit": {"open": 100}}`; `{}`: none)'),
        Value(FieldId.COUNTERS, "counters",
              doc='the counters since the start: `{"delivered": {type: n}, "lost": {type: {cause: n}}, '
                  '"filtered": {type: n}, "parse_errors": n}` (types and causes with a count only)'),
    ],
    doc="made by the collector at start, every `--status-interval` seconds and when the filters change: the "
        "host's identity (kestrel_raw/context/host.py), the counters so far and the filters in force",
)
# The causes a loss event names, in the order its counts list them (issue 15).
LOSS_CAUSES = ("ringbuf_full", "rate_limited", "user_dropped", "parse_error", "prog_missed")
LOSS = UserKind(
    EventType.LOSS,
    inputs=("counts",),
    values=[
        Value(FieldId.COUNTS, "counts",
              doc='the events lost since the last loss event, by type and cause: `{"open": {"ringbuf_full": '
                  '120}}`; causes ' + ", ".join(f"`{c}`" for c in LOSS_CAUSES)),
    ],
    doc="made by the collector within a second after events were lost (never when nothing was)",
)
USER_KINDS: dict[int, UserKind] = {STATUS.id: STATUS, LOSS.id: LOSS}
# Every kind that makes events, by event type id.
ALL_KINDS: dict[int, Kind | UserKind] = {**EVENT_KINDS, **USER_KINDS}
SOURCE_USER = "kestrel-raw"  # the ``source`` of the events the collector makes itself


# --------------------------------------------------------------------------------------------------------
# The Kestrel field registry: names, types and docs once per field; the event types it appears in are the
# kinds whose values name it.

_FIELD_DEFS: dict[FieldId, tuple[str, FieldType, str]] = {
    FieldId.PID: ("pid", FieldType.U64, "process id (tgid)"),
    FieldId.TID: ("tid", FieldType.U64, "thread id"),
    FieldId.PPID: ("ppid", FieldType.U64, "parent's process id (real_parent->tgid)"),
    FieldId.UID: ("uid", FieldType.U64, "real user id"),
    FieldId.GID: ("gid", FieldType.U64, "real group id"),
    FieldId.COMM: ("comm", FieldType.STRING, "task command name (at most 15 bytes)"),
    FieldId.PROCESS_START_NS: ("process_start_ns", FieldType.U64, "group leader's start time, CLOCK_MONOTONIC ns"),
    FieldId.CPU: ("cpu", FieldType.U64, "CPU the event was recorded on"),
    FieldId.FILENAME: ("filename", FieldType.STRING, "the file executed"),
    FieldId.ARGV: ("argv", FieldType.STRING_LIST, "arguments, argv[0] first"),
    FieldId.TRUNCATED: ("truncated", FieldType.BOOL, "the argument area or path was longer than what was copied"),
    FieldId.PATH: ("path", FieldType.STRING, "path as passed to open (may be relative)"),
    FieldId.FLAGS: ("flags", FieldType.U64, "open flags (O_*)"),
    FieldId.MODE: ("mode", FieldType.U64, "creation mode"),
    FieldId.RET: ("ret", FieldType.I64, "syscall return value (-errno on failure)"),
    FieldId.DFD: ("dfd", FieldType.I64, "directory fd the path is relative to"),
    FieldId.SYSCALL: ("syscall", FieldType.STRING, "the syscall (\"openat\", \"openat2\")"),
    FieldId.FAULT: ("fault", FieldType.BOOL, "user memory could not be read"),
    FieldId.FAMILY: ("family", FieldType.STRING, "address family name (\"AF_INET\"...)"),
    FieldId.DADDR: ("daddr", FieldType.STRING, "destination address text"),
    FieldId.DPORT: ("dport", FieldType.U64, "destination port (0 when none)"),
    FieldId.FD: ("fd", FieldType.I64, "socket fd"),
    FieldId.EXIT_CODE: ("exit_code", FieldType.U64, "exit status ((code >> 8) & 0xff)"),
    FieldId.SIGNAL: ("signal", FieldType.U64, "terminating signal (code & 0x7f), 0 if none"),
    FieldId.RESOLVED_PATH: ("resolved_path", FieldType.STRING, "absolute path of the file the kernel opened"),
    FieldId.TOCTOU: ("toctou", FieldType.BOOL, "the argument in the caller's memory changed during the syscall"),
    FieldId.CORE_DUMPED: ("core_dumped", FieldType.BOOL, "the process dumped core (code & 0x80)"),
    FieldId.RESOLVE: ("resolve", FieldType.U64, "openat2 RESOLVE_* flags"),
    FieldId.LATE_READ: ("late_read", FieldType.BOOL, "the argument was read at the syscall's exit, not its entry"),
    FieldId.EUID: ("euid", FieldType.U64, "effective user id"),
    FieldId.EGID: ("egid", FieldType.U64, "effective group id"),
    FieldId.AUID: ("auid", FieldType.U64, "login uid (loginuid); null when unset"),
    FieldId.SESSIONID: ("sessionid", FieldType.U64, "audit session id; null when unset"),
    FieldId.TTY: ("tty", FieldType.STRING, "controlling terminal (\"pts/3\", \"tty1\"); null when none"),
    FieldId.CGROUP_ID: ("cgroup_id", FieldType.U64, "cgroup v2 id"),
    FieldId.CGROUP: ("cgroup", FieldType.STRING, "cgroup v2 path"),
    FieldId.CONTAINER_ID: ("container_id", FieldType.STRING, "container id; null on the host"),
    FieldId.CONTAINER_NAME: ("container_name", FieldType.STRING, "container name, from the runtime's API"),
    FieldId.CONTAINER_IMAGE: ("container_image", FieldType.STRING, "container image, from the runtime's API"),
    FieldId.PARENT_ENTITY_KEY: ("parent_entity_key", FieldType.U64, "the parent's entity_key"),
    FieldId.EXE: ("exe", FieldType.STRING, "the executable's full path"),
    FieldId.EXE_DELETED: ("exe_deleted", FieldType.BOOL, "the executable was unlinked"),
    FieldId.EXE_MEMFD: ("exe_memfd", FieldType.BOOL, "the executable is a memfd"),
    FieldId.CWD: ("cwd", FieldType.STRING, "working directory"),
    FieldId.PIDNS: ("pidns", FieldType.U64, "pid namespace inode"),
    FieldId.MNTNS: ("mntns", FieldType.U64, "mount namespace inode"),
    FieldId.NETNS: ("netns", FieldType.U64, "network namespace inode"),
    FieldId.HOSTNAME: ("hostname", FieldType.STRING, "UTS nodename"),
    FieldId.ANCESTORS: ("ancestors", FieldType.JSON, "ancestors, nearest first (--ancestors N)"),
    FieldId.CAPS_EFFECTIVE: ("caps_effective", FieldType.U64, "effective capability set"),
    FieldId.CAPS_PERMITTED: ("caps_permitted", FieldType.U64, "permitted capability set"),
    FieldId.THREAD: ("thread", FieldType.BOOL, "the new task is a thread"),
    FieldId.MACHINE_ID: ("machine_id", FieldType.STRING, "/etc/machine-id"),
    FieldId.BOOT_ID: ("boot_id", FieldType.STRING, "the kernel's boot id"),
    FieldId.KERNEL: ("kernel", FieldType.STRING, "kernel release"),
    FieldId.ARCH: ("arch", FieldType.STRING, "machine architecture"),
    FieldId.CLOUD: ("cloud", FieldType.JSON, "cloud instance, or null"),
    FieldId.PROGRAMS: ("programs", FieldType.JSON, "the programs loaded, with their digests"),
    FieldId.COUNTS: ("counts", FieldType.JSON, "events lost since the last loss event, by type and cause"),
    FieldId.COUNTERS: ("counters", FieldType.JSON, "the collector's counters since the start"),
    FieldId.FILTERS: ("filters", FieldType.JSON, "the filters in force, as the flags name them"),
    FieldId.REASON: ("reason", FieldType.STRING, "why the collector made the event"),
    FieldId.COMMAND: ("command", FieldType.STRING, "the command line an interactive shell read"),
    FieldId.QUERY: ("query", FieldType.STRING, "the host name a process asked the resolver for"),
    FieldId.SERVICE: ("service", FieldType.STRING, "the service (port name or number) asked for"),
    FieldId.ADDRESSES: ("addresses", FieldType.STRING_LIST, "the addresses a name resolved to"),
    FieldId.DURATION_NS: ("duration_ns", FieldType.U64, "how long the call took, ns"),
}


def _fields() -> tuple[Field, ...]:
    missing = set(FieldId) - set(_FIELD_DEFS)
    if missing:
        raise ValueError(f"field ids without a definition: {sorted(missing)}")
    out = []
    for fid in FieldId:
        name, ftype, doc = _FIELD_DEFS[fid]
        kinds = frozenset(k.event_type for k in ALL_KINDS.values() if any(v.id == fid for v in k.values))
        out.append(Field(fid, name, ftype, kinds, doc))
    return tuple(out)


FIELDS: tuple[Field, ...] = _fields()
FIELDS_BY_ID: dict[int, Field] = {int(f.id): f for f in FIELDS}
FIELDS_BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}
# Field ids as plain ints, by name: what hot paths index ``KestrelEvent.fields`` with.
FIELD_IDS: dict[str, int] = {f.name: int(f.id) for f in FIELDS}
ALL_EVENT_TYPES = frozenset(EventType)
# The event types every record-made event has in common (the "all" of the README's tables).
RECORD_EVENT_TYPES = frozenset(k.event_type for k in EVENT_KINDS.values())


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


# JSON keys every line starts with (from the event itself, not its fields), and the one after the common
# fields.  The JSON line of a kind: type, event_type_id, ts_mono_ns, ts_wall_ns, entity_key, then its values
# marked json (the common ones first), with ``source`` after the common ones.
JSON_EVENT_KEYS = ("type", "event_type_id", "ts_mono_ns", "ts_wall_ns", "entity_key")
JSON_SOURCE_KEY = "source"


def json_keys(kind: Kind | UserKind, optional: bool = False) -> list[str]:
    """The JSON keys of ``kind``'s lines, in order (without the ``_b64`` twins); ``optional``: with the keys
    present only when asked for (``ancestors``)."""
    if isinstance(kind, UserKind):
        return [*JSON_EVENT_KEYS[:4], JSON_SOURCE_KEY, *(FIELDS_BY_ID[int(v.id)].name for v in kind.values)]
    common = [FIELDS_BY_ID[int(v.id)].name for v in COMMON_VALUES if v.json]
    own = [FIELDS_BY_ID[int(v.id)].name for v in kind.own_values if v.json]
    ctx = [FIELDS_BY_ID[int(v.id)].name for v in CONTEXT_VALUES if v.json and (optional or not v.omit)]
    return [*JSON_EVENT_KEYS, *common, JSON_SOURCE_KEY, *own, *ctx]


# --------------------------------------------------------------------------------------------------------
# Documentation tables, rendered from the spec (README.md and docs/architecture.md carry them between
# markers; tests/test_spec_docs.py fails when they differ).

def _kinds_of(f: Field) -> str:
    if RECORD_EVENT_TYPES <= f.event_types:
        rest = sorted(f.event_types - RECORD_EVENT_TYPES)
        return ", ".join(["all", *(t.label for t in rest)])
    return ", ".join(t.label for t in sorted(f.event_types))


def render_field_table() -> str:
    """The Kestrel field registry as a Markdown table: id, name, type, events."""
    rows = ["| id | name | type | events |", "| --- | --- | --- | --- |"]
    rows += [f"| {int(f.id)} | {f.name} | {f.type.value} | {_kinds_of(f)} |" for f in FIELDS]
    return "\n".join(rows)


def _documented(values) -> str:
    keys = []
    for v in values:
        if not v.json:
            continue
        name = FIELDS_BY_ID[int(v.id)].name
        keys.append(f"`{name}` ({v.doc})" if v.doc else f"`{name}`")
    return ", ".join(keys)


def render_json_table() -> str:
    """The JSON keys of each event type as a Markdown table."""
    rows = ["| event | keys |", "| --- | --- |"]
    labels = ", ".join(f'`"{k.label}"`' for k in EVENT_KINDS.values())
    common = [f"`{FIELDS_BY_ID[int(v.id)].name}`" for v in COMMON_VALUES if v.json]
    rows.append(f"| all | `type` ({labels}), `event_type_id`, `ts_mono_ns`, `ts_wall_ns`, `entity_key`, "
                f"{', '.join(common)}, `source` (`\"ebpf\"`); then the event's own keys (below), then the "
                f"context keys (last row) |")
    for k in EVENT_KINDS.values():
        rows.append(f"| {k.label} | {_documented(k.own_values)} |")
    rows.append(f"| all, last | {_documented(CONTEXT_VALUES)} |")
    for k in USER_KINDS.values():
        rows.append(f"| {k.label} | `type` (`\"{k.label}\"`), `event_type_id`, `ts_mono_ns`, `ts_wall_ns`, "
                    f"`source` (`\"{SOURCE_USER}\"`), {_documented(k.values)} |")
    return "\n".join(rows)


def _wire_rows(fields: Iterator[Wire]) -> list[str]:
    rows = []
    for w in fields:
        off = str(w.offset) if not isinstance(w.type, Var) or w.offset >= 0 else ""
        what = w.doc or ("padding, 0" if w.padding else "")
        rows.append(f"| {off} | {w.type.name} | {w.name} | {w.source.describe()} | {what} |")
    return rows


def render_wire_tables() -> str:
    """The record layout: the header, then each kind's fixed and variable parts."""
    head = "| off | type | field | from | meaning |\n| --- | --- | --- | --- | --- |"
    out = [f"Header ({HEADER_SIZE} bytes), every record:", "", head, *_wire_rows(iter(EXEC.wire[:len(HEADER)]))]
    for k in KINDS.values():
        out += ["", f"{k.label} ({k.id}), {k.doc}: fixed part {k.fixed_size} bytes"
                    + (", then " + ", ".join(f"`{v.name}`" for v in k.var) + " (variable, in this order)"
                       if k.var else ""), "", head, *_wire_rows(iter(k.wire[len(HEADER):]))]
    return "\n".join(out)
