"""The one module that calls into libc, and the only one that imports ctypes: bpf(2), perf_event_open(2),
ioctl(2); for dropping privilege capget(2), capset(2), prctl(2) and pidfd_getfd(2); openat2(2) for the
self-check after attaching.

The interface is bytes: an attr is a bytearray packed from a kernel/uapi.py layout, and a buffer the kernel
reads or fills through a pointer field is a bytearray whose address ``pinned`` gives for the duration of the
call.  Neither bpf(2) nor perf_event_open(2) has a libc wrapper, so both go through ``syscall(2)`` with the
number for this machine's architecture.  A failing call raises the ``BPFError`` subclass that
``errors.bpf_error`` picks for the errno, named after the operation.
"""
from __future__ import annotations

import ctypes
import os
import platform

from kestrel_raw.errors import SetupError, bpf_error
from kestrel_raw.kernel.uapi import BPF_CMD_NAMES, PERF_ATTR_SIZE_VER0

# Syscall numbers per architecture: arch/x86/entry/syscalls/syscall_64.tbl and, for arm64, the generic
# table include/uapi/asm-generic/unistd.h.
SYSCALL_NUMBERS = {
    "x86_64": {"__NR_bpf": 321, "__NR_perf_event_open": 298, "__NR_execveat": 322},
    "aarch64": {"__NR_bpf": 280, "__NR_perf_event_open": 241, "__NR_execveat": 281},
}
# Syscalls added since Linux 5.1 have one number on every architecture (the unified table).
__NR_openat2 = 437
__NR_pidfd_getfd = 438
_ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


def syscall_numbers(machine: str | None = None) -> dict[str, int]:
    """The bpf/perf_event_open syscall numbers for ``machine`` (default: this one, from uname)."""
    machine = machine or platform.machine()
    arch = _ARCH_ALIASES.get(machine, machine)
    try:
        return SYSCALL_NUMBERS[arch]
    except KeyError:
        known = ", ".join(sorted(SYSCALL_NUMBERS))
        raise SetupError(
            f"unsupported architecture {machine!r}: kestrel-raw knows the bpf(2) and perf_event_open(2) "
            f"syscall numbers only for {known}; add this architecture's numbers to "
            f"kestrel_raw/kernel/syscall.py SYSCALL_NUMBERS") from None


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_ioctl = _libc.ioctl
_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
_ioctl.restype = ctypes.c_int

_numbers: dict[str, int] | None = None


def _nr(name: str) -> int:
    # Resolved on first use so that importing the package (for the pure modules) works on any arch.
    global _numbers
    if _numbers is None:
        _numbers = syscall_numbers()
    return _numbers[name]


def _memory(buf: bytearray, what: str) -> ctypes.c_char:
    """A ctypes object at ``buf``'s first byte (no copy).  While it lives, ``buf`` is exported: Python refuses
    to resize it, so its bytes cannot move, and the export holds a reference, so they cannot be freed."""
    if not isinstance(buf, bytearray):
        raise TypeError(f"{what} must be a bytearray (the kernel may write into it), got {type(buf).__name__}")
    if not buf:
        raise ValueError(f"{what} is empty: there is no byte to point to (pass None for a NULL pointer)")
    return ctypes.c_char.from_buffer(buf)


class pinned:
    """``with pinned(buf) as address:`` the address of ``buf``'s bytes, for a pointer field of an attr or info
    struct (log buffer, instructions, keys and values, info structs, strings), valid inside the block: there
    ``buf`` can be neither resized nor freed.  ``pinned(None)`` gives 0, the NULL pointer."""

    __slots__ = ("_memory",)

    def __init__(self, buf: bytearray | None) -> None:
        self._memory = None if buf is None else _memory(buf, "a buffer handed to the kernel")

    def __enter__(self) -> int:
        return 0 if self._memory is None else ctypes.addressof(self._memory)

    def __exit__(self, *exc: object) -> None:
        self._memory = None  # releases the export: buf may be resized again


def _attr_size(attr: bytearray, size: int | None) -> int:
    if size is None:
        return len(attr)
    if not 0 <= size <= len(attr):
        raise ValueError(f"size {size} is past the end of the {len(attr)}-byte attr: the kernel would read "
                         f"memory that is not the attr's")
    return size


def bpf(cmd: int, attr: bytearray, size: int | None = None, op: str | None = None, hint: str = "") -> int:
    """Issue bpf(cmd, &attr, size) and return its non-negative result.

    ``attr`` is a packed ``union bpf_attr`` view (kernel/uapi.py); the kernel writes its answers back into it.
    ``size`` is how many bytes of ``attr`` the kernel should read (default: all of it); commands pass the end
    of the last field they use so that an older kernel's shorter ``union bpf_attr`` still fits.  ``op`` names
    the operation in the error (default: the command's name).
    """
    ret, err = bpf_errno(cmd, attr, size)
    if ret < 0:
        raise bpf_error(op or _cmd_name(cmd), err, hint)
    return ret


