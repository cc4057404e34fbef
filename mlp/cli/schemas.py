"""`mlp schemas`: export the JSON Schemas that editors and other tools validate specs with."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def schemas() -> None:
    """JSON Schemas of the spec kinds.

    \b
    Example:
      mlp schemas export --out schemas
    """


@schemas.command("export")
@click.option(
    "--out",
    "out",
    default="schemas",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write one <kind>.json per kind into.",
)
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if any file in --out is missing or stale.")
def export(out: Path, check: bool) -> None:
    """Write one JSON Schema per kind (model.json, environment.json, ...).

    Point an editor at them from a spec file with
    `# yaml-language-server: $schema=../schemas/model.json`.

    \b
    Examples:
      mlp schemas export --out schemas
      mlp schemas export --out schemas --check
    """
    from mlp.specs.schema import exported

    files = exported()
    stale = [
        name
        for name, text in files.items()
        if not (out / name).is_file() or (out / name).read_text(encoding="utf-8") != text
    ]
    if check:
        for name in stale:
            click.echo(f"{out / name}: stale or missing; run `mlp schemas export --out {out}`", err=True)
        sys.exit(1 if stale else 0)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")
    click.echo(f"wrote {len(files)} schemas to {out}/ ({len(stale)} changed)")
