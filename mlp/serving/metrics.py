"""Prometheus metrics of the data plane, per model and version.

A private `CollectorRegistry` per runtime (tests start several in one process). Label
children are resolved once per loaded version (`VersionMetrics`), so the request path
pays one `inc()`/`observe()` each, not a label lookup.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

# No `_created` series beside every counter and histogram: they double the series and no query uses them.
disable_created_metrics()

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        self.requests = Counter(
            "mlp_model_requests", "Prediction requests answered", ["model", "version", "code"], registry=r
        )
        self.latency = Histogram(
            "mlp_model_request_duration_seconds",
            "Time from routing to response body, per request",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "mlp_model_batch_size",
            "Rows per model call after micro-batching",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "mlp_model_errors", "Failed predictions by kind", ["model", "version", "kind"], registry=r
        )
        self.shadow = Counter("mlp_model_shadow_requests", "Mirrored requests", ["model", "version"], registry=r)
        self.rejected = Counter("mlp_http_rejected", "Requests refused before reaching a model", ["reason"], registry=r)
        self.loaded = Gauge("mlp_model_loaded", "1 while a version is loaded", ["model", "version", "role"], registry=r)
        self.payload_dropped = Counter(
            "mlp_payload_log_dropped", "Payload log records dropped because the writer fell behind", registry=r
        )

    def version(self, model: str, version: str) -> VersionMetrics:
        return VersionMetrics(self, model, version)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class VersionMetrics:
    """Pre-bound label children for one model version."""

    def __init__(self, m: Metrics, model: str, version: str) -> None:
        self.ok = m.requests.labels(model, version, "200")
        self.bad = m.requests.labels(model, version, "400")
        self.failed = m.requests.labels(model, version, "500")
        self.latency = m.latency.labels(model, version)
        self.batch = m.batch_size.labels(model, version)
        self.model_errors = m.errors.labels(model, version, "model")
        self.input_errors = m.errors.labels(model, version, "input")
        self.shadow = m.shadow.labels(model, version)
