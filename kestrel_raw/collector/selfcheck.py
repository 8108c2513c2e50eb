"""The check after attaching: the collector makes each of its tracepoints fire once, in its own process,
and sees that the program ran.  An attachment the kernel accepted but never runs is then mended (detached
and attached again) or an error at start, not a silent gap in the events.

Why: an accepted attachment can stay dead.  On Debian's 6.1 arm64 kernel under QEMU (TCG), about one
collector start in 60, right after another collector had detached, the sys_exit tracepoint stayed
silent for good although it was registered: the programs at sys_exit_openat never ran, and neither did
ftrace's own syscalls:sys_exit_openat event, while raw_syscalls:sys_enter fired for the same process.
Detaching and attaching again, which turns the tracepoint off and on, mended it (5 times in 5, over 200
starts).  What keeps it silent is not known: that kernel already has the arm64 fix that makes a patched
jump label visible to every CPU (arch_jump_label_transform_apply), so the emulator is the suspect.  The
check does not depend on the cause.

How it costs nothing to anyone else: every program counts its runs for the collector's own tgid in
MAP_SELF_RUNS (a per-CPU array, one slot per program), on the branch where it would otherwise return at
once, so no other process runs that code and no event is written.  The collector then provokes each
tracepoint itself: an openat(2), an openat2(2), a connect(2), a thread's start and exit, an execve(2) and an
execveat(2) of a path that cannot exist, and chdir(2), fchdir(2), chroot(2), unshare(2), setns(2),
sethostname(2) calls that change nothing (a chdir to ".", an unshare of nothing, invalid arguments).  The
sched_process_exec program would need the collector to exec, so it is not checked.

Uprobes are checked the same way: the collector calls getaddrinfo (of an address literal: no file and no
network is touched) for dns_query's two programs.  It cannot call bash's readline, so shell_command's
program is made to run by a bash the collector starts for the purpose (kestrel_raw/collector/shellcheck.py),
which that program counts as the collector's own (NEEDS_COLLECTOR).
"""
from __future__ import annotations

import os
import socket
import threading
from typing import Callable

from kestrel_raw.kernel import syscall

AT_FDCWD = -100  # include/uapi/linux/fcntl.h


def _openat() -> None:
    # The C library's open() is openat(2) on every architecture it supports here.
    os.close(os.open("/", os.O_RDONLY | os.O_CLOEXEC))


def _openat2() -> None:
    # An empty struct open_how (usize 0) is refused with EINVAL before the path is read: a syscall that
    # does nothing, but still passes the tracepoint at its exit.
    try:
        os.close(syscall.openat2(AT_FDCWD, b"/", b""))
    except OSError:
        pass


def _connect() -> None:
    # An abstract unix address nobody listens on: refused at once, nothing on the file system.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(f"\0kestrel-raw-selfcheck-{os.getpid()}")
        except OSError:
            pass


def _getaddrinfo() -> None:
    # AI_NUMERICHOST: the literal is converted, no resolver is asked; the call and its return still pass
    # the C library's getaddrinfo, where the probes are.
    socket.getaddrinfo("127.0.0.1", None, socket.AF_INET, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)


# A path no file can have: procfs makes no files in a process's directory.
NO_SUCH_FILE = "/proc/self/kestrel-raw-selfcheck-no-such-file"


def _execve() -> None:
    try:
        os.execv(NO_SUCH_FILE, [NO_SUCH_FILE])
    except OSError:
        pass


def _execveat() -> None:
    try:
        syscall.execveat(AT_FDCWD, NO_SUCH_FILE.encode(), [NO_SUCH_FILE.encode()])
    except OSError:
        pass


def _chdir() -> None:
    os.chdir(".")


def _fchdir() -> None:
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fchdir(fd)
    finally:
        os.close(fd)


def _chroot() -> None:
    try:
        os.chroot(NO_SUCH_FILE)
    except OSError:
        pass


def _unshare() -> None:
    syscall.unshare(0)  # nothing: returns 0 and changes nothing


def _setns() -> None:
    try:
        syscall.setns(-1, 0)
    except OSError:
        pass


def _sethostname() -> None:
    try:
        socket.sethostname("k" * 65)  # longer than the 64 bytes allowed: EINVAL, and nothing changes
    except OSError:
        pass


def _thread_exit() -> None:
    # sched_process_exit fires for every exiting task, a thread included.  join() returns when the
    # thread's Python state is gone, a little before the kernel task exits: the caller waits for the count.
    t = threading.Thread(target=lambda: None, name="kestrel-raw-selfcheck")
    t.start()
    t.join()


# What makes each tracepoint fire in the calling process, by (group, tracepoint).
PROVOKE: dict[tuple[str, str], Callable[[], None]] = {
    ("syscalls", "sys_enter_openat"): _openat,
    ("syscalls", "sys_exit_openat"): _openat,
    ("syscalls", "sys_enter_openat2"): _openat2,
    ("syscalls", "sys_exit_openat2"): _openat2,
    ("syscalls", "sys_enter_connect"): _connect,
    ("syscalls", "sys_exit_connect"): _connect,
    ("sched", "sched_process_exit"): _thread_exit,
    ("tp_btf", "sched_process_fork"): _thread_exit,  # the thread's start forks
    ("syscalls", "sys_enter_execve"): _execve,
    ("syscalls", "sys_exit_execve"): _execve,
    ("syscalls", "sys_enter_execveat"): _execveat,
    ("syscalls", "sys_exit_execveat"): _execveat,
    ("syscalls", "sys_exit_chdir"): _chdir,
    ("syscalls", "sys_exit_fchdir"): _fchdir,
    ("syscalls", "sys_exit_chroot"): _chroot,
    ("syscalls", "sys_exit_unshare"): _unshare,
    ("syscalls", "sys_exit_setns"): _setns,
    ("syscalls", "sys_exit_sethostname"): _sethostname,
    ("uprobe", "getaddrinfo"): _getaddrinfo,
    ("uretprobe", "getaddrinfo"): _getaddrinfo,
}
# Provoked with the collector's help (check_attached's provoke_also): bash's readline, by the shell check's
# own bash.
NEEDS_COLLECTOR: frozenset[tuple[str, str]] = frozenset({("uretprobe", "readline")})

