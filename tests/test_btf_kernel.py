"""The BTF reader on the running kernel's BTF, and cross-checked with bpftool where it is installed.

Offsets differ between kernels (Debian 6.1 vs 6.18), so nothing here hard-codes one: the tests assert
relations (a hop equals the member it names, arg_end follows arg_start) and agreement with other
sources (our helper-id and bpf_cmd tables, bpftool's own dumps).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from kestrel_raw.btf import BTF, VMLINUX_BTF, format_aggregate, format_raw
from kestrel_raw.btf.kinds import BTF_KIND_PTR, BTF_KIND_STRUCT, BTF_KIND_UNION, KIND_NAMES

from helpers import BPFTOOL, REPO

TOOL = os.path.join(REPO, "tools", "btfdump.py")


@pytest.fixture(scope="module")
def btf() -> BTF:
    if not os.path.exists(VMLINUX_BTF):
        pytest.skip(f"kernel lacks: {VMLINUX_BTF} (CONFIG_DEBUG_INFO_BTF)")
    return BTF.load()


@pytest.fixture(scope="module")
def bpftool_raw() -> list[str]:
    if BPFTOOL is None:
        pytest.skip("bpftool is not installed")
    out = subprocess.run([BPFTOOL, "btf", "dump", "file", VMLINUX_BTF, "format", "raw"],
                         capture_output=True, text=True, check=True).stdout
    return out.splitlines()


@pytest.fixture(scope="module")
def bpftool_c() -> str:
    if BPFTOOL is None:
        pytest.skip("bpftool is not installed")
    return subprocess.run([BPFTOOL, "btf", "dump", "file", VMLINUX_BTF, "format", "c"],
                          capture_output=True, text=True, check=True).stdout


@pytest.mark.kernel
def test_load_is_lazy():
    # Types are decoded when asked for (start-up time is the benchmark's business, not a unit test's).
    b = BTF.load()
    b.member("task_struct", "real_parent")
    assert 0 < len(b._cache) < len(b) // 100, f"{len(b._cache)} of {len(b)} types decoded for one lookup"


@pytest.mark.kernel
def test_real_parent_is_a_task_pointer(btf):
    m = btf.member("task_struct", "real_parent")
    assert m.size == btf.pointer_size == 8
    assert m.offset % 8 == 0 and m.offset + m.size <= btf.size_of("task_struct")
    ptr = btf.resolve(m.type)
    assert ptr.kind == BTF_KIND_PTR and btf.resolve(ptr.type).name == "task_struct"
    assert btf.type_name(m.type) == "struct task_struct *"


@pytest.mark.kernel
def test_paths_are_made_of_the_members_they_name(btf):
    mm = btf.member("task_struct", "mm")
    arg_start = btf.member("mm_struct", "arg_start")
    assert btf.path("task_struct.mm.arg_start") == [(mm.offset, 8), (arg_start.offset, 8)]
    # arg_start lives in an anonymous struct of mm_struct: found only by searching through it.
    assert "arg_start" not in {x.name for x in btf.members("mm_struct")}
    assert any(not x.name for x in btf.members("mm_struct"))
    assert btf.member("mm_struct", "arg_end").offset == arg_start.offset + 8
    assert btf.path("task_struct.real_parent.tgid") == [
        (btf.member("task_struct", "real_parent").offset, 8), (btf.member("task_struct", "tgid").offset, 4)]
    live = btf.member("signal_struct", "live")
    assert btf.path("signal_struct.live.counter") == [(live.offset + btf.member(live.type, "counter").offset, 4)]
    assert btf.path("task_struct.comm") == [(btf.member("task_struct", "comm").offset, 16)]


@pytest.mark.kernel
def test_enums_agree_with_our_tables(btf):
    from kestrel_raw.kernel import uapi
    from kestrel_raw.asm.helpers import HELPERS

    func_ids = btf.enum_values("bpf_func_id")
    assert btf.enum_value("bpf_func_id", "BPF_FUNC_ringbuf_reserve") == 131
    known = {name: func_ids[f"BPF_FUNC_{name}"] for name in HELPERS if f"BPF_FUNC_{name}" in func_ids}
    assert len(known) > 150 and known == {name: HELPERS[name] for name in known}
    cmds = btf.enum_values("bpf_cmd")
    shared = [name for name in cmds if hasattr(uapi, name)]
    assert "BPF_PROG_LOAD" in shared and all(getattr(uapi, name) == cmds[name] for name in shared)


@pytest.mark.kernel
def test_sizes_and_unions(btf):
    attr = btf.find("bpf_attr")
    assert attr.kind == BTF_KIND_UNION
    assert btf.size_of("bpf_attr") == max(m.size for m in attr.members)
    task = btf.find("task_struct")
    last = max(task.members, key=lambda m: m.bit_offset)
    assert last.offset + last.size <= task.size


@pytest.mark.kernel
def test_every_type_decodes(btf):
    kinds = {t.kind for t in btf}
    assert {KIND_NAMES[k] for k in kinds} >= {"INT", "PTR", "ARRAY", "STRUCT", "UNION", "ENUM", "FWD",
                                              "TYPEDEF", "CONST", "FUNC", "FUNC_PROTO"}


@pytest.mark.kernel
def test_tool_answers_from_any_directory(btf, tmp_path):
    m = btf.member("task_struct", "real_parent")
    out = subprocess.run([sys.executable, TOOL, "task_struct.real_parent"], cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout
    assert out == f"task_struct.real_parent: offset {m.offset}, size 8 (struct task_struct *)\n"
    c = subprocess.run([sys.executable, TOOL, "task_struct"], cwd=tmp_path, capture_output=True, text=True,
                       check=True).stdout
    assert c == format_aggregate(btf, btf.find("task_struct")) + "\n"
    assert f"\tstruct task_struct *real_parent; /* offset: {m.offset}, size: 8 */\n" in c
    bad = subprocess.run([sys.executable, TOOL, "task_strcut"], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stderr.startswith("btfdump.py: error: no type named 'task_strcut'")
    assert "close matches: task_struct" in bad.stderr


@pytest.mark.crosscheck
def test_raw_dump_equals_bpftool_line_for_line(btf, bpftool_raw):
    ours = "\n".join(format_raw(btf, t) for t in btf).splitlines()
    assert len(ours) == len(bpftool_raw)
    for n, (a, b) in enumerate(zip(ours, bpftool_raw), 1):
        assert a == b, f"line {n} differs: ours {a!r}, bpftool {b!r}"


@pytest.mark.crosscheck
def test_tool_raw_ids_equal_bpftool(btf, bpftool_raw):
    # A few hundred ids spread over the whole table, through the command-line tool.
    step = max(1, len(btf) // 300)
    ids = list(range(1, len(btf) + 1, step))
    out = subprocess.run([sys.executable, TOOL, "--raw", *map(str, ids)], capture_output=True, text=True,
                         check=True).stdout
    heads = {int(line[1:line.index("]")]): n for n, line in enumerate(bpftool_raw) if line.startswith("[")}
    expected = []
    for i in ids:
        start = heads[i]
        end = start + 1
        while end < len(bpftool_raw) and not bpftool_raw[end].startswith("["):
            end += 1
        expected.extend(bpftool_raw[start:end])
    assert out.splitlines() == expected


@pytest.mark.crosscheck
def test_task_struct_offsets_match_bpftool(btf, bpftool_raw, bpftool_c):
    task = btf.find("task_struct", "struct")
    # Offsets: bpftool's raw member lines of task_struct.
    start = bpftool_raw.index(format_raw(btf, task).splitlines()[0])
    raw_members = bpftool_raw[start + 1:start + 1 + task.vlen]
    for m, line in zip(task.members, raw_members):
        got = re.match(r"\t'(.*)' type_id=(\d+) bits_offset=(\d+)(?: bitfield_size=(\d+))?$", line)
        assert got, line
        assert (m.name or "(anon)", m.type, m.bit_offset, m.bit_size) == (
            got[1], int(got[2]), int(got[3]), int(got[4] or 0))
    # Members, types and bitfield widths: bpftool's C dump, less its padding members (`long: 64;`).
    assert _c_equal(btf, task, bpftool_c)


def _c_block(text: str, kind: str, name: str) -> list[str]:
    m = re.search(rf"^{kind} {re.escape(name)} {{\n.*?^}}[^\n]*;$", text, re.S | re.M)
    assert m, f"bpftool's C dump has no {kind} {name}"
    padding = re.compile(r"^\s*(long|int|short|char): \d+;$")
    return [re.sub(r" __attribute__\(\(packed\)\)", "", ln) for ln in m[0].splitlines() if not padding.match(ln)]


def _c_equal(btf: BTF, t, text: str) -> bool:
    ours = re.sub(r" /\* [^*]*\*/", "", format_aggregate(btf, t)).splitlines()
    kind = "struct" if t.kind == BTF_KIND_STRUCT else "union"
    assert ours == _c_block(text, kind, t.name)
    return True


@pytest.mark.crosscheck
def test_c_dump_matches_bpftool_for_hundreds_of_structs(btf, bpftool_c):
    # bpftool renames same-named types (`dma_chan___2`); compare only structs whose name is unique and
    # whose members name no renamed type.
    blocks = {m[2]: m[0] for m in re.finditer(r"^(struct|union) (\w+) \{\n.*?^\}[^\n]*;$", bpftool_c,
                                              re.S | re.M)}
    checked = 0
    for t in btf:
        if t.kind not in (BTF_KIND_STRUCT, BTF_KIND_UNION) or not t.name or t.name not in blocks:
            continue
        if t.id % 20 or "___" in blocks[t.name] or len(btf.find_all(t.name)) > 1:
            continue
        assert _c_equal(btf, t, bpftool_c)
        checked += 1
    assert checked > 200
