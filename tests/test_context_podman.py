"""A real container, end to end: Debian's podman runs a container made from a local root file system, and the
container id our parser takes from the container process's /proc/PID/cgroup is the one podman reports; the
name and image come back through podman's docker-compatible API service, started in the test on a socket of
its own.

No registry is reachable: the image is ``podman import`` of a tarball of a one-binary root file system
(Debian's static busybox).  What podman needs on this machine (hybrid cgroups, a PID 1 that is not systemd,
no CAP_SYS_RESOURCE), each set on the command line so that nothing outside the test's directory is used:

- ``--cgroup-manager cgroupfs``: there is no systemd to ask for scopes; the container lands in
  /libpod_parent/libpod-<id> of every hierarchy (v1 controllers and v2).
- ``--runtime runc``: Debian 12's crun (1.8) refuses hybrid hosts whose v2 hierarchy has a controller
  ("cgroups in hybrid mode not supported, drop all controllers from cgroupv2"; here hugetlb); runc accepts.
- ``--storage-driver vfs`` (plain copies: no overlay mount needed), private ``--root``, ``--runroot`` and
  ``--tmpdir``, ``--events-backend file`` (no journald), ``--network none`` (no CNI set-up).
- ``--ulimit nofile=...,nproc=...`` no higher than this process's own soft limits: by default podman asks the
  runtime for its own (raised) limits, and setting them failed here with EPERM ("setrlimit RLIMIT_NOFILE:
  Operation not permitted"), the process lacking CAP_SYS_RESOURCE.

Needs root and the packages podman, runc and busybox-static (``apt-get install podman runc busybox-static``).
Marked ``kernel`` (root, real cgroups) and ``container`` (the CI guests, which have no podman, leave it out).
"""
from __future__ import annotations

import os
import resource
import shutil
import socket
import struct
import subprocess
import tarfile
import time

import pytest

from kestrel_raw.context.cgroups import CgroupPaths, read_cgroup2_mount
from kestrel_raw.context.containerinfo import ContainerInfoCache
from kestrel_raw.context.containers import Container, container_from_cgroup, read_container, v2_path

pytestmark = [pytest.mark.kernel, pytest.mark.container]

BUSYBOX = "/bin/busybox"
PACKAGES = "apt-get install podman runc busybox-static"


