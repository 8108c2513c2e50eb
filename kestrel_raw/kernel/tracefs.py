"""tracefs: where it is, tracepoint ids, and tracepoint record layouts (``format`` files).

A classic tracepoint program reads its context at the offsets the kernel publishes in
``<tracefs>/events/<group>/<name>/format``; they differ between kernels (``sched_process_fork``'s comm is
an inline ``char[16]`` on 6.1 and a ``__data_loc`` string on 6.18), so they are always read, never
guessed.  ``parse_format`` and ``parse_mountinfo`` are pure; the rest reads the running system.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from kestrel_raw.errors import SetupError

DEFAULT_TRACEFS = "/sys/kernel/tracing"
LOCKDOWN_PATH = "/sys/kernel/security/lockdown"
MOUNTINFO_PATH = "/proc/self/mountinfo"
FILESYSTEMS_PATH = "/proc/filesystems"

# Group and event names are C identifiers in the kernel; refusing anything else also keeps a name such
# as "../x" from walking out of the events directory.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*\Z")


# -- mountinfo ---------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class MountEntry:
    """One line of /proc/<pid>/mountinfo (proc(5)): the fields this module needs."""

    mount_point: str
    fstype: str
    source: str
    options: str


def _unescape(field: str) -> str:
    # The kernel escapes space, tab, newline and backslash in paths as \ooo octal (fs/proc_namespace.c).
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """The mounts in a mountinfo text, in order (later lines are mounted over earlier ones)."""
    entries = []
    for line in text.splitlines():
        parts = line.split()
        if "-" not in parts:
            continue
        sep = parts.index("-")
        if sep < 6 or len(parts) < sep + 3:
            continue
        entries.append(MountEntry(mount_point=_unescape(parts[4]), fstype=parts[sep + 1],
                                  source=_unescape(parts[sep + 2]), options=parts[5]))
    return entries


def tracefs_in_mountinfo(text: str) -> str | None:
    """Where tracefs can be reached according to ``text``: a tracefs mount (``/sys/kernel/tracing``
    preferred), else ``<debugfs>/tracing`` (debugfs mounts tracefs there on first access), else None."""
    entries = parse_mountinfo(text)
    tracefs = [e.mount_point for e in entries if e.fstype == "tracefs"]
    if tracefs:
        return DEFAULT_TRACEFS if DEFAULT_TRACEFS in tracefs else tracefs[0]
    debugfs = [e.mount_point for e in entries if e.fstype == "debugfs"]
    if debugfs:
        return os.path.join(debugfs[0], "tracing")
    return None


# -- finding and mounting ------------------------------------------------------------------------------------

def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _usable(root: str) -> bool:
    return os.path.isdir(os.path.join(root, "events"))


def _why_not_mountable() -> str | None:
    """Why mounting tracefs here cannot work, or None when it might."""
    filesystems = _read(FILESYSTEMS_PATH)
    if filesystems is not None and not any(line.split()[-1:] == ["tracefs"] for line in filesystems.splitlines()):
        return ("this kernel has no tracefs (it is not in /proc/filesystems): it was built without "
                "CONFIG_TRACING / CONFIG_FTRACE; use a kernel with tracing enabled")
    lockdown = _read(LOCKDOWN_PATH)
    if lockdown is not None and "[confidentiality]" in lockdown:
        return ("the kernel is locked down in confidentiality mode (/sys/kernel/security/lockdown), which "
                "hides tracefs; boot with lockdown=integrity or none")
    if os.geteuid() != 0:
        return (f"tracefs is not mounted and only root can mount it: run as root, or have root run "
                f"`mount -t tracefs nodev {DEFAULT_TRACEFS}`")
    return None


def find_tracefs(mount: bool = True) -> str:
    """The directory where tracefs is mounted (it holds ``events/``).

    Looks at /proc/self/mountinfo; when tracefs is not mounted and ``mount`` is true, mounts it at
    /sys/kernel/tracing with mount(8).  Raises ``SetupError`` saying why tracefs cannot be had.
    """
    mountinfo = _read(MOUNTINFO_PATH) or ""
    found = tracefs_in_mountinfo(mountinfo)
    if found is not None and _usable(found):
        return found
    if _usable(DEFAULT_TRACEFS):  # mountinfo unreadable, or a mount namespace that hides it
        return DEFAULT_TRACEFS
    why = _why_not_mountable()
    if why is not None:
        raise SetupError(f"cannot use tracefs: {why}")
    if not mount:
        raise SetupError(f"tracefs is not mounted (no tracefs in {MOUNTINFO_PATH}); mount it with "
                         f"`mount -t tracefs nodev {DEFAULT_TRACEFS}` or call find_tracefs(mount=True)")
    mount_tracefs(DEFAULT_TRACEFS)
    if not _usable(DEFAULT_TRACEFS):
        raise SetupError(f"mounted tracefs at {DEFAULT_TRACEFS} but it has no events/ directory: the "
                         f"kernel hides trace events (lockdown?) or was built without CONFIG_TRACING")
    return DEFAULT_TRACEFS


def mount_tracefs(target: str = DEFAULT_TRACEFS) -> None:
    """``mount -t tracefs nodev <target>``; raises ``SetupError`` with mount's own message on failure.

    mount(8) rather than mount(2): only ``syscall.py`` may use ctypes, and this happens once per boot.
    """
    tool = shutil.which("mount") or next((p for p in ("/usr/bin/mount", "/bin/mount") if os.path.exists(p)),
                                         None)
    if tool is None:
        raise SetupError(f"tracefs is not mounted and there is no mount(8) to mount it: run "
                         f"`mount -t tracefs nodev {target}` by other means")
    proc = subprocess.run([tool, "-t", "tracefs", "nodev", target], capture_output=True, text=True)
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip() or f"exit status {proc.returncode}"
        raise SetupError(f"could not mount tracefs at {target}: {msg}")


# -- tracepoints ---------------------------------------------------------------------------------------------

def _event_dir(group: str, name: str, tracefs: str | None) -> str:
    for what, value in (("group", group), ("name", name)):
        if not _NAME.match(value):
            raise ValueError(f"tracepoint {what} {value!r} is not a valid event name")
    root = tracefs if tracefs is not None else find_tracefs()
    path = os.path.join(root, "events", group, name)
    if not os.path.isdir(path):
        if os.path.isdir(os.path.join(root, "events", group)):
            why = f"group {group!r} exists but has no event {name!r}"
        else:
            why = f"no group {group!r} in {os.path.join(root, 'events')}"
        raise SetupError(f"no tracepoint {group}:{name} on this kernel ({why}); check the name with "
                         f"`ls {os.path.join(root, 'events', group)}`")
    return path


def _read_event_file(group: str, name: str, leaf: str, tracefs: str | None) -> str:
    path = os.path.join(_event_dir(group, name, tracefs), leaf)
    try:
        with open(path) as f:
            return f.read()
    except PermissionError:
        raise SetupError(f"cannot read {path}: permission denied (run as root)") from None
    except FileNotFoundError:
        raise SetupError(f"tracepoint {group}:{name} has no {leaf} file ({path})") from None


def tracepoint_id(group: str, name: str, tracefs: str | None = None) -> int:
    """The perf event id of tracepoint ``group:name`` (``events/<group>/<name>/id``; differs per boot)."""
    return int(_read_event_file(group, name, "id", tracefs))


def tracepoint_format(group: str, name: str, tracefs: str | None = None, annotate: bool = True) -> "TracepointFormat":
    """The record layout of tracepoint ``group:name``, from its ``format`` file.

    With ``annotate`` each field's offset is a ``kestrel_raw.asm.Sourced`` int naming the tracefs field it
    was read from, so that a program's listing can say where the constant came from; it is the plain int
    everywhere else.
    """
    fmt = dataclasses.replace(parse_format(_read_event_file(group, name, "format", tracefs)), group=group)
    return fmt.sourced() if annotate else fmt


# -- format files --------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Field:
    """One field of a tracepoint record, as the ``format`` file declares it.

    ``type`` is the C element type (``"char"`` for ``char comm[16]`` and for ``__data_loc char[] filename``,
    ``"const char *"``), ``array_len`` the element count of a fixed array, 0 for a flexible ``[]`` array,
    None otherwise.  A ``__data_loc`` field (``is_data_loc``) is a u32 holding ``length << 16 | offset``
    of data placed later in the record (offset from the record start); ``__rel_loc`` (``is_rel_loc``) is
    the same with the offset counted from the end of the field.  ``decl`` is the declaration as written.
    """

    name: str
    type: str
    offset: int
    size: int
    signed: bool
    is_data_loc: bool = False
    is_rel_loc: bool = False
    array_len: int | None = None
    decl: str = ""

    @property
    def is_common(self) -> bool:
        """One of the header fields every event has (``common_type``, ``common_pid``...)."""
        return self.name.startswith("common_")


@dataclass(frozen=True, slots=True)
class TracepointFormat:
    """A parsed ``format`` file: ``fields`` in file order (common fields first)."""

    name: str
    id: int | None
    fields: tuple[Field, ...]
    print_fmt: str = ""
    group: str | None = None

    @property
    def title(self) -> str:
        return f"{self.group}:{self.name}" if self.group else self.name

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def event_fields(self) -> tuple[Field, ...]:
        """The fields after the common header: the event's own arguments."""
        return tuple(f for f in self.fields if not f.is_common)

    def has_field(self, name: str) -> bool:
        return any(f.name == name for f in self.fields)

    def sourced(self) -> "TracepointFormat":
        """This format with each field's offset carrying its provenance (``tracefs GROUP:EVENT FIELD``)."""
        from kestrel_raw.asm.annotate import Sourced, tracefs_field

        fields = tuple(dataclasses.replace(f, offset=Sourced(int(f.offset), tracefs_field(self.group or "?", self.name,
                                                                                          f.name)))
                       for f in self.fields)
        return dataclasses.replace(self, fields=fields)

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise SetupError(f"tracepoint {self.title} has no field {name!r} on this kernel; its fields are: "
                         f"{', '.join(f.name for f in self.event_fields) or '(none)'}")


