"""Events to syslog, one RFC 5424 message per event, the JSON line as the message.

    <PRI>1 TIMESTAMP HOSTNAME kestrel-raw PROCID MSGID - {"type":"open",...}

PRI is the facility (``daemon`` by default) times 8 plus severity 6 (informational); TIMESTAMP is the
time the message is sent (RFC 3339, UTC, microseconds; the event's own times are in the JSON); MSGID is
the event type; there is no structured data ("-").  The message is the JSON line as octets (RFC 5424's
MSG-ANY: no byte-order mark; it is UTF-8 anyway).

Transports, by address:

- a path (default ``/dev/log``, or ``unix:///path``): a local datagram socket, one message per datagram
  (RFC 5424 does not define one; rsyslog's imuxsock and journald read this);
- ``udp://HOST:PORT``: one message per datagram (RFC 5426).  UDP loses messages silently when the receiver
  falls behind: use TCP where every event matters;
- ``tcp://HOST:PORT``: a stream with octet-counting framing (RFC 6587: ``LEN SP MSG``), every message of a
  batch in one send.  A broken connection is made again (at most once a second); what cannot be sent
  meanwhile is counted as dropped, not kept.

Sending never blocks the collector's event loop: the sockets are trio's.  Receivers limit the message
size (rsyslog: 8 KiB by default, ``$MaxMessageSize``); an exec with a long command line can exceed it.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import trio

FACILITIES = {"kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
              "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, **{f"local{i}": 16 + i for i in range(8)}}
SEVERITY_INFO = 6
APP_NAME = "kestrel-raw"
DEFAULT_ADDRESS = "/dev/log"
RECONNECT_EVERY = 1.0  # seconds between attempts to make a lost TCP connection again
_TYPE_AT = len(b'{"type":"')  # every JSON line starts with its type (kestrel_raw/codec/jsonl.py)


@dataclass(frozen=True)
class Address:
    transport: str  # "unix", "udp" or "tcp"
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        return self.path if self.transport == "unix" else f"{self.transport}://{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """``/dev/log``, ``unix:///run/x``, ``udp://127.0.0.1:514``, ``tcp://[::1]:601``; ValueError says why."""
    if text.startswith("/"):
        return Address("unix", path=text)
    parts = urlsplit(text)
    if parts.scheme == "unix" and parts.path:
        return Address("unix", path=parts.path)
    if parts.scheme in ("udp", "tcp"):
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None or parts.path not in ("", "/"):
            raise ValueError(f"{text!r} is not {parts.scheme}://HOST:PORT")
        return Address(parts.scheme, host=parts.hostname, port=port)
    raise ValueError(f"{text!r} is not a syslog address: give a socket path (/dev/log), udp://HOST:PORT or "
                     f"tcp://HOST:PORT")


def header(facility: int, hostname: str | None = None, pid: int | None = None) -> tuple[bytes, bytes]:
    """The parts of a message header around its timestamp and MSGID: ``(b"<PRI>1 ", b" HOST APP PID ")``."""
    host = (hostname or socket.gethostname() or "-").encode("ascii", "replace")[:255].replace(b" ", b"_")
    return (b"<%d>1 " % (facility * 8 + SEVERITY_INFO),
            b" %s %s %d " % (host, APP_NAME.encode(), os.getpid() if pid is None else pid))


def timestamp(now: float | None = None) -> bytes:
    """RFC 3339 UTC with microseconds: ``2026-12-03T10:00:00.123456Z``."""
    now = time.time() if now is None else now
    seconds = int(now)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)).encode() + b".%06dZ" % int((now - seconds) * 1e6)


def messages(chunk: bytes, head: tuple[bytes, bytes], now: float | None = None) -> list[bytes]:
    """The RFC 5424 message of each JSON line in ``chunk`` (whole lines, newline-terminated)."""
    start = head[0] + timestamp(now) + head[1]
    out = []
    for line in chunk.split(b"\n"):
        if not line:
            continue
        end = line.find(b'"', _TYPE_AT)
        msgid = line[_TYPE_AT:end] if line.startswith(b'{"type":"') and end > 0 else b"-"
        out.append(start + msgid + b" - " + line)
    return out


def frame(msgs: list[bytes]) -> bytes:
    """RFC 6587 octet counting: each message as ``LEN SP MSG``."""
    return b"".join(b"%d %s" % (len(m), m) for m in msgs)


class SyslogSink:
    """Sends each line of the chunks given to ``send`` to ``address`` (see the module)."""

    def __init__(self, address: Address, facility: str = "daemon", hostname: str | None = None) -> None:
        self.address = address
        self._head = header(FACILITIES[facility], hostname)
        self._sock: trio.socket.SocketType | None = None
        self._stream: trio.SocketStream | None = None
        self._next_try = 0.0
        self.sent = 0
        self.dropped = 0
        self.error: str | None = None  # why the last send failed, until one succeeds again
        self.on_change = None  # called with (error or None) when sending starts or stops failing

    async def connect(self) -> None:
        """Make the socket (and the TCP connection); OSError when the address cannot be reached."""
        a = self.address
        if a.transport == "tcp":
            self._stream = await trio.open_tcp_stream(a.host, a.port)
            return
        if a.transport == "unix":
            sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            target = a.path
        else:
            infos = await trio.socket.getaddrinfo(a.host, a.port, type=socket.SOCK_DGRAM)
            family, type_, proto, _name, target = infos[0]
            sock = trio.socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, proto)
        try:
            await sock.connect(target)
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    async def send(self, chunk: bytes) -> None:
        msgs = messages(chunk, self._head)
        try:
            if self.address.transport == "tcp":
                await self._send_stream(msgs)
            else:
                for i, m in enumerate(msgs):
                    try:
                        await self._sock.send(m)
                    except OSError:
                        self.dropped += len(msgs) - i
                        raise
                    self.sent += 1
        except OSError as e:
            self._failed(e)
            return
        if self.error is not None:
            self._set_error(None)

    async def _send_stream(self, msgs: list[bytes]) -> None:
        if self._stream is None:
            now = time.monotonic()
            if now < self._next_try:
                self.dropped += len(msgs)
                return
            self._next_try = now + RECONNECT_EVERY
            try:
                self._stream = await trio.open_tcp_stream(self.address.host, self.address.port)
            except OSError:
                self.dropped += len(msgs)
                raise
        try:
            await self._stream.send_all(frame(msgs))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            self.dropped += len(msgs)
            stream, self._stream = self._stream, None
            await stream.aclose()
            raise OSError(getattr(e, "errno", None), str(e) or "connection lost") from None
        self.sent += len(msgs)

    def _failed(self, e: OSError) -> None:
        why = e.strerror or str(e) or type(e).__name__
        if self.error != why:
            self._set_error(why)

    def _set_error(self, why: str | None) -> None:
        self.error = why
        if self.on_change is not None:
            self.on_change(why)

    def flush_if_due(self) -> None:
        pass

    async def aclose(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.aclose()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def counters(self) -> dict[str, int]:
        return {"sent": self.sent, "dropped": self.dropped}
