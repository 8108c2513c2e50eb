"""The kernel's xlated code: what it keeps of a program after verification, decoded as bpftool prints it.

``BPF_OBJ_GET_INFO_BY_FD`` returns it as ``xlated_prog_insns``; ``bpftool prog dump xlated`` prints it.
It is the loaded program after the verifier's rewrites, and the kernel prepares it for the dump
(kernel/bpf/syscall.c ``bpf_insn_prepare_dump``).  What differs from the code a program loads:

- calls: a helper call's imm is the helper's address minus ``__bpf_call_base``, and the verifier may
  have turned it into a call of another function (``bpf_map_lookup_elem`` of a hash map becomes a call
  of ``__htab_map_lookup_elem``).  bpftool names the function through /proc/kallsyms:
  ``call bpf_get_current_pid_tgid#278656``, ``call bpf_get_current_task_btf#-66720``; a kfunc call
  (src ``BPF_PSEUDO_KFUNC_CALL``) the same way.  Without symbols the address is printed
  (``call 0xffffffff814cd1b0#-66720``), as bpftool does when it cannot read kallsyms.
- map loads: the kernel puts the map's id where the program had its fd: ``r1 = map[id:431]``, and for a
  map value (``BPF_PSEUDO_MAP_VALUE``) ``r1 = map[id:12][0]+8``.
- the per-CPU address move ``BPF_MOV64_PERCPU_REG`` (``BPF_ALU64 | BPF_MOV | BPF_X`` with off -1,
  ``BPF_ADDR_PERCPU``; Linux 6.8+), which the verifier writes where it inlines per-CPU map lookups and
  ``bpf_get_smp_processor_id``: ``r0 = &(void __percpu *)(r0)``, as kernel/bpf/disasm.c prints it since
  6.8 (bpftool built from older sources, Debian 12's 7.1, prints ``r0 = r0``).
- ``nospec`` (``BPF_ST | BPF_NOSPEC``), the speculation barrier the verifier adds for programs loaded
  without CAP_PERFMON.
- inlined helpers and map lookups are plain instructions; loads from BTF pointers, which the verifier
  makes fault-safe (``BPF_PROBE_MEM``), are shown by the kernel as the loads the program wrote.

Every other instruction is an ``Instruction`` of the program's own form and prints as it does.
bpf-to-bpf calls (``call pc+N``) and function pointers (``subprog[+N]``) print as bpftool prints them
for a program that is not JIT-compiled; kestrel-raw's programs have neither.
"""
from __future__ import annotations

import dataclasses
import struct

from kestrel_raw.asm import opcode as op
from kestrel_raw.asm.errors import InvalidInstructionError, TruncatedProgramError
from kestrel_raw.asm.helpers import HELPER_NAMES
from kestrel_raw.asm.instruction import INSN_SIZE, U32_MASK, U64_MASK, Instruction, to_signed
from kestrel_raw.asm.kallsyms import KernelSymbols
from kestrel_raw.asm.program import insn_line

CALL = op.BPF_JMP | op.BPF_CALL | op.BPF_K
MOV64_X = op.BPF_ALU64 | op.BPF_MOV | op.BPF_X
NOSPEC = op.BPF_ST | op.BPF_NOSPEC

# What a decoded instruction is, beyond its fields (XlatedInstruction.kind).
KIND_INSN = "insn"  # an instruction a program can load, as the program wrote it or as the verifier wrote it
KIND_CALL = "call"  # a call of a kernel function by address (a helper, or what the verifier put instead)
KIND_KFUNC_CALL = "kfunc_call"  # a call of a kfunc by address
KIND_SUBPROG_CALL = "subprog_call"  # a bpf-to-bpf call
KIND_MAP = "map"  # ld_imm64 of a map, by map id
KIND_MAP_VALUE = "map_value"  # ld_imm64 of the address of a map's value, by map id and offset
KIND_PERCPU_ADDR = "percpu_addr"  # the per-CPU address move
KIND_NOSPEC = "nospec"  # speculation barrier
KIND_OTHER_LD_IMM64 = "ld_imm64"  # ld_imm64 with another src (subprog[...], map[idx:...])

