"""A small MLflow REST client for mlp's own commands (runs, register, import).

It speaks the same protocol to mlp's tracking server and to MLflow's, so `mlp runs` and
`mlp models register` work against either. Training code keeps using the `mlflow` client.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx


class ClientError(Exception):
    """A tracking server refused or failed a call; carries MLflow's error code when it sent one."""

    def __init__(self, message: str, error_code: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.status = status


@dataclass
class Run:
    id: str
    name: str
    experiment_id: str
    status: str
    start_time: int | None
    end_time: int | None
    artifact_uri: str
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    datasets: list[dict[str, Any]] = field(default_factory=list)
    model_outputs: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Run:
        info, d = data["info"], data.get("data", {})
        metrics = {}
        for m in d.get("metrics", []):
            v = m["value"]
            metrics[m["key"]] = float(v) if not isinstance(v, float) else v
        datasets = [x.get("dataset", {}) for x in (data.get("inputs") or {}).get("dataset_inputs", [])]
        outputs = [x["model_id"] for x in (data.get("outputs") or {}).get("model_outputs", []) if x.get("model_id")]
        return cls(
            id=info.get("run_id") or info["run_uuid"],
            name=info.get("run_name", ""),
            experiment_id=str(info["experiment_id"]),
            status=info.get("status", ""),
            start_time=_opt_int(info.get("start_time")),
            end_time=_opt_int(info.get("end_time")),
            artifact_uri=info.get("artifact_uri", ""),
            metrics=metrics,
            params={p["key"]: p.get("value", "") for p in d.get("params", [])},
            tags={t["key"]: t.get("value", "") for t in d.get("tags", [])},
            datasets=datasets,
            model_outputs=outputs,
        )

    def json(self) -> dict[str, Any]:
        return {
            "run_id": self.id,
            "run_name": self.name,
            "experiment_id": self.experiment_id,
            "status": self.status,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "artifact_uri": self.artifact_uri,
            "metrics": self.metrics,
            "params": self.params,
            "tags": self.tags,
            "datasets": self.datasets,
            "models": self.model_outputs,
        }


def _opt_int(v: Any) -> int | None:
    return int(v) if v not in (None, "") else None


class TrackingClient:
    def __init__(self, uri: str, *, timeout: float = 60.0, transport: httpx.BaseTransport | None = None) -> None:
        if not uri.startswith(("http://", "https://")):
            raise ClientError(f"tracking URI {uri!r}: expected http(s)://host:port (set MLFLOW_TRACKING_URI)")
        self.uri = uri.rstrip("/")
        self.http = httpx.Client(base_url=self.uri, timeout=timeout, transport=transport)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> TrackingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, endpoint: str, body: dict[str, Any] | None = None) -> Any:
        url = f"/api/2.0/mlflow/{endpoint}"
        try:
            r = self.http.get(url, params=body) if method == "GET" else self.http.request(method, url, json=body or {})
        except httpx.HTTPError as exc:
            raise ClientError(f"{self.uri}: {type(exc).__name__}: {exc}") from exc
        if r.status_code >= 400:
            try:
                err = r.json()
                raise ClientError(
                    f"{err.get('error_code')}: {err.get('message')}", err.get("error_code", ""), r.status_code
                )
            except ValueError:
                raise ClientError(f"{method} {url}: HTTP {r.status_code}: {r.text[:200]}", "", r.status_code) from None
        return r.json() if r.content else {}

    # --- reads ----------------------------------------------------------------------------

    def get_run(self, run_id: str) -> Run:
        return Run.from_json(self.call("GET", "runs/get", {"run_id": run_id})["run"])

    def raw_run(self, run_id: str) -> dict[str, Any]:
        data: dict[str, Any] = self.call("GET", "runs/get", {"run_id": run_id})["run"]
        return data

    def experiment_by_name(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = self.call("GET", "experiments/get-by-name", {"experiment_name": name})["experiment"]
        return data

    def experiments(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        token = None
        while True:
            body: dict[str, Any] = {"max_results": 1000, "view_type": "ACTIVE_ONLY"}
            if token:
                body["page_token"] = token
            page = self.call("POST", "experiments/search", body)
            out += page.get("experiments", [])
            token = page.get("next_page_token")
            if not token:
                return out

    def search_runs_raw(
        self,
        experiment_ids: list[str],
        filter_string: str = "",
        order_by: list[str] | None = None,
        max_results: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        token = None
        seen = 0
        while True:
            body: dict[str, Any] = {
                "experiment_ids": experiment_ids,
                "filter": filter_string,
                "max_results": 1000,
                "order_by": order_by or [],
            }
            if token:
                body["page_token"] = token
            page = self.call("POST", "runs/search", body)
            for run in page.get("runs", []):
                yield run
                seen += 1
                if max_results is not None and seen >= max_results:
                    return
            token = page.get("next_page_token")
            if not token:
                return

    def search_runs(
        self,
        experiment_ids: list[str],
        filter_string: str = "",
        order_by: list[str] | None = None,
        max_results: int | None = None,
    ) -> list[Run]:
        return [Run.from_json(r) for r in self.search_runs_raw(experiment_ids, filter_string, order_by, max_results)]

    def metric_history(self, run_id: str, key: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        token = None
        while True:
            body: dict[str, Any] = {"run_id": run_id, "metric_key": key, "max_results": 25000}
            if token:
                body["page_token"] = token
            page = self.call("GET", "metrics/get-history", body)
            out += page.get("metrics", [])
            token = page.get("next_page_token")
            if not token:
                return out

    def logged_model(self, model_id: str) -> dict[str, Any]:
        data: dict[str, Any] = self.call("GET", f"logged-models/{model_id}")["model"]
        return data

    # --- artifacts (the mlflow-artifacts proxy) ---------------------------------------------

    @staticmethod
    def proxy_path(artifact_uri: str) -> str:
        if not artifact_uri.startswith("mlflow-artifacts:"):
            raise ClientError(
                f"artifact URI {artifact_uri!r} is not served through the tracking server (mlflow-artifacts:)"
            )
        path = artifact_uri.split(":", 1)[1]
        if path.startswith("//"):  # mlflow-artifacts://host:port/path
            path = "/" + path[2:].split("/", 1)[1]
        return path.strip("/")

    def list_artifacts(self, artifact_uri: str, path: str = "") -> list[dict[str, Any]]:
        base = self.proxy_path(artifact_uri)
        full = f"{base}/{path}".strip("/")
        r = self.http.get("/api/2.0/mlflow-artifacts/artifacts", params={"path": full})
        if r.status_code >= 400:
            raise ClientError(f"list {full}: HTTP {r.status_code}: {r.text[:200]}", status=r.status_code)
        files: list[dict[str, Any]] = r.json().get("files", [])
        return [{**f, "path": f"{path}/{f['path']}".strip("/")} for f in files]

    def walk_artifacts(self, artifact_uri: str, path: str = "") -> Iterator[dict[str, Any]]:
        for f in self.list_artifacts(artifact_uri, path):
            if f.get("is_dir"):
                yield from self.walk_artifacts(artifact_uri, f["path"])
            else:
                yield f

    def download(self, artifact_uri: str, path: str, sink: Any) -> str:
        """Stream one artifact into `sink` (a binary file object); returns its sha256 hex digest."""
        full = f"{self.proxy_path(artifact_uri)}/{path}".strip("/")
        digest = hashlib.sha256()
        with self.http.stream("GET", f"/api/2.0/mlflow-artifacts/artifacts/{full}") as r:
            if r.status_code >= 400:
                r.read()
                raise ClientError(f"download {full}: HTTP {r.status_code}: {r.text[:200]}", status=r.status_code)
            for chunk in r.iter_bytes(1024 * 1024):
                digest.update(chunk)
                sink.write(chunk)
        return digest.hexdigest()

    def upload(self, artifact_uri: str, path: str, data: Any) -> None:
        full = f"{self.proxy_path(artifact_uri)}/{path}".strip("/")
        r = self.http.put(f"/api/2.0/mlflow-artifacts/artifacts/{full}", content=data)
        if r.status_code >= 400:
            raise ClientError(f"upload {full}: HTTP {r.status_code}: {r.text[:200]}", status=r.status_code)
