"""Filters (issue 15), user space: the ``Filters`` value, the parsing and checking of every value, and its
compilation into the filter maps' contents (``compile`` -> kestrel_raw.programs.filtermaps.Image).

- ``values``: the keys (pid, uid, comm, exe, cgroup, container, port, daddr, path_prefix), the event types
  each applies to, the parsing of one value of each (errors name the flag as typed).
- ``model``: ``Filters``, frozen: includes and excludes per key, outcome, rate limits; ``check`` against the
  collected event types; ``to_json`` (the flags' names, for the status event).
- ``host``: ``Host``, what compiling needs from the machine (exes' device and inode, the cgroup v2 tree),
  as a value; the checks of the filters against it.
- ``image``: ``compile(filters, event_types, set=, host=)``, pure, byte for byte as filtermaps.py says.
- ``lookup``: the one module that does I/O: ``read_host`` (stat, the cgroup tree), ``scan_cgroups``.
"""
from __future__ import annotations

from kestrel_raw.filters.host import Cgroup, Host, check_host, kernel_dev
from kestrel_raw.filters.image import compile
from kestrel_raw.filters.model import NO_FILTERS, Filters
from kestrel_raw.filters.values import APPLIES, KEYS, OUTCOME_TYPES

__all__ = ["APPLIES", "Cgroup", "Filters", "Host", "KEYS", "NO_FILTERS", "OUTCOME_TYPES", "check_host", "compile",
           "kernel_dev"]
