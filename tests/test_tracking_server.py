"""mlp's tracking server under bad input, concurrency and a crash: real HTTP to a real process."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from trackingutil import client_env, start_server, tracking_server

pytestmark = pytest.mark.timeout(300)
API = "/api/2.0/mlflow"
ART = "/api/2.0/mlflow-artifacts/artifacts"


def _run(url: str) -> str:
    r = httpx.post(f"{url}{API}/runs/create", json={"experiment_id": "0", "run_name": "r"})
    assert r.status_code == 200, r.text
    return str(r.json()["run"]["info"]["run_id"])


def test_unknown_run_has_mlflows_error_shape_and_code(tmp_path: Path) -> None:
    with tracking_server(tmp_path / "s") as server:
        missing = "f" * 32
        r = httpx.get(f"{server.url}{API}/runs/get", params={"run_id": missing})
        assert r.status_code == 404
        assert r.json() == {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"Run with id={missing} not found"}
        r = httpx.post(
            f"{server.url}{API}/runs/log-batch",
            json={"run_id": missing, "metrics": [{"key": "a", "value": 1, "timestamp": 1}]},
        )
        assert (r.status_code, r.json()["error_code"]) == (404, "RESOURCE_DOES_NOT_EXIST")
        r = httpx.get(f"{server.url}{API}/experiments/get", params={"experiment_id": "4242"})
        assert (r.status_code, r.json()["error_code"]) == (404, "RESOURCE_DOES_NOT_EXIST")
        r = httpx.post(f"{server.url}{API}/runs/log-metric", json={"run_id": _run(server.url), "key": "a"})
        assert (r.status_code, r.json()["error_code"]) == (400, "INVALID_PARAMETER_VALUE")
        r = httpx.post(f"{server.url}{API}/runs/log-batch", content=b"{not json")
        assert (r.status_code, r.json()["error_code"]) == (400, "MALFORMED_REQUEST")
        r = httpx.get(f"{server.url}{API}/no/such/endpoint")
        assert (r.status_code, r.json()["error_code"]) == (404, "ENDPOINT_NOT_FOUND")


def test_nan_and_infinity_are_stored_as_mlflow_does(tmp_path: Path) -> None:
    with tracking_server(tmp_path / "s") as server:
        run = _run(server.url)
        body = (
            b'{"run_id": "%s", "metrics": [{"key": "n", "value": NaN, "timestamp": 1, "step": 0}, {"key": "i", "value": "Infinity", "timestamp": 1, "step": 0}, {"key": "m", "value": "-Infinity", "timestamp": 1, "step": 0}]}'
            % run.encode()
        )
        assert httpx.post(f"{server.url}{API}/runs/log-batch", content=body).status_code == 200
        metrics = {
            m["key"]: m["value"]
            for m in httpx.get(f"{server.url}{API}/runs/get", params={"run_id": run}).json()["run"]["data"]["metrics"]
        }
        assert metrics == {"n": "NaN", "i": 1.7976931348623157e308, "m": -1.7976931348623157e308}
        r = httpx.post(
            f"{server.url}{API}/runs/log-metric", json={"run_id": run, "key": "x", "value": "banana", "timestamp": 1}
        )
        assert (r.status_code, r.json()["error_code"]) == (400, "INVALID_PARAMETER_VALUE")


@pytest.mark.parametrize(
    "path",
    [
        "../../etc/passwd",
        "0/run/artifacts/../../../../outside.txt",
        "%2e%2e/%2e%2e/outside.txt",
        "0/run/artifacts/..%2f..%2f..%2foutside.txt",
        "0/run/artifacts/a\\..\\..\\outside.txt",
    ],
)
def test_artifact_path_traversal_is_refused(tmp_path: Path, path: str) -> None:
    with tracking_server(tmp_path / "s") as server, httpx.Client(base_url=server.url) as http:
        # a raw request line: httpx would otherwise normalise the dots away before sending
        put = http.build_request("PUT", f"{ART}/x", content=b"evil")
        put.url = put.url.copy_with(raw_path=f"{ART}/{path}".encode())
        r = http.send(put)
        assert r.status_code in (400, 404), r.text
        get = http.build_request("GET", f"{ART}/x")
        get.url = get.url.copy_with(raw_path=f"{ART}/{path}".encode())
        assert http.send(get).status_code in (400, 404)
        r = http.get(ART, params={"path": "../.."})
        assert (r.status_code, r.json()["error_code"]) == (400, "INVALID_PARAMETER_VALUE")
    assert not list(tmp_path.rglob("outside.txt"))
    assert not (tmp_path / "s").parent.joinpath("outside.txt").exists()


def test_100_mb_artifact_streams_with_bounded_memory(tmp_path: Path) -> None:
    size = 100 * 1024 * 1024
    chunk = os.urandom(1024 * 1024)

    def body() -> object:
        for _ in range(size // len(chunk)):
            yield chunk

    with tracking_server(tmp_path / "s") as server:
        httpx.get(f"{server.url}{ART}", params={"path": ""})
        before = server.rss_peak_kib()
        r = httpx.put(f"{server.url}{ART}/0/big/artifacts/blob.bin", content=body(), timeout=120)
        assert r.status_code == 200, r.text
        received = 0
        with httpx.stream("GET", f"{server.url}{ART}/0/big/artifacts/blob.bin", timeout=120) as resp:
            assert resp.status_code == 200
            for part in resp.iter_bytes():
                received += len(part)
        grown_mib = (server.rss_peak_kib() - before) / 1024
    assert received == size
    assert (tmp_path / "s" / "artifacts" / "0" / "big" / "artifacts" / "blob.bin").stat().st_size == size
    # the server's peak resident memory grew by far less than the file: it streamed
    assert grown_mib < 40, f"server peak RSS grew by {grown_mib:.0f} MiB for a 100 MiB artifact"


def test_artifact_limit_refuses_and_keeps_nothing(tmp_path: Path) -> None:
    with tracking_server(tmp_path / "s", "--max-artifact-mb", "1") as server:
        r = httpx.put(f"{server.url}{ART}/0/r/artifacts/big.bin", content=b"x" * (2 * 1024 * 1024))
        assert (r.status_code, r.json()["error_code"]) == (400, "INVALID_PARAMETER_VALUE")
    assert not [p for p in (tmp_path / "s" / "artifacts").rglob("*") if p.is_file()]


LOGGER = textwrap.dedent(
    """
    import sys, time
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param
    client = MlflowClient()
    exp = sys.argv[1]
    worker = int(sys.argv[2])
    run = client.create_run(exp, run_name=f"worker-{worker}")
    client.log_batch(run.info.run_id, params=[Param("worker", str(worker))])
    now = int(time.time() * 1000)
    for b in range(20):
        client.log_batch(run.info.run_id, metrics=[Metric("m", worker * 1e6 + b * 250 + i, now + b, b * 250 + i) for i in range(250)])
    client.set_terminated(run.info.run_id)
    print(run.info.run_id)
    """
)


def test_eight_processes_logging_concurrently_lose_nothing(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    with tracking_server(tmp_path / "s") as server:
        exp = httpx.post(f"{server.url}{API}/experiments/create", json={"name": "concurrent"}).json()["experiment_id"]
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", LOGGER, exp, str(w)],
                env=client_env(server.url),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for w in range(8)
        ]
        run_ids = []
        for p in procs:
            out, err = p.communicate(timeout=240)
            assert p.returncode == 0, err[-2000:]
            run_ids.append(out.strip().splitlines()[-1])  # the client also prints 'View run' links
        for w, run_id in enumerate(run_ids):
            hist = httpx.get(
                f"{server.url}{API}/metrics/get-history", params={"run_id": run_id, "metric_key": "m"}
            ).json()["metrics"]
            assert sorted(m["value"] for m in hist) == [w * 1e6 + i for i in range(5000)]
            run = httpx.get(f"{server.url}{API}/runs/get", params={"run_id": run_id}).json()["run"]
            assert run["info"]["status"] == "FINISHED"
            assert run["data"]["params"] == [{"key": "worker", "value": str(w)}]
    with sqlite3.connect(tmp_path / "s" / "tracking.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT count(*) FROM metrics").fetchone() == (8 * 5000,)


ACKER = textwrap.dedent(
    """
    import os, sys, time, httpx
    url, run_id, ack = sys.argv[1], sys.argv[2], sys.argv[3]
    with open(ack, "a") as fh, httpx.Client(base_url=url, timeout=10) as http:
        for b in range(100000):
            body = {"run_id": run_id, "metrics": [{"key": "m", "value": b * 1000 + i, "timestamp": 1, "step": b * 1000 + i} for i in range(1000)]}
            try:
                r = http.post("/api/2.0/mlflow/runs/log-batch", json=body)
            except httpx.HTTPError:
                break
            if r.status_code != 200:
                break
            fh.write(f"{b}\\n"); fh.flush(); os.fsync(fh.fileno())
    """
)


def test_server_killed_mid_batch_loses_no_acknowledged_point(tmp_path: Path) -> None:
    state = tmp_path / "s"
    server = start_server(state)
    ack = tmp_path / "acks.txt"
    try:
        run = _run(server.url)
        logger = subprocess.Popen([sys.executable, "-c", ACKER, server.url, run, str(ack)])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not ack.exists() or len(ack.read_text().split()) < 5):
            time.sleep(0.05)
        server.kill()  # SIGKILL while batches are in flight
        logger.wait(60)
    finally:
        server.stop()
    acked = [int(x) for x in ack.read_text().split()]
    assert len(acked) >= 5
    with tracking_server(state) as again:
        hist = httpx.get(
            f"{again.url}{API}/metrics/get-history", params={"run_id": run, "metric_key": "m"}, timeout=60
        ).json()["metrics"]
    stored = {int(m["step"]) for m in hist}
    for b in acked:
        assert set(range(b * 1000, b * 1000 + 1000)) <= stored, f"acknowledged batch {b} lost"
    # a batch is one transaction: whatever is stored is whole batches
    assert len(stored) % 1000 == 0
    with sqlite3.connect(state / "tracking.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_artifacts_on_s3_through_moto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        host, port = moto.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for k, v in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(k, v)
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="trk")
        extra = ("--artifacts", "s3://trk/tracking", "--s3-endpoint-url", endpoint)
        with tracking_server(tmp_path / "s", *extra) as server:
            base = f"{server.url}{ART}/1/run/artifacts"
            assert httpx.put(f"{base}/model/model.pkl", content=b"\x00model" * 1000).status_code == 200
            assert httpx.put(f"{base}/notes.txt", content=b"hello").status_code == 200
            listed = httpx.get(f"{server.url}{ART}", params={"path": "1/run/artifacts"}).json()["files"]
            assert listed == [{"path": "model", "is_dir": True}, {"path": "notes.txt", "is_dir": False, "file_size": 5}]
            assert httpx.get(f"{base}/model/model.pkl").content == b"\x00model" * 1000
            assert httpx.get(f"{base}/missing.txt").json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
            r = httpx.get(f"{server.url}{ART}", params={"path": "1/../../x"})
            assert r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="trk")["Contents"])
        assert keys == ["tracking/1/run/artifacts/model/model.pkl", "tracking/1/run/artifacts/notes.txt"]
        assert not list((tmp_path / "s").rglob("*.pkl"))  # nothing kept locally
    finally:
        moto.stop()
