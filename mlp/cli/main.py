"""The `mlp` command line: a click group whose subcommands are imported only when run.

Each subcommand lives in its own module under `mlp.cli`; `COMMANDS` maps a command name
to "module:attribute". Loading lazily keeps `mlp validate --help` fast, because the
heavy edges (kubernetes, fastapi, numpy) are never imported for commands that do not use them.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings

import click

from mlp import __version__

# name -> (module:attr, one-line help shown in `mlp --help` without importing the module)
COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("mlp.cli.validate:validate", "Validate a platform repository's specs."),
    "schemas": ("mlp.cli.schemas:schemas", "Export the JSON Schemas of the spec kinds."),
    "init": ("mlp.cli.init:init", "Scaffold a new platform repository."),
    "render": ("mlp.cli.render:render", "Render an environment into Kubernetes manifests."),
    "diff": ("mlp.cli.diff:diff", "Show what apply would change in an environment."),
    "apply": ("mlp.cli.apply:apply", "Converge an environment with the repository."),
    "plan": ("mlp.cli.plan:plan", "Plan the change between two Git revisions (PR view)."),
    "controller": ("mlp.cli.controller:controller", "Run the GitOps reconciler continuously."),
    "sync": ("mlp.cli.controller:sync", "Ask a running controller to reconcile an environment now."),
    "status": ("mlp.cli.status:status", "Show sync and health status of environments."),
    "audit": ("mlp.cli.status:audit", "Show the audit log."),
    "up": ("mlp.cli.up:up", "Serve an environment's models on this machine."),
    "predict": ("mlp.cli.predict:predict", "Run batch inference over a file."),
    "models": ("mlp.cli.models:models", "Manage model artifacts (push)."),
    "webhooks": ("mlp.cli.webhooks:webhooks", "Receive GitHub and GitLab webhooks."),
    "governance": ("mlp.cli.governance:governance", "Check a pull request against approval policy."),
    "install": ("mlp.cli.install:install", "Render the manifests that install mlp into a cluster."),
    "state": ("mlp.cli.state:state", "Back up and restore the controller's state folder."),
    "completion": ("mlp.cli.completion:completion", "Print the shell completion script (bash, zsh, fish)."),
}


def build_commit() -> str | None:
    """The commit this mlp was built from: pip's record of a VCS install, else the source checkout's HEAD."""
    import json
    import subprocess
    from importlib import metadata
    from pathlib import Path

    try:
        direct = metadata.distribution("mlp-gitops").read_text("direct_url.json")
        commit = json.loads(direct).get("vcs_info", {}).get("commit_id") if direct else None
        if commit:
            return str(commit)
    except (metadata.PackageNotFoundError, ValueError):
        pass
    source = Path(__file__).resolve().parents[2]
    if not (source / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    commit = build_commit()
    click.echo(f"mlp {__version__} (commit {commit[:12] if commit else 'unknown'})")
    ctx.exit(0)


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when that subcommand runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target[0].split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("mlp"):
                return _unavailable(cmd_name, "not implemented in this version")
            return _unavailable(cmd_name, f"needs the optional dependency {exc.name!r}: pip install 'mlp-gitops[all]'")
        command = getattr(module, attr)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _unavailable(name: str, why: str) -> click.Command:
    def run() -> None:
        click.echo(f"error: mlp {name}: {why}", err=True)
        sys.exit(2)

    return click.Command(name, callback=run, help=f"(unavailable: {why})")


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Print the version and the commit it was built from, and exit.",
)
def cli() -> None:
    """mlp: GitOps for machine learning.

    \b
    Example:
      mlp validate .
      mlp render --env staging
    """


def _returnable_heap_for_long_runs(argv: list[str]) -> None:
    """Re-execute `mlp controller` once with CPython's small-object allocator off (PYTHONMALLOC=malloc).

    The controller runs for months. CPython's own allocator keeps 1 MiB arenas for as long as any
    one object in them lives, so a single large reconcile (thousands of short-lived dicts) would
    set the process's memory for good; with the C allocator, what a step frees goes back to the
    OS page by page (`malloc_trim`, after each step). Costs one interpreter start. Skipped when
    PYTHONMALLOC is already set (PYTHONMALLOC=pymalloc keeps CPython's allocator), for --help, and
    off Linux (glibc's malloc_trim is what gives the pages back).
    """
    if len(argv) < 2 or argv[1] != "controller" or os.environ.get("PYTHONMALLOC"):
        return
    if not sys.platform.startswith("linux") or {"-h", "--help"} & set(argv[2:]):
        return
    env = {**os.environ, "PYTHONMALLOC": "malloc", "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "2")}
    # the same command line, interpreter options included (`python -X ... -m mlp.cli.main` or the script)
    os.execve(sys.executable, sys.orig_argv, env)


def main() -> None:
    _returnable_heap_for_long_runs(sys.argv)
    # With insecure-skip-tls-verify, urllib3 warns on every request: say it once per host.
    warnings.filterwarnings("once", message="Unverified HTTPS request")
    cli(prog_name="mlp")


if __name__ == "__main__":
    main()