_FIELD_LINE = re.compile(
    r"^\s*field:(?P<decl>[^;]*);\s*offset:(?P<offset>\d+);\s*size:(?P<size>\d+);(?:\s*signed:(?P<signed>-?\d+);)?")
# "<type> <name>" with an optional "[N]" / "[]" after the name.
_DECL = re.compile(r"^(?P<type>.*?)\s*\b(?P<name>[A-Za-z_]\w*)\s*(?:\[(?P<len>[^\]]*)\])?\s*$")


def _parse_decl(decl: str) -> tuple[str, str, bool, bool, int | None]:
    text = decl.strip()
    data_loc = rel_loc = False
    if text.startswith("__data_loc "):
        data_loc, text = True, text[len("__data_loc "):]
    elif text.startswith("__rel_loc "):
        rel_loc, text = True, text[len("__rel_loc "):]
    m = _DECL.match(text)
    if m is None or not m.group("type"):
        raise ValueError(f"cannot parse tracepoint field declaration {decl!r}")
    ctype = m.group("type").strip()
    array_len = None
    if m.group("len") is not None:
        n = m.group("len").strip()
        array_len = int(n, 0) if n else 0
    if data_loc or rel_loc:
        # "__data_loc char[] filename": the brackets belong to the type, the length is dynamic.
        ctype, array_len = re.sub(r"\s*\[\s*\]$", "", ctype), None
    return m.group("name"), ctype, data_loc, rel_loc, array_len


