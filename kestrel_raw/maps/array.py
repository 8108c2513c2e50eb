"""Array maps: ``ArrayMap`` (u32 index -> value) and ``PerCPUArrayMap`` (one value per possible CPU)."""
from __future__ import annotations

import struct

from kestrel_raw.kernel.uapi import BPF_ANY, BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_PROG_ARRAY
from kestrel_raw.maps._base import Map

POSSIBLE_CPUS_PATH = "/sys/devices/system/cpu/possible"
_KEY = struct.Struct("<I")  # array keys are __u32 indexes in host order (little-endian on x86_64, arm64)


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """Parse a kernel cpu list (``0-3,5,7-8``) into the cpu numbers it names."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            first = int(lo)
            last = int(hi) if sep else first
        except ValueError:
            raise ValueError(f"malformed cpu list {text!r}: {part!r} is not N or N-M") from None
        if last < first:
            raise ValueError(f"malformed cpu list {text!r}: range {part!r} runs backwards")
        cpus.extend(range(first, last + 1))
    if not cpus:
        raise ValueError(f"empty cpu list {text!r}")
    return tuple(cpus)


def possible_cpus(path: str = POSSIBLE_CPUS_PATH) -> tuple[int, ...]:
    """The possible CPUs: per-CPU maps hold one value for each, online or not."""
    with open(path) as f:
        return parse_cpu_list(f.read())


def _round_up8(n: int) -> int:
    return (n + 7) & ~7


class ArrayMap(Map):
    """BPF_MAP_TYPE_ARRAY: ``max_entries`` preallocated, zeroed values indexed 0..max_entries-1."""

    MAP_TYPE = BPF_MAP_TYPE_ARRAY

    def __init__(self, value_size: int, max_entries: int, name: str = "", flags: int = 0) -> None:
        super().__init__(self.MAP_TYPE, _KEY.size, value_size, max_entries, name=name, flags=flags)

    def __len__(self) -> int:
        return self.max_entries

    def _key(self, index: int) -> bytes:
        if not 0 <= index < self.max_entries:
            raise IndexError(f"map {self.name or self.fd}: index {index} outside 0..{self.max_entries - 1}")
        return _KEY.pack(index)

    def __getitem__(self, index: int) -> bytes:
        value = self.lookup(self._key(index))
        assert value is not None, "an array lookup inside its bounds always finds a value"
        return value

    def __setitem__(self, index: int, value: bytes) -> None:
        self.update(self._key(index), value, BPF_ANY)


class PerCPUArrayMap(ArrayMap):
    """BPF_MAP_TYPE_PERCPU_ARRAY: each index holds one value per possible CPU.

    A lookup returns a tuple with one ``value_size`` bytes value per possible CPU, in CPU order; in the
    syscall each value occupies ``round_up(value_size, 8)`` bytes, as the kernel copies them.
    """

    MAP_TYPE = BPF_MAP_TYPE_PERCPU_ARRAY

    def __init__(self, value_size: int, max_entries: int, name: str = "", flags: int = 0) -> None:
        super().__init__(value_size, max_entries, name=name, flags=flags)
        self.cpus = possible_cpus()
        self._stride = _round_up8(value_size)

    def _lookup_size(self) -> int:
        return self._stride * len(self.cpus)

    def __getitem__(self, index: int) -> tuple[bytes, ...]:  # type: ignore[override]
        raw = super().__getitem__(index)
        return tuple(raw[i * self._stride: i * self._stride + self.value_size] for i in range(len(self.cpus)))

    def __setitem__(self, index: int, values) -> None:  # type: ignore[override]
        """Set index to one value per possible CPU (a sequence), or the same bytes on every CPU."""
        if isinstance(values, (bytes, bytearray, memoryview)):
            values = [bytes(values)] * len(self.cpus)
        values = list(values)
        if len(values) != len(self.cpus):
            raise ValueError(f"map {self.name or self.fd}: {len(values)} values for {len(self.cpus)} possible CPUs")
        pad = b"\0" * (self._stride - self.value_size)
        for v in values:
            self._check_len(v, self.value_size, "value")
        self.update(self._key(index), b"".join(bytes(v) + pad for v in values), BPF_ANY)

    def sum_u64(self, index: int) -> int:
        """The sum over CPUs of a u64 counter at the start of each value (the usual per-CPU counter)."""
        return sum(struct.unpack_from("<Q", v)[0] for v in self[index])


class ProgArrayMap(ArrayMap):
    """BPF_MAP_TYPE_PROG_ARRAY: slots holding programs for bpf_tail_call; ``prog_array[i] = program`` puts a
    loaded program (anything with an ``fd``) in slot i.  The kernel keeps its own reference."""

    MAP_TYPE = BPF_MAP_TYPE_PROG_ARRAY

    def __init__(self, max_entries: int, name: str = "") -> None:
        super().__init__(4, max_entries, name=name)

    def __setitem__(self, index: int, program) -> None:
        self.update(self._key(index), _KEY.pack(program.fd), BPF_ANY)

    def clear(self) -> None:
        """Empty every slot.  The kernel drops its references to the programs now, not when the map is freed
        (after the last fd closes, from a workqueue): their ids are gone when this returns."""
        for index in range(self.max_entries):
            self.delete(self._key(index))
