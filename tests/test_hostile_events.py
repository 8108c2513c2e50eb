"""Hostile names, arguments and process shapes on the real kernel: each is an exact event, a flagged one, or
(for a syscall that failed before anything happened) no event, and the collector keeps reporting.

Same pattern as test_e2e_events.py: `kestrel-raw run` in a subprocess (one for the module), the hostile
thing done in child processes, exactly those events found in the JSON lines.  Exact bytes are read back
through ``<key>_b64`` when a value is not UTF-8, so every assertion is on bytes, not on a lossy rendering.

Semantics decided here, as a Falco/Tetragon user would expect them:

- exec reports successful execs only: an execve that fails (missing file, no exec permission, a path of
  PATH_MAX bytes or more, an argument over MAX_ARG_STRLEN) emits nothing; the tests prove the next exec of
  the same process is still reported.
- A shebang script's event has ``filename`` = the script as passed and ``argv`` as the interpreter sees it
  (the kernel rewrites it: interpreter, its optional argument, the script, then argv[1:]), equal to
  /proc/PID/cmdline.  An empty argv is reported as the kernel fixes it up: ``[""]`` (since 5.18).
- open reports every attempt with its result; a path is kept up to 4096 bytes: a 4096-byte path (which the
  kernel refuses, ENAMETOOLONG) is exact, a longer one is its first 4096 bytes with ``truncated``; a NULL
  path is ``""`` with ``fault``.
- connect reports the address as passed, read up to ``addrlen`` (at most 128 bytes): a too-short one gives
  the family alone (or AF_UNSPEC under 2 bytes), a NULL one ``fault``; ``ret`` tells what the kernel did.
- pid, tid, ppid are the kernel's global ids at the event: a thread's exec takes the leader's pid; an
  orphan's later events carry its new parent (the subreaper).
"""
from __future__ import annotations

import base64
import errno
import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from helpers import Collector

pytestmark = pytest.mark.kernel

PATH_MAX = 4096
KEPT = 4096  # bytes of a path or of the argument area an event keeps (wire.MAX_PATH / MAX_ARGS)
MAX_ARG_STRLEN = 32 * 4096  # include/uapi/linux/binfmts.h: one argument, its NUL included


@pytest.fixture(scope="module")
def collector(tmp_path_factory):
    c = Collector(tmp_path_factory.mktemp("hostile"))
    yield c
    rc, err = c.stop()
    assert rc == 0 and "Traceback" not in err, err


# -- helpers --------------------------------------------------------------------------------------------


def exact(ev: dict, key: str) -> bytes:
    """The exact bytes of a string field: ``<key>_b64`` when present, else the UTF-8 text."""
    if key + "_b64" in ev:
        raw = base64.b64decode(ev[key + "_b64"])
        assert ev[key] == raw.decode("utf-8", "replace")  # the text is the lossy rendering of those bytes
        return raw
    return ev[key].encode("utf-8")


def exact_argv(ev: dict) -> list[bytes]:
    if "argv_b64" in ev:
        raws = [base64.b64decode(a) for a in ev["argv_b64"]]
        assert ev["argv"] == [r.decode("utf-8", "replace") for r in raws]
        return raws
    return [a.encode("utf-8") for a in ev["argv"]]


def split_area(area: bytes) -> list[bytes]:
    """argv from a NUL-separated argument area, the last NUL missing when it was cut (as events.split_args)."""
    parts = area.split(b"\0")
    if parts and not parts[-1]:
        parts.pop()
    return parts


def py(code: str, *args, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``code`` in a child Python; its stdout as bytes."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True,
                          check=check)


def of(collector, pid: int, type_: str) -> list[dict]:
    return [e for e in collector.events() if e["type"] == type_ and e["pid"] == pid]


