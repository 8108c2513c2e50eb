"""Digests of a program's bytes: a SHA-256 to pin them, and the tag the kernel computes for them.

A program's bytes hold the fd of each map it loads (``ld_map_fd``, ``ld_map_value``), and fds differ
from run to run.  Both digests leave them out, as the kernel does for its tag:

- ``prog_tag``: the kernel's tag (``bpf_prog_info.tag``, bpftool's ``tag``), computed as
  kernel/bpf/core.c ``bpf_prog_calc_tag`` does, before any rewrite: a hash over the instructions with the
  imm of each map load zeroed (both halves: the fd, and for a map value its offset too), first 8 bytes.
  The hash is SHA-1 up to Linux 6.17 and SHA-256 from 6.18 on (the kernel keeps the whole SHA-256 as the
  program's digest, for signed programs); ``tag_hash_for(release)`` says which.  The kernel computes it
  on the bytes as loaded (before it resolves the map fds), so a program's ``prog_tag`` equals the tag the
  kernel reports for it.
- ``sha256``: SHA-256 over the instructions with only the map fds zeroed (a map value's offset is part of
  what the program does, and kept): every other byte counts.

Both work on raw 8-byte slots, as the kernel does, so they need no decoding and accept any bytes.  They
also take a program as instructions, with its maps still named: the digests need no map, so a program
can be digested where it cannot be loaded.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterable

from kestrel_raw.asm import opcode as op
from kestrel_raw.asm.errors import TruncatedProgramError
from kestrel_raw.asm.instruction import INSN_SIZE
from kestrel_raw.asm.program import Item, resolve

BPF_TAG_SIZE = 8  # include/uapi/linux/bpf.h
_MAP_SRCS = (op.BPF_PSEUDO_MAP_FD, op.BPF_PSEUDO_MAP_VALUE)
_IMM = slice(4, 8)


Code = bytes | bytearray | memoryview | Iterable[Item]


def program_bytes(program: Code) -> bytes:
    """The bytes of ``program``; instructions are assembled with fd 0 for every named map, as the
    digests see them."""
    if isinstance(program, (bytes, bytearray, memoryview)):
        return bytes(program)
    return b"".join(dataclasses.replace(insn, map_name=None).encode() if insn.map_name is not None
                    else insn.encode() for insn in resolve(program, resolve_maps=False))


def _slots(code: Code) -> list[bytearray]:
    data = program_bytes(code)
    if len(data) % INSN_SIZE:
        raise TruncatedProgramError(f"{len(data)} bytes are not a whole number of {INSN_SIZE}-byte instructions")
    return [bytearray(data[i:i + INSN_SIZE]) for i in range(0, len(data), INSN_SIZE)]


def _is_map_load(slot: bytearray) -> bool:
    return slot[0] == op.LD_IMM64 and slot[1] >> 4 in _MAP_SRCS


def tag_input(code: Code) -> bytes:
    """The bytes the kernel's tag is the SHA-1 of: ``code`` with the map loads' imm zeroed, slot by slot
    as ``bpf_prog_calc_tag`` does it (the second half of a map load is zeroed only when it is one:
    opcode, registers and off 0)."""
    slots = _slots(code)
    was_ld_map = False
    for s in slots:
        if not was_ld_map and _is_map_load(s):
            was_ld_map = True
            s[_IMM] = bytes(4)
        elif was_ld_map and s[0] == 0 and s[1] == 0 and s[2:4] == b"\0\0":
            was_ld_map = False
            s[_IMM] = bytes(4)
        else:
            was_ld_map = False
    return b"".join(slots)


def stable_bytes(code: Code) -> bytes:
    """``code`` with the fd of each map load zeroed: the same bytes on every run.  A map value's offset,
    in the second half, is kept."""
    slots = _slots(code)
    i = 0
    while i < len(slots):
        if _is_map_load(slots[i]):
            slots[i][_IMM] = bytes(4)
            i += 2
        else:
            i += 1
    return b"".join(slots)


# The first release whose bpf_prog_calc_tag hashes with SHA-256 instead of SHA-1.
TAG_SHA256_SINCE = (6, 18)
TAG_HASHES = ("sha1", "sha256")


def tag_hash_for(release: str) -> str:
    """The hash of the kernel's tag on a kernel of this release (``os.uname().release``, "6.18.44"):
    ``"sha256"`` from 6.18 on, else ``"sha1"``."""
    parts = release.split(".")
    try:
        version = (int(parts[0]), int("".join(c for c in parts[1].split("-")[0] if c.isdigit())))
    except (IndexError, ValueError):
        raise ValueError(f"kernel release {release!r} does not start with MAJOR.MINOR") from None
    return "sha256" if version >= TAG_SHA256_SINCE else "sha1"


def prog_tag(code: Code, tag_hash: str | None = None) -> bytes:
    """The 8-byte tag the kernel gives a program loaded with these bytes (``bpf_prog_info.tag``), hashed
    with ``tag_hash`` (``"sha1"`` or ``"sha256"``; default: the running kernel's, ``tag_hash_for``)."""
    if tag_hash is None:
        tag_hash = tag_hash_for(os.uname().release)
    if tag_hash not in TAG_HASHES:
        raise ValueError(f"tag_hash must be one of {', '.join(TAG_HASHES)}, not {tag_hash!r}")
    return hashlib.new(tag_hash, tag_input(code)).digest()[:BPF_TAG_SIZE]


def sha256(code: Code) -> str:
    """SHA-256, in hex, of the program's bytes with the map fds zeroed (``stable_bytes``)."""
    return hashlib.sha256(stable_bytes(code)).hexdigest()


@dataclasses.dataclass(frozen=True)
class ProgramDigest:
    """A program's digests, in hex: ``sha256`` to pin its bytes, ``tag`` as the kernel and bpftool show it."""

    sha256: str
    tag: str

    def __str__(self) -> str:
        return f"sha256:{self.sha256} tag:{self.tag}"

    def to_json(self) -> dict:
        return {"sha256": self.sha256, "tag": self.tag}


def program_digest(code: Code, tag_hash: str | None = None) -> ProgramDigest:
    """Both digests of ``code``, the tag hashed as ``prog_tag`` hashes it (default: as this kernel)."""
    return ProgramDigest(sha256=sha256(code), tag=prog_tag(code, tag_hash).hex())

