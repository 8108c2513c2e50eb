"""Events tell what the kernel did, not what user memory said afterwards (issue 12), on the real kernel.

Each workload runs in a child process (Python with ctypes, so that the tests also run in the qemu guests,
which have no compiler); the collector is the CLI, its JSON lines read back.
"""
from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import textwrap
import uuid

import pytest

from helpers import Collector

# openat(2) by architecture (arch/x86/entry/syscalls/syscall_64.tbl; include/uapi/asm-generic/unistd.h)
SYS_OPENAT = {"x86_64": 257, "aarch64": 56}[os.uname().machine]
O_CREAT, O_WRONLY = os.O_CREAT, os.O_WRONLY
RESOLVE_NO_SYMLINKS = 0x04  # include/uapi/linux/openat2.h


@pytest.fixture
def collector(tmp_path):
    c = Collector(tmp_path)
    yield c
    c.stop()


def run_child(code: str, *args: str, timeout: float = 60) -> tuple[int, list[str]]:
    """Run ``code`` in a child Python; it prints its pid on the first line.  Returns (pid, the other lines)."""
    prelude = "import os, sys, ctypes, ctypes.util, struct, socket, threading, time\nprint(os.getpid(), flush=True)\n"
    out = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code), *args], capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    first, *rest = out.stdout.splitlines()
    return int(first), rest


@pytest.mark.kernel
def test_a_rewritten_connect_address_reports_where_the_socket_went(collector):
    # A listener whose accept queue is full drops the next SYN, so that connect blocks (until SO_SNDTIMEO,
    # then EINPROGRESS, the socket in SYN_SENT).  While it waits, another thread of the caller rewrites the
    # sockaddr to a forged address: the event must name the socket's real destination and say toctou.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)  # room for one established connection, never accepted
        port = listener.getsockname()[1]
        fillers = [socket.create_connection(("127.0.0.1", port), timeout=5)]
        try:
            pid, (result,) = run_child("""
                libc = ctypes.CDLL(None, use_errno=True)
                port = int(sys.argv[1])
                real = struct.pack("<H", socket.AF_INET) + struct.pack(">H", port) + socket.inet_aton("127.0.0.1")
                forged = struct.pack("<H", socket.AF_INET) + struct.pack(">H", 4444) + socket.inet_aton("203.0.113.77")
                buf = ctypes.create_string_buffer(real + bytes(8), 16)
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 1, 0))
                def rewrite():
                    time.sleep(0.3)
                    ctypes.memmove(buf, forged + bytes(8), 16)
                t = threading.Thread(target=rewrite)
                t.start()
                r = libc.connect(s.fileno(), buf, 16)
                print(r, ctypes.get_errno())
                t.join()
                """, str(port))
        finally:
            for f in fillers:
                f.close()
    assert result.split()[0] == "-1"  # timed out in SYN_SENT (EINPROGRESS)
    (ev,) = collector.wait_for(lambda e: e["type"] == "connect" and e["pid"] == pid and e["family"] != "AF_UNIX",
                               "the raced connect")
    assert (ev["family"], ev["daddr"], ev["dport"], ev["ret"], ev["toctou"]) == (
        "AF_INET", "127.0.0.1", port, -115, True)


@pytest.mark.kernel
def test_a_flipping_open_path_names_the_file_opened(collector, tmp_path):
    # One thread flips the path buffer between a file that exists and one that does not while another opens
    # it: every successful open's resolved_path is the file opened; the path of an unflagged event agrees
    # with its result; and the flag stays the exception.
    d = tmp_path / "flip"
    d.mkdir()
    exists, missing = d / "exists.txt", d / "absent.txt"
    exists.write_text("x")
    n = 3000
    pid, (counts,) = run_child("""
        libc = ctypes.CDLL(None, use_errno=True)
        a, b, n = sys.argv[1].encode() + b"\\0", sys.argv[2].encode() + b"\\0", int(sys.argv[3])
        buf = ctypes.create_string_buffer(a, len(a))
        stop = False
        def flip():
            while not stop:
                ctypes.memmove(buf, b, len(b))
                ctypes.memmove(buf, a, len(a))
        sys.setswitchinterval(1e-6)
        t = threading.Thread(target=flip)
        t.start()
        ok = 0
        for _ in range(n):
            fd = libc.openat(-100, buf, os.O_RDONLY)
            if fd >= 0:
                ok += 1
                os.close(fd)
        stop = True
        t.join()
        print(ok)
        """, str(exists), str(missing), str(n))
    opens = collector.wait_for(lambda e: e["type"] == "open" and e["pid"] == pid and
                               e["path"] in (str(exists), str(missing)), "the flipped opens", count=n)
    assert len(opens) == n
    assert sum(e["ret"] >= 0 for e in opens) == int(counts)
    for e in opens:
        if e["ret"] >= 0:
            assert e["resolved_path"] == str(exists), e
    flagged = sum(e["toctou"] for e in opens)
    # An unflagged event whose path contradicts its result.  For a successful open that is not a wrong
    # answer: resolved_path (checked above) is the file the kernel opened, and path is documented as the
    # entry copy (README, "What the kernel did").  For a failed open, path is all there is.
    wrong_ok = [e for e in opens if not e["toctou"] and e["ret"] >= 0 and e["path"] != str(exists)]
    wrong_failed = [e for e in opens if not e["toctou"] and e["ret"] < 0 and e["path"] == str(exists)]
    print(f"unflagged and contradicting their result: {len(wrong_ok)} successful, {len(wrong_failed)} failed "
          f"opens of {n}; {flagged} flagged")
    # The entry copy is made a little before the kernel's own (getname() runs after the sys_enter
    # tracepoint), and a flip inside that window is caught only if the exit read differs too.  Measured with
    # this flipper (failed opens): 0 in 3000 on this host; under software emulation, where that window is
    # tens of times longer, 1 in 3000 on Debian 6.12 and 14 to 31 in 3000 on Debian 6.1.  A failed open cannot
    # be checked against anything in the kernel without a kprobe or fentry.  The bound is 3%: an entry copy
    # that did not work would leave about half of the failed opens wrong.
    assert len(wrong_failed) <= n * 3 // 100, (f"{len(wrong_failed)} of {n} unflagged failed opens name the file that "
                                           f"exists: {wrong_failed[:3]}")
    assert flagged < n // 2, f"{flagged} of {n} flagged"


