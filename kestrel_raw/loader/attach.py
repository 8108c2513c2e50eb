"""Attaching an object's program where its section name says (libbpf's auto-attach), or where the caller
says in the same words.

tracepoint/GROUP/NAME: a perf event on the tracepoint.  raw_tracepoint/NAME: BPF_RAW_TRACEPOINT_OPEN.
tp_btf, fentry, fexit: BPF_RAW_TRACEPOINT_OPEN with no name (the program was loaded for its BTF id).
uprobe/BINARY:FUNCTION[+OFFSET] and uretprobe: the uprobe PMU at the function's file offset in BINARY (a
path, or a library or program name looked up as libbpf does: LD_LIBRARY_PATH and the library directories
for a .so, PATH otherwise).  kprobe/FUNCTION[+OFFSET] and kretprobe: the kprobe PMU, where the kernel has
one.  usdt: not attached here (a USDT note's address and argument spec are needed).
"""
from __future__ import annotations

import errno
import os

from kestrel_raw.bpfobj import LinkedProgram
from kestrel_raw.bpfobj.sections import (
    FENTRY, FEXIT, KPROBE, KRETPROBE, RAW_TRACEPOINT, TP_BTF, TRACEPOINT, UPROBE, URETPROBE, SectionKind,
)
from kestrel_raw.elf import ElfFile
from kestrel_raw.errors import BPFError, BpfObjectError, SetupError
from kestrel_raw.kernel.attach import (
    ENOTSUPP, Link, attach_btf_program, attach_kprobe, attach_raw_tracepoint, attach_tracepoint, attach_uprobe,
)

_LIB_DIRS = ("/lib64", "/usr/lib64", "/lib", "/usr/lib")
# What BPF_RAW_TRACEPOINT_OPEN answers for a fentry/fexit where the kernel loads it but has no trampoline to
# attach it with (Debian's arm64 6.1: ENOTSUPP).
_NO_TRAMPOLINE = (ENOTSUPP, errno.EOPNOTSUPP, errno.EPERM)


def auto_target(p: LinkedProgram) -> str | None:
    """The target a program's section gives, None when it gives none usable (attached by hand)."""
    if p.kind in (TP_BTF, FENTRY, FEXIT):
        return p.target or None
    if p.kind == TRACEPOINT:
        return p.target if p.target.count("/") == 1 else None
    if p.kind in (UPROBE, URETPROBE):
        return p.target if ":" in p.target else None
    if p.kind in (RAW_TRACEPOINT, KPROBE, KRETPROBE):
        return p.target or None
    return None


def find_binary(name: str) -> str:
    """A uprobe's binary as libbpf's resolve_full_path finds it."""
    if "/" in name:
        return name
    multiarch = f"{os.uname().machine}-linux-gnu"
    if ".so" in name:
        dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
        dirs += [*_LIB_DIRS, f"/lib/{multiarch}", f"/usr/lib/{multiarch}"]
    else:
        dirs = [d for d in os.environ.get("PATH", "").split(":") if d]
    for d in dirs:
        path = os.path.join(d, name)
        if os.path.isfile(path):
            return path
    raise BpfObjectError(f"uprobe binary {name!r} found in none of {':'.join(dirs)}; give its full path")


def uprobe_offset(binary: str, function: str, offset: int) -> int:
    """The file offset of ``function`` + ``offset`` in ``binary`` (what the uprobe PMU takes)."""
    return ElfFile.load(binary).symbol_file_offset(function) + offset


def attach_program(prog, p: LinkedProgram, target: str | None = None) -> Link:
    """Attach loaded program ``prog`` (linked as ``p``) at ``target`` (default: its section's)."""
    target = target if target is not None else auto_target(p)
    if target is None:
        raise BpfObjectError(f"program {p.name!r}: section {p.section!r} names no target; give one")
    sk = SectionKind(p.kind, target, p.sleepable, f"{p.kind}/{target}")
    if p.kind == TRACEPOINT:
        group, name = sk.tracepoint
        return attach_tracepoint(prog, group, name)
    if p.kind == RAW_TRACEPOINT:
        return attach_raw_tracepoint(prog, target)
    if p.kind in (TP_BTF, FENTRY, FEXIT):
        try:
            return attach_btf_program(prog, f"{p.kind}:{target}")
        except BPFError as e:
            if p.kind == TP_BTF or e.errno not in _NO_TRAMPOLINE:
                raise
            raise SetupError(f"this kernel cannot attach {p.kind} programs ({errno.errorcode.get(e.errno, 'ENOTSUPP')}"
                             f" from BPF_RAW_TRACEPOINT_OPEN: no BPF trampoline on this kernel or architecture): "
                             f"program {p.name!r} ({p.section})") from None
    if p.kind in (UPROBE, URETPROBE):
        binary, function, off = sk.uprobe
        path = find_binary(binary)
        return attach_uprobe(prog, path, uprobe_offset(path, function, off), retprobe=p.kind == URETPROBE)
    if p.kind in (KPROBE, KRETPROBE):
        function, plus, off = target.partition("+")
        try:
            offset = int(off, 0) if plus else 0
        except ValueError:
            raise BpfObjectError(f"program {p.name!r}: kprobe offset {off!r} is not a number") from None
        return attach_kprobe(prog, function, offset, retprobe=p.kind == KRETPROBE)
    raise BpfObjectError(f"program {p.name!r}: {p.kind} programs are not attached by this loader")
