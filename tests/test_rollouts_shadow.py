"""`mlp rollout shadow-report`: a real data plane mirrors every request to a shadow version; the
report pairs both answers from the payload log (agreement, distribution shift) and reads both
versions' latency from the data plane's /metrics."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_iris
from test_rollouts_e2e import write_platform

from mlp.serving.app import DataPlane
from mlp.serving.runtime import Runtime
from mlp.serving.server import ServerThread
from mlp.serving.testing import client, deployment, route, train_faulty, train_iris

ENV = """\
apiVersion: mlp.dev/v1
kind: Environment
metadata: {name: dev}
spec:
  target: {kind: local}
  deployments:
    iris: {version: 1, shadow: {version: 2}}
"""


def platform(tmp_path: Path, artifacts: dict[int, tuple[Path, str]]) -> Path:
    return write_platform(tmp_path / "platform", artifacts, ENV)


def run_report(repo: Path, state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "mlp.cli.main", "rollout", "shadow-report", "dev", "iris"]
    cmd += ["--repo", str(repo), "--state-dir", str(state), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("shadow", ["always-setosa", "same-model"])
@pytest.mark.timeout(120)
def test_shadow_report_gives_agreement_shift_and_latency(tmp_path: Path, shadow: str) -> None:
    p1, d1 = train_iris(tmp_path / "1")
    p2, d2 = train_faulty(tmp_path / "2", constant=0) if shadow == "always-setosa" else train_iris(tmp_path / "2")
    repo = platform(tmp_path, {1: (p1, d1), 2: (p2, d2)})
    state = tmp_path / "state"
    assert run_report(repo, state).returncode == 1  # nothing mirrored yet: "found nothing", not an error
    rt = Runtime(state)
    rt.apply(deployment("iris", [route(1, p1, d1, "stable", 100), route(2, p2, d2, "shadow", 100)], payload_rate=1.0))
    x, _ = load_iris(return_X_y=True)
    served = []
    with ServerThread(DataPlane(rt)) as server, client(server.url) as c:
        for row in x:
            r = c.post("/v1/models/iris:predict", json={"instances": [row.tolist()]})
            assert r.status_code == 200
            served.append(r.json()["predictions"][0])
        shadow_metrics = rt.models["iris"].versions["2"].metrics
        deadline = time.monotonic() + 30
        while shadow_metrics.shadow_compared < len(x) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rt.payloads is not None
        rt.payloads.close()  # rolls the open files into place (the report reads closed files only)
        res = run_report(repo, state, "--metrics-url", f"{server.url}/metrics", "-o", "json")
    rt.close()
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    want_agreement = float(np.mean(np.asarray(served) == 0)) if shadow == "always-setosa" else 1.0
    assert got["paired"] == len(x) and got["primary_rows"] == len(x) and got["shadow_rows"] == len(x)
    assert got["agreement"] == pytest.approx(want_agreement)
    if shadow == "always-setosa":
        assert got["shift_pvalue"] < 1e-6 and got["mean_shadow"] == 0
    else:
        assert got["shift_pvalue"] == pytest.approx(1.0)
    for version in ("1", "2"):
        lat = got["latency"][version]
        assert lat["count"] == len(x) and 0 < lat["p50"] <= lat["p99"] < 10
    text = run_report(repo, state, "-o", "markdown")
    assert text.returncode == 0 and "| agreement |" in text.stdout
    missing = run_report(repo, state, "--metrics-url", "http://127.0.0.1:9/metrics")
    assert missing.returncode == 2 and "--metrics-url" in missing.stderr and "Traceback" not in missing.stderr
