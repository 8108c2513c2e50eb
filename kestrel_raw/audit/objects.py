"""The programs of a user's BPF object (``run --object FILE``) as ``disasm`` and ``verify`` show and check them.

``kestrel_raw.loader.object_programs`` links each program exactly as ``run --object`` loads it (externs from
this kernel, CO-RE against this kernel's BTF, subprograms appended); its bytes hold fd 0 in every map load,
each named by a ``MapRef``.  Here:

- ``named_instructions``: the program disassembled with each map load by name (``r1 = map[events]``), as
  the built-in programs are listed;
- ``listing_text`` / ``listing_json``: the program headed by where it attaches (its section), its digests
  (the SHA-256 a pin file approves, the tag the kernel will report) and the CO-RE relocations applied, in
  libbpf's debug-log words (``insn #N`` counts slots in the function that holds the relocation);
- ``check_loaded``: each program of a ``LoadedObject`` read back from the kernel against the exact bytes
  loaded (``readback.check_program``, as for the built-in programs);
- ``check_running``: the same for a running collector's copy, found in its process by name and tag.

A pin file names a program as the kernel does (``pin_name``: its first 15 characters).
"""
from __future__ import annotations

import dataclasses

from kestrel_raw.asm import Note, disassemble, ld_map_fd, ld_map_value, program_digest
from kestrel_raw.asm import listing_json as insns_json
from kestrel_raw.asm import opcode as op
from kestrel_raw.asm import format_program
from kestrel_raw.audit.pin import pin_name
from kestrel_raw.bpfobj.sections import TRACEPOINT
from kestrel_raw.errors import BpfObjectError
from kestrel_raw.kernel.uapi import BPF_OBJ_NAME_LEN


def named_instructions(prog) -> list:
    """``prog``'s instructions (an ``ObjectProgram`` or ``LinkedProgram``) with each map load it names
    (``map_refs``) written ``ld_map_fd``/``ld_map_value`` of the map's name: the same bytes, the fd left 0.
    Each subprogram appended is headed by a comment naming it (``ObjectProgram.functions``, from the func
    info), so that a CO-RE relocation's ``insn #N`` (counted in its function) can be found."""
    refs = {r.insn: r for r in prog.map_refs}
    heads = {slot: f"subprogram {name}" for name, slot in getattr(prog, "functions", ()) if name != prog.name}
    out, slot = [], 0
    for insn in disassemble(prog.insns):
        if slot in heads:
            insn = dataclasses.replace(insn, note=Note((heads[slot],)).merged(insn.note))
        ref = refs.pop(slot, None)
        if ref is not None:
            named = (ld_map_fd(insn.dst, ref.map) if ref.pseudo == op.BPF_PSEUDO_MAP_FD
                     else ld_map_value(insn.dst, ref.map, ref.offset))
            if dataclasses.replace(named, map_name=None).encode() != insn.encode():
                raise BpfObjectError(f"program {prog.name!r} slot {slot}: {insn} is not the load of map "
                                     f"{ref.map!r} its relocation names")
            insn = dataclasses.replace(named, note=insn.note)
        out.append(insn)
        slot += insn.size
    if refs:
        raise BpfObjectError(f"program {prog.name!r}: map references at slots {sorted(refs)} fall inside an "
                             "instruction")
    return out


def attach_point(prog) -> str:
    """Where ``run`` attaches the program, from its section: ``tracepoint syscalls:sys_enter_execve``,
    ``uprobe libc.so.6:getpid``; a section that names no target is attached by nobody but its user."""
    group, slash, event = prog.target.partition("/")
    if prog.kind == TRACEPOINT and slash and group and event and "/" not in event:
        where = f"tracepoint {group}:{event}"
    elif prog.target:
        where = f"{prog.kind} {prog.target}"
    else:
        where = f"{prog.kind or 'unknown kind'}, no target in its section: not attached by run"
    return f'{where}, SEC("{prog.section}")'


def core_lines(prog) -> list[str]:
    """The CO-RE relocations applied to ``prog`` (and its subprograms): libbpf's debug-log line of each
    patch, then the local and the target (this kernel's) specification."""
    return [f"{line}: {c.local_spec} -> {c.target_spec or 'no target (instruction poisoned)'}"
            for c in prog.core for line in c.log]


