"""The public namespace of kestrel_raw.asm, the helper id table, and the module rules of asm/."""
from __future__ import annotations

import ast
import os
import pathlib
import re

import pytest

import kestrel_raw.asm as asm
from kestrel_raw.asm import HELPER_NAMES, HELPERS, R0, R10, Instruction, call, label, mov64_reg

ASM_DIR = pathlib.Path(asm.__file__).parent

# The names docs/architecture.md promises; other modules import exactly these.
CONTRACT = """
R0 R1 R2 R3 R4 R5 R6 R7 R8 R9 R10 Instruction assemble disassemble format_program label
mov64_imm mov64_reg mov32_imm mov32_reg alu64_imm alu64_reg alu32_imm alu32_reg neg64 neg32 endian bswap
ld_imm64 ld_map_fd ld_map_value ldx_mem stx_mem st_mem atomic_op jmp_imm jmp_reg jmp32_imm jmp32_reg ja call
exit_insn HELPERS
BPF_B BPF_H BPF_W BPF_DW BPF_ADD BPF_SUB BPF_MUL BPF_DIV BPF_MOD BPF_OR BPF_AND BPF_XOR BPF_LSH BPF_RSH
BPF_ARSH BPF_NEG BPF_MOV BPF_END BPF_JA BPF_JEQ BPF_JGT BPF_JGE BPF_JSET BPF_JNE BPF_JSGT BPF_JSGE BPF_JLT
BPF_JLE BPF_JSLT BPF_JSLE BPF_CALL BPF_EXIT BPF_FETCH BPF_XCHG BPF_CMPXCHG BPF_TO_LE BPF_TO_BE
BPF_PSEUDO_MAP_FD BPF_PSEUDO_MAP_VALUE BPF_LD BPF_LDX BPF_ST BPF_STX BPF_ALU BPF_JMP BPF_JMP32 BPF_ALU64
BPF_IMM BPF_MEM BPF_ATOMIC BPF_K BPF_X
""".split()

# Values straight from include/uapi/linux/bpf.h and bpf_common.h.
UAPI_VALUES = {
    "BPF_LD": 0x00, "BPF_LDX": 0x01, "BPF_ST": 0x02, "BPF_STX": 0x03, "BPF_ALU": 0x04, "BPF_JMP": 0x05,
    "BPF_JMP32": 0x06, "BPF_ALU64": 0x07, "BPF_W": 0x00, "BPF_H": 0x08, "BPF_B": 0x10, "BPF_DW": 0x18,
    "BPF_IMM": 0x00, "BPF_ABS": 0x20, "BPF_IND": 0x40, "BPF_MEM": 0x60, "BPF_MEMSX": 0x80, "BPF_ATOMIC": 0xC0,
    "BPF_K": 0x00, "BPF_X": 0x08, "BPF_ADD": 0x00, "BPF_SUB": 0x10, "BPF_MUL": 0x20, "BPF_DIV": 0x30,
    "BPF_OR": 0x40, "BPF_AND": 0x50, "BPF_LSH": 0x60, "BPF_RSH": 0x70, "BPF_NEG": 0x80, "BPF_MOD": 0x90,
    "BPF_XOR": 0xA0, "BPF_MOV": 0xB0, "BPF_ARSH": 0xC0, "BPF_END": 0xD0, "BPF_TO_LE": 0x00, "BPF_TO_BE": 0x08,
    "BPF_JA": 0x00, "BPF_JEQ": 0x10, "BPF_JGT": 0x20, "BPF_JGE": 0x30, "BPF_JSET": 0x40, "BPF_JNE": 0x50,
    "BPF_JSGT": 0x60, "BPF_JSGE": 0x70, "BPF_CALL": 0x80, "BPF_EXIT": 0x90, "BPF_JLT": 0xA0, "BPF_JLE": 0xB0,
    "BPF_JSLT": 0xC0, "BPF_JSLE": 0xD0, "BPF_FETCH": 0x01, "BPF_XCHG": 0xE1, "BPF_CMPXCHG": 0xF1,
    "BPF_PSEUDO_MAP_FD": 1, "BPF_PSEUDO_MAP_VALUE": 2, "BPF_PSEUDO_FUNC": 4, "BPF_PSEUDO_MAP_IDX_VALUE": 5,
    "BPF_PSEUDO_CALL": 1, "BPF_PSEUDO_KFUNC_CALL": 2,
    # include/linux/filter.h (kernel-internal, seen in xlated code)
    "BPF_ADDR_PERCPU": -1, "BPF_NOSPEC": 0xC0,
}


