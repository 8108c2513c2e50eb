"""The container id from cgroup paths (kestrel_raw/context/containers.py): pure tests over the path shapes the
runtimes make, on cgroup v1, v2 and hybrid hosts.  The end-to-end test with a real podman container is
tests/test_context_podman.py."""
from __future__ import annotations

import pytest

from kestrel_raw.context.containers import (
    Container, container_from_cgroup, container_from_proc_cgroup, parse_proc_cgroup, unescape_systemd, v2_path,
)

ID = "3f4b1c2d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809"
ID2 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
UID = "7c7b0f2e-6a3b-4f5e-9d0a-1b2c3d4e5f60"
UID_ = UID.replace("-", "_")   # the systemd driver's spelling of the pod UID

CASES = [
    # docker
    (f"/docker/{ID}", Container("docker", ID)),                                             # cgroupfs, v1 or v2
    (f"/system.slice/docker-{ID}.scope", Container("docker", ID)),                          # systemd driver
    (f"/user.slice/user-1000.slice/user@1000.service/user.slice/docker-{ID}.scope", Container("docker", ID)),
    (f"/docker/{ID}/docker/{ID2}", Container("docker", ID)),                                # docker in docker: outer
    # Kubernetes, cgroupfs driver: burstable, besteffort, guaranteed (no QoS level)
    (f"/kubepods/burstable/pod{UID}/{ID}", Container("cri", ID, UID)),
    (f"/kubepods/besteffort/pod{UID}/{ID}", Container("cri", ID, UID)),
    (f"/kubepods/pod{UID}/{ID}", Container("cri", ID, UID)),
    (f"/kubepods/besteffort/pod{UID}/crio-{ID}", Container("cri-o", ID, UID)),
    # Kubernetes, systemd driver: containerd, CRI-O, docker (cri-dockerd)
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope",
     Container("containerd", ID, UID)),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope",
     Container("containerd", ID, UID)),
    (f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope", Container("containerd", ID, UID)),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{ID}.scope",
     Container("cri-o", ID, UID)),
    (f"/kubepods.slice/kubepods-pod{UID_}.slice/docker-{ID}.scope", Container("docker", ID, UID)),
    # CRI-O's monitor is a host process
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{ID}.scope", None),
    (f"/system.slice/crio-conmon-{ID}.scope", None),
    # podman: systemd manager (rootful, in a pod, rootless, the payload's subgroup), cgroupfs manager, conmon
    (f"/machine.slice/libpod-{ID}.scope", Container("podman", ID)),
    (f"/machine.slice/libpod-{ID}.scope/container", Container("podman", ID)),
    (f"/machine.slice/machine-libpod_pod_{ID2}.slice/libpod-{ID}.scope", Container("podman", ID)),
    (f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope", Container("podman", ID)),
    (f"/libpod_parent/libpod-{ID}", Container("podman", ID)),
    (f"/machine.slice/libpod-conmon-{ID}.scope", None),
    (f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-conmon-{ID}.scope", None),
    ("/libpod_parent/conmon", None),
    # LXC and LXD: legacy and 4.0+ layouts, their monitors, a docker container inside (the outer one counts)
    ("/lxc/web1", Container("lxc", "web1")),
    ("/lxc/web1/init.scope", Container("lxc", "web1")),
    ("/lxc.payload.web1", Container("lxc", "web1")),
    ("/lxc.payload.web1/system.slice/ssh.service", Container("lxc", "web1")),
    (f"/lxc.payload.web1/system.slice/docker-{ID}.scope", Container("lxc", "web1")),
    ("/lxc.monitor.web1", None),
    ("/lxc.monitor/web1", None),
    # systemd-nspawn (systemd's escaping), its supervisor; libvirt's VMs are not containers, its LXC ones are
    ("/machine.slice/machine-debian\\x2dbookworm.scope", Container("systemd-nspawn", "debian-bookworm")),
    ("/machine.slice/machine-debian.scope/payload/system.slice/cron.service", Container("systemd-nspawn", "debian")),
    ("/machine.slice/machine-debian.scope/supervisor", None),
    ("/machine.slice/machine-qemu\\x2d1\\x2dvm1.scope", None),
    ("/machine.slice/machine-lxc\\x2d4242\\x2dweb.scope", Container("libvirt-lxc", "web")),
    # host processes
    ("/", None),
    ("/init.scope", None),
    ("/user.slice/user-0.slice/session-1.scope", None),
    ("/system.slice/docker.service", None),              # the docker daemon itself
    ("/system.slice/containerd.service", None),
    ("/docker", None),
    ("/kubepods.slice/kubepods-burstable.slice", None),
    (f"/kubepods/burstable/pod{UID}", None),              # the pod's own cgroup, no container
    ("/process_api/a7c2b5d391b1880d0dc6108a6b56680b", None),   # this test machine's memory cgroup: 32 hex
    (f"/system.slice/{ID}.service", None),                # a 64-hex name outside any runtime's layout
    (f"/machine.slice/docker-{ID[:63]}.scope", None),     # one hex digit short
    (f"/machine.slice/docker-{ID.upper()}.scope", None),  # the runtimes write lower-case hex
]


@pytest.mark.parametrize("path,expected", CASES, ids=[c[0][-60:] for c in CASES])
def test_container_from_cgroup_path(path, expected):
    assert container_from_cgroup(path) == expected


def test_short_id_is_the_first_twelve_hex_digits_and_a_name_stays_whole():
    assert Container("docker", ID).short_id == ID[:12]
    assert Container("lxc", "web1-with-a-long-name").short_id == "web1-with-a-long-name"


def test_unescape_systemd():
    assert unescape_systemd("qemu\\x2d1\\x2dvm\\x5cx") == "qemu-1-vm\\x"


# /proc/PID/cgroup of the container process of this project's test machine (hybrid: v1 controllers + v2),
# podman 4.3 with the cgroupfs manager and runc, as tests/test_context_podman.py runs it.
PODMAN_HYBRID = "\n".join(
    [f"{n}:{c}:/libpod_parent/libpod-{ID}" for n, c in
     [(9, "name=systemd"), (8, "pids"), (7, "blkio"), (6, "freezer"), (5, "devices"), (4, "memory"),
      (3, "cpuset"), (2, "cpuacct"), (1, "cpu")]] + [f"0::/libpod_parent/libpod-{ID}"]) + "\n"
# The same machine's own shell: no container.
HOST_HYBRID = ("9:name=systemd:/\n8:pids:/\n7:blkio:/\n6:freezer:/\n5:devices:/\n"
               "4:memory:/process_api/a7c2b5d391b1880d0dc6108a6b56680b\n3:cpuset:/\n2:cpuacct:/\n1:cpu:/\n0::/\n")
# A hybrid systemd host where docker (cgroupfs driver) placed the container in the v1 controllers only.
DOCKER_V1_ONLY = (f"12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n5:cpu,cpuacct:/docker/{ID}\n"
                  f"1:name=systemd:/docker/{ID}\n0::/system.slice/containerd.service\n")
# A pure v2 host: one line.
DOCKER_V2 = f"0::/system.slice/docker-{ID}.scope\n"
# A v1-only host (no v2 line at all).
LXC_V1 = "4:memory:/lxc/web1\n3:cpu,cpuacct:/lxc/web1\n1:name=systemd:/lxc/web1/init.scope\n"


@pytest.mark.parametrize("text,expected,v2", [
    (PODMAN_HYBRID, Container("podman", ID), f"/libpod_parent/libpod-{ID}"),
    (HOST_HYBRID, None, "/"),
    (DOCKER_V1_ONLY, Container("docker", ID), "/system.slice/containerd.service"),
    (DOCKER_V2, Container("docker", ID), f"/system.slice/docker-{ID}.scope"),
    (LXC_V1, Container("lxc", "web1"), None),
], ids=["podman-hybrid", "host-hybrid", "docker-v1-only", "docker-v2", "lxc-v1"])
def test_container_from_proc_cgroup(text, expected, v2):
    assert container_from_proc_cgroup(text) == expected
    assert v2_path(text) == v2


def test_parse_proc_cgroup_keeps_colons_in_paths():
    assert parse_proc_cgroup("5:cpu,cpuacct:/a:b\n0::/x:y\n") == [(5, "cpu,cpuacct", "/a:b"), (0, "", "/x:y")]

