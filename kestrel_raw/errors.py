"""Exceptions.  Every error says what failed, why, and what to do.

Two families, as h11 splits them: the *data* is bad (``RecordError``: a record from the kernel that cannot
be parsed; counted and skipped by the poller), or the *environment or caller* is wrong (everything else:
raised to the user with a message that names the operation and the remedy).
"""
from __future__ import annotations

import errno as _errno
import os


class KestrelError(Exception):
    """Base of every error kestrel-raw raises on purpose."""


class ConfigError(KestrelError, ValueError):
    """A configuration value is invalid; the message names the setting and the accepted values."""


class SetupError(KestrelError):
    """The host cannot run the collector as configured (no tracefs, no BTF, no ring buffers, ...)."""


class AsmError(KestrelError):
    """A program could not be assembled (unknown label, jump out of range, unknown map or helper)."""


class BTFError(KestrelError):
    """BTF data is malformed, or a type or member asked for is not in it."""


class ElfError(KestrelError):
    """An ELF file is not one this reader can use (truncated, corrupt, another class or byte order), or a
    section, segment or symbol asked for is not in it.  The message names the file."""


class BpfObjectError(ElfError):
    """A BPF ELF object (clang -target bpf) cannot be turned into programs and maps: an unknown section or
    map definition, a relocation that points nowhere.  The message names the object and the section."""


class CoreRelocationError(BpfObjectError):
    """A CO-RE relocation (.BTF.ext) cannot be applied: the message names the object, the section, the
    instruction index and the access string, spelled out as a path (``struct task_struct.real_parent``)."""


class RecordError(KestrelError):
    """A record read from a ring buffer is malformed.  The poller counts and skips it."""


# Capabilities by errno context: what a bpf(2) or perf_event_open(2) caller needs.  Named as in
# include/uapi/linux/capability.h.
_NEEDS_BY_OP = {
    "perf_event_open": "CAP_PERFMON (or CAP_SYS_ADMIN)",
    "BPF_ENABLE_STATS": "CAP_SYS_ADMIN",
}
_DEFAULT_NEEDS = "CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)"


class BPFError(KestrelError, OSError):
    """A bpf(2), perf_event_open(2) or ioctl call failed.

    ``op`` names the call (``"BPF_MAP_CREATE"``, ``"perf_event_open"``...), ``errno`` is the kernel's answer,
    ``hint`` says what to do about it.
    """

    def __init__(self, op: str, err: int, hint: str = "") -> None:
        self.op = op
        self.hint = hint or default_hint(op, err)
        name = _errno.errorcode.get(err, str(err))
        msg = f"{op} failed: {name} ({os.strerror(err)})"
        if self.hint:
            msg += f"; {self.hint}"
        OSError.__init__(self, err, msg)

    def __str__(self) -> str:  # OSError's own str() prefixes "[Errno N]"; ours already names it.
        return self.args[1]


class PrivilegeError(BPFError):
    """EPERM/EACCES from the kernel: the message names the capability that is missing."""


class VerifierError(BPFError):
    """The verifier rejected a program.  ``log`` is its whole log; ``str()`` shows the last lines."""

    TAIL_LINES = 8

    def __init__(self, op: str, err: int, log: str, program_name: str = "") -> None:
        self.log = log
        self.program_name = program_name
        lines = [ln for ln in log.rstrip("\n").splitlines() if ln.strip()]
        tail = "\n  ".join(lines[-self.TAIL_LINES:]) if lines else "(the verifier wrote no log)"
        who = f"program {program_name!r}" if program_name else "the program"
        hint = f"the verifier rejected {who}; its log ends:\n  {tail}"
        super().__init__(op, err, hint)


def default_hint(op: str, err: int) -> str:
    if err in (_errno.EPERM, _errno.EACCES):
        needs = _NEEDS_BY_OP.get(op, _DEFAULT_NEEDS)
        return f"the process needs {needs}: run as root or grant the capabilities"
    if err == _errno.E2BIG:
        return "the kernel is older than the attr layout used; it refuses non-zero bytes it does not know"
    if err == _errno.ENOMEM:
        return "the kernel could not allocate memory (memory cgroup limit, or RLIMIT_MEMLOCK on kernels before 5.11)"
    if err == _errno.ENOSYS:
        return "this kernel was built without the bpf() syscall (CONFIG_BPF_SYSCALL)"
    return ""


def bpf_error(op: str, err: int, hint: str = "") -> BPFError:
    """The right BPFError subclass for ``err``."""
    cls = PrivilegeError if err in (_errno.EPERM, _errno.EACCES) else BPFError
    return cls(op, err, hint)
