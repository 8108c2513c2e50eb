"""CO-RE resolution (kestrel_raw.btf.core) and instruction patching (kestrel_raw.bpfobj.corepatch) on BTF
written word by word here (tests/helpers.BtfBuilder): every relocation kind, flavours, anonymous members,
arrays, bitfields, size changes, ambiguity, and the error messages.

Each expected value is worked out from the layouts below, in the comment beside it."""
from __future__ import annotations

import struct

import pytest

from kestrel_raw.bpfobj import corepatch
from kestrel_raw.btf import BTF
from kestrel_raw.btf.core import CoreResolver, essential_name, essential_name_len
from kestrel_raw.btf.kinds import (
    BPF_CORE_ENUMVAL_EXISTS, BPF_CORE_ENUMVAL_VALUE, BPF_CORE_FIELD_BYTE_OFFSET, BPF_CORE_FIELD_BYTE_SIZE,
    BPF_CORE_FIELD_EXISTS, BPF_CORE_FIELD_LSHIFT_U64, BPF_CORE_FIELD_RSHIFT_U64, BPF_CORE_FIELD_SIGNED,
    BPF_CORE_TYPE_EXISTS, BPF_CORE_TYPE_ID_LOCAL, BPF_CORE_TYPE_ID_TARGET, BPF_CORE_TYPE_MATCHES,
    BPF_CORE_TYPE_SIZE,
)
from kestrel_raw.errors import CoreRelocationError
from tests.helpers import BtfBuilder


def local_btf() -> tuple[BTF, dict[str, int]]:
    b = BtfBuilder()
    t = {}
    t["int"] = b.int("int", 4, signed=True)                      # 1
    t["uint"] = b.int("unsigned int", 4)                         # 2
    t["char"] = b.int("char", 1, signed=True)                    # 3
    t["comm"] = b.array(t["char"], t["uint"], 16)                # 4  char[16]
    t["u64"] = b.int("long long unsigned int", 8)                # 5
    t["vals"] = b.array(t["u64"], t["uint"], 4)                  # 6  u64[4]
    # struct task { int pid; unsigned flags; char comm[16]; u64 vals[4]; unsigned count; int prio; }
    t["task"] = b.struct("task", 64, [("pid", t["int"], 0), ("flags", t["uint"], 32), ("comm", t["comm"], 64),
                                      ("vals", t["vals"], 192), ("count", t["uint"], 448),
                                      ("prio", t["int"], 480)])      # 7
    t["task_ptr"] = b.ptr(t["task"])                             # 8
    t["task___v2"] = b.struct("task___v2", 4, [("gone", t["int"], 0)])   # 9: a field no kernel has
    # struct bits (kind_flag): unsigned a:3; int b:5; unsigned d:8 @ 8
    t["bits"] = b.struct("bits", 4, [("a", t["uint"], 0, 3), ("b", t["int"], 3, 5), ("d", t["uint"], 8, 8)],
                         kflag=True)                             # 10
    t["color"] = b.enum("color", [("RED", 0), ("GREEN", 1), ("BLUE", 2)])    # 11
    t["holder"] = b.struct("holder", 8, [("task", t["task_ptr"], 0)])         # 12
    t["anon"] = b.struct("", 4, [("x", t["int"], 0)])             # 13
    t["flex_arr"] = b.array(t["uint"], t["uint"], 0)              # 14
    t["flex"] = b.struct("flex", 4, [("n", t["uint"], 0), ("data", t["flex_arr"], 32)])   # 15
    t["amb"] = b.struct("amb", 4, [("x", t["int"], 0)])           # 16
    t["wide"] = b.enum("wide", [("BIG", 1)])                      # 17: ENUM64 in the target
    t["task_t"] = b.typedef("task_t", t["task"])                  # 18
    t["box"] = b.struct("box", 8, [("task", t["task_ptr"], 0)])   # 19
    return BTF.parse(b.build(), "local"), t


