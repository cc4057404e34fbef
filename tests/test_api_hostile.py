"""Hostile input: oversized bodies and headers, malformed JSON, unknown fields, path traversal, token floods."""

from __future__ import annotations

import gc
import hmac
import socket
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api_support import ApiWorld


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiWorld]:
    w = ApiWorld(tmp_path_factory.mktemp("hostile"), max_body=64 * 1024)
    yield w
    w.close()


@pytest.fixture(scope="module")
def admin(world: ApiWorld) -> httpx.Client:
    return world.client(world.token("data-science", "admin"))


def _problem(r: httpx.Response, status: int) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == status and body["title"] and "Traceback" not in r.text
    return body


def test_oversized_body_is_413_by_length_and_by_stream(world: ApiWorld, admin: httpx.Client) -> None:
    big = b'{"reason": "' + b"x" * (128 * 1024) + b'"}'
    _problem(
        admin.post("/api/v1/environments/dev/sync", content=big, headers={"content-type": "application/json"}), 413
    )

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked, counted as it arrives
        for _ in range(200):
            yield b"x" * 1024

    r = admin.post("/api/v1/environments/dev/sync", content=chunks(), headers={"content-type": "application/json"})
    _problem(r, 413)


def test_malformed_json_is_400_and_unknown_fields_422(admin: httpx.Client) -> None:
    body = _problem(
        admin.post(
            "/api/v1/environments/dev/sync", content=b'{"reason": ', headers={"content-type": "application/json"}
        ),
        400,
    )
    assert "malformed JSON" in str(body["detail"])
    unknown = _problem(admin.post("/api/v1/environments/dev/sync", json={"reason": "x", "force": True}), 422)
    assert "force" in str(unknown["detail"])
    extra = {"version": 7, "uri": "s3://b/k", "digest": "sha256:" + "a" * 64, "approvedBy": "me"}
    assert "approvedBy" in str(_problem(admin.post("/api/v1/models/iris/versions", json=extra), 422)["detail"])


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/models/..%2F..%2Fetc%2Fpasswd",
        "/api/v1/models/%2e%2e",
        "/api/v1/models/..",
        "/api/v1/environments/dev%00/deployments",
        "/api/v1/models/iris/versions/..%2F1",
        "/api/v1/experiments/%2e%2e%2fspecs",
        "/api/v1/environments/dev/rollouts/..%5Ciris",
        "/api/v1/models/" + "a" * 300,
    ],
)
def test_path_traversal_in_ids_is_refused(admin: httpx.Client, path: str) -> None:
    r = admin.get(path)
    assert r.status_code in (404, 422), (path, r.status_code, r.text)
    assert r.headers["content-type"] == "application/problem+json"
    assert "root:" not in r.text


def test_plan_ref_cannot_be_an_option_or_a_range(admin: httpx.Client) -> None:
    for ref in ("--upload-pack=touch /tmp/x", "main..HEAD", "../../etc"):
        r = admin.get("/api/v1/environments/dev/plan", params={"ref": ref})
        assert r.status_code in (404, 409, 422), (ref, r.text)


def test_oversized_request_head_is_refused_and_the_connection_closed(world: ApiWorld) -> None:
    host, port = world.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (64 * 1024) + b"\r\n\r\n")
        answer = sock.recv(1024)
        assert answer.split(b" ")[1] in (b"400", b"431"), answer[:100]
    many = {f"x-h{i}": "v" for i in range(150)}
    # refused by the HTTP layer (mlp.serving.httpbounds) before the app: plain text, connection closed
    assert httpx.get(f"{world.url}/healthz", headers=many).status_code == 431


def test_api_tokens_are_compared_in_constant_time(world: ApiWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unknown ids, malformed tokens and wrong secrets all take the one compare_digest path."""
    calls: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    good = world.token("data-science", "viewer")
    wrong_secret = good[:-1] + ("A" if good[-1] != "A" else "B")
    for bad in (wrong_secret, "mlp_aaaaaaaaaaaa_" + "b" * 43, "mlp_garbage"):
        before = len(calls)
        assert world.client(bad).get("/api/v1/models").status_code == 401
        assert len(calls) == before + 1
        assert len(calls[-1][0]) == len(calls[-1][1]) == 64  # equal-length digests, never the raw secrets


@pytest.mark.slow
def test_ten_thousand_invalid_tokens_do_not_grow_memory(world: ApiWorld) -> None:
    """5,000 forged API tokens + 5,000 forged Kratos session tokens: all 401, and nothing is kept."""
    sessions = world.app.state.api.sessions
    client = httpx.Client(base_url=world.url, timeout=30)

    def flood(n: int, offset: int) -> None:
        for i in range(offset, offset + n):
            if i % 2:
                headers = {"Authorization": f"Bearer mlp_{i:012d}_{'x' * 43}"}
            else:
                headers = {"X-Session-Token": f"ory_st_forged_{i}"}
            assert client.get("/api/v1/models", headers=headers).status_code == 401

    flood(1000, 0)  # warm up: imports, connection, caches that fill once
    gc.collect()
    tracemalloc.start()
    try:
        flood(500, 1000)
        gc.collect()
        baseline = tracemalloc.get_traced_memory()[0]
        flood(8500, 1500)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    assert len(sessions) == 0  # invalid sessions are never cached
    assert grown < 256 * 1024, f"memory grew by {grown} bytes over 8,500 invalid requests"


def test_errors_are_problem_json_everywhere(world: ApiWorld, admin: httpx.Client) -> None:
    _problem(admin.get("/api/v1/nothing-here"), 404)
    _problem(admin.delete("/api/v1/models"), 405)
    _problem(admin.get("/api/v1/models", params={"limit": 0}), 422)
    _problem(admin.get("/api/v1/models/nope"), 404)
    _ = Path


@pytest.mark.parametrize("repo", ["does-not-exist", "./nowhere/platform"])
def test_a_missing_repository_is_refused_before_anything_is_written(tmp_path: Path, repo: str) -> None:
    from click.testing import CliRunner

    from mlp.cli.main import cli

    state = tmp_path / "state"
    result = CliRunner().invoke(cli, ["server", "--repo", str(tmp_path / repo), "--state-dir", str(state), "--openapi"])
    assert result.exit_code == 2, result.output
    assert "no such folder, and not a Git URL" in result.output and repo.split("/")[-1] in result.output
    assert not (state / "api-git").exists()  # no half-made cache of a repository that is not there
