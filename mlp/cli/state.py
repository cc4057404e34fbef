"""`mlp state export|import`: back up and restore the controller's state folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mlp.cli._common import CONTEXT, fail
from mlp.cli.status import state_dir_option


@click.group("state", context_settings=CONTEXT)
def state() -> None:
    """Back up and restore the state folder (status, rollouts, audit chain, deliveries, inventory).

    \b
    Examples:
      mlp state export --state-dir /var/lib/mlp --out mlp-state.json.gz
      mlp state import mlp-state.json.gz --state-dir /var/lib/mlp
    """


@state.command("export", context_settings=CONTEXT)
@state_dir_option
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Backup file to write (gzip-compressed when it ends in .gz).",
)
@click.option("-o", "--output", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def export(state_dir: Path, out: Path, fmt: str) -> None:
    """Write a consistent snapshot of every state database, safe while the controller runs.

    \b
    Example:
      mlp state export --state-dir /var/lib/mlp --out backups/mlp-$(date +%F).json.gz
    """
    from mlp.controller.backup import BackupError, export_state

    try:
        summary = export_state(state_dir, out, progress=lambda m: click.echo(m, err=True))
    except BackupError as exc:
        fail(str(exc))
    _report(summary, fmt, f"exported to {out}")


@state.command("import", context_settings=CONTEXT)
@click.argument("backup", type=click.Path(dir_okay=False, path_type=Path))
@state_dir_option
@click.option("--force", is_flag=True, help="Replace the databases the folder already holds.")
@click.option("-o", "--output", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def import_(backup: Path, state_dir: Path, force: bool, fmt: str) -> None:
    """Restore a backup into an empty state folder, after checking its checksum and audit chain.

    Start the controller on the folder afterwards: it converges from the restored status
    and inventory without applying again what had been applied.

    \b
    Example:
      mlp state import mlp-state.json.gz --state-dir /var/lib/mlp
    """
    from mlp.controller.backup import BackupError, import_state

    try:
        summary = import_state(backup, state_dir, force=force, progress=lambda m: click.echo(m, err=True))
    except BackupError as exc:
        fail(str(exc))
    _report(summary, fmt, f"restored into {state_dir}")


def _report(summary: dict[str, dict[str, int]], fmt: str, what: str) -> None:
    if fmt == "json":
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
        return
    for db, tables in summary.items():
        counts = ", ".join(f"{name} {n}" for name, n in sorted(tables.items()) if n)
        click.echo(f"{db}: {counts or 'empty'}")
    click.echo(what, err=True)
    sys.stdout.flush()
