"""Annotations: block comments and the provenance of kernel-layout constants, beside the bytes, never in them."""
from __future__ import annotations

import json

import pytest

import kestrel_raw.asm as asm
from kestrel_raw.asm import (
    BPF_DW, BPF_JEQ, BPF_W, R0, R1, R2, R6, DanglingCommentError, InvalidInstructionError, Note, Provenance,
    Sourced, annotate, assemble, btf_member, comment, disassemble, exit_insn, format_program, jmp_imm, label,
    ld_imm64, ld_map_fd, ld_map_value, ldx_mem, listing_json, mov32_imm, mov64_imm, resolve, st_mem,
    tracefs_field,
)

PARENT = btf_member("task_struct.real_parent", 172)
FILENAME = tracefs_field("sched", "sched_process_exec", "__data_loc_filename")


def annotated_program() -> list:
    return [
        comment("read task->real_parent"),
        ldx_mem(BPF_DW, R1, R1, Sourced(1280, PARENT)),
        comment("the filename's __data_loc"),
        label("filename"),
        ldx_mem(BPF_W, R2, R6, Sourced(8, FILENAME)),
        annotate(mov64_imm(R0, 0), comment="return 0"),
        exit_insn(),
    ]


def plain_program() -> list:
    return [ldx_mem(BPF_DW, R1, R1, 1280), ldx_mem(BPF_W, R2, R6, 8), mov64_imm(R0, 0), exit_insn()]


LISTING = """\
; read task->real_parent
   0: (79) r1 = *(u64 *)(r1 +1280)            ; btf task_struct.real_parent (type id 172)
; the filename's __data_loc
   1: (61) r2 = *(u32 *)(r6 +8)               ; tracefs sched:sched_process_exec __data_loc_filename
; return 0
   2: (b7) r0 = 0
   3: (95) exit"""


def test_listing_prints_block_comments_and_provenance() -> None:
    assert format_program(annotated_program()) == LISTING


def test_notes_change_no_byte_nor_equality() -> None:
    prog, plain = annotated_program(), plain_program()
    assert assemble(prog) == assemble(plain) == bytes.fromhex(
        "7911000500000000" "6162080000000000" "b700000000000000" "9500000000000000")
    assert resolve(prog) == plain
    assert [hash(i) for i in resolve(prog)] == [hash(i) for i in plain]
    assert disassemble(assemble(prog)) == resolve(prog)
    # bytes carry no notes: their listing is the plain one
    assert format_program(assemble(prog)) == format_program(plain)
    assert "; " not in format_program(plain)


def test_resolve_puts_comments_in_the_note_of_the_next_instruction() -> None:
    insns = resolve(annotated_program())
    assert [i.note for i in insns] == [
        Note(("read task->real_parent",), (PARENT,)),
        Note(("the filename's __data_loc",), (FILENAME,)),
        Note(("return 0",)),
        None,
    ]


def test_several_comments_head_one_instruction_in_order() -> None:
    prog = [comment("build the record"), label("top"), comment("its header"),
            annotate(mov64_imm(R0, 0), comment="the kind"), exit_insn()]
    assert format_program(prog).splitlines()[:4] == [
        "; build the record", "; its header", "; the kind", "   0: (b7) r0 = 0"]


@pytest.mark.parametrize(("insn", "value"), [
    (lambda v: ldx_mem(BPF_DW, R1, R1, v), 1280),                 # off
    (lambda v: st_mem(BPF_W, R1, v, 0), 16),                      # off of a store
    (lambda v: st_mem(BPF_W, R1, 0, v), 7),                       # imm of a store
    (lambda v: mov64_imm(R2, v), 4096),                           # imm
    (lambda v: mov32_imm(R2, v), 0xFFFFFFFF),                     # a u32 taken as its bits
    (lambda v: jmp_imm(BPF_JEQ, R1, v, "out"), 3),                # imm of a jump
    (lambda v: ld_imm64(R1, v), 0x1122334455667788),              # 64-bit constant
    (lambda v: ld_map_value(R1, "m", v), 24),                     # map value offset
])
def test_every_builder_notes_a_sourced_constant(insn, value: int) -> None:
    built = insn(Sourced(value, PARENT))
    assert built.note == Note(provenance=(PARENT,))
    assert built == insn(value)
    assert type(built.off) is int and type(built.imm) is int


def test_arithmetic_on_a_sourced_value_is_a_plain_int() -> None:
    v = Sourced(1280, PARENT)
    assert v == 1280 and v + 8 == 1288 and type(v + 8) is int
    assert ldx_mem(BPF_DW, R1, R1, v + 8).note is None
    assert repr(v) == "Sourced(1280, btf task_struct.real_parent (type id 172))"


