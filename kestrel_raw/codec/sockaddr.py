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

from kestrel_raw.kernel.uapi import AF_INET, AF_INET6, AF_NETLINK, AF_PACKET, AF_UNIX, AF_UNSPEC, AF_VSOCK

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


def ipv4_text(raw: bytes) -> str:
    """Dotted quad of 4 bytes in network order."""
    return f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}"


def ipv6_text(raw: bytes) -> str:
    """``ipaddress`` text of 16 bytes; a v4-mapped address as ``"::ffff:127.0.0.1"`` (inet_ntop's form:
    Python < 3.13 would print ``"::ffff:7f00:1"``)."""
    ip = ipaddress.IPv6Address(bytes(raw))
    mapped = ip.ipv4_mapped
    return f"::ffff:{mapped}" if mapped is not None else str(ip)


def decode_sockaddr(raw: bytes, addrlen: int | None = None) -> SockAddr:
    """Decode ``raw[:addrlen]`` (``addrlen`` as passed to connect(2); None: all of ``raw``)."""
    n = len(raw) if addrlen is None else max(0, min(addrlen, len(raw)))
    if n < 2:
        return SockAddr("AF_UNSPEC", "", 0)
    family = _FAMILY.unpack_from(raw)[0]
    if family == AF_INET:
        if n < _SIN_NEED:
            return SockAddr("AF_INET", "", 0)
        return SockAddr("AF_INET", ipv4_text(raw[4:8]), _PORT.unpack_from(raw, 2)[0])
    if family == AF_INET6:
        if n < _SIN6_NEED:
            return SockAddr("AF_INET6", "", 0)
        text = ipv6_text(raw[8:24])
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


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a connect went: the socket's own destination when it holds one, else the address the caller
    passed; ``toctou`` when the two disagree."""
    family: str
    address: str
    port: int
    toctou: bool


def connect_destination(addr: bytes, addrlen: int, sk_family: int, sk_dport: int, sk_daddr: bytes,
                        sk_daddr6: bytes) -> Destination:
    """The destination of a connect, from the sockaddr copied at the syscall's entry (``addr``) and the
    destination the socket holds after it (``sk_*``, from struct sock_common; ``sk_dport`` as the kernel
    stores it, network order read as a little-endian u16).

    An IPv4 or IPv6 socket that holds a destination port says where the kernel connected it: that is the
    answer, and a passed address that names something else is a rewritten one (``toctou``).  A socket with
    no destination (a failed connect, another family) leaves the passed address as the answer.
    """
    passed = decode_sockaddr(addr, addrlen)
    if sk_family not in (AF_INET, AF_INET6) or sk_dport == 0:
        return Destination(passed.family, passed.address, passed.port, False)
    port = ((sk_dport & 0xFF) << 8) | (sk_dport >> 8)
    if sk_family == AF_INET:
        held = SockAddr("AF_INET", ipv4_text(sk_daddr), port)
    else:
        held = SockAddr("AF_INET6", ipv6_text(sk_daddr6), port)
    passed_address = passed.address.split("%", 1)[0]  # the scope id is not part of the destination
    toctou = (passed.family, passed_address, passed.port) != (held.family, held.address, held.port)
    return Destination(held.family, held.address, held.port, toctou)


def dns_addresses(area: bytes, count: int) -> list[bytes]:
    """The addresses of a dns_query record's ``addrs`` area (kestrel_raw/spec.py DNS_QUERY), as ASCII text
    bytes, in the result list's order: the first ``count`` slots of DNS_ADDR_SIZE bytes, each the sockaddr's
    family (u16, host order), port (u16) and address (4 bytes for AF_INET, 16 for AF_INET6).  A slot of
    another family, or beyond the area, is left out (the program keeps only these two)."""
    from kestrel_raw.spec import DNS_ADDR_SIZE

    out = []
    for i in range(min(count, len(area) // DNS_ADDR_SIZE)):
        slot = area[i * DNS_ADDR_SIZE:(i + 1) * DNS_ADDR_SIZE]
        family = _FAMILY.unpack_from(slot)[0]
        if family == AF_INET:
            out.append(ipv4_text(slot[4:8]).encode("ascii"))
        elif family == AF_INET6:
            out.append(ipv6_text(slot[4:20]).encode("ascii"))
    return out
