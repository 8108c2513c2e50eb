"""Decode a raw ``struct sockaddr`` (as copied from connect(2)'s argument) into family, address text, port.

Pure and total: any bytes give a ``SockAddr``, never an exception.  What cannot be decoded (no address,
fewer bytes than the family's address needs, a family we do not render) gives an empty ``address`` and
port 0, with the family named ``"AF_UNSPEC"`` (fewer than 2 bytes: not even a family), its kernel name, or
``"AF_<n>"`` when unknown.

- AF_INET: dotted quad, port big-endian.  AF_INET6: ``ipaddress`` text (``"::1"``; a v4-mapped address
  stays v6 text: ``"::ffff:127.0.0.1"``), ``"%<scope_id>"`` appended when the scope id is not 0.
- AF_UNIX: the path up to its first NUL; an abstract name (first byte NUL) as ``"@name"``, as ss(8) and
  Tetragon print it; an unnamed socket as ``""``.  Port 0.  Non-UTF-8 bytes kept with surrogateescape.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

# include/linux/socket.h
AF_UNSPEC = 0
AF_UNIX = 1
AF_INET = 2
AF_INET6 = 10
AF_NETLINK = 16
AF_PACKET = 17
AF_VSOCK = 40

FAMILY_NAMES = {
    AF_UNSPEC: "AF_UNSPEC",
    AF_UNIX: "AF_UNIX",
    AF_INET: "AF_INET",
    AF_INET6: "AF_INET6",
    AF_NETLINK: "AF_NETLINK",
    AF_PACKET: "AF_PACKET",
    AF_VSOCK: "AF_VSOCK",
}

# Bytes needed to hold the address (not sizeof the struct: its padding carries nothing).
_SIN_NEED = 8        # sa_family, sin_port, sin_addr
_SIN6_NEED = 24      # sa_family, sin6_port, sin6_flowinfo, sin6_addr
_SIN6_SCOPE_END = 28
_UNIX_PATH_OFF = 2

_FAMILY = struct.Struct("<H")   # sa_family_t is host order; the format targets are little-endian
_PORT = struct.Struct(">H")
_SCOPE = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class SockAddr:
    family: str
    address: str
    port: int


def family_name(family: int) -> str:
    return FAMILY_NAMES.get(family) or f"AF_{family}"


def decode_sockaddr(raw: bytes, addrlen: int | None = None) -> SockAddr:
    """Decode ``raw[:addrlen]`` (``addrlen`` as passed to connect(2); None: all of ``raw``)."""
    n = len(raw) if addrlen is None else max(0, min(addrlen, len(raw)))
    if n < 2:
        return SockAddr("AF_UNSPEC", "", 0)
    family = _FAMILY.unpack_from(raw)[0]
    if family == AF_INET:
        if n < _SIN_NEED:
            return SockAddr("AF_INET", "", 0)
        a = raw[4:8]
        return SockAddr("AF_INET", f"{a[0]}.{a[1]}.{a[2]}.{a[3]}", _PORT.unpack_from(raw, 2)[0])
    if family == AF_INET6:
        if n < _SIN6_NEED:
            return SockAddr("AF_INET6", "", 0)
        ip = ipaddress.IPv6Address(bytes(raw[8:24]))
        mapped = ip.ipv4_mapped
        # Python < 3.13 prints a v4-mapped address as "::ffff:7f00:1"; inet_ntop, ss and 3.13 say
        # "::ffff:127.0.0.1".
        text = f"::ffff:{mapped}" if mapped is not None else str(ip)
        if n >= _SIN6_SCOPE_END:
            scope = _SCOPE.unpack_from(raw, 24)[0]
            if scope:
                text = f"{text}%{scope}"
        return SockAddr("AF_INET6", text, _PORT.unpack_from(raw, 2)[0])
    if family == AF_UNIX:
        path = bytes(raw[_UNIX_PATH_OFF:n])
        if path[:1] == b"\0":
            # Abstract: every byte of the name counts (NULs included), up to addrlen.
            return SockAddr("AF_UNIX", "@" + path[1:].decode("utf-8", "surrogateescape"), 0)
        end = path.find(b"\0")
        if end >= 0:
            path = path[:end]
        return SockAddr("AF_UNIX", path.decode("utf-8", "surrogateescape"), 0)
    return SockAddr(family_name(family), "", 0)
