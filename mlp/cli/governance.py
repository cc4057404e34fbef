"""`mlp governance check --pr N`: evaluate a pull request against approval policy (for CI)."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import NoReturn

import click

from mlp.cli._common import output_option


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def governance() -> None:
    """Approval policy for pull requests.

    \b
    Example:
      mlp governance check --pr 42 --repo acme/platform
    """


@governance.command("check")
@click.option("--pr", "number", required=True, type=int, help="Pull request (GitHub) or merge request IID (GitLab).")
@click.option("--repo", "repo", required=True, help="Repository on the host: OWNER/NAME (GitLab: group/project).")
@click.option("--github-url", default=None, help="GitHub API URL [default: https://api.github.com].")
@click.option("--gitlab-url", default=None, help="GitLab API URL, e.g. https://gitlab.com/api/v4 (selects GitLab).")
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="API token file [default: env MLP_GITHUB_TOKEN / GITHUB_TOKEN, or MLP_GITLAB_TOKEN / GITLAB_TOKEN].",
)
@click.option(
    "--path",
    "path",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Local Git checkout with the PR's base and head commits (fetch-depth: 0).",
)
@click.option(
    "--post/--no-post",
    default=False,
    show_default=True,
    help="Also set the mlp/validate and mlp/governance statuses and update the PR comment.",
)
@click.option("--now", "now", default=None, help="Evaluate sync windows at this ISO time instead of now.")
@output_option("text", "json")
def check(
    number: int,
    repo: str,
    github_url: str | None,
    gitlab_url: str | None,
    token_file: Path | None,
    path: Path,
    post: bool,
    now: str | None,
    fmt: str,
) -> None:
    """Evaluate pull request N: required approvals, metric gates, promotion and sync windows.

    Reads the PR and its reviews from the host API, plans the head against the merge base
    in a local checkout, and prints the state (success / pending / failure) with what is
    missing. Exit 0 when the policy is satisfied, 1 when pending or failed, 2 on errors.

    \b
    Examples:
      GITHUB_TOKEN=... mlp governance check --pr 42 --repo acme/platform
      mlp governance check --pr 7 --repo ml/platform --gitlab-url https://gitlab.example/api/v4 -o json
    """
    from mlp.webhooks.flow import GOVERNANCE_CONTEXT, PullRequestFlow, utcnow
    from mlp.webhooks.github import GitHubClient
    from mlp.webhooks.gitlab import GitLabClient
    from mlp.webhooks.hosting import GitHost, HostError
    from mlp.webhooks.prcheck import Workspace, WorkspaceError, check_revisions
    from mlp.webhooks.service import GITHUB_API_TOKEN_ENVS, GITLAB_API_TOKEN_ENVS, ConfigError, read_secret

    def fail(message: str) -> NoReturn:
        click.echo(f"error: {message}", err=True)
        sys.exit(2)

    when = utcnow()
    if now:
        try:
            when = datetime.fromisoformat(now.replace("Z", "+00:00"))
        except ValueError:
            fail(f"--now {now!r}: not an ISO-8601 time")
        if when.tzinfo is None:
            fail(f"--now {now!r}: give a time zone, e.g. 2026-11-25T12:00:00Z")
    try:
        token = read_secret(GITLAB_API_TOKEN_ENVS if gitlab_url else GITHUB_API_TOKEN_ENVS, token_file)
    except ConfigError as exc:
        fail(str(exc))
    if not token:
        names = " / ".join(GITLAB_API_TOKEN_ENVS if gitlab_url else GITHUB_API_TOKEN_ENVS)
        fail(f"no API token: set {names} or pass --token-file")
    host: GitHost = (
        GitLabClient(token, gitlab_url) if gitlab_url else GitHubClient(token, github_url or "https://api.github.com")
    )
    try:
        workspace = Workspace(path)
        flow = PullRequestFlow(workspace, {host.provider: host}, clock=lambda: when)
        if post:
            outcome = flow.check(host, repo, number)
            result, cr = outcome.governance, outcome.change
        else:
            cr = host.change_request(repo, number)
            revision_check = check_revisions(workspace, flow.merge_base(cr), cr.head_sha)
            result = flow.governance(host, repo, cr, revision_check)
    except (HostError, WorkspaceError) as exc:
        fail(str(exc))
    if fmt == "json":
        click.echo(
            json.dumps({"pr": number, "head": cr.head_sha, "context": GOVERNANCE_CONTEXT, **result.to_dict()}, indent=2)
        )
    else:
        click.echo(f"{GOVERNANCE_CONTEXT}: {result.state} (#{number} at {cr.head_sha[:12]})")
        for verdict in result.environments:
            for req in verdict.requirements:
                mark = "ok     " if req.satisfied else ("FAILED " if req.hard else "MISSING")
                click.echo(f"  {mark} {verdict.environment}: {req.kind}: {req.message}")
        if not result.environments:
            click.echo("  no environment is affected")
    sys.exit(0 if result.state == "success" else 1)
