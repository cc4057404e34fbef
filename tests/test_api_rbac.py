"""Every route x every role x own team / other team against the documented matrix (mlp.api.rbac.MATRIX).

A route that declares no permission, or that this test has no sample request for, fails
`test_every_route_declares_a_permission_and_has_a_sample`: adding a route means adding
its permission and a line below.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.routing import APIRoute

from mlp.api.rbac import MATRIX, Permission, Role, allowed
from tests.api_support import ApiWorld

OWN, OTHER = "data-science", "ml-leads"  # the sample resources below all belong to data-science
_versions = itertools.count(100)


def _version_body() -> dict[str, Any]:
    return {"version": next(_versions), "uri": "s3://mlp-models/iris/9/model.joblib", "digest": "sha256:" + "a" * 64}


_ROLLOUT = "/api/v1/environments/dev/rollouts/iris"
# (method, route path) -> (url, body factory or None, how to tell "visible" in a list: key of the sample item)
SAMPLES: dict[tuple[str, str], tuple[str, Any, str | None]] = {
    ("GET", "/healthz"): ("/healthz", None, None),
    ("GET", "/api/v1/whoami"): ("/api/v1/whoami", None, None),
    ("GET", "/api/v1/environments"): ("/api/v1/environments", None, "dev"),
    ("GET", "/api/v1/environments/{env}"): ("/api/v1/environments/dev", None, None),
    ("GET", "/api/v1/environments/{env}/deployments"): ("/api/v1/environments/dev/deployments", None, None),
    ("GET", "/api/v1/environments/{env}/plan"): ("/api/v1/environments/dev/plan?ref=main", None, None),
    ("POST", "/api/v1/environments/{env}/sync"): ("/api/v1/environments/dev/sync", lambda: {"reason": "t"}, None),
    ("GET", "/api/v1/models"): ("/api/v1/models", None, "iris"),
    ("GET", "/api/v1/models/{model}"): ("/api/v1/models/iris", None, None),
    ("GET", "/api/v1/models/{model}/versions"): ("/api/v1/models/iris/versions", None, None),
    ("GET", "/api/v1/models/{model}/versions/{version}"): ("/api/v1/models/iris/versions/1", None, None),
    ("POST", "/api/v1/models/{model}/versions"): ("/api/v1/models/iris/versions", _version_body, None),
    ("GET", "/api/v1/experiments"): ("/api/v1/experiments", None, "iris-tuning"),
    ("GET", "/api/v1/experiments/{name}"): ("/api/v1/experiments/iris-tuning", None, None),
    ("GET", "/api/v1/monitors"): ("/api/v1/monitors", None, "iris-drift"),
    ("GET", "/api/v1/monitors/{name}"): ("/api/v1/monitors/iris-drift", None, None),
    ("GET", "/api/v1/rollouts"): ("/api/v1/rollouts", None, "dev/iris"),
    ("GET", "/api/v1/environments/{env}/rollouts/{model}"): ("/api/v1/environments/dev/rollouts/iris", None, None),
    ("POST", "/api/v1/environments/{env}/rollouts/{model}/pause"): (_ROLLOUT + "/pause", None, None),
    ("POST", "/api/v1/environments/{env}/rollouts/{model}/resume"): (_ROLLOUT + "/resume", None, None),
    ("GET", "/api/v1/audit"): ("/api/v1/audit?environment=dev", None, None),
    ("GET", "/api/v1/audit/served"): ("/api/v1/audit/served?environment=dev&time=2030-01-01T00:00:00Z", None, None),
}
EXEMPT = {"/api/v1/openapi.json", "/api/docs", "/api/docs/oauth2-redirect"}  # FastAPI's own documentation routes


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiWorld]:
    w = ApiWorld(tmp_path_factory.mktemp("rbac"))
    from mlp.controller.store import AuditEvent, AuditLog

    log = AuditLog(w.state)
    log.append(AuditEvent("dev", "apply", "succeeded", revision="abc", time=1.0))
    log.append(AuditEvent("prod", "apply", "succeeded", revision="def", time=2.0))
    log.close()
    yield w
    w.close()


def _flatten(routes: list[Any]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):  # a mounted router (FastAPI >= 0.16x keeps it nested)
            yield from _flatten(route.original_router.routes)


def _routes(world: ApiWorld) -> list[APIRoute]:
    return [r for r in _flatten(world.app.routes) if r.path not in EXEMPT]


def _undeclared(routes: list[APIRoute]) -> list[str]:
    missing = []
    for route in routes:
        declared = (route.openapi_extra or {}).get("x-mlp-permission")
        if declared is None or Permission(declared) not in MATRIX:
            missing.append(f"{sorted(route.methods)} {route.path}: no x-mlp-permission")
            continue
        for method in route.methods:
            if (method, route.path) not in SAMPLES:
                missing.append(f"{method} {route.path}: no sample request in tests/test_api_rbac.py")
        # the dependency that enforces it is the one declared
        enforced = {getattr(d.call, "permission", None) for d in route.dependant.dependencies}
        if declared not in ("public",) and Permission(declared) not in enforced:
            missing.append(f"{route.path}: declares {declared} but its handler depends on {enforced}")
    return missing


def test_every_route_declares_a_permission_and_has_a_sample(world: ApiWorld) -> None:
    missing = _undeclared(_routes(world))
    assert not missing, "\n".join(missing)
    documented = {(m, p) for m, p in SAMPLES}
    served = {(m, r.path) for r in _routes(world) for m in r.methods}
    assert documented == served


def _permission(world: ApiWorld, method: str, path: str) -> Permission:
    for route in _routes(world):
        if route.path == path and method in route.methods:
            return Permission((route.openapi_extra or {})["x-mlp-permission"])
    raise AssertionError(path)


def _keys(items: list[dict[str, Any]]) -> set[str]:
    return {i.get("name") or f"{i['environment']}/{i['model']}" for i in items}


CASES = [(m, p, role, team) for (m, p) in SAMPLES for role in Role for team in (OWN, OTHER)]


@pytest.mark.parametrize(
    ("method", "path", "role", "team"), CASES, ids=[f"{m} {p} {r.value} {t}" for m, p, r, t in CASES]
)
def test_route_role_team_matrix(world: ApiWorld, method: str, path: str, role: Role, team: str) -> None:
    url, body, list_key = SAMPLES[(method, path)]
    permission = _permission(world, method, path)
    client = world.client(world.token(team, role.value))
    response = client.request(method, url, json=body() if body else None)
    holds = allowed(role, permission)
    if permission in (Permission.public, Permission.authenticated):
        assert response.status_code == 200, response.text
        return
    if not holds:
        assert response.status_code == 403, response.text
        assert response.headers["content-type"] == "application/problem+json"
        return
    if team == OWN:
        assert response.status_code in (200, 201, 202), response.text
        if list_key is not None:
            names = _keys(response.json()["items"])
            assert list_key in names
        if path == "/api/v1/audit":
            assert {e["environment"] for e in response.json()["items"]} == {"dev"}
        return
    # the role holds the permission, but in the other team: lists leave the resource out, the rest refuse
    if list_key is not None:
        assert response.status_code == 200, response.text
        names = _keys(response.json()["items"])
        assert list_key not in names
    else:
        assert response.status_code == 403, response.text


def test_unfiltered_audit_shows_only_own_teams_environments(world: ApiWorld) -> None:
    mine = world.client(world.token(OWN, "approver")).get("/api/v1/audit").json()["items"]
    assert {e["environment"] for e in mine} <= {"dev"} and mine
    theirs = world.client(world.token(OTHER, "approver")).get("/api/v1/audit").json()["items"]
    assert "dev" not in {e["environment"] for e in theirs}


def test_platform_admin_sees_every_team(world: ApiWorld) -> None:
    client = world.client(world.token("platform", "admin"))
    envs = {e["name"] for e in client.get("/api/v1/environments").json()["items"]}
    assert envs == {"dev", "staging", "prod"}
    assert client.get("/api/v1/models/iris").status_code == 200


def test_a_token_for_a_team_not_in_git_grants_nothing(world: ApiWorld) -> None:
    client = world.client(world.token("no-such-team", "admin"))
    assert client.get("/api/v1/models").status_code == 403
    assert client.get("/api/v1/whoami").json()["teams"] == {}


def test_writes_reach_controller_state_and_git(world: ApiWorld) -> None:
    from mlp.controller.store import StateStore

    client = world.client(world.token(OWN, "admin"))
    assert client.post("/api/v1/environments/dev/sync", json={"reason": "now"}).status_code == 202
    store = StateStore(world.state)
    requests = store.take_sync_requests()
    assert any(
        env == "dev" and reason.startswith("api: token:") and reason.endswith(": now") for env, reason in requests
    )
    body = _version_body()
    pr = client.post("/api/v1/models/iris/versions", json=body)
    assert pr.status_code == 201, pr.text
    number = pr.json()["number"]
    opened = world.github.repos["acme/platform"].pulls[number]
    from tests.api_support import git

    shown = git(world.repo, "show", opened["head"]["sha"], "--", "specs/models/iris.yaml")
    assert f"+  - version: {body['version']}" in shown or f"+    - version: {body['version']}" in shown, shown
    assert opened["base"]["ref"] == "main" and opened["head"]["ref"].startswith("mlp-api/iris-v")
    # the branch validates: the API proposed a spec mlp accepts
    from mlp.webhooks.prcheck import Workspace

    assert Workspace(world.repo).load(opened["head"]["sha"])[0].ok
    assert client.post("/api/v1/environments/dev/rollouts/iris/pause").status_code == 202
    state = client.get("/api/v1/environments/dev/rollouts/iris").json()["state"]
    assert state["paused"] is True


def test_a_mounted_route_without_a_permission_is_caught(world: ApiWorld) -> None:
    from fastapi import APIRouter, FastAPI

    extra = APIRouter()

    @extra.get("/api/v1/tracking/experiments")
    def sneaky() -> dict[str, str]:
        return {}

    app = FastAPI()
    app.include_router(extra)
    missing = _undeclared(list(_flatten(app.routes)))
    assert any("/api/v1/tracking/experiments: no x-mlp-permission" in m for m in missing)
