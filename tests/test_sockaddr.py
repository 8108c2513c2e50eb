"""sockaddr decoding: exact text per family; never an exception."""
from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given, strategies as st

from kestrel_raw.codec.sockaddr import AF_INET, AF_INET6, AF_UNIX, SockAddr, decode_sockaddr, family_name


def sin(addr: str, port: int) -> bytes:
    return struct.pack("<H", AF_INET) + struct.pack(">H", port) + socket.inet_aton(addr) + bytes(8)


def sin6(addr: str, port: int, scope: int = 0) -> bytes:
    return (struct.pack("<H", AF_INET6) + struct.pack(">H", port) + bytes(4)
            + socket.inet_pton(socket.AF_INET6, addr) + struct.pack("<I", scope))


def sun(path: bytes) -> bytes:
    return struct.pack("<H", AF_UNIX) + path


@pytest.mark.parametrize("raw, addrlen, expected", [
    (sin("127.0.0.1", 8080), 16, SockAddr("AF_INET", "127.0.0.1", 8080)),
    (sin("10.1.2.255", 443), None, SockAddr("AF_INET", "10.1.2.255", 443)),
    (sin6("::1", 22), 28, SockAddr("AF_INET6", "::1", 22)),
    (sin6("::ffff:127.0.0.1", 53), 28, SockAddr("AF_INET6", "::ffff:127.0.0.1", 53)),
    (sin6("2001:db8::1", 65535), 28, SockAddr("AF_INET6", "2001:db8::1", 65535)),
    (sin6("fe80::1", 80, scope=3), 28, SockAddr("AF_INET6", "fe80::1%3", 80)),
    (sin6("fe80::1", 80, scope=3), 24, SockAddr("AF_INET6", "fe80::1", 80)),   # scope id not passed
    (sun(b"/run/dbus/system_bus_socket\0"), 30, SockAddr("AF_UNIX", "/run/dbus/system_bus_socket", 0)),
    (sun(b"/tmp/s\0junk"), 11, SockAddr("AF_UNIX", "/tmp/s", 0)),
    (sun(b"\0my-abstract"), 14, SockAddr("AF_UNIX", "@my-abstract", 0)),
    (sun(b"\0a\0b\0\0\0"), 7, SockAddr("AF_UNIX", "@a\0b\0", 0)),   # abstract: exactly addrlen bytes
    (sun(b""), 2, SockAddr("AF_UNIX", "", 0)),                       # unnamed
    (sun(b"/tmp/\xff"), 8, SockAddr("AF_UNIX", "/tmp/\udcff", 0)),   # lossless surrogateescape
    (b"", 0, SockAddr("AF_UNSPEC", "", 0)),                          # NULL address
    (b"\x02", 1, SockAddr("AF_UNSPEC", "", 0)),
    (sin("1.2.3.4", 80), 7, SockAddr("AF_INET", "", 0)),             # too short
    (sin6("::1", 22)[:23], 28, SockAddr("AF_INET6", "", 0)),         # fewer bytes copied than addrlen says
    (struct.pack("<H", 0) + bytes(14), 16, SockAddr("AF_UNSPEC", "", 0)),
    (struct.pack("<H", 16) + bytes(10), 12, SockAddr("AF_NETLINK", "", 0)),
    (struct.pack("<H", 99) + bytes(14), 16, SockAddr("AF_99", "", 0)),
])
def test_decode(raw, addrlen, expected):
    assert decode_sockaddr(raw, addrlen) == expected


def test_addrlen_bounds_what_is_read():
    assert decode_sockaddr(sun(b"/tmp/socket"), 7) == SockAddr("AF_UNIX", "/tmp/", 0)
    assert decode_sockaddr(sin("1.2.3.4", 80), -5) == SockAddr("AF_UNSPEC", "", 0)


def test_family_name():
    assert family_name(2) == "AF_INET" and family_name(10) == "AF_INET6" and family_name(1234) == "AF_1234"


@given(st.binary(max_size=140), st.one_of(st.none(), st.integers(-10, 2**32)))
def test_total(raw, addrlen):
    sa = decode_sockaddr(raw, addrlen)
    assert sa.family.startswith("AF_")
    assert 0 <= sa.port <= 65535
