"""Read routes: pagination, filters, ETags, observed state, the PR plan, and the reader ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mlp.controller.store import EnvStatus, ModelStatus, StateStore
from tests.api_support import ApiWorld, git


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiWorld]:
    w = ApiWorld(tmp_path_factory.mktemp("reads"))
    # more models, to page through
    extra = "\n---\n".join(
        (w.repo / "specs" / "models" / "iris.yaml").read_text().replace("name: iris", f"name: extra-{i:02d}")
        for i in range(25)
    )
    (w.repo / "specs" / "models" / "extra.yaml").write_text(extra)
    git(w.repo, "add", "-A")
    git(w.repo, "commit", "-q", "-m", "more models")
    yield w
    w.close()


@pytest.mark.parametrize("limit", [1, 9, 10, 27, 100])
def test_pages_follow_cursor_and_link(world: ApiWorld, limit: int) -> None:
    client = world.client(world.token("data-science", "viewer"))
    seen: list[str] = []
    url = f"/api/v1/models?limit={limit}"
    pages = 0
    while url:
        r = client.get(url)
        assert r.status_code == 200, r.text
        body = r.json()
        seen += [m["name"] for m in body["items"]]
        pages += 1
        link = r.headers.get("link")
        if body["nextCursor"]:
            assert link and 'rel="next"' in link
            url = link.split(">")[0].lstrip("<")
        else:
            assert link is None
            url = ""
    assert pages == -(-27 // limit) and len(seen) == 27 and seen == sorted(seen) and len(set(seen)) == 27


def test_a_filtered_listing_pages_within_the_filter(world: ApiWorld) -> None:
    client = world.client(world.token("data-science", "viewer"))
    seen: list[str] = []
    cursor = None
    while True:
        params = {"prefix": "extra-", "limit": 10, **({"cursor": cursor} if cursor else {})}
        body = client.get("/api/v1/models", params=params).json()
        seen += [m["name"] for m in body["items"]]
        cursor = body["nextCursor"]
        if not cursor:
            break
    assert seen == [f"extra-{i:02d}" for i in range(25)]


def test_filters(world: ApiWorld) -> None:
    client = world.client(world.token("data-science", "viewer"))
    assert {m["name"] for m in client.get("/api/v1/models?framework=xgboost").json()["items"]} == {"breast-cancer"}
    assert len(client.get("/api/v1/models?prefix=extra-1").json()["items"]) == 10
    assert client.get("/api/v1/models?team=ml-leads").json()["items"] == []


def test_etag_and_304(world: ApiWorld) -> None:
    client = world.client(world.token("data-science", "viewer"))
    first = client.get("/api/v1/models/iris")
    etag = first.headers["etag"]
    again = client.get("/api/v1/models/iris", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert client.get("/api/v1/models/iris", headers={"If-None-Match": '"other"'}).status_code == 200
    assert client.get("/api/v1/models/breast-cancer").headers["etag"] != etag


def test_deployments_show_the_observed_version_and_split(world: ApiWorld) -> None:
    store = StateStore(world.state)
    store.save(
        EnvStatus("dev", "Synced", "Healthy", revision="abc", models=[ModelStatus("iris", 1, {"1": 80, "2": 20})])
    )
    client = world.client(world.token("data-science", "viewer"))
    items = {d["model"]: d for d in client.get("/api/v1/environments/dev/deployments").json()["items"]}
    assert items["iris"]["declared"]["canary"]["version"] == 2
    assert items["iris"]["observed"] == {"servedVersion": 1, "traffic": {"1": 80, "2": 20}}
    assert items["breast-cancer"]["observed"] is None
    env = client.get("/api/v1/environments/dev").json()
    assert env["status"]["syncStatus"] == "Synced" and env["status"]["models"][0]["traffic"] == {"1": 80, "2": 20}
    rollout = client.get("/api/v1/environments/dev/rollouts/iris").json()
    assert rollout["state"]["observedTraffic"] == {"1": 80, "2": 20}


def test_plan_is_the_pr_comment_for_that_environment(world: ApiWorld) -> None:
    git(world.repo, "checkout", "-q", "-b", "bump-iris")
    path = world.repo / "environments" / "dev.yaml"
    path.write_text(path.read_text().replace("steps: [20, 50, 100]", "steps: [30, 60, 100]"))
    git(world.repo, "commit", "-q", "-am", "faster canary")
    git(world.repo, "checkout", "-q", "main")
    client = world.client(world.token("data-science", "viewer"))
    plan = client.get("/api/v1/environments/dev/plan", params={"ref": "bump-iris"}).json()
    assert plan["affected"] is True and plan["valid"] is True
    assert "dev" in plan["markdown"] and "UPDATE" in plan["markdown"].upper()
    assert plan["plan"] is not None
    from mlp.webhooks.prcheck import Workspace, check_revisions

    check = check_revisions(Workspace(world.repo), "main", "bump-iris")
    assert plan["head"] == check.head_sha and plan["base"] == check.base_sha
    assert client.get("/api/v1/environments/dev/plan", params={"ref": "no-such-branch"}).status_code == 404
    _ = Path


def test_audit_pages_follow_every_change_to_the_trail(world: ApiWorld) -> None:
    import sqlite3

    from mlp.controller.store import AuditEvent, AuditLog

    client = world.client(world.token("data-science", "approver"))
    log = AuditLog(world.state)
    try:
        log.append(AuditEvent("dev", "apply", "succeeded", revision="r1", message="first"))
        url = "/api/v1/audit?environment=dev&limit=5"
        first = client.get(url)
        assert first.json()["items"][0]["message"] == "first"
        etag = first.headers["etag"]
        assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
        # an appended event: the same query is a new page, and the old ETag no longer matches
        newest = log.append(AuditEvent("dev", "apply", "succeeded", revision="r2", message="second"))
        again = client.get(url, headers={"If-None-Match": etag})
        assert again.status_code == 200 and again.json()["items"][0]["id"] == newest
        # a record edited in the database shows as it now is (and `mlp audit verify` names it)
        conn = sqlite3.connect(world.state / "state.db")
        with conn:
            conn.execute("UPDATE audit SET message = 'edited' WHERE id = ?", (newest,))
        conn.close()
        assert client.get(url).json()["items"][0]["message"] == "edited"
    finally:
        log.close()


def test_the_workspace_answers_threads_that_ask_at_once(world: ApiWorld) -> None:
    """The API resolves refs for plans while its refresh thread loads commits, from one Workspace."""
    import threading

    workspace = world.app.state.api.view.workspace
    head = workspace.resolve("main")
    models = len(workspace.load(head)[0].specs.models)
    failures: list[str] = []

    def resolving() -> None:
        for i in range(300):
            try:
                assert workspace.resolve("main") == head
                workspace.resolve(f"no-such-branch-{i}")
                failures.append("an unknown ref resolved")
            except Exception as exc:  # WorkspaceError is the one expected answer
                if type(exc).__name__ != "WorkspaceError":
                    failures.append(f"resolve: {type(exc).__name__}: {exc}")

    def loading() -> None:
        for _ in range(30):
            try:
                assert len(workspace.load(head)[0].specs.models) == models
            except Exception as exc:
                failures.append(f"load: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=f, daemon=True) for f in (resolving, loading)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a thread is stuck talking to git"
    assert failures == []
