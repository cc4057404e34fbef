"""`mlp models push`: upload a model artifact and print the `uri` and `digest` for its spec."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mlp.cli._common import output_option
from mlp.serving.artifacts import ArtifactError, ArtifactStore


@click.group("models")
def models() -> None:
    """Manage model artifacts.

    \b
    Example:
      mlp models push model.joblib --model iris --to s3://mlp-models
    """


@models.command("push")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--model", "model", required=True, help="Model name (the spec's metadata.name).")
@click.option("--version", "version", type=click.IntRange(min=1), help="Version number [default: next free].")
@click.option("--to", "dest", required=True, help="Destination prefix: s3://bucket[/prefix] or file:///abs/dir.")
@click.option(
    "--s3-endpoint-url", envvar="MLP_S3_ENDPOINT_URL", help="S3 endpoint (MinIO, moto) [env MLP_S3_ENDPOINT_URL]."
)
@output_option("text", "json")
def push(file: Path, model: str, version: int | None, dest: str, s3_endpoint_url: str | None, fmt: str) -> None:
    """Upload FILE to <to>/<model>/<version>/model.<ext>; print its uri and sha256 digest.

    \b
    Example:
      mlp models push model.joblib --model iris --version 3 --to s3://mlp-models
      mlp models push model.json --model breast-cancer --to file:///srv/models -o json
    """
    store = ArtifactStore(Path(".mlp") / "cache", s3_endpoint_url=s3_endpoint_url)
    try:
        uri, digest, number = store.push(file, dest, model, version)
    except ArtifactError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except Exception as exc:  # boto3/botocore: credentials, endpoint, permissions
        click.echo(f"error: {dest}: upload failed: {type(exc).__name__}: {exc}", err=True)
        sys.exit(2)
    if fmt == "json":
        click.echo(json.dumps({"model": model, "version": number, "uri": uri, "digest": digest}))
        return
    click.echo(f"uri:    {uri}")
    click.echo(f"digest: {digest}")
    click.echo("\nadd to specs/models/<model>.yaml under spec.versions:")
    click.echo(f"  - version: {number}\n    uri: {uri}\n    digest: {digest}")


@models.command("register")
@click.option("--run", "run_id", required=True, help="Tracking run id whose model to register.")
@click.option("--model", "model", required=True, help="Model name (the Model spec's metadata.name).")
@click.option("--artifact", help="Model file under the run's artifacts [default: the model file log_model wrote].")
@click.option(
    "--to",
    "dest",
    envvar="MLP_MODEL_STORE",
    required=True,
    help="Model store prefix the artifact is copied to: s3://bucket[/prefix] or file:///dir [env MLP_MODEL_STORE].",
)
@click.option(
    "--tracking-uri", envvar="MLFLOW_TRACKING_URI", required=True, help="Tracking server [env MLFLOW_TRACKING_URI]."
)
@click.option("--repo", "repo", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True)
@click.option("--base", help="Branch the change request targets [default: the checked-out branch].")
@click.option("--remote", default="origin", show_default=True, help="Git remote the branch is pushed to.")
@click.option("--no-push", is_flag=True, help="Commit on the new branch but do not push or open a change request.")
@click.option("--github-repo", help="owner/name: open a GitHub pull request there.")
@click.option("--github-url", envvar="MLP_GITHUB_API_URL", default="https://api.github.com", show_default=True)
@click.option("--gitlab-project", help="group/name: open a GitLab merge request there.")
@click.option("--gitlab-url", envvar="MLP_GITLAB_API_URL", default="https://gitlab.com/api/v4", show_default=True)
@click.option(
    "--s3-endpoint-url", envvar="MLP_S3_ENDPOINT_URL", help="S3 endpoint (MinIO, moto) [env MLP_S3_ENDPOINT_URL]."
)
@click.option("-o", "--output", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def register(
    run_id: str,
    model: str,
    artifact: str | None,
    dest: str,
    tracking_uri: str,
    repo: Path,
    base: str | None,
    remote: str,
    no_push: bool,
    github_repo: str | None,
    github_url: str,
    gitlab_project: str | None,
    gitlab_url: str,
    s3_endpoint_url: str | None,
    fmt: str,
) -> None:
    """Add a tracked run's model as a new version of its spec, on a branch, as a pull request.

    Copies the run's model file to the model store, appends a version (uri, sha256 digest,
    metrics, lineage) to the Model spec keeping its comments and layout, commits it on
    `mlp/register/<model>-v<N>`, pushes, and opens a pull/merge request whose comment shows the
    candidate's metrics against what every environment deploys. Tokens: GITHUB_TOKEN / GITLAB_TOKEN.

    \b
    Example:
      mlp models register --run 0f3c... --model iris --to s3://mlp-models --github-repo acme/platform
      mlp models register --run 0f3c... --model iris --to file:///srv/models --no-push -o json
    """
    import os

    from mlp.tracking.client import ClientError, TrackingClient
    from mlp.tracking.registry import RegistryError
    from mlp.tracking.registry import register as do_register
    from mlp.webhooks.hosting import GitHost

    host: GitHost | None = None
    host_repo = github_repo or gitlab_project
    if github_repo and gitlab_project:
        click.echo("error: --github-repo and --gitlab-project exclude each other", err=True)
        sys.exit(2)
    if host_repo and not no_push:
        if github_repo:
            from mlp.webhooks.github import GitHubClient

            token = os.environ.get("MLP_GITHUB_TOKEN") or os.environ.get("GITHUB_TOKEN")
            host = GitHubClient(token or "", github_url) if token else None
        else:
            from mlp.webhooks.gitlab import GitLabClient

            token = os.environ.get("MLP_GITLAB_TOKEN") or os.environ.get("GITLAB_TOKEN")
            host = GitLabClient(token or "", gitlab_url) if token else None
        if host is None:
            click.echo("error: opening a change request needs GITHUB_TOKEN / GITLAB_TOKEN", err=True)
            sys.exit(2)
    try:
        with TrackingClient(tracking_uri) as client:
            result = do_register(
                repo,
                client,
                run_id,
                model,
                dest,
                artifact=artifact,
                host=host,
                host_repo=host_repo,
                base=base,
                remote=remote,
                push=not no_push,
                s3_endpoint_url=s3_endpoint_url,
                progress=lambda m: click.echo(f"... {m}", err=True),
            )
    except (RegistryError, ClientError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if fmt == "json":
        click.echo(json.dumps(result.json(), indent=2))
        return
    click.echo(f"{model} version {result.version}: {result.uri} ({result.digest})")
    click.echo(f"branch {result.branch} ({result.commit[:12]}) edits {result.spec_path}")
    if result.pull_url:
        click.echo(f"change request: {result.pull_url}")