def target_btf() -> tuple[BTF, dict[str, int]]:
    b = BtfBuilder()
    t = {}
    t["long"] = b.int("long int", 8, signed=True)                # 1
    t["int"] = b.int("int", 4, signed=True)                      # 2
    t["uint"] = b.int("unsigned int", 4)                         # 3
    t["char"] = b.int("char", 1, signed=True)                    # 4
    t["u64"] = b.int("long long unsigned int", 8)                # 5
    t["comm"] = b.array(t["char"], t["uint"], 16)                # 6
    t["vals"] = b.array(t["u64"], t["uint"], 4)                  # 7
    t["ids"] = b.struct("", 8, [("pid", t["int"], 0), ("tgid", t["int"], 32)])       # 8 anon struct
    t["u"] = b.struct("", 8, [("", t["ids"], 0), ("alt", t["long"], 0)], union=True)   # 9 anon union: ids
    t["pid_t"] = b.typedef("pid_t", t["int"])                    # 10
    # struct task { unsigned flags; <pad>; union { struct { int pid; int tgid; }; long alt; };  (at 8)
    #               char comm[16] (at 32); u64 vals[4] (at 64); u64 count (at 104); long prio (at 112) }
    t["task"] = b.struct("task", 128, [("flags", t["uint"], 0), ("", t["u"], 64), ("comm", t["comm"], 256),
                                       ("vals", t["vals"], 512), ("count", t["u64"], 832),
                                       ("prio", t["long"], 896)])    # 11
    t["task_ptr"] = b.ptr(t["task"])                             # 12
    # struct bits (kind_flag), 8 bytes: a:3 at bit 40, b:5 at 43, d:8 at 28 (crosses a 4-byte boundary)
    t["bits"] = b.struct("bits", 8, [("d", t["uint"], 28, 8), ("a", t["uint"], 40, 3), ("b", t["int"], 43, 5)],
                         kflag=True)                             # 13
    t["color"] = b.enum("color", [("BLUE", 20), ("RED", -10)], signed=True)   # 14
    t["holder"] = b.struct("holder", 8, [("task", t["task_ptr"], 0)])         # 15
    t["flex_arr"] = b.array(t["uint"], t["uint"], 0)              # 16
    t["flex"] = b.struct("flex", 8, [("n", t["uint"], 0), ("pad", t["uint"], 32), ("data", t["flex_arr"], 64)])
    t["amb"] = b.struct("amb", 8, [("x", t["int"], 0)])           # 18
    t["amb___2"] = b.struct("amb___2", 8, [("x", t["int"], 32)])  # 19: a second candidate at another offset
    t["wide"] = b.enum64("wide", [("BIG", 1 << 40)])              # 20
    t["task_t"] = b.typedef("task_t", t["task"])                  # 21
    # box with a long where local has a pointer: compatible for TYPE_EXISTS, not for TYPE_MATCHES
    t["box"] = b.struct("box", 8, [("task", t["long"], 0)])      # 22
    return BTF.parse(b.build(), "target"), t


@pytest.fixture
def core():
    lb, lt = local_btf()
    tb, tt = target_btf()
    return CoreResolver(lb, tb), lt, tt


def val(res):
    return res.orig_val, res.new_val, res.poison


def test_essential_names():
    assert essential_name("task_struct___old") == "task_struct"
    assert essential_name("task_struct") == "task_struct"
    assert essential_name("a___b___c") == "a___b"           # only the last flavour goes
    assert essential_name("x____y") == "x____y"             # four underscores are no separator
    assert essential_name("___x") == "___x" and essential_name_len("a___") == 4


