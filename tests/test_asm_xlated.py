"""The kernel's xlated code, decoded as ``bpftool prog dump xlated`` prints it: golden bytes and text.

The bytes and the expected text were taken from bpftool (7.1.0) on this project's programs loaded into
Linux 6.18 (x86_64), with the /proc/kallsyms lines they need; the one difference is the per-CPU address
move, which bpftool 7.1 prints as ``r0 = r0`` and the kernel's own disassembler (since 6.8) and newer
bpftool as ``r0 = &(void __percpu *)(r0)``.  tests/test_audit_kernel.py compares with bpftool on the
running kernel.
"""
from __future__ import annotations

import pytest

from kestrel_raw.asm import (
    InvalidInstructionError, KernelSymbols, TruncatedProgramError, XlatedInstruction, disassemble_xlated,
    format_xlated,
)
from kestrel_raw.asm import xlated

# Lines of /proc/kallsyms on the machine the golden bytes come from (root, kptr_restrict 0), with an alias
# (two names at one address), a module symbol and a line without an address.
KALLSYMS = """\
ffffffff81000300 T irq_entries_start
ffffffff81000300 T __irqentry_text_start
ffffffff814cc090 T bpf_probe_read_kernel_str
ffffffff814cd1a0 T __pfx_bpf_get_current_task_btf
ffffffff814cd1b0 T bpf_get_current_task_btf
ffffffff814cea00 T bpf_task_pt_regs
ffffffff814ceb50 T bpf_probe_read_user
ffffffff814cecb0 T bpf_probe_read_user_str
ffffffff814dd640 T __pfx___bpf_call_base
ffffffff814dd650 T __bpf_call_base
ffffffff815216d0 T bpf_get_current_pid_tgid
ffffffff81521880 T bpf_ktime_get_ns
ffffffff81525560 T bpf_task_acquire
ffffffff81531380 t __htab_map_lookup_elem
ffffffff8153d520 T bpf_ringbuf_query
ffffffff8153d9d0 T bpf_ringbuf_output
ffffffffc0201000 t ftrace_trampoline\t[__builtin__ftrace]
0000000000000000 A fixed_percpu_data
garbage
"""
CALL_BASE = 0xFFFFFFFF814DD650


@pytest.fixture(scope="module")
def syms() -> KernelSymbols:
    return KernelSymbols.parse(KALLSYMS)


# --- kallsyms -----------------------------------------------------------------------------------------


def test_kallsyms_names_addresses_and_the_call_base(syms: KernelSymbols) -> None:
    assert syms.call_base == CALL_BASE
    assert syms.name(0xFFFFFFFF815216D0) == "bpf_get_current_pid_tgid"
    assert syms.name(0xFFFFFFFFC0201000) == "ftrace_trampoline"  # module name dropped, as bpftool does
    assert syms.name(0xFFFFFFFF81000300) == "irq_entries_start"  # of two aliases, the first in the file
    assert syms.name(0xFFFFFFFF815216D1) is None  # exact addresses only
    assert syms.name(0) is None  # address-0 lines are skipped
    assert len(syms) == 16  # 17 lines with an address, two of them at one address


def test_call_address_is_base_plus_signed_imm(syms: KernelSymbols) -> None:
    assert syms.call_address(278656) == 0xFFFFFFFF815216D0
    assert syms.call_address(-66720) == 0xFFFFFFFF814CD1B0
    assert KernelSymbols({}, None).call_address(-66720) == 0xFFFFFFFFFFFEFB60  # no base: bpftool's 0 + imm


def test_kallsyms_with_hidden_addresses_knows_nothing() -> None:
    # kptr_restrict hides addresses from this reader: every line reads 0, and bpftool stops at the
    # zero __bpf_call_base.
    hidden = KernelSymbols.parse("0000000000000000 T _text\n0000000000000000 T __bpf_call_base\n"
                                 "0000000000000000 T bpf_get_current_pid_tgid\n")
    assert (hidden.call_base, len(hidden)) == (None, 0)


# --- one instruction per special form -----------------------------------------------------------------