def test_a_sourced_value_survives_copy_and_pickle() -> None:
    import copy
    import pickle

    v = Sourced(1280, PARENT)
    for again in (copy.copy(v), copy.deepcopy(v), pickle.loads(pickle.dumps(v))):
        assert (type(again), again, again.provenance) == (Sourced, 1280, PARENT)


def test_annotate_adds_to_a_note_without_repeating_a_provenance() -> None:
    insn = annotate(ldx_mem(BPF_DW, R1, R1, Sourced(1280, PARENT)), comment="parent", provenance=[PARENT, FILENAME])
    assert insn.note == Note(("parent",), (PARENT, FILENAME))
    assert format_program([insn]) == (
        "; parent\n"
        "   0: (79) r1 = *(u64 *)(r1 +1280)            ; btf task_struct.real_parent (type id 172); "
        "tracefs sched:sched_process_exec __data_loc_filename")


def test_listing_json() -> None:
    prog = [comment("reserve a ring record"), ld_map_fd(R1, "events")] + annotated_program()
    rows = listing_json(prog)
    assert rows[:3] == [
        {"index": 0, "bytes": "18110000000000000000000000000000", "text": "r1 = map[events]", "map": "events",
         "comments": ["reserve a ring record"], "provenance": []},
        {"index": 2, "bytes": "7911000500000000", "text": "r1 = *(u64 *)(r1 +1280)",
         "comments": ["read task->real_parent"],
         "provenance": [{"source": "btf", "name": "task_struct.real_parent", "type_id": 172}]},
        {"index": 3, "bytes": "6162080000000000", "text": "r2 = *(u32 *)(r6 +8)",
         "comments": ["the filename's __data_loc"],
         "provenance": [{"source": "tracefs", "name": "sched:sched_process_exec __data_loc_filename",
                         "type_id": None}]},
    ]
    assert [r["index"] for r in rows] == [0, 2, 3, 4, 5]
    json.dumps(rows)  # plain JSON types only
    # With the maps, the bytes are the ones assemble() gives.
    with_fds = listing_json(prog, maps={"events": 7})
    assert with_fds[0]["bytes"] == "18110000070000000000000000000000"
    assert bytes.fromhex("".join(r["bytes"] for r in with_fds)) == assemble(prog, maps={"events": 7})
    # A map value keeps its offset beside the fd.
    assert listing_json([ld_map_value(R1, "m", 8)], maps={"m": 5})[0]["bytes"] == "18210000050000000000000008000000"
    # From bytes: no notes.
    assert listing_json(assemble(plain_program()))[0] == {
        "index": 0, "bytes": "7911000500000000", "text": "r1 = *(u64 *)(r1 +1280)", "comments": [],
        "provenance": []}


def test_a_comment_at_the_end_heads_nothing() -> None:
    with pytest.raises(DanglingCommentError) as info:
        resolve([mov64_imm(R0, 0), exit_insn(), comment("done")])
    assert str(info.value) == ("comment 'done' is at the end of the program (after instruction 1) and heads no "
                               "instruction; a comment() describes the instructions that follow it")


@pytest.mark.parametrize(("make", "message"), [
    (lambda: comment(""), "a comment must be a non-empty one-line str, not ''"),
    (lambda: comment("two\nlines"), "a comment must be a non-empty one-line str, not 'two\\nlines'"),
    (lambda: annotate(mov64_imm(R0, 0), comment=5), "a comment must be a non-empty one-line str, not 5"),
    (lambda: annotate("r0 = 0"), "annotate() takes an Instruction, not 'r0 = 0'"),
    (lambda: Provenance("btf", ""), "Provenance.name must be a non-empty one-line str, not ''"),
    (lambda: Provenance("btf", "task_struct.pid", -1),
     "Provenance.type_id must be a BTF type id (int >= 0), not -1"),
    (lambda: Sourced("8", PARENT), "Sourced value must be an int, not '8'"),
    (lambda: Sourced(8, "task_struct.pid"), "Sourced provenance must be a Provenance, not 'task_struct.pid'"),
    (lambda: asm.Instruction(0xB7, note="x"), "Instruction.note must be a Note, not 'x'"),
])
def test_bad_annotations_are_refused(make, message: str) -> None:
    with pytest.raises(InvalidInstructionError) as info:
        make()
    assert str(info.value) == message


def test_the_package_docstring_example_prints_what_it_says() -> None:
    doc = asm.__doc__
    start = doc.index("    print(format_program(prog))\n") + len("    print(format_program(prog))\n")
    shown = []
    for line in doc[start:].splitlines():
        if not line.startswith("    # "):
            break
        shown.append(line[len("    # "):])
    assert "\n".join(shown) == LISTING