def listing_text(prog, object_name: str) -> str:
    """One object program as text, headed as a built-in one: where it attaches, its digests, its maps and
    CO-RE relocations, then its disassembly (map loads by name)."""
    insns = named_instructions(prog)
    digest = program_digest(insns)
    maps = ", ".join(dict.fromkeys(r.map for r in prog.map_refs)) or "none"
    head = [f"; {prog.name}: {attach_point(prog)} (BPF object {object_name})", f"; sha256 {digest.sha256}",
            f"; tag {digest.tag}", f"; maps: {maps}"]
    head += [f"; CO-RE {line}" for line in core_lines(prog)]
    return "\n".join(head) + "\n" + format_program(insns)


def listing_json(prog, object_name: str) -> dict:
    """One object program for the JSON listing: the built-in programs' keys, with its object, section,
    maps and CO-RE relocations."""
    insns = named_instructions(prog)
    digest = program_digest(insns)
    return {"name": prog.name, "object": object_name, "section": prog.section, "attach": attach_point(prog),
            "sha256": digest.sha256, "tag": digest.tag, "maps": list(dict.fromkeys(r.map for r in prog.map_refs)),
            "core": core_lines(prog), "insns": insns_json(insns)}


def pin_digests(progs) -> dict[str, str]:
    """pin name -> SHA-256 of each object program (what a pin file approves)."""
    out: dict[str, str] = {}
    for p in progs:
        name = pin_name(p.name)
        if name in out:
            raise BpfObjectError(f"two programs of the object are named {name!r} by the kernel (their first "
                                 f"{BPF_OBJ_NAME_LEN - 1} characters): a pin file cannot tell them apart")
        out[name] = program_digest(p.insns).sha256
    return out


# --- read back from the kernel ----------------------------------------------------------------------------

def check_loaded(obj, symbols=None) -> list:
    """A ``ProgramCheck`` of every program ``obj`` loaded, against what it gave BPF_PROG_LOAD: for a
    ``LoadedObject`` the exact bytes (the linked instructions with its map fds), for a ``LoadedAsmObject``
    (kestrel_raw/probes/user.py) the assembled instructions, their maps named."""
    from kestrel_raw.audit.readback import check_program
    from kestrel_raw.kernel import bpf

    fd_names = {fd.fileno(): name for name, fd in obj.maps.items()}
    id_names = {bpf.map_info(fd.fileno()).id: name for name, fd in obj.maps.items()}
    if not hasattr(obj, "linked"):      # a LoadedAsmObject: its programs' instructions, maps by name
        code = {p.name: p.insns for p in obj.obj.programs}
    else:
        code = {name: obj.linked[name].with_fds(obj.maps) for name in obj.progs}
    return [check_program(name, code[name], fd.fileno(), fd_names=fd_names, id_names=id_names, symbols=symbols)
            for name, fd in obj.progs.items()]


def check_running(found: list, obj, progs, symbols=None) -> tuple[list, list[str]]:
    """Check a running collector's copies of ``progs`` (``object_programs`` of ``obj``, a ``BpfObject``).

    ``found``: (fd, ``bpf.ProgInfo``) of each program of the collector that is not a built-in one; each
    program of the object is the one with its kernel name, and its tag when several have that name.  Returns
    the checks and the problems (a program of the object that the collector does not hold, a program the
    collector holds that the object does not have).  Map loads are compared by name: the kernel's names of
    the maps the program uses are the object's map names as the loader gives them to the kernel.
    """
    from kestrel_raw.asm import prog_tag
    from kestrel_raw.audit.readback import check_program, map_names_by_id

    by_kernel_name = {m.kernel_name[:BPF_OBJ_NAME_LEN - 1]: m.name for m in obj.maps.values()}
    checks, problems, used = [], [], set()
    for p in progs:
        same_name = [(fd, info) for fd, info in found if info.name == pin_name(p.name) and fd not in used]
        tag = prog_tag(p.insns)
        match = next(((fd, info) for fd, info in same_name if info.tag == tag), same_name[0] if same_name else None)
        if match is None:
            problems.append(f"program {p.name} of {obj.source} is not loaded in the collector")
            continue
        fd, info = match
        used.add(fd)
        ids = {i: by_kernel_name.get(n, n) for i, n in map_names_by_id(info.map_ids).items()}
        checks.append(check_program(p.name, named_instructions(p), fd, id_names=ids, symbols=symbols))
    problems += [f"program {info.name} (id {info.id}) is neither a built-in program nor one of {obj.source}"
                 for fd, info in found if fd not in used]
    return checks, problems