def test_field_offsets_through_anonymous_members(core):
    r, lt, tt = core
    # task.pid: local offset 0; target: anon union at 8, anon struct at 0 in it, pid at 0 -> 8
    res = r.resolve(lt["task"], "0:0", BPF_CORE_FIELD_BYTE_OFFSET)
    assert val(res) == (0, 8, False)
    assert res.local_spec == "<byte_off> [7] struct task.pid (0:0 @ offset 0)"
    assert res.target_spec == "<byte_off> [11] struct task.pid (0:1:0:0 @ offset 8)"
    assert (res.orig_sz, res.new_sz, res.fail_memsz_adjust) == (4, 4, False)
    assert val(r.resolve(lt["task"], "0:1", BPF_CORE_FIELD_BYTE_OFFSET)) == (4, 0, False)       # flags
    assert val(r.resolve(lt["task"], "0:2", BPF_CORE_FIELD_BYTE_OFFSET)) == (8, 32, False)      # comm
    assert val(r.resolve(lt["task"], "0:2", BPF_CORE_FIELD_BYTE_SIZE)) == (16, 16, False)
    assert val(r.resolve(lt["task"], "0:1", BPF_CORE_FIELD_EXISTS)) == (1, 1, False)
    assert val(r.resolve(lt["task"], "0:1", BPF_CORE_FIELD_SIGNED)) == (0, 0, False)
    assert val(r.resolve(lt["task"], "0:0", BPF_CORE_FIELD_SIGNED)) == (1, 1, False)
    # through a typedef of the root: task_t resolves to the struct
    assert val(r.resolve(lt["task_t"], "0:2", BPF_CORE_FIELD_BYTE_OFFSET)) == (8, 32, False)


def test_array_accesses(core):
    r, lt, tt = core
    # vals[3]: local 24 + 3*8 = 48; target 64 + 24 = 88
    res = r.resolve(lt["task"], "0:3:3", BPF_CORE_FIELD_BYTE_OFFSET)
    assert val(res) == (48, 88, False)
    assert res.target_spec == "<byte_off> [11] struct task.vals[3] (0:3:3 @ offset 88)"
    assert val(r.resolve(lt["task"], "0:3:3", BPF_CORE_FIELD_BYTE_SIZE)) == (8, 8, False)
    # the root as an array: task[1].flags = 64 + 4 locally, 128 + 0 in the target
    assert val(r.resolve(lt["task"], "1:1", BPF_CORE_FIELD_BYTE_OFFSET)) == (68, 128, False)
    # a flexible array's element 5: 4 + 20 locally, 8 + 20 in the target
    assert val(r.resolve(lt["flex"], "0:1:5", BPF_CORE_FIELD_BYTE_OFFSET)) == (24, 28, False)
    with pytest.raises(CoreRelocationError, match="array index 4 is past the 4 elements of"):
        r.resolve(lt["task"], "0:3:4", BPF_CORE_FIELD_BYTE_OFFSET)
    with pytest.raises(CoreRelocationError, match="cannot be applied to an array element"):
        r.resolve(lt["task"], "0:3:1", BPF_CORE_FIELD_SIGNED)


def test_size_changes(core):
    r, lt, tt = core
    # count: u32 -> u64, unsigned both: the load grows (new_sz 8), allowed
    res = r.resolve(lt["task"], "0:4", BPF_CORE_FIELD_BYTE_OFFSET)
    assert (res.orig_val, res.new_val, res.orig_sz, res.new_sz, res.fail_memsz_adjust) == (56, 104, 4, 8, False)
    # prio: int -> long, signed: a wider load would not sign-extend right: marked, poisoned when patched
    res = r.resolve(lt["task"], "0:5", BPF_CORE_FIELD_BYTE_OFFSET)
    assert (res.orig_val, res.new_val, res.orig_sz, res.new_sz, res.fail_memsz_adjust) == (60, 112, 4, 8, True)


