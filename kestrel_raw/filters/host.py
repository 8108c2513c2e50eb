"""What compiling filters needs from the machine, as a plain value (``Host``), and the checks of the filters
against it.  Pure: kestrel_raw/filters/lookup.py reads the machine and makes the value.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from kestrel_raw.errors import ConfigError
from kestrel_raw.filters import values as fv
from kestrel_raw.filters.model import Filters
from kestrel_raw.filters.values import Name, flag_name


def kernel_dev(major: int, minor: int) -> int:
    """A device number in the kernel's dev_t encoding (include/linux/kdev_t.h MKDEV: major << 20 | minor), as
    ``i_sb->s_dev`` holds it; stat(2)'s st_dev uses another (glibc's makedev)."""
    return major << 20 | minor


@dataclass(frozen=True)
class Cgroup:
    """One cgroup of the v2 hierarchy: its id (the directory's inode number, as the records' cgroup_id),
    its path relative to the hierarchy's root (``/system.slice/x.service``) and the id of the container its
    path names (kestrel_raw/context/containers.py), or None on the host."""
    id: int
    path: str
    container: str | None = None


@dataclass(frozen=True)
class Host:
    """``exes``: (path as given to --exe, kernel dev_t, inode) of each executable named; ``mount``: where the
    cgroup v2 hierarchy is mounted ("" when no cgroup or container filter needs it); ``cgroups``: its tree."""
    exes: tuple[tuple[str, int, int], ...] = ()
    mount: str = ""
    cgroups: tuple[Cgroup, ...] = ()

    def exe(self, path: str) -> tuple[int, int] | None:
        return next(((dev, ino) for p, dev, ino in self.exes if p == path), None)

    def with_cgroups(self, cgroups: tuple[Cgroup, ...]) -> "Host":
        return replace(self, cgroups=cgroups)


def cgroup_relative(value: str, mount: str) -> str:
    """A --cgroup value as a path relative to the v2 root: ``/sys/fs/cgroup/unified/a/b`` (under the mount)
    and ``/a/b`` or ``a/b`` (relative to its root) all give ``/a/b``; the root is ``/``."""
    m = mount.rstrip("/")
    if m and (value == m or value.startswith(m + "/")):
        value = value[len(m):]
    parts = [p for p in value.split("/") if p]
    return "/" + "/".join(parts)


def under(path: str, top: str) -> bool:
    """``path`` is the cgroup ``top`` or below it."""
    return top == "/" or path == top or path.startswith(top + "/")


def container_matches(value: str, container: str | None) -> bool:
    """Whether a cgroup whose container is ``container`` (None: the host) matches --container ``value``."""
    if value == fv.CONTAINER_ANY:
        return container is not None
    if value == fv.CONTAINER_NONE:
        return container is None
    return container is not None and container.startswith(value)


def check_host(filters: Filters, host: Host, name: Name = flag_name) -> None:
    """ConfigError when a --cgroup names no cgroup of ``host``'s tree, or a --container prefix no container
    or several."""
    paths = {c.path for c in host.cgroups}
    ids = sorted({c.container for c in host.cgroups if c.container is not None})
    for exclude in (False, True):
        setting = lambda key: name(fv.config_key(key, exclude))  # noqa: E731
        for value in filters.values("cgroup", exclude):
            rel = cgroup_relative(value, host.mount)
            if rel not in paths:
                raise ConfigError(f"{setting('cgroup')} {value}: no such cgroup under the cgroup v2 hierarchy at "
                                  f"{host.mount} (give a path under it, or relative to its root, as "
                                  f"/proc/PID/cgroup shows it after 0::)")
        for value in filters.values("container", exclude):
            if value in (fv.CONTAINER_ANY, fv.CONTAINER_NONE):
                continue
            found = [i for i in ids if i.startswith(value)]
            if not found:
                raise ConfigError(f"{setting('container')} {value}: no running container's id starts with it "
                                  f"(containers found from the cgroups: {len(ids)})")
            if len(found) > 1:
                raise ConfigError(f"{setting('container')} {value}: {len(found)} running containers' ids start "
                                  f"with it ({', '.join(i[:16] for i in found[:4])}...): give more digits")
