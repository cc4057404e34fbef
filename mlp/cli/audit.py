"""`mlp audit`: show the audit log, verify its hash chain, export it, and ask what served an environment when.

`mlp audit` with options only lists events (as before); the subcommands are:
- `verify`: walk the hash chain, name the first edited, deleted or reordered record (exit 1);
- `export`: JSON lines with the chain fields, for a SIEM;
- `at ENV --time T`: what served ENV at T, from which commit, approved by whom.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from mlp.cli import status as _status


def _list(ctx: click.Context, **kwargs: Any) -> None:
    if ctx.invoked_subcommand is None:
        ctx.invoke(_status.audit, **kwargs)


audit = click.Group(
    "audit",
    params=list(_status.audit.params),
    callback=click.pass_context(_list),
    invoke_without_command=True,
    help=(_status.audit.help or "")
    + "\n\nSubcommands: `verify` (check the hash chain), `export` (JSON lines for a SIEM), "
    "`at ENV --time T` (what served ENV at T).",
    context_settings={"help_option_names": ["-h", "--help"]},
)


@audit.command(context_settings={"help_option_names": ["-h", "--help"]})
@_status.state_dir_option
@click.option("--expect-head", help="The head hash recorded earlier (also catches records removed from the end).")
@click.option("-o", "--output", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def verify(state_dir: Path, expect_head: str | None, fmt: str) -> None:
    """Check the audit log's hash chain; exit 1 naming the first edited, deleted or reordered record.

    \b
    Example:
      mlp audit verify --state-dir /var/lib/mlp
      mlp audit verify --state-dir /var/lib/mlp --expect-head 3f1c...   # head printed by an earlier verify
    """
    from mlp.controller.auditchain import verify as check
    from mlp.controller.store import connect

    _status.require_state(state_dir)
    conn = connect(state_dir)
    try:
        result = check(conn, expect_head)
    finally:
        conn.close()
    if fmt == "json":
        click.echo(json.dumps(result.to_json(), indent=2))
    elif result.ok:
        unchained = f" ({result.unchained} older records predate the chain)" if result.unchained else ""
        click.echo(f"ok: {result.records} records, chain intact{unchained}; head {result.head}")
    else:
        click.echo(f"TAMPERED: {result.problem}", err=True)
    sys.exit(0 if result.ok else 1)


@audit.command(context_settings={"help_option_names": ["-h", "--help"]})
@_status.state_dir_option
@click.option("--env", help="Only this environment.")
@click.option("--since", help="Only events after this: a duration ago (30m, 2h, 7d) or an ISO time.")
@click.option(
    "--out", "out", type=click.Path(dir_okay=False, path_type=Path), help="Write to this file instead of stdout."
)
def export(state_dir: Path, env: str | None, since: str | None, out: Path | None) -> None:
    """Export the audit log as JSON lines (one record per line, oldest first, with its hash and the previous hash).

    \b
    Example:
      mlp audit export --state-dir /var/lib/mlp --since 1d >> /var/log/siem/mlp-audit.jsonl
    """
    from mlp.controller.auditchain import export_rows
    from mlp.controller.store import connect

    _status.require_state(state_dir)
    start = _status.parse_since(since) if since else None
    conn = connect(state_dir)
    try:
        stream = open(out, "w", encoding="utf-8") if out else sys.stdout  # noqa: SIM115
        try:
            for line in export_rows(conn, env=env, since=start):
                stream.write(line + "\n")
        finally:
            if out:
                stream.close()
    except OSError as exc:
        click.echo(f"error: cannot write {out}: {exc.strerror}", err=True)
        sys.exit(2)
    finally:
        conn.close()


@audit.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("env")
@click.option("--time", "when", required=True, help="An ISO time (UTC when no zone), or a duration ago (2h, 7d).")
@_status.state_dir_option
@click.option("-o", "--output", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def at(env: str, when: str, state_dir: Path, fmt: str) -> None:
    """What served ENV at a time: the revision applied last before it, and the pull request and approvers behind it.

    Exit 0 when something was applied before that time, 1 when nothing was.

    \b
    Example:
      mlp audit at prod --time 2026-11-30T14:00:00Z --state-dir /var/lib/mlp
    """
    from mlp.controller.auditchain import served_at
    from mlp.controller.store import connect

    _status.require_state(state_dir)
    t = _status.parse_since(when)
    conn = connect(state_dir)
    try:
        found = served_at(conn, env, t)
    finally:
        conn.close()
    stamp = datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")
    if fmt == "json":
        click.echo(json.dumps({"environment": env, "time": stamp, "served": found}, indent=2))
    elif found is None:
        click.echo(f"nothing had been applied to {env} by {stamp}")
    else:
        applied = datetime.fromtimestamp(found["appliedAt"], UTC).isoformat(timespec="seconds")
        click.echo(
            f"{env} at {stamp}: revision {found['revision']} (applied {applied}, audit record {found['applyRecord']})"
        )
        if found["pr"]:
            approvers = ", ".join(found["approvers"]) or "nobody"
            click.echo(f"  from {found['pr']} (merge commit {found['mergeCommit']}), approved by {approvers}")
        else:
            click.echo("  no merge recorded for that revision (applied without a pull request through the webhooks)")
        for obj in found["objects"]:
            click.echo(f"  {obj}")
    sys.exit(0 if found is not None else 1)