def test_bitfields(core):
    r, lt, tt = core
    b = lt["bits"]
    # a: 3 bits at 0 locally (4-byte load at 0); target bit 40: 4-byte load at 4
    assert val(r.resolve(b, "0:0", BPF_CORE_FIELD_BYTE_OFFSET)) == (0, 4, False)
    assert val(r.resolve(b, "0:0", BPF_CORE_FIELD_BYTE_SIZE)) == (4, 4, False)
    # lshift = 64 - (bit_off + bit_sz - byte_off * 8): local 64 - 3 = 61; target 64 - (40 + 3 - 32) = 53
    assert val(r.resolve(b, "0:0", BPF_CORE_FIELD_LSHIFT_U64)) == (61, 53, False)
    assert val(r.resolve(b, "0:0", BPF_CORE_FIELD_RSHIFT_U64)) == (61, 61, False)
    assert val(r.resolve(b, "0:1", BPF_CORE_FIELD_SIGNED)) == (1, 1, False)
    assert val(r.resolve(b, "0:1", BPF_CORE_FIELD_LSHIFT_U64)) == (56, 48, False)    # 64-(3+5); 64-(43+5-32)
    # d: 8 bits at 28 in the target cross a 4-byte boundary: an 8-byte load at 0, lshift 64 - 36 = 28
    assert val(r.resolve(b, "0:2", BPF_CORE_FIELD_BYTE_SIZE)) == (4, 8, False)
    assert val(r.resolve(b, "0:2", BPF_CORE_FIELD_BYTE_OFFSET)) == (0, 0, False)
    assert val(r.resolve(b, "0:2", BPF_CORE_FIELD_LSHIFT_U64)) == (48, 28, False)
    res = r.resolve(b, "0:2", BPF_CORE_FIELD_BYTE_OFFSET)
    assert res.target_spec == "<byte_off> [13] struct bits.d (0:0 @ offset 3.4)"
    assert res.validate is False        # the compiler and libbpf may choose different loads for a bitfield


def test_flavours_missing_fields_and_poison(core):
    r, lt, tt = core
    # task___v2 matches the target's task by essential name, but task has no 'gone'
    assert val(r.resolve(lt["task___v2"], "0:0", BPF_CORE_FIELD_EXISTS)) == (1, 0, False)
    res = r.resolve(lt["task___v2"], "0:0", BPF_CORE_FIELD_BYTE_OFFSET)
    assert res.poison and res.target_spec is None
    assert res.local_spec == "<byte_off> [9] struct task___v2.gone (0:0 @ offset 0)"


def test_type_relocations(core):
    r, lt, tt = core
    assert val(r.resolve(lt["task"], "0", BPF_CORE_TYPE_ID_LOCAL)) == (7, 7, False)
    res = r.resolve(lt["task"], "0", BPF_CORE_TYPE_ID_TARGET)
    assert val(res) == (7, 11, False) and res.validate is False
    assert val(r.resolve(lt["task"], "0", BPF_CORE_TYPE_EXISTS)) == (1, 1, False)
    assert val(r.resolve(lt["task"], "0", BPF_CORE_TYPE_SIZE)) == (64, 128, False)
    assert val(r.resolve(lt["task_t"], "0", BPF_CORE_TYPE_SIZE)) == (64, 128, False)   # a typedef's candidates
    assert val(r.resolve(lt["task___v2"], "0", BPF_CORE_TYPE_SIZE)) == (4, 128, False)
    assert val(r.resolve(lt["holder"], "0", BPF_CORE_TYPE_MATCHES)) == (1, 1, False)
    # box: a pointer member locally, a long in the target: compatible by kind for TYPE_EXISTS (structs
    # always are), but no match for TYPE_MATCHES
    assert val(r.resolve(lt["box"], "0", BPF_CORE_TYPE_EXISTS)) == (1, 1, False)
    assert val(r.resolve(lt["box"], "0", BPF_CORE_TYPE_MATCHES)) == (1, 0, False)
    # the local enum color {RED, GREEN, BLUE} does not match the target's {BLUE, RED}: GREEN is missing
    assert val(r.resolve(lt["color"], "0", BPF_CORE_TYPE_MATCHES)) == (1, 0, False)
    assert val(r.resolve(lt["color"], "0", BPF_CORE_TYPE_EXISTS)) == (1, 1, False)
    with pytest.raises(CoreRelocationError, match=r"a type relocation's access string must be \"0\", not '0:1'"):
        r.resolve(lt["task"], "0:1", BPF_CORE_TYPE_SIZE)


