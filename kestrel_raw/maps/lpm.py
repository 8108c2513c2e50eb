"""``LpmTrieMap``: BPF_MAP_TYPE_LPM_TRIE, longest-prefix match on byte keys (``struct bpf_lpm_trie_key``: a
u32 prefix length in bits, then the data).  The kernel refuses a trie without BPF_F_NO_PREALLOC: its nodes
are allocated as entries are added."""
from __future__ import annotations

from kestrel_raw.kernel.uapi import BPF_F_NO_PREALLOC, BPF_MAP_TYPE_LPM_TRIE
from kestrel_raw.maps._base import Map
from kestrel_raw.maps.hash import HashMap


class LpmTrieMap(HashMap):
    """Keys are whole ``struct bpf_lpm_trie_key`` bytes (prefixlen first); a lookup from user space, like one
    from a program, finds the longest stored prefix of the key; an update or a delete names the entry
    exactly."""

    def __init__(self, key_size: int, value_size: int, max_entries: int, name: str = "", flags: int = 0) -> None:
        Map.__init__(self, BPF_MAP_TYPE_LPM_TRIE, key_size, value_size, max_entries, name=name,
                     flags=flags | BPF_F_NO_PREALLOC)
