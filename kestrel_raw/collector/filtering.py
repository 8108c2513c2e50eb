"""Writing filters into the kernel: ``FilterWriter(maps).write(image)`` puts a compiled filter image
(kestrel_raw/programs/filtermaps.py ``Image``, made by kestrel_raw/filters/) into the filter maps the programs
read (kestrel_raw/programs/filter.py), with no program reloaded.

The maps hold two sets.  A write fills the set the programs are not reading (every row: the image's rows,
zeros for the kinds it does not name; then its entries), flips MAP_FSET to it (one u32 store: the programs
read the set once per event, so an event sees the old filters or the new ones, never a mix), then deletes
the entries of the image it replaced and zeroes that image's rows, so that the next write starts from an
empty set.  The first write goes to set 0, which the programs read from the start (MAP_FSET is 0 when
created): the collector writes it before attaching (``install_filters``), when no program runs yet.

An image's keys carry a set number; the writer rewrites it to the set it writes, so an image compiled for
either set can be written (``next_set`` says which one the next write fills, for a compiler that wants to
match).  A write that fails part-way (a map full, say) removes what it wrote to the inactive set and raises:
the filters in force are unchanged.

The kernel's counts of what the filters dropped are in MAP_STATS (STAT_FILTERED, STAT_RATE_LIMITED per
kind), which ``stats().kernel`` already reads by name (collector/stats.py): ``filter_counters`` picks them
out.
"""
from __future__ import annotations

import errno

from kestrel_raw.errors import BPFError
from kestrel_raw.kernel import bpf
from kestrel_raw.maps import Map
from kestrel_raw.programs import filtermaps as fm

_U32 = fm.VALUE  # an array map's key, and MAP_FSET's value: one u32
_ZERO_ROW = bytes(fm.CFG.size)
# Where a key carries its set: the first u32 of a hash key; the byte after the prefix length of a trie's.
_SET_AT = {name: (4 if name in fm.LPM_MAPS else 0) for name in fm.KEY_STRUCTS}


class FilterWriter:
    """Writes filter images into the collector's filter maps (``maps``: name -> Map, as load.py made them)."""

    def __init__(self, maps: dict[str, Map]) -> None:
        missing = [name for name in (fm.MAP_FSET, fm.MAP_FCFG, *fm.KEY_STRUCTS) if name not in maps]
        if missing:
            raise ValueError(f"the filter maps {', '.join(missing)} were not created: FilterWriter needs the maps "
                             "of a loaded collector with built-in programs (collector/load.py)")
        self._maps = maps
        self._current: fm.Image | None = None  # the image in force, keyed for the set it is in

    @property
    def next_set(self) -> int:
        """The set the next ``write`` fills: 0 first, then the one not in force."""
        return 0 if self._current is None else 1 - self._current.set

    @property
    def current(self) -> fm.Image | None:
        """The image in force (its keys rewritten for its set), or None before the first write."""
        return self._current

    def write(self, image: fm.Image) -> None:
        """Put ``image`` in force: fill the inactive set, flip, clear the set it replaced."""
        _check(image)
        target = self.next_set
        new = rekeyed(image, target)
        try:
            self._fill(new)
        except BaseException:
            self._clear(new)
            raise
        if self._current is not None or self._active() != target:
            self._maps[fm.MAP_FSET].update(_U32.pack(0), _U32.pack(target))
        old, self._current = self._current, new
        if old is not None:
            self._clear(old)

    def _active(self) -> int:
        return _U32.unpack(self._maps[fm.MAP_FSET].lookup(_U32.pack(0)))[0]

    def _fill(self, image: fm.Image) -> None:
        for name, entries in image.entries.items():
            m = self._maps[name]
            for key, value in entries.items():
                try:
                    m.update(key, value)
                except BPFError as e:
                    if e.errno == errno.E2BIG:
                        raise BPFError(e.op, e.errno, f"the filter map {name} is full ({fm.ENTRIES[name]} entries "
                                       f"for both sets): give at most {fm.MAX_VALUES} values of one key and "
                                       f"{fm.MAX_CGROUPS} cgroups") from None
                    raise
        self._rows(image.set, {kind: image.rows.get(kind, _ZERO_ROW) for kind in range(fm.FILTER_KINDS)})

    def _clear(self, image: fm.Image) -> None:
        """Delete ``image``'s entries and zero its set's rows (what a failed fill wrote, or the set a flip
        left)."""
        for name, entries in image.entries.items():
            m = self._maps[name]
            for key in entries:
                m.delete(key)
        self._rows(image.set, {kind: _ZERO_ROW for kind in image.rows})

    def _rows(self, set_: int, rows: dict[int, bytes]) -> None:
        """MAP_FCFG[set * FILTER_KINDS + kind] = row, for each, in one BPF_MAP_UPDATE_BATCH where the kernel
        has it (one syscall for the 256 rows of a set)."""
        if not rows:
            return
        cfg = self._maps[fm.MAP_FCFG]
        keys = b"".join(_U32.pack(set_ * fm.FILTER_KINDS + kind) for kind in rows)
        values = b"".join(rows.values())
        try:
            if bpf.map_update_batch(cfg.fileno(), keys, values, len(rows)) == len(rows):
                return
        except BPFError as e:
            if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, 524):  # 524: the kernel's ENOTSUPP
                raise
        for kind, row in rows.items():
            cfg.update(_U32.pack(set_ * fm.FILTER_KINDS + kind), row)


