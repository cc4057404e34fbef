"""Helpers for tests and benchmarks of the embedded runtime (no I/O beyond the given folder).

`train_iris(folder, c)` fits a real scikit-learn model on the bundled iris data and writes
it with joblib; `deployment(...)` builds a `ModelDeployment` dict in exactly the shape
render emits (see `mlp.objects.MODEL_DEPLOYMENT_EXAMPLE`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlp.objects import ENV_LABEL, MANAGED_BY, MANAGED_BY_VALUE, SPEC_LABEL
from mlp.serving.artifacts import sha256_file

__all__ = ["ENV_LABEL", "MANAGED_BY", "MANAGED_BY_VALUE", "SPEC_LABEL"]

IRIS_INPUTS = ("sepal_length", "sepal_width", "petal_length", "petal_width")
IRIS_SIGNATURE: dict[str, Any] = {
    "inputs": [{"name": n, "type": "float"} for n in IRIS_INPUTS],
    "outputs": [{"name": "species", "type": "int"}],
}


def train_iris(folder: str | Path, c: float = 1.0, name: str = "model.joblib") -> tuple[Path, str]:
    """Fit LogisticRegression(C=c) on iris; return (path, digest)."""
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    x, y = load_iris(return_X_y=True)
    path = folder / name
    joblib.dump(LogisticRegression(C=c, max_iter=1000).fit(x, y), path)
    return path, sha256_file(path)


def route(version: int, path: Path | str, digest: str, role: str = "stable", weight: int = 100) -> dict[str, Any]:
    uri = path if isinstance(path, str) and "://" in path else f"file://{Path(path).resolve()}"
    return {"version": version, "uri": uri, "digest": digest, "role": role, "weight": weight}


def deployment(
    name: str,
    routes: list[dict[str, Any]],
    *,
    environment: str = "dev",
    framework: str = "sklearn",
    signature: dict[str, Any] | None = None,
    sticky: str | None = None,
    batching: dict[str, Any] | None = None,
    payload_rate: float = 0.0,
    model_class: str | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "mlp.dev/v1",
        "kind": "ModelDeployment",
        "metadata": {
            "name": name,
            "namespace": "local",
            "labels": {MANAGED_BY: MANAGED_BY_VALUE, ENV_LABEL: environment, SPEC_LABEL: f"Model.{name}"},
        },
        "spec": {
            "model": name,
            "framework": framework,
            "modelClass": model_class,
            "signature": signature if signature is not None else IRIS_SIGNATURE,
            "routes": routes,
            "sticky": {"header": sticky} if sticky else None,
            "batching": batching if batching is not None else {"maxBatchSize": 32, "maxLatencyMs": 1},
            "payloadLog": {"sampleRate": payload_rate},
            "resources": {"replicas": 1},
        },
    }


def client(base_url: str, timeout: float = 10.0) -> Any:
    """An httpx client with TCP_NODELAY.

    httpx writes a request's headers and body in two sends; with Nagle's algorithm on, the
    body waits for the server's delayed ACK (~40 ms on Linux) and every small POST takes
    40 ms. curl and load generators send one segment, so they never see this.
    """
    import socket

    import httpx

    transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    return httpx.Client(base_url=base_url, timeout=timeout, transport=transport)
