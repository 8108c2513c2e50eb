"""``kestrel-raw run``: watch the whole host and write one JSON object per event.

Outputs: standard output (the default), a file (``--output``, rotated with ``--rotate-size``), syslog
(``--syslog``), a NATS JetStream stream (``--nats``), any of them at once; ``--metrics`` serves Prometheus
metrics.  Every setting can also come from a TOML file (``--config``; cli/settings.py), and SIGHUP reads it
again.

Exit status: 0 after a clean stop (SIGINT, SIGTERM, --duration, or the output pipe closing); 2 for a bad
command line or configuration; 1 when the host cannot run the collector (privilege, tracefs, BTF, kernel)
or an output cannot be opened or written (a full disk), with one line on stderr that says what is wrong.

Privileges: set-up needs root, or CAP_BPF + CAP_PERFMON + CAP_SYS_ADMIN (tracefs, other collectors'
maps).  Once the programs are attached and the rings mapped, the collector becomes ``--user`` (default
nobody), empties its capability sets and bounding set and sets no_new_privs (``--keep-privileges`` turns
this off); the outputs, the stats and stopping work on the fds it already holds.  So every output is
opened first, as root: files, the NATS spool, the metrics socket.  Rotation renames files after the drop,
as that user: the output's directory must be writable by it (checked before anything is loaded).
"""
from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
from dataclasses import dataclass, field

# trio is imported before anything is attached: importing it afterwards delayed the first events by
# ~190 ms on this VM (KERNEL-NOTES.md).
import trio

from kestrel_raw.cli import common
from kestrel_raw.cli.common import EXIT_OK, EXIT_SETUP, EXIT_USAGE, error, one_line, silence_stdout
from kestrel_raw.cli.settings import Settings, SettingError, load as load_settings
from kestrel_raw.cli.shaping import add_run_audit_arguments, run_audit_kwargs, verify_loaded
from kestrel_raw.errors import ConfigError, KestrelError, PrivilegeError, SetupError

NAME = "run"
HELP = "collect events and write them as JSON lines (standard output, a file, syslog, NATS)"

MIB = 1 << 20
# Defaults applied after the command line and the config file are merged (argparse's are all None, so
# that which source gave a value stays known); the collector's own come from CollectorConfig.
DEFAULTS = {
    "user": "nobody",
    "keep_privileges": False,
    "rotate_keep": 5,
    "syslog_facility": "daemon",
    "nats_buffer": "/var/lib/kestrel-raw/nats.spool",
    "nats_buffer_size": 256 * MIB,
    "nats_flush_timeout": 5.0,
}
# CollectorConfig's (and limits.py's) names for the settings, for its error messages: internal -> dest.
CONFIG_NAMES = {
    "event_types": "events", "event types": "events", "program_path": "object", "dump_dir": "dump_programs",
    "buffers": "buffers",
    "buffer_size": "buffer_size", "queue_size": "queue_size", "queue_policy": "queue_policy", "btf_path": "btf",
    "wakeup_bytes": "wakeup_bytes", "poll_interval": "poll_interval", "flush_interval": "flush_interval",
    "latency": "latency", "drop_uid": "user", "drop_gid": "user", "stop_timeout": "stop_timeout",
    "ancestors": "ancestors", "context": "context", "threads": "threads", "container_sockets": "container_sockets",
    "status_interval": "status_interval",
}


