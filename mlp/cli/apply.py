"""`mlp apply`: converge an environment with the repository, printing the change set."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mlp.cli._common import (
    CONTEXT,
    EXIT_ERROR,
    EXIT_OK,
    apply_concurrency,
    cluster_options,
    env_option,
    environment,
    fail,
    load_repo,
    make_target,
    output_option,
    progress_printer,
    repo_option,
    summarize_done,
    use_color,
)


@click.command("apply", context_settings=CONTEXT)
@env_option
@click.option("--prune", is_flag=True, help="Delete objects mlp owns in this environment that are no longer declared.")
@click.option("--dry-run", is_flag=True, help="Send every change as a server-side dry run; nothing is persisted.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (needed when not on a terminal).")
@click.option("--allow-empty", is_flag=True, help="Allow a plan that deletes every object mlp owns in the environment.")
@click.option("--force-conflicts", is_flag=True, help="Take ownership of fields another field manager owns.")
@output_option("text", "json", help="json: print the change set as JSON on stdout.")
@repo_option
@cluster_options
def apply(
    env: str,
    prune: bool,
    dry_run: bool,
    yes: bool,
    allow_empty: bool,
    force_conflicts: bool,
    fmt: str,
    repo: Path,
    kubeconfig: str | None,
    context: str | None,
    state_dir: Path | None,
) -> None:
    """Converge an environment with the repository (server-side apply, field manager mlp).

    Prints the plan, asks for confirmation (unless --yes or --dry-run), then applies it
    in order with progress on stderr. Only changed objects are written: applying an
    up-to-date environment makes no write calls. On a failure it stops, and says what
    was applied before it and what was not attempted. Exit 0 on success, 2 on error.

    \b
    Examples:
      mlp apply --env staging --dry-run
      mlp apply --env staging --prune --yes
      mlp apply --env prod --yes --force-conflicts --kubeconfig ~/.kube/prod
    """
    from mlp.engine import Decision, Policy, reconcile
    from mlp.plan.core import Plan, PlanRefused
    from mlp.plan.format import plan_to_text
    from mlp.render import RenderError
    from mlp.targets.base import TargetError

    snapshot, result = load_repo(repo)
    env_spec = environment(result, env)
    target = make_target(env_spec, repo=repo, kubeconfig=kubeconfig, context=context, state_dir=state_dir)
    text_out = fmt == "text"
    echo = (lambda s: click.echo(s, nl=False)) if text_out else (lambda s: click.echo(s, err=True, nl=False))

    def decide(plan: Plan) -> Decision:
        echo(plan_to_text(plan, color=use_color() and text_out))
        if not yes and not dry_run:
            if not sys.stdin.isatty():
                fail("not applying without confirmation: pass --yes (stdin is not a terminal)")
            if not click.confirm(f"Apply these changes to {env}?", default=False, err=True):
                fail("aborted; nothing applied")
        return Decision(True)

    policy = Policy(
        prune=prune,
        allow_empty=allow_empty,
        dry_run=dry_run,
        force_conflicts=force_conflicts,
        progress=progress_printer(True),
        concurrency=apply_concurrency(target),
        decide=decide,
    )
    try:
        run = reconcile(snapshot, env, target, policy, loaded=result)
    except (RenderError, PlanRefused, TargetError, ValueError) as exc:
        fail(str(exc))
    changes = run.changes
    if changes is None:  # nothing to change
        echo(plan_to_text(run.plan, color=use_color() and text_out))
        if not text_out:
            click.echo(
                json.dumps(
                    {"environment": env, "revision": snapshot.revision, "ok": True, "done": [], "dryRun": dry_run},
                    sort_keys=True,
                )
            )
        sys.exit(EXIT_OK)
    if not text_out:
        click.echo(json.dumps(changes.to_dict(), sort_keys=True, indent=2))
    if changes.ok:
        click.echo(("dry run: " if dry_run else "applied: ") + changes.summary(), err=True)
        sys.exit(EXIT_OK)
    done = summarize_done(changes.done)
    click.echo(f"error: {changes.error} (at {changes.failed})", err=True)
    click.echo(f"applied before the failure: {done}; not attempted: {len(changes.not_attempted)}", err=True)
    sys.exit(EXIT_ERROR)
