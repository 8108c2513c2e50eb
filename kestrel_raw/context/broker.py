"""A connection broker: a small process that keeps the right to connect to the container runtimes' API
sockets after the collector gave its privileges up.

The collector drops root and every capability once attached (kestrel_raw/kernel/caps.py), and the API
sockets are root's (podman's /run/podman/podman.sock is root:root 0660, docker's root:docker 0660): as
nobody it could no longer ask them for container names and images.  So before dropping, it forks this
broker, which stays root and does one thing, on request over a socketpair: connect to one of the socket
paths fixed when it was made (the request is an index into that list, one byte; nothing else is read) and
hand the connected socket back (SCM_RIGHTS), or the errno.  The collector then speaks HTTP on it itself:
the broker reads nothing from the runtime and parses nothing the collector sends but that byte.

The broker closes every other file descriptor it inherited (the collector's maps, programs and rings),
dies with the collector (PR_SET_PDEATHSIG), and ends when the collector closes its end.  The collector
hides its tgid from its own programs like another collector's (kestrel_raw/collector/peers.py), so its
connections are not reported as events.
"""
from __future__ import annotations

import errno
import os
import signal
import socket
import threading

OK = 0


class Broker:
    """The collector's end: ``connect(path, timeout)`` asks the broker for a connection to ``path`` (one of
    the ``paths`` it was made with).  Thread-safe (one request at a time)."""

    def __init__(self, paths: tuple[str, ...], pid: int, sock: socket.socket) -> None:
        self.paths = paths
        self.pid = pid
        self._sock = sock
        self._lock = threading.Lock()

    def connect(self, path: str, timeout: float) -> socket.socket:
        try:
            index = self.paths.index(path)
        except ValueError:
            raise ValueError(f"{path}: the broker was not made for this socket (it knows {', '.join(self.paths)})") \
                from None
        with self._lock:
            if self._sock is None:
                raise OSError(errno.EPIPE, "the connection broker was closed")
            self._sock.settimeout(timeout)
            self._sock.sendall(bytes([index]))
            data, fds, _, _ = socket.recv_fds(self._sock, 1, 1)
        if not data:
            raise OSError(errno.EPIPE, "the connection broker went away")
        if data[0] != OK or not fds:
            for fd in fds:
                os.close(fd)
            code = data[0] or errno.EIO
            raise OSError(code, f"the broker could not connect to {path}: {os.strerror(code)}")
        return socket.socket(fileno=fds[0])

    def close(self) -> None:
        """Close the collector's end: the broker then exits.  Reaps it."""
        with self._lock:
            if self._sock is None:
                return
            self._sock.close()
            self._sock = None
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def start_broker(paths: tuple[str, ...], timeout: float = 2.0) -> Broker:
    """Fork the broker.  Call it while the process is single-threaded (a fork copies only the calling
    thread: a lock another thread held would stay held in the child) and still privileged."""
    if len(paths) > 255:
        raise ValueError("at most 255 socket paths")
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # the broker
        try:
            mine.close()
            _serve(theirs, tuple(paths), timeout)
        finally:
            os._exit(0)
    theirs.close()
    return Broker(tuple(paths), pid, mine)


def _serve(sock: socket.socket, paths: tuple[str, ...], timeout: float) -> None:
    keep = sock.fileno()
    os.closerange(0, keep)
    os.closerange(keep + 1, 1 << 16)
    try:
        from kestrel_raw.kernel import syscall
        from kestrel_raw.kernel.caps import PR_SET_PDEATHSIG

        syscall.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass
    if os.getppid() == 1:  # the collector died before the prctl
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's ^C is the collector's to handle
    while True:
        try:
            request = sock.recv(1)
        except OSError:
            return
        if not request:
            return  # the collector closed its end
        index = request[0]
        if index >= len(paths):
            sock.sendall(bytes([errno.EINVAL]))
            continue
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(timeout)
        try:
            conn.connect(paths[index])
        except OSError as e:
            conn.close()
            sock.sendall(bytes([min(e.errno or errno.EIO, 255)]))
            continue
        try:
            socket.send_fds(sock, [bytes([OK])], [conn.fileno()])
        finally:
            conn.close()


__all__ = ["Broker", "start_broker"]
