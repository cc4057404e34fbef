"""Prometheus metrics of the controller and the HTTP endpoint that serves them.

Each `ControllerMetrics` has its own registry, so several controllers (tests, `mlp up`)
can live in one process. The endpoint serves `/metrics` (Prometheus text format) and
`/healthz`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, make_wsgi_app

# No `_created` series beside every counter and histogram: they double the series and no query uses them.
disable_created_metrics()

_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.reconcile_duration = Histogram(
            "mlp_controller_reconcile_duration_seconds",
            "Time of one reconcile step of an environment.",
            ["environment"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.reconcile_results = Counter(
            "mlp_controller_reconcile_total",
            "Reconcile steps by outcome (synced, applied, out_of_sync, refused, failed, skipped).",
            ["environment", "outcome"],
            registry=r,
        )
        self.objects = Gauge(
            "mlp_controller_objects",
            "Objects of an environment by sync and health status.",
            ["environment", "sync_status", "health"],
            registry=r,
        )
        self.git_fetch_duration = Histogram(
            "mlp_controller_git_fetch_duration_seconds",
            "Time to check the remote and fetch moved refs.",
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.git_fetch_failures = Counter(
            "mlp_controller_git_fetch_failures_total",
            "Failed refreshes of the Git remote.",
            registry=r,
        )
        self.leader = Gauge(
            "mlp_controller_leader",
            "1 while this replica holds the leader Lease (or runs without leader election), else 0.",
            registry=r,
        )
        self.leader.set(1)
        self.queue_depth = Gauge(
            "mlp_controller_queue_depth",
            "Environments waiting for a reconcile.",
            registry=r,
        )
        self.last_sync = Gauge(
            "mlp_controller_last_successful_sync_timestamp_seconds",
            "Unix time of the last step that left the environment Synced.",
            ["environment"],
            registry=r,
        )
        self._object_series: dict[str, set[tuple[str, str]]] = {}
        self._lock = threading.Lock()

    def set_objects(self, env: str, pairs: Iterable[tuple[str, str]]) -> None:
        """Replace an environment's object counts; (sync, health) pairs that vanished drop to 0."""
        counts: dict[tuple[str, str], int] = {}
        for pair in pairs:
            counts[pair] = counts.get(pair, 0) + 1
        with self._lock:
            for old in self._object_series.get(env, set()) - set(counts):
                self.objects.labels(env, *old).set(0)
            for (sync, health), n in counts.items():
                self.objects.labels(env, sync, health).set(n)
            self._object_series[env] = set(counts) | self._object_series.get(env, set())


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(WSGIServer):
    daemon_threads = True


def serve_metrics(metrics: ControllerMetrics, port: int, host: str = "127.0.0.1") -> tuple[WSGIServer, int]:
    """Serve /metrics and /healthz in a daemon thread; returns the server and its port (port 0 picks one)."""
    prom = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        result: Iterable[bytes] = prom(environ, start_response)
        return result

    server = make_server(host, port, app, server_class=_Server, handler_class=_QuietHandler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 1.0}, daemon=True, name="mlp-metrics"
    )
    thread.start()
    return server, int(server.server_port)
