"""`mlp status` (sync and health per environment, object and model) and `mlp audit` (the audit log).

Both read the controller's state folder; neither needs the controller to be running.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mlp.cli._common import output_option
from mlp.cli._common import state_dir_option as _state_dir_option

if TYPE_CHECKING:
    from mlp.controller.store import StateStore

state_dir_option = _state_dir_option()


def _age(ts: float | None) -> str:
    if not ts:
        return "-"
    s = max(0, int(time.time() - ts))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def require_state(state_dir: Path) -> None:
    """Exit 2 with one line unless `state_dir` holds a controller's state (status, audit, sync)."""
    if not (state_dir / "state.db").exists():
        click.echo(
            f"error: {state_dir}: no controller state here (run `mlp controller --state-dir {state_dir}`)", err=True
        )
        sys.exit(2)


def _open(state_dir: Path) -> StateStore:
    from mlp.controller.store import StateStore

    require_state(state_dir)
    return StateStore(state_dir)


def render_status(state_dir: Path, env: str | None, fmt: str) -> tuple[str, int]:
    """(text, exit code): 0 when every shown environment is Synced and Healthy, 1 otherwise."""
    store = _open(state_dir)
    try:
        if env:
            one = store.load(env)
            if one is None:
                known = ", ".join(store.environments()) or "none yet"
                return f"error: environment {env!r} has no status (known: {known})", 2
            statuses = [one]
        else:
            statuses = store.all(details=fmt == "json")
    finally:
        store.close()
    code = 0 if statuses and all(s.sync_status == "Synced" and s.health == "Healthy" for s in statuses) else 1
    if fmt == "json":
        data = [s.to_json() for s in statuses]
        return json.dumps(data[0] if env else data, indent=2), code
    if not statuses:
        return "no environments reconciled yet", 1
    rows = [["ENVIRONMENT", "SYNC", "HEALTH", "REVISION", "SYNCED", "LAST SYNC", "MESSAGE"]]
    for s in statuses:
        rows.append(
            [
                s.env,
                s.sync_status,
                s.health,
                (s.revision or "-")[:12],
                (s.synced_revision or "-")[:12],
                _age(s.synced_at),
                s.message,
            ]
        )
    out = [_table(rows)]
    if env:
        s = statuses[0]
        if s.errors:
            out.append("\nERRORS")
            out.extend(f"  {e}" for e in s.errors)
        if s.models:
            # declared: what the repository asks; observed: what the runtime reports it serves
            rows = [["MODEL", "SERVED", "DECLARED", "OBSERVED", ""]]
            for m in s.models:
                declared = ", ".join(f"v{k}: {v}%" for k, v in m.traffic.items())
                observed = ", ".join(f"v{k}: {v}%" for k, v in (m.observed or {}).items()) or "-"
                rows.append([m.model, str(m.served_version or "-"), declared, observed, "DIFFERS" if m.differs else ""])
            out.append("\n" + _table(rows))
            notes = [f"  {m.model}: {m.observed_message}" for m in s.models if m.observed_message]
            if notes:
                out.append("\n".join(["", "OBSERVED", *notes]))
        if s.objects:
            rows = [["OBJECT", "SYNC", "HEALTH", "MESSAGE"]]
            rows += [[o.ref, o.sync_status, o.health, o.message] for o in s.objects]
            out.append("\n" + _table(rows))
    return "\n".join(out), code


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("env", required=False)
@state_dir_option
@output_option("text", "json")
@click.option("--watch", "-w", is_flag=True, help="Redraw every --every seconds until interrupted.")
@click.option("--every", type=float, default=2.0, show_default=True, help="Seconds between redraws with --watch.")
def status(env: str | None, state_dir: Path, fmt: str, watch: bool, every: float) -> None:
    """Show sync status, health and revisions of environments; with ENV, also its models and objects.

    Exit 0 when everything shown is Synced and Healthy, 1 otherwise, 2 on error.

    \b
    Examples:
      mlp status --state-dir /var/lib/mlp
      mlp status prod --state-dir /var/lib/mlp
      mlp status -o json --state-dir /var/lib/mlp | jq '.[].health'
      mlp status --watch --state-dir /var/lib/mlp
    """
    if not watch:
        text, code = render_status(state_dir, env, fmt)
        click.echo(text, err=code == 2)
        sys.exit(code)
    try:
        while True:
            text, code = render_status(state_dir, env, fmt)
            if code == 2:
                click.echo(text, err=True)
                sys.exit(2)
            if sys.stdout.isatty():
                click.clear()
            click.echo(f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC  (every {every:g}s, Ctrl-C to stop)")
            click.echo(text)
            time.sleep(every)
    except KeyboardInterrupt:
        pass


def parse_since(text: str) -> float:
    """`30m`, `2h30m`, `7d` ago (the one duration parser, `mlp.specs.units`), or an ISO 8601 time
    (UTC when no zone) -> Unix time."""
    from mlp.specs.units import parse_duration

    try:
        return time.time() - parse_duration(text.strip()).total_seconds()
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise click.BadParameter(f"{text!r} is neither a duration (30m, 2h, 7d) nor an ISO time") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--env", help="Only this environment.")
@click.option("--since", help="Only events after this: a duration ago (30m, 2h, 7d) or an ISO time.")
@click.option("--action", help="Only this action (apply, prune, self-heal, refused, rollback, merge, ...).")
@click.option("--limit", type=int, help="Only the newest N events.")
@state_dir_option
@output_option("text", "json")
def audit(env: str | None, since: str | None, action: str | None, limit: int | None, state_dir: Path, fmt: str) -> None:
    """Show the audit log: every apply, prune, self-heal, refused revision, rollback and merge.

    \b
    Examples:
      mlp audit --state-dir /var/lib/mlp
      mlp audit --env prod --since 7d -o json --state-dir /var/lib/mlp
      mlp audit --env prod --since 2026-11-01T00:00:00Z --action rollback
    """
    from mlp.controller.store import AuditLog

    start = parse_since(since) if since else None
    require_state(state_dir)
    log = AuditLog(state_dir)
    try:
        events = log.events(env=env, since=start, action=action, limit=limit)
    finally:
        log.close()
    if fmt == "json":
        click.echo(json.dumps([e.to_json() for e in events], indent=2))
        return
    if not events:
        click.echo("no audit events", err=True)
        return
    rows = [["TIME (UTC)", "ENVIRONMENT", "ACTION", "OUTCOME", "REVISION", "AUTHOR", "OBJECTS", "MESSAGE"]]
    for e in events:
        extra = ""
        if e.pr:
            extra = f" PR {e.pr}"
            if e.approvers:
                extra += f" approved by {', '.join(e.approvers)}"
        rows.append(
            [
                datetime.fromtimestamp(e.time, UTC).strftime("%Y-%m-%d %H:%M:%S"),
                e.environment,
                e.action,
                e.outcome,
                (e.revision or "-")[:12],
                (e.author or "-").split(" <")[0],
                str(len(e.objects)),
                (e.message + extra)[:160],
            ]
        )
    click.echo(_table(rows))
