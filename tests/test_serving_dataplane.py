"""The data plane over real HTTP on loopback: OIP/v1 shapes, bad requests, split, shadow, metrics, payloads."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from mlp.serving.app import DataPlane
from mlp.serving.runtime import Runtime
from mlp.serving.server import ServerThread
from mlp.serving.testing import client as http_client
from mlp.serving.testing import deployment, route, train_iris

try:
    import kserve
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

    class SpecExampleModel(kserve.Model):
        """A custom KServe model, unchanged: answers the OIP spec example; v1 sums each row."""

        def load(self) -> bool:
            self.ready = True
            return True

        async def predict(self, payload: Any, headers: Any = None, response_headers: Any = None) -> Any:
            if isinstance(payload, InferRequest):
                assert payload.inputs[0].datatype == "UINT32"
                assert payload.inputs[0].as_numpy().shape == (2, 2)
                out = InferOutput(name="output0", shape=[3, 2], datatype="FP32", data=[1.0, 1.1, 2.0, 2.1, 3.0, 3.1])
                return InferResponse(response_id=payload.id, model_name=self.name, infer_outputs=[out])
            return {"predictions": [sum(row) for row in payload["instances"]]}

    class SyncSlowModel(kserve.Model):
        """A sync predict (also allowed by KServe) that takes a while: used to fill the server."""

        def load(self) -> bool:
            self.ready = True
            return True

        def predict(self, payload: Any, headers: Any = None, response_headers: Any = None) -> Any:
            return {"predictions": [len(payload["instances"])]}

        async def preprocess(self, payload: Any, headers: Any = None) -> Any:
            await asyncio.sleep(0.3)
            return payload
except ModuleNotFoundError:  # pragma: no cover - kserve is in the serve extras
    kserve = None

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "oip"
ROW = [6.8, 2.8, 4.8, 1.4]


@pytest.fixture(scope="module")
def iris_models(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[Path, str]]:
    d = tmp_path_factory.mktemp("models")
    return {1: train_iris(d / "1", 1.0), 2: train_iris(d / "2", 0.01)}


@pytest.fixture(scope="module")
def plane(
    tmp_path_factory: pytest.TempPathFactory, iris_models: dict[int, tuple[Path, str]]
) -> Iterator[tuple[Runtime, str]]:
    (p1, d1), (p2, d2) = iris_models[1], iris_models[2]
    rt = Runtime(tmp_path_factory.mktemp("state"))
    rt.apply(deployment("iris", [route(1, p1, d1, "stable", 90), route(2, p2, d2, "canary", 10)], payload_rate=1.0))
    rt.apply(deployment("sklearn-irisv2", [route(1, p1, d1)]))
    rt.apply(deployment("iris-ab", [route(1, p1, d1, "stable", 50), route(2, p2, d2, "ab", 50)], sticky="x-mlp-key"))
    rt.apply(deployment("iris-shadow", [route(1, p1, d1, "stable", 100), route(2, p2, d2, "shadow", 100)]))
    if kserve is not None:
        rt.apply(
            deployment(
                "mymodel",
                [{"version": 1, "role": "stable", "weight": 100}],
                framework="custom",
                model_class=f"{__name__}:SpecExampleModel",
            )
        )
    with ServerThread(DataPlane(rt, max_body_bytes=4 << 20)) as server:
        yield rt, server.url
    rt.close()


@pytest.fixture
def client(plane: tuple[Runtime, str]) -> Iterator[httpx.Client]:
    with http_client(plane[1]) as c:
        yield c


def _fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


# --- protocol shapes -------------------------------------------------------------------------


def test_v2_sklearn_fixture_request_and_response_shape(client: httpx.Client, iris_models: Any) -> None:
    import joblib

    request = _fixture("infer.sklearn-irisv2.request.json")
    expected = _fixture("infer.sklearn-irisv2.response.json")
    r = client.post("/v2/models/sklearn-irisv2/infer", json=request)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(expected) <= set(body)  # id, model_name, model_version, outputs
    assert body["model_name"] == "sklearn-irisv2" and body["model_version"] == "1"
    out, want = body["outputs"][0], expected["outputs"][0]
    assert set(want) - {"parameters"} <= set(out)
    assert out["shape"] == want["shape"] == [2]
    model = joblib.load(iris_models[1][0])
    assert out["data"] == model.predict(np.array(request["inputs"][0]["data"])).tolist()
    assert r.headers["x-mlp-model-version"] == "1"
    # version pinned in the path
    r = client.post("/v2/models/sklearn-irisv2/versions/1/infer", json=request)
    assert r.status_code == 200 and r.json()["model_version"] == "1"


@pytest.mark.skipif(kserve is None, reason="kserve not installed")
def test_v2_spec_example_through_a_custom_kserve_model(client: httpx.Client) -> None:
    request = _fixture("infer.spec-example.request.json")
    expected = _fixture("infer.spec-example.response.json")
    r = client.post("/v2/models/mymodel/infer", json=request)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == expected["id"] == "42"
    assert body["model_name"] == "mymodel"
    out, want = body["outputs"][0], expected["outputs"][0]
    assert (out["name"], out["shape"], out["datatype"]) == (want["name"], want["shape"], want["datatype"])
    assert out["data"] == pytest.approx(want["data"], rel=1e-6)  # FP32 on the wire, as KServe does
    r = client.post("/v1/models/mymodel:predict", json={"instances": [[1, 2], [3, 4]]})
    assert r.json() == {"predictions": [3, 7]}


def test_v1_predict_and_readiness_and_metadata(client: httpx.Client) -> None:
    r = client.post("/v1/models/sklearn-irisv2:predict", json={"instances": [ROW, [5.1, 3.5, 1.4, 0.2]]})
    assert r.status_code == 200
    assert r.json() == {"predictions": [1, 0]}
    named = {"instances": [dict(zip(["sepal_length", "sepal_width", "petal_length", "petal_width"], ROW, strict=True))]}
    assert client.post("/v1/models/sklearn-irisv2:predict", json=named).json() == {"predictions": [1]}
    assert client.get("/v1/models/iris").json() == {"name": "iris", "ready": True}
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2/models/iris/ready").status_code == 200
    assert client.get("/v2/models/iris/versions/2/ready").status_code == 200
    meta = client.get("/v2/models/iris").json()
    assert meta["name"] == "iris" and meta["versions"] == ["1", "2"] and meta["platform"] == "sklearn"
    assert [i["name"] for i in meta["inputs"]] == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    assert all(set(t) == {"name", "datatype", "shape"} for t in meta["inputs"] + meta["outputs"])
    assert client.get("/v2/models/iris/versions/2").json()["versions"] == ["2"]
    assert "iris" in client.get("/v1/models").json()["models"]
    # one v2 tensor per named input, each [rows]
    cols = [
        {"name": n, "shape": [1], "datatype": "FP64", "data": [v]}
        for n, v in zip(["sepal_length", "sepal_width", "petal_length", "petal_width"], ROW, strict=True)
    ]
    r = client.post("/v2/models/sklearn-irisv2/infer", json={"inputs": cols})
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [1]
    # the metadata announces the datatype infer answers with (signature type int: INT64)
    assert meta["outputs"][0]["datatype"] == r.json()["outputs"][0]["datatype"] == "INT64"


# --- bad requests ------------------------------------------------------------------------------

BAD: list[tuple[str, str, Any, int, str]] = [
    ("POST", "/v1/models/iris:predict", b"{not json", 400, "malformed JSON"),
    ("POST", "/v1/models/iris:predict", {"instances": [[1.0, 2.0, 3.0]]}, 400, "expected 4 features"),
    ("POST", "/v1/models/iris:predict", {"instances": [1.0, 2.0, 3.0, 4.0]}, 400, "2-D batch"),
    ("POST", "/v1/models/iris:predict", {"instances": [[1, 2, 3, 4], [1, 2]]}, 400, "ragged"),
    ("POST", "/v1/models/iris:predict", {"instances": [["a", "b", "c", "d"]]}, 400, "expected numbers"),
    ("POST", "/v1/models/iris:predict", {"instances": []}, 400, "empty"),
    ("POST", "/v1/models/iris:predict", {"rows": [[1, 2, 3, 4]]}, 400, "instances"),
    ("POST", "/v1/models/iris:predict", [1, 2], 400, "JSON object"),
    ("POST", "/v1/models/iris:predict", {"instances": [[1, 2, 3, float("nan")]]}, 400, "JSON"),
    (
        "POST",
        "/v2/models/iris/infer",
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "BYTES", "data": ["a", "b", "c", "d"]}]},
        400,
        "BYTES",
    ),
    (
        "POST",
        "/v2/models/iris/infer",
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP99", "data": [1, 2, 3, 4]}]},
        400,
        "datatype",
    ),
    (
        "POST",
        "/v2/models/iris/infer",
        {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
        400,
        "shape",
    ),
    (
        "POST",
        "/v2/models/iris/infer",
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ["1", "2", "3", "x"]}]},
        400,
        "strings",
    ),
    (
        "POST",
        "/v2/models/iris/infer",
        {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]},
        400,
        "expected 4 features",
    ),
    (
        "POST",
        "/v2/models/iris/infer",
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "INT8", "data": [1, 2, 3, 999]}]},
        400,
        "INT8",
    ),
    ("POST", "/v2/models/iris/infer", {"inputs": []}, 400, "inputs"),
    ("POST", "/v2/models/nope/infer", {"inputs": []}, 404, "not deployed"),
    ("POST", "/v1/models/nope:predict", {"instances": [ROW]}, 404, "not deployed"),
    ("POST", "/v2/models/iris/versions/7/infer", {"inputs": []}, 404, "no loaded version"),
    ("GET", "/v1/models/iris:predict", None, 405, "POST"),
    ("GET", "/nowhere", None, 404, "no route"),
    ("POST", "/v1/models/iris:explain", {"instances": [ROW]}, 404, "not served"),
    ("GET", "/v2/models/iris/infer", None, 405, "POST"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), BAD, ids=[f"{b[1]}-{b[4]}" for b in BAD])
def test_bad_requests_get_4xx_with_a_clear_message(
    client: httpx.Client, method: str, path: str, body: Any, status: int, message: str
) -> None:
    if body is None:
        r = client.request(method, path)
    elif isinstance(body, bytes):
        r = client.request(method, path, content=body)
    else:
        r = client.request(method, path, content=json.dumps(body).encode())
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    # and the server keeps serving
    assert client.post("/v1/models/sklearn-irisv2:predict", json={"instances": [ROW]}).status_code == 200


def test_ten_megabyte_body_is_refused_with_413_and_server_keeps_serving(client: httpx.Client) -> None:
    big = b'{"instances": [' + b"[1,2,3,4]," * (1 << 20) + b"[1,2,3,4]]}"
    assert len(big) > 10_000_000
    t0 = time.monotonic()
    r = client.post("/v1/models/iris:predict", content=big)
    assert r.status_code == 413
    assert "exceeds" in r.json()["error"]
    assert time.monotonic() - t0 < 5

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused while streaming
        yield b'{"instances": ['
        for _ in range(1200):
            yield b"[1,2,3,4]," * 1000

    with httpx.Client(base_url=str(client.base_url), timeout=10) as fresh:
        r = fresh.post("/v1/models/iris:predict", content=chunks())
        assert r.status_code == 413
    assert client.post("/v1/models/sklearn-irisv2:predict", json={"instances": [ROW]}).status_code == 200


# --- traffic ------------------------------------------------------------------------------------


def test_http_canary_split_and_version_header(plane: tuple[Runtime, str]) -> None:
    url = plane[1]
    n = 10_000

    def one(_: int) -> str:
        with http_client(url) as c:
            out = []
            for _ in range(n // 8):
                r = c.post("/v1/models/iris:predict", json={"instances": [ROW]})
                assert r.status_code == 200
                out.append(r.headers["x-mlp-model-version"] + "/" + r.headers["x-mlp-route"])
            return ",".join(out)

    with ThreadPoolExecutor(8) as pool:
        seen = Counter(",".join(pool.map(one, range(8))).split(","))
    assert set(seen) == {"1/stable", "2/canary"}
    share = 100 * seen["2/canary"] / n
    assert abs(share - 10) <= 1.0, seen


def test_http_sticky_ab_keeps_each_key_on_one_version(client: httpx.Client) -> None:
    keys = [uuid.uuid4().hex for _ in range(40)]
    first = {}
    for k in keys:
        r = client.post("/v1/models/iris-ab:predict", json={"instances": [ROW]}, headers={"x-mlp-key": k})
        first[k] = r.headers["x-mlp-model-version"]
    assert set(first.values()) == {"1", "2"}
    for _ in range(3):
        for k in keys:
            r = client.post("/v1/models/iris-ab:predict", json={"instances": [ROW]}, headers={"x-mlp-key": k})
            assert r.headers["x-mlp-model-version"] == first[k]


def test_shadow_is_mirrored_but_never_answers(plane: tuple[Runtime, str], client: httpx.Client) -> None:
    rt = plane[0]
    before = rt.metrics.shadow.labels("iris-shadow", "2")._value.get()
    for _ in range(20):
        r = client.post("/v1/models/iris-shadow:predict", json={"instances": [ROW]})
        assert r.headers["x-mlp-model-version"] == "1"
    deadline = time.monotonic() + 5
    while rt.metrics.shadow.labels("iris-shadow", "2")._value.get() - before < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert rt.metrics.shadow.labels("iris-shadow", "2")._value.get() - before == 20
    text = client.get("/metrics").text
    assert 'mlp_model_requests_total{code="200",model="iris-shadow",version="2"}' in text


def test_metrics_per_model_and_version(client: httpx.Client) -> None:
    client.post("/v1/models/iris:predict", json={"instances": [ROW]})
    client.post("/v1/models/iris:predict", json={"instances": [[1.0]]})
    text = client.get("/metrics").text
    assert "_created" not in text  # prometheus_client's creation-time series are off
    for needle in (
        'mlp_model_requests_total{code="200",model="iris",version="1"}',
        'mlp_model_requests_total{code="400",model="iris",version=',
        'mlp_model_request_duration_seconds_bucket{le="0.005",model="iris",version="1"}',
        'mlp_model_batch_size_bucket{le="1.0",model="iris",version="1"}',
        'mlp_model_errors_total{kind="input",model="iris",version=',
        'mlp_model_loaded{model="iris",role="canary",version="2"} 1.0',
    ):
        assert needle in text, needle


def test_payload_log_writes_parquet_off_the_request_path(plane: tuple[Runtime, str], client: httpx.Client) -> None:
    import pyarrow.parquet as pq

    rt = plane[0]
    for _ in range(10):
        assert client.post("/v1/models/iris:predict", json={"instances": [ROW, ROW]}).status_code == 200
    assert rt.payloads is not None
    rt.payloads.flush()
    files = sorted((rt.state_dir / "payloads" / "iris").rglob("*.parquet"))
    assert files
    table = pq.ParquetDataset([str(f) for f in files]).read()
    assert {"ts", "model", "version", "sepal_length", "petal_width", "species"} <= set(table.column_names)
    assert table.num_rows >= 20
    assert set(table.column("model").to_pylist()) == {"iris"}


def test_batch_job_endpoint(plane: tuple[Runtime, str], client: httpx.Client) -> None:
    rt = plane[0]
    batch_dir = rt.state_dir / "batch"
    batch_dir.mkdir(exist_ok=True)
    (batch_dir / "in.csv").write_text("sepal_length,sepal_width,petal_length,petal_width\n" + "6.8,2.8,4.8,1.4\n" * 500)
    r = client.post("/v1/batch/jobs", json={"model": "iris", "input": "in.csv", "output": "out.jsonl"})
    assert r.status_code == 202, r.text
    job = r.json()
    deadline = time.monotonic() + 10
    while job["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
        job = client.get(f"/v1/batch/jobs/{job['id']}").json()
    assert job["state"] == "succeeded" and job["rows"] == 500 and job["version"] == "1"
    lines = (batch_dir / "out.jsonl").read_text().splitlines()
    assert len(lines) == 500 and json.loads(lines[0])["species"] == 1
    r = client.post("/v1/batch/jobs", json={"model": "iris", "input": "../../etc/passwd.csv", "output": "o.csv"})
    assert r.status_code == 400 and "leaves the batch folder" in r.json()["error"]
    assert client.get("/v1/batch/jobs/nope").status_code == 404


@pytest.mark.skipif(kserve is None, reason="kserve not installed")
@pytest.mark.timeout(60)
def test_overload_gives_503_with_retry_after_and_recovers(tmp_path: Path) -> None:
    rt = Runtime(tmp_path / "state", payload_log=False)
    rt.apply(
        deployment(
            "slow",
            [{"version": 1, "role": "stable", "weight": 100}],
            framework="custom",
            model_class=f"{__name__}:SyncSlowModel",
        )
    )
    with ServerThread(DataPlane(rt, max_inflight=2)) as server:

        def one(_: int) -> httpx.Response:
            with httpx.Client(base_url=server.url, timeout=10) as c:
                return c.post("/v1/models/slow:predict", json={"instances": [[1]]})

        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(one, range(8)))
        codes = Counter(r.status_code for r in responses)
        assert codes[200] >= 2 and codes[503] >= 1, codes
        assert all(r.headers.get("retry-after") == "1" for r in responses if r.status_code == 503)
        assert one(0).status_code == 200
    rt.close()


def test_readiness_is_503_until_every_model_loads_and_liveness_stays_200(
    tmp_path: Path, iris_models: dict[int, tuple[Path, str]]
) -> None:
    from mlp.serving.runtime import DeploymentError

    (p1, d1), (p2, _) = iris_models[1], iris_models[2]
    rt = Runtime(tmp_path / "state", payload_log=False)  # its own artifact cache: nothing cached by digest
    with ServerThread(DataPlane(rt)) as server, http_client(server.url) as c:
        # nothing loaded yet: alive, not ready
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/health/ready").status_code == 503
        rt.apply(deployment("good", [route(1, p1, d1)]))
        assert c.get("/v2/health/ready").status_code == 200
        # a model whose artifact does not match its digest never loads: the server is not ready
        with pytest.raises(DeploymentError):
            rt.apply(deployment("broken", [route(1, p2, "sha256:" + "0" * 64)]))
        ready = c.get("/v2/health/ready")
        assert ready.status_code == 503 and ready.json() == {"ready": False}
        assert c.get("/v2/health/live").status_code == 200
        broken = c.get("/v2/models/broken/ready")
        assert (
            broken.status_code == 503
            and broken.json()["ready"] is False
            and "sha256 mismatch" in broken.json()["error"]
        )
        assert c.get("/v2/models/good/ready").status_code == 200
        assert c.post("/v1/models/good:predict", json={"instances": [ROW]}).status_code == 200
        # fixed (or removed): ready again
        rt.apply(deployment("broken", [route(1, p1, d1)]))
        assert c.get("/v2/health/ready").status_code == 200
        assert c.get("/v2/models/broken/ready").status_code == 200
    rt.close()
