"""`mlp runs` and `mlp experiment runs` against a real `mlp tracking serve` process."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from trackingutil import REPO_ROOT, Server, tracking_server

from mlp.cli.main import cli

pytestmark = pytest.mark.timeout(180)
API = "/api/2.0/mlflow"


def _seed(url: str, experiment: str, runs: list[tuple[str, float, dict[str, str]]]) -> list[str]:
    exp = httpx.post(f"{url}{API}/experiments/create", json={"name": experiment}).json()["experiment_id"]
    ids = []
    for i, (name, acc, params) in enumerate(runs):
        run_id = httpx.post(
            f"{url}{API}/runs/create", json={"experiment_id": exp, "run_name": name, "start_time": 1000 + i}
        ).json()["run"]["info"]["run_id"]
        metrics = [{"key": "accuracy", "value": acc, "timestamp": 1, "step": 0}]
        metrics += [{"key": "loss", "value": 1 / (s + 1) + i, "timestamp": 1 + s, "step": s} for s in range(10)]
        r = httpx.post(
            f"{url}{API}/runs/log-batch",
            json={"run_id": run_id, "metrics": metrics, "params": [{"key": k, "value": v} for k, v in params.items()]},
        )
        assert r.status_code == 200, r.text
        httpx.post(f"{url}{API}/runs/update", json={"run_id": run_id, "status": "FINISHED", "end_time": 5000})
        ids.append(run_id)
    return ids


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with tracking_server(tmp_path / "tracking") as s:
        yield s


def _mlp(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    # JSON goes to stdout alone; progress and errors to stderr
    return result.exit_code, result.stdout if "json" in args and result.exit_code == 0 else result.output


def test_list_show_compare_and_plot(tmp_path: Path, server: Server) -> None:
    ids = _seed(server.url, "iris-tuning", [("a", 0.90, {"C": "1"}), ("b", 0.97, {"C": "10"}), ("c", 0.95, {"C": "3"})])
    code, out = _mlp(
        "runs",
        "list",
        "--tracking-uri",
        server.url,
        "--experiment",
        "iris-tuning",
        "--order-by",
        "metrics.accuracy DESC",
        "-o",
        "json",
    )
    assert code == 0, out
    assert [r["run_name"] for r in json.loads(out)] == ["b", "c", "a"]
    code, out = _mlp("runs", "list", "--tracking-uri", server.url, "--filter", "params.C = '3'")
    assert code == 0 and "c" in out.split() and ids[2] in out and ids[0] not in out

    code, out = _mlp("runs", "show", ids[1], "--tracking-uri", server.url, "-o", "json")
    shown = json.loads(out)
    assert shown["params"] == {"C": "10"} and shown["metrics"]["accuracy"] == 0.97 and shown["status"] == "FINISHED"

    code, out = _mlp("runs", "compare", *ids, "--tracking-uri", server.url, "-o", "json")
    assert json.loads(out)["metrics"]["accuracy"] == [0.90, 0.97, 0.95]
    code, out = _mlp("runs", "compare", ids[0], ids[1], "--tracking-uri", server.url)
    assert "* params.C" in out and "* metrics.accuracy" in out

    png, page = tmp_path / "loss.png", tmp_path / "loss.html"
    assert (
        _mlp("runs", "plot", ids[0], ids[1], "--metric", "loss", "--out", str(png), "--tracking-uri", server.url)[0]
        == 0
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert _mlp("runs", "plot", ids[0], "--metric", "loss", "--out", str(page), "--tracking-uri", server.url)[0] == 0
    text = page.read_text()
    assert "<svg" in text and "<script" not in text

    code, out = _mlp("runs", "show", "0" * 32, "--tracking-uri", server.url)
    assert code == 2 and "RESOURCE_DOES_NOT_EXIST" in out and "Traceback" not in out
    code, out = _mlp("runs", "plot", ids[0], "--metric", "nope", "--out", str(png), "--tracking-uri", server.url)
    assert code == 2 and "no metric 'nope'" in out


def test_experiment_runs_ranks_against_the_baseline(tmp_path: Path, server: Server) -> None:
    repo = tmp_path / "platform"
    for folder in ("specs", "environments"):
        shutil.copytree(REPO_ROOT / folder, repo / folder)
    spec = repo / "specs" / "experiments" / "iris-tuning.yaml"
    spec.write_text(
        spec.read_text().replace(
            "  dataset: sklearn.datasets.load_iris",
            "  dataset: sklearn.datasets.load_iris\n  mlflowExperiment: iris-lr\n  baseline: 2",
        )
    )
    assert _mlp("validate", str(repo))[0] == 0
    ids = _seed(server.url, "iris-lr", [("low", 0.90, {}), ("best", 0.99, {}), ("mid", 0.975, {})])
    code, out = _mlp(
        "experiment", "runs", "iris-tuning", "--repo", str(repo), "--tracking-uri", server.url, "-o", "json"
    )
    assert code == 0, out
    ranking = json.loads(out)
    assert ranking["baseline"] == {"version": 2, "value": 0.973}
    assert [(r["rank"], r["name"], r["beatsBaseline"]) for r in ranking["runs"]] == [
        (1, "best", True),
        (2, "mid", True),
        (3, "low", False),
    ]
    assert ranking["runs"][0]["run_id"] == ids[1] and ranking["runs"][2]["delta"] == pytest.approx(0.90 - 0.973)
    code, out = _mlp("experiment", "runs", "iris-tuning", "--repo", str(repo), "--tracking-uri", server.url)
    assert code == 0 and "beats baseline" in out
    # a baseline version the model does not have is a validation error
    spec.write_text(spec.read_text().replace("baseline: 2", "baseline: 9"))
    code, out = _mlp("validate", str(repo))
    assert code == 1 and "iris-tuning.yaml" in out and "no version 9" in out


def test_import_from_another_mlflow_protocol_server(tmp_path: Path, server: Server) -> None:
    with tracking_server(tmp_path / "source") as source:
        ids = _seed(source.url, "legacy", [("old-1", 0.8, {"C": "1"}), ("old-2", 0.85, {"C": "2"})])
        httpx.put(
            f"{source.url}/api/2.0/mlflow-artifacts/artifacts/1/{ids[0]}/artifacts/model/notes.txt", content=b"hello"
        )
        code, out = _mlp("runs", "import-mlflow", source.url, "--tracking-uri", server.url, "-o", "json")
        assert code == 0, out
        report = json.loads(out)
        assert report["imported"] == 2 and report["skipped"] == 0
        code, out = _mlp("runs", "import-mlflow", source.url, "--tracking-uri", server.url, "-o", "json")
        assert json.loads(out)["imported"] == 0 and json.loads(out)["skipped"] == 2
    new = report["runs"][ids[0]]
    run = httpx.get(f"{server.url}{API}/runs/get", params={"run_id": new}).json()["run"]
    assert (
        run["info"]["run_name"] == "old-1" and run["info"]["status"] == "FINISHED" and run["info"]["start_time"] == 1000
    )
    assert {"key": "C", "value": "1"} in run["data"]["params"]
    hist = httpx.get(f"{server.url}{API}/metrics/get-history", params={"run_id": new, "metric_key": "loss"}).json()[
        "metrics"
    ]
    assert [m["step"] for m in hist] == list(range(10))
    art = run["info"]["artifact_uri"].split(":", 1)[1].strip("/")
    assert httpx.get(f"{server.url}/api/2.0/mlflow-artifacts/artifacts/{art}/model/notes.txt").content == b"hello"