def _static_elf(path: str) -> bool:
    """Whether ``path`` is an ELF executable with no program interpreter (statically linked)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:          # ELFCLASS64
            return False
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            if struct.unpack("<I", f.read(4))[0] == 3:     # PT_INTERP
                return False
    return True


def _missing() -> list[str]:
    missing = [tool for tool in ("podman", "runc") if shutil.which(tool) is None]
    if not (os.path.exists(BUSYBOX) and _static_elf(BUSYBOX)):
        missing.append("a static busybox at /bin/busybox (busybox-static)")
    return missing


class Podman:
    def __init__(self, base: str) -> None:
        self.base = base
        self.argv = ["podman", "--root", f"{base}/storage", "--runroot", f"{base}/run", "--tmpdir", f"{base}/tmp",
                     "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file",
                     "--runtime", "runc", "--log-level", "error"]

    def __call__(self, *args: str, timeout: float = 120) -> str:
        r = subprocess.run([*self.argv, *args], capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, f"podman {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}"
        return r.stdout.strip()


def _tiny_rootfs_tar(where) -> str:
    root = where / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in ("sh", "sleep", "cat"):
        os.symlink("busybox", root / "bin" / applet)
    tar = where / "rootfs.tar"
    with tarfile.open(tar, "w") as t:
        t.add(root, arcname=".")
    return str(tar)


@pytest.fixture(scope="module")
def container(tmp_path_factory):
    missing = _missing()
    if missing:
        message = f"the container test needs {', '.join(missing)}: {PACKAGES}"
        if os.environ.get("KESTREL_REQUIRE_KERNEL") == "1":
            pytest.fail(message)
        pytest.skip(message)
    where = tmp_path_factory.mktemp("podman")
    podman = Podman(str(where))
    tag = f"localhost/kr-context-test:{os.getpid()}"
    name = f"kr-context-{os.getpid()}"
    cgroup_roots = [m for m in _cgroup_mounts() if not os.path.exists(f"{m}/libpod_parent")]
    try:
        podman("import", _tiny_rootfs_tar(where), tag)
        nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 1024)
        nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[0], 4096)
        cid = podman("run", "-d", "--name", name, "--network", "none", "--ulimit", f"nofile={nofile}:{nofile}",
                     "--ulimit", f"nproc={nproc}:{nproc}", tag, "/bin/sleep", "600")
        pid = int(podman("inspect", "--format", "{{.State.Pid}}", name))
        image_id = podman("inspect", "--format", "{{.Image}}", name)
        image_name = podman("inspect", "--format", "{{.ImageName}}", name)
        yield dict(podman=podman, id=cid, pid=pid, name=name, image=image_name, image_id=image_id, where=where)
    finally:
        subprocess.run([*podman.argv, "rm", "-f", "-t", "0", name], capture_output=True, timeout=60)
        subprocess.run([*podman.argv, "rmi", "-f", tag], capture_output=True, timeout=60)
        for m in cgroup_roots:   # what podman's cgroupfs manager left behind, where the test made it
            for d in (f"{m}/libpod_parent/conmon", f"{m}/libpod_parent"):
                try:
                    os.rmdir(d)
                except OSError:
                    pass
        shutil.rmtree(where, ignore_errors=True)


def _cgroup_mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if " - cgroup" in line]


def test_container_id_from_the_process_cgroup_is_podmans(container):
    assert len(container["id"]) == 64
    assert read_container(container["pid"]) == Container("podman", container["id"])
    # The path the kernel's v2 cgroup id leads to names the same container.
    with open(f"/proc/{container['pid']}/cgroup") as f:
        path = v2_path(f.read())
    assert path == f"/libpod_parent/libpod-{container['id']}"
    paths = CgroupPaths(read_cgroup2_mount(), rescan_interval=0)
    cgroup_id = paths.id_of(path)
    assert container_from_cgroup(paths.path(cgroup_id)) == Container("podman", container["id"])
    assert paths.container(cgroup_id) == Container("podman", container["id"])
    # conmon, podman's monitor of the container, is a host process
    conmon = int(open(f"/proc/{container['pid']}/stat").read().rsplit(")", 1)[1].split()[1])
    assert open(f"/proc/{conmon}/comm").read().strip() == "conmon"
    assert read_container(conmon) is None


def _wait_for_socket(path: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"podman system service exited: {proc.stderr.read()}"
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
                return
        except (FileNotFoundError, ConnectionRefusedError):
            time.sleep(0.05)
    raise TimeoutError(f"podman system service did not listen on {path} in {timeout}s")


def test_name_and_image_through_the_api_socket(container):
    sock = str(container["where"] / "api.sock")
    service = subprocess.Popen([*container["podman"].argv, "system", "service", "--time", "0", f"unix://{sock}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_socket(sock, service)
        with ContainerInfoCache([str(container["where"] / "absent.sock"), sock], timeout=10) as cache:
            assert cache.get(container["id"]) is None           # first sight: looked up in the background
            assert cache.wait_idle(30)
            info = cache.get(container["id"])
        assert info is not None, cache.last_error
        assert (info.id, info.name, info.image, info.socket) == (
            container["id"], container["name"], container["image"], sock)
        assert info.image_id == "sha256:" + container["image_id"]
    finally:
        service.terminate()
        service.wait(timeout=30)


def test_the_container_s_events_carry_its_id_name_and_image(container, tmp_path):
    """The collector as the CLI runs it (privileges dropped once attached: the API socket, root's, is reached
    through the connection broker it forked before): a command run in the container has the container's id
    on every event, and its name and image once the runtime's API answered (looked up off the event path:
    the first events may come before the answer)."""
    from helpers import Cli

    sock = str(container["where"] / "api-events.sock")
    service = subprocess.Popen([*container["podman"].argv, "system", "service", "--time", "0", f"unix://{sock}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    c = None
    try:
        _wait_for_socket(sock, service)
        c = Cli(tmp_path, "--events", "exec,open", "--container-socket", sock, name="podman")
        c.wait_attached(timeout=60)
        assert "privileges dropped" in c.stderr()
        marker = f"/nonexistent-kestrel-podman-{os.getpid()}"
        deadline = time.monotonic() + 60
        named = []
        while not named and time.monotonic() < deadline:
            # cat fails (no such file): podman exec says so, which is what the test wants
            subprocess.run([*container["podman"].argv, "exec", container["name"], "/bin/cat", marker],
                           capture_output=True, timeout=60)
            time.sleep(0.3)
            named = [e for e in c.events() if e["type"] == "open" and e["path"] == marker
                     and e["container_name"] is not None]
        ours = [e for e in c.events() if e["type"] == "open" and e["path"] == marker]
        assert named, f"no event of the container named in 60 s: {ours[-1:]}; {c.stderr()}"
        assert {(e["container_id"], e["cgroup"]) for e in ours} == {
            (container["id"], f"/libpod_parent/libpod-{container['id']}")}
        ev = named[0]
        assert (ev["container_name"], ev["container_image"], ev["exe"], ev["comm"]) == (
            container["name"], container["image"], "/bin/busybox", "cat")
        # the container's own pid namespace and mount namespace, not the host's
        assert ev["pidns"] == os.stat(f"/proc/{container['pid']}/ns/pid").st_ino != os.stat("/proc/self/ns/pid").st_ino
        assert ev["mntns"] == os.stat(f"/proc/{container['pid']}/ns/mnt").st_ino
        # the exec that started it has them too (once named)
        execs = [e for e in c.events() if e["type"] == "exec" and e["pid"] == ev["pid"]]
        assert execs and execs[0]["container_id"] == container["id"]
    finally:
        if c is not None:
            c.stop()
        service.terminate()
        service.wait(timeout=30)
