"""`mlp governance check --pr N` against the GitHub stand-in, as a CI job would run it."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from standins.github_api import GitHubStandIn, serve
from test_pr_flow import REPO, TOKENS, bump_prod_iris, make_origin

from mlp.cli.main import cli

pytestmark = pytest.mark.timeout(60)


def test_governance_check_cli(tmp_path: Path) -> None:
    origin = make_origin(tmp_path / "origin")
    head = bump_prod_iris(origin)
    standin = GitHubStandIn(TOKENS)
    standin.add_repo(REPO, tmp_path / "origin")
    runner = CliRunner()
    with serve(standin.app) as api:

        def as_user(token: str, method: str, path: str, **kw: object) -> httpx.Response:
            return httpx.request(method, api + path, headers={"Authorization": f"Bearer {token}"}, **kw)  # type: ignore[arg-type]

        number = as_user(
            "t-dave", "POST", f"/repos/{REPO}/pulls", json={"title": "t", "head": "bump-iris", "base": "main"}
        ).json()["number"]
        args = [
            "governance",
            "check",
            "--pr",
            str(number),
            "--repo",
            REPO,
            "--github-url",
            api,
            "--path",
            str(tmp_path / "origin"),
            "--now",
            "2026-11-25T12:00:00Z",
        ]
        env = {"GITHUB_TOKEN": "t-mlp", "MLP_GITHUB_TOKEN": ""}

        pending = runner.invoke(cli, [*args, "--format", "json"], env=env)
        assert pending.exit_code == 1, pending.output
        data = json.loads(pending.stdout)
        assert data["state"] == "pending" and data["head"] == head
        assert data["missing"] == ["prod: 0/2 approvals from team:ml-leads"]
        assert standin.calls("POST", "/statuses/") == [], "without --post nothing is written"

        for token in ("t-alice", "t-bob"):
            as_user(token, "POST", f"/repos/{REPO}/pulls/{number}/reviews", json={"event": "APPROVE"})
        ok = runner.invoke(cli, [*args, "--post"], env=env)
        assert ok.exit_code == 0, ok.output
        assert ok.stdout.splitlines()[0] == f"mlp/governance: success (#{number} at {head[:12]})"
        assert "ok      prod: approvals: 2/2 approvals from team:ml-leads (approved: alice, bob)" in ok.stdout
        assert standin.latest_status(REPO, head, "mlp/governance")["state"] == "success"  # type: ignore[index]
        assert len(standin.repos[REPO].comments[number]) == 1

        # Friday evening: prod's weekend freeze keeps it pending.
        frozen = runner.invoke(cli, [*args[:-1], "2026-11-27T19:00:00Z"], env=env)
        assert frozen.exit_code == 1 and "MISSING prod: window: freeze" in frozen.stdout

        bad = runner.invoke(cli, args, env={"GITHUB_TOKEN": "nope", "MLP_GITHUB_TOKEN": ""})
        assert bad.exit_code == 2 and "HTTP 401: Bad credentials" in bad.stderr
        assert "Traceback" not in bad.output
    none = runner.invoke(cli, args, env={"GITHUB_TOKEN": "", "MLP_GITHUB_TOKEN": ""})
    assert none.exit_code == 2 and "no API token" in none.stderr


def test_governance_check_cli_on_gitlab(tmp_path: Path) -> None:
    from standins.gitlab_api import GitLabStandIn

    origin = make_origin(tmp_path / "origin")
    head = bump_prod_iris(origin)
    standin = GitLabStandIn(TOKENS)
    project = standin.add_project(REPO, tmp_path / "origin")
    runner = CliRunner()
    with serve(standin.app) as url:
        api = f"{url}/api/v4"
        iid = httpx.post(
            f"{api}/projects/{project.id}/merge_requests",
            headers={"PRIVATE-TOKEN": "t-dave"},
            json={"source_branch": "bump-iris", "target_branch": "main", "title": "t"},
        ).json()["iid"]
        args = [
            "governance",
            "check",
            "--pr",
            str(iid),
            "--repo",
            REPO,
            "--gitlab-url",
            api,
            "--path",
            str(tmp_path / "origin"),
            "--now",
            "2026-11-25T12:00:00Z",
            "--format",
            "json",
        ]
        env = {"GITLAB_TOKEN": "t-mlp", "MLP_GITLAB_TOKEN": ""}
        pending = runner.invoke(cli, args, env=env)
        assert pending.exit_code == 1, pending.output
        assert json.loads(pending.stdout)["missing"] == ["prod: 0/2 approvals from team:ml-leads"]
        for token in ("t-alice", "t-bob"):
            httpx.post(f"{api}/projects/{project.id}/merge_requests/{iid}/approve", headers={"PRIVATE-TOKEN": token})
        ok = runner.invoke(cli, [*args, "--post"], env=env)
        assert ok.exit_code == 0, ok.output
        assert json.loads(ok.stdout)["approvers"] == ["alice", "bob"]
        assert standin.latest_status(REPO, head, "mlp/governance")["status"] == "success"  # type: ignore[index]