GOLDEN = [
    # helper calls by address: imm = address - __bpf_call_base, named through kallsyms
    ("8500000080400400", "call bpf_get_current_pid_tgid#278656", "call", "bpf_get_current_pid_tgid"),
    ("8500000060fbfeff", "call bpf_get_current_task_btf#-66720", "call", "bpf_get_current_task_btf"),
    ("85000000b013ffff", "call bpf_task_pt_regs#-60496", "call", "bpf_task_pt_regs"),
    ("8500000040eafeff", "call bpf_probe_read_kernel_str#-71104", "call", "bpf_probe_read_kernel_str"),
    ("85000000d0fe0500", "call bpf_ringbuf_query#392912", "call", "bpf_ringbuf_query"),
    # bpf_map_lookup_elem of a hash map: the verifier calls the map's own lookup
    ("85000000303d0500", "call __htab_map_lookup_elem#343344", "call", "__htab_map_lookup_elem"),
    # a kfunc call (src BPF_PSEUDO_KFUNC_CALL) is named the same way
    ("85200000107f0400", "call bpf_task_acquire#294672", "kfunc_call", "bpf_task_acquire"),
    # an address kallsyms has no name for: printed as the address
    ("850000002c010000", "call 0xffffffff814dd77c#300", "call", None),
    # a small imm is named as the helper with that id before any lookup (kernel/bpf/disasm.c)
    ("8500000001000000", "call bpf_map_lookup_elem#1", "call", None),
    # a dump for a reader not allowed to see addresses: every call's imm is 0
    ("8500000000000000", "call bpf_unspec#0", "call", None),
    # the per-CPU address move (BPF_MOV64_PERCPU_REG): off -1
    ("bf00ffff00000000", "r0 = &(void __percpu *)(r0)", "percpu_addr", None),
    ("bf12ffff00000000", "r2 = &(void __percpu *)(r1)", "percpu_addr", None),
    # the speculation barrier
    ("c200000000000000", "nospec", "nospec", None),
    # map loads carry the map id after verification
    ("18110000af0100000000000000000000", "r1 = map[id:431]", "map", None),
    ("182200000c0000000000000008000000", "r2 = map[id:12][0]+8", "map_value", None),
    ("18210000ffffffff00000000ffffffff", "r1 = map[id:4294967295][0]+4294967295", "map_value", None),
    # other ld_imm64 forms bpftool names (print_imm)
    ("18410000050000000000000000000000", "r1 = subprog[+5]", "ld_imm64", None),
    ("18510000010000000000000004000000", "r1 = map[idx:1]+4", "ld_imm64", None),
    ("18010000c0ffeeff00000000ffffffff", "r1 = 0xffffffffffeeffc0", "insn", None),
    # a bpf-to-bpf call, as bpftool prints it for a program without JIT symbols
    ("8510030002000000", "call pc+3", "subprog_call", None),
    # everything else is an instruction of the program's own form
    ("7911000500000000", "r1 = *(u64 *)(r1 +1280)", "insn", None),
    ("b700000034c0b083", "r0 = -2085568460", "insn", None),
]


@pytest.mark.parametrize(("hexbytes", "text", "kind", "symbol"), GOLDEN, ids=[g[1] for g in GOLDEN])
def test_golden_xlated_forms(syms: KernelSymbols, hexbytes: str, text: str, kind: str, symbol: str | None) -> None:
    data = bytes.fromhex(hexbytes)
    [insn] = disassemble_xlated(data, syms)
    assert (insn.text, insn.kind, insn.symbol) == (text, kind, symbol)
    assert insn.encode() == data
    assert insn.size == len(data) // 8
    assert format_xlated(data, syms) == f"   0: ({data[0]:02x}) {text}"


def test_call_fields(syms: KernelSymbols) -> None:
    [c] = disassemble_xlated(bytes.fromhex("8500000060fbfeff"), syms)
    assert (c.imm, c.address, c.symbol) == (-66720, 0xFFFFFFFF814CD1B0, "bpf_get_current_task_btf")
    assert c.to_json() == {"index": 0, "bytes": "8500000060fbfeff", "text": "call bpf_get_current_task_btf#-66720",
                           "kind": "call", "address": 0xFFFFFFFF814CD1B0, "symbol": "bpf_get_current_task_btf"}


def test_map_fields(syms: KernelSymbols) -> None:
    [m, v] = disassemble_xlated(bytes.fromhex("18110000af0100000000000000000000"
                                              "182200000c0000000000000008000000"), syms)
    assert (m.map_id, m.map_offset, v.map_id, v.map_offset) == (431, None, 12, 8)
    assert (m.slot, v.slot) == (0, 2)
    assert v.to_json() == {"index": 2, "bytes": "182200000c0000000000000008000000", "text": "r2 = map[id:12][0]+8",
                           "kind": "map_value", "map_id": 12, "map_offset": 8}


def test_without_symbols_calls_print_their_address_as_bpftool_does() -> None:
    # bpftool that cannot read kallsyms: __bpf_call_base counts as 0, so the "address" is the imm.
    assert format_xlated(bytes.fromhex("8500000080400400" "8500000060fbfeff")).splitlines() == [
        "   0: (85) call 0x44080#278656",
        "   1: (85) call 0xfffffffffffefb60#-66720",
    ]


