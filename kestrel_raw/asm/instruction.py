"""``Instruction``: one eBPF instruction as an immutable value, its checks, its bytes and its text.

A value holds what ``struct bpf_insn`` holds (opcode, dst, src, off, imm) plus two symbolic references that
``assemble`` resolves: ``target`` (the label a jump goes to) and ``map_name`` (the map an ld_imm64 loads).
``ld_imm64`` is ONE value, two slots wide; its ``imm`` is the whole signed 64-bit constant.

Every value is checked when it is made: an opcode the kernel does not define, a register outside r0..r10,
a field out of range, or a field the kernel requires to be zero that is not, raises
``InvalidInstructionError``.  The same check runs on decoded bytes, so the assembler never produces, and
the disassembler never accepts, an instruction the kernel would refuse as malformed.  Semantic rules that
need the program's context (division by a zero constant, shift amounts, writes to r10) are the verifier's.

Not supported (rejected with a message saying so): legacy packet loads (BPF_LD | BPF_ABS/BPF_IND), and the
cpu v4 extensions other than bswap and gotol (sign-extending loads and moves, signed division), the
may_goto pseudo jump, and ld_imm64 forms other than plain, map fd, map value, BTF id (a typed ``__ksym``) and
function (a callback's subprogram: BPF_PSEUDO_FUNC).  Calls are helper calls, bpf-to-bpf calls
(BPF_PSEUDO_CALL: imm is the callee's distance in slots) and kfunc calls (BPF_PSEUDO_KFUNC_CALL: imm is a
BTF id), as a linked BPF object's programs hold them (kestrel_raw.bpfobj).
"""
from __future__ import annotations

import dataclasses
import struct

from kestrel_raw.asm import opcode as op
from kestrel_raw.asm.annotate import Note, Provenance, note_of
from kestrel_raw.asm.errors import (
    InvalidInstructionError, UndefinedLabelError, UnknownMapError, TruncatedProgramError,
)
from kestrel_raw.asm.helpers import HELPER_NAMES

INSN_SIZE = 8
MAX_REG = 10  # r10 is the read-only frame pointer; BPF_REG_0..BPF_REG_10

_INSN = struct.Struct("<BBhi")  # code, dst_reg:4 | src_reg:4 << 4, off, imm (the kernel's bitfield order on LE)

S16 = (-(1 << 15), (1 << 15) - 1)
S32 = (-(1 << 31), (1 << 31) - 1)
S64 = (-(1 << 63), (1 << 63) - 1)
U32_MASK = 0xFFFF_FFFF
U64_MASK = 0xFFFF_FFFF_FFFF_FFFF

# Text of the operators, as kernel/bpf/disasm.c prints them.
_ALU_TEXT = {
    op.BPF_ADD: "+=", op.BPF_SUB: "-=", op.BPF_MUL: "*=", op.BPF_DIV: "/=", op.BPF_OR: "|=", op.BPF_AND: "&=",
    op.BPF_LSH: "<<=", op.BPF_RSH: ">>=", op.BPF_MOD: "%=", op.BPF_XOR: "^=", op.BPF_MOV: "=",
    op.BPF_ARSH: "s>>=",
}
_JMP_TEXT = {
    op.BPF_JEQ: "==", op.BPF_JGT: ">", op.BPF_JGE: ">=", op.BPF_JSET: "&", op.BPF_JNE: "!=", op.BPF_JSGT: "s>",
    op.BPF_JSGE: "s>=", op.BPF_JLT: "<", op.BPF_JLE: "<=", op.BPF_JSLT: "s<", op.BPF_JSLE: "s<=",
}
_ATOMIC_FETCH_TEXT = {op.BPF_ADD: "add", op.BPF_AND: "and", op.BPF_OR: "or", op.BPF_XOR: "xor"}
_SIZE_TEXT = {op.BPF_B: "u8", op.BPF_H: "u16", op.BPF_W: "u32", op.BPF_DW: "u64"}


def to_signed(value: int, bits: int) -> int:
    """The two's-complement reading of the low ``bits`` bits of ``value``."""
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