def add_arguments(run: argparse.ArgumentParser) -> None:
    from kestrel_raw.sinks.syslog import DEFAULT_ADDRESS, FACILITIES

    a = run.add_argument
    a("--config", metavar="FILE",
      help="read settings from FILE (TOML): its keys are these flags without the dashes (buffer-size = 4194304); "
           "a flag given here overrides the file; SIGHUP reads it again")
    g = run.add_argument_group("events").add_argument
    g("--events", metavar="TYPES", help="comma-separated event types: exec, open, connect, exit, fork, "
      "shell_command, dns_query, or all (default: exec, open, connect, exit; none with --object)").comma_list = True
    g("--object", metavar="FILE",
      help="also load the BPF object FILE (clang -target bpf, libbpf style): its programs are attached where "
           "their SEC() names say and each record of its ring buffers written as {\"object\", \"map\", \"len\", "
           "\"hex\"}; the built-in programs run only if --events is given")
    g("--duration", type=float, metavar="SECONDS", help="stop after SECONDS")
    g("--status-interval", type=float, metavar="SECONDS",
      help="write a status event (the host's identity and the counters so far: delivered, lost, filtered) "
           "every SECONDS after the one at start (default 60; 0: only the one at start)")
    g = run.add_argument_group("process context").add_argument
    g("--context", action=argparse.BooleanOptionalAction,
      help="a process cache adds exe, cwd, namespaces, hostname, cgroup and container keys to every event "
           "(default on; --no-context: those keys are null)")
    g("--ancestors", type=int, metavar="N",
      help="add \"ancestors\" to every event: up to N ancestors from the process cache, nearest first "
           "(default 0: none)")
    g("--threads", action=argparse.BooleanOptionalAction,
      help="fork events for new threads too (\"thread\":true); by default new processes only")
    g("--container-socket", action="append", metavar="PATH", dest="container_sockets",
      help="a container runtime's API socket to ask for container names and images (docker's Engine API, or "
           "podman's service); repeat for several (default /run/podman/podman.sock, /var/run/docker.sock)")
    add_filter_arguments(run.add_argument_group(
        "filters, in the kernel (each flag may be repeated: values of one flag are OR-ed, different flags "
        "AND-ed, an --exclude-... wins; SIGHUP applies a changed --config file's filters at once)"))
    g = run.add_argument_group("outputs (standard output when none is given)").add_argument
    g("--output", "-o", metavar="FILE",
      help="append JSON lines to FILE (created with mode 0600; a symbolic link, or an existing file that is "
           "another user's or that others can write, is refused); - is standard output")
    g("--rotate-size", type=int, metavar="BYTES",
      help="start a new --output file when it would exceed BYTES: FILE becomes FILE.1, FILE.1 becomes FILE.2...")
    g("--rotate-keep", type=int, metavar="N", help="rotated files kept: FILE.1 to FILE.N (default 5)")
    g("--syslog", nargs="?", const=DEFAULT_ADDRESS, metavar="ADDR",
      help=f"send each event to syslog as an RFC 5424 message: a local socket (default {DEFAULT_ADDRESS}), "
           f"udp://HOST:PORT or tcp://HOST:PORT")
    g("--syslog-facility", choices=sorted(FACILITIES, key=FACILITIES.get), metavar="NAME",
      help="syslog facility (default daemon)")
    g("--nats", metavar="URL",
      help="publish events to a NATS JetStream stream: nats://HOST:PORT, several separated by commas "
           "(needs pip install 'kestrel-raw[nats]')")
    g("--subject", metavar="SUBJECT", help="the subject to publish to (a stream must take it); needed with --nats")
    g("--nats-buffer", metavar="FILE",
      help="file that keeps events while no NATS server answers, and across restarts "
           "(default /var/lib/kestrel-raw/nats.spool)")
    g("--nats-buffer-size", type=int, metavar="BYTES",
      help="size of --nats-buffer; events that do not fit are dropped and counted (default 268435456)")
    g("--nats-flush-timeout", type=float, metavar="SECONDS",
      help="at stop, how long to keep sending before leaving the rest in --nats-buffer (default 5)")
    g("--metrics", metavar="ADDR",
      help="serve Prometheus metrics at http://ADDR/metrics, for example 127.0.0.1:9464 "
           "(needs pip install 'kestrel-raw[metrics]')")
    g = run.add_argument_group("ring buffers and delivery").add_argument
    g("--buffers", type=int, metavar="N", help="number of ring buffers (default: one per CPU, at most 4)")
    g("--buffer-size", type=int, metavar="BYTES",
      help="bytes per ring buffer: a power of two, a multiple of the page size (default 8388608)")
    g("--queue-size", type=int, metavar="N", help="events held between the ring readers and the outputs (default 8192)")
    g("--queue-policy", choices=("block", "drop"),
      help="when the outputs are slower than the events: block (default) stops reading the rings, so the "
           "kernel drops and counts what does not fit; drop keeps reading and drops, counting them, the "
           "events the queue cannot take")
    g("--latency", choices=("batch", "low"),
      help="batch (default): the kernel wakes the reader once per --wakeup-bytes, the reader also drains "
           "every --poll-interval, lines are flushed every --flush-interval; low: the reader polls without "
           "sleeping (one busy CPU) and flushes every batch")
    g("--wakeup-bytes", type=int, metavar="BYTES",
      help="bytes a ring holds before the kernel wakes the reader (default: buffer size / 8; 0: every record)")
    g("--poll-interval", type=float, metavar="SECONDS",
      help="seconds between drains without a wakeup: the longest a lone event waits (default 0.1)")
    g("--flush-interval", type=float, metavar="SECONDS",
      help="seconds a written line may stay buffered (default 0.1)")
    g("--stop-timeout", type=float, metavar="SECONDS",
      help="seconds a stop may spend writing out what the rings still hold (default 5); the rest is counted "
           "as dropped")
    g = run.add_argument_group("host and privileges").add_argument
    g("--btf", metavar="PATH",
      help="kernel BTF to take struct layouts from (default: $KESTREL_BTF, else /sys/kernel/btf/vmlinux)")
    g("--dump-programs", metavar="DIR", help="write the disassembly of every program loaded into DIR (for audit)")
    g("--user", metavar="USER",
      help="user (name or uid) to become once attached, when run as root (default nobody)")
    g("--keep-privileges", action=argparse.BooleanOptionalAction,
      help="do not drop capabilities and root's uid once attached (debugging only)")
    add_run_audit_arguments(run.add_argument_group("audit (docs/audit.md)"))


