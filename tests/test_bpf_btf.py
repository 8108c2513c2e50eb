"""Our layouts (kernel/uapi.py) and constants against the running kernel's own BTF (/sys/kernel/btf/vmlinux).

The pinned-offset tests say what the uapi header says; these say what *this* kernel says, so a layout that
drifted or a field that was misread fails here on any kernel the suite runs on (6.1, 6.12, 6.18, arm64).
"""
from __future__ import annotations

import os

import pytest

from kestrel_raw.kernel import uapi

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


def _named(layout):
    """Every field of ``layout`` but the reserved ones (``__reserved_*``, whose width shrinks as the kernel
    adds fields), each union member under each of its names."""
    return [f for name, f in layout.fields.items() if not name.startswith("_")]


def _where(btf, agg, path: str):
    """(offset in bits, size in bits) of the member at dotted ``path`` inside ``agg``, as BTF says."""
    bits = 0
    for hop in path.split("."):
        mem = btf.member(agg, hop)
        bits += mem.bit_offset
        size = mem.bit_size or 8 * mem.size
        agg = btf.resolve(mem.type)
    return bits, size


def _ours(f):
    """(offset in bits, size in bits) of our field: a bit field's own bits, else its bytes."""
    return (8 * f.offset + f.bit_offset, f.bit_size) if f.bit_size else (8 * f.offset, 8 * f.size)


# (our layout, how to find its part of union bpf_attr: ("anon", anchor field) or ("named", member name))
ATTR_VIEWS = [
    ("MapCreateAttr", ("anon", "map_type")),
    ("MapElemAttr", ("anon", "next_key")),
    ("MapBatchAttr", ("named", "batch")),
    ("ProgLoadAttr", ("anon", "insn_cnt")),
    ("GetIdAttr", ("anon", "start_id")),
    ("InfoByFdAttr", ("named", "info")),
    ("RawTracepointAttr", ("named", "raw_tracepoint")),
    ("LinkCreateAttr", ("named", "link_create")),
    ("EnableStatsAttr", ("named", "enable_stats")),
    ("IterCreateAttr", ("named", "iter_create")),
]
# Our names that are nested in BTF.
BTF_PATH = {("LinkCreateAttr", "bpf_cookie"): "perf_event.bpf_cookie"}


@pytest.mark.kernel
@pytest.mark.parametrize("name,where", ATTR_VIEWS, ids=[n for n, _ in ATTR_VIEWS])
def test_bpf_attr_views_match_kernel_btf(btf, name, where):
    layout = getattr(uapi, name)
    how, key = where
    if how == "anon":
        base, part = _anon_struct_with(btf, "bpf_attr", key)
    else:
        m = btf.member("bpf_attr", key)
        base, part = m.offset, btf.resolve(m.type)
    assert layout.size <= btf.size_of("bpf_attr")
    for f in _named(layout):
        bits, size = _where(btf, part, BTF_PATH.get((name, f.name), f.name))
        assert (8 * base + bits, size) == _ours(f), f"{name}.{f.name}"


@pytest.mark.kernel
@pytest.mark.parametrize("name,btf_name", [
    ("BpfProgInfo", "bpf_prog_info"), ("BpfMapInfo", "bpf_map_info"), ("BpfLinkInfo", "bpf_link_info"),
])
def test_info_structs_match_kernel_btf(btf, name, btf_name):
    layout = getattr(uapi, name)
    for f in _named(layout):
        assert _where(btf, btf.find(btf_name), f.name) == _ours(f), f"{name}.{f.name}"
    assert btf.size_of(btf_name) >= layout.size


@pytest.mark.kernel
def test_perf_event_attr_matches_kernel_btf(btf):
    size = btf.size_of("perf_event_attr")
    if size < uapi.PerfEventAttr.size:
        # A kernel before config3 (6.3): our extra bytes are zero, which the kernel accepts.
        assert size in (uapi.PERF_ATTR_SIZE_VER7, uapi.PERF_ATTR_SIZE_VER6)
    checked = []
    for f in _named(uapi.PerfEventAttr):
        if f.offset >= size:
            continue
        assert _where(btf, btf.find("perf_event_attr"), f.name) == _ours(f), f.name
        checked.append(f.name)
    # Every flag bit (disabled ... sigtrap: all of 6.1's) and every union member under each name was compared.
    assert {"disabled", "precise_ip", "sigtrap", "sample_freq", "wakeup_watermark", "config1", "config2",
            "probe_offset"} <= set(checked)


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
                                              "BPF_TRACE_ITER", "BPF_PERF_EVENT")}
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