def test_enum_values(core):
    r, lt, tt = core
    c = lt["color"]
    assert val(r.resolve(c, "2", BPF_CORE_ENUMVAL_VALUE)) == (2, 20, False)            # BLUE
    # RED is -10 in a signed target enum: sign-extended into the 64-bit result, as libbpf stores it
    assert val(r.resolve(c, "0", BPF_CORE_ENUMVAL_VALUE)) == (0, (1 << 64) - 10, False)
    assert val(r.resolve(c, "1", BPF_CORE_ENUMVAL_EXISTS)) == (1, 0, False)            # GREEN: gone
    assert r.resolve(c, "1", BPF_CORE_ENUMVAL_VALUE).poison
    res = r.resolve(lt["wide"], "0", BPF_CORE_ENUMVAL_VALUE)                            # ENUM -> ENUM64
    assert val(res) == (1, 1 << 40, False)
    assert res.target_spec == "<enumval_value> [20] enum64 wide::BIG = 1099511627776"
    with pytest.raises(CoreRelocationError, match=r"enum value access '3' does not name an enumerator"):
        r.resolve(c, "3", BPF_CORE_ENUMVAL_VALUE)


def test_ambiguity_and_malformed(core):
    r, lt, tt = core
    with pytest.raises(CoreRelocationError, match=r"^field offset ambiguity: <byte_off> \[16\] struct amb.x "
                                                  r"\(0:0 @ offset 0\) matches <byte_off> \[18\] struct amb.x "
                                                  r"\(0:0 @ offset 0\) and <byte_off> \[19\] struct amb___2.x "
                                                  r"\(0:0 @ offset 4\), at different offsets$"):
        r.resolve(lt["amb"], "0:0", BPF_CORE_FIELD_BYTE_OFFSET)
    with pytest.raises(CoreRelocationError, match=r"relocation against an anonymous type \(\[13\] STRUCT "
                                                  r"'\(anon\)'\) cannot be resolved"):
        r.resolve(lt["anon"], "0:0", BPF_CORE_FIELD_BYTE_OFFSET)
    with pytest.raises(CoreRelocationError, match=r"access string '0:x' is not a list of indexes"):
        r.resolve(lt["task"], "0:x", BPF_CORE_FIELD_BYTE_OFFSET)
    with pytest.raises(CoreRelocationError, match=r"member index 9 is past the 6 members of \[7\] STRUCT 'task'"):
        r.resolve(lt["task"], "0:9", BPF_CORE_FIELD_BYTE_OFFSET)
    with pytest.raises(CoreRelocationError, match=r"index 1 of '0:0:1' goes into \[1\] INT 'int'"):
        r.resolve(lt["task"], "0:0:1", BPF_CORE_FIELD_BYTE_OFFSET)


def test_candidates_are_narrowed_like_libbpf(core):
    r, lt, tt = core
    assert r.candidates(lt["task"]) == [tt["task"]]
    # amb has two candidates until a relocation picks; both match 'x', so they stay (and are ambiguous)
    assert r.candidates(lt["amb"]) == [tt["amb"], tt["amb___2"]]


# --- patching -------------------------------------------------------------------------------------------

INSN = struct.Struct("<BBhi")


def insns(*raw: tuple[int, int, int, int]) -> bytearray:
    return bytearray(b"".join(INSN.pack(*r) for r in raw))