# The first 38 slots of kr_exec as Linux 6.18 keeps it: the hash-map filter lookup (a direct call of
# __htab_map_lookup_elem), the per-CPU array lookup inlined (with the per-CPU address move at 26), and
# bpf_get_smp_processor_id inlined (32-34).
KR_EXEC_HEAD = bytes.fromhex(
    "bf160000000000008500000080400400bf07000000000000bf71000000000000"
    "77010000200000001501bc00f94d0000631af0ff0000000018110000af010000"
    "0000000000000000bfa200000000000007020000f0ffffff85000000303d0500"
    "150001000000000007000000380000005500b10000000000620af0ff00000000"
    "18110000ac0100000000000000000000bfa200000000000007020000f0ffffff"
    "0701000038010000612000000000000035000500010000006700000003000000"
    "0f100000000000007900000000000000bf00ffff000000000500010000000000"
    "b7000000000000001500a20000000000bf080000000000006208000001000000"
    "b700000034c0b083bf00ffff0000000061000000000000006308040000000000"
    "85000000304204007b08080000000000"
)
KR_EXEC_HEAD_LISTING = """\
   0: (bf) r6 = r1
   1: (85) call bpf_get_current_pid_tgid#278656
   2: (bf) r7 = r0
   3: (bf) r1 = r7
   4: (77) r1 >>= 32
   5: (15) if r1 == 0x4df9 goto pc+188
   6: (63) *(u32 *)(r10 -16) = r1
   7: (18) r1 = map[id:431]
   9: (bf) r2 = r10
  10: (07) r2 += -16
  11: (85) call __htab_map_lookup_elem#343344
  12: (15) if r0 == 0x0 goto pc+1
  13: (07) r0 += 56
  14: (55) if r0 != 0x0 goto pc+177
  15: (62) *(u32 *)(r10 -16) = 0
  16: (18) r1 = map[id:428]
  18: (bf) r2 = r10
  19: (07) r2 += -16
  20: (07) r1 += 312
  21: (61) r0 = *(u32 *)(r2 +0)
  22: (35) if r0 >= 0x1 goto pc+5
  23: (67) r0 <<= 3
  24: (0f) r0 += r1
  25: (79) r0 = *(u64 *)(r0 +0)
  26: (bf) r0 = &(void __percpu *)(r0)
  27: (05) goto pc+1
  28: (b7) r0 = 0
  29: (15) if r0 == 0x0 goto pc+162
  30: (bf) r8 = r0
  31: (62) *(u32 *)(r8 +0) = 1
  32: (b7) r0 = -2085568460
  33: (bf) r0 = &(void __percpu *)(r0)
  34: (61) r0 = *(u32 *)(r0 +0)
  35: (63) *(u32 *)(r8 +4) = r0
  36: (85) call bpf_ktime_get_ns#279088
  37: (7b) *(u64 *)(r8 +8) = r0"""


def test_golden_listing_of_a_real_program(syms: KernelSymbols) -> None:
    assert format_xlated(KR_EXEC_HEAD, syms) == KR_EXEC_HEAD_LISTING
    insns = disassemble_xlated(KR_EXEC_HEAD, syms)
    assert b"".join(i.encode() for i in insns) == KR_EXEC_HEAD
    assert [i.slot for i in insns if i.kind != "insn"] == [1, 7, 11, 16, 26, 33, 36]


def test_line_numbers_keep_bpftool_width_past_999() -> None:
    # bpftool prints "% 4d: ": a space before every number, so 1000 shows as " 1000".
    code = bytes.fromhex("b700000000000000") * 1001
    lines = format_xlated(code).splitlines()
    assert (lines[999], lines[1000]) == (" 999: (b7) r0 = 0", " 1000: (b7) r0 = 0")


# --- refusals -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("hexbytes", "message"), [
    ("8500", "2 bytes are not a whole number of 8-byte instructions"),
    ("18110000af010000", "slot 0: ld_imm64 takes two slots (16 bytes), only 8 bytes are left"),
    ("18110000af0100000100000000000000",
     "slot 1: second half of ld_imm64 must have opcode, registers and offset 0, has opcode 0x01, dst 0, src 0, off 0"),
    ("8501000001000000", "xlated code: slot 0: call with dst 1, src 0, off 0: not a call form the kernel writes"),
    ("8530000001000000", "xlated code: slot 0: call with dst 0, src 3, off 0: not a call form the kernel writes"),
    ("bf120800" "00000000",
     "xlated code: slot 0: opcode 0xbf (BPF_ALU64 | BPF_MOV | BPF_X): off must be 0, is 8; signed div/mod and "
     "movsx (cpu v4) are not supported (not a form of the verifier's either)"),
    ("0000000000000000" "b700000000000000",
     "xlated code: slot 0: opcode 0x00 (BPF_LD | BPF_W | BPF_IMM): the only BPF_LD instruction is "
     "BPF_LD | BPF_IMM | BPF_DW (ld_imm64) (not a form of the verifier's either)"),
])
def test_bytes_that_are_no_instruction_are_refused_with_the_slot(hexbytes: str, message: str) -> None:
    with pytest.raises((InvalidInstructionError, TruncatedProgramError)) as info:
        disassemble_xlated(bytes.fromhex(hexbytes))
    assert str(info.value) == message


def test_xlated_instruction_is_a_value() -> None:
    a = disassemble_xlated(bytes.fromhex("bf00ffff00000000"))[0]
    assert isinstance(a, XlatedInstruction)
    assert a == XlatedInstruction(slot=0, opcode=0xBF, dst=0, src=0, off=-1, imm=0,
                                  text="r0 = &(void __percpu *)(r0)", kind=xlated.KIND_PERCPU_ADDR)
