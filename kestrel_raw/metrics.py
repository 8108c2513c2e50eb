"""Prometheus metrics of a running collector (``kestrel-raw run --metrics ADDR``), with prometheus-client.

Nothing on the event path: every value is read when Prometheus scrapes.  The HTTP server runs in a thread
of prometheus-client's (a WSGI server), and a scrape asks the collector's trio loop for a ``Snapshot``
(``trio.from_thread.run_sync``), so the collector's state is only ever read from its own thread; a scrape
costs the loop the reading of the kernel's counters (a few map lookups and one BPF_OBJ_GET_INFO_BY_FD per
program: ~0.5 ms).  The socket is bound before anything is loaded (a busy port is an error at start); the
thread starts once the collector has dropped its privileges (a thread started earlier would keep them).

Metrics (all prefixed ``kestrel_``):

    events_total{type}                 events delivered to the outputs
    events_lost_total{type,cause}      ringbuf_full, rate_limited and prog_missed (kernel, by type);
                                       user_dropped and parse_error (user space, by type: "unknown" for a
                                       record too damaged to name its kind): the causes of the loss events
    events_filtered_total{type}        events the programs' filters held back
    ring_buffer_used_bytes{ring}       unread bytes in each ring buffer, and ring_buffer_size_bytes{ring}
    ring_buffer_fill_ratio{ring}       used / size
    poll_wakeups_total{ring}           times the reader of a ring was woken by the kernel
    records_total                      records read from the rings
    programs_attached                  programs attached now
    bpf_stats_enabled                  kernel.bpf_stats_enabled (1: the run-time counters below count)
    bpf_program_runs_total{program}    run_cnt of each program (BPF_OBJ_GET_INFO_BY_FD)
    bpf_program_run_time_seconds_total{program}   run_time_ns / 1e9
    bpf_program_ns_per_run{program}    run_time_ns / run_cnt
    process_cache_entries              entries of the collector's process cache, when it keeps one
    output_events_total{output}, output_dropped_total{output}, nats_spool_bytes, nats_connected
    process_cpu_seconds_total, process_resident_memory_bytes, ...   (prometheus-client's ProcessCollector)
"""
from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from typing import Callable
from wsgiref.simple_server import WSGIRequestHandler, make_server

BPF_STATS_SYSCTL = "/proc/sys/kernel/bpf_stats_enabled"
# The kernel's causes, by type; user space's are user_dropped and parse_error.  The same names as the loss
# events' (spec.LOSS_CAUSES).
KERNEL_CAUSES = ("ringbuf_full", "rate_limited", "prog_missed")


def import_prometheus():
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ImportError("--metrics needs prometheus-client: pip install 'kestrel-raw[metrics]'") from None
    return prometheus_client


@dataclass
class Snapshot:
    delivered: dict[str, int] = field(default_factory=dict)
    kernel: dict[str, dict[str, int]] = field(default_factory=dict)  # type -> counter -> total
    records: int = 0
    user_dropped: int = 0
    parse_errors: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # user_dropped by type
    refused: dict[str, int] = field(default_factory=dict)  # parse_errors by type
    rings: list[tuple[int, int, int]] = field(default_factory=list)  # (used bytes, size, wakeups)
    programs: list[tuple[str, int, int]] = field(default_factory=list)  # (name, run_cnt, run_time_ns)
    attached: int = 0
    bpf_stats: int = 0
    process_cache: int | None = None
    outputs: dict[str, dict[str, int]] = field(default_factory=dict)  # output -> counter -> value


def bpf_stats_enabled() -> int:
    try:
        with open(BPF_STATS_SYSCTL) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def snapshot(collector, outputs: dict[str, object]) -> Snapshot:
    """The collector's numbers now (call from its trio thread)."""
    stats = collector.stats()
    snap = Snapshot(delivered=dict(stats.delivered), records=stats.records, user_dropped=stats.user_dropped,
                    parse_errors=stats.parse_errors, dropped=dict(stats.dropped), refused=dict(stats.refused),
                    bpf_stats=bpf_stats_enabled())
    snap.kernel = {kind: {name: sum(cpus) for name, cpus in counters.items()}
                   for kind, counters in stats.kernel.items()}
    for reader in getattr(collector, "_readers", ()):
        if reader.closed:
            continue
        snap.rings.append((reader.available(), reader.size, getattr(reader, "wakeups", 0)))
    for spec, prog in getattr(collector, "_programs", ()):
        if prog.closed:
            continue
        try:
            info = prog.info()
        except OSError:
            continue
        snap.programs.append((spec.name, info.run_cnt, info.run_time_ns))
    snap.attached = sum(1 for link in getattr(collector, "_links", {}).values() if not getattr(link, "closed", False))
    cache = getattr(collector, "process_cache_size", None)
    snap.process_cache = cache() if callable(cache) else None
    snap.outputs = {name: out.counters() for name, out in outputs.items()}
    return snap


