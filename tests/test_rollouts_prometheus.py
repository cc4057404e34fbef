"""The PromQL provider against a real Prometheus (Debian's `prometheus`) scraping a real data plane."""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlp.rollouts.providers import LocalProvider, PrometheusProvider
from mlp.serving.app import DataPlane
from mlp.serving.runtime import Runtime
from mlp.serving.server import ServerThread
from mlp.serving.testing import client, deployment, route, train_faulty, train_iris
from mlp.specs.models import AnalysisCheck


def _binary() -> str | None:
    for candidate in (shutil.which("prometheus"), "/usr/bin/prometheus", "/usr/sbin/prometheus"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[tuple[Runtime, str]]:
    (p1, d1), (p3, d3) = train_iris(tmp_path / "1"), train_faulty(tmp_path / "3", fail_share=0.2)
    rt = Runtime(tmp_path / "state", payload_log=False)
    rt.apply(deployment("iris", [route(1, p1, d1, "stable", 70), route(3, p3, d3, "canary", 30)]))
    with ServerThread(DataPlane(rt)) as server:
        yield rt, server.url
    rt.close()


@contextlib.contextmanager
def run_prometheus(tmp_path: Path, scrape: str, series: str = "mlp_model_requests_total") -> Iterator[str]:
    """A real Prometheus scraping `scrape` (host:port) every second; yields its URL once `series` is in.
    Skips the test when the binary is absent."""
    binary = _binary()
    if binary is None:
        pytest.skip("prometheus is not installed (Debian package `prometheus`; .ci/setup.d/20-prometheus.sh)")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: mlp\n    static_configs: [{{targets: ['{scrape}']}}]\n"
    )
    port = _free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"{url}/api/v1/query", params={"query": series}, timeout=1)
                if r.status_code == 200 and r.json()["data"]["result"]:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("prometheus did not scrape the data plane within 30 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def prometheus(tmp_path: Path, plane: tuple[Runtime, str]) -> Iterator[str]:
    with run_prometheus(tmp_path, plane[1].removeprefix("http://")) as url:
        yield url


@pytest.mark.timeout(120)
def test_promql_error_rate_matches_the_local_counters(plane: tuple[Runtime, str], prometheus: str) -> None:
    rt, url = plane
    local = LocalProvider(rt)
    mark = local.mark("iris", ("1", "3"))
    started = time.time()
    rng = random.Random(3)
    with client(url) as c:
        for _ in range(600):
            row = [rng.uniform(4, 8), rng.uniform(2, 4), rng.uniform(1, 7), rng.uniform(0.1, 2.5)]
            c.post("/v1/models/iris:predict", json={"instances": [row]})
    time.sleep(3.5)  # three scrapes after the last request
    checks = [AnalysisCheck(metric="error-rate", max=0.05)]
    want = local.window("iris", "1", "3", mark, time.time() - started, checks)
    assert want.canary.requests > 100 and 0.1 < want.canary.error_rate < 0.3  # type: ignore[operator]
    prom = PrometheusProvider(prometheus)
    got = prom.window("iris", "1", "3", None, time.time() - started + 5, checks)
    assert got.error is None, got.error
    assert got.canary.requests > 0
    print(
        f"local {want.canary.errors}/{want.canary.requests} = {want.canary.error_rate:.4f}; "
        f"promql {got.canary.errors}/{got.canary.requests} = {got.canary.error_rate:.4f}"
    )
    # increase() extrapolates both counters alike; the rates agree within one point
    assert abs(got.canary.error_rate - want.canary.error_rate) <= 0.01, (got.canary, want.canary)  # type: ignore[operator]
    assert got.stable.errors == 0 and got.stable.requests > 0
    latency = [AnalysisCheck(metric="latency", percentile=99, max=1.0)]
    lat = prom.window("iris", "1", "3", None, time.time() - started + 5, latency)
    assert lat.custom["latency"] is not None and 0 < lat.custom["latency"] < 1.0
    prom.close()
