"""`mlp predict`: batch inference over a CSV, Parquet or JSON Lines file, in chunks."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from mlp.cli._common import output_option


def _fail(msg: str) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(2)


@click.command("predict")
@click.argument("repo", default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", "model", required=True, help="Model name declared under specs/models/.")
@click.option("--version", "version", type=int, help="Version [default: the one --env deploys, else the newest].")
@click.option("--env", "env", help="Environment whose stable version (and artifact mirror) to use.")
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Input file: .csv, .parquet or .jsonl.",
)
@click.option(
    "--output-file",
    "output_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output file: .csv, .parquet or .jsonl (input columns + prediction).",
)
@click.option("--chunk-rows", default=10000, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--state-dir", type=click.Path(file_okay=False, path_type=Path), help="Artifact cache folder [default: REPO/.mlp]."
)
@click.option("--s3-endpoint-url", envvar="MLP_S3_ENDPOINT_URL", help="S3 endpoint [env MLP_S3_ENDPOINT_URL].")
@output_option("text", "json")
def predict(
    repo: Path,
    model: str,
    version: int | None,
    env: str | None,
    input_path: Path,
    output_path: Path,
    chunk_rows: int,
    state_dir: Path | None,
    s3_endpoint_url: str | None,
    fmt: str,
) -> None:
    """Run batch inference over a file, streaming in chunks (progress on stderr).

    \b
    Example:
      mlp predict . --model iris --input rows.csv --output-file scored.parquet
      mlp predict . --model breast-cancer --env dev --input big.parquet --output-file out.jsonl
    """
    from mlp.serving.artifacts import ArtifactError, ArtifactStore
    from mlp.serving.batch import BatchError, predict_file
    from mlp.serving.codec import Signature
    from mlp.serving.loaders import CustomModel, LoadError, load_model
    from mlp.sources.directory import read_directory
    from mlp.specs import load

    result = load(read_directory(repo))
    if not result.ok:
        _fail("\n".join(str(d) for d in result.diagnostics))
    specs = result.specs
    spec = specs.models.get(model)
    if spec is None:
        _fail(f"specs/models: no model {model!r} (declared: {', '.join(sorted(specs.models)) or 'none'})")
        return
    mirror = None
    environment = specs.environments.get(env) if env else specs.environments.get("dev")
    if env and environment is None:
        _fail(f"environments/: no environment {env!r}")
        return
    if environment is not None:
        if environment.spec.target.artifactMirror:
            mirror = repo / environment.spec.target.artifactMirror
        dep = environment.spec.deployments.get(model)
        if version is None and env and dep is not None:
            version = dep.version
    if version is None:
        version = max(v.version for v in spec.spec.versions)
    mv = spec.spec.version(version)
    if mv is None:
        _fail(
            f"Model/{model}: no version {version} (declared: {', '.join(str(v.version) for v in spec.spec.versions)})"
        )
        return
    store = ArtifactStore((state_dir or repo / ".mlp") / "cache", mirror=mirror, s3_endpoint_url=s3_endpoint_url)
    sig_spec: dict[str, Any] = spec.spec.signature.model_dump(mode="json", exclude_none=True)
    proba = str((sig_spec.get("outputs") or [{}])[0].get("type")) in ("float", "double")
    try:
        path = store.fetch(mv.uri, mv.digest)
        custom = spec.spec.custom
        loaded = load_model(
            spec.spec.framework.value, path, name=model, proba=proba, model_class=custom.modelClass if custom else None
        )
    except (ArtifactError, LoadError) as exc:
        _fail(f"Model/{model} v{version}: {exc}")
        return
    if isinstance(loaded, CustomModel):
        _fail(f"Model/{model}: batch inference runs native models only (this one is a custom kserve.Model)")
        return
    sig = Signature.from_spec(sig_spec, loaded.input_dtype)
    started = time.monotonic()
    tty = sys.stderr.isatty()

    def progress(rows: int) -> None:
        rate = rows / max(1e-9, time.monotonic() - started)
        lead = "\r" if tty else ""
        click.echo(f"{lead}  {rows:>12,} rows  {rate:>12,.0f} rows/s", err=True, nl=not tty)

    try:
        rows = predict_file(loaded.predict, sig, input_path, output_path, chunk_rows=chunk_rows, progress=progress)
    except BatchError as exc:
        if tty:
            click.echo("", err=True)
        _fail(str(exc))
        return
    if tty:
        click.echo("", err=True)
    seconds = time.monotonic() - started
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "model": model,
                    "version": version,
                    "rows": rows,
                    "output": str(output_path),
                    "seconds": round(seconds, 3),
                }
            )
        )
    else:
        click.echo(f"{model} v{version}: {rows:,} rows -> {output_path} in {seconds:.2f}s")