def settle(collector, pred, what, count=1, timeout=10.0):
    """Wait until ``count`` events match, then a little longer, and return all that match (no extras)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in collector.events() if pred(e)]
        if len(found) >= count:
            time.sleep(0.3)  # a duplicate would show up within the poll interval
            return [e for e in collector.events() if pred(e)]
        time.sleep(0.05)
    found = [e for e in collector.events() if pred(e)]
    raise AssertionError(f"{what}: {len(found)} events within {timeout}s, expected {count}: {found}")


def long_path(prefix: bytes, n: int) -> bytes:
    """A path of exactly ``n`` bytes starting with ``prefix``, made of components of at most 200 bytes
    (NAME_MAX is 255: a longer component would fail for its own reason)."""
    p = prefix
    while n - len(p) > 201:
        p += b"d" * 200 + b"/"
    return p + b"f" * (n - len(p))


# -- open -----------------------------------------------------------------------------------------------

HOSTILE_NAMES = [
    b"new\nline",
    b"cr\rand\nlf",
    b'quo"te\'s',
    b"back\\slash\\",
    b"ctl\x01\x02\x1b[31mred\x7f",
    b"tab\tsp ace",
    b"bad\xff\xfeutf8",
    b"lone\xc3",
    b"surrogate\xed\xa0\x80",
    b"overlong\xc0\xaf",
    b"emoji\xf0\x9f\x98\x80",
    b"\xe2\x80\xaereversed",
]


def test_open_hostile_path_bytes_are_exact(collector):
    base = f"/tmp/kr-hostile-{uuid.uuid4().hex}/".encode()  # does not exist: every open fails ENOENT
    paths = [base + name for name in HOSTILE_NAMES] + [b""]
    out = py("""
        import os, sys
        print(os.getpid())
        for h in sys.argv[1:]:
            try:
                os.close(os.open(bytes.fromhex(h), os.O_RDONLY))
                print(0)
            except OSError as e:
                print(-e.errno)
        """, *[p.hex() for p in paths]).stdout.split()
    pid, rets = int(out[0]), [int(r) for r in out[1:]]
    assert rets == [-errno.ENOENT] * len(paths)
    settle(collector, lambda e: e["type"] == "open" and e["pid"] == pid and exact(e, "path") == b"", "empty")
    evs = [e for e in of(collector, pid, "open") if exact(e, "path").startswith(base) or e["path"] == ""]
    assert [exact(e, "path") for e in evs] == paths  # each once, in order, byte for byte
    for e, p in zip(evs, paths):
        assert (e["ret"], e["truncated"], e["fault"], e["flags"] & 3) == (-errno.ENOENT, False, False, 0)
        try:
            p.decode("utf-8")
            assert "path_b64" not in e
        except UnicodeDecodeError:
            assert "path_b64" in e


@pytest.mark.parametrize("n, ret, kept, truncated", [
    (PATH_MAX - 1, -errno.ENOENT, PATH_MAX - 1, False),  # the longest path the kernel takes
    (PATH_MAX, -errno.ENAMETOOLONG, PATH_MAX, False),  # refused, but fits in what an event keeps
    (PATH_MAX + 1, -errno.ENAMETOOLONG, KEPT, True),
    (3 * PATH_MAX, -errno.ENAMETOOLONG, KEPT, True),
])
def test_open_path_length_limits(collector, n, ret, kept, truncated):
    prefix = f"/tmp/kr-len-{uuid.uuid4().hex}/".encode()
    path = long_path(prefix, n)
    assert len(path) == n
    out = py("""
        import os, sys
        print(os.getpid())
        try:
            os.open(bytes.fromhex(sys.argv[1]), os.O_RDONLY)
        except OSError as e:
            print(-e.errno)
        """, path.hex()).stdout.split()
    pid, got = int(out[0]), int(out[1])
    assert got == ret
    (ev,) = settle(collector, lambda e: e["type"] == "open" and e["pid"] == pid
                   and e["path"].startswith(prefix.decode()), f"open of {n} bytes")
    assert exact(ev, "path") == path[:kept]
    assert (ev["ret"], ev["truncated"], ev["fault"]) == (ret, truncated, False)


def test_open_null_path_is_flagged_fault(collector):
    out = py("""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        print(os.getpid())
        r = libc.openat(ctypes.c_int(-100), ctypes.c_char_p(None), ctypes.c_int(os.O_RDONLY))
        print(r, ctypes.get_errno())
        """).stdout.split()
    pid, r, err = map(int, out)
    assert (r, err) == (-1, errno.EFAULT)
    (ev,) = settle(collector, lambda e: e["type"] == "open" and e["pid"] == pid and e["fault"], "NULL open")
    assert (ev["path"], ev["ret"], ev["truncated"], ev["fault"]) == ("", -errno.EFAULT, False, True)
    assert "path_b64" not in ev


def test_openat2_hostile_path_unreadable_and_short_open_how(collector, tmp_path):
    # openat2 is 437 on every architecture (the unified syscall table).
    created = bytes(tmp_path) + b"/kr\nopenat2\xff"
    out = py("""
        import ctypes, os, struct, sys
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        print(os.getpid())
        path = bytes.fromhex(sys.argv[1])
        how = struct.pack("<QQQ", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, 0)
        for p, h, size in ((path, how, 24), (path, None, 24), (None, how, 24), (path, how, 8)):
            r = libc.syscall(437, -100, p, h, size)
            print(r if r >= 0 else -ctypes.get_errno())
        """, created.hex()).stdout.split()
    pid, rets = int(out[0]), [int(r) for r in out[1:]]
    assert rets[0] >= 0 and rets[1:] == [-errno.EFAULT, -errno.EFAULT, -errno.EINVAL]
    assert os.stat(created).st_mode & 0o777 == 0o600
    evs = settle(collector, lambda e: e["type"] == "open" and e["pid"] == pid
                 and exact(e, "path") in (created, b""), "openat2", count=4)
    got = [(exact(e, "path"), e["flags"], e["mode"], e["ret"], e["truncated"], e["fault"]) for e in evs]
    assert got == [
        (created, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, rets[0], False, False),
        (created, 0, 0, -errno.EFAULT, False, True),  # NULL open_how: zeros, flagged
        (b"", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, -errno.EFAULT, False, True),  # NULL path
        # usize 8: the caller's 8 bytes (flags) are read, not the mode after them
        (created, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0, -errno.EINVAL, False, False),
    ]


# -- exec -----------------------------------------------------------------------------------------------


def test_exec_hostile_argv_is_exact(collector):
    tag = f"tag-{uuid.uuid4().hex}".encode()
    argv = [b"kr-true", tag, b"new\nline", b"bad\xff\xfe", b"lone\xc3", b'"q"\\', b"", b"ctl\x01\x1b\x7f", b""]
    child = subprocess.Popen(argv, executable="/bin/true")
    child.wait()
    (ev,) = settle(collector, lambda e: e["type"] == "exec" and e["pid"] == child.pid, "exec")
    assert exact_argv(ev) == argv
    assert "argv_b64" in ev
    assert (ev["filename"], ev["comm"], ev["truncated"], ev["fault"]) == ("/bin/true", "true", False, False)


def test_exec_empty_argv_as_the_kernel_fixes_it(collector):
    # execve(path, {NULL}, envp): the program reads its own /proc/self/cmdline (opened as stdin before the
    # exec, read after it) so the test compares the event with what the kernel made of the argv.
    out = py("""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        os.dup2(os.open("/proc/self/cmdline", os.O_RDONLY), 0)
        print(os.getpid(), flush=True)
        empty = (ctypes.c_char_p * 1)(None)
        libc.execve(b"/bin/cat", empty, empty)
        raise SystemExit(f"execve failed: errno {ctypes.get_errno()}")
        """).stdout
    pid_line, cmdline = out.split(b"\n", 1)
    pid = int(pid_line)
    assert cmdline == b"\0"  # Linux >= 5.18 gives an empty argv one empty argument (argc 1)
    evs = settle(collector, lambda e: e["type"] == "exec" and e["pid"] == pid and e["filename"] == "/bin/cat",
                 "exec with empty argv")
    assert len(evs) == 1
    assert exact_argv(evs[0]) == split_area(cmdline) == [b""]
    assert (evs[0]["comm"], evs[0]["truncated"], evs[0]["fault"]) == ("cat", False, False)


def test_exec_1000_arguments_exact(collector):
    tag = f"t{uuid.uuid4().hex}"
    argv = ["kr-true", tag] + [str(i) for i in range(998)]  # 3924 bytes with the NULs: fits in 4096
    assert len(argv) == 1000 and sum(len(a) + 1 for a in argv) <= KEPT
    child = subprocess.Popen(argv, executable="/bin/true")
    child.wait()
    (ev,) = settle(collector, lambda e: e["type"] == "exec" and e["pid"] == child.pid, "exec")
    assert ev["argv"] == argv
    assert ev["truncated"] is False


def test_exec_1000_arguments_past_the_limit_truncated(collector):
    tag = f"t{uuid.uuid4().hex}"
    argv = ["kr-true", tag] + [f"arg{i:05d}" for i in range(998)]  # ~9 KB of arguments
    child = subprocess.Popen(argv, executable="/bin/true")
    child.wait()
    (ev,) = settle(collector, lambda e: e["type"] == "exec" and e["pid"] == child.pid, "exec")
    area = b"".join(a.encode() + b"\0" for a in argv)
    assert exact_argv(ev) == split_area(area[:KEPT])
    assert ev["argv"][-1] != argv[len(ev["argv"]) - 1]  # the cut falls inside an argument here
    assert ev["truncated"] is True


def test_exec_largest_single_argument_truncated(collector):
    big = b"A" * 1000 + b"\n\xff" + b"B" * (MAX_ARG_STRLEN - 1 - 1002)  # MAX_ARG_STRLEN with its NUL
    child = subprocess.Popen([b"kr-true", big], executable="/bin/true")
    child.wait()
    (ev,) = settle(collector, lambda e: e["type"] == "exec" and e["pid"] == child.pid, "exec")
    assert exact_argv(ev) == [b"kr-true", big[:KEPT - len(b"kr-true\0")]]
    assert ev["truncated"] is True


def test_failed_execs_are_reported_with_their_errno_and_the_next_exec_too(collector, tmp_path):
    noexec = tmp_path / "noexec"
    noexec.write_bytes(b"#!/bin/sh\nexit 0\n")
    noexec.chmod(0o644)
    missing = tmp_path / "missing"
    too_long = long_path(str(tmp_path).encode() + b"/", PATH_MAX)
    tag = f"after-{uuid.uuid4().hex}"
    out = py("""
        import os, sys
        print(os.getpid())
        tries = [(sys.argv[1], ["x"]), (sys.argv[2], ["x"]), (bytes.fromhex(sys.argv[3]), ["x"]),
                 (sys.argv[4], ["x"]), ("/bin/true", ["kr-true", "A" * (1 << 20)])]
        for path, argv in tries:
            try:
                os.execv(path, argv)
            except OSError as e:
                print(e.errno, flush=True)
        os.execv("/bin/true", ["kr-true", sys.argv[5]])
        """, str(missing), str(noexec), too_long.hex(), str(tmp_path), tag).stdout.split()
    pid, errnos = int(out[0]), [int(x) for x in out[1:]]
    assert errnos == [errno.ENOENT, errno.EACCES, errno.ENAMETOOLONG, errno.EACCES, errno.E2BIG]
    settle(collector, lambda e: e["type"] == "exec" and tag in e["argv"], "the exec after the failures")
    # The child's own start (Python), the five failures with what was passed and their errno, and the exec
    # that succeeded.
    execs = of(collector, pid, "exec")
    assert [(exact(e, "filename"), e["ret"]) for e in execs] == [
        (sys.executable.encode(), 0), (str(missing).encode(), -errno.ENOENT), (str(noexec).encode(), -errno.EACCES),
        (too_long[:4096], -errno.ENAMETOOLONG), (str(tmp_path).encode(), -errno.EACCES),
        (b"/bin/true", -errno.E2BIG), (b"/bin/true", 0)]
    for e in execs[1:5]:
        assert (e["argv"], e["truncated"], e["fault"]) == (["x"], e is execs[3], False)
        assert e["exe"] == os.path.realpath(sys.executable)  # the caller's: nothing was exec'd
    # the 1 MiB argument is cut where the copy ends (4096 bytes of argument strings in all)
    big = execs[5]
    assert big["argv"][0] == "kr-true" and big["truncated"] is True
    assert len("\0".join(big["argv"])) + 1 == 4096 and set(big["argv"][1]) == {"A"}
    assert execs[6]["argv"] == ["kr-true", tag] and execs[6]["exe"] == os.path.realpath("/bin/true")


def test_exec_shebang_script_reports_argv_as_the_interpreter_sees_it(collector, tmp_path):
    script = tmp_path / "kr script.sh"
    script.write_bytes(b"#!/bin/sh -e\ncat /proc/$$/cmdline\n")
    script.chmod(0o755)
    args = [b"arg1", b"two words", b"bad\xff", b""]
    run = subprocess.run([bytes(script)] + args, capture_output=True, check=True)
    cmdline = run.stdout
    assert split_area(cmdline) == [b"/bin/sh", b"-e", bytes(script)] + args
    evs = settle(collector, lambda e: e["type"] == "exec" and e["filename"] == str(script), "script exec")
    assert len(evs) == 1
    (ev,) = evs
    assert exact_argv(ev) == split_area(cmdline)
    assert ev["comm"] == "kr script.sh"  # the script's name, not the interpreter's
    assert (ev["truncated"], ev["fault"]) == (False, False)


def test_exec_hostile_filename_and_comm_are_exact(collector, tmp_path):
    name = b"kr\nx\"\\\x01\xff" + uuid.uuid4().hex[:8].encode()
    link = os.path.join(bytes(tmp_path), name)
    os.symlink(b"/bin/true", link)
    child = subprocess.Popen([b"kr-true"], executable=link)
    child.wait()
    (ev,) = settle(collector, lambda e: e["type"] == "exec" and e["pid"] == child.pid, "exec")
    assert exact(ev, "filename") == link
    assert exact(ev, "comm") == name[:15]  # TASK_COMM_LEN - 1 bytes of the basename
    assert exact_argv(ev) == [b"kr-true"]


def test_exec_filename_of_4095_bytes_is_exact(collector, tmp_path):
    path = long_path(bytes(tmp_path) + b"/", PATH_MAX - 1)
    os.makedirs(os.path.dirname(path))
    os.symlink(b"/bin/true", path)
    child = subprocess.Popen([b"kr-true"], executable=path)
    child.wait()
    (ev,) = settle(collector, lambda e: e["type"] == "exec" and e["pid"] == child.pid, "exec")
    assert exact(ev, "filename") == path
    comm = os.path.basename(path)[:15].decode()  # TASK_COMM_LEN - 1 bytes of the basename
    assert (ev["comm"], ev["truncated"], ev["fault"]) == (comm, False, False)


def test_execveat_filename_past_path_max_is_cut_and_flagged(collector, tmp_path):
    # execveat(dirfd, relative path) names the file "/dev/fd/<dirfd>/<path>" (fs/exec.c alloc_bprm): a
    # 4090-byte relative path, which the kernel takes, gives a file name longer than PATH_MAX.
    rel = long_path(b"", 4090)
    os.makedirs(os.path.join(bytes(tmp_path), os.path.dirname(rel)))
    os.symlink(b"/bin/true", rel, dir_fd=os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY))
    tag = f"execveat-{uuid.uuid4().hex}"
    out = py("""
        import ctypes, os, sys
        libc = ctypes.CDLL(None, use_errno=True)  # glibc >= 2.34 wraps execveat
        dfd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
        print(os.getpid(), dfd, flush=True)
        argv = (ctypes.c_char_p * 3)(b"kr-true", sys.argv[3].encode(), None)
        libc.execveat(dfd, bytes.fromhex(sys.argv[2]), argv, (ctypes.c_char_p * 1)(None), 0)
        raise SystemExit(f"execveat failed: errno {ctypes.get_errno()}")
        """, str(tmp_path), rel.hex(), tag).stdout.split()
    pid, dfd = int(out[0]), int(out[1])
    (ev,) = settle(collector, lambda e: e["type"] == "exec" and e["pid"] == pid and tag in e["argv"], "execveat")
    full = f"/dev/fd/{dfd}/".encode() + rel
    assert len(full) > PATH_MAX
    assert exact(ev, "filename") == full[:PATH_MAX - 1]
    assert ev["argv"] == ["kr-true", tag]
    assert (ev["truncated"], ev["fault"]) == (True, False)


# -- connect --------------------------------------------------------------------------------------------

SIN_LOOPBACK_9 = b"\x02\x00\x00\x09\x7f\x00\x00\x01" + bytes(8)  # AF_INET 127.0.0.1:9


def test_connect_null_and_short_addresses(collector):
    out = py("""
        import ctypes, os, socket, sys
        libc = ctypes.CDLL(None, use_errno=True)
        print(os.getpid())
        sin = bytes.fromhex(sys.argv[1])
        cases = [(None, 16), (None, 0), (sin, 1), (sin, 4), (b"\\x0a\\x00" + bytes(8), 10),
                 (sin + bytes(1000), 1016), (sin + bytes(120), -1)]
        for addr, n in cases:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                r = libc.connect(s.fileno(), addr, n)
                print(-ctypes.get_errno() if r else 0)
        """, SIN_LOOPBACK_9.hex()).stdout.split()
    pid, rets = int(out[0]), [int(r) for r in out[1:]]
    e_inval = -errno.EINVAL
    assert rets == [-errno.EFAULT] + [e_inval] * 6
    evs = settle(collector, lambda e: e["type"] == "connect" and e["pid"] == pid, "connects", count=7)
    got = [(e["family"], e["daddr"], e["dport"], e["ret"], e["fault"]) for e in evs]
    assert got == [
        ("AF_UNSPEC", "", 0, -errno.EFAULT, True),  # NULL, 16: unreadable, flagged
        ("AF_UNSPEC", "", 0, e_inval, False),  # NULL, 0: nothing to read
        ("AF_UNSPEC", "", 0, e_inval, False),  # 1 byte: not even a family
        ("AF_INET", "", 0, e_inval, False),  # 4 bytes: the family, no address
        ("AF_INET6", "", 0, e_inval, False),  # 10 bytes of a 24-byte AF_INET6 address
        ("AF_INET", "127.0.0.1", 9, e_inval, False),  # 1016 > sizeof(sockaddr_storage): first 128 read
        ("AF_INET", "127.0.0.1", 9, e_inval, False),  # addrlen -1: clamped, first 128 bytes read
    ]


def test_connect_v4_mapped_and_abstract_unix(collector):
    tag = uuid.uuid4().hex.encode()
    plain = b"\0kr-abs-" + tag
    hostile = b"\0kr-abs-" + tag + b"\n\xff\0x"  # an abstract name may hold any byte, NUL included
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as v4, \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as u1, \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as u2:
        v4.bind(("127.0.0.1", 0))
        v4.listen()
        port = v4.getsockname()[1]
        u1.bind(plain)
        u1.listen()
        u2.bind(hostile)
        u2.listen()
        out = py("""
            import os, socket, sys
            print(os.getpid())
            targets = [(socket.AF_INET6, ("::ffff:127.0.0.1", int(sys.argv[1]))),
                       (socket.AF_UNIX, bytes.fromhex(sys.argv[2])), (socket.AF_UNIX, bytes.fromhex(sys.argv[3]))]
            for family, addr in targets:
                with socket.socket(family, socket.SOCK_STREAM) as s:
                    print(s.connect_ex(addr))
            """, str(port), plain.hex(), hostile.hex()).stdout.split()
    pid, rets = int(out[0]), [int(r) for r in out[1:]]
    assert rets == [0, 0, 0]
    evs = settle(collector, lambda e: e["type"] == "connect" and e["pid"] == pid, "connects", count=3)
    got = [(e["family"], exact(e, "daddr"), e["dport"], e["ret"], e["fault"]) for e in evs]
    assert got == [
        ("AF_INET6", b"::ffff:127.0.0.1", port, 0, False),
        ("AF_UNIX", b"@" + plain[1:], 0, 0, False),
        ("AF_UNIX", b"@" + hostile[1:], 0, 0, False),  # every byte up to addrlen, the NUL too
    ]
    assert "daddr_b64" in evs[2]


# -- processes and threads ------------------------------------------------------------------------------


def test_many_threads_exit_without_the_process_exiting(collector):
    marker = f"/tmp/kr-thr-{uuid.uuid4().hex}"
    out = py("""
        import os, sys, threading
        marker = sys.argv[1]
        print(os.getpid(), flush=True)
        def work(i):
            try:
                os.open(f"{marker}-{i}", os.O_RDONLY)
            except OSError:
                pass
        for batch in range(4):  # 64 threads, 16 alive at a time, each gone before the process ends
            ts = [threading.Thread(target=work, args=(batch * 16 + i,)) for i in range(16)]
            for t in ts: t.start()
            for t in ts: t.join()
        try:
            os.open(marker + "-main", os.O_RDONLY)
        except OSError:
            pass
        sys.exit(3)
        """, marker, check=False)
    assert out.returncode == 3
    pid = int(out.stdout)
    (ex,) = settle(collector, lambda e: e["type"] == "exit" and e["pid"] == pid, "process exit")
    assert (ex["exit_code"], ex["signal"]) == (3, 0)
    opens = [e for e in of(collector, pid, "open") if e["path"].startswith(marker)]
    threads = [e for e in opens if e["path"] != marker + "-main"]
    # The exit event is the group's last thread to die: Python's join() returns before the OS thread has
    # fully exited, so a worker can still be in do_exit() after the main thread's exit_group().
    assert ex["tid"] == pid or ex["tid"] in {e["tid"] for e in threads}
    assert sorted(e["path"] for e in threads) == sorted(f"{marker}-{i}" for i in range(64))
    assert all(e["tid"] != pid for e in threads)
    assert {e["entity_key"] for e in opens} == {ex["entity_key"]}  # one process, one key


def test_exec_from_a_non_leader_thread(collector):
    tag = f"thread-exec-{uuid.uuid4().hex}"
    marker = f"/tmp/kr-before-{tag}"
    out = py("""
        import os, sys, threading
        print(os.getpid(), flush=True)
        try:
            os.open(sys.argv[1], os.O_RDONLY)
        except OSError:
            pass
        def go():
            print(threading.get_native_id(), flush=True)
            os.execv("/bin/true", ["kr-true", sys.argv[2]])
        t = threading.Thread(target=go)
        t.start()
        t.join()
        """, marker, tag).stdout.split()
    pid, thread_tid = int(out[0]), int(out[1])
    assert thread_tid != pid
    (ex,) = settle(collector, lambda e: e["type"] == "exit" and e["pid"] == pid, "exit after the exec")
    (before,) = [e for e in of(collector, pid, "open") if e["path"] == marker]
    (ev,) = [e for e in of(collector, pid, "exec") if e["filename"] == "/bin/true"]
    # The kernel gives the exec'ing thread the leader's pid and start time (de_thread): the new image is
    # the same process, the same entity.
    assert (ev["pid"], ev["tid"], ev["argv"]) == (pid, pid, ["kr-true", tag])
    assert ev["entity_key"] == before["entity_key"] == ex["entity_key"]
    assert (ex["tid"], ex["exit_code"]) == (pid, 0)
    # The leader the exec replaced died without a process exit: exactly one exit, none under the thread.
    assert [e["tid"] for e in of(collector, pid, "exit")] == [pid]
    assert not [e for e in collector.events() if e["type"] == "exit" and thread_tid in (e["pid"], e["tid"])]


def test_orphan_reports_its_new_parent(collector):
    # A subreaper (in a helper process, so the test process stays as it is) forks a parent that forks a
    # child and exits; the child's events before and after carry the old and the new ppid.
    tag = uuid.uuid4().hex
    m1, m2 = f"/tmp/kr-orphan-before-{tag}", f"/tmp/kr-orphan-after-{tag}"
    out = py("""
        import ctypes, os, sys, time
        PR_SET_CHILD_SUBREAPER = 36
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise SystemExit(f"prctl: errno {ctypes.get_errno()}")
        def touch(path):
            try:
                os.open(path, os.O_RDONLY)
            except OSError:
                pass
        r, w = os.pipe()
        parent = os.fork()
        if parent == 0:
            child = os.fork()
            if child == 0:
                me_parent = os.getppid()
                touch(sys.argv[1])
                os.write(w, b"x")
                while os.getppid() == me_parent:  # until the parent is gone
                    time.sleep(0.005)
                touch(sys.argv[2])
                os._exit(0)
            os.read(r, 1)
            os.write(w, b"%d" % child)
            os._exit(0)
        os.waitpid(parent, 0)
        child = int(os.read(r, 32))  # the parent read the "x" before it wrote this
        os.waitpid(child, 0)  # the subreaper reaps the orphan
        print(os.getpid(), parent, child)
        """, m1, m2).stdout.split()
    helper, parent, child = map(int, out)
    (after,) = settle(collector, lambda e: e["type"] == "open" and e["path"] == m2, "open after reparent")
    (before,) = [e for e in collector.events() if e["type"] == "open" and e["path"] == m1]
    (ex,) = settle(collector, lambda e: e["type"] == "exit" and e["pid"] == child, "orphan's exit")
    (pex,) = settle(collector, lambda e: e["type"] == "exit" and e["pid"] == parent, "parent's exit")
    assert (before["pid"], before["ppid"]) == (child, parent)
    assert (after["pid"], after["ppid"]) == (child, helper)
    assert (ex["ppid"], pex["ppid"]) == (helper, helper)
    assert before["entity_key"] == after["entity_key"] == ex["entity_key"] != pex["entity_key"]


def test_reused_pid_gets_a_new_entity_key(collector):
    # Force reuse: after the first process is reaped, set the pid namespace's last pid to one below its
    # pid and fork; another fork on the host can take the pid first, so retry.
    tag = uuid.uuid4().hex
    out = py("""
        import os, sys
        tag = sys.argv[1]
        first = os.fork()
        if first == 0:
            os.execv("/bin/true", ["kr-true", tag + "-first"])
        os.waitpid(first, 0)
        for attempt in range(500):
            with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                f.write(str(first - 1))
            pid = os.fork()
            if pid == 0:
                if os.getpid() == first:
                    os.execv("/bin/true", ["kr-true", tag + "-second"])
                os._exit(0)
            os.waitpid(pid, 0)
            if pid == first:
                print(first)
                break
        else:
            raise SystemExit("pid never reused in 500 forks")
        """, tag).stdout
    pid = int(out)
    first = settle(collector, lambda e: e["type"] == "exec" and e["argv"] == ["kr-true", tag + "-first"], "1st")
    second = settle(collector, lambda e: e["type"] == "exec" and e["argv"] == ["kr-true", tag + "-second"], "2nd")
    (a,), (b,) = first, second
    assert a["pid"] == b["pid"] == pid
    assert a["entity_key"] != b["entity_key"]
    exits = settle(collector, lambda e: e["type"] == "exit" and e["pid"] == pid
                   and e["entity_key"] in (a["entity_key"], b["entity_key"]), "both exits", count=2)
    assert sorted(e["entity_key"] for e in exits) == sorted([a["entity_key"], b["entity_key"]])