_INSN = struct.Struct("<BBhi")


@dataclasses.dataclass(frozen=True)
class XlatedInstruction:
    """One instruction of xlated code: its fields, its text as bpftool prints it, and what it is.

    ``imm`` is the whole 64-bit constant for ld_imm64 (the low half the map id for a map load, the high
    half the offset for a map value).  ``address`` and ``symbol`` are set for calls by address (the
    symbol None when kallsyms has no name for it); ``map_id`` and ``map_offset`` for map loads.
    """

    slot: int
    opcode: int
    dst: int
    src: int
    off: int
    imm: int
    text: str
    kind: str
    address: int | None = None
    symbol: str | None = None
    map_id: int | None = None
    map_offset: int | None = None

    @property
    def size(self) -> int:
        """Slots (8-byte units) the instruction takes: 2 for ld_imm64, else 1."""
        return 2 if self.opcode == op.LD_IMM64 else 1

    def encode(self) -> bytes:
        """The instruction's bytes, as the kernel returned them."""
        regs = (self.src << 4) | self.dst
        if self.opcode == op.LD_IMM64:
            return (_INSN.pack(self.opcode, regs, self.off, to_signed(self.imm, 32))
                    + _INSN.pack(0, 0, 0, to_signed(self.imm >> 32, 32)))
        return _INSN.pack(self.opcode, regs, self.off, self.imm)

    def line(self) -> str:
        """The line bpftool prints: ``  11: (85) call __htab_map_lookup_elem#343344``."""
        return insn_line(self.slot, self.opcode, self.text)

    def to_json(self) -> dict:
        """A JSON-ready object: index, bytes (hex), text, kind, and the call or map fields when set."""
        row: dict = {"index": self.slot, "bytes": self.encode().hex(), "text": self.text, "kind": self.kind}
        for name in ("address", "symbol", "map_id", "map_offset"):
            value = getattr(self, name)
            if value is not None:
                row[name] = value
        return row


def disassemble_xlated(data: bytes | bytearray | memoryview,
                       symbols: KernelSymbols | None = None) -> list[XlatedInstruction]:
    """The instructions of the kernel's xlated code ``data``, calls named through ``symbols``.

    Raises ``TruncatedProgramError`` when the bytes end inside an instruction and
    ``InvalidInstructionError`` (naming the slot) for bytes that are no instruction of a program nor a
    form the verifier writes that this module knows.
    """
    view = memoryview(data).cast("B")
    if len(view) % INSN_SIZE:
        raise TruncatedProgramError(f"{len(view)} bytes are not a whole number of {INSN_SIZE}-byte instructions")
    out = []
    slot = 0
    while slot * INSN_SIZE < len(view):
        insn = _decode(view, slot, symbols)
        out.append(insn)
        slot += insn.size
    return out


def format_xlated(data: bytes | bytearray | memoryview, symbols: KernelSymbols | None = None) -> str:
    """The listing ``bpftool prog dump xlated`` prints for these bytes (a program without BTF line info),
    one line per instruction, no trailing newline."""
    return "\n".join(insn.line() for insn in disassemble_xlated(data, symbols))


def _decode(view: memoryview, slot: int, symbols: KernelSymbols | None) -> XlatedInstruction:
    code, regs, off, imm = _INSN.unpack_from(view, slot * INSN_SIZE)
    dst, src = regs & 0x0F, regs >> 4
    fields = dict(slot=slot, opcode=code, dst=dst, src=src, off=off)
    if code == CALL:
        return _call(fields, imm, symbols)
    if code == MOV64_X and off == op.BPF_ADDR_PERCPU:
        return XlatedInstruction(**fields, imm=imm, text=f"r{dst} = &(void __percpu *)(r{src})",
                                 kind=KIND_PERCPU_ADDR)
    if code == NOSPEC:
        return XlatedInstruction(**fields, imm=imm, text="nospec", kind=KIND_NOSPEC)
    if code == op.LD_IMM64 and src != 0:
        return _ld_imm64(view, fields, imm)
    try:
        insn = Instruction.decode(view, slot)
    except InvalidInstructionError as exc:
        raise InvalidInstructionError(f"xlated code: {exc} (not a form of the verifier's either)") from None
    return XlatedInstruction(**fields, imm=insn.imm, text=str(insn), kind=KIND_INSN)


