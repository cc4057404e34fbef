"""Hostile input against a real `mlp up` process (issue 11): templates, headers, connections, booleans."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_hostile_servers import check_header_bounds, check_silent_connections
from test_up_e2e import ROOT, ROW, UpProcess, _set_iris
from test_up_e2e import repo as repo

pytestmark = pytest.mark.timeout(180)

HOSTILE_LOOP = "{% for x in range(100000) %}{% for y in range(100000) %}{% endfor %}{% endfor %}\n"


@pytest.fixture
def up(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[UpProcess]:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import train_examples
    finally:
        sys.path.pop(0)
    assert train_examples.main([str(repo)]) == 0
    monkeypatch.setenv("MLP_RENDER_CPU_SECONDS", "2")
    monkeypatch.setenv("MLP_HTTP_HEADER_TIMEOUT", "1")
    monkeypatch.setenv("MLP_HTTP_MAX_CONNECTIONS", "64")
    proc = UpProcess(repo, tmp_path / "state")
    yield proc
    if proc.proc.poll() is None:
        proc.proc.kill()


def served_version(url: str) -> str:
    r = httpx.post(f"{url}/v1/models/iris:predict", json={"instances": [ROW]}, timeout=10)
    assert r.status_code == 200, r.text
    return r.headers["x-mlp-model-version"]


def test_hostile_template_does_not_stop_the_watcher(up: UpProcess, repo: Path) -> None:
    url = up.info["url"]
    package = ROOT / "mlp" / "render" / "templates" / "local" / "modeldeployment.yaml.j2"
    override = repo / "templates" / "local" / "modeldeployment.yaml.j2"
    override.parent.mkdir(parents=True, exist_ok=True)
    override.write_text(HOSTILE_LOOP + package.read_text())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any("render budget" in line for line in up.stderr):
        assert served_version(url)  # the last good state keeps serving meanwhile
        time.sleep(0.2)
    log = "".join(up.stderr)
    assert "templates/local/modeldeployment.yaml.j2" in log and "render budget" in log, log
    assert "Traceback" not in log
    # a later valid edit is applied: the watcher is alive
    override.unlink()
    _set_iris(repo, "      version: 2\n")
    deadline = time.monotonic() + 30
    versions: set[str] = set()
    while time.monotonic() < deadline:
        versions = {served_version(url) for _ in range(10)}
        if versions == {"2"}:
            break
        time.sleep(0.2)
    assert versions == {"2"}
    assert up.stop() == 0


def test_up_bounds_headers_and_connections_and_refuses_booleans(up: UpProcess) -> None:
    url = up.info["url"]
    host, port = url.removeprefix("http://").rsplit(":", 1)

    def normal() -> None:
        assert served_version(url) in {"1", "2"}

    check_header_bounds((host, int(port)), up.proc.pid, normal)
    check_silent_connections((host, int(port)), normal)
    # booleans are not numbers: v1 and v2 answer 400
    r = httpx.post(f"{url}/v1/models/iris:predict", json={"instances": [[True, False, True, False]]})
    assert r.status_code == 400 and "boolean" in r.text, r.text
    r = httpx.post(f"{url}/v1/models/iris:predict", json={"instances": [[6.8, True, 4.8, 1.4]]})
    assert r.status_code == 400 and "boolean" in r.text, r.text
    tensor = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [6.8, 2.8, True, 1.4]}
    r = httpx.post(f"{url}/v2/models/iris/infer", json={"inputs": [tensor]})
    assert r.status_code == 400 and "boolean" in r.text, r.text
    normal()
    assert up.stop() == 0
