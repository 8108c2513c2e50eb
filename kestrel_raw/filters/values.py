"""The filter keys, the event types each applies to, and the parsing of one value of each.  Pure.

A key is named three ways: its attribute here (``path_prefix``), its flag (``--path-prefix``, and the
``--exclude-path-prefix`` twin) and its config-file key (``path-prefix``, ``exclude-path-prefix``: the
flag without its dashes).  Errors name the setting through a ``name`` function given the config key, so that
the command line says ``--uid -1 ...`` and a config file ``FILE line 3: uid -1 ...`` (cli/settings.py).
"""
from __future__ import annotations

import ipaddress
from typing import Callable

from kestrel_raw import spec
from kestrel_raw.errors import ConfigError
from kestrel_raw.programs import filtermaps
from kestrel_raw.spec import EventType

# The keys, in the order of filtermaps.KEY_BITS (the flags' documentation order).
KEYS = ("pid", "uid", "comm", "exe", "cgroup", "container", "port", "daddr", "path_prefix")
# Each key's bit in a row of kr_fcfg (filtermaps.KEY_BITS names path_prefix "path": what it is looked up with).
KEY_BIT = {key: filtermaps.KEY_BITS["path" if key == "path_prefix" else key] for key in KEYS}
assert tuple(filtermaps.KEY_BITS) == tuple("path" if k == "path_prefix" else k for k in KEYS)

# The event types a record is written for (every one carries the common header: pid, uid, comm, cgroup).
RECORD_TYPES: tuple[EventType, ...] = tuple(k.event_type for k in spec.EVENT_KINDS.values())
# The types whose record has the field a key looks at; the header's keys apply to every type.
APPLIES: dict[str, tuple[EventType, ...]] = {
    **{key: RECORD_TYPES for key in ("pid", "uid", "comm", "exe", "cgroup", "container")},
    "port": (EventType.CONNECT,),
    "daddr": (EventType.CONNECT,),
    "path_prefix": (EventType.OPEN,),
}
# --failed-only / --success-only: the kinds whose record has a ``ret`` (their spec says so).
OUTCOME_TYPES: tuple[EventType, ...] = tuple(k.event_type for k in spec.EVENT_KINDS.values()
                                             if any(w.name == "ret" for w in k.wire))

MAX_PID = 1 << 22  # PID_MAX_LIMIT on 64-bit kernels (include/linux/threads.h): pids are below it
MAX_UID = 0xFFFFFFFE  # (uid_t)-1 is "no uid" (INVALID_UID), never a process's
MAX_RATE = 1_000_000  # events per second: a limit above what one kind's program can produce on a host
COMM_MAX = spec.TASK_COMM_LEN - 1  # the kernel keeps 15 bytes and a NUL
CONTAINER_ANY, CONTAINER_NONE = "any", "none"
CONTAINER_PREFIX_MIN = 12  # as docker ps shows an id: shorter prefixes collide


def config_key(key: str, exclude: bool = False) -> str:
    """``path_prefix`` -> ``path-prefix`` (``exclude-path-prefix``): the flag without its dashes."""
    return ("exclude-" if exclude else "") + key.replace("_", "-")


def flag_name(config: str) -> str:
    """The default ``name`` function: the flag (``--exclude-uid``)."""
    return f"--{config}"


Name = Callable[[str], str]


def _int(text: object, what: str, low: int, high: int, name: str, hint: str = "") -> int:
    if isinstance(text, bool):
        raise ConfigError(f"{name} {text!r} is not {what}: give a number from {low} to {high}{hint}")
    if isinstance(text, int):
        value = text
    else:
        s = str(text).strip()
        if not s.isdigit() and not (s.startswith("-") and s[1:].isdigit()):
            raise ConfigError(f"{name} {text} is not {what}: give a number from {low} to {high}{hint}")
        value = int(s)
    if not low <= value <= high:
        raise ConfigError(f"{name} {text} is not {what}: give a number from {low} to {high}{hint}")
    return value


def parse_pid(text: object, name: str) -> int:
    return _int(text, "a process id", 1, MAX_PID - 1, name)


