"""``kestrel-raw tail --nats URL --subject S``: print the events a fleet published to NATS JetStream.

It reads the stream that takes SUBJECT (``kestrel.>`` reads every host publishing under ``kestrel.``) with
an ordered consumer (ephemeral; nothing is left on the server), drops the batches it already printed (a
collector may publish a batch twice: sinks/natsmsg.py) and prints each event as a JSON line with two keys
added at the end: ``host`` (the publishing host's name) and ``host_seq`` (the event's number in that
host's run).  ``--raw`` prints the lines as published.  Needs nats-py (pip install 'kestrel-raw[nats]').
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys

from kestrel_raw.cli.common import EXIT_OK, EXIT_SETUP, EXIT_USAGE, error, silence_stdout, stop_requested

NAME = "tail"
HELP = "print the events published to a NATS JetStream stream (by kestrel-raw run --nats), from every host"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nats", metavar="URL", required=True,
                   help="nats://HOST:PORT of a server of the cluster, several separated by commas")
    p.add_argument("--subject", metavar="SUBJECT", required=True,
                   help="the subject to read; wildcards allowed (kestrel.> for every host under kestrel.)")
    p.add_argument("--all", action="store_true",
                   help="start with the oldest event the stream holds (default: only new events)")
    p.add_argument("--count", type=int, metavar="N", help="stop after N events")
    p.add_argument("--idle-exit", type=float, metavar="SECONDS",
                   help="stop when no event came for SECONDS (for scripts)")
    p.add_argument("--raw", action="store_true", help="print the lines as published, without host and host_seq")


def main(args: argparse.Namespace) -> int:
    servers = [s.strip() for s in args.nats.split(",") if s.strip()]
    if not servers or any(not s.startswith(("nats://", "tls://")) for s in servers):
        error(f"--nats {args.nats!r} is not a nats://HOST:PORT URL")
        return EXIT_USAGE
    if args.count is not None and args.count < 1:
        error(f"--count must be at least 1, got {args.count}")
        return EXIT_USAGE
    if args.idle_exit is not None and not args.idle_exit > 0:
        error(f"--idle-exit must be a positive number of seconds, got {args.idle_exit}")
        return EXIT_USAGE
    try:
        from kestrel_raw.sinks.nats import import_nats

        import_nats()
    except ImportError as e:
        error(str(e).replace("--nats needs", "tail needs"))
        return EXIT_USAGE
    try:
        return asyncio.run(_tail(servers, args))
    except BrokenPipeError:
        silence_stdout()
        return EXIT_OK
    except _Failed as e:
        error(str(e))
        return EXIT_SETUP


class _Failed(Exception):
    pass


async def _tail(servers: list[str], args) -> int:
    import signal

    import nats
    from nats.js.api import DeliverPolicy
    from nats.js.errors import NotFoundError

    from kestrel_raw.sinks.natsmsg import Dedup, origin, with_host

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if stop_requested():
        return EXIT_OK

    async def quiet(*_a):
        pass

    nc = nats.NATS()
    try:
        await nc.connect(servers=servers, connect_timeout=2, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                         error_cb=quiet, disconnected_cb=quiet, closed_cb=quiet, reconnected_cb=quiet)
    except Exception as e:
        raise _Failed(f"--nats {','.join(servers)}: cannot connect: {str(e) or type(e).__name__}") from None
    out = sys.stdout.buffer
    dedup = Dedup()
    printed = 0
    try:
        js = nc.jetstream()
        try:
            await js.find_stream_name_by_subject(args.subject)
        except NotFoundError:
            raise _Failed(f"--subject {args.subject!r}: no JetStream stream takes it") from None
        policy = DeliverPolicy.ALL if args.all else DeliverPolicy.NEW
        sub = await js.subscribe(args.subject, ordered_consumer=True, deliver_policy=policy)
        while not stop.is_set():
            getter = asyncio.ensure_future(sub.next_msg(timeout=args.idle_exit or 3600.0))
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait([getter, stopper], return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                break
            stopper.cancel()
            try:
                msg = getter.result()
            except Exception as e:
                if type(e).__name__ in ("TimeoutError", "NatsTimeoutError") and args.idle_exit:
                    break
                if type(e).__name__ in ("TimeoutError", "NatsTimeoutError"):
                    continue
                raise
            who = origin(msg.headers)
            if who is not None and not dedup.first_time(who[0], who[2], who[3], who[4]):
                continue
            lines = msg.data.splitlines()
            if args.count is not None:
                lines = lines[:args.count - printed]
            if args.raw or who is None:
                out.write(b"".join(line + b"\n" for line in lines))
            else:
                host, seq = who[1], who[3]
                out.write(b"".join(with_host(line, host, seq + i) + b"\n" for i, line in enumerate(lines)))
            out.flush()
            printed += len(lines)
            if args.count is not None and printed >= args.count:
                break
    finally:
        try:
            await asyncio.wait_for(nc.close(), 2)
        except Exception:
            pass
    return EXIT_OK
