"""The kernel interface: bpf(2) and perf_event_open(2) (syscall, uapi, bpf, perf), loading (prog), attaching
(attach, tracefs), file descriptors (fd) and privileges (caps).  Only ``syscall`` calls into libc."""