def families(snap: Snapshot):
    """The metric families of ``snap`` (prometheus_client core types)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    events = CounterMetricFamily("kestrel_events", "Events delivered to the outputs, by type.", labels=["type"])
    for kind, n in sorted(snap.delivered.items()):
        events.add_metric([kind], n)
    yield events
    lost = CounterMetricFamily("kestrel_events_lost", "Events lost, by type and cause.", labels=["type", "cause"])
    filtered = CounterMetricFamily("kestrel_events_filtered", "Events the programs' filters held back, by type.",
                                   labels=["type"])
    for kind in sorted(snap.kernel):
        counters = snap.kernel[kind]
        for cause in KERNEL_CAUSES:
            lost.add_metric([kind, cause], counters.get(cause, 0))
        filtered.add_metric([kind], counters.get("filtered", 0))
    for cause, by_type in (("user_dropped", snap.dropped), ("parse_error", snap.refused)):
        # every program's type from the start (at 0), and any other once it counts (the collector's own
        # events dropped, a record too damaged to name its kind: "unknown", a BPF object's ring)
        for kind in sorted(set(snap.kernel) | set(by_type)):
            lost.add_metric([kind, cause], by_type.get(kind, 0))
    yield lost
    yield filtered
    yield CounterMetricFamily("kestrel_records", "Records read from the ring buffers.", value=snap.records)
    used = GaugeMetricFamily("kestrel_ring_buffer_used_bytes", "Unread bytes in each ring buffer.", labels=["ring"])
    size = GaugeMetricFamily("kestrel_ring_buffer_size_bytes", "Size of each ring buffer.", labels=["ring"])
    fill = GaugeMetricFamily("kestrel_ring_buffer_fill_ratio", "Unread bytes / size, per ring buffer.",
                             labels=["ring"])
    wakeups = CounterMetricFamily("kestrel_poll_wakeups", "Wakeups of each ring buffer's reader by the kernel.",
                                  labels=["ring"])
    for i, (u, s, w) in enumerate(snap.rings):
        used.add_metric([str(i)], u)
        size.add_metric([str(i)], s)
        fill.add_metric([str(i)], u / s if s else 0.0)
        wakeups.add_metric([str(i)], w)
    yield from (used, size, fill, wakeups)
    yield GaugeMetricFamily("kestrel_programs_attached", "BPF programs attached.", value=snap.attached)
    yield GaugeMetricFamily("kestrel_bpf_stats_enabled", "kernel.bpf_stats_enabled: 1 when the kernel counts "
                            "program run time.", value=snap.bpf_stats)
    runs = CounterMetricFamily("kestrel_bpf_program_runs", "Runs of each program (run_cnt; counted while "
                               "bpf_stats are enabled).", labels=["program"])
    run_time = CounterMetricFamily("kestrel_bpf_program_run_time_seconds", "Kernel time in each program "
                                   "(run_time_ns; counted while bpf_stats are enabled).", labels=["program"])
    per_run = GaugeMetricFamily("kestrel_bpf_program_ns_per_run", "Mean kernel ns per run of each program.",
                                labels=["program"])
    for name, cnt, ns in snap.programs:
        runs.add_metric([name], cnt)
        run_time.add_metric([name], ns / 1e9)
        per_run.add_metric([name], ns / cnt if cnt else 0.0)
    yield from (runs, run_time, per_run)
    if snap.process_cache is not None:
        yield GaugeMetricFamily("kestrel_process_cache_entries", "Entries in the process cache.",
                                value=snap.process_cache)
    out_events = CounterMetricFamily("kestrel_output_events", "Events each output wrote, sent or had acked.",
                                     labels=["output"])
    out_dropped = CounterMetricFamily("kestrel_output_dropped", "Events each output dropped.", labels=["output"])
    for name, counters in sorted(snap.outputs.items()):
        out_events.add_metric([name], counters.get("published", counters.get("sent", counters.get("written", 0))))
        out_dropped.add_metric([name], counters.get("dropped", 0))
        if name == "nats":
            yield GaugeMetricFamily("kestrel_nats_spool_bytes", "Bytes waiting in the NATS spool.",
                                    value=counters.get("spool_bytes", 0))
            yield GaugeMetricFamily("kestrel_nats_connected", "1 while a NATS server is connected.",
                                    value=counters.get("connected", 0))
    yield out_events
    yield out_dropped


def _warm_up(app) -> None:
    """Serve one scrape of each encoding now, in this thread: every module a scrape imports is then
    imported before the privileges are dropped (afterwards the interpreter's files may be out of reach:
    an interpreter under /root, say)."""
    for accept in ("gzip", "identity"):
        for openmetrics in (False, True):
            environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": "",
                       "HTTP_ACCEPT_ENCODING": accept, "SERVER_NAME": "localhost", "SERVER_PORT": "0",
                       "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http"}
            if openmetrics:
                environ["HTTP_ACCEPT"] = "application/openmetrics-text; version=1.0.0"
            b"".join(app(environ, lambda status, headers, exc_info=None: None))


class _Quiet(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass  # no access log on stderr: stderr is the collector's status


class MetricsServer:
    """An HTTP server of the metrics at ``host:port``: bound when made, serving once ``start()``ed."""

    def __init__(self, address: str, get_snapshot: Callable[[], Snapshot] | None = None) -> None:
        prometheus_client = import_prometheus()
        from prometheus_client.exposition import ThreadingWSGIServer
        from prometheus_client.process_collector import ProcessCollector
        from prometheus_client.registry import CollectorRegistry

        host, port = parse_address(address)
        registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=registry)
        server = self
        self.get_snapshot = Snapshot  # until the collector runs: empty

        class Kestrel:
            def collect(self):
                return families(server.get_snapshot())

        registry.register(Kestrel())
        app = prometheus_client.make_wsgi_app(registry)
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]

        class Server(ThreadingWSGIServer):
            address_family = family

        self._httpd = make_server(host, port, app, Server, handler_class=_Quiet)
        self.address = self._httpd.server_address
        self._thread: threading.Thread | None = None
        _warm_up(app)
        if get_snapshot is not None:
            self.get_snapshot = get_snapshot

    def start(self) -> None:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="kestrel-raw metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and close the socket (blocks up to the server's poll interval)."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()


def parse_address(text: str) -> tuple[str, int]:
    """``127.0.0.1:9464``, ``[::1]:9464``, ``:9464`` (every address) -> (host, port); ValueError says why."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9464)")
    host = host.strip("[]") if host.startswith("[") else host
    return host or "0.0.0.0", int(port)
