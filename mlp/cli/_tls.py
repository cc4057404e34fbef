"""`--tls-cert/--tls-key` for every command that listens (server, up, webhooks, controller metrics)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click


def tls_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--tls-key",
        "tls_key",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help="PEM private key of --tls-cert.",
    )(f)
    return click.option(
        "--tls-cert",
        "tls_cert",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help="PEM certificate (chain): the listener speaks HTTPS only.",
    )(f)


def check_tls_or_exit(cert: Path | None, key: Path | None) -> None:
    """Exit 2 with one line when the pair is incomplete or does not load."""
    import ssl
    import sys

    if (cert is None) != (key is None):
        click.echo("error: --tls-cert and --tls-key go together", err=True)
        sys.exit(2)
    if cert is None or key is None:
        return
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        click.echo(f"error: cannot load the TLS certificate {cert} and its key: {exc}", err=True)
        sys.exit(2)


def uvicorn_tls(cert: Path | None, key: Path | None) -> dict[str, Any]:
    return {"ssl_certfile": str(cert), "ssl_keyfile": str(key)} if cert and key else {}
