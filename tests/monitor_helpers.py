"""Shared pieces of the monitor tests: a real HTTP alert receiver, iris data, payload-log files."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mlp.serving.artifacts import sha256_file

IRIS = ("sepal_length", "sepal_width", "petal_length", "petal_width")


class Receiver:
    """Collects every JSON body POSTed to it (any path)."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, Any]] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(n) or b"null")
                with owner.lock:
                    owner.bodies.append((self.path, body))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(condition, status, body) of every generic-webhook notification."""
        with self.lock:
            return [(b["alert"], b["status"], b) for _, b in self.bodies if isinstance(b, dict) and "alert" in b]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def iris() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    return x, y


def write_reference(folder: Path, x: np.ndarray, y: np.ndarray | None = None) -> tuple[str, str]:
    """A reference sample as Parquet; returns (file:// URI, digest)."""
    folder.mkdir(parents=True, exist_ok=True)
    cols: dict[str, Any] = {n: x[:, i] for i, n in enumerate(IRIS)}
    if y is not None:
        cols["species"] = y.astype(np.int64)
    path = folder / "reference.parquet"
    pq.write_table(pa.table(cols), path)
    return f"file://{path.resolve()}", sha256_file(path)


def write_payloads(
    root: Path,
    x: np.ndarray,
    *,
    model: str = "iris",
    version: str = "1",
    start_ms: int = 1_700_000_000_000,
    seq: int = 0,
    prediction: np.ndarray | None = None,
    request_ids: list[str] | None = None,
    drop: tuple[str, ...] = (),
) -> Path:
    """One closed payload-log file in the serving layout (`<root>/<model>/<version>/<ms>-<seq>.parquet`)."""
    folder = root / model / version
    folder.mkdir(parents=True, exist_ok=True)
    n = x.shape[0]
    cols: dict[str, Any] = {
        "ts": pa.array(np.full(n, start_ms, dtype="datetime64[ms]")),
        "model": pa.array([model] * n),
        "version": pa.array([version] * n),
    }
    for i, name in enumerate(IRIS):
        if name not in drop:
            cols[name] = x[:, i]
    cols["species"] = prediction if prediction is not None else np.zeros(n)
    if request_ids is not None:
        cols["request_id"] = pa.array(request_ids)
    path = folder / f"{start_ms}-{seq:06d}.parquet"
    pq.write_table(pa.table(cols), path)
    return path


def monitor_config(
    reference: tuple[str, str],
    *,
    receiver_url: str | None = None,
    window: int = 200,
    threshold: float = 0.01,
    detector: str = "ks",
    performance: list[dict[str, Any]] | None = None,
    prediction_drift: bool = False,
    baselines: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """A runner configuration shaped like mlp.render.monitoring.monitor_config's."""
    return {
        "monitor": "iris-drift",
        "environment": "dev",
        "model": "iris",
        "namespace": "local",
        "schedule": "* * * * *",
        "payloadLog": None,
        "inputs": list(IRIS),
        "outputs": ["species"],
        "baselines": baselines or {"1": {"accuracy": 0.97}},
        "predictionDrift": prediction_drift,
        "drift": {
            "detector": detector,
            "features": list(IRIS),
            "categorical": [],
            "threshold": threshold,
            "correction": "bonferroni",
            "window": window,
            "windowDuration": None,
            "reference": {"uri": reference[0], "digest": reference[1]},
        },
        "performance": performance or [],
        "alerts": [
            {
                "severity": "warning",
                "for": "1m",
                "route": None,
                "receiver": {"type": "webhook", "url": receiver_url} if receiver_url else None,
            }
        ],
    }
