"""`mlp validate`: check a platform repository the way CI would."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mlp.cli._common import output_option

if TYPE_CHECKING:
    from mlp.specs import Diagnostic


def _workspace_relative(diagnostics: list[Diagnostic], path: Path) -> list[Diagnostic]:
    """Paths as the CI workspace (the current directory) sees them.

    GitHub and GitLab resolve annotation paths against the checkout root; when the platform
    repository is a subfolder (`mlp validate platform/`), `specs/x.yaml` must become
    `platform/specs/x.yaml` or the annotation lands on no file. Left as they are when PATH is
    the current directory or outside it.
    """
    try:
        prefix = path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return diagnostics
    if prefix in ("", "."):
        return diagnostics
    return [dataclasses.replace(d, path=f"{prefix}/{d.path}") for d in diagnostics]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("path", default=".", type=click.Path(file_okay=False, path_type=Path))
@output_option(
    "text",
    "json",
    "github",
    "gitlab",
    help="text for people; json for scripts; github/gitlab for CI annotations (their paths are "
    "relative to the current directory, the CI workspace).",
)
@click.option(
    "--output-file",
    "output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the report to this file (e.g. gl-code-quality-report.json) instead of stdout.",
)
def validate(path: Path, fmt: str, output: Path | None) -> None:
    """Validate every spec under PATH/specs and PATH/environments.

    Reports every problem as `path:line:col: Kind/name: message`: YAML syntax, schema,
    duplicate names, cross-references, promotion cycles and policy (plaintext secrets,
    unsafe artifact URIs, unguarded production). Exit 0 when valid, 1 when not, 2 on
    usage or internal error.

    \b
    Examples:
      mlp validate .
      mlp validate platform/ -o github
      mlp validate . -o json | jq .summary
      mlp validate . -o gitlab --output-file gl-code-quality-report.json
    """
    from mlp.sources.directory import read_directory
    from mlp.specs import load, report

    if not path.is_dir():
        click.echo(f"error: {path}: not a directory", err=True)
        sys.exit(2)
    try:
        snapshot = read_directory(path)
    except OSError as exc:
        click.echo(f"error: {path}: cannot read the repository: {exc}", err=True)
        sys.exit(2)
    spec_files = snapshot.spec_files()
    if not spec_files:
        click.echo(f"error: {path}: no spec files under specs/ or environments/", err=True)
        sys.exit(2)
    try:
        result = load(snapshot)
    except Exception as exc:  # a bug in mlp, not in the specs: exit 2 so CI does not call the specs invalid
        if os.environ.get("MLP_DEBUG"):
            raise
        click.echo(
            f"error: internal error while validating {path}: {type(exc).__name__}: {exc} "
            "(set MLP_DEBUG=1 for a traceback)",
            err=True,
        )
        sys.exit(2)
    docs = len(result.specs)
    if fmt == "text":
        text = report.as_text(result.diagnostics, len(spec_files), docs)
    elif fmt == "json":
        text = report.as_json(result.diagnostics, len(spec_files), docs)
    elif fmt == "github":
        text = report.as_github(_workspace_relative(result.diagnostics, path))
    else:
        text = report.as_gitlab(_workspace_relative(result.diagnostics, path))
    if output is not None:
        try:
            output.write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            click.echo(f"error: cannot write {output}: {exc}", err=True)
            sys.exit(2)
        if fmt != "text":
            click.echo(report.as_text(result.diagnostics, len(spec_files), docs).splitlines()[-1], err=True)
    elif text:
        click.echo(text)
    sys.exit(0 if result.ok else 1)
