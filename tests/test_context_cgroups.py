"""cgroup v2 mount discovery and id <-> path resolution (kestrel_raw/context/cgroups.py).

Pure tests over mountinfo texts and over a directory tree standing in for the hierarchy; kernel tests on this
host's real v2 hierarchy, where the id is also read by a BPF program (bpf_get_current_cgroup_id) in a
process moved into a cgroup the test makes: the resolver's ids are the kernel's.
"""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import time

import pytest

from kestrel_raw.context.cgroups import CgroupPaths, Mount, cgroup2_mounts, find_cgroup2_mount, read_cgroup2_mount
from kestrel_raw.context.containers import Container

# This project's test machine: v1 controllers under a tmpfs at /sys/fs/cgroup, cgroup2 at .../unified.
HYBRID = """\
22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 22 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
# Debian 12 with systemd: pure v2 at /sys/fs/cgroup (optional fields before the separator).
PURE_V2 = """\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
29 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
"""
V1_ONLY = """\
31 22 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
"""
# A container's view: a bind of a subtree elsewhere, and the whole hierarchy at a path with a space.
ODD = """\
50 40 0:38 /machine.slice/x.scope /sys/fs/cgroup/sub rw - cgroup2 cgroup2 rw
51 40 0:38 / /mnt/my\\040cgroups rw - cgroup2 cgroup2 rw
"""


def test_mounts_hybrid_pure_v1_only_and_odd():
    assert find_cgroup2_mount(HYBRID) == Mount("/sys/fs/cgroup/unified", "/")
    assert find_cgroup2_mount(PURE_V2) == Mount("/sys/fs/cgroup", "/")
    assert find_cgroup2_mount(V1_ONLY) is None
    assert cgroup2_mounts(ODD) == [Mount("/sys/fs/cgroup/sub", "/machine.slice/x.scope"),
                                   Mount("/mnt/my cgroups", "/")]
    assert find_cgroup2_mount(ODD) == Mount("/mnt/my cgroups", "/")   # the whole hierarchy over a subtree


def _tree(root, *dirs):
    for d in dirs:
        (root / d.lstrip("/")).mkdir(parents=True)
    return {d: os.stat(root / d.lstrip("/")).st_ino for d in dirs}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_paths_from_a_walk_and_ids_from_stat(tmp_path):
    ids = _tree(tmp_path, "/a", "/a/b", "/c")
    (tmp_path / "a" / "cgroup.procs").write_text("")    # files are not cgroups
    paths = CgroupPaths(str(tmp_path), clock=Clock())
    root = os.stat(tmp_path).st_ino
    assert paths.path(root) == "/"
    assert {paths.path(i): p for p, i in ids.items()} == {p: p for p in ids}
    assert paths.id_of("/a/b") == ids["/a/b"] and paths.id_of("/") == root
    assert len(paths) == 4 and paths.walks == 1
    with pytest.raises(FileNotFoundError):
        paths.id_of("/nope")
    with pytest.raises(ValueError, match="starts with '/'"):
        paths.id_of("a")


def test_an_unknown_id_walks_again_at_most_once_per_interval(tmp_path):
    clock = Clock()
    paths = CgroupPaths(str(tmp_path), rescan_interval=0.5, clock=clock)
    paths.refresh()
    new = _tree(tmp_path, "/new")["/new"]
    clock.now += 0.1
    assert paths.path(new) is None and paths.walks == 1       # too soon after the last walk
    assert paths.path(12345) is None and paths.walks == 1
    clock.now += 0.5
    assert paths.path(new) == "/new" and paths.walks == 2     # a miss after the interval walks again
    assert paths.path(new) == "/new" and paths.walks == 2     # then it is cached
    os.rmdir(tmp_path / "new")
    clock.now += 1
    assert paths.path(12345) is None and paths.walks == 3
    assert paths.path(new) is None                            # the walk dropped the removed cgroup


def test_container_of_a_cgroup_id(tmp_path):
    cid = "ab" * 32
    ids = _tree(tmp_path, "/machine.slice", f"/machine.slice/libpod-{cid}.scope",
                f"/machine.slice/libpod-{cid}.scope/container", "/system.slice")
    paths = CgroupPaths(str(tmp_path), clock=Clock())
    assert paths.container(ids[f"/machine.slice/libpod-{cid}.scope/container"]) == Container("podman", cid)
    assert paths.container(ids[f"/machine.slice/libpod-{cid}.scope"]) == Container("podman", cid)
    assert paths.container(ids["/system.slice"]) is None
    assert paths.container(999_999_999) is None


def test_the_walk_is_bounded_breadth_first(tmp_path):
    ids = _tree(tmp_path, "/a", "/b", "/a/deep", "/a/deep/deeper")
    paths = CgroupPaths(str(tmp_path), max_entries=3, clock=Clock())
    paths.refresh()
    assert len(paths) == 3 and paths.truncated
    assert paths.path(ids["/a"]) == "/a" and paths.path(ids["/b"]) == "/b"   # the shallow ones are kept
    assert paths.path(ids["/a/deep"]) is None


# --- the real hierarchy --------------------------------------------------------------------------------------

def _cgroup_id_program(target_tgid: int, out):
    """A sys_enter program that stores bpf_get_current_cgroup_id() of ``target_tgid``'s syscalls in ``out``."""
    from kestrel_raw.asm import (BPF_ADD, BPF_DW, BPF_JEQ, BPF_JNE, BPF_RSH, R0, R1, R2, R6, R10, alu64_imm,
                                 call, exit_insn, jmp_imm, label, ld_map_fd, mov64_imm, mov64_reg, st_mem, stx_mem)
    return [
        call("get_current_pid_tgid"),
        alu64_imm(BPF_RSH, R0, 32),
        jmp_imm(BPF_JNE, R0, target_tgid, "out"),
        call("get_current_cgroup_id"),
        mov64_reg(R6, R0),
        st_mem(BPF_DW, R10, -8, 0),
        ld_map_fd(R1, "out"),
        mov64_reg(R2, R10),
        alu64_imm(BPF_ADD, R2, -8),
        call("map_lookup_elem"),
        jmp_imm(BPF_JEQ, R0, 0, "out"),
        stx_mem(BPF_DW, R0, R6, 0),
        label("out"),
        mov64_imm(R0, 0),
        exit_insn(),
    ]


