"""The kernel's rewrites of a loaded program, named instruction by instruction (kestrel_raw/audit/rewrites.py).

The xlated code here is written as the kernel writes it (kernel/bpf/verifier.c, as the dump shows it: calls by
address from __bpf_call_base, map ids); tests/test_audit_kernel.py compares real programs on the running kernel.
"""
from __future__ import annotations

import struct

from kestrel_raw.asm import (
    BPF_ADD, BPF_JEQ, BPF_JGT, BPF_LSH, BPF_W, R0, R1, R2, R10, KernelSymbols, alu64_imm, alu64_reg, call,
    disassemble_xlated, exit_insn, ja, jmp_imm, label, ld_map_fd, ldx_mem, mov64_imm, mov64_reg, resolve,
)
from kestrel_raw.asm import disassemble
from kestrel_raw.audit.rewrites import compare

BASE = 0xFFFFFFFF81000000
SYMBOLS = KernelSymbols.parse(f"{BASE:x} T __bpf_call_base\n{BASE + 0x100:x} T bpf_ktime_get_ns\n"
                              f"{BASE + 0x200:x} T __htab_map_lookup_elem\n")


def by_address(offset: int) -> bytes:
    """A call as the kernel keeps it: imm = the function's address - __bpf_call_base."""
    return struct.pack("<BBhi", 0x85, 0, 0, offset)


def ld_map_id(dst: int, map_id: int) -> bytes:
    return struct.pack("<BBhi", 0x18, (1 << 4) | dst, 0, map_id) + bytes(8)


def code(*parts) -> bytes:
    return b"".join(p if isinstance(p, bytes) else p.encode() for p in parts)


def loaded_program():
    return resolve([
        jmp_imm(BPF_JEQ, R1, 0, "out"),
        ld_map_fd(R1, "counts"),
        mov64_reg(R2, R10),
        alu64_imm(BPF_ADD, R2, -4),
        call("map_lookup_elem"),
        jmp_imm(BPF_JGT, R0, 7, "out"),
        call("ktime_get_ns"),
        label("out"),
        mov64_imm(R0, 0),
        exit_insn(),
    ], resolve_maps=False)


def array_lookup_inlined() -> bytes:
    # array_map_gen_lookup: r1 += value offset; r0 = key; bounds; index * 8; + base (no NULL path kept)
    return code(alu64_imm(BPF_ADD, R1, 312), ldx_mem(BPF_W, R0, R2, 0), jmp_imm(BPF_JGT, R0, 3, 2),
                alu64_imm(BPF_LSH, R0, 3), alu64_reg(BPF_ADD, R0, R1))


def test_every_rewrite_is_named_and_the_jumps_land_where_they_did() -> None:
    xlated = code(jmp_imm(BPF_JEQ, R1, 0, 11), ld_map_id(R1, 42), mov64_reg(R2, R10), alu64_imm(BPF_ADD, R2, -4),
                  array_lookup_inlined(), jmp_imm(BPF_JGT, R0, 7, 1), by_address(0x100), mov64_imm(R0, 0),
                  exit_insn())
    result = compare(loaded_program(), disassemble_xlated(xlated, SYMBOLS), id_names={42: "counts"})
    assert result.ok
    assert [r.line() for r in result.rewrites] == [
        "        0: jump        if r1 == 0x0 goto pc+7 -> if r1 == 0x0 goto pc+11 (same target, +4 slots between)",
        "      1-2: map         r1 = map[counts] -> r1 = map[id:42] (map counts)",
        "        5: inlined     call bpf_map_lookup_elem#1 of map counts -> inlined, 5 instructions: r1 += 312; "
        "r0 = *(u32 *)(r2 +0); if r0 > 0x3 goto pc+2; r0 <<= 3; r0 += r1",
        "        7: call        call bpf_ktime_get_ns#5 -> call bpf_ktime_get_ns#256: helper 5 resolved to the address "
        "of its function, bpf_ktime_get_ns",
    ]
    assert result.summary() == "4 rewrites: 1 jump, 1 map, 1 inlined, 1 call"
    assert [r.xlated for r in result.rewrites] == [(0, 1), (1, 3), (5, 10), (11, 12)]