def rekeyed(image: fm.Image, set_: int) -> fm.Image:
    """``image`` with every key carrying ``set_`` (the rows are the same: their set is where they go)."""
    if image.set == set_:
        return image
    entries = {}
    for name, items in image.entries.items():
        at = _SET_AT[name]
        width = 1 if name in fm.LPM_MAPS else 4
        entries[name] = {key[:at] + set_.to_bytes(width, "little") + key[at + width:]: value
                         for key, value in items.items()}
    return fm.Image(set_, dict(image.rows), entries)


def _check(image: fm.Image) -> None:
    """Refuse an image the maps cannot take, naming what is wrong (before anything is written)."""
    for kind, row in image.rows.items():
        if not 0 <= kind < fm.FILTER_KINDS:
            raise ValueError(f"filter image: kind {kind} outside 0..{fm.FILTER_KINDS - 1}")
        if len(row) != fm.CFG.size:
            raise ValueError(f"filter image: the row of kind {kind} is {len(row)} bytes, not {fm.CFG.size}")
    for name, items in image.entries.items():
        key = fm.KEY_STRUCTS.get(name)
        if key is None:
            raise ValueError(f"filter image: no filter map {name!r} (known: {', '.join(fm.KEY_STRUCTS)})")
        for k, v in items.items():
            if len(k) != key.size or len(v) != fm.VALUE.size:
                raise ValueError(f"filter image: an entry of {name} has a {len(k)}-byte key and a {len(v)}-byte "
                                 f"value, not {key.size} and {fm.VALUE.size}")
        if len(items) > fm.ENTRIES[name] // fm.SETS:
            raise ValueError(f"filter image: {len(items)} entries for {name}, more than one set holds "
                             f"({fm.ENTRIES[name] // fm.SETS})")


def install_filters(maps: dict[str, Map], image: fm.Image | None) -> FilterWriter:
    """The collector's hook at start, before attaching (so that no event escapes the filter): a writer for
    ``maps``, with ``image`` (cfg.filters compiled; None: no filter) written.  Keep the writer for later
    changes (``KestrelCollector.set_filters``)."""
    writer = FilterWriter(maps)
    if image is not None:
        writer.write(image)
    return writer


def filter_counters(kernel: dict[str, dict[str, list[int]]]) -> dict[str, dict[str, int]]:
    """From ``stats().kernel`` (type -> counter -> per CPU): type -> {"filtered": n, "rate_limited": n}, the
    events the filters dropped and the rate limits held back (the types with none left out)."""
    out = {}
    for kind, counters in kernel.items():
        counts = {name: sum(counters.get(name, ())) for name in ("filtered", "rate_limited")}
        if any(counts.values()):
            out[kind] = counts
    return out
