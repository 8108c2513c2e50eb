"""Namespace inodes of a process (kestrel_raw/context/namespaces.py) and the test helpers that make children in
new namespaces (tests/helpers.py: ``unshared``, ``veth_netns``, ``uts_nodename``), which the kernel-side
``pidns``/``mntns``/``netns``/``hostname`` fields will be checked against."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from helpers import unshared, uts_nodename, veth_netns
from kestrel_raw.context.namespaces import NAMESPACES, namespace_inode, namespace_inodes, parse_ns_link


def test_parse_ns_link():
    assert parse_ns_link("net:[4026531840]") == ("net", 4026531840)
    assert parse_ns_link("pid_for_children:[4026531836]") == ("pid_for_children", 4026531836)
    with pytest.raises(ValueError, match="not a namespace link target"):
        parse_ns_link("/proc/1/ns/net")


def _by_readlink(pid) -> dict[str, int]:
    """The same numbers read another way: the links' targets."""
    out = {}
    for key, ns in NAMESPACES.items():
        kind, inode = parse_ns_link(os.readlink(f"/proc/{pid}/ns/{ns}"))
        assert kind == ns
        out[key] = inode
    return out


def test_own_namespaces_stat_and_readlink_agree():
    assert namespace_inodes("self") == _by_readlink("self") == namespace_inodes(os.getpid())


@pytest.mark.kernel
def test_a_child_in_new_pid_mount_and_net_namespaces():
    mine = namespace_inodes("self")
    with unshared(["sleep", "600"], pid=True, mnt=True, net=True) as child:
        theirs = namespace_inodes(child.pid)
        assert theirs == _by_readlink(child.pid)
        for key in ("pidns", "mntns", "netns"):
            assert theirs[key] != mine[key], key
        for key in ("utsns", "ipcns", "userns", "cgroupns"):
            assert theirs[key] == mine[key], key
        with open(f"/proc/{child.pid}/status") as f:
            nspid = next(line.split()[1:] for line in f if line.startswith("NSpid:"))
        assert nspid == [str(child.pid), "1"]          # pid 1 of its new pid namespace
    assert not os.path.exists(f"/proc/{child.pid}")  # killed and reaped on leaving


@pytest.mark.kernel
def test_a_child_with_its_own_hostname():
    with unshared(["sleep", "600"], uts=True, setup="hostname kr-uts-test") as child:
        assert uts_nodename(child.pid) == "kr-uts-test"
        assert uts_nodename(os.getpid()) == socket.gethostname() != "kr-uts-test"
        assert namespace_inode(child.pid, "uts") != namespace_inode("self", "uts")


LISTENER = """
import socket, sys
s = socket.socket()
s.bind((sys.argv[1], 0))
s.listen()
print(s.getsockname()[1], flush=True)
c, peer = s.accept()
c.sendall(("hello " + peer[0]).encode())
c.close()
"""


@pytest.mark.kernel
def test_a_network_namespace_joined_by_a_veth_pair():
    with veth_netns() as ns:
        assert ns.inode != namespace_inode("self", "net")
        server = ns.popen([sys.executable, "-c", LISTENER, ns.peer_addr], stdout=subprocess.PIPE, text=True)
        port = int(server.stdout.readline())
        assert namespace_inode(server.pid, "net") == ns.inode
        with socket.create_connection((ns.peer_addr, port), timeout=5) as c:
            assert c.recv(100) == f"hello {ns.host_addr}".encode()
        server.wait(timeout=10)
        name, host_if = ns.name, ns.host_if
    assert not os.path.exists(f"/var/run/netns/{name}")
    assert not os.path.exists(f"/sys/class/net/{host_if}")


@pytest.mark.kernel
def test_veth_netns_cleans_up_after_a_failure_half_way():
    ns = veth_netns()
    ns.peer_addr = "not-an-address"          # fails when the peer end's address is set, inside the namespace
    with pytest.raises(Exception):
        ns.__enter__()
    assert not os.path.exists(f"/var/run/netns/{ns.name}")
    assert not os.path.exists(f"/sys/class/net/{ns.host_if}")
