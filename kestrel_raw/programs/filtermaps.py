"""The filter maps: what user space writes (kestrel_raw/filters/) and the programs read (programs/filter.py).

One place for their names and byte layouts, so that the two sides cannot disagree.  Pure: no I/O.

Filters are evaluated in the programs, on the record being built, just before it would be written to a ring:
an event a filter drops never reaches a ring buffer; it is counted (``stats``: STAT_FILTERED,
STAT_RATE_LIMITED per kind).

Two sets.  Every key map carries a set number (0 or 1) in its key, and the per-kind configuration array has
one row per (set, kind).  The programs read the active set from MAP_FSET.  Changing filters while running
(SIGHUP, ``collector.set_filters``) writes the inactive set whole, flips MAP_FSET (one u32 store: atomic),
then clears what the old set held.  No program is reloaded, and no event sees half of a change.

Semantics (as issue 15 states them): the values of one key are OR-ed (the key matches when any of its values
does), different keys are AND-ed, and an exclude wins over an include.  Per key, per kind:

    include bit set in the kind's row  and the event's lookup lacks F_INCLUDE  -> dropped
    exclude bit set in the kind's row  and the event's lookup has   F_EXCLUDE  -> dropped

A key map's value is a u32 of F_* bits; one entry may carry both (``--uid 0 --exclude-uid 0``).

What each key is looked up with:

    pid        the current tgid, then each real_parent's tgid up to PID_DEPTH ancestors: the flags of every
               entry met are OR-ed (a process and all its descendants, including those born later)
    uid        the record's uid (the real uid)
    comm       the record's comm (16 bytes, NUL padded)
    exe        task->mm->exe_file->f_inode: (i_sb->s_dev, i_ino); s_dev is the kernel's dev_t
               (major << 20 | minor), not stat()'s encoding
    cgroup     the record's cgroup_id (the v2 cgroup).  User space writes an entry for EVERY cgroup of the
    container  v2 hierarchy it knows (F_* for those that match, including all cgroups below a matching one;
               0 for the others), and rescans it every CGROUP_RESCAN_S seconds.  A cgroup not in the map
               (made since the last scan) is unknown: the event passes that key (fail-open: delivered, never
               lost; not counted apart: the stats have no slot for it).
    port       connect: the destination port, host byte order
    daddr      connect: an LPM trie keyed (set, family, address): family 2 (AF_INET, 4 bytes) or 10 (AF_INET6,
               16 bytes); a v4 network is also written as its v4-mapped v6 network (::ffff:a.b.c.d); each
               entry's value is the OR of the flags of every shorter entry that covers it, as for path
    path       open: an LPM trie keyed (set, path bytes): the opened file's absolute path (resolved_path) when
               the open succeeded, the path as given otherwise; only the first PATH_KEY_MAX bytes are
               compared.  A trie finds only the longest matching prefix, so each entry's value is the OR of
               its own flags and those of every shorter entry that is a prefix of it (user space computes it).

    outcome    not a map: the row's ``outcome`` (OUTCOME_FAILED: only events whose ``ret`` < 0; OUTCOME_SUCCESS:
               only ret >= 0), for the kinds whose record has a ``ret``.
    rate       not a map: the row's ``rate`` (events per second, 0: none): a token bucket per kind in MAP_FRATE,
               refilled by elapsed time, holding at most ``rate`` tokens.  An event without a token is counted
               STAT_RATE_LIMITED.

Context kinds: with the process cache on (``--context``), exec, exit and fork records feed it whatever the
filters say (the lineage of a delivered event needs them): a record that a filter drops is then still
written, with FLAG_FILTERED (or FLAG_RATE_LIMITED) in its header, counted, used for the cache and not
delivered.  With ``--no-context`` they are dropped in the kernel like every other kind.
"""
from __future__ import annotations

import struct

from kestrel_raw import spec

# Map names (kernel names carry the kr_ prefix, like every map of ours).
MAP_FSET = "kr_fset"  # ARRAY, 1 x u32: the active set, 0 or 1
MAP_FCFG = "kr_fcfg"  # ARRAY, SETS * FILTER_KINDS rows of CFG, index set * FILTER_KINDS + kind
MAP_FRATE = "kr_frate"  # ARRAY, FILTER_KINDS x RATE: the token buckets (not per set: a flip keeps the tokens)
MAP_FPID = "kr_fpid"  # HASH KEY_PID -> u32 F_*
MAP_FUID = "kr_fuid"  # HASH KEY_UID -> u32 F_*
MAP_FCOMM = "kr_fcomm"  # HASH KEY_COMM -> u32 F_*
MAP_FEXE = "kr_fexe"  # HASH KEY_EXE -> u32 F_*
MAP_FCGROUP = "kr_fcgrp"  # HASH KEY_CGROUP -> u32 F_*
MAP_FCONTAINER = "kr_fctr"  # HASH KEY_CGROUP -> u32 F_* (the container key's own view of each cgroup)
MAP_FPORT = "kr_fport"  # HASH KEY_PORT -> u32 F_*
MAP_FDADDR = "kr_fdaddr"  # LPM_TRIE KEY_DADDR -> u32 F_*
MAP_FPATH = "kr_fpath"  # LPM_TRIE KEY_PATH -> u32 F_*

