"""A loaded program against the kernel's xlated code: instruction by instruction, each rewrite named.

The verifier keeps the instructions a program loaded, but for what it rewrites (kernel/bpf/verifier.c;
the dump is ``bpf_insn_prepare_dump``'s, decoded by ``kestrel_raw.asm.disassemble_xlated``):

- ``map``: a map load's fd becomes the map (the dump shows its id: ``map[fd:11]`` -> ``map[id:4242]``);
- ``call``: a helper id becomes the address of the function that implements it (named through
  /proc/kallsyms), which may be another function than the helper's own (``bpf_map_lookup_elem`` of a hash
  map calls ``__htab_map_lookup_elem``, and adds the value's offset after it), sometimes with arguments
  added before it (``bpf_task_storage_get``: ``r5 = GFP flags``, and on 6.2 and later a call of
  ``bpf_task_storage_get_recur``);
- ``inlined``: a helper call replaced by instructions (an array map's lookup: bounds check, index * value
  size, the array's address; for a per-CPU array, the per-CPU address move ``r0 = &(void __percpu *)(r0)``);
- ``hardwired``: a conditional jump the verifier proved always taken, made a ``goto``;
- ``removed``: instructions the verifier proved never run (dead code, and jumps never taken), taken out;
- ``jump``: a jump's offset, changed because instructions were added or removed between it and its target;
  a bpf-to-bpf call (``call pc+N``, a BPF object's subprograms) is a jump here: the JIT-compiled program's
  dump keeps its offset in ``off`` (kernel/bpf/verifier.c ``jit_subprogs``), and it must land on the
  rewrite of the function the loaded call landed on.

``compare`` aligns the two sequences (``difflib.SequenceMatcher`` over the instructions with what a
rewrite may change left out of the comparison: map fds and ids, a call's helper id or address, a jump's
offset), names each difference by the rules above, and checks what no rewrite may change: every other
field of every instruction, each map load's map (by name), and each jump's target (the xlated jump must
land on the rewrite of the instruction the loaded jump landed on).  What fits no rule is ``unexplained``:
the xlated code is then not a rewrite of the loaded code, and ``Comparison.ok`` is False.

Pure: the caller reads the kernel (kestrel_raw/audit/readback.py).
"""
from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping

from kestrel_raw.asm import opcode as op
from kestrel_raw.asm.helpers import HELPER_NAMES, HELPERS
from kestrel_raw.asm.instruction import Instruction
from kestrel_raw.asm.xlated import (
    KIND_CALL, KIND_KFUNC_CALL, KIND_MAP, KIND_MAP_VALUE, KIND_PERCPU_ADDR, KIND_SUBPROG_CALL, XlatedInstruction,
)

CALL = op.BPF_JMP | op.BPF_CALL | op.BPF_K
MAP_SRCS = (op.BPF_PSEUDO_MAP_FD, op.BPF_PSEUDO_MAP_VALUE)

# Rewrite kinds (Rewrite.kind), in the module docstring's words.
MAP = "map"
CALL_RESOLVED = "call"
INLINED = "inlined"
HARDWIRED = "hardwired"
REMOVED = "removed"
JUMP = "jump"
UNEXPLAINED = "unexplained"