@pytest.mark.kernel
def test_open_flags_upper_bits_and_an_odd_mode_are_reported_as_the_kernel_uses_them(collector, tmp_path):
    path = tmp_path / f"odd-{uuid.uuid4().hex}"
    pid, _ = run_child(f"""
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        p = sys.argv[1].encode()
        # the flags register with garbage in its upper half: openat's int flags ignores it
        fd = libc.syscall(ctypes.c_long({SYS_OPENAT}), ctypes.c_long(-100), ctypes.c_char_p(b"/"),
                          ctypes.c_long(0xFFFFFFFF00000000 | os.O_RDONLY), ctypes.c_long(0))
        os.close(fd)
        # a mode register of 0xABCD01A4 with O_CREAT: the kernel takes mode & 07777 = 0644
        fd = libc.syscall(ctypes.c_long({SYS_OPENAT}), ctypes.c_long(-100), ctypes.c_char_p(p),
                          ctypes.c_long(os.O_CREAT | os.O_WRONLY), ctypes.c_long(0xABCD01A4))
        os.close(fd)
        """, str(path))
    (root,) = collector.wait_for(lambda e: e["type"] == "open" and e["pid"] == pid and e["path"] == "/", "open /")
    assert (root["flags"], root["mode"], root["ret"] >= 0, root["resolved_path"]) == (os.O_RDONLY, 0, True, "/")
    (created,) = collector.wait_for(lambda e: e["type"] == "open" and e["pid"] == pid and e["path"] == str(path),
                                    "the created file")
    assert (created["flags"], created["mode"], created["resolved_path"]) == (O_CREAT | O_WRONLY, 0o644, str(path))
    assert path.stat().st_mode & 0o7777 == 0o644 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.kernel
def test_openat2_reports_its_syscall_and_resolve_flags(collector, tmp_path):
    target = tmp_path / "t"
    target.write_text("t")
    link = tmp_path / "l"
    link.symlink_to(target)
    pid, _ = run_child(f"""
        sys.path.insert(0, {os.getcwd()!r})
        from kestrel_raw.kernel import syscall
        how = struct.pack("<QQQ", os.O_RDONLY, 0, {RESOLVE_NO_SYMLINKS})
        os.close(syscall.openat2(-100, sys.argv[1].encode(), how))
        try:
            syscall.openat2(-100, sys.argv[2].encode(), how)
        except OSError as e:
            print(e.errno)
        """, str(target), str(link))
    evs = collector.wait_for(lambda e: e["type"] == "open" and e["pid"] == pid and e["syscall"] == "openat2",
                             "the openat2 calls", count=2)
    by_path = {e["path"]: e for e in evs}
    assert (by_path[str(target)]["resolve"], by_path[str(target)]["resolved_path"]) == (RESOLVE_NO_SYMLINKS,
                                                                                         str(target))
    assert by_path[str(link)]["resolve"] == RESOLVE_NO_SYMLINKS
    assert by_path[str(link)]["ret"] == -40  # ELOOP: a symlink on the way, refused
    assert by_path[str(link)]["resolved_path"] is None


@pytest.fixture
def core_pattern(tmp_path):
    """Cores written to tmp_path while the test runs; the previous pattern restored after."""
    path = "/proc/sys/kernel/core_pattern"
    with open(path) as f:
        old = f.read()
    with open(path, "w") as f:
        f.write(str(tmp_path / "core.%p"))
    yield tmp_path
    with open(path, "w") as f:
        f.write(old)


@pytest.mark.kernel
@pytest.mark.parametrize("core_limit, dumped", [(resource.RLIM_INFINITY, True), (0, False)])
def test_an_abort_says_whether_it_dumped_core(collector, core_pattern, core_limit, dumped):
    child = subprocess.Popen([sys.executable, "-c", "import os; os.abort()"],
                             preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (core_limit, core_limit)))
    assert child.wait(timeout=30) == -signal.SIGABRT
    (ev,) = collector.wait_for(lambda e: e["type"] == "exit" and e["pid"] == child.pid, "the abort")
    assert (ev["signal"], ev["core_dumped"]) == (signal.SIGABRT, dumped)
    assert (core_pattern / f"core.{child.pid}").exists() == dumped