@dataclasses.dataclass(frozen=True)
class Instruction:
    """One eBPF instruction (one slot, or two for ld_imm64).  ``str()`` is the kernel's disassembly text."""

    opcode: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0
    target: str | None = None  # label a jump goes to; ``off`` (``imm`` for gotol) is filled by assemble
    map_name: str | None = None  # map an ld_imm64 loads; its fd goes into the low 32 bits of ``imm``
    # Comments and provenance (kestrel_raw.asm.annotate): beside the instruction, never in its bytes, its
    # equality or its hash.
    note: Note | None = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.note is not None and not isinstance(self.note, Note):
            raise InvalidInstructionError(f"Instruction.note must be a Note, not {self.note!r}")
        # A constant that carries its provenance (annotate.Sourced) notes it here, before it becomes a
        # plain int.
        sourced = note_of(self.off, self.imm)
        if sourced:
            object.__setattr__(self, "note", (self.note or Note()).merged(sourced))
        # IntEnum registers and bool-free ints: store plain ints so equality and repr stay simple.
        for name in ("opcode", "dst", "src", "off", "imm"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidInstructionError(f"Instruction.{name} must be an int, not {value!r}")
            object.__setattr__(self, name, int(value))
        check(self)

    @property
    def size(self) -> int:
        """Slots (8-byte units) this instruction takes: 2 for ld_imm64, else 1."""
        return 2 if self.opcode == op.LD_IMM64 else 1

    @property
    def is_jump(self) -> bool:
        """True for the instructions whose offset is a jump distance (conditional jumps, ja, gotol)."""
        return _is_jump(self.opcode)

    def encode(self) -> bytes:
        """The kernel's bytes for this instruction (8, or 16 for ld_imm64).

        A symbolic target or map name must be resolved first: ``assemble`` does that for a program.
        """
        if self.target is not None:
            raise UndefinedLabelError(
                f"{self}: jump to label {self.target!r} is not resolved; assemble the whole program with "
                f"assemble(), which places the labels"
            )
        if self.map_name is not None:
            raise UnknownMapError(
                f"{self}: map {self.map_name!r} is not resolved to a file descriptor; use "
                f"assemble(insns, maps={{{self.map_name!r}: fd}})"
            )
        regs = (self.src << 4) | self.dst
        if self.opcode == op.LD_IMM64:
            lo = to_signed(self.imm, 32)
            hi = to_signed(self.imm >> 32, 32)
            return _INSN.pack(self.opcode, regs, self.off, lo) + _INSN.pack(0, 0, 0, hi)
        return _INSN.pack(self.opcode, regs, self.off, self.imm)

    @classmethod
    def decode(cls, data: bytes | memoryview, slot: int = 0) -> Instruction:
        """The instruction that starts at 8-byte slot ``slot`` of ``data``."""
        start = slot * INSN_SIZE
        if len(data) < start + INSN_SIZE:
            raise TruncatedProgramError(
                f"slot {slot}: {len(data) - start} bytes left, an instruction needs {INSN_SIZE}"
            )
        code, regs, off, imm = _INSN.unpack_from(data, start)
        dst, src = regs & 0x0F, regs >> 4
        if code != op.LD_IMM64:
            return _decoded(slot, code, dst, src, off, imm)
        if len(data) < start + 2 * INSN_SIZE:
            raise TruncatedProgramError(
                f"slot {slot}: ld_imm64 takes two slots (16 bytes), only {len(data) - start} bytes are left"
            )
        code2, regs2, off2, hi = _INSN.unpack_from(data, start + INSN_SIZE)
        if code2 or regs2 or off2:
            raise InvalidInstructionError(
                f"slot {slot + 1}: second half of ld_imm64 must have opcode, registers and offset 0, has "
                f"opcode 0x{code2:02x}, dst {regs2 & 0x0F}, src {regs2 >> 4}, off {off2}"
            )
        imm64 = to_signed(((hi & U32_MASK) << 32) | (imm & U32_MASK), 64)
        return _decoded(slot, code, dst, src, off, imm64)

    def __str__(self) -> str:
        return text(self)


def annotate(insn: Instruction, comment: str | None = None,
             provenance: Provenance | tuple[Provenance, ...] | list[Provenance] = ()) -> Instruction:
    """``insn`` with a block comment (what the block it starts does) and/or the provenance of its
    kernel-layout-dependent constants added to its note.  The bytes stay the same."""
    if not isinstance(insn, Instruction):
        raise InvalidInstructionError(f"annotate() takes an Instruction, not {insn!r}")
    if isinstance(provenance, Provenance):
        provenance = (provenance,)
    added = Note((comment,) if comment is not None else (), tuple(provenance))
    return dataclasses.replace(insn, note=(insn.note or Note()).merged(added))


def _decoded(slot: int, code: int, dst: int, src: int, off: int, imm: int) -> Instruction:
    try:
        return Instruction(code, dst, src, off, imm)
    except InvalidInstructionError as exc:
        raise InvalidInstructionError(f"slot {slot}: {exc}") from None


def _is_jump(code: int) -> bool:
    cls = op.BPF_CLASS(code)
    if cls not in (op.BPF_JMP, op.BPF_JMP32):
        return False
    return op.BPF_OP(code) in op.COND_JMP_OPS or op.BPF_OP(code) == op.BPF_JA


def _is_gotol(code: int) -> bool:
    return code == op.BPF_JMP32 | op.BPF_JA


# --- checks -------------------------------------------------------------------------------------------


def check(insn: Instruction) -> None:
    """Raise ``InvalidInstructionError`` unless ``insn`` is an instruction the kernel defines."""
    code = insn.opcode
    if not 0 <= code <= 0xFF:
        raise InvalidInstructionError(f"opcode {code} does not fit in a byte")
    what = op.describe(code)

    def bad(reason: str) -> InvalidInstructionError:
        return InvalidInstructionError(f"opcode {what}: {reason}")

    if not 0 <= insn.dst <= MAX_REG:
        raise bad(f"dst register {insn.dst} is not a register (r0..r{MAX_REG})")
    if not 0 <= insn.src <= 15:
        raise bad(f"src field {insn.src} does not fit in 4 bits")
    if not S16[0] <= insn.off <= S16[1]:
        raise bad(f"off {insn.off} does not fit in a signed 16-bit field")
    lo, hi = S64 if code == op.LD_IMM64 else S32
    if not lo <= insn.imm <= hi:
        width = 64 if code == op.LD_IMM64 else 32
        raise bad(f"imm {insn.imm} does not fit in a signed {width}-bit field")

    cls = op.BPF_CLASS(code)
    if cls in (op.BPF_ALU, op.BPF_ALU64):
        _check_alu(insn, bad)
    elif cls in (op.BPF_JMP, op.BPF_JMP32):
        _check_jmp(insn, bad)
    elif cls == op.BPF_LD:
        _check_ld(insn, bad)
    else:
        _check_mem(insn, bad)

    if insn.target is not None:
        if not isinstance(insn.target, str) or not insn.target:
            raise bad(f"target must be a label name (non-empty str), not {insn.target!r}")
        if not _is_jump(code):
            raise bad(f"only a jump can have a target label; this instruction has target {insn.target!r}")
        if (insn.imm if _is_gotol(code) else insn.off) != 0:
            raise bad(f"a jump to label {insn.target!r} must leave its offset 0 for assemble() to fill in")
    if insn.map_name is not None:
        if not isinstance(insn.map_name, str) or not insn.map_name:
            raise bad(f"map_name must be a non-empty str, not {insn.map_name!r}")
        if code != op.LD_IMM64 or insn.src not in (op.BPF_PSEUDO_MAP_FD, op.BPF_PSEUDO_MAP_VALUE):
            raise bad("only ld_imm64 with src BPF_PSEUDO_MAP_FD or BPF_PSEUDO_MAP_VALUE can name a map")
        if insn.imm & U32_MASK:
            raise bad(f"the fd half of imm must be 0 when the map is named ({insn.map_name!r}); "
                      "assemble() fills it in")


def _need_reg(insn: Instruction, bad) -> None:
    if insn.src > MAX_REG:
        raise bad(f"src register {insn.src} is not a register (r0..r{MAX_REG})")


def _zero(insn: Instruction, bad, *fields: str, why: str = "") -> None:
    for name in fields:
        value = getattr(insn, name)
        if value != 0:
            raise bad(f"{name} must be 0, is {value}{'; ' + why if why else ''}")


def _check_alu(insn: Instruction, bad) -> None:
    code = insn.opcode
    alu_op = op.BPF_OP(code)
    if alu_op not in op.ALU_OP_NAMES:
        raise bad(f"0x{alu_op:02x} is not an ALU operation")
    if alu_op == op.BPF_NEG:
        if op.BPF_SRC(code) != op.BPF_K:
            raise bad("BPF_NEG takes no source operand (must be BPF_K)")
        _zero(insn, bad, "src", "off", "imm")
    elif alu_op == op.BPF_END:
        if op.BPF_CLASS(code) == op.BPF_ALU64 and op.BPF_SRC(code) != op.BPF_TO_LE:
            raise bad("BPF_ALU64 | BPF_END is the unconditional bswap; it has no byte-order bit")
        _zero(insn, bad, "src", "off")
        if insn.imm not in (16, 32, 64):
            raise bad(f"byte swap width (imm) must be 16, 32 or 64, is {insn.imm}")
    elif op.BPF_SRC(code) == op.BPF_X:
        _need_reg(insn, bad)
        _zero(insn, bad, "imm")
        if insn.off == op.BPF_ADDR_PERCPU and code == op.BPF_ALU64 | op.BPF_MOV | op.BPF_X:
            raise bad(f"off {op.BPF_ADDR_PERCPU} (BPF_ADDR_PERCPU) makes this the per-CPU address move that "
                      "the verifier writes into the code it keeps; a program cannot load it.  Decode the "
                      "kernel's xlated code with kestrel_raw.asm.disassemble_xlated")
        _zero(insn, bad, "off", why="signed div/mod and movsx (cpu v4) are not supported")
    else:
        _zero(insn, bad, "src")
        _zero(insn, bad, "off", why="signed div/mod (cpu v4) are not supported")


def _check_jmp(insn: Instruction, bad) -> None:
    code = insn.opcode
    jmp_op = op.BPF_OP(code)
    is32 = op.BPF_CLASS(code) == op.BPF_JMP32
    if jmp_op not in op.JMP_OP_NAMES:
        raise bad(f"0x{jmp_op:02x} is not a jump operation (BPF_JCOND may_goto is not supported)")
    if jmp_op == op.BPF_JA:
        if op.BPF_SRC(code) != op.BPF_K:
            raise bad("BPF_JA takes no source operand (must be BPF_K)")
        _zero(insn, bad, "dst", "src")
        # JMP | JA jumps by off; JMP32 | JA (gotol, cpu v4) jumps by imm, for distances beyond 16 bits.
        _zero(insn, bad, "off" if is32 else "imm")
    elif jmp_op in (op.BPF_CALL, op.BPF_EXIT):
        name = "BPF_CALL" if jmp_op == op.BPF_CALL else "BPF_EXIT"
        if is32:
            raise bad(f"{name} exists only in class BPF_JMP")
        if op.BPF_SRC(code) != op.BPF_K:
            raise bad(f"{name} takes no source operand (must be BPF_K)")
        if jmp_op == op.BPF_EXIT:
            _zero(insn, bad, "dst", "off", "src", "imm")
        elif insn.src == op.BPF_PSEUDO_CALL:
            # a bpf-to-bpf call: imm is the distance to the callee (any sign), no other field
            _zero(insn, bad, "dst", "off")
        elif insn.src == op.BPF_PSEUDO_KFUNC_CALL:
            # a kfunc: imm its BTF id, off the index of its module's BTF fd in the load's fd_array
            _zero(insn, bad, "dst")
            if insn.imm < 0:
                raise bad(f"a kfunc call's imm is a BTF id, which is not negative; is {insn.imm}")
        elif insn.src != 0:
            raise bad(f"src {insn.src} of a call is none of: 0 (a helper), BPF_PSEUDO_CALL 1 (a bpf-to-bpf call), "
                      f"BPF_PSEUDO_KFUNC_CALL 2 (a kfunc)")
        else:
            _zero(insn, bad, "dst", "off")
            if insn.imm <= 0:
                raise bad(f"helper id (imm) must be positive, is {insn.imm}; in the kernel's xlated code a "
                          "call's imm is the function's address minus __bpf_call_base: decode that with "
                          "kestrel_raw.asm.disassemble_xlated")
    elif op.BPF_SRC(code) == op.BPF_X:
        _need_reg(insn, bad)
        _zero(insn, bad, "imm")
    else:
        _zero(insn, bad, "src")


def _check_ld(insn: Instruction, bad) -> None:
    code = insn.opcode
    mode = op.BPF_MODE(code)
    if mode in (op.BPF_ABS, op.BPF_IND):
        raise bad("legacy packet loads (BPF_ABS, BPF_IND) are not supported")
    if code != op.LD_IMM64:
        raise bad("the only BPF_LD instruction is BPF_LD | BPF_IMM | BPF_DW (ld_imm64)")
    _zero(insn, bad, "off")
    if insn.src not in _LD_IMM64_SRCS:
        raise bad(f"ld_imm64 src {insn.src} is not supported (0, BPF_PSEUDO_MAP_FD 1, BPF_PSEUDO_MAP_VALUE 2, "
                  "BPF_PSEUDO_BTF_ID 3, BPF_PSEUDO_FUNC 4)")
    if insn.src in (op.BPF_PSEUDO_BTF_ID, op.BPF_PSEUDO_FUNC):
        return   # a BTF id and its BTF object's fd, or a subprogram's distance: no map fd to check
    if insn.src == op.BPF_PSEUDO_MAP_FD and insn.imm >> 32 != 0:
        raise bad("ld_imm64 with BPF_PSEUDO_MAP_FD holds a map fd: the high 32 bits must be 0")
    if insn.src != 0 and to_signed(insn.imm, 32) < 0:
        raise bad(f"the map fd (low 32 bits of imm) must not be negative, is {to_signed(insn.imm, 32)}")


_LD_IMM64_SRCS = (0, op.BPF_PSEUDO_MAP_FD, op.BPF_PSEUDO_MAP_VALUE, op.BPF_PSEUDO_BTF_ID, op.BPF_PSEUDO_FUNC)


def _check_mem(insn: Instruction, bad) -> None:
    code = insn.opcode
    cls = op.BPF_CLASS(code)
    mode = op.BPF_MODE(code)
    if cls == op.BPF_STX and mode == op.BPF_ATOMIC:
        _need_reg(insn, bad)
        if op.BPF_SIZE(code) not in (op.BPF_W, op.BPF_DW):
            raise bad("atomic operations exist for BPF_W and BPF_DW only")
        if insn.imm not in op.ATOMIC_OP_NAMES:
            raise bad(f"imm 0x{insn.imm & U32_MASK:x} is not an atomic operation "
                      f"({', '.join(op.ATOMIC_OP_NAMES.values())})")
        return
    if mode == op.BPF_MEMSX and cls == op.BPF_LDX:
        raise bad("sign-extending loads (BPF_MEMSX, cpu v4) are not supported")
    if mode != op.BPF_MEM:
        extra = "; atomics are BPF_STX | BPF_ATOMIC" if mode == op.BPF_ATOMIC else ""
        raise bad(f"{op.CLASS_NAMES[cls]} has no mode {op.MODE_NAMES.get(mode, hex(mode))}{extra}")
    if cls == op.BPF_ST:
        _zero(insn, bad, "src")
    else:
        _need_reg(insn, bad)
        _zero(insn, bad, "imm")


# --- text ---------------------------------------------------------------------------------------------


def _goto(insn: Instruction, distance: int) -> str:
    if insn.target is not None:
        return f"<{insn.target}>"
    return f"pc{distance:+d}"


def text(insn: Instruction) -> str:
    """The instruction as kernel/bpf/disasm.c prints it (without bpftool's ``(code)`` prefix).

    A symbolic jump prints its label as ``<name>``; a symbolic map load prints ``map[name]``.
    """
    code, dst, src, off, imm = insn.opcode, insn.dst, insn.src, insn.off, insn.imm
    cls = op.BPF_CLASS(code)
    if cls in (op.BPF_ALU, op.BPF_ALU64):
        r = "w" if cls == op.BPF_ALU else "r"
        alu_op = op.BPF_OP(code)
        if alu_op == op.BPF_END:
            if cls == op.BPF_ALU64:
                return f"r{dst} = bswap{imm} r{dst}"
            return f"r{dst} = {'be' if op.BPF_SRC(code) == op.BPF_TO_BE else 'le'}{imm} r{dst}"
        if alu_op == op.BPF_NEG:
            return f"{r}{dst} = -{r}{dst}"
        if op.BPF_SRC(code) == op.BPF_X:
            return f"{r}{dst} {_ALU_TEXT[alu_op]} {r}{src}"
        return f"{r}{dst} {_ALU_TEXT[alu_op]} {imm}"
    if cls in (op.BPF_JMP, op.BPF_JMP32):
        jmp_op = op.BPF_OP(code)
        if jmp_op == op.BPF_CALL and src == op.BPF_PSEUDO_CALL:
            return f"call pc{imm:+d}"
        if jmp_op == op.BPF_CALL and src == op.BPF_PSEUDO_KFUNC_CALL:
            return f"call kernel-function#{imm}"
        if jmp_op == op.BPF_CALL:
            name = HELPER_NAMES.get(imm)
            return f"call {'bpf_' + name if name else 'unknown'}#{imm}"
        if jmp_op == op.BPF_EXIT:
            return "exit"
        if jmp_op == op.BPF_JA:
            return f"gotol {_goto(insn, imm)}" if cls == op.BPF_JMP32 else f"goto {_goto(insn, off)}"
        r = "w" if cls == op.BPF_JMP32 else "r"
        rhs = f"{r}{src}" if op.BPF_SRC(code) == op.BPF_X else f"0x{imm & U32_MASK:x}"
        return f"if {r}{dst} {_JMP_TEXT[jmp_op]} {rhs} goto {_goto(insn, off)}"
    if cls == op.BPF_LD:
        value = imm & U64_MASK
        if src == 0:
            return f"r{dst} = 0x{value:x}"
        if src == op.BPF_PSEUDO_FUNC:
            return f"r{dst} = subprog[{to_signed(value, 32):+d}]"
        if src == op.BPF_PSEUDO_BTF_ID:
            return f"r{dst} = btf_id[{value & U32_MASK}]"
        ref = f"map[{insn.map_name}]" if insn.map_name is not None else f"map[fd:{value & U32_MASK}]"
        if src == op.BPF_PSEUDO_MAP_VALUE:
            ref += f"[0]+{value >> 32}"
        return f"r{dst} = {ref}"
    size = _SIZE_TEXT[op.BPF_SIZE(code)]
    mem = f"(r{dst} {off:+d})" if cls != op.BPF_LDX else f"(r{src} {off:+d})"
    if cls == op.BPF_LDX:
        return f"r{dst} = *({size} *){mem}"
    if cls == op.BPF_ST:
        return f"*({size} *){mem} = {imm}"
    if op.BPF_MODE(code) == op.BPF_MEM:
        return f"*({size} *){mem} = r{src}"
    bits = "64" if op.BPF_SIZE(code) == op.BPF_DW else ""
    if imm in _ATOMIC_FETCH_TEXT:
        return f"lock *({size} *){mem} {_ALU_TEXT[imm]} r{src}"
    if imm & op.BPF_FETCH and imm & ~op.BPF_FETCH in _ATOMIC_FETCH_TEXT:
        return f"r{src} = atomic{bits}_fetch_{_ATOMIC_FETCH_TEXT[imm & ~op.BPF_FETCH]}(({size} *){mem}, r{src})"
    if imm == op.BPF_CMPXCHG:
        return f"r0 = atomic{bits}_cmpxchg(({size} *){mem}, r0, r{src})"
    return f"r{src} = atomic{bits}_xchg(({size} *){mem}, r{src})"