def test_a_helper_replaced_by_another_function_with_instructions_added() -> None:
    xlated = code(jmp_imm(BPF_JEQ, R1, 0, 9), ld_map_id(R1, 42), mov64_reg(R2, R10), alu64_imm(BPF_ADD, R2, -4),
                  by_address(0x200), jmp_imm(BPF_JEQ, R0, 0, 1), alu64_imm(BPF_ADD, R0, 56),
                  jmp_imm(BPF_JGT, R0, 7, 1), by_address(0x100), mov64_imm(R0, 0), exit_insn())
    result = compare(loaded_program(), disassemble_xlated(xlated, SYMBOLS), id_names={42: "counts"})
    assert result.ok
    assert result.rewrites[2].line() == (
        "        5: call        call bpf_map_lookup_elem#1 of map counts -> call __htab_map_lookup_elem: the kernel "
        "calls another function; 2 added after it: if r0 == 0x0 goto pc+1; r0 += 56")


def test_an_argument_added_before_a_helper_that_stays() -> None:
    # Linux 6.1: bpf_task_storage_get keeps its function and gets the allocation flags in r5.
    loaded = resolve([mov64_imm(R1, 0), call("task_storage_get"), exit_insn()], resolve_maps=False)
    symbols = KernelSymbols.parse(f"{BASE:x} T __bpf_call_base\n{BASE + 0x300:x} T bpf_task_storage_get\n")
    xlated = code(mov64_imm(R1, 0), mov64_imm(5, 2080), by_address(0x300), exit_insn())
    result = compare(loaded, disassemble_xlated(xlated, symbols))
    assert result.ok
    assert [r.line() for r in result.rewrites] == [
        "        1: call        r5 = 2080 added before call bpf_task_storage_get#156: an argument the kernel passes "
        "to the function (the program does not)",
        "        1: call        call bpf_task_storage_get#156 -> call bpf_task_storage_get#768: helper 156 resolved to "
        "the address of its function, bpf_task_storage_get",
    ]


def test_branches_the_verifier_settled() -> None:
    # The first jump proven always taken (a goto), the bounds check proven never taken (removed), and the
    # code it skipped over never reached (removed).
    xlated = code(ja(3), ld_map_id(R1, 42), mov64_reg(R2, R10), mov64_imm(R0, 0), exit_insn())
    loaded = resolve([jmp_imm(BPF_JEQ, R1, 0, "out"), ld_map_fd(R1, "counts"), mov64_reg(R2, R10),
                      jmp_imm(BPF_JGT, R2, 7, "out"), call("ktime_get_ns"), label("out"), mov64_imm(R0, 0),
                      exit_insn()], resolve_maps=False)
    result = compare(loaded, disassemble_xlated(xlated, SYMBOLS), id_names={42: "counts"})
    assert result.ok, result.rewrites
    assert [r.line() for r in result.rewrites] == [
        "        0: hardwired   if r1 == 0x0 goto pc+5 -> goto pc+3: always taken (the verifier proved it)",
        "      1-2: map         r1 = map[counts] -> r1 = map[id:42] (map counts)",
        "      4-5: removed     2 instructions never run (the verifier proved it), removed: if r2 > 0x7 goto pc+1; "
        "call bpf_ktime_get_ns#5",
    ]


def test_a_changed_constant_is_no_rewrite() -> None:
    loaded = loaded_program()
    xlated = code(jmp_imm(BPF_JEQ, R1, 0, 11), ld_map_id(R1, 42), mov64_reg(R2, R10), alu64_imm(BPF_ADD, R2, -8),
                  array_lookup_inlined(), jmp_imm(BPF_JGT, R0, 7, 1), by_address(0x100), mov64_imm(R0, 0),
                  exit_insn())
    result = compare(loaded, disassemble_xlated(xlated, SYMBOLS), id_names={42: "counts"})
    assert not result.ok
    bad = [r for r in result.rewrites if r.kind == "unexplained"]
    assert bad[0].text.startswith("loaded [r2 += -4; call bpf_map_lookup_elem#1] became [r2 += -8; r1 += 312;")
    assert bad[0].text.endswith("]: no rewrite the kernel makes explains it")