SETS = 2
FILTER_KINDS = 256  # every record kind is below 256 (spec: the u16 kind space the JSON encoder dispatches on)
assert max(spec.KINDS) < FILTER_KINDS

# Key bits of a row's include and exclude masks, one per key, in the order of the flags' documentation.
KEY_BITS = {name: 1 << i for i, name in enumerate(
    ("pid", "uid", "comm", "exe", "cgroup", "container", "port", "daddr", "path"))}

# A key map's value.
F_INCLUDE = 1
F_EXCLUDE = 2
VALUE = struct.Struct("<I")

# A row of MAP_FCFG: the key bits with includes, with excludes, the outcome, the rate.  All zero: no filter
# for that kind (the programs test that first, with one 8-byte load of include|exclude and one of
# outcome|rate).
CFG = struct.Struct("<IIII")
CFG_INCLUDE, CFG_EXCLUDE, CFG_OUTCOME, CFG_RATE = 0, 4, 8, 12
OUTCOME_ANY, OUTCOME_FAILED, OUTCOME_SUCCESS = 0, 1, 2

# A value of MAP_FRATE: the time of the last refill (CLOCK_MONOTONIC ns) and the tokens left, in
# thousandths of a token (so that a rate of 1/s refills by 1 every ms, not by 0).
RATE = struct.Struct("<Qq")
RATE_LAST_NS, RATE_TOKENS = 0, 8
TOKEN = 1000

# Keys.  The set is the first field of every key (after the LPM tries' prefixlen, which must come first).
KEY_PID = struct.Struct("<II")  # set, tgid
KEY_UID = struct.Struct("<II")  # set, uid
KEY_COMM = struct.Struct("<I16s")  # set, comm
KEY_EXE = struct.Struct("<IIQ")  # set, s_dev (kernel dev_t), i_ino
KEY_CGROUP = struct.Struct("<IIQ")  # set, 0, cgroup id
KEY_PORT = struct.Struct("<II")  # set, port (host byte order)
# LPM tries: u32 prefixlen (in bits, counting the set and family bytes), then the data.
DADDR_DATA = 1 + 1 + 16  # set, family, address (4 bytes for AF_INET, then zeros)
KEY_DADDR = struct.Struct("<IBB16s")  # prefixlen, set, family, address
PATH_KEY_MAX = 255  # path bytes in a key: the trie's data is at most 256 bytes (LPM_DATA_SIZE_MAX), one is the set
KEY_PATH = struct.Struct(f"<IB{PATH_KEY_MAX}s")  # prefixlen, set, path

PID_DEPTH = 32  # ancestors a pid filter looks through (a deeper descendant is not matched; the README says so)
CGROUP_RESCAN_S = 1.0

# Map sizes.  Each holds both sets.
MAX_VALUES = 1024  # values of one key per set (a flag given that many times is refused on the command line)
MAX_CGROUPS = 65536  # cgroups per set (cgroup and container keys)
ENTRIES = {MAP_FPID: SETS * MAX_VALUES, MAP_FUID: SETS * MAX_VALUES, MAP_FCOMM: SETS * MAX_VALUES,
           MAP_FEXE: SETS * MAX_VALUES, MAP_FPORT: SETS * MAX_VALUES, MAP_FDADDR: SETS * 2 * MAX_VALUES,
           MAP_FPATH: SETS * MAX_VALUES, MAP_FCGROUP: SETS * MAX_CGROUPS, MAP_FCONTAINER: SETS * MAX_CGROUPS}
KEY_STRUCTS = {MAP_FPID: KEY_PID, MAP_FUID: KEY_UID, MAP_FCOMM: KEY_COMM, MAP_FEXE: KEY_EXE,
               MAP_FCGROUP: KEY_CGROUP, MAP_FCONTAINER: KEY_CGROUP, MAP_FPORT: KEY_PORT,
               MAP_FDADDR: KEY_DADDR, MAP_FPATH: KEY_PATH}
LPM_MAPS = (MAP_FDADDR, MAP_FPATH)


class Image:
    """One set's contents, as user space compiles them (kestrel_raw/filters/) and the collector writes them
    (``collector.set_filters``): ``rows`` kind -> CFG bytes (kinds absent: all zero, no filter), and
    ``entries`` map name -> {key bytes: value bytes}, the keys built for ``set``."""

    __slots__ = ("set", "rows", "entries")

    def __init__(self, set: int, rows: dict[int, bytes], entries: dict[str, dict[bytes, bytes]]) -> None:
        if set not in range(SETS):
            raise ValueError(f"set must be 0 or 1, got {set!r}")
        self.set = set
        self.rows = rows
        self.entries = entries

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Image) and (self.set, self.rows, self.entries) == (other.set, other.rows,
                                                                                     other.entries)

    def __repr__(self) -> str:
        return f"Image(set={self.set}, rows={self.rows!r}, entries={self.entries!r})"
