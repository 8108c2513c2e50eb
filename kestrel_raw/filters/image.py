"""Filters -> filtermaps.Image: the rows and map entries one filter set holds, byte for byte.  Pure.

``compile(filters, event_types, set=..., host=...)``: a row per collected kind that something filters (key
bits of its includes and excludes, the outcome, the rate), and the entries of each key map that a filter
uses, keyed for ``set``.  filtermaps.py is the layout; the rules that are user space's:

- a key's bit is set only in the rows of the kinds it applies to (values.APPLIES), the outcome only in
  those whose record has a ``ret``;
- LPM tries (path, daddr) find the longest matching prefix alone, so each entry's value is the OR of the
  flags of every entry that is a prefix of it (its own included): ``--exclude-daddr 10.0.0.0/8 --daddr
  10.1.0.0/16`` still excludes 10.1.2.3;
- a v4 network is also written as its v4-mapped v6 network (an AF_INET6 socket connecting to
  ::ffff:10.1.2.3 is a v4 connection), and a v6 network within ::ffff:0:0/96 also as the v4 network;
- cgroup and container: an entry for every cgroup of the host's tree (filtermaps.py: a cgroup the map
  lacks is unknown and passes), F_INCLUDE/F_EXCLUDE on those at or below a matching cgroup, 0 on the others.
"""
from __future__ import annotations

import ipaddress
import socket
from typing import Iterable

from kestrel_raw.filters import values as fv
from kestrel_raw.filters.host import Host, cgroup_relative, container_matches, under
from kestrel_raw.filters.model import OUTCOME_CODES, Filters
from kestrel_raw.programs import filtermaps as fm
from kestrel_raw.spec import EventType

__all__ = ["compile"]

# Bits of an LPM key's data before the address: the set byte, and for daddr the family byte.
SET_BITS = 8
FAMILY_BITS = 8
_V4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _flags(filters: Filters, key: str, match) -> int:
    """F_INCLUDE if some include value of ``key`` matches (``match(value)``), | F_EXCLUDE likewise."""
    out = 0
    if any(match(v) for v in filters.values(key)):
        out |= fm.F_INCLUDE
    if any(match(v) for v in filters.values(key, True)):
        out |= fm.F_EXCLUDE
    return out


def _by_value(filters: Filters, key: str) -> dict:
    """value -> F_* flags, for keys looked up by value (pid, uid, comm, exe, port)."""
    out: dict = {}
    for exclude, flag in ((False, fm.F_INCLUDE), (True, fm.F_EXCLUDE)):
        for v in filters.values(key, exclude):
            out[v] = out.get(v, 0) | flag
    return out


def _rows(filters: Filters, event_types: Iterable[EventType]) -> dict[int, bytes]:
    rows = {}
    for et in event_types:
        et = EventType(et)
        include = exclude = 0
        for key in filters.keys:
            if et in fv.APPLIES[key]:
                if filters.values(key):
                    include |= fv.KEY_BIT[key]
                if filters.values(key, True):
                    exclude |= fv.KEY_BIT[key]
        outcome = OUTCOME_CODES[filters.outcome] if et in fv.OUTCOME_TYPES else fm.OUTCOME_ANY
        rate = filters.rate(et)
        if include or exclude or outcome or rate:
            rows[int(et)] = fm.CFG.pack(include, exclude, outcome, rate)
    return rows


def _networks(net: fv.Network) -> list[tuple[int, int, bytes]]:
    """(family, prefix length in address bits, 16 address bytes) of ``net`` and of its other form."""
    if net.version == 4:
        mapped = ipaddress.IPv6Network((int(_V4_MAPPED.network_address) | int(net.network_address),
                                        96 + net.prefixlen))
        return [(socket.AF_INET, net.prefixlen, net.network_address.packed.ljust(16, b"\0")),
                (socket.AF_INET6, mapped.prefixlen, mapped.network_address.packed)]
    out = [(socket.AF_INET6, net.prefixlen, net.network_address.packed)]
    if net.prefixlen >= 96 and net.subnet_of(_V4_MAPPED):
        v4 = ipaddress.IPv4Network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
        out.append((socket.AF_INET, v4.prefixlen, v4.network_address.packed.ljust(16, b"\0")))
    return out


def _mask(addr: bytes, bits: int) -> bytes:
    """``addr`` (16 bytes, left-aligned) with every bit after the first ``bits`` cleared."""
    n = int.from_bytes(addr, "big") >> (128 - bits) << (128 - bits) if bits else 0
    return n.to_bytes(16, "big")


