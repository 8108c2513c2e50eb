"""Loading BPF ELF objects (clang-built, libbpf-style) into the kernel, in pure Python.

    with LoadedObject("probe.bpf.o") as obj:      # maps created, programs verified
        obj.attach()                              # each where its SEC() says
        fd, size = obj.ringbufs()["events"]

``object_programs(path)`` lists an object's programs as linked for this kernel (name, section, kind and the
instruction bytes, map fds left 0): what ``disasm`` and ``verify`` show.  bpfobj/ reads and links objects
(pure); this package talks to the kernel.
"""
from __future__ import annotations

from dataclasses import dataclass

from kestrel_raw.loader.objload import PROGRAM_TYPES, LoadedObject, possible_cpus, ringbuf_size


@dataclass(frozen=True, slots=True)
class ObjectProgram:
    """One program of an object, linked for the running kernel: ``insns`` are its final instruction bytes
    (map references with fd 0: ``map_refs`` name them), ``prog_type``/``expected_attach_type`` how it
    loads, ``target`` where its section says it attaches ("" when it names none), ``core`` the CO-RE
    relocations applied to it (``kestrel_raw.bpfobj.CoreApplied``)."""
    name: str
    section: str
    kind: str | None
    insns: bytes
    map_refs: tuple
    prog_type: int
    expected_attach_type: int
    target: str = ""
    core: tuple = ()
    functions: tuple = ()   # (name, first slot) of the program and each subprogram appended, from its func info

    def instructions(self) -> list:
        """The instructions as ``kestrel_raw.asm.Instruction`` values (for the disassembler)."""
        from kestrel_raw.asm import Instruction

        out, slot = [], 0
        while slot < len(self.insns) // 8:
            insn = Instruction.decode(self.insns, slot)
            out.append(insn)
            slot += insn.size
        return out


def object_programs(source, target_btf=None) -> list[ObjectProgram]:
    """Every program of the BPF object ``source`` (a path or a ``BpfObject``), linked exactly as
    ``LoadedObject`` (and so ``run --object``) links it: against ``target_btf`` (default: the running
    kernel's, when the object has CO-RE relocations), its externs resolved from this kernel."""
    import os

    from kestrel_raw.bpfobj import BpfObject
    from kestrel_raw.loader.objload import link_for_load

    obj = source if isinstance(source, BpfObject) else BpfObject.load(os.fspath(source))
    _externs, linked = link_for_load(obj, target_btf)
    out = []
    for name, p in linked.items():
        ptype, atype = PROGRAM_TYPES.get(p.kind, (0, 0))
        functions = tuple((obj.btf.type_by_id(r.type_id).name, r.insn) for r in p.func_info) if obj.btf else ()
        out.append(ObjectProgram(name, p.section, p.kind, p.insns, p.map_refs, ptype, atype, p.target, p.core,
                                 functions))
    return out


__all__ = ["LoadedObject", "ObjectProgram", "object_programs", "possible_cpus", "ringbuf_size"]