# The filter flags: config key -> (metavar, what it matches).  The --exclude-... twin of each excludes.
FILTER_FLAGS = {
    "pid": ("PID", "that process and its descendants, those born later too (up to 32 generations down)"),
    "uid": ("UID", "processes of that (real) user id"),
    "comm": ("NAME", "processes whose command name is NAME (at most 15 bytes, as ps -o comm shows it)"),
    "exe": ("PATH", "processes running the executable PATH (its device and inode, read at start and at SIGHUP)"),
    "cgroup": ("PATH", "processes in that cgroup v2 or below it (a path under the v2 mount, or relative to "
                       "its root, as /proc/PID/cgroup shows it)"),
    "container": ("ID", "processes in the container whose id starts with ID (12 or more hex digits), any "
                        "(in a container) or none (on the host)"),
    "port": ("PORT", "connect events to that destination port"),
    "daddr": ("ADDR[/PREFIX]", "connect events to that IPv4 or IPv6 address or network"),
    "path-prefix": ("PREFIX", "open events whose path starts with PREFIX (the opened file's absolute path when "
                              "the open succeeded, the path as given otherwise; bytes, so /etc/ and not /etc)"),
}
FILTER_DESTS = tuple([k.replace("-", "_") for k in FILTER_FLAGS] + [f"exclude_{k.replace('-', '_')}" for k in FILTER_FLAGS]
                     + ["failed_only", "success_only", "rate_limit"])


def add_filter_arguments(g) -> None:
    for key, (metavar, what) in FILTER_FLAGS.items():
        g.add_argument(f"--{key}", action="append", metavar=metavar, help=f"only {what}")
        g.add_argument(f"--exclude-{key}", action="append", metavar=metavar, help=f"not {what}")
    g.add_argument("--failed-only", action="store_true", default=None,
                   help="only events whose ret is negative (a failed open, connect, exec, getaddrinfo)")
    g.add_argument("--success-only", action="store_true", default=None, help="only events whose ret is 0 or more")
    g.add_argument("--rate-limit", action="append", metavar="TYPE=N",
                   help="at most N events of TYPE per second (a token bucket in the kernel); the events held back "
                        "are counted as lost (rate_limited)")


def plan_filters(settings: Settings, event_types) -> object:
    """The Filters the settings give, checked against ``event_types`` and this machine (an --exe that does
    not exist, a --cgroup or --container that names nothing): SettingError naming the flag as given."""
    from kestrel_raw.filters import Filters
    from kestrel_raw.filters.lookup import read_host
    from kestrel_raw.filters.values import KEYS

    name = lambda key: settings.describe(key.replace("-", "_"))  # noqa: E731
    values = settings.values
    try:
        filters = Filters.parse({k: getattr(values, k, None) for k in KEYS},
                                {k: getattr(values, "exclude_" + k, None) for k in KEYS},
                                failed_only=bool(getattr(values, "failed_only", None)),
                                success_only=bool(getattr(values, "success_only", None)),
                                rate_limits=getattr(values, "rate_limit", None) or (), name=name)
        if not filters.empty:
            filters.check(event_types, name=name)
            read_host(filters, name=name)
    except ConfigError as e:
        raise SettingError(str(e)) from None
    return filters


# -- from settings to a plan ----------------------------------------------------------------------------------

@dataclass
class Plan:
    settings: Settings
    config: object  # CollectorConfig
    duration: float | None
    output: str | None  # a path, or None for standard output (when it is an output at all)
    stdout: bool
    rotate_size: int | None
    rotate_keep: int
    syslog: object | None  # sinks.syslog.Address
    syslog_facility: str
    metrics: str | None
    nats: list[str] = field(default_factory=list)
    subject: str | None = None
    nats_buffer: str = ""
    nats_buffer_size: int = 0
    nats_flush_timeout: float = 5.0
    also_owner: int | None = None  # the uid the collector becomes, or None when it keeps its own
    verify: bool = False  # --verify: each program read back and checked after loading


