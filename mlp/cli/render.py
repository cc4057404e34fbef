"""`mlp render`: print (or write) the manifests an environment declares."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from mlp.cli._common import CONTEXT, env_option, environment, fail, load_repo, output_option, render_env, repo_option

_RENDERED = re.compile(r"^\d+-[a-z0-9]+-[a-z0-9.-]+\.(yaml|json)$")


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
    from mlp.render.yamlio import dump, dump_all

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
    try:
        out.mkdir(parents=True, exist_ok=True)
        for old in out.iterdir():  # a deleted object must not linger as a stale file
            if old.is_file() and _RENDERED.match(old.name):
                old.unlink()
        width = max(2, len(str(len(objs))))
        for index, obj in enumerate(objs, start=1):
            name = f"{index:0{width}d}-{obj['kind'].lower()}-{obj['metadata']['name']}.{fmt}"
            text = json.dumps(obj, indent=2, sort_keys=True) + "\n" if fmt == "json" else dump(obj)
            (out / name).write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"{out}: cannot write: {exc.strerror or exc}")
    click.echo(f"wrote {len(objs)} objects for environment {env} to {out}", err=True)
