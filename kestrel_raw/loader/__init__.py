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
    loads."""
    name: str
    section: str
    kind: str | None
    insns: bytes
    map_refs: tuple
    prog_type: int
    expected_attach_type: int

    def instructions(self) -> list:
        """The instructions as ``kestrel_raw.asm.Instruction`` values (for the disassembler)."""
        from kestrel_raw.asm import Instruction

        out, slot = [], 0
        while slot < len(self.insns) // 8:
            insn = Instruction.decode(self.insns, slot)
            out.append(insn)
            slot += insn.size
        return out


def object_programs(path: str, target_btf=None) -> list[ObjectProgram]:
    """Every program of the BPF object at ``path``, linked against ``target_btf`` (default: the running
    kernel's, when the object has CO-RE relocations) with its externs resolved from this kernel."""
    from kestrel_raw.bpfobj import BpfObject
    from kestrel_raw.bpfobj.externs import HostFacts
    from kestrel_raw.loader import features

    obj = BpfObject.load(path)
    externs = obj.resolve_externs(HostFacts(features=features.feature, btf=target_btf)) if obj.externs else None
    out = []
    for name, p in obj.link(target_btf, externs=externs).items():
        ptype, atype = PROGRAM_TYPES.get(p.kind, (0, 0))
        out.append(ObjectProgram(name, p.section, p.kind, p.insns, p.map_refs, ptype, atype))
    return out


__all__ = ["LoadedObject", "ObjectProgram", "object_programs", "possible_cpus", "ringbuf_size"]
