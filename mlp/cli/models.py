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
