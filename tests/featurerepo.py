"""A small platform repository with one entity and feature views, for the feature-store tests."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ENTITY = """apiVersion: mlp.dev/v1
kind: Entity
metadata: {name: customer}
spec: {joinKeys: [customer_id], valueType: long}
"""

VIEW = """---
apiVersion: mlp.dev/v1
kind: FeatureView
metadata: {name: %(name)s}
spec:
  entities: [customer]
  source: {kind: %(kind)s, %(where)s, timestampField: ts}
%(ttl)s  online: %(online)s
  features:
%(features)s
"""

ENV = """apiVersion: mlp.dev/v1
kind: Environment
metadata: {name: dev}
spec:
  target: {kind: local}
%(extra)s"""


def run_mlp(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`mlp ARGS` in a child process, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "mlp.cli.main", *args], capture_output=True, text=True, timeout=timeout
    )


def write_repo(
    root: Path,
    views: list[dict[str, object]],
    *,
    env_extra: str = "",
    models: str = "",
) -> Path:
    """`views`: dicts with name, kind, path (or uri or query), features {name: type}, ttl, online."""
    (root / "specs").mkdir(parents=True, exist_ok=True)
    (root / "environments").mkdir(parents=True, exist_ok=True)
    text = ENTITY
    for v in views:
        feats = v.get("features") or {"x": "double"}
        assert isinstance(feats, dict)
        where = (
            f"query: {v['query']!r}"
            if v.get("query")
            else (f"uri: {json.dumps(v['uri'])}" if v.get("uri") else f"path: {json.dumps(v['path'])}")
        )
        text += VIEW % {
            "name": v["name"],
            "kind": v.get("kind", "parquet"),
            "where": where,
            "ttl": f"  ttl: {v['ttl']}\n" if v.get("ttl") else "",
            "online": "true" if v.get("online", True) else "false",
            "features": "\n".join(f"    - {{name: {n}, type: {t}}}" for n, t in feats.items()),
        }
    (root / "specs" / "features.yaml").write_text(text)
    if models:
        (root / "specs" / "models.yaml").write_text(models)
    (root / "environments" / "dev.yaml").write_text(ENV % {"extra": env_extra})
    return root


def _redis_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server"):
        if os.access(p, os.X_OK):
            return p
    return None


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    binary = _redis_binary()
    if binary is None:
        pytest.skip("redis-server is not installed (Debian package redis-server; .ci/setup.d/40-redis.sh installs it)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tmp_path / "redis"
    data.mkdir()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def moto_s3() -> Iterator[str]:
    """S3 through moto's server on a free loopback port (credentials are moto's dummies)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    old = {k: os.environ.get(k) for k in keys}
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
