"""PR flow edge cases: which pushes reconcile what, invalid heads, failing gates, /mlp commands."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from standins.github_api import FIXTURES, GitHubStandIn, serve
from test_pr_flow import REPO, TOKENS, WEDNESDAY, commit_all, edit, make_origin

from mlp.controller.store import StateStore
from mlp.webhooks.events import PushEvent, parse_github
from mlp.webhooks.flow import PullRequestFlow, request_sync_trigger
from mlp.webhooks.github import GitHubClient
from mlp.webhooks.prcheck import Workspace

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[PullRequestFlow, GitHubStandIn, str, Path]]:
    origin = make_origin(tmp_path / "origin")
    standin = GitHubStandIn(TOKENS)
    standin.add_repo(REPO, tmp_path / "origin")
    with serve(standin.app) as api:
        flow = PullRequestFlow(
            Workspace(tmp_path / "origin"),
            {"github": GitHubClient("t-mlp", api)},
            trigger=request_sync_trigger(str(tmp_path / "state")),
            clock=lambda: WEDNESDAY,
        )
        yield flow, standin, api, tmp_path
    origin.close()


def open_pr(api: str, branch: str) -> int:
    r = httpx.post(
        f"{api}/repos/{REPO}/pulls",
        headers={"Authorization": "Bearer t-dave"},
        json={"title": branch, "head": branch, "base": "main"},
    )
    return int(r.json()["number"])


def taken(tmp_path: Path) -> list[str]:
    store = StateStore(tmp_path / "state")
    try:
        return sorted(env for env, _ in store.take_sync_requests())
    finally:
        store.close()


def test_push_reconciles_only_environments_tracking_the_branch(setup) -> None:
    flow, standin, _, tmp_path = setup
    repo = standin.repos[REPO].git
    root = Path(repo.working_tree_dir)
    edit(root / "environments/staging.yaml", "tier: staging", "tier: staging\n  branch: release")
    commit_all(repo, "staging tracks release")
    main = repo.head.commit.hexsha
    repo.git.branch("release")

    assert flow.on_push(PushEvent("github", REPO, "refs/heads/main", main)) == ["dev", "prod"]
    assert taken(tmp_path) == ["dev", "prod"]
    assert flow.on_push(PushEvent("github", REPO, "refs/heads/release", main)) == ["staging"]
    assert flow.on_push(PushEvent("github", REPO, "refs/heads/feature", main)) == []
    assert flow.on_push(PushEvent("github", REPO, "refs/tags/v1", main)) == []
    assert flow.on_push(PushEvent("github", REPO, "refs/heads/release", "0" * 40, deleted=True)) == []
    assert taken(tmp_path) == ["staging"]

    # The real fixture payloads parse into the same events.
    payload = json.loads((FIXTURES / "github" / "push.branch_deleted.json").read_text())
    event = parse_github("push", payload)
    assert isinstance(event, PushEvent) and flow.on_push(event) == []


def test_invalid_head_fails_both_statuses(setup) -> None:
    flow, standin, api, _ = setup
    repo = standin.repos[REPO].git
    root = Path(repo.working_tree_dir)
    repo.git.checkout("-b", "broken")
    edit(root / "environments/prod.yaml", "iris:\n      version: 1", "iris:\n      version: 9")
    head = commit_all(repo, "prod: iris v9 (does not exist)")
    repo.git.checkout("main")
    number = open_pr(api, "broken")
    outcome = flow.check(flow.hosts["github"], REPO, number)
    assert standin.latest_status(REPO, head, "mlp/validate")["state"] == "failure"  # type: ignore[index]
    assert "environments/prod.yaml:" in standin.latest_status(REPO, head, "mlp/validate")["description"]  # type: ignore[index]
    assert standin.latest_status(REPO, head, "mlp/governance")["state"] == "failure"  # type: ignore[index]
    assert "Validation failed" in outcome.comment and "environments/prod.yaml:" in outcome.comment


def test_failing_metric_gate_fails_governance_and_shows_in_the_table(setup) -> None:
    flow, standin, api, _ = setup
    repo = standin.repos[REPO].git
    root = Path(repo.working_tree_dir)
    repo.git.checkout("-b", "worse")
    edit(
        root / "specs/models/breast-cancer.yaml",
        "metrics: {auc: 0.994, accuracy: 0.965}",
        "metrics: {auc: 0.994, accuracy: 0.85}",
    )
    edit(
        root / "environments/prod.yaml",
        "breast-cancer:\n      version: 1",
        "breast-cancer:\n      version: 2",
    )
    head = commit_all(repo, "prod: breast-cancer v2")
    repo.git.checkout("main")
    number = open_pr(api, "worse")
    for token in ("t-alice", "t-bob"):
        httpx.post(
            f"{api}/repos/{REPO}/pulls/{number}/reviews",
            headers={"Authorization": f"Bearer {token}"},
            json={"event": "APPROVE"},
        )
    outcome = flow.check(flow.hosts["github"], REPO, number)
    status = standin.latest_status(REPO, head, "mlp/governance")
    assert status is not None and status["state"] == "failure"
    assert "breast-cancer v2 (stable): accuracy 0.85 < min 0.9" in status["description"]
    assert "| accuracy | 0.85 | 0.958 | -0.108 | >= 0.9, regression <= 0.01 | ❌ accuracy 0.85 < min 0.9 |" in (
        outcome.comment
    )
    # v2 already ran in prod as a shadow; becoming the stable version is what the gates judge.
    assert "**`breast-cancer` v2** (stable, replaces v1): ❌ gates fail" in outcome.comment
    # Every environment deploying breast-cancer is affected by the changed model spec.
    assert "Affected environments: `dev`, `prod`, `staging`" in outcome.comment


def test_mlp_recheck_comment_runs_the_check_again(setup, fixtures_dir: Path) -> None:
    flow, standin, api, _ = setup
    repo = standin.repos[REPO].git
    root = Path(repo.working_tree_dir)
    repo.git.checkout("-b", "bump")
    edit(root / "environments/prod.yaml", "iris:\n      version: 1", "iris:\n      version: 2")
    head = commit_all(repo, "bump")
    repo.git.checkout("main")
    number = open_pr(api, "bump")
    payload = json.loads((fixtures_dir / "github" / "issue_comment.created.json").read_text())
    payload["issue"]["number"] = number
    payload["issue"]["pull_request"] = {"url": f"https://api.github.com/repos/{REPO}/pulls/{number}"}
    payload["comment"]["body"] = "/mlp recheck\nplease"
    payload["repository"]["full_name"] = REPO
    event = parse_github("issue_comment", payload)
    assert event is not None and event.kind == "command"  # type: ignore[union-attr]
    flow.handle(event)
    assert standin.latest_status(REPO, head, "mlp/validate")["state"] == "success"  # type: ignore[index]
    assert len(standin.repos[REPO].comments[number]) == 1


def test_report_fits_a_github_comment() -> None:
    from mlp.plan import make_plan
    from mlp.webhooks.report import EnvironmentReport, report_markdown

    def obj(env: str, i: int, payload: str) -> dict[str, object]:
        labels = {"app.kubernetes.io/managed-by": "mlp", "mlp.dev/environment": env}
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"c{i}", "namespace": env, "labels": labels},
            "data": {"blob": "\n".join(f"{payload}-{j}" for j in range(400))},
        }

    envs = []
    for env in ("a", "b", "c"):
        plan = make_plan(
            [obj(env, i, "new") for i in range(20)],
            [obj(env, i, "old") for i in range(20)],
            environment=env,
            revision="f" * 40,
        )
        envs.append(EnvironmentReport(env, None, plan))
    text = report_markdown("0" * 40, "f" * 40, envs, [])
    assert len(text) < 65536
    assert text.count("diff cut to fit the comment") == 3
