"""The container a process runs in, from its cgroup path.  Pure.

Container runtimes put each container's processes in a cgroup whose path names the container.  The shapes
recognised (the same on cgroup v1 controllers, on the v2 hierarchy, and on hybrid hosts, which carry both in
/proc/PID/cgroup; a path is relative to the hierarchy's root)::

    docker       /docker/<64 hex>                                    (cgroupfs driver)
                 /system.slice/docker-<64 hex>.scope                 (systemd driver; rootless: under user@UID.service)
    kubernetes   /kubepods/[burstable|besteffort/]pod<uid>/<64 hex>  (cgroupfs driver: runtime "cri", the path
                                                                      does not say whether containerd or docker)
                 /kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice/<scope>
                 /kubepods.slice/kubepods-pod<uid>.slice/<scope>     (guaranteed QoS), where <scope> is
                 cri-containerd-<64 hex>.scope (containerd), crio-<64 hex>.scope (CRI-O),
                 docker-<64 hex>.scope (docker)
    CRI-O        crio-<64 hex>[.scope]    (crio-conmon-<id>.scope is its monitor, a host process: None)
    podman       /machine.slice/libpod-<64 hex>.scope[/container]    (systemd manager; in a pod, under
                 machine-libpod_pod_<pod id>.slice; rootless: under user@UID.service)
                 /libpod_parent/libpod-<64 hex>                      (cgroupfs manager)
                 libpod-conmon-<64 hex>.scope, /libpod_parent/conmon: its monitor, a host process: None
    LXC / LXD    /lxc/<name>, /lxc.payload.<name>   (lxc.monitor.<name>, /lxc.monitor/<name>: the monitor: None)
    nspawn       /machine.slice/machine-<name>.scope  (name in systemd's escaping: \\x2d is "-"); its
                 "supervisor" child cgroup holds systemd-nspawn itself, a host process: None.
                 machine-qemu\\x2d... scopes are libvirt's virtual machines, not containers: None;
                 machine-lxc\\x2d<n>\\x2d<name>.scope are libvirt's LXC containers (runtime "libvirt-lxc").

The first match from the root wins: a container inside a container (docker in LXC) is reported as the
outer one, the one the host knows.  A process outside containers gives None.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

DOCKER, CONTAINERD, CRI, CRIO, PODMAN, LXC, NSPAWN, LIBVIRT_LXC = (
    "docker", "containerd", "cri", "cri-o", "podman", "lxc", "systemd-nspawn", "libvirt-lxc")

_ID = r"([0-9a-f]{64})"
# A leaf component that names a container by its 64-hex id, and the runtime it says.
_SCOPES = [
    (re.compile(rf"docker-{_ID}\.scope"), DOCKER),
    (re.compile(rf"cri-containerd-{_ID}\.scope"), CONTAINERD),
    (re.compile(rf"crio-{_ID}(?:\.scope)?"), CRIO),
    (re.compile(rf"libpod-{_ID}(?:\.scope)?"), PODMAN),
]
_BARE_ID = re.compile(_ID)
# Components of the runtimes' own monitors, which run on the host side of the container.
_MONITOR = re.compile(r"(?:crio-conmon-|libpod-conmon-)[0-9a-f]{64}(?:\.scope)?|lxc\.monitor(?:\..+)?")
_KUBE_POD = re.compile(r"pod([0-9a-f_-]{36})|kubepods(?:-(?:burstable|besteffort))?-pod([0-9a-f_]{36})\.slice")
_NSPAWN = re.compile(r"machine-(.+)\.scope")
_LIBVIRT_VM = ("qemu-", "kvm-")
_LIBVIRT_LXC = re.compile(r"lxc-\d+-(.+)")      # libvirt's machine name: lxc-<its pid>-<domain name>


@dataclass(frozen=True, slots=True)
class Container:
    """``runtime`` (``"docker"``, ``"containerd"``, ``"cri"``, ``"cri-o"``, ``"podman"``, ``"lxc"``,
    ``"systemd-nspawn"``, ``"libvirt-lxc"``), ``id`` (the 64-hex id, or the container's name for LXC,
    nspawn and libvirt-lxc, which have no other), and for a Kubernetes pod's container the pod's UID."""
    runtime: str
    id: str
    pod_uid: str | None = None

    @property
    def short_id(self) -> str:
        """The first 12 characters of a hex id, as ``docker ps`` and ``podman ps`` show it."""
        return self.id[:12] if _BARE_ID.fullmatch(self.id) else self.id


def unescape_systemd(name: str) -> str:
    r"""A unit name part with systemd's ``\xNN`` escapes decoded (``qemu\x2d1`` -> ``qemu-1``)."""
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), name)