def _call(fields: dict, imm: int, symbols: KernelSymbols | None) -> XlatedInstruction:
    src = fields["src"]
    if src == op.BPF_PSEUDO_CALL:
        # bpftool for a program without JIT symbols: the offset, from off (kernel/bpf/disasm.c, "call pc%s").
        return XlatedInstruction(**fields, imm=imm, text=f"call pc{fields['off']:+d}", kind=KIND_SUBPROG_CALL)
    if src not in (0, op.BPF_PSEUDO_KFUNC_CALL) or fields["dst"] or fields["off"]:
        raise InvalidInstructionError(
            f"xlated code: slot {fields['slot']}: call with dst {fields['dst']}, src {src}, off {fields['off']}: "
            f"not a call form the kernel writes")
    if src == 0 and 0 <= imm and (imm == 0 or imm in HELPER_NAMES):
        # disasm.c names a small imm as the helper with that id before it asks bpftool (__func_get_name);
        # a dump for a reader not allowed to see addresses has imm 0 in every call: "bpf_unspec".
        name = f"bpf_{HELPER_NAMES[imm]}" if imm else "bpf_unspec"
        return XlatedInstruction(**fields, imm=imm, text=f"call {name}#{imm}", kind=KIND_CALL)
    address = symbols.call_address(imm) if symbols is not None else imm & U64_MASK
    symbol = symbols.name(address) if symbols is not None else None
    text = f"call {symbol if symbol is not None else f'0x{address:x}'}#{imm}"
    kind = KIND_KFUNC_CALL if src == op.BPF_PSEUDO_KFUNC_CALL else KIND_CALL
    return XlatedInstruction(**fields, imm=imm, text=text, kind=kind, address=address, symbol=symbol)


def _ld_imm64(view: memoryview, fields: dict, lo: int) -> XlatedInstruction:
    slot = fields["slot"]
    if len(view) < (slot + 2) * INSN_SIZE:
        raise TruncatedProgramError(
            f"slot {slot}: ld_imm64 takes two slots (16 bytes), only {len(view) - slot * INSN_SIZE} bytes are left")
    code2, regs2, off2, hi = _INSN.unpack_from(view, (slot + 1) * INSN_SIZE)
    if code2 or regs2 or off2:
        raise InvalidInstructionError(
            f"slot {slot + 1}: second half of ld_imm64 must have opcode, registers and offset 0, has "
            f"opcode 0x{code2:02x}, dst {regs2 & 0x0F}, src {regs2 >> 4}, off {off2}")
    if fields["off"]:
        raise InvalidInstructionError(f"slot {slot}: ld_imm64 with off {fields['off']}: off must be 0")
    src = fields["src"]
    imm = to_signed(((hi & U32_MASK) << 32) | (lo & U32_MASK), 64)
    first, second = lo & U32_MASK, hi & U32_MASK
    # bpftool's print_imm (xlated_dumper.c), in its order.
    if src == op.BPF_PSEUDO_MAP_FD:
        return XlatedInstruction(**fields, imm=imm, text=f"r{fields['dst']} = map[id:{first}]", kind=KIND_MAP,
                                 map_id=first)
    if src == op.BPF_PSEUDO_MAP_VALUE:
        return XlatedInstruction(**fields, imm=imm, text=f"r{fields['dst']} = map[id:{first}][0]+{second}",
                                 kind=KIND_MAP_VALUE, map_id=first, map_offset=second)
    if src == op.BPF_PSEUDO_MAP_IDX_VALUE:
        text = f"map[idx:{first}]+{second}"
    elif src == op.BPF_PSEUDO_FUNC:
        text = f"subprog[{lo:+d}]"
    else:
        text = f"0x{imm & U64_MASK:x}"
    return XlatedInstruction(**fields, imm=imm, text=f"r{fields['dst']} = {text}", kind=KIND_OTHER_LD_IMM64)