def _daddr_entries(filters: Filters, set_: int) -> dict[bytes, bytes]:
    nets: dict[tuple[int, int, bytes], int] = {}
    for exclude, flag in ((False, fm.F_INCLUDE), (True, fm.F_EXCLUDE)):
        for net in filters.values("daddr", exclude):
            for n in _networks(net):
                nets[n] = nets.get(n, 0) | flag
    lengths = {family: sorted({bits for f, bits, _ in nets if f == family}) for family, _, _ in nets}
    out = {}
    for n in sorted(nets):
        family, bits, addr = n
        # Every entry that contains this one: same family, no longer, equal on its bits (one lookup per
        # prefix length present, not a scan of every entry: up to 2 x 1024 networks).
        flags = 0
        for shorter in lengths[family]:
            if shorter > bits:
                break
            flags |= nets.get((family, shorter, _mask(addr, shorter)), 0)
        key = fm.KEY_DADDR.pack(SET_BITS + FAMILY_BITS + bits, set_, family, addr)
        out[key] = fm.VALUE.pack(flags)
    return out


def _path_entries(filters: Filters, set_: int) -> dict[bytes, bytes]:
    prefixes = _by_value(filters, "path_prefix")
    lengths = sorted({len(p) for p in prefixes})
    out = {}
    for p in sorted(prefixes):
        flags = 0
        for n in lengths:
            if n > len(p):
                break
            flags |= prefixes.get(p[:n], 0)
        out[fm.KEY_PATH.pack(SET_BITS + 8 * len(p), set_, p)] = fm.VALUE.pack(flags)
    return out


def _cgroup_entries(filters: Filters, set_: int, host: Host) -> dict[bytes, bytes]:
    tops = {exclude: [cgroup_relative(v, host.mount) for v in filters.values("cgroup", exclude)]
            for exclude in (False, True)}
    out = {}
    for cg in host.cgroups:
        flags = (fm.F_INCLUDE if any(under(cg.path, t) for t in tops[False]) else 0) | \
                (fm.F_EXCLUDE if any(under(cg.path, t) for t in tops[True]) else 0)
        out[fm.KEY_CGROUP.pack(set_, 0, cg.id)] = fm.VALUE.pack(flags)
    return out


def _container_entries(filters: Filters, set_: int, host: Host) -> dict[bytes, bytes]:
    out = {}
    for cg in host.cgroups:
        flags = _flags(filters, "container", lambda v: container_matches(v, cg.container))
        out[fm.KEY_CGROUP.pack(set_, 0, cg.id)] = fm.VALUE.pack(flags)
    return out


def compile(filters: Filters, event_types: Iterable[EventType], *, set: int, host: Host) -> fm.Image:  # noqa: A001
    """The image of ``filters`` for the kinds ``event_types``, keyed for filter set ``set`` (0 or 1), with
    what ``host`` knows of the machine (the exes' device and inode, the cgroup tree)."""
    types = tuple(dict.fromkeys(EventType(t) for t in event_types))
    rows = _rows(filters, types)
    entries: dict[str, dict[bytes, bytes]] = {}
    used = filters.keys
    simple = {"pid": (fm.MAP_FPID, lambda v: fm.KEY_PID.pack(set, v)),
              "uid": (fm.MAP_FUID, lambda v: fm.KEY_UID.pack(set, v)),
              "comm": (fm.MAP_FCOMM, lambda v: fm.KEY_COMM.pack(set, v)),  # struct pads with NULs
              "port": (fm.MAP_FPORT, lambda v: fm.KEY_PORT.pack(set, v))}
    for key, (map_name, make) in simple.items():
        if key in used:
            entries[map_name] = {make(v): fm.VALUE.pack(f) for v, f in _by_value(filters, key).items()}
    if "exe" in used:
        exes: dict[bytes, int] = {}
        for path, f in _by_value(filters, "exe").items():
            ids = host.exe(path)
            if ids is None:
                raise ValueError(f"host has no device and inode for --exe {path} (make it with read_host)")
            k = fm.KEY_EXE.pack(set, *ids)
            exes[k] = exes.get(k, 0) | f  # two paths to one file (a hard link) share an entry
        entries[fm.MAP_FEXE] = {k: fm.VALUE.pack(f) for k, f in exes.items()}
    if "cgroup" in used:
        entries[fm.MAP_FCGROUP] = _cgroup_entries(filters, set, host)
    if "container" in used:
        entries[fm.MAP_FCONTAINER] = _container_entries(filters, set, host)
    if "daddr" in used:
        entries[fm.MAP_FDADDR] = _daddr_entries(filters, set)
    if "path_prefix" in used:
        entries[fm.MAP_FPATH] = _path_entries(filters, set)
    # Keys whose types none of event_types has write nothing (check() refuses such filters; here they
    # simply have no row bit).
    return fm.Image(set, rows, entries)
