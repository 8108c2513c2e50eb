"""The machine lookups compiling filters needs (the only module of kestrel_raw/filters that does I/O): the
device and inode of each --exe, the cgroup v2 tree with each cgroup's container.

``read_host`` is called when filters are set (the command line, ``collector.set_filters``, SIGHUP) and
raises ConfigError for what the filters name and the machine lacks; ``scan_cgroups`` again every
filtermaps.CGROUP_RESCAN_S while a cgroup or container filter is in force (the collector rewrites the
filter image when the tree changed).
"""
from __future__ import annotations

import os

from kestrel_raw.context.cgroups import MOUNTINFO, read_cgroup2_mount, walk_cgroups
from kestrel_raw.context.containers import container_from_cgroup
from kestrel_raw.errors import ConfigError
from kestrel_raw.filters import values as fv
from kestrel_raw.filters.host import Cgroup, Host, check_host, kernel_dev
from kestrel_raw.filters.model import Filters
from kestrel_raw.filters.values import Name, flag_name
from kestrel_raw.programs import filtermaps


def exe_ids(path: str, setting: str) -> tuple[int, int]:
    """(kernel dev_t, inode) of the file ``path`` (symbolic links followed, as exec follows them)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"{setting} {path}: no such file; give the path of an executable (a process matches "
                          f"when it runs that file)") from None
    except OSError as e:
        raise ConfigError(f"{setting} {path}: cannot stat it: {e.strerror or e}") from None
    return kernel_dev(os.major(st.st_dev), os.minor(st.st_dev)), st.st_ino


def scan_cgroups(mount: str, limit: int = filtermaps.MAX_CGROUPS) -> tuple[Cgroup, ...]:
    """The cgroup v2 tree under ``mount``, breadth-first (at most ``limit``: the shallow ones, where
    containers live, are kept; a cgroup beyond is unknown to the programs, which let its events pass)."""
    out: list[Cgroup] = []
    for ino, rel in walk_cgroups(mount):
        if len(out) >= limit:
            break
        container = container_from_cgroup(rel)
        out.append(Cgroup(ino, rel, container.id if container is not None else None))
    return tuple(out)


def read_host(filters: Filters, name: Name = flag_name, mountinfo: str = MOUNTINFO) -> Host:
    """What compiling ``filters`` needs from this machine; ConfigError (naming the setting through ``name``)
    when an --exe does not exist, a --cgroup or --container names nothing, or no cgroup v2 hierarchy is
    mounted for them."""
    exes = []
    for exclude in (False, True):
        for path in filters.values("exe", exclude):
            dev, ino = exe_ids(path, name(fv.config_key("exe", exclude)))
            exes.append((path, dev, ino))
    mount, cgroups = "", ()
    needs = [k for k in ("cgroup", "container") if filters.used(k)]
    if needs:
        found = read_cgroup2_mount(mountinfo)
        if found is None:
            key = needs[0]
            raise ConfigError(f"{name(fv.config_key(key, not filters.values(key)))} needs the cgroup v2 hierarchy, "
                              f"and none is mounted (mount -t cgroup2 none /sys/fs/cgroup/unified)")
        mount = found.mount_point
        cgroups = scan_cgroups(mount)
    host = Host(tuple(dict.fromkeys(exes)), mount, cgroups)
    check_host(filters, host, name)
    return host
