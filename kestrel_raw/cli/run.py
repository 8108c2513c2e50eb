"""``kestrel-raw run``: watch the whole host and print one JSON object per event.

Exit status: 0 after a clean stop (SIGINT, SIGTERM, --duration, or the output pipe closing); 2 for a bad
command line or configuration; 1 when the host cannot run the collector (privilege, tracefs, BTF, kernel)
or the output cannot be written (a full disk), with one line on stderr that says what is wrong.

Privileges: set-up needs root, or CAP_BPF + CAP_PERFMON + CAP_SYS_ADMIN (tracefs, other collectors'
maps).  Once the programs are attached and the rings mapped, the collector becomes ``--user`` (default
nobody), empties its capability sets and bounding set and sets no_new_privs (``--keep-privileges`` turns
this off); the JSON lines, the stats and stopping work on the fds it already holds.
"""
from __future__ import annotations

import argparse
import errno
import os
import signal
import sys

# trio is imported before anything is attached: importing it afterwards delayed the first events by
# ~190 ms on this VM (KERNEL-NOTES.md).
import trio

from kestrel_raw.cli.common import EXIT_OK, EXIT_SETUP, EXIT_USAGE, error as _error, one_line as _one_line
from kestrel_raw.errors import ConfigError, KestrelError, PrivilegeError, SetupError

NAME = "run"
HELP = "collect events and print them as JSON lines"


def add_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument("--events", default="exec,open,connect,exit",
                     help="comma-separated event types: exec, open, connect, exit, fork, or all (default: "
                          "exec,open,connect,exit)")
    run.add_argument("--ancestors", type=int, default=None, metavar="N",
                     help="add `ancestors` to every event: up to N ancestors from the process cache, nearest "
                          "first (default 0: none)")
    run.add_argument("--threads", action="store_true",
                     help="fork events for new threads too (\"thread\":true); by default new processes only")
    run.add_argument("--no-context", action="store_true",
                     help="no process cache: exe, cwd, namespaces, hostname, cgroup and container keys are null")
    run.add_argument("--container-socket", action="append", metavar="PATH", dest="container_sockets",
                     help="a container runtime's API socket to ask for container names and images (docker's "
                          "Engine API, or podman's service); repeat for several (default "
                          "/run/podman/podman.sock, /var/run/docker.sock)")
    run.add_argument("--output", "-o", metavar="FILE",
                     help="write JSON lines to FILE (created with mode 0600) instead of stdout")
    run.add_argument("--duration", type=float, metavar="SECONDS", help="stop after SECONDS")
    run.add_argument("--buffers", type=int, default=None, help="number of ring buffers (default: one per CPU, at most 4)")
    run.add_argument("--buffer-size", type=int, default=None, help="bytes per ring buffer (default 1048576)")
    run.add_argument("--dump-programs", metavar="DIR",
                     help="write the disassembly of every program loaded into DIR (for audit)")
    run.add_argument("--queue-size", type=int, default=None,
                     help="events held between the ring readers and the output (default 8192)")
    run.add_argument("--queue-policy", choices=("block", "drop"), default=None,
                     help="when the output is slower than the events: 'block' (default) stops reading the "
                          "rings, so the kernel drops and counts what does not fit; 'drop' keeps reading "
                          "and drops, counting them, the events the queue cannot take")
    run.add_argument("--btf", metavar="PATH", default=os.environ.get("KESTREL_BTF"),
                     help="kernel BTF to take struct layouts from (default $KESTREL_BTF, else "
                          "/sys/kernel/btf/vmlinux)")
    run.add_argument("--user", metavar="USER", default="nobody",
                     help="user (name or uid) to become once attached, when run as root (default nobody)")
    run.add_argument("--keep-privileges", action="store_true",
                     help="do not drop capabilities and root's uid once attached (debugging only)")
    run.add_argument("--latency", choices=("batch", "low"), default=None,
                     help="'batch' (default): the kernel wakes the reader once per --wakeup-bytes, the reader "
                          "also drains every --poll-interval, lines are flushed every --flush-interval; "
                          "'low': the reader polls without sleeping (one busy CPU) and flushes every batch")
    run.add_argument("--wakeup-bytes", type=int, default=None,
                     help="bytes a ring holds before the kernel wakes the reader (default buffer size / 8; "
                          "0: every record)")
    run.add_argument("--poll-interval", type=float, default=None,
                     help="seconds between drains without a wakeup: the longest a lone event waits (0.1)")
    run.add_argument("--flush-interval", type=float, default=None,
                     help="seconds a written line may stay buffered (default 0.1)")


def _user_ids(user: str) -> tuple[int, int]:
    import pwd

    try:
        entry = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        if user.isdigit():
            return int(user), int(user)
        raise ConfigError(f"--user {user!r}: no such user; give a user name or a numeric uid") from None


