"""Shared test helpers.  Import them from here, never from another test module.

Records: bytes written out by hand from the record layout table (docs/architecture.md "Records"),
independently of kestrel_raw/spec.py, so that a change of the layout in the spec fails the golden tests
instead of silently moving with them; and a hypothesis strategy of valid records of every kind, derived from
the spec (for tests whose point is the parsers' agreement, not the layout).
"""
from __future__ import annotations

import struct

from hypothesis import strategies as st

from kestrel_raw import spec

KIND_EXEC, KIND_OPEN, KIND_CONNECT, KIND_EXIT = 1, 2, 3, 4

# --- records by hand --------------------------------------------------------------------------------


def header(kind, flags=0, cpu=3, ts=1_000_000_123, start=999_000, pid=4242, tid=4243, ppid=1, uid=1000,
           gid=100, comm=b"cat"):
    """The 64-byte header: ts u64, kind u16, flags u16, cpu u32, start u64, pid, tid, ppid, uid, gid, pad
    (u32 each), comm char[16]."""
    return (struct.pack("<QHHI", ts, kind, flags, cpu) + struct.pack("<Q", start)
            + struct.pack("<IIIIII", pid, tid, ppid, uid, gid, 0) + comm.ljust(16, b"\0"))


# The record values header() gives by default, as the record classes name them.
COMMON = dict(ts_ns=1_000_000_123, header_flags=0, cpu=3, start_ns=999_000, pid=4242, tid=4243, ppid=1,
              uid=1000, gid=100, comm=b"cat")


def exec_bytes(filename=b"/bin/ls", args=b"ls\0-l\0/tmp\0", args_total=None, flags=0, pad=b"", **hdr):
    """exec: u32 filename_len, u32 args_len, u32 args_total, u32 pad, filename, args."""
    total = len(args) if args_total is None else args_total
    return (header(KIND_EXEC, flags, **hdr) + struct.pack("<IIII", len(filename), len(args), total, 0)
            + filename + args + pad)


def open_bytes(path=b"/etc/passwd", ret=3, dfd=-100, oflags=0o2000000, mode=0o644, syscall=0, flags=0, pad=b"",
               resolve=0, resolved=b"", **hdr):
    """open: i32 ret, i32 dfd, u64 flags, u64 mode, u64 resolve, u32 path_len, u32 syscall, u32 resolved_len,
    u32 pad, path, resolved_path."""
    return (header(KIND_OPEN, flags, **hdr)
            + struct.pack("<iiQQQIIII", ret, dfd, oflags, mode, resolve, len(path), syscall, len(resolved), 0)
            + path + resolved + pad)


def connect_bytes(addr=b"\x02\x00\x1f\x90\x7f\x00\x00\x01" + bytes(8), addrlen=16, ret=-111, fd=5, flags=0,
                  sk_family=0, sk_dport=0, sk_daddr=bytes(4), sk_daddr6=bytes(16), **hdr):
    """connect: i32 ret, i32 fd, u32 addrlen, u32 addr_len, u16 sk_family, u16 sk_dport (network order),
    u8 sk_daddr[4], u8 sk_daddr6[16], addr."""
    return (header(KIND_CONNECT, flags, **hdr)
            + struct.pack("<iiIIHH4s16s", ret, fd, addrlen, len(addr), sk_family, sk_dport, sk_daddr, sk_daddr6)
            + addr)


def exit_bytes(code=0x0300, **hdr):
    """exit: i32 exit_code, u32 pad."""
    return header(KIND_EXIT, **hdr) + struct.pack("<iI", code, 0)


# --- records from the spec, for hypothesis ------------------------------------------------------------

def _int(t: spec.Int):
    bits = 8 * t.size
    return st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if t.signed else st.integers(0, (1 << bits) - 1)


def _values(kind: spec.Kind):
    fields = {}
    for w in kind.wire:
        if w.name == "kind" or w.name in kind.lengths:
            continue
        if isinstance(w.type, spec.Int):
            fields[w.name] = _int(w.type)
        elif isinstance(w.type, spec.Chars):
            fields[w.name] = st.binary(max_size=w.type.size)
        else:
            # most draws short (the interesting strings), some up to the limit
            fields[w.name] = st.one_of(st.binary(max_size=64), st.binary(max_size=w.type.max))
    return st.fixed_dictionaries(fields)


@st.composite
def record_values(draw, kinds=None):
    """(kind id, values by wire name) of a valid record of one of ``kinds`` (default: every kind)."""
    kind = draw(st.sampled_from(sorted(kinds or spec.KINDS)))
    return kind, draw(_values(spec.KINDS[kind]))


@st.composite
def records(draw, kinds=None):
    """The bytes of a valid record (built with the construct schema), padded like a ring-buffer sample."""
    from kestrel_raw.codec.schema import build_record

    kind, values = draw(record_values(kinds))
    return build_record(kind, **values) + draw(st.binary(max_size=16))


KIND_AT = 8  # the kind's offset in the header (u16)
# The fixed parts' sizes and the offsets of the length fields, by kind (the table, by hand).
FIXED = {KIND_EXEC: 80, KIND_OPEN: 112, KIND_CONNECT: 104, KIND_EXIT: 72}
LENGTH_FIELDS = {KIND_EXEC: (64, 68), KIND_OPEN: (96, 104), KIND_CONNECT: (76,), KIND_EXIT: ()}


def with_kind(kind: int, data: bytes) -> bytes:
    """``data`` (at least KIND_AT + 2 bytes long, else padded with zeros) with its kind field set."""
    data = data.ljust(KIND_AT + 2, b"\0")
    return data[:KIND_AT] + struct.pack("<H", kind) + data[KIND_AT + 2:]