def test_patch_alu_ldx_ldimm64_and_poison(core):
    r, lt, tt = core
    # r1 = 0 (ALU64 MOV imm) for task.pid; patched to 8
    buf = insns((0xB7, 0x01, 0, 0))
    assert corepatch.patch(buf, 0, r.resolve(lt["task"], "0:0", BPF_CORE_FIELD_BYTE_OFFSET)) == (
        "patched insn #0 (ALU/ALU64) imm 0 -> 8",)
    assert buf == insns((0xB7, 0x01, 0, 8))
    # r2 = *(u32 *)(r1 + 56) for task.count: offset 104 and, the field being u64 now, a DW load (0x79)
    buf = insns((0x61, 0x12, 56, 0))
    assert corepatch.patch(buf, 0, r.resolve(lt["task"], "0:4", BPF_CORE_FIELD_BYTE_OFFSET)) == (
        "patched insn #0 (LDX/ST/STX) off 56 -> 104", "patched insn #0 (LDX/ST/STX) mem_sz 4 -> 8")
    assert buf == insns((0x79, 0x12, 104, 0))
    # the signed prio cannot be widened: poisoned, as libbpf does
    buf = insns((0x61, 0x12, 60, 0))
    assert corepatch.patch(buf, 0, r.resolve(lt["task"], "0:5", BPF_CORE_FIELD_BYTE_OFFSET)) == (
        "substituting insn #0 w/ invalid insn",)
    assert buf == insns((0x85, 0, 0, corepatch.POISON_HELPER_ID))
    # r1 = 1 ll (ld_imm64) for the enum64 value: both halves written
    buf = insns((0x18, 0x01, 0, 1), (0, 0, 0, 0))
    assert corepatch.patch(buf, 0, r.resolve(lt["wide"], "0", BPF_CORE_ENUMVAL_VALUE)) == (
        f"patched insn #0 (LDIMM64) imm64 1 -> {1 << 40}",)
    assert buf == insns((0x18, 0x01, 0, 0), (0, 0, 0, 1 << 8))
    # a poisoned ld_imm64 has both slots replaced
    buf = insns((0x18, 0x01, 0, 1), (0, 0, 0, 0))
    assert corepatch.patch(buf, 0, r.resolve(lt["color"], "1", BPF_CORE_ENUMVAL_VALUE)) == (
        "substituting insn #1 w/ invalid insn", "substituting insn #0 w/ invalid insn")
    assert buf == insns((0x85, 0, 0, corepatch.POISON_HELPER_ID), (0x85, 0, 0, corepatch.POISON_HELPER_ID))


def test_patch_refuses_a_mismatched_instruction(core):
    r, lt, tt = core
    res = r.resolve(lt["task"], "0:2", BPF_CORE_FIELD_BYTE_OFFSET)          # expects 8 in the instruction
    with pytest.raises(corepatch.PatchError, match=r"unexpected \(ALU/ALU64\) value: got 12, expected 8 -> 32"):
        corepatch.patch(insns((0xB7, 0x01, 0, 12)), 0, res)
    with pytest.raises(corepatch.PatchError, match=r"unexpected \(LDX/ST/STX\) value: got 4, expected 8 -> 32"):
        corepatch.patch(insns((0x61, 0x12, 4, 0)), 0, res)
    with pytest.raises(corepatch.PatchError, match=r"ALU instruction with a register operand"):
        corepatch.patch(insns((0xBF, 0x12, 0, 0)), 0, res)
    with pytest.raises(corepatch.PatchError, match=r"\(LDX/ST/STX\) unexpected mem size: got 1, expected 4"):
        corepatch.patch(insns((0x71, 0x12, 56, 0)), 0, r.resolve(lt["task"], "0:4", BPF_CORE_FIELD_BYTE_OFFSET))
    with pytest.raises(corepatch.PatchError, match=r"trying to relocate unrecognized insn, code:0x95"):
        corepatch.patch(insns((0x95, 0, 0, 0)), 0, res)
