"""`mlp diff`: what `mlp apply` would change in an environment; CI gates on its exit code."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mlp.cli._common import (
    CONTEXT,
    EXIT_CHANGES,
    EXIT_OK,
    cluster_options,
    env_option,
    environment,
    fail,
    load_repo,
    make_target,
    output_option,
    repo_option,
)
from mlp.cli._common import use_color as use_colour


@click.command("diff", context_settings=CONTEXT)
@env_option
@output_option(
    "text", "json", "markdown", help="text: coloured unified diff per object; json for scripts; markdown for PRs."
)
@click.option("--prune", is_flag=True, help="Include deletions of owned objects no longer declared (as apply --prune).")
@click.option(
    "--color/--no-color", "color", default=None, help="Colour the text diff [default: on a terminal without NO_COLOR]."
)
@repo_option
@cluster_options
def diff(
    env: str,
    fmt: str,
    prune: bool,
    color: bool | None,
    repo: Path,
    kubeconfig: str | None,
    context: str | None,
    state_dir: Path | None,
) -> None:
    """Show what apply would change in an environment, comparing only the fields mlp sets.

    Exit 0 when the environment is up to date, 1 when there are changes, 2 on error
    (invalid specs, template error, unreachable cluster, forbidden).

    \b
    Examples:
      mlp diff --env staging
      mlp diff --env prod -o markdown > plan.md
      mlp diff --env prod -o json --kubeconfig ~/.kube/prod --context prod
    """
    from mlp.engine import Policy, reconcile
    from mlp.plan.core import PlanRefused
    from mlp.plan.format import plan_to_json, plan_to_markdown, plan_to_text
    from mlp.render import RenderError
    from mlp.targets.base import TargetError

    snapshot, result = load_repo(repo)
    env_spec = environment(result, env)
    target = make_target(env_spec, repo=repo, kubeconfig=kubeconfig, context=context, state_dir=state_dir)
    try:
        try:
            plan = reconcile(snapshot, env, target, Policy(prune=prune, execute=False), loaded=result).plan
        except PlanRefused as exc:
            click.echo(f"warning: mlp apply would refuse this plan: {exc}", err=True)
            policy = Policy(prune=prune, allow_empty=True, execute=False)
            plan = reconcile(snapshot, env, target, policy, loaded=result).plan
    except (RenderError, PlanRefused, TargetError, ValueError) as exc:
        fail(str(exc))
    if fmt == "json":
        click.echo(plan_to_json(plan), nl=False)
    elif fmt == "markdown":
        click.echo(plan_to_markdown(plan), nl=False)
    else:
        use_color = use_colour(color)
        click.echo(plan_to_text(plan, color=use_color), nl=False)
    sys.exit(EXIT_CHANGES if plan.has_changes else EXIT_OK)
