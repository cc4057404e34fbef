"""The Grafana dashboard in deploy/grafana parses, and every metric it queries is in a real scrape.

Three real scrapes: the embedded runtime's `/metrics` after predictions, the controller's
metrics server after a real reconcile of the example repository, and `mlp monitor run`'s
series after a tested window.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from mlp.serving.app import DataPlane
from mlp.serving.runtime import Runtime
from mlp.serving.server import ServerThread
from mlp.serving.testing import client, deployment, route, train_iris

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "mlp-dashboard.json"
METRIC = re.compile(r"\b(mlp_[a-z0-9_]+)\b")


def exposed(text: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def queried() -> set[str]:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["panels"] and dash["uid"]
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert all(exprs)
    return {m for e in exprs for m in METRIC.findall(e)}


def test_dashboard_parses_and_covers_the_system() -> None:
    names = queried()
    for needed in ("mlp_model_loaded", "mlp_model_requests_total", "mlp_model_request_duration_seconds_bucket"):
        assert needed in names
    assert any(n.startswith("mlp_monitor_feature") for n in names)
    assert any(n.startswith("mlp_controller_") for n in names)


@pytest.mark.timeout(180)
def test_every_metric_the_dashboard_queries_is_emitted(tmp_path: Path) -> None:
    pytest.importorskip("alibi_detect", reason="alibi-detect (the `monitors` extra) is not installed")
    import urllib.request

    from mlp.controller.metrics import serve_metrics
    from mlp.monitors.runner import MonitorMetrics, MonitorRunner
    from mlp.serving.artifacts import ArtifactStore
    from tests.monitor_helpers import iris, monitor_config, write_payloads, write_reference
    from tests.test_controller import Rig, make_platform_repo

    seen: set[str] = set()
    # 1. serving: real predictions, one of them a client error, a real scrape
    path, digest = train_iris(tmp_path / "m")
    rt = Runtime(tmp_path / "state")
    rt.apply(deployment("iris", [route(1, path, digest)]))
    try:
        with ServerThread(DataPlane(rt, max_body_bytes=1 << 20)) as server, client(server.url) as c:
            assert c.post("/v1/models/iris:predict", json={"instances": [[6.8, 2.8, 4.8, 1.4]]}).status_code == 200
            assert c.post("/v1/models/iris:predict", json={"instances": [[1.0]]}).status_code == 400
            seen |= exposed(c.get("/metrics").text)
    finally:
        rt.close()
    # 2. the controller after a real reconcile
    rig = Rig(make_platform_repo(tmp_path / "platform"), tmp_path / "ctl")
    rig.step("staging")
    server, port = serve_metrics(rig.metrics, 0)
    try:
        seen |= exposed(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())
    finally:
        server.shutdown()
    # 3. a monitor after a tested window with labels
    x, y = iris()
    ref = write_reference(tmp_path / "ref", x, y)
    config = monitor_config(ref, window=150, performance=[{"metric": "accuracy", "tolerance": 0.1, "minLabels": 50}])
    ids = [f"r{i}" for i in range(150)]
    write_payloads(tmp_path / "log", x, prediction=y.astype(float), request_ids=ids)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"request_id": ids, "outcome": y.astype(float)}), tmp_path / "labels.parquet")
    metrics = MonitorMetrics()
    runner = MonitorRunner(
        config,
        log_root=str(tmp_path / "log"),
        state_dir=tmp_path / "mon",
        fetch=ArtifactStore(tmp_path / "cache").fetch,
        metrics=metrics,
        labels=str(tmp_path / "labels.parquet"),
    )
    runner.prepare()
    assert runner.check()[0].metrics["accuracy"]["value"] == pytest.approx(1.0)
    seen |= exposed(generate_latest(metrics.registry).decode())
    missing = sorted(queried() - seen)
    assert not missing, f"the dashboard queries metrics nothing emits: {missing}"
