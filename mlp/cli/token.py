"""`mlp token`: API tokens for machines (CI jobs, scripts) calling `mlp server`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mlp.cli.status import state_dir_option

ROLES = ["viewer", "developer", "approver", "admin"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def token() -> None:
    """Create, list and revoke API tokens (stored hashed in the state folder; shown once).

    \b
    Example:
      mlp token create --team data-science --role developer --expires 30d --state-dir /var/lib/mlp
      mlp token list --state-dir /var/lib/mlp
      mlp token revoke 3f9a1c2b7d4e --state-dir /var/lib/mlp
    """


@token.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--team", required=True, help="The team the token acts in (a Team spec's name).")
@click.option("--role", required=True, type=click.Choice(ROLES), help="Its role in that team.")
@click.option("--expires", default="30d", show_default=True, help="Lifetime: 12h, 30d, 2w; `never` for none.")
@click.option("--description", default="", help="What it is for (shown by `list`).")
@state_dir_option
@click.option("-o", "--output", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def create(team: str, role: str, expires: str, description: str, state_dir: Path, fmt: str) -> None:
    """Create a token and print it once: it is not stored, only its hash.

    \b
    Example:
      mlp token create --team data-science --role developer --expires 30d --state-dir /var/lib/mlp
    """
    from mlp.api.identity import TokenStore, parse_duration

    try:
        seconds = None if expires == "never" else parse_duration(expires)
    except ValueError as exc:
        click.echo(f"error: --expires: {exc}", err=True)
        sys.exit(2)
    store = TokenStore(state_dir)
    try:
        secret, info = store.create(team, role, expires_in=seconds, description=description)
    finally:
        store.close()
    if fmt == "json":
        click.echo(json.dumps({**info.to_json(), "token": secret}))
    else:
        click.echo(secret)
        click.echo(f"token {info.id}: team {team}, role {role}, expires {info.to_json()['expiresAt'] or 'never'}"
                   " (this is the only time the token is shown)", err=True)  # fmt: skip


@token.command(name="list", context_settings={"help_option_names": ["-h", "--help"]})
@state_dir_option
@click.option("-o", "--output", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def list_tokens(state_dir: Path, fmt: str) -> None:
    """List tokens (never their secrets).

    \b
    Example:
      mlp token list --state-dir /var/lib/mlp -o json
    """
    from mlp.api.identity import TokenStore

    store = TokenStore(state_dir)
    try:
        infos = [t.to_json() for t in store.list()]
    finally:
        store.close()
    if fmt == "json":
        click.echo(json.dumps(infos, indent=2))
        return
    click.echo(f"{'ID':14} {'TEAM':20} {'ROLE':10} {'EXPIRES':26} {'REVOKED':26} DESCRIPTION")
    for t in infos:
        click.echo(
            f"{t['id']:14} {t['team']:20} {t['role']:10} {t['expiresAt'] or 'never':26} {t['revokedAt'] or '-':26} "
            f"{t['description']}"
        )


@token.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("token_id")
@state_dir_option
def revoke(token_id: str, state_dir: Path) -> None:
    """Revoke a token by id; it stops working at once. Exit 1 when no active token has that id.

    \b
    Example:
      mlp token revoke 3f9a1c2b7d4e --state-dir /var/lib/mlp
    """
    from mlp.api.identity import TokenStore

    store = TokenStore(state_dir)
    try:
        done = store.revoke(token_id)
    finally:
        store.close()
    click.echo(f"revoked {token_id}" if done else f"no active token {token_id}", err=True)
    sys.exit(0 if done else 1)
