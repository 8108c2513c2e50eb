"""What this kernel has, learnt as libbpf learns it: by loading something tiny and seeing it accepted.

BTF kinds (``bpfobj.btffix.BTF_FEATURES``): a minimal blob using the kind, BPF_BTF_LOAD.  ``bpf_cookie``
(LINUX_HAS_BPF_COOKIE): a kprobe program that calls bpf_get_attach_cookie.  ``syscall_wrapper``
(LINUX_HAS_SYSCALL_WRAPPER): whether syscalls enter through arch wrappers (__x64_sys_bpf), seen as libbpf
sees it, by opening a kprobe there (0 on a kernel without kprobes, as libbpf answers there too).  Each answer
is cached for the process.
"""
from __future__ import annotations

import os
import struct
from functools import lru_cache

from kestrel_raw.btf.kinds import (
    BTF_FUNC_GLOBAL, BTF_KIND_DATASEC, BTF_KIND_DECL_TAG, BTF_KIND_ENUM64, BTF_KIND_FLOAT, BTF_KIND_FUNC,
    BTF_KIND_FUNC_PROTO, BTF_KIND_INT, BTF_KIND_PTR, BTF_KIND_TYPE_TAG, BTF_KIND_VAR, BTF_MAGIC,
    BTF_VAR_GLOBAL_ALLOCATED, btf_info_enc,
)
from kestrel_raw.errors import BPFError, SetupError
from kestrel_raw.kernel import bpf
from kestrel_raw.kernel.uapi import BPF_PROG_TYPE_KPROBE

BPF_FUNC_get_attach_cookie = 174
# The prefix of the syscall wrappers' names per architecture (libbpf's arch_specific_syscall_pfx).
SYSCALL_PREFIX = {"x86_64": "x64", "aarch64": "arm64", "s390x": "s390x", "riscv64": "riscv",
                  "ppc64le": "powerpc"}

_INT = [0, btf_info_enc(BTF_KIND_INT, False, 0), 4, 32 | 1 << 24]   # [1] int, signed 32 bits
# name offsets in the probes' string table b"\0int\0a\0.data\0tag\0"
_S_INT, _S_A, _S_DATA, _S_TAG = 1, 5, 7, 13
_STRS = b"\0int\0a\0.data\0tag\0"


def _blob(*types: list[int]) -> bytes:
    words = [w for t in types for w in t]
    body = struct.pack(f"<{len(words)}I", *words)
    return struct.pack("<HBBIIIII", BTF_MAGIC, 1, 0, 24, 0, len(body), len(body), len(_STRS)) + body + _STRS


_INT_NAMED = [_S_INT, *_INT[1:]]
BTF_PROBES = {
    "btf_func": _blob(_INT_NAMED, [0, btf_info_enc(BTF_KIND_FUNC_PROTO, False, 1), 1, _S_A, 1],
                      [_S_A, btf_info_enc(BTF_KIND_FUNC, False, 0), 2]),
    "btf_func_global": _blob(_INT_NAMED, [0, btf_info_enc(BTF_KIND_FUNC_PROTO, False, 1), 1, _S_A, 1],
                             [_S_A, btf_info_enc(BTF_KIND_FUNC, False, BTF_FUNC_GLOBAL), 2]),
    "btf_datasec": _blob(_INT_NAMED, [_S_A, btf_info_enc(BTF_KIND_VAR, False, 0), 1, BTF_VAR_GLOBAL_ALLOCATED],
                         [_S_DATA, btf_info_enc(BTF_KIND_DATASEC, False, 1), 4, 2, 0, 4]),
    "btf_float": _blob([_S_A, btf_info_enc(BTF_KIND_FLOAT, False, 0), 4]),
    "btf_decl_tag": _blob(_INT_NAMED, [_S_A, btf_info_enc(BTF_KIND_VAR, False, 0), 1, BTF_VAR_GLOBAL_ALLOCATED],
                          [_S_TAG, btf_info_enc(BTF_KIND_DECL_TAG, False, 0), 2, 0xFFFFFFFF]),
    "btf_type_tag": _blob(_INT_NAMED, [_S_TAG, btf_info_enc(BTF_KIND_TYPE_TAG, False, 0), 1],
                          [0, btf_info_enc(BTF_KIND_PTR, False, 0), 2]),
    "btf_enum64": _blob([_S_A, btf_info_enc(BTF_KIND_ENUM64, False, 1), 8, _S_TAG, 0, 1]),
}


@lru_cache(maxsize=None)
def btf_feature(name: str) -> bool:
    """Whether BPF_BTF_LOAD accepts the probe blob of ``name`` (a key of BTF_PROBES)."""
    try:
        bpf.btf_load(BTF_PROBES[name], log_size=4096).close()
        return True
    except BPFError:
        return False


def btf_features() -> frozenset[str]:
    return frozenset(name for name in BTF_PROBES if btf_feature(name))


@lru_cache(maxsize=None)
def btf_supported() -> bool:
    """Whether this kernel loads BTF at all (an int alone)."""
    try:
        bpf.btf_load(_blob(_INT_NAMED), log_size=4096).close()
        return True
    except BPFError:
        return False


@lru_cache(maxsize=None)
def feature(name: str) -> bool:
    """A feature a virtual __kconfig extern asks about: "bpf_cookie" or "syscall_wrapper"."""
    if name == "bpf_cookie":
        call = struct.pack("<BBhi", 0x85, 0, 0, BPF_FUNC_get_attach_cookie)
        exit_ = struct.pack("<BBhi", 0x95, 0, 0, 0)
        try:
            bpf.prog_load(BPF_PROG_TYPE_KPROBE, call + exit_, license="GPL").close()
            return True
        except BPFError:
            return False
    if name == "syscall_wrapper":
        prefix = SYSCALL_PREFIX.get(os.uname().machine)
        if prefix is None:
            return False
        from kestrel_raw.kernel import perf
        try:
            perf.probe_event("kprobe", f"__{prefix}_sys_bpf".encode(), 0, False, pid=os.getpid()).close()
            return True
        except (BPFError, SetupError, OSError):
            return False
    raise ValueError(f"unknown kernel feature {name!r} (known: bpf_cookie, syscall_wrapper)")
