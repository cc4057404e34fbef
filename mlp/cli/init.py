"""`mlp init`: scaffold a platform repository that validates clean."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("directory", default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite files that already exist.")
def init(directory: Path, force: bool) -> None:
    """Create specs/, environments/ (dev, staging, prod), templates/, schemas/ and CI jobs.

    The result passes `mlp validate` as it is; edit the example model and team to begin.

    \b
    Example:
      mlp init my-platform && mlp validate my-platform
    """
    from mlp.scaffold import files
    from mlp.specs.schema import exported

    plan = dict(files())
    plan.update({f"schemas/{name}": text for name, text in exported().items()})
    existing = [rel for rel in plan if (directory / rel).exists()]
    if existing and not force:
        for rel in existing:
            click.echo(f"error: {directory / rel} already exists (use --force to overwrite)", err=True)
        sys.exit(2)
    for rel, text in sorted(plan.items()):
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        click.echo(f"  created {path}")
    click.echo(f"Initialised an mlp platform repository in {directory}. Next: mlp validate {directory}")