def _value(settings: Settings, dest: str):
    v = getattr(settings.values, dest, None)
    if v is None and dest == "btf":
        v = os.environ.get("KESTREL_BTF") or None
    return DEFAULTS.get(dest) if v is None else v


def _user_ids(settings: Settings, user: str) -> tuple[int, int]:
    import pwd

    try:
        entry = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        if user.isdigit():
            return int(user), int(user)
        raise settings.error("user", f"{user!r}: no such user; give a user name or a numeric uid") from None


def make_plan(settings: Settings) -> Plan:
    """Check every setting (nothing is opened or loaded); SettingError/ConfigError name the setting."""
    from kestrel_raw.config import DEFAULT_EVENT_TYPES, CollectorConfig, parse_event_types
    from kestrel_raw.limits import check_rings

    v = lambda dest: _value(settings, dest)  # noqa: E731
    duration = v("duration")
    if duration is not None and not duration > 0:
        raise settings.error("duration", f"must be a positive number of seconds, got {duration}")
    try:
        uid, gid = _user_ids(settings, v("user"))
        kwargs = {name: v(name) for name in ("buffers", "buffer_size", "queue_size", "queue_policy", "latency",
                                              "wakeup_bytes", "poll_interval", "flush_interval",
                                              "stop_timeout", "context", "ancestors", "threads",
                                              "container_sockets", "status_interval")
                  if v(name) is not None}
        if v("btf"):
            kwargs["btf_path"] = v("btf")
        kwargs.update(run_audit_kwargs(settings.values))
        keep = v("keep_privileges")
        events = v("events")
        if events is None:  # the default types; none when a BPF object is what the user asked for
            event_types = () if v("object") else DEFAULT_EVENT_TYPES
        else:
            event_types = parse_event_types(events)
        filters = plan_filters(settings, event_types)
        config = CollectorConfig(event_types=event_types, program_path=v("object"), dump_dir=v("dump_programs"),
                                 drop_privileges=not keep, drop_uid=uid, drop_gid=gid, deliver="json",
                                 filters=filters, **kwargs)
        check_rings(config.buffers, config.buffer_size)
    except SettingError:
        raise
    except ConfigError as e:
        raise SettingError(settings.rename(str(e), CONFIG_NAMES)) from None
    dropping = not keep and os.geteuid() == 0
    plan = Plan(settings=settings, config=config, duration=duration, output=None, stdout=False,
                rotate_size=v("rotate_size"), rotate_keep=v("rotate_keep"), syslog=None,
                syslog_facility=v("syslog_facility"), metrics=v("metrics"),
                also_owner=uid if dropping else None, verify=bool(v("verify")))
    output = v("output")
    if output == "-":
        plan.stdout = True
    elif output is not None:
        plan.output = output
    if plan.rotate_size is not None:
        if plan.rotate_size <= 0:
            raise settings.error("rotate_size", f"must be a positive number of bytes, got {plan.rotate_size}")
        if plan.output is None:
            raise settings.error("rotate_size", "rotates the --output file: give --output FILE")
    if plan.rotate_keep < 1:
        raise settings.error("rotate_keep", f"must be at least 1, got {plan.rotate_keep}")
    if v("syslog") is not None:
        from kestrel_raw.sinks.syslog import parse_address

        try:
            plan.syslog = parse_address(v("syslog"))
        except ValueError as e:
            raise settings.error("syslog", str(e)) from None
    if plan.metrics is not None:
        from kestrel_raw.metrics import import_prometheus, parse_address as metrics_address

        try:
            metrics_address(plan.metrics)
            import_prometheus()
        except (ValueError, ImportError) as e:
            raise settings.error("metrics", str(e)) from None
    _plan_nats(settings, plan, v)
    if not (plan.output or plan.syslog or plan.nats):
        plan.stdout = True
    if plan.rotate_size is not None and dropping:
        _check_rotation_directory(settings, plan.output, uid, gid, v("user"))
    return plan


