"""Kernel symbols from ``/proc/kallsyms``, to name the functions that the kernel's xlated code calls.

In the code the kernel keeps after verification, a call's imm is no longer a helper id: it is the
function's address minus the address of ``__bpf_call_base`` (include/linux/filter.h ``BPF_CALL_IMM``),
negative for a function placed before it.  bpftool names such a call by looking the address up in
/proc/kallsyms (tools/bpf/bpftool/xlated_dumper.c, ``kernel_syms_load`` and ``kernel_syms_search``);
``KernelSymbols`` does the same on the text of that file, so it can be tested without the kernel.

The kernel shows the real addresses only to a reader it allows to see them (``kernel.kptr_restrict``: 0,
or 1 and CAP_SYSLOG); to others every address reads 0 and no call can be named.  Like bpftool, an
address-0 line is skipped, and a zero ``__bpf_call_base`` ends the reading: no symbol is known then.
"""
from __future__ import annotations

KALLSYMS = "/proc/kallsyms"
CALL_BASE = "__bpf_call_base"
_U64 = (1 << 64) - 1


class KernelSymbols:
    """Addresses and names of kernel symbols, and the address of ``__bpf_call_base``.

    ``name(address)`` is the symbol at exactly that address.  Where several names share an address (the
    kernel has aliases), the first one in the file is taken; bpftool takes any of them.
    """

    def __init__(self, names: dict[int, str], call_base: int | None) -> None:
        self._names = names
        self.call_base = call_base

    @classmethod
    def parse(cls, text: str) -> "KernelSymbols":
        """Read the text of /proc/kallsyms: ``ADDRESS TYPE NAME [MODULE]`` per line."""
        names: dict[int, str] = {}
        call_base = None
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            try:
                address = int(parts[0], 16)
            except ValueError:
                continue
            name = parts[2]
            if name == CALL_BASE:
                if address == 0:  # addresses hidden (kptr_restrict): no call can be resolved
                    return cls({}, None)
                call_base = address
            if address and address not in names:
                names[address] = name
        return cls(names, call_base)

    @classmethod
    def load(cls, path: str = KALLSYMS) -> "KernelSymbols":
        """Read ``path`` (default /proc/kallsyms); ``OSError`` when it cannot be read."""
        with open(path, encoding="ascii", errors="replace") as f:
            return cls.parse(f.read())

    def __len__(self) -> int:
        return len(self._names)

    def name(self, address: int) -> str | None:
        """The symbol at ``address``, or None."""
        return self._names.get(address)

    def call_address(self, imm: int) -> int:
        """The address a call with this (signed 32-bit) imm goes to: ``__bpf_call_base + imm``, as
        bpftool computes it (an unsigned 64-bit sum; with the base unknown, the imm itself)."""
        return ((self.call_base or 0) + imm) & _U64
