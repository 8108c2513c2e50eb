"""``Map``: a BPF map created in the kernel, owning its file descriptor."""
from __future__ import annotations

from collections.abc import Iterator

from kestrel_raw.kernel import bpf
from kestrel_raw.kernel.fd import FDOwner
from kestrel_raw.kernel.uapi import BPF_ANY


class Map(FDOwner):
    """A BPF map (BPF_MAP_CREATE).  Keys and values are raw bytes of exactly ``key_size``/``value_size``.

    Subclasses give the bytes a shape (an array indexed by int, values per CPU, a ring buffer); this class
    owns the fd: ``close()`` is idempotent and the map is freed by the kernel once no program uses it.
    """

    def __init__(self, map_type: int, key_size: int, value_size: int, max_entries: int, name: str = "",
                 flags: int = 0, inner_map_fd: int = 0, btf: tuple[int, int, int] | None = None) -> None:
        btf_fd, key_type, value_type = btf or (0, 0, 0)
        self._fd = bpf.map_create(map_type, key_size, value_size, max_entries, name=name, flags=flags,
                                  inner_map_fd=inner_map_fd, btf_fd=btf_fd, btf_key_type_id=key_type,
                                  btf_value_type_id=value_type)
        self.map_type = map_type
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self.name = name
        self.flags = flags


    def map_info(self) -> bpf.MapInfo:
        """What the kernel says about this map (id, type, sizes, name)."""
        return bpf.map_info(self.fileno())

    # Raw byte access, shared by the subclasses.
    def lookup(self, key: bytes) -> bytes | None:
        """The value under ``key``, or None when there is none."""
        return bpf.map_lookup_elem(self.fileno(), key, self._lookup_size(), key_size=self.key_size)

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        self._check_len(key, self.key_size, "key")
        self._check_len(value, self._lookup_size(), "value")
        bpf.map_update_elem(self.fileno(), key, value, flags)

    def delete(self, key: bytes) -> bool:
        """Delete ``key``; False when it was not there."""
        self._check_len(key, self.key_size, "key")
        return bpf.map_delete_elem(self.fileno(), key)

    def keys(self) -> Iterator[bytes]:
        """Every key, by BPF_MAP_GET_NEXT_KEY (a concurrent writer may make the walk skip or repeat)."""
        key = None
        while (key := bpf.map_get_next_key(self.fileno(), key, self.key_size)) is not None:
            yield key

    def _lookup_size(self) -> int:
        """How many bytes one lookup returns (per-CPU maps return one value per possible CPU)."""
        return self.value_size

    def _check_len(self, data: bytes, size: int, what: str) -> None:
        if len(data) != size:
            raise ValueError(f"map {self.name or self.fd}: {what} is {len(data)} bytes, expected {size}")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, type={self.map_type}, key_size={self.key_size}, "
                f"value_size={self.value_size}, max_entries={self.max_entries}, fd={self.fd})")
