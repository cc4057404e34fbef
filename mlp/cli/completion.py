"""`mlp completion bash|zsh|fish`: print the shell completion script (as kubectl, argocd and flux do)."""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

from mlp.cli._common import CONTEXT, fail


@click.command("completion", context_settings=CONTEXT)
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the completion script for SHELL on stdout.

    \b
    Examples:
      source <(mlp completion bash)                       # this shell
      mlp completion bash > /etc/bash_completion.d/mlp    # every new shell
      mlp completion zsh > "${fpath[1]}/_mlp"
      mlp completion fish > ~/.config/fish/completions/mlp.fish
    """
    from mlp.cli.main import cli

    cls = get_completion_class(shell)
    if cls is None:  # pragma: no cover - click ships all three
        fail(f"no completion for {shell}")
    click.echo(cls(cli, {}, "mlp", "_MLP_COMPLETE").source())
