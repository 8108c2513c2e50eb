"""Least privilege (issue 4 item 6): once attached, the CLI collector holds no capability (CAP_BPF alone
on kernels that refuse map lookups without it), is no longer uid 0, has no_new_privs and an empty bounding
set, and still reads its rings, reads its counters and detaches everything when stopped.
"""
from __future__ import annotations

import os
import re
import stat
import subprocess
import threading
import time
import uuid

import pytest

from kestrel_raw.kernel import caps
from kestrel_raw.errors import SetupError
from kestrel_raw.maps import PerCPUArrayMap

from helpers import Cli, kernel_objects, wait_gone


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def _kernel_needs_cap_bpf_for_map_ops() -> bool:
    m = PerCPUArrayMap(8, 1, name="kr_t_probe")
    try:
        return not caps.works_without_privilege(lambda: m[0])
    finally:
        m.close()


@pytest.mark.kernel
def test_cli_drops_privileges_after_attach_and_keeps_working(tmp_path):
    expected_caps = caps.cap_mask(caps.CAP_BPF) if _kernel_needs_cap_bpf_for_map_ops() else 0
    c = Cli(tmp_path, "--events", "open,exit")
    try:
        c.wait_attached()
        status = proc_status(c.proc.pid)
        objects = kernel_objects(c.proc.pid)  # (the test is root: pidfd_getfd works on the dropped process)
        # Events still flow after the drop: the rings are read through the fds mapped before it.
        path = f"/tmp/kestrel-after-drop-{uuid.uuid4().hex}"
        subprocess.run(["/bin/cat", path], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not [e for e in c.events() if e.get("path") == path]:
            assert time.monotonic() < deadline, "no event after the privileges were dropped"
            time.sleep(0.05)
        rc, err = c.stop()
    finally:
        c.kill()
    assert int(status["CapEff"], 16) == expected_caps
    assert int(status["CapPrm"], 16) == expected_caps
    assert int(status["CapInh"], 16) == 0
    assert int(status["CapAmb"], 16) == 0
    assert int(status["CapBnd"], 16) == expected_caps
    assert status["NoNewPrivs"] == "1"
    assert status["Uid"].split() == ["65534"] * 4
    assert status["Gid"].split() == ["65534"] * 4
    assert status["Groups"].strip() == ""
    assert rc == 0, err
    assert "Traceback" not in err
    # The counters were read after the drop: the summary has every kind's counters, and its delivered
    # count is the file's line count.
    m = re.search(r"delivered\[([^\]]*)\] kernel_lost=(\d+)", err)
    delivered = sum(int(kv.split("=")[1]) for kv in m.group(1).split())
    assert delivered == len(c.events())
    assert "privileges dropped: uid=65534 gid=65534" in err
    # The output file was created before the drop, by root, for root only.
    st = os.stat(c.out)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    wait_gone(objects)  # stopping detached everything, without privilege


@pytest.mark.kernel
def test_keep_privileges_flag_keeps_them(tmp_path):
    c = Cli(tmp_path, "--events", "exit", "--keep-privileges")
    try:
        # No 'attached' line without a drop: wait for the links instead.
        deadline = time.monotonic() + 30
        while not kernel_objects(c.proc.pid)["link"]:
            assert c.proc.poll() is None and time.monotonic() < deadline, c.stderr()
            time.sleep(0.1)
        status = proc_status(c.proc.pid)
        rc, err = c.stop()
    finally:
        c.kill()
    assert status["Uid"].split()[0] == "0"
    assert int(status["CapEff"], 16) == int(proc_status(os.getpid())["CapEff"], 16)
    assert rc == 0 and "privileges dropped" not in err


def _in_child(fn) -> tuple[int, str]:
    """Run fn() in a forked child (dropping privileges is for good); returns (exit code, its message)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            msg = fn()
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            msg, code = f"{type(e).__name__}: {e}", 1
        os.write(w, str(msg).encode())
        os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        msg = f.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), msg


@pytest.mark.kernel
def test_drop_privileges_result_exactly():
    def child():
        p = caps.drop_privileges(0, 65534, 65534)
        return (p.effective, p.permitted, p.inheritable, p.bounding, p.no_new_privs, os.getresuid(),
                os.getresgid(), os.getgroups())

    code, msg = _in_child(child)
    assert code == 0, msg
    assert msg == "(0, 0, 0, 0, True, (65534, 65534, 65534), (65534, 65534, 65534), [])"


@pytest.mark.kernel
def test_drop_privileges_keeping_cap_bpf():
    def child():
        p = caps.drop_privileges(caps.cap_mask(caps.CAP_BPF), 65534, 65534)
        # An execve cannot give anything back: the bounding set holds CAP_BPF alone and no_new_privs is set.
        status = open("/proc/self/status").read()
        return p.effective, p.permitted, p.bounding, os.getuid(), "NoNewPrivs:\t1" in status

    code, msg = _in_child(child)
    assert code == 0, msg
    bpf_bit = 1 << caps.CAP_BPF
    assert msg == f"({bpf_bit}, {bpf_bit}, {bpf_bit}, 65534, True)"


@pytest.mark.kernel
def test_after_the_drop_root_files_and_new_maps_are_out_of_reach(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("x")
    os.chmod(secret, 0o600)

    def child():
        caps.drop_privileges(0, 65534, 65534)
        outcomes = []
        try:
            open(secret).read()
            outcomes.append("read")
        except PermissionError:
            outcomes.append("EACCES")
        try:
            PerCPUArrayMap(8, 1, name="kr_t_after")
            outcomes.append("map")
        except OSError:
            outcomes.append("EPERM")
        return outcomes

    code, msg = _in_child(child)
    assert code == 0, msg
    assert msg == "['EACCES', 'EPERM']"


def test_drop_refuses_with_threads():
    started, stop = threading.Event(), threading.Event()
    t = threading.Thread(target=lambda: (started.set(), stop.wait()))
    t.start()
    started.wait()
    try:
        with pytest.raises(SetupError, match=r"cannot drop privileges: the process has \d+ threads"):
            caps.drop_privileges()
    finally:
        stop.set()
        t.join()


def test_cap_names():
    assert caps.cap_names(caps.cap_mask(caps.CAP_BPF, caps.CAP_PERFMON, caps.CAP_SYS_ADMIN)) == [
        "CAP_SYS_ADMIN", "CAP_PERFMON", "CAP_BPF"]
    assert caps.cap_names(1 << 63) == ["cap_63"]
    assert caps.cap_mask() == 0
