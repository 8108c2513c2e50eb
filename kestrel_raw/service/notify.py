"""systemd's readiness protocol (sd_notify(3)): one datagram of ``KEY=VALUE`` lines to $NOTIFY_SOCKET.

With ``Type=notify`` the unit is "started" only once the collector says ``READY=1`` (after its programs
are attached and proven, not when the process starts), and ``STATUS=`` is the line ``systemctl status``
shows.  Without $NOTIFY_SOCKET (not under systemd) every call does nothing.  The socket is opened and
connected when ``Notifier`` is made, before the privileges are dropped; an abstract name starts with ``@``.
"""
from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, environ=os.environ) -> None:
        path = environ.get("NOTIFY_SOCKET", "")
        self._sock = None
        self._addr = None
        if not path or path[0] not in "/@":
            return
        self._addr = "\0" + path[1:] if path[0] == "@" else path
        try:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # Connected now, as root: the unprivileged user it becomes may not reach the path's directory.
            self._sock.connect(self._addr)
        except OSError:
            if self._sock is not None:
                self._sock.close()
            self._sock = None

    def notify(self, **fields: str | int) -> bool:
        """Send ``READY=1``, ``STATUS=...``, ``STOPPING=1`` (as keyword arguments); False if not sent."""
        if self._sock is None:
            return False
        data = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        try:
            self._sock.send(data)
            return True
        except OSError:
            return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
