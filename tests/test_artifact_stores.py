"""Artifact stores on three clouds: GCS through gcp-storage-emulator, Azure Blob through Azurite.

Both emulators are real servers on 127.0.0.1 spoken to by the real SDKs (google-cloud-storage,
azure-storage-blob); S3 through moto is covered in test_serving_artifacts.py. Azurite comes from
npm (`.ci/setup.d/50-azurite.sh`); its tests skip, saying so, only where `azurite-blob` is absent.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlp.serving.artifacts import ArtifactError, ArtifactStore, DigestMismatch, parse_uri, sha256_file

WRONG = "sha256:" + "0" * 64


def _end(proc: subprocess.Popen[bytes]) -> None:
    """Stop an emulator and everything it started."""
    import signal

    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"emulator exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {seconds}s")


@pytest.fixture
def gcs(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A gcp-storage-emulator server; STORAGE_EMULATOR_HOST points the SDK at it."""
    from gcp_storage_emulator.server import create_server

    port = _free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    try:
        _wait_port(port)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "mlp-test")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def azurite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An Azurite blob server with a storage account and key made up for this test."""
    binary = shutil.which("azurite-blob")
    if binary is None:
        pytest.skip("azurite-blob not on PATH (npm install -g azurite; .ci/setup.d/50-azurite.sh does it in CI)")
    port = _free_port()
    account, key = "mlptest", base64.b64encode(secrets.token_bytes(32)).decode()
    proc = subprocess.Popen(
        [binary, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(tmp_path / "azurite")]
        + ["--silent", "--skipApiVersionCheck", "--loose"],
        env={**os.environ, "AZURITE_ACCOUNTS": f"{account}:{key}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # azurite-blob is a launcher: signal its whole group
    )
    try:
        _wait_port(port, proc)
        conn = (
            f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};"
            f"BlobEndpoint=http://127.0.0.1:{port}/{account};"
        )
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", conn)
        yield account
    finally:
        _end(proc)


def _artifact(tmp_path: Path, content: bytes, name: str = "model.joblib") -> tuple[Path, str]:
    path = tmp_path / "src" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path, sha256_file(path)


def _round_trip(tmp_path: Path, dest: str, missing: str, not_found: str) -> None:
    src, digest = _artifact(tmp_path, os.urandom(3 * (1 << 20) + 17))
    store = ArtifactStore(tmp_path / "cache")
    uri, pushed, version = store.push(src, dest, "iris")
    assert (uri, pushed, version) == (f"{dest}/iris/1/model.joblib", digest, 1)
    assert store.push(src, dest, "iris")[2] == 2  # the next free version number
    assert store.push(src, dest, "iris", 7)[2] == 7
    assert store.push(src, dest, "iris")[2] == 8
    got = store.fetch(uri, digest)
    assert got.read_bytes() == src.read_bytes()
    fresh = ArtifactStore(tmp_path / "cache2")
    with pytest.raises(DigestMismatch, match="sha256 mismatch"):
        fresh.fetch(uri, WRONG)
    assert fresh.cached(WRONG) is None
    assert not [p for p in (tmp_path / "cache2").rglob("*") if p.is_file()]  # nothing half-written stays
    with pytest.raises(ArtifactError, match=not_found):
        fresh.fetch(missing, digest)


@pytest.mark.timeout(120)
def test_gcs_push_fetch_verify_and_missing(tmp_path: Path, gcs: str) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    storage.Client(project="mlp-test", credentials=AnonymousCredentials()).create_bucket("models")
    _round_trip(tmp_path, "gs://models/team", "gs://models/team/iris/9/model.joblib", "GCS object not found")


@pytest.mark.timeout(120)
def test_azure_push_fetch_verify_and_missing_in_both_uri_forms(tmp_path: Path, azurite: str) -> None:
    from azure.storage.blob import BlobServiceClient

    BlobServiceClient.from_connection_string(os.environ["AZURE_STORAGE_CONNECTION_STRING"]).create_container("models")
    _round_trip(
        tmp_path, f"azure://{azurite}/models/team", f"azure://{azurite}/models/x/1/m.bin", "Azure blob not found"
    )
    # The https form KServe reads names the same blob: same bytes, same digest check.
    src, digest = _artifact(tmp_path / "b", b"weights" * 1000)
    uri, _, _ = ArtifactStore(tmp_path / "c3").push(src, f"azure://{azurite}/models/other", "m")
    https = uri.replace(f"azure://{azurite}/", f"https://{azurite}.blob.core.windows.net/")
    assert parse_uri(https) == parse_uri(uri)
    assert ArtifactStore(tmp_path / "c4").fetch(https, digest).read_bytes() == src.read_bytes()


@pytest.mark.timeout(120)
def test_azure_account_must_match_the_configured_credentials(tmp_path: Path, azurite: str) -> None:
    _, digest = _artifact(tmp_path, b"x")
    with pytest.raises(ArtifactError, match="differs from the one AZURE_STORAGE_CONNECTION_STRING names"):
        ArtifactStore(tmp_path / "cache").fetch("azure://someoneelse/models/m/1/model.bin", digest)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("store_kind", ["gcs", "azure"])
def test_runtime_serves_a_model_from_each_cloud_store(
    tmp_path: Path, store_kind: str, request: pytest.FixtureRequest
) -> None:
    import numpy as np

    from mlp.serving.runtime import Runtime
    from mlp.serving.testing import deployment, train_iris
    from mlp.targets.base import TargetError
    from mlp.targets.local import LocalTarget

    if store_kind == "gcs":
        request.getfixturevalue("gcs")
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        storage.Client(project="mlp-test", credentials=AnonymousCredentials()).create_bucket("served")
        dest = "gs://served"
    else:
        account = request.getfixturevalue("azurite")
        from azure.storage.blob import BlobServiceClient

        conn = os.environ["AZURE_STORAGE_CONNECTION_STRING"]
        BlobServiceClient.from_connection_string(conn).create_container("served")
        dest = f"azure://{account}/served"
    path, digest = train_iris(tmp_path / "m", 1.0)
    store = ArtifactStore(tmp_path / "state" / "cache")
    uri, _, _ = store.push(path, dest, "iris", 1)
    rt = Runtime(tmp_path / "state", store=store, payload_log=False)
    target = LocalTarget(rt)
    good = {"version": 1, "uri": uri, "digest": digest, "role": "stable", "weight": 100}
    assert target.apply(deployment("iris", [good])).action == "created"
    loaded = rt.models["iris"].versions["1"].loaded
    assert loaded.predict(np.array([[6.8, 2.8, 4.8, 1.4]])).tolist() == [1]  # type: ignore[union-attr]
    bad = {**good, "version": 2, "digest": WRONG}
    with pytest.raises(TargetError, match="sha256 mismatch"):
        target.apply(deployment("iris", [good | {"weight": 90}, bad | {"role": "canary", "weight": 10}]))
    assert set(rt.models["iris"].versions) == {"1"}
    rt.close()


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("gs://bucket", "needs a bucket and a key"),
        ("gs://bucket/../x", "'..' segment"),
        ("azure://acct/container", "needs an account, a container and a key"),
        ("azure://acct/c/%2e%2e/x", "percent-encoded"),
        ("https://acct.blob.core.windows.net/c/m.bin?sv=2024&sig=abc", "no query string"),
        ("https://user@acct.blob.core.windows.net/c/m.bin", "no credentials"),
        ("https://example.com", "needs a host and a path"),
        ("ftp://host/x", "unsupported artifact scheme"),
    ],
)
def test_cloud_uris_are_checked_before_any_request(uri: str, message: str) -> None:
    with pytest.raises(ArtifactError, match=message):
        parse_uri(uri)


def test_azure_https_and_azure_forms_parse_alike() -> None:
    a = parse_uri("azure://acct/models/iris/1/model.joblib")
    b = parse_uri("https://acct.blob.core.windows.net/models/iris/1/model.joblib")
    assert a == b
    assert (a.scheme, a.account, a.bucket, a.key) == ("azure", "acct", "models", "iris/1/model.joblib")
    assert parse_uri("gs://b/k/m.onnx").basename == "m.onnx"
