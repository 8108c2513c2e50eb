"""``kestrel-raw run``: watch the whole host and print one JSON object per event.

Exit status: 0 after a clean stop (SIGINT, SIGTERM, --duration, or the output pipe closing); 2 for a bad
command line or configuration; 1 when the host cannot run the collector (privilege, tracefs, BTF, kernel),
with one line on stderr that says what is missing.
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

from .errors import ConfigError, KestrelError, PrivilegeError

EXIT_OK = 0
EXIT_SETUP = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kestrel-raw", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="collect events and print them as JSON lines")
    run.add_argument("--events", default="exec,open,connect,exit",
                     help="comma-separated event types: exec, open, connect, exit (default: all)")
    run.add_argument("--output", "-o", metavar="FILE",
                     help="write JSON lines to FILE (created with mode 0600) instead of stdout")
    run.add_argument("--duration", type=float, metavar="SECONDS", help="stop after SECONDS")
    run.add_argument("--buffers", type=int, default=None, help="number of ring buffers (default 4)")
    run.add_argument("--buffer-size", type=int, default=None, help="bytes per ring buffer (default 262144)")
    run.add_argument("--dump-programs", metavar="DIR",
                     help="write the disassembly of every program loaded into DIR (for audit)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .config import CollectorConfig, parse_event_types

    kwargs = {}
    if args.buffers is not None:
        kwargs["buffers"] = args.buffers
    if args.buffer_size is not None:
        kwargs["buffer_size"] = args.buffer_size
    try:
        if args.duration is not None and not args.duration > 0:
            raise ConfigError(f"--duration must be a positive number of seconds, got {args.duration}")
        config = CollectorConfig(event_types=parse_event_types(args.events), program_path=args.dump_programs,
                                 **kwargs)
    except ConfigError as e:
        print(f"kestrel-raw: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return trio.run(_run, config, args.output, args.duration)
    except PrivilegeError as e:
        print(f"kestrel-raw: insufficient privilege: {e}", file=sys.stderr)
        return EXIT_SETUP
    except KestrelError as e:
        print(f"kestrel-raw: {e}", file=sys.stderr)
        return EXIT_SETUP
    except KeyboardInterrupt:
        return EXIT_OK


async def _run(config, output: str | None, duration: float | None) -> int:
    from .collector import KestrelCollector
    from .jsonl import JsonlSink, encode_event

    send, recv = trio.open_memory_channel(config.queue_size)
    collector = KestrelCollector(send, config)
    collector.load()
    sink = JsonlSink.open(output) if output else JsonlSink(sys.stdout.buffer)
    status = EXIT_OK
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(collector.start)

                async def on_signal():
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        return

                async def stop_after():
                    await trio.sleep(duration)
                    nursery.cancel_scope.cancel()

                async def write_events():
                    nonlocal status
                    try:
                        async for event in recv:
                            sink.write(encode_event(event))
                    except BrokenPipeError:
                        # The reader went away (`| head -1`): a normal end, not an error.
                        _silence_stdout()
                    except OSError as e:
                        print(f"kestrel-raw: cannot write events: {e.strerror}"
                              f"{' (disk full)' if e.errno == errno.ENOSPC else ''}", file=sys.stderr)
                        status = EXIT_SETUP
                    nursery.cancel_scope.cancel()

                nursery.start_soon(on_signal)
                nursery.start_soon(write_events)
                if duration is not None:
                    nursery.start_soon(stop_after)
    finally:
        collector.stop()
        try:
            sink.close()
        except BrokenPipeError:
            _silence_stdout()
        except OSError:
            pass
        print(collector.stats().summary(), file=sys.stderr)
    return status


def _silence_stdout() -> None:
    # Python would report the broken pipe again when it flushes stdout at exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
