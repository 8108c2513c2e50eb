"""Who and where (issue 14), the user-space parts: what a process is, where it runs, and on which host.

- ``procfs``: a process's state from /proc (stat, status, cmdline, exe, cwd): parsers and one reader.
- ``tasks``: every process's exact start time (``task->start_time``) from a BPF task iterator, so that the
  keys of processes seeded from /proc equal the kernel events' ``entity_key``.
- ``proctable``: ``ProcessTable``, the bounded process cache by entity_key: seeded from /proc, kept current by
  fork, exec and exit events, answering ``ancestors(key, n)``.
- ``containers``: the container (runtime, id) from a cgroup path or /proc/PID/cgroup.
- ``cgroups``: the cgroup v2 mount, and cgroup id <-> path.
- ``containerinfo``: container name and image from the runtime's API socket, looked up off the event path.
- ``namespaces``: a process's namespace inode numbers.
- ``host``: hostname, machine id, boot id, kernel, arch and the cloud instance, for the ``status`` event.

Every module but ``tasks`` (which loads a BPF program) imports neither ctypes nor trio; ``containerinfo`` and
``host`` do their I/O on threads of their own.  Nothing is imported here: import the module you need.
"""
