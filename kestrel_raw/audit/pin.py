"""Pin files: the programs an auditor approved, by name and SHA-256, and the check at load.

``kestrel-raw disasm --pin-file FILE`` writes one for this kernel and configuration; ``kestrel-raw run --pin
FILE`` refuses to load any program whose digest is not in it (nothing is loaded then).  The format
(``FORMAT``, also written at the top of every pin file) is plain text::

    # comments start with '#', blank lines are ignored
    kr_exec 3b0c...e1   (NAME, then the 64 hex digits of its SHA-256; more text after them is a comment)

A program may have several lines (versions approved, say one per kernel of a fleet); it is accepted when
its digest is on one of them.  A name with no line is refused like a changed program.

The SHA-256 (``kestrel_raw.asm.program_digest``) is over the program's instructions exactly as they go to
BPF_PROG_LOAD (8 bytes each, 16 for ld_imm64), with one thing left out: the imm of the first half of each
ld_imm64 that loads a map (src_reg 1, BPF_PSEUDO_MAP_FD, or 2, BPF_PSEUDO_MAP_VALUE) is hashed as 0, since
it holds the map's file descriptor, which differs from run to run.  Everything else is hashed, the offset
into a map value included.  Which map each such load names is checked by ``kestrel-raw verify`` (the map
ids the kernel put in its place, and the names of those maps).  The collector's own tgid is not in the
bytes: the programs read it from a frozen map, so a program's digest is the same in every run.
"""
from __future__ import annotations

import dataclasses
import re

from kestrel_raw.errors import ConfigError
from kestrel_raw.kernel.uapi import BPF_OBJ_NAME_LEN

FORMAT = """\
# kestrel-raw pin file: the BPF programs approved for loading.
# One line per program: NAME SHA256 ('#' starts a comment).  A program may have several lines (one per
# approved version); `kestrel-raw run --pin FILE` loads nothing unless every program's digest is here.
# SHA256: of the instructions as given to BPF_PROG_LOAD, with the imm of each map load (ld_imm64 with
# src_reg 1 or 2: the map's file descriptor) taken as 0; every other byte counts."""

_DIGEST = re.compile(r"[0-9a-f]{64}\Z")
_NAME = re.compile(r"[A-Za-z0-9_.]{1,15}\Z")


class PinError(ConfigError):
    """A program is not approved by the pin file, or the pin file cannot be read: nothing was loaded."""


@dataclasses.dataclass(frozen=True)
class PinFile:
    """The approved digests, by program name; ``source`` names the file in messages."""

    digests: dict[str, frozenset[str]]
    source: str = "<pins>"

    @classmethod
    def parse(cls, text: str, source: str = "<pins>") -> "PinFile":
        """Read a pin file's text; ``PinError`` names the line that is not ``NAME SHA256``."""
        found: dict[str, set[str]] = {}
        for number, line in enumerate(text.splitlines(), 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            if len(words) != 2 or not _NAME.match(words[0]) or not _DIGEST.match(words[1].lower()):
                raise PinError(f"{source}:{number}: {line.strip()!r} is not 'NAME SHA256' (a program name of at most "
                               f"15 characters and 64 hex digits)")
            found.setdefault(words[0], set()).add(words[1].lower())
        return cls({name: frozenset(d) for name, d in found.items()}, source)

    @classmethod
    def load(cls, path: str) -> "PinFile":
        try:
            with open(path, encoding="utf-8") as f:
                return cls.parse(f.read(), path)
        except OSError as e:
            raise PinError(f"cannot read the pin file {path}: {e.strerror or e}") from None
        except UnicodeDecodeError as e:
            raise PinError(f"the pin file {path} is not text: {e}") from None

    def refusal(self, name: str, sha256: str) -> str | None:
        """Why the program ``name`` with this digest may not be loaded, or None when it may."""
        approved = self.digests.get(name)
        if approved is None:
            return f"program {name} (sha256 {sha256}) is not in the pin file {self.source}"
        if sha256 not in approved:
            return (f"program {name} has sha256 {sha256}, which the pin file {self.source} does not approve "
                    f"({len(approved)} digest{'s' if len(approved) > 1 else ''} listed for it)")
        return None

    def check(self, digests: dict[str, str]) -> None:
        """Raise ``PinError`` for the first program (in order) of ``digests`` (name -> sha256) that is not
        approved."""
        for name, sha256 in digests.items():
            why = self.refusal(name, sha256)
            if why is not None:
                raise PinError(f"{why}: nothing loaded; `kestrel-raw disasm` shows the program")


def pin_name(program: str) -> str:
    """The name a pin file gives a program: the kernel's name of it, its first 15 characters
    (BPF_OBJ_NAME_LEN - 1).  The built-in programs' names are that short already; a BPF object's may not be."""
    return program[:BPF_OBJ_NAME_LEN - 1]


def format_pins(digests: dict[str, str], comment: str = "") -> str:
    """The text of a pin file approving ``digests`` (name -> sha256), with ``FORMAT`` and ``comment`` (one
    or more lines, each written as a '#' comment) at the top."""
    lines = [FORMAT]
    lines += [f"# {line}".rstrip() for line in comment.splitlines()]
    lines += [f"{name} {sha256}" for name, sha256 in digests.items()]
    return "\n".join(lines) + "\n"