def bpf_errno(cmd: int, attr: bytearray, size: int | None = None) -> tuple[int, int]:
    """bpf(2) returning ``(result, errno)`` instead of raising, for callers that branch on the errno
    (end of an id walk, EAGAIN retries, a verifier log that did not fit)."""
    size = _attr_size(attr, size)
    memory = _memory(attr, "the bpf(2) attr")
    ret = _syscall(ctypes.c_long(_nr("__NR_bpf")), ctypes.c_long(cmd), ctypes.byref(memory), ctypes.c_uint(size))
    return (ret, ctypes.get_errno()) if ret < 0 else (ret, 0)


def perf_event_open(attr: bytearray, pid: int, cpu: int, group_fd: int, flags: int) -> int:
    """perf_event_open(2) with a packed ``struct perf_event_attr``; returns the new event's fd."""
    # The kernel reads as many bytes as the attr's own size field (offset 4) says; 0 means the first revision.
    declared = int.from_bytes(attr[4:8], "little") or PERF_ATTR_SIZE_VER0
    if declared > len(attr):
        raise ValueError(f"the perf_event_attr says it is {declared} bytes but is {len(attr)}: the kernel would "
                         f"read memory that is not the attr's")
    memory = _memory(attr, "the perf_event_attr")
    ret = _syscall(ctypes.c_long(_nr("__NR_perf_event_open")), ctypes.byref(memory), ctypes.c_int(pid),
                   ctypes.c_int(cpu), ctypes.c_int(group_fd), ctypes.c_ulong(flags))
    if ret < 0:
        raise bpf_error("perf_event_open", ctypes.get_errno())
    return ret


def ioctl(fd: int, request: int, arg: int = 0, op: str = "ioctl") -> int:
    """ioctl(fd, request, arg) with an integer argument."""
    ret = _ioctl(fd, request, arg)
    if ret < 0:
        raise bpf_error(op, ctypes.get_errno())
    return ret


# capget(2)/capset(2): struct __user_cap_header_struct and two struct __user_cap_data_struct (version 3
# covers capabilities 0-63), include/uapi/linux/capability.h.
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _oserror(call: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{call} failed: {os.strerror(err)}")


def capget() -> tuple[int, int, int]:
    """This thread's (effective, permitted, inheritable) capability sets as 64-bit masks."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.capget(ctypes.byref(header), ctypes.byref(data)) < 0:
        raise _oserror("capget")
    return tuple(data[0].__getattribute__(n) | data[1].__getattribute__(n) << 32
                 for n in ("effective", "permitted", "inheritable"))


def capset(effective: int, permitted: int, inheritable: int = 0) -> None:
    """Set this thread's capability sets (capabilities are per thread: other threads keep theirs)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        data[i].effective = effective >> (32 * i) & 0xFFFFFFFF
        data[i].permitted = permitted >> (32 * i) & 0xFFFFFFFF
        data[i].inheritable = inheritable >> (32 * i) & 0xFFFFFFFF
    if _libc.capset(ctypes.byref(header), ctypes.byref(data)) < 0:
        raise _oserror("capset")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2); returns its non-negative result, raises OSError."""
    ret = _libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(arg4),
                      ctypes.c_ulong(arg5))
    if ret < 0:
        raise _oserror(f"prctl({option})")
    return ret


def pidfd_getfd(pidfd: int, targetfd: int) -> int:
    """A duplicate (close-on-exec) of file descriptor ``targetfd`` of the process behind ``pidfd``
    (pidfd_getfd(2), Linux 5.6; the caller needs ptrace access to that process)."""
    ret = _syscall(ctypes.c_long(__NR_pidfd_getfd), ctypes.c_int(pidfd), ctypes.c_int(targetfd),
                   ctypes.c_uint(0))
    if ret < 0:
        raise _oserror("pidfd_getfd")
    return ret


def openat2(dirfd: int, path: bytes, how: bytes) -> int:
    """openat2(2) (Linux 5.6): ``how`` is the caller's struct open_how, as bytes; its length is the usize
    argument.  Returns the new fd."""
    how_buf = ctypes.create_string_buffer(how, len(how)) if how else None
    ret = _syscall(ctypes.c_long(__NR_openat2), ctypes.c_int(dirfd), ctypes.c_char_p(path), how_buf,
                   ctypes.c_size_t(len(how)))
    if ret < 0:
        raise _oserror("openat2")
    return ret


def execveat(dirfd: int, path: bytes, argv: list[bytes], flags: int = 0) -> None:
    """execveat(2) with an empty environment (glibc before 2.34 has no wrapper); returns only when it failed
    (raises OSError)."""
    args = (ctypes.c_char_p * (len(argv) + 1))(*argv, None)
    env = (ctypes.c_char_p * 1)(None)
    _syscall(ctypes.c_long(_nr("__NR_execveat")), ctypes.c_int(dirfd), ctypes.c_char_p(path), args, env,
             ctypes.c_int(flags))
    raise _oserror("execveat")


def unshare(flags: int) -> None:
    """unshare(2)."""
    if _libc.unshare(ctypes.c_int(flags)) != 0:
        raise _oserror("unshare")


def setns(fd: int, nstype: int) -> None:
    """setns(2)."""
    if _libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)) != 0:
        raise _oserror("setns")


def close(fd: int) -> None:
    os.close(fd)


def _cmd_name(cmd: int) -> str:
    return BPF_CMD_NAMES.get(cmd, f"bpf(cmd={cmd})")