@dataclasses.dataclass(frozen=True)
class Rewrite:
    """One difference between the loaded code and the xlated code: ``kind`` (the module's kinds),
    ``loaded`` and ``xlated`` the slot ranges [start, end) it covers in each, ``text`` what the kernel did."""

    kind: str
    loaded: tuple[int, int]
    xlated: tuple[int, int]
    text: str

    def line(self) -> str:
        a, b = self.loaded
        where = f"{a}" if b - a <= 1 else f"{a}-{b - 1}"
        return f"{where:>9}: {self.kind:<11} {self.text}"

    def to_json(self) -> dict:
        return {"kind": self.kind, "loaded": list(self.loaded), "xlated": list(self.xlated), "text": self.text}


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The outcome of ``compare``: every rewrite, in program order, and whether all are explained."""

    rewrites: tuple[Rewrite, ...]
    loaded_insns: int
    xlated_insns: int

    @property
    def ok(self) -> bool:
        return not any(r.kind == UNEXPLAINED for r in self.rewrites)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rewrites:
            out[r.kind] = out.get(r.kind, 0) + 1
        return out

    def summary(self) -> str:
        """``"41 rewrites: 7 map, 9 call, 3 inlined, 22 jump"``."""
        counts = self.counts()
        parts = ", ".join(f"{n} {kind}" for kind, n in counts.items())
        return f"{len(self.rewrites)} rewrite{'s' if len(self.rewrites) != 1 else ''}" + (f": {parts}" if parts else "")


def _is_jump(code: int) -> bool:
    return op.BPF_CLASS(code) in (op.BPF_JMP, op.BPF_JMP32) and code != CALL and op.BPF_OP(code) not in (
        op.BPF_CALL, op.BPF_EXIT)


def _is_cond_jump(code: int) -> bool:
    return _is_jump(code) and op.BPF_OP(code) != op.BPF_JA


def _jump_distance(code: int, off: int, imm: int) -> int:
    return imm if code == op.BPF_JMP32 | op.BPF_JA else off


@dataclasses.dataclass(frozen=True)
class _Row:
    """One instruction of either side, with its slot, its comparison key and its text."""

    slot: int
    size: int
    key: tuple
    text: str
    code: int
    distance: int | None  # a jump's distance in slots
    map_name: str | None = None
    map_ref: str | None = None  # "fd:11" / "id:4242"
    helper: str | None = None  # a call's helper name, when it is one (loaded: its id; xlated: bpf_<name>)
    symbol: str | None = None  # an xlated call's function
    percpu: bool = False  # the per-CPU address move


def _loaded_rows(insns: list[Instruction], fd_names: Mapping[int, str]) -> list[_Row]:
    rows, slot = [], 0
    for insn in insns:
        code = insn.opcode
        if code == op.LD_IMM64 and insn.src in MAP_SRCS:
            fd = insn.imm & 0xFFFFFFFF
            name = insn.map_name or fd_names.get(fd, f"fd {fd}")
            value_off = (insn.imm >> 32) & 0xFFFFFFFF if insn.src == op.BPF_PSEUDO_MAP_VALUE else None
            rows.append(_Row(slot, 2, ("map", insn.dst, insn.src, name, value_off), str(insn), code, None,
                             map_name=name, map_ref=f"fd:{fd}" if insn.map_name is None else name))
        elif code == CALL and insn.src == 0:
            helper = HELPER_NAMES.get(insn.imm, f"#{insn.imm}")
            rows.append(_Row(slot, 1, ("call", helper), str(insn), code, None, helper=helper))
        elif code == CALL and insn.src == op.BPF_PSEUDO_CALL:   # a bpf-to-bpf call: imm is its distance
            rows.append(_Row(slot, 1, ("subprog_call",), str(insn), code, insn.imm))
        elif _is_jump(code):
            rows.append(_Row(slot, 1, ("jmp", code, insn.dst, insn.src, None if code == op.BPF_JMP32 | op.BPF_JA
                                       else insn.imm), str(insn), code, _jump_distance(code, insn.off, insn.imm)))
        else:
            rows.append(_Row(slot, insn.size, ("insn", code, insn.dst, insn.src, insn.off, insn.imm), str(insn),
                             code, None))
        slot += insn.size
    return rows


def _xlated_rows(insns: list[XlatedInstruction], id_names: Mapping[int, str]) -> list[_Row]:
    rows = []
    for x in insns:
        code = x.opcode
        if x.kind in (KIND_MAP, KIND_MAP_VALUE):
            name = id_names.get(x.map_id, f"id {x.map_id}")
            rows.append(_Row(x.slot, 2, ("map", x.dst, x.src, name, x.map_offset), x.text, code, None,
                             map_name=name, map_ref=f"id:{x.map_id}"))
        elif x.kind in (KIND_CALL, KIND_KFUNC_CALL):
            helper = None
            if x.address is None and x.imm in HELPER_NAMES:  # named by id (a helper the kernel left as it was)
                helper = HELPER_NAMES[x.imm]
            elif x.symbol is not None and x.symbol.startswith("bpf_") and x.symbol[4:] in HELPERS:
                helper = x.symbol[4:]
            key = ("call", helper) if helper is not None else ("function", x.symbol, x.address)
            rows.append(_Row(x.slot, 1, key, x.text, code, None, helper=helper, symbol=x.symbol))
        elif x.kind == KIND_SUBPROG_CALL:   # JIT-compiled: off is the distance, imm the subprogram's index
            rows.append(_Row(x.slot, 1, ("subprog_call",), x.text, code, x.off))
        elif _is_jump(code):
            rows.append(_Row(x.slot, 1, ("jmp", code, x.dst, x.src, None if code == op.BPF_JMP32 | op.BPF_JA
                                         else x.imm), x.text, code, _jump_distance(code, x.off, x.imm)))
        else:
            rows.append(_Row(x.slot, x.size, ("insn", code, x.dst, x.src, x.off, x.imm), x.text, code, None,
                             percpu=x.kind == KIND_PERCPU_ADDR))
    return rows


def compare(loaded: list[Instruction], xlated: list[XlatedInstruction], *,
            fd_names: Mapping[int, str] | None = None, id_names: Mapping[int, str] | None = None) -> Comparison:
    """Align ``loaded`` (the program as it went to BPF_PROG_LOAD: ``disassemble(code)``, or instructions
    whose map loads still name their maps) with ``xlated`` (``disassemble_xlated`` of the kernel's copy,
    calls named through kallsyms) and name every rewrite.

    ``fd_names``: map fd -> map name, for loaded map loads that hold an fd; ``id_names``: map id -> map name,
    for the xlated ones.  A map load must name the same map on both sides.
    """
    lrows = _loaded_rows(loaded, fd_names or {})
    xrows = _xlated_rows(xlated, id_names or {})
    matcher = difflib.SequenceMatcher(None, [r.key for r in lrows], [r.key for r in xrows], autojunk=False)
    blocks = _merged(matcher.get_opcodes())
    x_of_l: dict[int, int] = {}  # loaded index -> the xlated index its rewrite starts at
    rewrites: list[Rewrite] = []
    for tag, i1, i2, j1, j2 in blocks:
        if tag == "equal":
            for k in range(i2 - i1):
                x_of_l[i1 + k] = j1 + k
            continue
        for i in range(i1, i2):
            x_of_l[i] = j1
        rewrites.append(_classify(lrows[i1:i2], xrows[j1:j2], lrows, xrows, i1, j1))
    x_of_l[len(lrows)] = len(xrows)
    for tag, i1, i2, j1, _j2 in blocks:
        if i1 == i2:  # instructions added before loaded instruction i1: a jump to i1 lands on the first of them
            x_of_l[i1] = j1
    # Per-instruction rewrites inside the matched runs, and the jump targets of every jump.
    lindex = {r.slot: i for i, r in enumerate(lrows)} | {sum(r.size for r in lrows): len(lrows)}
    xindex = {r.slot: j for j, r in enumerate(xrows)} | {sum(r.size for r in xrows): len(xrows)}
    for tag, i1, i2, j1, j2 in blocks:
        pairs = zip(range(i1, i2), range(j1, j2)) if tag == "equal" else (
            [(i1, j1)] if i2 - i1 == 1 and j2 - j1 == 1 and _kind_at(rewrites, lrows[i1].slot) == HARDWIRED
            else [])
        for i, j in pairs:
            lr, xr = lrows[i], xrows[j]
            if tag == "equal" and lr.map_ref is not None and lr.map_ref != xr.map_ref:
                rewrites.append(Rewrite(MAP, _span(lr), _span(xr),
                                        f"{lr.text} -> {xr.text} (map {lr.map_name})"))
            elif tag == "equal" and lr.helper is not None and lr.text != xr.text:
                rewrites.append(Rewrite(CALL_RESOLVED, _span(lr), _span(xr),
                                        f"{lr.text} -> {xr.text}: helper {HELPERS.get(lr.helper, '?')} resolved "
                                        f"to the address of its function, bpf_{lr.helper}"))
            if lr.distance is None:
                continue
            lt = lindex.get(lr.slot + 1 + lr.distance)
            xt = xindex.get(xr.slot + 1 + xr.distance)
            if lt is None or xt is None or x_of_l.get(lt) != xt:
                rewrites.append(Rewrite(UNEXPLAINED, _span(lr), _span(xr),
                                        f"{lr.text} -> {xr.text}: the xlated jump lands elsewhere than on the "
                                        f"rewrite of the loaded jump's target"))
            elif tag == "equal" and lr.distance != xr.distance:
                rewrites.append(Rewrite(JUMP, _span(lr), _span(xr),
                                        f"{lr.text} -> {xr.text} (same target, {xr.distance - lr.distance:+d} "
                                        f"slots between)"))
    rewrites.sort(key=lambda r: (r.loaded, r.xlated))
    return Comparison(tuple(rewrites), len(lrows), len(xrows))


def _kind_at(rewrites: list[Rewrite], slot: int) -> str | None:
    """The kind of the rewrite that starts at loaded slot ``slot``, if any."""
    for r in rewrites:
        if r.loaded[0] == slot:
            return r.kind
    return None


def _span(row: _Row) -> tuple[int, int]:
    return (row.slot, row.slot + row.size)


def _range(rows: list[_Row], start: int, all_rows: list[_Row]) -> tuple[int, int]:
    if rows:
        return (rows[0].slot, rows[-1].slot + rows[-1].size)
    slot = all_rows[start].slot if start < len(all_rows) else sum(r.size for r in all_rows)
    return (slot, slot)


def _merged(opcodes: list[tuple[str, int, int, int, int]]) -> list[tuple[str, int, int, int, int]]:
    """Consecutive differences as one block (an argument inserted before a call that changed)."""
    out: list[tuple[str, int, int, int, int]] = []
    for tag, i1, i2, j1, j2 in opcodes:
        if tag != "equal" and out and out[-1][0] != "equal":
            _, a1, _, b1, _ = out[-1]
            out[-1] = ("replace", a1, i2, b1, j2)
        else:
            out.append((tag, i1, i2, j1, j2))
    return out


def _of_map(helper: str, lrows: list[_Row], i: int) -> str:
    """`` of map NAME`` for a map helper whose map (r1) was loaded a few instructions before the call."""
    if "map" not in helper:
        return ""
    for row in reversed(lrows[max(0, i - 8):i]):
        if row.map_name is not None and row.key[1] == 1:  # ld_imm64 into r1
            return f" of map {row.map_name}"
    return ""


def _texts(rows: list[_Row]) -> str:
    return "; ".join(r.text for r in rows)


def _classify(ls: list[_Row], xs: list[_Row], lrows: list[_Row], xrows: list[_Row], i1: int, j1: int) -> Rewrite:
    span_l, span_x = _range(ls, i1, lrows), _range(xs, j1, xrows)
    calls_l = [r for r in ls if r.helper is not None]
    if len(ls) == 1 and len(calls_l) == 1:
        helper = calls_l[0].helper
        what = f"{ls[0].text}{_of_map(helper, lrows, i1)}"
        called = [r for r in xs if r.key[0] in ("call", "function")]
        extra = [r for r in xs if r.key[0] not in ("call", "function")]
        percpu = any(r.percpu for r in xs)
        if not called and xs:
            how = ", with the per-CPU address move" if percpu else ""
            return Rewrite(INLINED, span_l, span_x,
                           f"{what} -> inlined{how}, {len(xs)} instructions: {_texts(xs)}")
        if len(called) == 1:
            fn = called[0].symbol or f"{called[0].text} (no symbol: /proc/kallsyms hides addresses from this reader)"
            before = [r for r in extra if r.slot < called[0].slot]
            after = [r for r in extra if r.slot > called[0].slot]
            added = "".join([f"; {len(before)} instruction{'s' if len(before) > 1 else ''} added before it: "
                             f"{_texts(before)}" if before else "",
                             f"; {len(after)} added after it: {_texts(after)}" if after else ""])
            return Rewrite(CALL_RESOLVED, span_l, span_x, f"{what} -> call {fn}: the kernel calls "
                                                           f"{'another function' if called[0].symbol != f'bpf_{helper}' else 'the helper'}"
                                                           f"{added}")
    if not ls and xs and i1 < len(lrows) and lrows[i1].helper is not None and all(
            r.code == op.BPF_ALU64 | op.BPF_MOV | op.BPF_K and r.key[2] in range(1, 6) for r in xs):
        # bpf_task_storage_get & co.: the allocation flags put in r5 before a call the program made as it was
        return Rewrite(CALL_RESOLVED, span_l, span_x,
                       f"{_texts(xs)} added before {lrows[i1].text}: an argument the kernel passes to the function "
                       f"(the program does not)")
    if ls and not xs:
        if all(_is_cond_jump(r.code) for r in ls):
            return Rewrite(REMOVED, span_l, span_x,
                           f"{_texts(ls)}: never taken (the verifier proved it), removed")
        return Rewrite(REMOVED, span_l, span_x,
                       f"{len(ls)} instruction{'s' if len(ls) > 1 else ''} never run (the verifier proved it), "
                       f"removed: {_texts(ls)}")
    if len(ls) == 1 and len(xs) == 1 and _is_cond_jump(ls[0].code) and xs[0].code == op.BPF_JMP | op.BPF_JA:
        return Rewrite(HARDWIRED, span_l, span_x, f"{ls[0].text} -> {xs[0].text}: always taken (the verifier "
                                                   f"proved it)")
    return Rewrite(UNEXPLAINED, span_l, span_x,
                   f"loaded [{_texts(ls) or 'nothing'}] became [{_texts(xs) or 'nothing'}]: no rewrite the kernel "
                   f"makes explains it")
