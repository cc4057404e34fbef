"""Request ids, the feedback endpoint (FEEDBACK_CONTRACT.md), sticky A/B assignment, shadow
comparison and `mlp experiment report`, over real HTTP on loopback."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from mlp.cli.main import cli
from mlp.serving.app import DataPlane
from mlp.serving.feedback import read_feedback
from mlp.serving.runtime import Runtime
from mlp.serving.server import ServerThread
from mlp.serving.testing import client as http_client
from mlp.serving.testing import deployment, route, train_iris

ROW = [6.8, 2.8, 4.8, 1.4]


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Runtime, str]]:
    d = tmp_path_factory.mktemp("models")
    (p1, d1), (p2, d2) = train_iris(d / "1", 1.0), train_iris(d / "2", 0.01)
    rt = Runtime(tmp_path_factory.mktemp("state") / "up-dev")
    rt.apply(deployment("iris", [route(1, p1, d1, "stable", 50), route(2, p2, d2, "ab", 50)], sticky="x-mlp-key"))
    rt.apply(deployment("iris-shadow", [route(1, p1, d1, "stable", 100), route(2, p2, d2, "shadow", 100)]))
    with ServerThread(DataPlane(rt)) as server:
        yield rt, server.url
    rt.close()


@pytest.fixture
def client(plane: tuple[Runtime, str]) -> Iterator[httpx.Client]:
    with http_client(plane[1]) as c:
        yield c


def test_every_answer_carries_a_request_id_and_v2_echoes_the_given_one(client: httpx.Client) -> None:
    r1 = client.post("/v1/models/iris:predict", json={"instances": [ROW]})
    r2 = client.post("/v1/models/iris:predict", json={"instances": [ROW]})
    assert r1.status_code == r2.status_code == 200
    assert r1.headers["x-request-id"] and r1.headers["x-request-id"] != r2.headers["x-request-id"]
    body = {"id": "req-42", "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}
    r3 = client.post("/v2/models/iris/infer", json=body)
    assert r3.status_code == 200, r3.text
    assert r3.headers["x-request-id"] == "req-42" and r3.json()["id"] == "req-42"
    del body["id"]
    r4 = client.post("/v2/models/iris/infer", json=body)
    assert r4.json()["id"] == r4.headers["x-request-id"] != ""


def test_feedback_is_stored_per_version_and_unknown_ids_store_nothing(
    client: httpx.Client, plane: tuple[Runtime, str]
) -> None:
    rt = plane[0]
    answers = [client.post("/v1/models/iris:predict", json={"instances": [ROW]}) for _ in range(4)]
    ids = [(a.headers["x-request-id"], a.headers["x-mlp-model-version"]) for a in answers]
    before = read_feedback(rt.state_dir / "payloads", "iris").num_rows
    one = client.post("/v2/models/iris/feedback", json={"id": ids[0][0], "outcome": True})
    assert one.status_code == 200 and one.json() == {"stored": 1}
    batch = client.post("/v2/models/iris/feedback", json={"feedback": [{"id": i, "outcome": 0.5} for i, _ in ids[1:]]})
    assert batch.json() == {"stored": 3}
    # an unknown id: 404 problem JSON, and the batch it sits in stores nothing
    bad = client.post(
        "/v2/models/iris/feedback", json={"feedback": [{"id": ids[0][0], "outcome": 1}, {"id": "nope", "outcome": 1}]}
    )
    assert bad.status_code == 404
    assert bad.headers["content-type"] == "application/problem+json"
    assert bad.json()["status"] == 404 and "nope" in bad.json()["detail"]
    # an id answered by another model is unknown to this one
    other = client.post("/v1/models/iris-shadow:predict", json={"instances": [ROW]}).headers["x-request-id"]
    assert client.post("/v2/models/iris/feedback", json={"id": other, "outcome": 1}).status_code == 404
    for payload in ({"id": ids[0][0]}, {"id": ids[0][0], "outcome": "yes"}, {"feedback": "x"}, [1, 2]):
        assert client.post("/v2/models/iris/feedback", json=payload).status_code == 400, payload
    table = read_feedback(rt.state_dir / "payloads", "iris")
    assert table.num_rows - before == 4
    assert table.column_names == ["ts", "request_id", "version", "outcome"]
    rows = table.to_pylist()[-4:]
    assert [(r["request_id"], r["version"]) for r in rows] == ids
    assert [r["outcome"] for r in rows] == [1.0, 0.5, 0.5, 0.5]
    assert not list((rt.state_dir / "payloads" / "iris" / "_feedback").glob(".*"))  # nothing left open


def test_feedback_body_is_bounded(client: httpx.Client) -> None:
    big = {"feedback": [{"id": f"x{i}", "outcome": 1} for i in range(400_000)]}
    assert client.post("/v2/models/iris/feedback", json=big).status_code == 413


def test_ab_assignment_is_sticky_per_key(client: httpx.Client) -> None:
    seen: dict[str, set[str]] = {}
    for i in range(40):
        key = f"user-{i % 10}"
        r = client.post("/v1/models/iris:predict", json={"instances": [ROW]}, headers={"x-mlp-key": key})
        seen.setdefault(key, set()).add(r.headers["x-mlp-model-version"])
    assert all(len(v) == 1 for v in seen.values())
    assert {v for s in seen.values() for v in s} == {"1", "2"}


def test_shadow_answers_are_never_served_and_are_compared(client: httpx.Client, plane: tuple[Runtime, str]) -> None:
    rt = plane[0]
    shadow = rt.models["iris-shadow"].versions["2"].metrics
    start = shadow.shadow_compared
    for _ in range(30):
        r = client.post("/v1/models/iris-shadow:predict", json={"instances": [ROW]})
        assert r.headers["x-mlp-model-version"] == "1"
    deadline = time.monotonic() + 5
    while shadow.shadow_compared < start + 30 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert shadow.shadow_compared == start + 30
    # v2 (C=0.01) and v1 (C=1) disagree on this row: the comparison sees it
    assert shadow.shadow_agreed < shadow.shadow_compared


def test_experiment_report_from_posted_feedback(tmp_path: Path) -> None:
    (p1, d1), (p2, d2) = train_iris(tmp_path / "m1", 1.0), train_iris(tmp_path / "m2", 0.01)
    rt = Runtime(tmp_path / "state")
    rt.apply(deployment("iris", [route(1, p1, d1, "stable", 50), route(2, p2, d2, "ab", 50)], sticky="x-mlp-key"))
    server = ServerThread(DataPlane(rt)).start()
    url = server.url
    repo = tmp_path / "platform"
    (repo / "specs").mkdir(parents=True)
    (repo / "environments").mkdir()
    digest = "sha256:" + "0" * 64
    (repo / "specs" / "iris.yaml").write_text(
        "apiVersion: mlp.dev/v1\nkind: Model\nmetadata: {name: iris}\nspec:\n  framework: sklearn\n"
        "  signature:\n    inputs: [{name: a, type: float}]\n    outputs: [{name: y, type: int}]\n  versions:\n"
        f"    - {{version: 1, uri: 'file:///m/1', digest: '{digest}'}}\n"
        f"    - {{version: 2, uri: 'file:///m/2', digest: '{digest}'}}\n"
        "---\napiVersion: mlp.dev/v1\nkind: Experiment\nmetadata: {name: iris-ab}\n"
        "spec: {model: iris, objective: {metric: conversion}}\n"
    )
    (repo / "environments" / "dev.yaml").write_text(
        "apiVersion: mlp.dev/v1\nkind: Environment\nmetadata: {name: dev}\nspec:\n  target: {kind: local}\n"
        "  deployments:\n    iris: {version: 1, abTest: {version: 2, share: 50}}\n"
    )
    runner = CliRunner()
    args = ["experiment", "report", "iris-ab", "--repo", str(repo), "--state-dir", str(rt.state_dir)]
    with http_client(url) as c:
        for i in range(400):
            r = c.post("/v1/models/iris:predict", json={"instances": [ROW]}, headers={"x-mlp-key": f"u{i}"})
            version = r.headers["x-mlp-model-version"]
            # the variant converts far more often: 60% vs 30%, deterministic per user
            outcome = (i * 7919) % 100 < (60 if version == "2" else 30)
            c.post("/v2/models/iris/feedback", json={"id": r.headers["x-request-id"], "outcome": outcome})
    res = runner.invoke(cli, [*args, "-o", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["test"] == "two-proportion" and data["control"] == 1 and data["variant"] == 2
    assert data["n_control"] + data["n_variant"] >= 400
    assert 0.15 < data["effect"] < 0.45 and data["ci_low"] > 0 and data["p_value"] < 0.05
    assert data["recommendation"].startswith("ship the variant")
    md = runner.invoke(cli, [*args, "-o", "markdown"])
    assert md.exit_code == 0 and "| p-value (safe to peek) |" in md.output
    missing = runner.invoke(cli, ["experiment", "report", "nope", "--repo", str(repo)])
    assert missing.exit_code == 2 and "no Experiment 'nope'" in missing.output
    server.stop()
    rt.close()
