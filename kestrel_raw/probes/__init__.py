"""Probes beyond tracepoints: where a uprobe goes (targets.py), what this kernel can attach (support.py), and
the library API that attaches a user's own programs, assembled with kestrel_raw.asm, to uprobes, kprobes,
fentry/fexit and tracepoints, their records read by the collector's pollers (user.py)."""