def container_from_cgroup(path: str) -> Container | None:
    """The container whose cgroup ``path`` is (or is under), or None for a host process."""
    parts = [p for p in path.split("/") if p]
    in_kube, pod_uid = False, None
    for i, part in enumerate(parts):
        if _MONITOR.fullmatch(part):
            return None
        for pattern, runtime in _SCOPES:
            m = pattern.fullmatch(part)
            if m:
                return Container(runtime, m.group(1), pod_uid)
        if in_kube:
            m = _KUBE_POD.fullmatch(part)
            if m:
                pod_uid = (m.group(1) or m.group(2)).replace("_", "-")
                continue
            if _BARE_ID.fullmatch(part):
                return Container(CRI, part, pod_uid)   # the cgroupfs driver's leaf: the id alone
        if part.startswith("kubepods"):
            in_kube = True
            continue
        nxt = parts[i + 1] if i + 1 < len(parts) else None
        if part == "docker" and nxt is not None and _BARE_ID.fullmatch(nxt):
            return Container(DOCKER, nxt)
        if part == "libpod_parent" and nxt == "conmon":
            return None
        if part == "lxc" and nxt is not None:
            return Container(LXC, nxt)
        if part.startswith("lxc.payload."):
            return Container(LXC, part[len("lxc.payload."):])
        m = _NSPAWN.fullmatch(part)
        if m and i > 0 and parts[i - 1] == "machine.slice":
            name = unescape_systemd(m.group(1))
            if name.startswith(_LIBVIRT_VM) or nxt == "supervisor":
                return None
            m = _LIBVIRT_LXC.fullmatch(name)
            if m:
                return Container(LIBVIRT_LXC, m.group(1))
            return Container(NSPAWN, name)
    return None


def parse_proc_cgroup(text: str) -> list[tuple[int, str, str]]:
    """The lines of /proc/PID/cgroup as (hierarchy id, controllers, path); the v2 line is (0, "", path)."""
    out = []
    for line in text.splitlines():
        if not line:
            continue
        hid, controllers, path = line.split(":", 2)
        out.append((int(hid), controllers, path))
    return out


def v2_path(text: str) -> str | None:
    """The cgroup v2 path from /proc/PID/cgroup's text, None when the host has no v2 hierarchy."""
    for hid, controllers, path in parse_proc_cgroup(text):
        if hid == 0 and controllers == "":
            return path
    return None


def container_from_proc_cgroup(text: str) -> Container | None:
    """The container of a process from its /proc/PID/cgroup text: the v2 path first, then the v1
    hierarchies (on a v1 or hybrid host a runtime may place a container in the v1 controllers only)."""
    lines = parse_proc_cgroup(text)
    lines.sort(key=lambda line: (line[0] != 0, line[1] != "name=systemd", line[0]))
    for _, _, path in lines:
        found = container_from_cgroup(path)
        if found is not None:
            return found
    return None


def read_container(pid: int, proc: str = "/proc") -> Container | None:
    """The container of process ``pid`` (None on the host); FileNotFoundError when it is gone."""
    with open(f"{proc}/{pid}/cgroup") as f:
        return container_from_proc_cgroup(f.read())


__all__ = ["CONTAINERD", "CRI", "CRIO", "Container", "DOCKER", "LIBVIRT_LXC", "LXC", "NSPAWN", "PODMAN",
           "container_from_cgroup", "container_from_proc_cgroup", "parse_proc_cgroup", "read_container",
           "unescape_systemd", "v2_path"]