CHILD = """
import os, sys, time
with open(sys.argv[1] + "/cgroup.procs", "w") as f:
    f.write(str(os.getpid()))
print("moved", flush=True)
while True:
    os.getppid()
    time.sleep(0.01)
"""


@pytest.mark.kernel
def test_a_new_cgroup_id_and_path_match_the_kernel():
    from kestrel_raw.kernel.attach import attach_raw_tracepoint
    from kestrel_raw.kernel.prog import Program
    from kestrel_raw.kernel.uapi import BPF_PROG_TYPE_RAW_TRACEPOINT
    from kestrel_raw.maps.array import ArrayMap

    mount = read_cgroup2_mount()
    assert mount is not None, "this host has no cgroup2 mount"
    paths = CgroupPaths(mount, rescan_interval=0)     # every miss walks again: the test makes cgroups
    paths.refresh()
    rel = f"/kr-test-cgroup-{os.getpid()}"
    where = mount.mount_point + rel
    os.mkdir(where)
    child = None
    try:
        cgid = paths.id_of(rel)
        assert cgid == os.stat(where).st_ino
        assert paths.path(cgid) == rel                  # made after the first walk: found by walking again
        child = subprocess.Popen([sys.executable, "-c", CHILD, where], stdout=subprocess.PIPE, text=True)
        with ArrayMap(8, 1, name="kr_cgid") as out, \
                Program(_cgroup_id_program(child.pid, out), maps={"out": out},
                        prog_type=BPF_PROG_TYPE_RAW_TRACEPOINT, name="kr_cgid") as prog, \
                attach_raw_tracepoint(prog, "sys_enter"):
            assert child.stdout.readline() == "moved\n"
            with open(f"/proc/{child.pid}/cgroup") as f:
                assert f"0::{rel}\n" in f.read()
            deadline = time.monotonic() + 5
            seen = 0
            while time.monotonic() < deadline and seen != cgid:
                time.sleep(0.02)
                seen = struct.unpack("<Q", out[0])[0]
        assert seen == cgid, f"the kernel's cgroup id {seen} is not the directory's inode {cgid}"
        assert paths.path(seen) == rel
    finally:
        if child is not None:
            child.kill()
            child.wait()
        os.rmdir(where)
    assert paths.path(cgid) == rel      # still cached: ids are never reused, late events still name it
    paths.refresh()
    assert paths.path(cgid) is None     # the next walk drops it


@pytest.mark.kernel
def test_the_root_cgroup_is_id_1_and_every_cgroup_resolves():
    paths = CgroupPaths()
    paths.refresh()
    assert paths.id_of("/") == 1 and paths.path(1) == "/"   # kernfs numbers its root node 1
    for path in list(paths._by_id.values())[:200]:
        try:
            assert paths.path(paths.id_of(path)) == path
        except FileNotFoundError:
            pass   # removed since the walk (other tests, containers)
