"""Capabilities: what this process holds, and dropping it once the collector no longer needs it.

The collector needs root's powers only to set up: CAP_BPF to create maps and load programs, CAP_PERFMON to
load tracing programs and open tracepoint perf events, CAP_SYS_ADMIN (or CAP_DAC_READ_SEARCH as root) to
read tracefs and mount it, CAP_SYS_PTRACE to find other collectors (pidfd_getfd(2)).  Once the programs
are attached and the ring buffers mapped, the file descriptors it holds are all it needs: reading a ring
is a load from an mmap and an epoll wait, and closing the link fds detaches the programs.

``drop_privileges`` then makes the process as weak as it can while keeping its fds:

- the capability bounding set is emptied (PR_CAPBSET_DROP), so no execve can give capabilities back, not
  even to uid 0, and the ambient set is cleared;
- with euid 0 it becomes an unprivileged user (``setgroups([])``, ``setresgid``, ``setresuid``): dropping
  capabilities alone would leave uid 0, which owns /etc and /etc/cron.d and so can become full root again
  by writing a file;
- capset(2) leaves only ``keep`` in the effective and permitted sets (empty unless the kernel needs a
  capability for map lookups, see ``works_without_privilege``);
- PR_SET_NO_NEW_PRIVS, so no setuid binary or file capability raises it again.

Capabilities belong to threads, not processes: capset(2) and the prctl calls change only the calling
thread.  ``drop_privileges`` therefore refuses to run while the process has more than one thread (a thread
it did not reach would keep everything).  glibc applies the uid/gid changes to every thread.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from kestrel_raw.kernel import syscall
from kestrel_raw.errors import SetupError

# include/uapi/linux/capability.h
CAP_CHOWN = 0
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2
CAP_FOWNER = 3
CAP_FSETID = 4
CAP_KILL = 5
CAP_SETGID = 6
CAP_SETUID = 7
CAP_SETPCAP = 8
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
CAP_SYS_MODULE = 16
CAP_SYS_RAWIO = 17
CAP_SYS_PTRACE = 19
CAP_SYS_ADMIN = 21
CAP_SYS_RESOURCE = 24
CAP_PERFMON = 38
CAP_BPF = 39
CAP_CHECKPOINT_RESTORE = 40

CAP_NAMES = {value: name for name, value in globals().items() if name.startswith("CAP_") and isinstance(value, int)}

# include/uapi/linux/prctl.h
PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

CAP_LAST_CAP_PATH = "/proc/sys/kernel/cap_last_cap"
NOBODY = 65534  # the overflow uid/gid, "nobody" on Debian


def cap_mask(*caps: int) -> int:
    mask = 0
    for cap in caps:
        mask |= 1 << cap
    return mask


def cap_names(mask: int) -> list[str]:
    """``0x8000000000`` -> ``["CAP_BPF"]`` (unknown bits as ``cap_N``)."""
    return [CAP_NAMES.get(bit, f"cap_{bit}") for bit in range(64) if mask >> bit & 1]


def last_cap() -> int:
    """The highest capability number this kernel knows."""
    try:
        with open(CAP_LAST_CAP_PATH) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 63


@dataclass(frozen=True)
class Privileges:
    """What the calling thread holds."""

    effective: int
    permitted: int
    inheritable: int
    bounding: int
    no_new_privs: bool
    uid: int  # effective uid
    gid: int  # effective gid

    def describe(self) -> str:
        eff = ",".join(cap_names(self.effective)) or "none"
        return (f"uid={self.uid} gid={self.gid} CapEff={self.effective:#x} ({eff}) CapPrm={self.permitted:#x} "
                f"CapBnd={self.bounding:#x} NoNewPrivs={int(self.no_new_privs)}")


def current() -> Privileges:
    effective, permitted, inheritable = syscall.capget()
    bounding = 0
    for cap in range(last_cap() + 1):
        if syscall.prctl(PR_CAPBSET_READ, cap) == 1:
            bounding |= 1 << cap
    return Privileges(effective, permitted, inheritable, bounding, syscall.prctl(PR_GET_NO_NEW_PRIVS) == 1,
                      os.geteuid(), os.getegid())


def thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def drop_privileges(keep: int = 0, uid: int = NOBODY, gid: int = NOBODY) -> Privileges:
    """Give up every capability but the mask ``keep``, for good (see the module docstring).

    ``uid``/``gid``: the identity taken when the process runs as root (euid 0); a process that is not
    root keeps its own.  Returns what the thread holds afterwards; raises ``SetupError`` when any step
    fails or the result is not what was asked (the caller must not go on believing it dropped).
    """
    threads = thread_count()
    if threads != 1:
        raise SetupError(f"cannot drop privileges: the process has {threads} threads and capabilities belong "
                         f"to each thread; drop before starting threads")
    try:
        before = current()
        keep &= before.permitted
        if before.effective >> CAP_SETPCAP & 1:
            for cap in range(last_cap() + 1):
                if not keep >> cap & 1 and before.bounding >> cap & 1:
                    syscall.prctl(PR_CAPBSET_DROP, cap)
        try:
            syscall.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
        except OSError:
            pass  # kernels before 4.3 have no ambient set
        if os.geteuid() == 0:
            if keep:
                syscall.prctl(PR_SET_KEEPCAPS, 1)  # else setresuid clears the permitted set
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            if keep:
                syscall.prctl(PR_SET_KEEPCAPS, 0)
        syscall.capset(keep, keep, 0)
        syscall.prctl(PR_SET_NO_NEW_PRIVS, 1)
        after = current()
    except OSError as e:
        raise SetupError(f"could not drop privileges: {e.strerror or e}; refusing to run with them") from None
    if after.effective != keep or after.permitted != keep or after.inheritable or not after.no_new_privs:
        raise SetupError(f"dropping privileges left more than asked ({after.describe()}); refusing to run")
    return after


def works_without_privilege(check: Callable[[], None]) -> bool:
    """Whether ``check()`` succeeds in a child process that dropped every privilege.

    Used to learn, before dropping for real, whether this kernel lets a process without CAP_BPF use the
    map fds it already holds (6.18 does; kernels before 6.5 refuse every bpf(2) command to such a process
    when kernel.unprivileged_bpf_disabled is set).  The child does only system calls, then _exit.
    """
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            if os.geteuid() == 0:
                os.setgroups([])
                os.setresgid(NOBODY, NOBODY, NOBODY)
                os.setresuid(NOBODY, NOBODY, NOBODY)
            syscall.capset(0, 0, 0)
            check()
            code = 0
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0