def _plan_nats(settings: Settings, plan: Plan, v) -> None:
    if v("nats") is None:
        if v("subject") is not None:
            raise settings.error("subject", "names the subject to publish to on --nats: give --nats URL too")
        return
    servers = [s.strip() for s in v("nats").split(",") if s.strip()]
    bad = [s for s in servers if not s.startswith(("nats://", "tls://"))]
    if not servers or bad:
        raise settings.error("nats", f"{(bad or [v('nats')])[0]!r} is not a nats://HOST:PORT URL")
    if not v("subject"):
        raise settings.error("nats", "needs --subject SUBJECT (the subject the stream takes)")
    try:
        from kestrel_raw.sinks.nats import import_nats

        import_nats()
    except ImportError as e:
        raise settings.error("nats", str(e)) from None
    if v("nats_buffer_size") < 1 * MIB:
        raise settings.error("nats_buffer_size", f"must be at least 1048576 bytes, got {v('nats_buffer_size')}")
    if not v("nats_flush_timeout") >= 0:
        raise settings.error("nats_flush_timeout", f"must be 0 or more seconds, got {v('nats_flush_timeout')}")
    plan.nats, plan.subject = servers, v("subject")
    plan.nats_buffer, plan.nats_buffer_size = v("nats_buffer"), v("nats_buffer_size")
    plan.nats_flush_timeout = v("nats_flush_timeout")