def parse_uid(text: object, name: str) -> int:
    return _int(text, "a user id", 0, MAX_UID, name)


def parse_port(text: object, name: str) -> int:
    return _int(text, "a port", 1, 65535, name)


def parse_comm(text: object, name: str) -> bytes:
    s = str(text)
    raw = s.encode("utf-8", "surrogateescape")
    if not raw:
        raise ConfigError(f"{name} is empty: give a command name (as ps -o comm shows it)")
    if b"\0" in raw:
        raise ConfigError(f"{name} {s!r} holds a NUL byte")
    if len(raw) > COMM_MAX:
        raise ConfigError(f"{name} {s!r} is {len(raw)} bytes long: the kernel keeps at most {COMM_MAX} bytes of a "
                          f"command name, so it could never match; give its first {COMM_MAX} "
                          f"({raw[:COMM_MAX].decode('utf-8', 'replace')!r})")
    return raw


def parse_path(text: object, name: str, what: str) -> str:
    s = str(text)
    if not s:
        raise ConfigError(f"{name} is empty: give {what}")
    if "\0" in s:
        raise ConfigError(f"{name} {s!r} holds a NUL byte")
    return s


def parse_path_prefix(text: object, name: str) -> bytes:
    raw = parse_path(text, name, "a path prefix (/etc/)").encode("utf-8", "surrogateescape")
    if len(raw) > filtermaps.PATH_KEY_MAX:
        raise ConfigError(f"{name} is {len(raw)} bytes long: the kernel compares at most {filtermaps.PATH_KEY_MAX} "
                          f"bytes of a path, give a shorter prefix")
    return raw


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_daddr(text: object, name: str) -> Network:
    s = str(text).strip()
    try:
        return ipaddress.ip_network(s, strict=False)
    except ValueError:
        raise ConfigError(f"{name} {s} is not an IPv4 or IPv6 address or network: give ADDR or ADDR/PREFIX "
                          f"(10.0.0.0/8, ::1, 2001:db8::/32)") from None


def parse_container(text: object, name: str) -> str:
    s = str(text).strip().lower()
    if s in (CONTAINER_ANY, CONTAINER_NONE):
        return s
    if not (CONTAINER_PREFIX_MIN <= len(s) <= 64 and all(c in "0123456789abcdef" for c in s)):
        raise ConfigError(f"{name} {text} is not a container: give the first {CONTAINER_PREFIX_MIN} or more hex "
                          f"digits of a container's id (docker ps shows 12), any (in a container) or none (on "
                          f"the host)")
    return s


PARSERS: dict[str, Callable[[object, str], object]] = {
    "pid": parse_pid,
    "uid": parse_uid,
    "comm": parse_comm,
    "exe": lambda text, name: parse_path(text, name, "the path of an executable"),
    "cgroup": lambda text, name: parse_path(text, name, "a cgroup v2 path"),
    "container": parse_container,
    "port": parse_port,
    "daddr": parse_daddr,
    "path_prefix": parse_path_prefix,
}


def parse_rate_limit(item: object, name: str) -> tuple[EventType, int]:
    """``"open=100"`` -> (EventType.OPEN, 100)."""
    s = str(item).strip()
    label, sep, count = s.partition("=")
    if not sep:
        raise ConfigError(f"{name} {s} is not TYPE=N: give an event type and a number of events per second "
                          f"(open=100)")
    valid = ", ".join(t.label for t in RECORD_TYPES)
    et = EventType.__members__.get(label.strip().upper())
    if et is None or et not in RECORD_TYPES:
        raise ConfigError(f"{name} {s}: unknown event type {label.strip()!r}; valid: {valid}")
    n = count.strip()
    if not n.isdigit() or not 1 <= int(n) <= MAX_RATE:
        raise ConfigError(f"{name} {s}: N must be a whole number of events per second, from 1 to {MAX_RATE}")
    return et, int(n)


def describe_value(key: str, value: object) -> object:
    """A parsed value as the flag takes it (for the status event and messages)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return str(value.network_address) if value.prefixlen == value.max_prefixlen else str(value)
    return value