def main(args: argparse.Namespace) -> int:
    from kestrel_raw.config import CollectorConfig, parse_event_types

    kwargs = {}
    if args.buffers is not None:
        kwargs["buffers"] = args.buffers
    if args.buffer_size is not None:
        kwargs["buffer_size"] = args.buffer_size
    if args.queue_size is not None:
        kwargs["queue_size"] = args.queue_size
    if args.queue_policy is not None:
        kwargs["queue_policy"] = args.queue_policy
    if args.btf:
        kwargs["btf_path"] = args.btf
    for name in ("latency", "wakeup_bytes", "poll_interval", "flush_interval", "ancestors", "container_sockets"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    if args.threads:
        kwargs["threads"] = True
    if args.no_context:
        kwargs["context"] = False
    try:
        if args.duration is not None and not args.duration > 0:
            raise ConfigError(f"--duration must be a positive number of seconds, got {args.duration}")
        uid, gid = _user_ids(args.user)
        config = CollectorConfig(event_types=parse_event_types(args.events), program_path=args.dump_programs,
                                 drop_privileges=not args.keep_privileges, drop_uid=uid, drop_gid=gid,
                                 deliver="json", **kwargs)
    except ConfigError as e:
        _error(str(e))
        return EXIT_USAGE
    try:
        return _trio_run(_run, config, args.output, args.duration)
    except PrivilegeError as e:
        _error(f"insufficient privilege: {e}")
        return EXIT_SETUP
    except SetupError as e:
        _error(_one_line(str(e)))
        return EXIT_SETUP
    except KestrelError as e:
        _error(str(e))
        return EXIT_SETUP
    except OSError as e:  # the output file cannot be created, say
        where = f" {e.filename}" if e.filename else ""
        _error(f"cannot run:{where}: {e.strerror or e}")
        return EXIT_SETUP
    except KeyboardInterrupt:
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


async def _run(config, output: str | None, duration: float | None) -> int:
    from kestrel_raw.collector import BATCH_RECORDS, KestrelCollector
    from kestrel_raw.sinks.jsonl import JsonlSink

    # The signal receiver comes first: a SIGINT or SIGTERM that arrives while the programs load is kept
    # for on_signal, not lost (a shell's background job inherits SIGINT ignored, and Python installs no
    # KeyboardInterrupt handler over that) and not a KeyboardInterrupt in the middle of the load.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        # The collector sends chunks of JSON lines, one per ring-buffer drain (config.deliver == "json").
        send, recv = trio.open_memory_channel(max(1, config.queue_size // BATCH_RECORDS))
        collector = KestrelCollector(send, config)
        collector.load()
        try:
            flush = {"flush_interval": config.flush_interval}
            sink = JsonlSink.open(output, **flush) if output else JsonlSink(sys.stdout.buffer, **flush)
        except BaseException:
            collector.stop()
            raise
        status = EXIT_OK
        writable = True
        low_latency = config.latency == "low"
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(collector.start)
                if collector.reattached:
                    _error(f"re-attached {', '.join(collector.reattached)}: the first attachment did not fire "
                           f"when the collector provoked it")
                if collector.privileges is not None:
                    _error(f"attached; privileges dropped: {collector.privileges.describe()}")

                async def on_signal():
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        return

                async def stop_after():
                    await trio.sleep(duration)
                    nursery.cancel_scope.cancel()

                async def write_events():
                    nonlocal status, writable
                    try:
                        async for chunk in recv:
                            sink.write(chunk)
                            if low_latency:
                                sink.flush()
                    except BrokenPipeError:
                        # The reader went away (`| head -1`): a normal end, not an error.
                        _silence_stdout()
                        writable = False
                    except OSError as e:
                        _write_error(e, output)
                        status = EXIT_SETUP
                        writable = False
                    nursery.cancel_scope.cancel()

                async def flush_when_idle():
                    # The sink flushes on a write once flush_interval has passed; this covers the last
                    # lines before a quiet spell.
                    try:
                        while True:
                            await trio.sleep(config.flush_interval)
                            sink.flush_if_due()
                    except OSError:
                        return  # reported by the writer's next write, or by the final close

                nursery.start_soon(on_signal)
                nursery.start_soon(write_events)
                nursery.start_soon(flush_when_idle)
                if duration is not None:
                    nursery.start_soon(stop_after)
        finally:
            collector.stop()
            try:
                if writable:
                    # The events already taken from the rings are written too, so that the summary's
                    # delivered count is what the output holds.
                    while True:
                        try:
                            chunk = recv.receive_nowait()
                        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                            break
                        sink.write(chunk)
                sink.close()
            except BrokenPipeError:
                _silence_stdout()
            except OSError as e:
                if status == EXIT_OK:  # else the write already failed and said so
                    _write_error(e, output)
                    status = EXIT_SETUP
            print(collector.stats().summary(), file=sys.stderr)
        return status


def _write_error(e: OSError, output: str | None) -> None:
    where = output or "standard output"
    full = " (the disk is full)" if e.errno == errno.ENOSPC else ""
    _error(f"cannot write events to {where}: {e.strerror or e}{full}; stopped, programs detached")


def _silence_stdout() -> None:
    # Python would report the broken pipe again when it flushes stdout at exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except OSError:
        pass
