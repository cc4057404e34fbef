"""Identity: Kratos sessions (stand-in, or a real Kratos with MLP_TEST_KRATOS_URL) and API tokens."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlp.api.app import ApiSettings, create_app
from mlp.api.identity import KratosSessions, TokenStore, Unauthenticated
from mlp.api.server import ApiThread
from tests.api_support import ApiWorld, make_platform_repo


@pytest.fixture
def world(tmp_path: Path) -> Iterator[ApiWorld]:
    w = ApiWorld(tmp_path)
    yield w
    w.close()


def test_valid_session_by_header_gives_the_right_identity_and_team_roles(world: ApiWorld) -> None:
    token, identity = world.kratos.session("dave@example.com")
    r = world.client(**{"X-Session-Token": token}).get("/api/v1/whoami")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["identity"]["id"] == identity
    assert body["identity"]["email"] == "dave@example.com"
    assert body["teams"] == {"data-science": "admin"}  # owner in the Team spec = admin


def test_valid_session_by_cookie(world: ApiWorld) -> None:
    token, identity = world.kratos.session("erin@example.com")
    r = httpx.get(f"{world.url}/api/v1/whoami", cookies={"ory_kratos_session": token})
    assert r.status_code == 200, r.text
    assert r.json()["identity"]["id"] == identity
    assert r.json()["teams"] == {"data-science": "developer"}


def test_expired_forged_and_missing_sessions_are_401(world: ApiWorld) -> None:
    expired = world.kratos.expired_session("erin@example.com")
    for headers in ({"X-Session-Token": expired}, {"X-Session-Token": "ory_st_forged0000000000"}, {}):
        r = world.client(**headers).get("/api/v1/models")
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["status"] == 401
    forged_cookie = httpx.get(f"{world.url}/api/v1/models", cookies={"ory_kratos_session": "forged"})
    assert forged_cookie.status_code == 401


def test_kratos_down_is_503_never_an_open_door(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    app = create_app(
        ApiSettings(repo=str(make_platform_repo(tmp_path / "r")), state_dir=tmp_path / "s", kratos_url=dead)
    )
    with ApiThread(app) as server:
        r = httpx.get(f"{server.url}/api/v1/models", headers={"X-Session-Token": "anything"})
        assert r.status_code == 503, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert "unavailable" in r.json()["detail"]


def test_sessions_are_cached_briefly_and_the_cache_is_bounded(world: ApiWorld) -> None:
    if world.kratos.standin is None:
        pytest.skip("counts round trips on the stand-in")
    sessions = KratosSessions(world.kratos.url, ttl=60, max_entries=3)
    tokens = [world.kratos.session(f"user{i}@example.com")[0] for i in range(5)]
    before = world.kratos.standin.calls
    for _ in range(3):
        sessions.authenticate(token=tokens[0])
    assert world.kratos.standin.calls - before == 1  # cached
    for t in tokens:
        sessions.authenticate(token=t)
    assert len(sessions) == 3  # least recently used out
    world.kratos.standin.revoke(tokens[-1])
    short = KratosSessions(world.kratos.url, ttl=0.0)
    short.authenticate(token=tokens[1])
    with pytest.raises(Unauthenticated):  # ttl 0: every call asks Kratos again, and sees the revocation
        short.authenticate(token=tokens[-1])


def test_the_api_asks_kratos_once_per_session_and_every_time_for_a_refused_one(world: ApiWorld) -> None:
    """A valid session is remembered briefly; a refused one is never remembered, as a success or at all."""
    if world.kratos.standin is None:
        pytest.skip("counts round trips on the stand-in")
    token, identity = world.kratos.session("dave@example.com")
    client = world.client(**{"X-Session-Token": token})
    before = world.kratos.standin.calls
    for _ in range(5):
        r = client.get("/api/v1/whoami")
        assert r.status_code == 200 and r.json()["identity"]["id"] == identity
    assert world.kratos.standin.calls - before == 1
    forged = world.client(**{"X-Session-Token": "ory_st_forged_again"})
    before = world.kratos.standin.calls
    for _ in range(3):
        assert forged.get("/api/v1/whoami").status_code == 401
    assert world.kratos.standin.calls - before == 3


def test_a_cached_session_still_expires_with_the_session(world: ApiWorld) -> None:
    if world.kratos.standin is None:
        pytest.skip("back-dates a session on the stand-in")
    from datetime import timedelta

    token, _ = world.kratos.standin.add_session("vic@example.com", expires_in=timedelta(seconds=1))
    sessions = KratosSessions(world.kratos.url, ttl=3600)
    sessions.authenticate(token=token)
    deadline = time.time() + 5
    while time.time() < deadline:
        try:
            sessions.authenticate(token=token)
        except Unauthenticated:
            return
        time.sleep(0.2)
    pytest.fail("a cached session outlived its expires_at")


def test_api_tokens_are_hashed_shown_once_revocable_and_expire(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    secret, info = store.create("data-science", "viewer", expires_in=3600, description="ci")
    assert secret.startswith("mlp_") and info.id in secret
    raw = (tmp_path / "state.db").read_bytes()
    assert secret.split("_", 2)[2].encode() not in raw  # only the hash is stored
    assert store.authenticate(secret).token_team == "data-science"
    listed = store.list()[0].to_json()
    assert set(listed) == {"id", "team", "role", "description", "createdAt", "expiresAt", "revokedAt"}
    assert secret not in str(listed)
    wrong = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    for bad in (wrong, "mlp_000000000000_" + "x" * 43, "garbage"):
        with pytest.raises(Unauthenticated):
            store.authenticate(bad)
    assert store.revoke(info.id)
    with pytest.raises(Unauthenticated, match="revoked"):
        store.authenticate(secret)
    expired, _ = store.create("data-science", "viewer", expires_in=-1)
    with pytest.raises(Unauthenticated, match="expired"):
        store.authenticate(expired)


def test_token_cli_create_list_revoke(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from mlp.cli.token import token

    runner = CliRunner()
    made = runner.invoke(token, ["create", "--team", "data-science", "--role", "developer", "--expires", "30d",
                                 "--state-dir", str(tmp_path), "-o", "json"])  # fmt: skip
    assert made.exit_code == 0, made.output
    import json

    data = json.loads(made.stdout)
    listed = runner.invoke(token, ["list", "--state-dir", str(tmp_path), "-o", "json"])
    assert data["id"] in listed.stdout and data["token"] not in listed.stdout
    assert runner.invoke(token, ["revoke", data["id"], "--state-dir", str(tmp_path)]).exit_code == 0
    assert runner.invoke(token, ["revoke", data["id"], "--state-dir", str(tmp_path)]).exit_code == 1
    bad = runner.invoke(token, ["create", "--team", "t", "--role", "viewer", "--expires", "soon", "--state-dir",
                                str(tmp_path)])  # fmt: skip
    assert bad.exit_code == 2 and "Traceback" not in bad.output