def test_contract_names_are_exported() -> None:
    missing = [name for name in CONTRACT if not hasattr(asm, name) or name not in asm.__all__]
    assert missing == []


def test_all_is_unique_and_resolvable() -> None:
    assert len(asm.__all__) == len(set(asm.__all__))
    assert [name for name in asm.__all__ if not hasattr(asm, name)] == []


@pytest.mark.parametrize(("name", "value"), sorted(UAPI_VALUES.items()))
def test_constants_have_the_uapi_values(name: str, value: int) -> None:
    assert getattr(asm, name) == value


def test_registers() -> None:
    assert [int(getattr(asm, f"R{i}")) for i in range(11)] == list(range(11))
    assert mov64_reg(R10, R0) == Instruction(0xBF, 10, 0)
    assert type(mov64_reg(asm.R6, asm.R1).dst) is int  # values hold plain ints, not the enum


def test_instruction_is_frozen() -> None:
    insn = mov64_reg(asm.R1, asm.R2)
    with pytest.raises(AttributeError):
        insn.imm = 5  # type: ignore[misc]
    assert hash(insn) == hash(mov64_reg(asm.R1, asm.R2))


def test_label_is_a_marker_value() -> None:
    assert label("a") == label("a")
    assert str(label("out")) == "out:"


# --- helper ids ---------------------------------------------------------------------------------------

# Spot values from enum bpf_func_id (include/uapi/linux/bpf.h), chosen across the whole range.
KNOWN_IDS = {
    "map_lookup_elem": 1, "map_update_elem": 2, "map_delete_elem": 3, "probe_read": 4, "ktime_get_ns": 5,
    "trace_printk": 6, "get_smp_processor_id": 8, "tail_call": 12, "get_current_pid_tgid": 14,
    "get_current_uid_gid": 15, "get_current_comm": 16, "perf_event_output": 25, "get_current_task": 35,
    "probe_read_str": 45, "send_signal": 109, "probe_read_user": 112, "probe_read_kernel": 113,
    "probe_read_user_str": 114, "probe_read_kernel_str": 115, "ktime_get_boot_ns": 125, "ringbuf_output": 130,
    "ringbuf_reserve": 131, "ringbuf_submit": 132, "ringbuf_discard": 133, "ringbuf_query": 134,
    "get_current_task_btf": 158, "ktime_get_coarse_ns": 160, "loop": 181, "user_ringbuf_drain": 209,
    "cgrp_storage_get": 210, "cgrp_storage_delete": 211,
}


def test_helper_table_is_complete_and_dense() -> None:
    assert sorted(HELPERS.values()) == list(range(1, 212))
    assert "unspec" not in HELPERS
    assert all(re.fullmatch(r"[a-z0-9_]+", name) and not name.startswith("bpf_") for name in HELPERS)
    assert {v: k for k, v in HELPERS.items()} == HELPER_NAMES


@pytest.mark.parametrize(("name", "helper_id"), sorted(KNOWN_IDS.items()))
def test_known_helper_ids(name: str, helper_id: int) -> None:
    assert HELPERS[name] == helper_id
    assert call(name).imm == call(f"bpf_{name}").imm == call(helper_id).imm == helper_id
    assert str(call(helper_id)) == f"call bpf_{name}#{helper_id}"


UAPI_HEADER = "/usr/include/linux/bpf.h"


@pytest.mark.crosscheck
@pytest.mark.skipif(not os.path.exists(UAPI_HEADER), reason=f"{UAPI_HEADER} is not installed")
def test_helpers_match_the_installed_uapi_header() -> None:
    """The installed header may be older (fewer ids) but must agree on every id it has."""
    text = pathlib.Path(UAPI_HEADER).read_text()
    start = text.index("_BPF_FUNC_MAPPER(FN")
    body = text[start:text.index("/* */", start)]
    named = re.findall(r"FN\((\w+), (\d+), ##ctx\)", body)  # Linux 6.1+: explicit ids
    if named:
        pairs = [(name, int(value)) for name, value in named]
    else:  # older headers: the id is the position
        pairs = [(name, i) for i, name in enumerate(re.findall(r"FN\((\w+)\)", body))]
    assert pairs[0] == ("unspec", 0)
    assert len(pairs) > 200
    assert [(n, i) for n, i in pairs[1:] if HELPERS.get(n) != i] == []


# --- module rules -------------------------------------------------------------------------------------


def test_asm_imports_neither_ctypes_nor_trio() -> None:
    for path in ASM_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = [(node.module or "").split(".")[0]]
            else:
                continue
            assert not {"ctypes", "trio"} & set(roots), f"{path.name} imports {roots}"
