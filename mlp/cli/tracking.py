"""`mlp tracking serve`: an MLflow-protocol tracking server over SQLite or PostgreSQL."""

from __future__ import annotations

import socket
from pathlib import Path

import click

from mlp.cli._common import CONTEXT, fail


@click.group("tracking", context_settings=CONTEXT)
def tracking() -> None:
    """Experiment tracking that the `mlflow` client talks to.

    \b
    Example:
      mlp tracking serve --port 5000 --state-dir .mlp/tracking
      MLFLOW_TRACKING_URI=http://127.0.0.1:5000 python train.py
    """


@tracking.command("serve", context_settings=CONTEXT)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=5000, show_default=True, help="Port (0: any free port).")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".mlp/tracking"),
    show_default=True,
    help="Folder for the SQLite database and the artifacts.",
)
@click.option(
    "--database-url",
    envvar="MLP_TRACKING_DATABASE_URL",
    help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db [env MLP_TRACKING_DATABASE_URL; default: SQLite in the state folder].",
)
@click.option(
    "--artifacts",
    "artifacts",
    envvar="MLP_TRACKING_ARTIFACTS",
    help="Artifact store: a folder or s3://bucket/prefix [env MLP_TRACKING_ARTIFACTS; default: <state-dir>/artifacts].",
)
@click.option(
    "--s3-endpoint-url", envvar="MLFLOW_S3_ENDPOINT_URL", help="S3 endpoint (MinIO, moto) [env MLFLOW_S3_ENDPOINT_URL]."
)
@click.option(
    "--max-artifact-mb", type=click.IntRange(min=1), default=10240, show_default=True, help="Largest artifact accepted."
)
@click.option(
    "--limit-concurrency",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Connections served at once.",
)
def serve(
    host: str,
    port: int,
    state_dir: Path,
    database_url: str | None,
    artifacts: str | None,
    s3_endpoint_url: str | None,
    max_artifact_mb: int,
    limit_concurrency: int,
) -> None:
    """Serve MLflow's REST API and the mlflow-artifacts proxy.

    \b
    Example:
      mlp tracking serve --port 5000 --state-dir /var/lib/mlp/tracking
      mlp tracking serve --database-url postgresql+psycopg://mlp@db/mlp --artifacts s3://ml-artifacts/tracking
    """
    import uvicorn

    from mlp.tracking.server import create_app, open_service

    try:
        service = open_service(state_dir, database_url, artifacts, s3_endpoint_url, max_artifact_mb * 1024 * 1024)
    except Exception as exc:  # database unreachable, bad URL, S3 client configuration
        fail(f"tracking store: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    try:
        sock = socket.create_server((host, port))
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror}")
    bound = sock.getsockname()[1]
    click.echo(f"mlp tracking: listening on http://{host}:{bound}; state in {state_dir}", err=True)
    config = uvicorn.Config(
        create_app(service),
        log_level="warning",
        access_log=False,
        lifespan="off",
        limit_concurrency=limit_concurrency,
        timeout_keep_alive=30,
        h11_max_incomplete_event_size=64 * 1024,  # bounds request headers
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        service.close()
