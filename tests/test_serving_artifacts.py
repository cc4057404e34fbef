"""Artifact store: digest-verified fetch and cache, traversal refusals, S3 through moto's server."""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from mlp.serving.artifacts import (
    CHUNK,
    ArtifactError,
    ArtifactStore,
    DigestMismatch,
    HashingWriter,
    parse_uri,
    sha256_file,
)

GOOD = "sha256:" + "0" * 64


def _file(tmp_path: Path, content: bytes = b"model-bytes", name: str = "model.joblib") -> tuple[Path, str]:
    path = tmp_path / "src" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path, sha256_file(path)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["bytes", "bytearray", "memoryview"]), st.integers(0, 3 * CHUNK // 2)),
        max_size=12,
    ),
    st.booleans(),
)
def test_hashing_writer_keeps_every_byte_in_order_whatever_the_callers_buffers(
    writes: list[tuple[str, int]], flush_midway: bool
) -> None:
    # SDKs hand over bytes, reused bytearrays or memoryviews in pieces of any size: the file and
    # the digest must be exactly the concatenation, even when the caller overwrites its buffer.
    out = io.BytesIO()
    sink = HashingWriter(out)
    expected = bytearray()
    for i, (kind, size) in enumerate(writes):
        piece = bytes([i % 251]) * size
        expected += piece
        if kind == "bytes":
            sink.write(piece)
        else:
            buf = bytearray(piece)
            sink.write(buf if kind == "bytearray" else memoryview(buf))
            buf[:] = b"\xff" * size  # the caller reuses its buffer
        if flush_midway and i == len(writes) // 2:
            sink.flush()
            assert out.getvalue() == bytes(expected)
    assert sink.finish() == "sha256:" + hashlib.sha256(expected).hexdigest()
    assert out.getvalue() == bytes(expected) and sink.size == len(expected)


def test_file_fetch_verifies_and_caches_by_digest(tmp_path: Path) -> None:
    src, digest = _file(tmp_path)
    store = ArtifactStore(tmp_path / "cache")
    got = store.fetch(f"file://{src}", digest)
    assert got.read_bytes() == b"model-bytes"
    assert got.name == "model.joblib"
    assert digest.split(":")[1] in str(got)
    src.unlink()  # a cache hit needs no source any more
    assert store.fetch(f"file://{src}", digest) == got


def test_digest_mismatch_is_refused_and_nothing_is_cached(tmp_path: Path) -> None:
    src, _ = _file(tmp_path)
    store = ArtifactStore(tmp_path / "cache")
    with pytest.raises(DigestMismatch, match="sha256 mismatch"):
        store.fetch(f"file://{src}", GOOD)
    assert store.cached(GOOD) is None
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bucket/../etc/passwd",
        "s3://bucket/a/../../x",
        "s3://bucket/%2e%2e/%2e%2e/secret",
        "s3://bucket/%252e%252e/secret",
        "s3://bucket/a/%2F..%2Fb",
        "file:///tmp/../etc/passwd",
        "file://relative/path",
        "s3://bucket/a\\..\\b",
        "s3://bucket",
        "http://example.com/model",
        "s3://bucket//double",
    ],
)
def test_unsafe_or_unsupported_uris_are_refused(uri: str) -> None:
    with pytest.raises(ArtifactError):
        parse_uri(uri)


def test_mirror_lookup_and_escape(tmp_path: Path) -> None:
    mirror = tmp_path / "artifacts"
    (mirror / "mlp-models" / "iris" / "1").mkdir(parents=True)
    f = mirror / "mlp-models" / "iris" / "1" / "model.joblib"
    f.write_bytes(b"from-mirror")
    outside = tmp_path / "secret.joblib"
    outside.write_bytes(b"secret")
    # a symlink inside the mirror that points outside it must not be followed
    (mirror / "mlp-models" / "link").symlink_to(tmp_path)
    store = ArtifactStore(tmp_path / "cache", mirror=mirror, s3_endpoint_url="http://127.0.0.1:9")
    assert store.fetch("s3://mlp-models/iris/1/model.joblib", sha256_file(f)).read_bytes() == b"from-mirror"
    with pytest.raises(ArtifactError, match="escapes the artifact mirror"):
        store.fetch("s3://mlp-models/link/secret.joblib", sha256_file(outside))


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    old = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _bucket(endpoint: str, name: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)


