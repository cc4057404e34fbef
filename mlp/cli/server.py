"""`mlp server`: the platform REST API (identity, RBAC, audit) on one port."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mlp.cli._common import log_options


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--repo", "repo", default=".", show_default=True, help="Platform repository: a folder, a Git repository or a URL."
)
@click.option("--ref", "ref", help="Branch the read routes show [default: the repository's current branch, or main].")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8070, show_default=True, type=click.IntRange(0, 65535), help="0: any free port.")
@click.option(
    "--state-dir",
    "state_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The controller's state folder (status, audit, API tokens).",
)
@click.option(
    "--kratos-url",
    envvar="MLP_KRATOS_URL",
    help="Ory Kratos public URL [env MLP_KRATOS_URL]; without it only API tokens authenticate.",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="PEM certificate: serve HTTPS only.",
)
@click.option(
    "--tls-key", type=click.Path(dir_okay=False, exists=True, path_type=Path), help="PEM private key of --tls-cert."
)
@click.option("--max-body-bytes", default=1 << 20, show_default=True, type=click.IntRange(1024, 64 << 20))
@click.option("--max-connections", default=1000, show_default=True, type=click.IntRange(1, 100_000))
@click.option(
    "--idle-timeout",
    default=15,
    show_default=True,
    type=click.IntRange(1, 3600),
    help="Seconds an idle keep-alive connection stays open.",
)
@click.option("--github-repo", help="owner/name on GitHub: write routes open pull requests there.")
@click.option(
    "--github-url",
    default="https://api.github.com",
    show_default=True,
    help="GitHub API URL (GitHub Enterprise: https://HOST/api/v3).",
)
@click.option(
    "--github-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File holding the GitHub token [default: env MLP_GITHUB_TOKEN or GITHUB_TOKEN].",
)
@click.option("--openapi", "print_openapi", is_flag=True, help="Print the OpenAPI document and exit.")
@log_options
def server(
    repo: str,
    ref: str | None,
    host: str,
    port: int,
    state_dir: Path,
    kratos_url: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    max_body_bytes: int,
    max_connections: int,
    idle_timeout: int,
    github_repo: str | None,
    github_url: str,
    github_token_file: Path | None,
    print_openapi: bool,
) -> None:
    """Serve the platform API: environments, models, deployments, rollouts, monitors, experiments, plans, audit.

    Callers authenticate with an Ory Kratos session (browser cookie or X-Session-Token, checked
    against --kratos-url) or an API token (`mlp token create`). What they may see and do comes
    from the Team specs in the repository (roles viewer, developer, approver, admin per team).
    Writes act on the controller's state (sync, pause) or open a pull request (--github-repo).

    \b
    Example:
      export MLP_KRATOS_URL=https://kratos.internal:4433  GITHUB_TOKEN=...
      mlp server --repo https://github.com/acme/platform.git --state-dir /var/lib/mlp --port 8070 \\
          --github-repo acme/platform --tls-cert tls.crt --tls-key tls.key
    """
    import uvicorn

    from mlp.api.app import ApiSettings, create_app, openapi_document
    from mlp.api.server import Listener, check_tls, uvicorn_config
    from mlp.webhooks.prcheck import WorkspaceError
    from mlp.webhooks.service import GITHUB_API_TOKEN_ENVS, ConfigError, read_secret

    problem = check_tls(tls_cert, tls_key)
    if problem:
        click.echo(f"error: {problem}", err=True)
        sys.exit(2)
    settings = ApiSettings(repo=repo, state_dir=state_dir, kratos_url=kratos_url, ref=ref, max_body=max_body_bytes)
    try:
        app = create_app(settings)
    except WorkspaceError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if print_openapi:
        click.echo(openapi_document(app), nl=False)
        return
    if github_repo:
        from mlp.api.proposals import Proposals
        from mlp.webhooks.github import GitHubClient

        try:
            token = read_secret(GITHUB_API_TOKEN_ENVS, github_token_file)
        except ConfigError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        if not token:
            click.echo(
                "error: --github-repo needs a token (MLP_GITHUB_TOKEN, GITHUB_TOKEN or --github-token-file)", err=True
            )
            sys.exit(2)
        try:
            settings.proposals = Proposals(app.state.api.view, GitHubClient(token, github_url), github_repo)
        except ValueError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
    if not kratos_url:
        click.echo("warning: no --kratos-url / MLP_KRATOS_URL: only API tokens authenticate", err=True)
    listener = Listener(host, port, tls_cert, tls_key, max_connections=max_connections, idle_timeout=idle_timeout)
    server = uvicorn.Server(uvicorn_config(app, listener))
    # port 0: report the port uvicorn bound once it is up
    original = server.startup

    async def startup(sockets: list | None = None) -> None:  # type: ignore[type-arg]
        await original(sockets=sockets)
        bound = server.servers[0].sockets[0].getsockname()[1] if server.servers else port
        click.echo(
            f"mlp server: listening on {listener.scheme}://{host}:{bound}/api/v1 (state in {state_dir})", err=True
        )

    server.startup = startup  # type: ignore[method-assign]
    server.run()
