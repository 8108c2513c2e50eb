"""``HashMap``: BPF_MAP_TYPE_HASH with raw byte keys and values."""
from __future__ import annotations

from collections.abc import Iterator

from kestrel_raw.kernel.uapi import BPF_ANY, BPF_MAP_TYPE_HASH
from kestrel_raw.maps._base import Map


class HashMap(Map):
    """BPF_MAP_TYPE_HASH: up to ``max_entries`` key -> value pairs, both raw bytes of fixed size."""

    def __init__(self, key_size: int, value_size: int, max_entries: int, name: str = "", flags: int = 0) -> None:
        super().__init__(BPF_MAP_TYPE_HASH, key_size, value_size, max_entries, name=name, flags=flags)

    def __getitem__(self, key: bytes) -> bytes:
        self._check_len(key, self.key_size, "key")
        value = self.lookup(key)
        if value is None:
            raise KeyError(key)
        return value

    def get(self, key: bytes, default: bytes | None = None) -> bytes | None:
        self._check_len(key, self.key_size, "key")
        value = self.lookup(key)
        return default if value is None else value

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.update(key, value, BPF_ANY)

    def __delitem__(self, key: bytes) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def __contains__(self, key: bytes) -> bool:
        return self.get(key) is not None

    def __iter__(self) -> Iterator[bytes]:
        return self.keys()

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value); a key deleted between the walk and the lookup is skipped."""
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:
                yield key, value
