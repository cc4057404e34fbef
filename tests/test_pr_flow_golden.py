"""`mlp plan --base --head --format markdown` prints exactly the report the PR comment carries.

The commits are made with fixed authors and dates, so their SHAs (and the markdown that
names them) are the same on every run; `MLP_UPDATE_GOLDEN=1` rewrites the golden file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from standins.github_api import GitHubStandIn, serve
from test_pr_flow import REPO, TOKENS, WEDNESDAY, bump_prod_iris, make_origin

from mlp.cli.main import cli
from mlp.webhooks.flow import PullRequestFlow, report_part
from mlp.webhooks.github import GitHubClient
from mlp.webhooks.prcheck import Workspace

pytestmark = pytest.mark.timeout(60)

GOLDEN = Path(__file__).resolve().parent / "golden" / "plan_markdown.md"


def test_plan_markdown_matches_pr_comment_and_golden(tmp_path: Path) -> None:
    origin = make_origin(tmp_path / "origin")
    base = origin.head.commit.hexsha
    head = bump_prod_iris(origin)
    standin = GitHubStandIn(TOKENS)
    standin.add_repo(REPO, tmp_path / "origin")
    with serve(standin.app) as api:
        import httpx

        r = httpx.post(
            f"{api}/repos/{REPO}/pulls",
            headers={"Authorization": "Bearer t-dave"},
            json={"title": "iris v2", "head": "bump-iris", "base": "main"},
        )
        number = r.json()["number"]
        flow = PullRequestFlow(
            Workspace(tmp_path / "origin"), {"github": GitHubClient("t-mlp", api)}, clock=lambda: WEDNESDAY
        )
        outcome = flow.check(flow.hosts["github"], REPO, number)
    comment = standin.repos[REPO].comments[number][0]["body"]
    assert comment == outcome.comment

    result = CliRunner().invoke(
        cli,
        ["plan", "--repo", str(tmp_path / "origin"), "--base", "main", "--head", "bump-iris", "--format", "markdown"],
    )
    assert result.exit_code == 0, result.output
    printed = result.stdout
    assert printed == report_part(comment), "mlp plan --format markdown differs from the PR comment"
    assert f"`{base[:12]}` → `{head[:12]}`" in printed

    if os.environ.get("MLP_UPDATE_GOLDEN"):
        GOLDEN.write_text(printed, encoding="utf-8")
    assert GOLDEN.is_file(), "golden file missing: run with MLP_UPDATE_GOLDEN=1"
    assert printed == GOLDEN.read_text(encoding="utf-8")


def test_plan_cli_formats_and_errors(tmp_path: Path) -> None:
    origin = make_origin(tmp_path / "origin")
    bump_prod_iris(origin)
    runner = CliRunner()
    args = ["plan", "--repo", str(tmp_path / "origin"), "--base", "main", "--head", "bump-iris"]
    as_json = runner.invoke(cli, [*args, "--format", "json"])
    assert as_json.exit_code == 0
    import json

    data = json.loads(as_json.stdout)
    assert data["affected"] == ["prod"] and data["unaffected"] == ["dev", "staging"]
    assert data["changedFiles"] == ["environments/prod.yaml"]
    versions = data["environments"][0]["modelVersions"]
    assert versions[0]["model"] == "iris" and versions[0]["incumbent"] == 1 and versions[0]["gatesPassed"]
    text = runner.invoke(cli, [*args])
    assert "update InferenceService/ml-prod/iris" in text.stdout
    unknown = runner.invoke(cli, ["plan", "--repo", str(tmp_path / "origin"), "--base", "main", "--head", "nope"])
    assert unknown.exit_code == 2 and "unknown revision 'nope'" in unknown.stderr
    assert "Traceback" not in unknown.output

    # An invalid head: exit 1 with located errors in the markdown.
    origin.git.checkout("-b", "broken")
    prod = tmp_path / "origin" / "environments" / "prod.yaml"
    prod.write_text(prod.read_text().replace("tier: production", "tier: production\n  bogus: 1"))
    origin.git.add("-A")
    origin.index.commit("broken")
    bad = runner.invoke(
        cli, ["plan", "--repo", str(tmp_path / "origin"), "--base", "main", "--head", "broken", "--format", "markdown"]
    )
    assert bad.exit_code == 1
    assert "Validation failed" in bad.stdout and "environments/prod.yaml:" in bad.stdout


def test_plan_in_a_monorepo_subfolder(tmp_path: Path) -> None:
    import shutil

    import git
    from test_pr_flow import PLATFORM, commit_all, edit

    repo = git.Repo.init(tmp_path / "mono", initial_branch="main")
    shutil.copytree(PLATFORM, tmp_path / "mono" / "ml")
    commit_all(repo, "base")
    repo.git.checkout("-b", "bump")
    edit(tmp_path / "mono" / "ml" / "environments" / "prod.yaml", "iris:\n      version: 1", "iris:\n      version: 2")
    commit_all(repo, "bump")
    result = CliRunner().invoke(
        cli, ["plan", "--repo", str(tmp_path / "mono" / "ml"), "--base", "main", "--head", "bump", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    import json

    assert json.loads(result.stdout)["affected"] == ["prod"]
