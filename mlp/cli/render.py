"""`mlp render`: print (or write) the manifests an environment declares."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mlp.cli._common import (
    CONTEXT,
    env_option,
    environment,
    load_repo,
    output_option,
    render_env,
    repo_option,
    write_manifest_folder,
)


@click.command("render", context_settings=CONTEXT)
@env_option
@output_option("yaml", "json", default="yaml", help="yaml: a multi-document stream; json: a v1 List with items.")
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write one file per object into this folder (NN-kind-name.yaml) instead of stdout; "
    "files an earlier render wrote there (NN-*.yaml/json) are removed first.",
)
@repo_option
def render(env: str, fmt: str, out: Path | None, repo: Path) -> None:
    """Render an environment into Kubernetes manifests (no cluster needed).

    Objects are stamped with mlp's ownership labels and annotations, sorted in apply
    order, with sorted keys: the output is byte-stable for a given repository.

    \b
    Examples:
      mlp render --env staging
      mlp render --env prod -o json | jq '.items[].metadata.name'
      mlp render --env prod --out rendered/prod --repo platform/
    """
    from mlp.render.yamlio import dump_all

    snapshot, result = load_repo(repo)
    environment(result, env)
    objs = render_env(snapshot, result, env)
    if out is None:
        if fmt == "json":
            click.echo(
                json.dumps(
                    {"apiVersion": "v1", "kind": "List", "metadata": {}, "items": objs}, indent=2, sort_keys=True
                )
            )
        else:
            click.echo(dump_all(objs), nl=False)
        return
    write_manifest_folder(out, objs, fmt)
    click.echo(f"wrote {len(objs)} objects for environment {env} to {out}", err=True)