def parse_format(text: str) -> TracepointFormat:
    """Parse a tracefs ``format`` file (pure)."""
    name = ""
    tp_id = None
    fields = []
    print_fmt = ""
    for line in text.splitlines():
        if line.startswith("name:"):
            name = line[len("name:"):].strip()
        elif line.startswith("ID:"):
            tp_id = int(line[len("ID:"):].strip())
        elif line.startswith("print fmt:"):
            print_fmt = line[len("print fmt:"):].strip()
        elif line.lstrip().startswith("field:"):
            m = _FIELD_LINE.match(line)
            if m is None:
                raise ValueError(f"tracepoint format {name or '?'}: cannot parse field line {line.strip()!r}")
            fname, ctype, data_loc, rel_loc, array_len = _parse_decl(m.group("decl"))
            fields.append(Field(name=fname, type=ctype, offset=int(m.group("offset")), size=int(m.group("size")),
                                signed=m.group("signed") not in (None, "0"), is_data_loc=data_loc,
                                is_rel_loc=rel_loc, array_len=array_len, decl=m.group("decl").strip()))
    if not name:
        raise ValueError("not a tracepoint format file: no 'name:' line")
    return TracepointFormat(name=name, id=tp_id, fields=tuple(fields), print_fmt=print_fmt)