def _can_as(uid: int, gid: int, path: str, mode: int) -> bool:
    """Whether user ``uid`` (group ``gid``, no other group) may access ``path`` with ``mode`` (os.W_OK...):
    asked by a child that becomes that user (access(2) then counts ACLs and every directory above)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            os._exit(0 if os.access(path, mode) else 1)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def _check_rotation_directory(settings: Settings, output: str, uid: int, gid: int, user: str) -> None:
    """Rotation renames files in the output's directory after the privileges are dropped: that user must
    be able to."""
    import stat

    directory = os.path.dirname(os.path.abspath(output))
    try:
        st = os.stat(directory)
    except OSError as e:
        raise settings.error("output", f"{output}: its directory cannot be used: {e.strerror}") from None
    sticky = st.st_mode & stat.S_ISVTX and st.st_uid != uid
    if sticky or not _can_as(uid, gid, directory, os.W_OK | os.X_OK):
        why = "a sticky directory (as /tmp) lets only a file's owner rename it" if sticky else \
            "it cannot write there"
        raise settings.error("rotate_size", (
            f"renames files in {directory} after the collector has become {user} (uid {uid}), and {why}: "
            f"give the output a directory of that user's (install -d -o {user} -m 0700 DIR), or "
            f"--keep-privileges"))


def _warn_if_config_unreadable(plan: Plan) -> None:
    """SIGHUP reads the config file as the user the collector became: say now if it will not be able to."""
    s = plan.settings
    if s.path is None or plan.also_owner is None:
        return
    gid = plan.config.drop_gid
    if not _can_as(plan.also_owner, gid, os.path.abspath(s.path), os.R_OK):
        error(f"--config {s.path}: the user the collector becomes (uid {plan.also_owner}) cannot read it, so "
              f"SIGHUP will not be able to read it again: make it readable to that user (for example "
              f"chgrp {gid} {s.path}; chmod 0640 {s.path})")


# -- main ---------------------------------------------------------------------------------------------------

def main(args: argparse.Namespace) -> int:

    try:
        settings = load_settings(args._parser, args)
        plan = make_plan(settings)
    except ConfigError as e:
        error(str(e))
        return EXIT_USAGE
    if common.stop_requested():
        return _stopped_before_start()
    _warn_if_config_unreadable(plan)
    try:
        outputs = Outputs.open(plan)
    except _Refused as e:
        error(str(e))
        return EXIT_SETUP
    try:
        return _trio_run(_run, plan, outputs)
    except ConfigError as e:  # a program the pin file does not approve: nothing was loaded
        error(str(e))
        return EXIT_USAGE
    except PrivilegeError as e:
        error(f"insufficient privilege: {e}")
        return EXIT_SETUP
    except SetupError as e:
        error(one_line(str(e)))
        return EXIT_SETUP
    except _Refused as e:
        error(str(e))
        return EXIT_SETUP
    except KestrelError as e:
        error(str(e))
        return EXIT_SETUP
    except OSError as e:
        reason = e.strerror or str(e)
        error(f"cannot run: {e.filename}: {reason}" if e.filename else f"cannot run: {reason}")
        return EXIT_SETUP
    except Exception as e:
        # A bug.  The user still gets one line, not a traceback (KESTREL_DEBUG=1 shows it).
        if os.environ.get("KESTREL_DEBUG") == "1":
            raise
        error(f"stopped by an unexpected error, a bug (KESTREL_DEBUG=1 shows where): "
              f"{type(e).__name__}: {one_line(str(e))}")
        return EXIT_SETUP
    finally:
        outputs.close_now()


def _stopped_before_start() -> int:
    error("stopped before anything was loaded")
    return EXIT_OK


def _trio_run(fn, *args):
    """trio.run, with a lone exception out of a nursery unwrapped for main's handlers.

    trio 0.25 and later wrap every exception that leaves a nursery in an ExceptionGroup (a SetupError from
    collector.start, say, raised inside _run's nursery); a group of one is that one error.  A group of
    several is left as it is: more than one thing went wrong, and the traceback shows each.
    """
    try:
        return trio.run(fn, *args)
    except BaseExceptionGroup as group:
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        if isinstance(leaf, BaseExceptionGroup):
            raise
        raise leaf from None


class _Refused(Exception):
    """An output cannot be opened or reached; str() is the line for the user."""


# -- the outputs ----------------------------------------------------------------------------------------------

class _FileOutput:
    """JSON lines to a file or standard output (JsonlSink), as an output of the writer."""

    def __init__(self, sink, low_latency: bool) -> None:
        self.sink = sink
        self._low = low_latency

    async def send(self, chunk: bytes) -> None:
        self.sink.write(chunk)
        if self._low:
            self.sink.flush()

    def flush_if_due(self) -> None:
        self.sink.flush_if_due()

    async def aclose(self) -> None:
        self.sink.close()

    def counters(self) -> dict[str, int]:
        return {"written": self.sink.lines_written}


class Outputs:
    """The event outputs (by name: file, stdout, syslog, nats), the metrics server and the notifier,
    opened before anything is loaded (and before the privileges are dropped)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.by_name: dict[str, object] = {}
        self.metrics = None
        from kestrel_raw.service.notify import Notifier

        self.notifier = Notifier()

    @classmethod
    def open(cls, plan: Plan) -> "Outputs":
        self = cls(plan)
        try:
            self._open()
        except BaseException:
            self.close_now()
            raise
        return self

    def _open(self) -> None:
        from kestrel_raw.sinks.files import OutputError
        from kestrel_raw.sinks.jsonl import JsonlSink

        plan, s = self.plan, self.plan.settings
        flush = {"flush_interval": plan.config.flush_interval}
        low = plan.config.latency == "low"
        if plan.output is not None:
            try:
                sink = JsonlSink(plan.output, rotate_size=plan.rotate_size, rotate_keep=plan.rotate_keep,
                                 also_owner=plan.also_owner, **flush)
            except OutputError as e:
                raise _Refused(f"{s.describe('output')} {e}") from None
            self.by_name["file"] = _FileOutput(sink, low)
        if plan.stdout:
            self.by_name["stdout"] = _FileOutput(JsonlSink(sys.stdout.buffer, **flush), low)
        if plan.syslog is not None:
            from kestrel_raw.sinks.syslog import SyslogSink

            self.by_name["syslog"] = SyslogSink(plan.syslog, plan.syslog_facility)
        if plan.nats:
            self._open_nats()
        if plan.metrics is not None:
            from kestrel_raw.metrics import MetricsServer

            try:
                self.metrics = MetricsServer(plan.metrics, None)
            except OSError as e:
                raise _Refused(f"{s.describe('metrics')} {plan.metrics}: cannot listen there: "
                               f"{e.strerror or e}") from None

    def _open_nats(self) -> None:
        import asyncio

        from kestrel_raw.sinks.files import OutputError
        from kestrel_raw.sinks.nats import NatsSink, find_stream, preload
        from kestrel_raw.sinks.natsmsg import host_identity
        from kestrel_raw.sinks.spool import Spool

        preload()

        plan, s = self.plan, self.plan.settings
        directory = os.path.dirname(os.path.abspath(plan.nats_buffer))
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            spool = Spool(plan.nats_buffer, plan.nats_buffer_size, also_owner=plan.also_owner)
        except (OutputError, OSError) as e:
            raise _Refused(f"{s.describe('nats_buffer')} {plan.nats_buffer}: {e.strerror or e}") from None
        host_id, host = host_identity()
        sink = NatsSink(plan.nats, plan.subject, spool, host_id=host_id, host=host,
                        flush_timeout=plan.nats_flush_timeout, report=error)
        self.by_name["nats"] = sink
        reached, stream, why = asyncio.run(find_stream(plan.nats, plan.subject))
        if reached and stream is None:
            raise _Refused(f"{s.describe('nats')} {','.join(plan.nats)}: no JetStream stream takes subject "
                           f"{plan.subject!r}{': ' + why if why else ''}; create one (a stream whose subjects "
                           f"include it) first")
        if not reached:
            error(f"NATS: no server answers at {','.join(plan.nats)} ({why}): events wait in "
                  f"{plan.nats_buffer} until one does")
        if spool.used:
            error(f"NATS: {sink.spool_events} events from an earlier run wait in {plan.nats_buffer}: sent first")

    async def connect(self) -> None:
        syslog = self.by_name.get("syslog")
        if syslog is not None:
            try:
                await syslog.connect()
            except OSError as e:
                raise _Refused(f"{self.plan.settings.describe('syslog')} {syslog.address}: cannot send there: "
                               f"{e.strerror or e}") from None

            def changed(why):
                if why is None:
                    error(f"syslog: sending to {syslog.address} again")
                else:
                    error(f"syslog: cannot send to {syslog.address}: {why}; events are dropped and counted "
                          f"until it answers")

            syslog.on_change = changed

    def start_threads(self, get_snapshot) -> None:
        """Once privileges are dropped: the metrics server's and the NATS client's threads."""
        if self.metrics is not None:
            self.metrics.get_snapshot = get_snapshot
            self.metrics.start()
        nats = self.by_name.get("nats")
        if nats is not None:
            nats.start()

    def flush_if_due(self) -> None:
        for out in self.by_name.values():
            out.flush_if_due()

    def summary(self) -> str | None:
        parts = []
        for name in ("syslog", "nats"):
            out = self.by_name.get(name)
            if out is not None:
                counts = out.counters()
                counts.pop("connected", None)
                parts.append(f"{name}[" + " ".join(f"{k}={v}" for k, v in counts.items()) + "]")
        return "kestrel-raw: outputs " + " ".join(parts) if parts else None

    def close_now(self) -> None:
        """Close what needs no event loop (after a failure, or after aclose)."""
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        nats = self.by_name.get("nats")
        if nats is not None and not nats.spool.closed and (nats._thread is None or not nats._thread.is_alive()):
            nats.spool.close()
        self.notifier.close()


# -- running --------------------------------------------------------------------------------------------------

async def _run(plan: Plan, outputs: Outputs) -> int:
    from kestrel_raw.collector import BATCH_RECORDS, KestrelCollector

    config = plan.config
    # The signal receiver comes first: a SIGINT or SIGTERM that arrives while the programs load is kept
    # for on_signal, not lost (a shell's background job inherits SIGINT ignored, and Python installs no
    # KeyboardInterrupt handler over that) and not a KeyboardInterrupt in the middle of the load.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        if common.stop_requested():
            return _stopped_before_start()
        await outputs.connect()
        from kestrel_raw.metrics import snapshot  # (nothing may be imported once privileges are dropped)

        # The collector sends chunks of JSON lines, one per ring-buffer drain (config.deliver == "json").
        send, recv = trio.open_memory_channel(max(1, config.queue_size // BATCH_RECORDS))
        collector = KestrelCollector(send, config)
        collector.load()
        if plan.verify:
            try:
                verify_loaded(collector)
            except BaseException:
                collector.stop()
                raise
        outs = list(outputs.by_name.values())
        status = EXIT_OK
        writable = True
        settings = plan.settings
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(collector.start)
                if collector.reattached:
                    error(f"re-attached {', '.join(collector.reattached)}: the first attachment did not fire "
                          f"when the collector provoked it")
                _report_object(collector)
                if collector.privileges is not None:
                    error(f"attached; privileges dropped: {collector.privileges.describe()}")
                else:
                    error("attached; privileges kept (--keep-privileges)")
                token = trio.lowlevel.current_trio_token()
                outputs.start_threads(lambda: trio.from_thread.run_sync(snapshot, collector, outputs.by_name,
                                                                        trio_token=token))
                outputs.notifier.notify(ready=1, status=f"attached, {len(collector._links)} programs")
                if common.stop_requested():
                    nursery.cancel_scope.cancel()

                async def on_signal():
                    nonlocal settings
                    async for signum in signals:
                        if signum == signal.SIGHUP:
                            settings = _reload(settings, collector)
                            continue
                        nursery.cancel_scope.cancel()
                        return

                async def stop_after():
                    await trio.sleep(plan.duration)
                    nursery.cancel_scope.cancel()

                async def write_events():
                    nonlocal status, writable
                    try:
                        async for chunk in recv:
                            for out in outs:
                                await out.send(chunk)
                    except BrokenPipeError:
                        # The reader went away (`| head -1`): a normal end, not an error.
                        silence_stdout()
                        writable = False
                    except OSError as e:
                        _write_error(e, plan)
                        status = EXIT_SETUP
                        writable = False
                    nursery.cancel_scope.cancel()

                async def flush_when_idle():
                    # The file sinks flush on a write once flush_interval has passed; this covers the last
                    # lines before a quiet spell.
                    try:
                        while True:
                            await trio.sleep(config.flush_interval)
                            outputs.flush_if_due()
                    except OSError:
                        return  # reported by the writer's next write, or by the final close

                nursery.start_soon(on_signal)
                nursery.start_soon(write_events)
                nursery.start_soon(flush_when_idle)
                if plan.duration is not None:
                    nursery.start_soon(stop_after)
        finally:
            outputs.notifier.notify(stopping=1)
            collector.stop()
            status = await _finish(plan, outputs, outs, recv, writable, status)
            print(collector.stats().summary(), file=sys.stderr)
            line = outputs.summary()
            if line:
                print(line, file=sys.stderr)
        return status


def _report_object(collector) -> None:
    """What the --object loader did differently from the object's wishes (a program left unattached, a
    weak extern left zero), one line each."""
    obj = collector.bpf_object
    if obj is not None:
        for note in obj.notes:
            error(f"{obj.name}: {note}")


async def _finish(plan: Plan, outputs: Outputs, outs: list, recv, writable: bool, status: int) -> int:
    """Write what the collector took from the rings before it stopped, then close every output."""
    try:
        if writable:
            # The events already taken from the rings are written too, so that the summary's delivered
            # count is what the outputs hold.
            while True:
                try:
                    chunk = recv.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
                for out in outs:
                    await out.send(chunk)
    except BrokenPipeError:
        silence_stdout()
    except OSError as e:
        if status == EXIT_OK:
            _write_error(e, plan)
            status = EXIT_SETUP
    for out in outs:
        try:
            await out.aclose()
        except BrokenPipeError:
            silence_stdout()
        except OSError as e:
            if status == EXIT_OK:  # else the write already failed and said so
                _write_error(e, plan)
                status = EXIT_SETUP
    outputs.close_now()
    return status


def _reload(settings: Settings, collector=None) -> Settings:
    """SIGHUP: read the config file again.  The filters change at once (``collector.set_filters``: no
    program reloaded); every other setting takes effect at the next start: the new file is checked, and
    what it changes is named.  Returns the settings to compare the next SIGHUP's with: those in force."""
    if settings.path is None:
        error("SIGHUP: no --config file to read again; nothing changed")
        return settings
    try:
        new = settings.reload()
        plan = make_plan(new)
    except ConfigError as e:
        error(f"SIGHUP: {e}; the running settings are kept")
        return settings
    from kestrel_raw.cli.settings import options

    changed = [key for key, action in options(new.parser).items()
               if getattr(new.values, action.dest, None) != getattr(settings.values, action.dest, None)]
    filter_keys = [key for key in changed if options(new.parser)[key].dest in FILTER_DESTS]
    later = [key for key in changed if key not in filter_keys]
    in_force = settings
    if filter_keys and collector is not None:
        try:
            collector.set_filters(plan.config.filters)
        except (ConfigError, SetupError) as e:
            error(f"SIGHUP: {e}; the running filters are kept")
        else:
            error(f"SIGHUP: read {settings.path}: filters changed ({', '.join(filter_keys)}), in force now: "
                  f"{_filters_text(plan.config.filters)}")
            # The filter settings in force are the new file's; the others stay those of the start.
            merged = vars(settings.values).copy()
            merged.update({dest: getattr(new.values, dest, None) for dest in FILTER_DESTS})
            in_force = Settings(values=argparse.Namespace(**merged), parser=settings.parser, cli=settings.cli,
                                path=settings.path,
                                from_file={**{d: n for d, n in settings.from_file.items() if d not in FILTER_DESTS},
                                           **{d: n for d, n in new.from_file.items() if d in FILTER_DESTS}})
    if later:
        error(f"SIGHUP: read {settings.path}: {', '.join(later)} changed, which takes effect at the next start")
    elif not filter_keys:
        error(f"SIGHUP: read {settings.path}: nothing changed")
    return in_force


def _filters_text(filters) -> str:
    import json

    doc = filters.to_json()
    return json.dumps(doc, separators=(",", ":")) if doc else "none"


def _write_error(e: OSError, plan: Plan) -> None:
    where = plan.output or "standard output"
    full = " (the disk is full)" if e.errno == errno.ENOSPC else ""
    error(f"cannot write events to {where}: {e.strerror or e}{full}; stopped, programs detached")
