"""Online features end to end: `mlp up` serves lookups and enriches requests that carry only an entity id."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from featurerepo import write_repo

from mlp.serving.testing import IRIS_INPUTS, client, train_iris

MODEL = """apiVersion: mlp.dev/v1
kind: Model
metadata: {name: churn}
spec:
  framework: sklearn
  features: customer-stats
  enrichFromFeatures: true
  signature:
    inputs: [%(inputs)s]
    outputs: [{name: species, type: int}]
  versions:
    - {version: 1, uri: "file://%(uri)s", digest: "%(digest)s"}
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    from sklearn.datasets import load_iris

    path, digest = train_iris(tmp_path / "artifacts")
    inputs = ", ".join(f"{{name: {n}, type: float}}" for n in IRIS_INPUTS)
    root = write_repo(
        tmp_path / "platform",
        [
            {
                "name": "customer-stats",
                "path": "data/stats.parquet",
                "features": {n: "float" for n in IRIS_INPUTS},
            }
        ],
        env_extra="  deployments:\n    churn: {version: 1}\n  features:\n    onlineStore: {kind: sqlite, path: .mlp/online.db}\n",
        models=MODEL % {"inputs": inputs, "uri": path, "digest": digest},
    )
    x = load_iris().data
    now = pd.Timestamp.now(tz="UTC").floor("s")
    old = pd.DataFrame(x[::-1], columns=list(IRIS_INPUTS))  # superseded rows, an hour older
    new = pd.DataFrame(x, columns=list(IRIS_INPUTS))
    rows = pd.concat(
        [
            old.assign(customer_id=np.arange(150), ts=now - pd.Timedelta(hours=1)),
            new.assign(customer_id=np.arange(150), ts=now - pd.Timedelta(minutes=1)),
        ]
    )
    (root / "data").mkdir()
    rows.astype({n: "float32" for n in IRIS_INPUTS}).to_parquet(root / "data" / "stats.parquet")
    return root


class Up:
    def __init__(self, repo: Path, state: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlp.cli.main", "up", str(repo), "--env", "dev", "--port", "0",
             "--state-dir", str(state), "--format", "json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None and self.proc.stderr is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"mlp up exited: {self.proc.stderr.read()}")
        self.info = json.loads(line)
        self.err: list[str] = []
        threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True).start()  # type: ignore[arg-type]


@pytest.fixture
def up(repo: Path, tmp_path: Path) -> Iterator[Up]:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlp.cli.main",
            "features",
            "materialize",
            "--repo",
            str(repo),
            "--env",
            "dev",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["views"]["customer-stats"]["rows"] == 150
    proc = Up(repo, tmp_path / "state")
    yield proc
    proc.proc.send_signal(signal.SIGINT)
    try:
        proc.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.proc.kill()


@pytest.mark.timeout(180)
def test_a_request_with_only_the_customer_id_gets_the_full_row_prediction(up: Up) -> None:
    from sklearn.datasets import load_iris

    x = load_iris().data.astype(np.float32).astype(float)
    url = up.info["url"]
    with client(url) as c:
        ids = [0, 60, 120, 149]
        by_id = c.post("/v1/models/churn:predict", json={"instances": [{"customer_id": i} for i in ids]})
        assert by_id.status_code == 200, by_id.text
        full = c.post("/v1/models/churn:predict", json={"instances": [x[i].tolist() for i in ids]})
        assert full.status_code == 200, full.text
        assert by_id.json() == full.json()
        assert len(set(by_id.json()["predictions"])) == 3  # the three species: real rows, not one default
        # a row that brings its own values keeps them (the request wins over the store)
        own = c.post(
            "/v1/models/churn:predict",
            json={"instances": [{"customer_id": 0, **dict(zip(IRIS_INPUTS, x[149].tolist(), strict=True))}]},
        )
        assert own.json()["predictions"] == [full.json()["predictions"][-1]]
        missing = c.post("/v1/models/churn:predict", json={"instances": [{"customer_id": 999}]})
        assert missing.status_code == 404 and "customer-stats" in missing.json()["error"]
        wrong = c.post("/v1/models/churn:predict", json={"instances": [{"customer_id": "zero"}]})
        assert wrong.status_code == 400
        # online lookups: one, several, the batch form
        one = c.get("/v1/features/customer-stats", params={"entity": "60"})
        assert one.status_code == 200
        values = one.json()["results"][0]["values"]
        assert [values[n] for n in IRIS_INPUTS] == pytest.approx(x[60].tolist())
        several = c.get("/v1/features/customer-stats?entity=1&entity=999")
        assert [r["values"] is None for r in several.json()["results"]] == [False, True]
        batch = c.post("/v1/features/customer-stats", json={"entities": [2, 3]})
        assert [r["entity"] for r in batch.json()["results"]] == [2, 3]
        assert c.get("/v1/features/nope?entity=1").status_code == 404
        assert c.get("/v1/features/customer-stats?entity=x").status_code == 400
        assert c.post("/v1/features/customer-stats", json={"entities": list(range(1001))}).status_code == 400
        metrics = c.get("/metrics").text
        assert 'mlp_feature_freshness_seconds{view="customer-stats"}' in metrics
        fresh = float(metrics.split('mlp_feature_freshness_seconds{view="customer-stats"} ')[1].split()[0])
        assert 60 <= fresh < 3600


def test_the_router_factory_serves_the_same_routes(repo: Path) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from mlp.features.online import materialize
    from mlp.features.service import FeatureService, router
    from mlp.features.sources import resolve

    svc = FeatureService.for_environment(repo, "dev")
    specs_view = svc.views["customer-stats"].view
    materialize(resolve(specs_view, svc.entities, repo), svc.store, repo=repo)
    app = FastAPI()
    app.include_router(router(svc))
    with TestClient(app) as c:
        got = c.get("/v1/features/customer-stats", params={"entity": "5"})
        assert got.status_code == 200 and got.json()["results"][0]["values"] is not None
        assert c.post("/v1/features/customer-stats", json={"entities": [5]}).json()["results"][0]["entity"] == 5
        assert "customer-stats" in c.get("/v1/features").json()["views"]
