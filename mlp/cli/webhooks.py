"""`mlp webhooks`: receive GitHub and GitLab webhooks and drive the PR flow."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import click

from mlp.cli._common import log_options, state_dir_option


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@log_options
@click.option("--repo", "repo", required=True, help="Platform repository: a local Git path or a clone URL.")
@click.option("--host", "host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", "port", default=8090, show_default=True, type=int, help="Port to listen on (0: any free).")
@state_dir_option(help="The controller's state folder: sync requests and the audit log go there.")
@click.option(
    "--github-secret-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="GitHub webhook secret [default: env MLP_GITHUB_WEBHOOK_SECRET].",
)
@click.option(
    "--gitlab-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="GitLab webhook secret token [default: env MLP_GITLAB_WEBHOOK_TOKEN].",
)
@click.option("--github-url", default="https://api.github.com", show_default=True, help="GitHub API URL.")
@click.option(
    "--github-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="GitHub API token for statuses and comments [default: env MLP_GITHUB_TOKEN / GITHUB_TOKEN].",
)
@click.option("--gitlab-url", default="https://gitlab.com/api/v4", show_default=True, help="GitLab API URL.")
@click.option(
    "--gitlab-api-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="GitLab API token [default: env MLP_GITLAB_TOKEN / GITLAB_TOKEN].",
)
@click.option(
    "--max-body-bytes",
    default=25 * 1024 * 1024,
    show_default=True,
    type=int,
    help="Larger deliveries are refused with 413 before their body is read.",
)
@click.option("--details-url", default=None, help="Link shown on the commit statuses (e.g. the mlp dashboard).")
@click.option(
    "--git-token-env", default=None, help="Variable holding an HTTPS token for fetching a private --repo URL."
)
@click.option("--git-token-file", type=click.Path(dir_okay=False, path_type=Path), help="File holding that token.")
@click.option(
    "--git-username",
    default="x-access-token",
    show_default=True,
    help="User name sent with the token (GitLab: oauth2).",
)
def webhooks(
    repo: str,
    host: str,
    port: int,
    state_dir: Path,
    github_secret_file: Path | None,
    gitlab_token_file: Path | None,
    github_url: str,
    github_token_file: Path | None,
    gitlab_url: str,
    gitlab_api_token_file: Path | None,
    max_body_bytes: int,
    details_url: str | None,
    git_token_env: str | None,
    git_token_file: Path | None,
    git_username: str,
) -> None:
    """Serve /webhooks/github and /webhooks/gitlab.

    Deliveries are authenticated (GitHub X-Hub-Signature-256, GitLab X-Gitlab-Token),
    deduplicated by delivery id, answered at once and processed in the background: a
    push to a branch an environment tracks asks the controller to reconcile it now; a
    pull/merge request gets mlp/validate and mlp/governance statuses and one plan
    comment; reviews re-evaluate governance; merges are written to the audit log.

    \b
    Example:
      export MLP_GITHUB_WEBHOOK_SECRET=... GITHUB_TOKEN=...
      mlp webhooks --repo https://github.com/acme/platform.git --port 8090 --state-dir /var/lib/mlp
    """
    import uvicorn

    from mlp.cli._common import lock_folder
    from mlp.serving.httpbounds import bounded_config
    from mlp.sources.git import GitAuth
    from mlp.webhooks.prcheck import WorkspaceError
    from mlp.webhooks.service import (
        GITHUB_API_TOKEN_ENVS,
        GITHUB_SECRET_ENV,
        GITLAB_API_TOKEN_ENVS,
        GITLAB_TOKEN_ENV,
        ConfigError,
        ServiceConfig,
        build_receiver,
        read_secret,
    )

    try:
        config = ServiceConfig(
            repo=repo,
            state_dir=state_dir,
            github_secret=read_secret((GITHUB_SECRET_ENV,), github_secret_file),
            gitlab_token=read_secret((GITLAB_TOKEN_ENV,), gitlab_token_file),
            github_api_url=github_url,
            github_api_token=read_secret(GITHUB_API_TOKEN_ENVS, github_token_file),
            gitlab_api_url=gitlab_url,
            gitlab_api_token=read_secret(GITLAB_API_TOKEN_ENVS, gitlab_api_token_file),
            max_body_bytes=max_body_bytes,
            details_url=details_url,
            git_auth=GitAuth(token_env=git_token_env, token_file=git_token_file, username=git_username),
        )
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if not config.github_secret and not config.gitlab_token:
        click.echo(
            f"error: no webhook secret: set {GITHUB_SECRET_ENV} or {GITLAB_TOKEN_ENV} "
            "(or --github-secret-file / --gitlab-token-file); unsigned deliveries are never accepted",
            err=True,
        )
        sys.exit(2)
    # One receiver per state folder: a second one would take the first one's queue.
    lock = lock_folder(state_dir / "webhooks")
    if lock is None:
        click.echo(f"error: {state_dir}: state folder in use by another mlp webhooks (use --state-dir)", err=True)
        sys.exit(2)
    try:
        receiver = build_receiver(config)
    except WorkspaceError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if not config.github_api_token and not config.gitlab_api_token:
        click.echo("warning: no GitHub/GitLab API token: pull requests get no statuses or comments", err=True)
    # Bind first, so `--port 0` can report the port it got.
    try:
        sock = socket.create_server((host, port), reuse_port=False)
    except OSError as exc:
        click.echo(f"error: cannot listen on {host}:{port}: {exc.strerror}", err=True)
        sys.exit(2)
    receiver.start()
    providers = [p for p, s in (("github", config.github_secret), ("gitlab", config.gitlab_token)) if s]
    bound = sock.getsockname()[1]
    click.echo(
        f"mlp webhooks: listening on http://{host}:{bound} ({', '.join('/webhooks/' + p for p in providers)}); "
        f"state in {state_dir}",
        err=True,
    )
    try:
        # bounded (header size and count, timeouts, connections); log_config=None keeps --log-format's logging
        server = uvicorn.Server(
            bounded_config(receiver.app, log_level="warning", access_log=False, lifespan="off", log_config=None)
        )
        server.run(sockets=[sock])
    finally:
        receiver.stop()
