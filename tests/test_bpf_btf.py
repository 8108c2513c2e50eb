"""Our ctypes layouts and constants against the running kernel's own BTF (/sys/kernel/btf/vmlinux).

The pinned-offset tests say what the uapi header says; these say what *this* kernel says, so a layout that
drifted or a field that was misread fails here on any kernel the suite runs on (6.1, 6.12, 6.18, arm64).
"""
from __future__ import annotations

import ctypes
import os

import pytest

from kestrel_raw.kernel import bpf, uapi

VMLINUX = "/sys/kernel/btf/vmlinux"


@pytest.fixture(scope="module")
def btf():
    from kestrel_raw.btf import BTF
    if not os.path.exists(VMLINUX):
        from tests.conftest import kernel_lacks
        kernel_lacks(f"{VMLINUX} (CONFIG_DEBUG_INFO_BTF)")
    return BTF.load(VMLINUX)


def _anon_struct_with(btf, union: str, anchor: str):
    """The anonymous struct of ``union`` that holds ``anchor`` (union bpf_attr has one per command group)."""
    for m in btf.members(union):
        if m.name:
            continue
        inner = btf.resolve(m.type)
        if anchor in {x.name for x in btf.members(inner)} or _has(btf, inner, anchor):
            return m.offset, inner
    raise AssertionError(f"no anonymous member of {union} holds {anchor!r}")


def _has(btf, agg, name):
    try:
        btf.member(agg, name)
        return True
    except Exception:
        return False


def _fields(struct):
    return [(name, getattr(struct, name)) for name, *_ in struct._fields_ if not name.startswith("_")]


# (our structure, how to find its part of union bpf_attr: ("anon", anchor field) or ("named", member name))
ATTR_VIEWS = [
    (bpf.MapCreateAttr, ("anon", "map_type")),
    (bpf.MapElemAttr, ("anon", "next_key")),
    (bpf.ProgLoadAttr, ("anon", "insn_cnt")),
    (bpf.GetIdAttr, ("anon", "start_id")),
    (bpf.InfoByFdAttr, ("named", "info")),
    (bpf.RawTracepointAttr, ("named", "raw_tracepoint")),
    (bpf.LinkCreateAttr, ("named", "link_create")),
    (bpf.EnableStatsAttr, ("named", "enable_stats")),
]
# Our names that are spelled differently, or nested, in BTF.
BTF_NAME = {(bpf.LinkCreateAttr, "bpf_cookie"): "perf_event.bpf_cookie"}


@pytest.mark.kernel
@pytest.mark.parametrize("struct,where", ATTR_VIEWS, ids=[s.__name__ for s, _ in ATTR_VIEWS])
def test_bpf_attr_views_match_kernel_btf(btf, struct, where):
    how, key = where
    if how == "anon":
        base, part = _anon_struct_with(btf, "bpf_attr", key)
    else:
        m = btf.member("bpf_attr", key)
        base, part = m.offset, btf.resolve(m.type)
    assert ctypes.sizeof(struct) <= btf.size_of("bpf_attr")
    for name, field in _fields(struct):
        btf_name = BTF_NAME.get((struct, name), name)
        offset, size = 0, None
        agg = part
        for hop in btf_name.split("."):
            mem = btf.member(agg, hop)
            offset += mem.offset
            size = mem.size
            agg = btf.resolve(mem.type)
        assert (base + offset, size) == (field.offset, field.size), f"{struct.__name__}.{name}"


@pytest.mark.kernel
@pytest.mark.parametrize("struct,btf_name", [
    (bpf.BpfProgInfo, "bpf_prog_info"), (bpf.BpfMapInfo, "bpf_map_info"), (bpf.BpfLinkInfo, "bpf_link_info"),
])
def test_info_structs_match_kernel_btf(btf, struct, btf_name):
    for name, field in _fields(struct):
        mem = btf.member(btf_name, name)
        if mem.bit_size:  # gpl_compatible:1 lives in the u32 we read whole
            assert mem.bit_offset // 8 == field.offset, name
        else:
            assert (mem.offset, mem.size) == (field.offset, field.size), name
    assert btf.size_of(btf_name) >= ctypes.sizeof(struct)


@pytest.mark.kernel
def test_perf_event_attr_matches_kernel_btf(btf):
    size = btf.size_of("perf_event_attr")
    if size < ctypes.sizeof(uapi.PerfEventAttr):
        # A kernel before config3 (6.3): our extra bytes are zero, which the kernel accepts.
        assert size in (uapi.PERF_ATTR_SIZE_VER7, uapi.PERF_ATTR_SIZE_VER6)
    for name, *_ in uapi.PerfEventAttr._fields_:
        if name.startswith("_") or len(_) > 1:
            continue  # reserved padding; bit fields checked below
        field = getattr(uapi.PerfEventAttr, name)
        if field.offset >= size:
            continue
        mem = btf.member("perf_event_attr", name)  # the unions' first members carry our names
        assert (mem.offset, mem.size) == (field.offset, field.size), name
    for bit, name in enumerate(["disabled", "inherit", "pinned", "exclusive", "exclude_user", "exclude_kernel"]):
        mem = btf.member("perf_event_attr", name)
        assert (mem.bit_offset, mem.bit_size) == (40 * 8 + bit, 1), name


@pytest.mark.kernel
@pytest.mark.parametrize("enum,prefix", [
    ("bpf_cmd", "BPF_"), ("bpf_map_type", "BPF_MAP_TYPE_"), ("bpf_prog_type", "BPF_PROG_TYPE_"),
    ("bpf_attach_type", None), ("bpf_link_type", "BPF_LINK_TYPE_"), ("bpf_stats_type", "BPF_STATS_"),
])
def test_uapi_enums_match_kernel_btf(btf, enum, prefix):
    values = btf.enum_values(enum)
    if enum == "bpf_cmd":
        ours = {name: v for v, name in uapi.BPF_CMD_NAMES.items()}
    elif enum == "bpf_attach_type":
        ours = {n: getattr(uapi, n) for n in ("BPF_TRACE_RAW_TP", "BPF_TRACE_FENTRY", "BPF_TRACE_FEXIT",
                                              "BPF_PERF_EVENT")}
    else:
        ours = {n: getattr(uapi, n) for n in dir(uapi) if n.startswith(prefix)}
    assert ours
    for name, value in ours.items():
        assert values[name] == value, name


@pytest.mark.kernel
def test_perf_type_ids_match_kernel_btf(btf):
    values = btf.enum_values("perf_type_id")
    for name in ("PERF_TYPE_HARDWARE", "PERF_TYPE_SOFTWARE", "PERF_TYPE_TRACEPOINT", "PERF_TYPE_HW_CACHE",
                 "PERF_TYPE_RAW", "PERF_TYPE_BREAKPOINT"):
        assert values[name] == getattr(uapi, name), name