def test_another_map_or_a_jump_elsewhere_is_no_rewrite() -> None:
    other_map = code(jmp_imm(BPF_JEQ, R1, 0, 11), ld_map_id(R1, 43), mov64_reg(R2, R10), alu64_imm(BPF_ADD, R2, -4),
                     array_lookup_inlined(), jmp_imm(BPF_JGT, R0, 7, 1), by_address(0x100), mov64_imm(R0, 0),
                     exit_insn())
    result = compare(loaded_program(), disassemble_xlated(other_map, SYMBOLS), id_names={42: "counts", 43: "stats"})
    assert not result.ok
    assert "r1 = map[counts]" in result.rewrites[1].text and "map[id:43]" in result.rewrites[1].text
    elsewhere = code(jmp_imm(BPF_JEQ, R1, 0, 10), ld_map_id(R1, 42), mov64_reg(R2, R10), alu64_imm(BPF_ADD, R2, -4),
                     array_lookup_inlined(), jmp_imm(BPF_JGT, R0, 7, 1), by_address(0x100), mov64_imm(R0, 0),
                     exit_insn())
    result = compare(loaded_program(), disassemble_xlated(elsewhere, SYMBOLS), id_names={42: "counts"})
    assert [r.line() for r in result.rewrites if r.kind == "unexplained"] == [
        "        0: unexplained if r1 == 0x0 goto pc+7 -> if r1 == 0x0 goto pc+10: the xlated jump lands elsewhere "
        "than on the rewrite of the loaded jump's target"]


def test_loaded_bytes_name_their_maps_by_fd() -> None:
    from kestrel_raw.asm import assemble, disassemble

    loaded = disassemble(assemble(loaded_program(), maps={"counts": 9}))
    xlated = code(jmp_imm(BPF_JEQ, R1, 0, 11), ld_map_id(R1, 42), mov64_reg(R2, R10), alu64_imm(BPF_ADD, R2, -4),
                  array_lookup_inlined(), jmp_imm(BPF_JGT, R0, 7, 1), by_address(0x100), mov64_imm(R0, 0),
                  exit_insn())
    result = compare(loaded, disassemble_xlated(xlated, SYMBOLS), fd_names={9: "counts"}, id_names={42: "counts"})
    assert result.ok
    assert result.rewrites[1].text == "r1 = map[fd:9] -> r1 = map[id:42] (map counts)"


def subprog_call(distance: int) -> bytes:
    """A bpf-to-bpf call as a BPF object loads it: src BPF_PSEUDO_CALL, the distance in imm."""
    return struct.pack("<BBhi", 0x85, 1 << 4, 0, distance)


def jitted_subprog_call(distance: int, subprog: int) -> bytes:
    """The same call in a JIT-compiled program's dump (verifier.c jit_subprogs): the distance in off, the
    subprogram's index in imm."""
    return struct.pack("<BBhi", 0x85, 1 << 4, distance, subprog)


def test_a_bpf_to_bpf_call_moved_by_dead_code_lands_on_the_same_function() -> None:
    # main: call sub; if r1 == 0 goto +1; r0 = 1; exit.  sub: r0 = 0; exit.  The verifier removed the jump and
    # "r0 = 1" (proven never run), so the call is two slots closer to sub.
    loaded = disassemble(code(subprog_call(3), jmp_imm(BPF_JEQ, R1, 0, 1), mov64_imm(R0, 1), exit_insn(),
                              mov64_imm(R0, 0), exit_insn()))
    xlated = code(jitted_subprog_call(1, 1), exit_insn(), mov64_imm(R0, 0), exit_insn())
    result = compare(loaded, disassemble_xlated(xlated, SYMBOLS))
    assert result.ok, result.rewrites
    assert [r.line() for r in result.rewrites] == [
        "        0: jump        call pc+3 -> call pc+1 (same target, -2 slots between)",
        "      1-2: removed     2 instructions never run (the verifier proved it), removed: if r1 == 0x0 goto pc+1; "
        "r0 = 1"]
    as_loaded = code(jitted_subprog_call(3, 1), jmp_imm(BPF_JEQ, R1, 0, 1), mov64_imm(R0, 1), exit_insn(),
                     mov64_imm(R0, 0), exit_insn())
    assert compare(loaded, disassemble_xlated(as_loaded, SYMBOLS)).rewrites == ()
    elsewhere = code(jitted_subprog_call(2, 1), exit_insn(), mov64_imm(R0, 0), exit_insn())
    assert [r.line() for r in compare(loaded, disassemble_xlated(elsewhere, SYMBOLS)).rewrites
            if r.kind == "unexplained"] == [
        "        0: unexplained call pc+3 -> call pc+2: the xlated jump lands elsewhere than on the rewrite of the "
        "loaded jump's target"]
