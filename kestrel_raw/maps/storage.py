"""``TaskStorageMap``: BPF_MAP_TYPE_TASK_STORAGE, a value per task, made by programs on demand.

The kernel requires BTF for a local storage map's key (an int: the task's pidfd, from user space) and
value; the map describes its value as a struct of one byte array and loads that BTF itself
(kestrel_raw/btf/build.py).  Programs reach a task's value with bpf_task_storage_get (created with
BPF_LOCAL_STORAGE_GET_F_CREATE); the kernel frees it when the task exits.  Nothing here reads values from
user space: the collector only needs the map to exist.
"""
from __future__ import annotations

from kestrel_raw.btf.build import BTFBuilder
from kestrel_raw.kernel import bpf
from kestrel_raw.kernel.uapi import BPF_F_NO_PREALLOC, BPF_MAP_TYPE_TASK_STORAGE
from kestrel_raw.maps._base import Map


class TaskStorageMap(Map):
    def __init__(self, value_size: int, name: str = "") -> None:
        b = BTFBuilder()
        key = b.int("int", 4, signed=True)
        value = b.struct(f"{name or 'kr'}_value", [("data", b.array(b.int("char", 1, signed=True), value_size))])
        self._btf = bpf.btf_load(b.encode())
        try:
            # local storage maps have no max_entries and must not be preallocated
            super().__init__(BPF_MAP_TYPE_TASK_STORAGE, 4, value_size, 0, name=name, flags=BPF_F_NO_PREALLOC,
                             btf=(self._btf.fd, key, value))
        finally:
            # the map holds its own reference to the BTF
            self._btf.close()