@pytest.mark.timeout(60)
def test_s3_push_fetch_and_mismatch_through_moto(tmp_path: Path, moto_s3: str) -> None:
    _bucket(moto_s3, "models")
    src, digest = _file(tmp_path, b"\x00real model\xff" * 1000)
    store = ArtifactStore(tmp_path / "cache", s3_endpoint_url=moto_s3)
    uri, pushed_digest, version = store.push(src, "s3://models/team", "iris")
    assert (uri, pushed_digest, version) == ("s3://models/team/iris/1/model.joblib", digest, 1)
    # next push without --version takes the next free number
    assert store.push(src, "s3://models/team", "iris")[2] == 2
    got = store.fetch(uri, digest)
    assert got.read_bytes() == src.read_bytes()
    fresh = ArtifactStore(tmp_path / "cache2", s3_endpoint_url=moto_s3)
    with pytest.raises(DigestMismatch):
        fresh.fetch(uri, GOOD)
    with pytest.raises(ArtifactError, match="NoSuchKey"):
        fresh.fetch("s3://models/team/iris/9/model.joblib", digest)


@pytest.mark.timeout(60)
def test_models_push_cli_to_s3_and_file(tmp_path: Path, moto_s3: str) -> None:
    from mlp.cli.main import cli

    _bucket(moto_s3, "cli-models")
    src, digest = _file(tmp_path, b"weights", name="model.json")
    runner = CliRunner()
    res = runner.invoke(
        cli,
        [
            "models",
            "push",
            str(src),
            "--model",
            "breast-cancer",
            "--version",
            "3",
            "--to",
            "s3://cli-models",
            "--format",
            "json",
            "--s3-endpoint-url",
            moto_s3,
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out == {
        "model": "breast-cancer",
        "version": 3,
        "uri": "s3://cli-models/breast-cancer/3/model.json",
        "digest": digest,
    }
    res = runner.invoke(cli, ["models", "push", str(src), "--model", "bc", "--to", f"file://{tmp_path}/store"])
    assert res.exit_code == 0, res.output
    assert f"uri:    file://{tmp_path}/store/bc/1/model.json" in res.output
    assert (tmp_path / "store" / "bc" / "1" / "model.json").read_bytes() == b"weights"
    res = runner.invoke(cli, ["models", "push", str(src), "--model", "bc", "--to", "file://relative/dir"])
    assert res.exit_code == 2
    assert "error: file://relative/dir: not a valid destination" in res.output
    assert "Traceback" not in res.output


@pytest.mark.timeout(60)
def test_runtime_serves_an_s3_artifact_from_moto_and_refuses_a_wrong_digest(tmp_path: Path, moto_s3: str) -> None:
    import numpy as np

    from mlp.serving.runtime import Runtime
    from mlp.serving.testing import deployment, train_iris
    from mlp.targets.base import TargetError
    from mlp.targets.local import LocalTarget

    _bucket(moto_s3, "served")
    path, digest = train_iris(tmp_path / "m", 1.0)
    store = ArtifactStore(tmp_path / "state" / "cache", s3_endpoint_url=moto_s3)
    uri, _, _ = store.push(path, "s3://served", "iris", 1)
    rt = Runtime(tmp_path / "state", store=store, payload_log=False)
    target = LocalTarget(rt)
    good = {"version": 1, "uri": uri, "digest": digest, "role": "stable", "weight": 100}
    assert target.apply(deployment("iris", [good])).action == "created"
    loaded = rt.models["iris"].versions["1"].loaded
    assert loaded.predict(np.array([[6.8, 2.8, 4.8, 1.4]])).tolist() == [1]  # type: ignore[union-attr]
    bad = {**good, "version": 2, "uri": "s3://served/iris/1/model.joblib", "digest": GOOD}
    with pytest.raises(TargetError, match="sha256 mismatch"):
        target.apply(deployment("iris", [good | {"weight": 90}, bad | {"role": "canary", "weight": 10}]))
    assert set(rt.models["iris"].versions) == {"1"}
    rt.close()
