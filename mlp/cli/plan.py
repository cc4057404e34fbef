"""`mlp plan --base REF --head REF`: what merging a change would do to every environment."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mlp.cli._common import output_option


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--base", "base", required=True, help="Base revision (branch, tag or SHA), e.g. main.")
@click.option("--head", "head", required=True, help="Head revision (branch, tag or SHA), e.g. HEAD.")
@click.option(
    "--repo",
    "repo",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Git repository holding the platform repository.",
)
@output_option("text", "json", "markdown", help="markdown: the PR comment; json for scripts; text for people.")
@click.option(
    "--output-file", "output", type=click.Path(dir_okay=False, path_type=Path), help="Write to this file instead."
)
def plan(base: str, head: str, repo: Path, fmt: str, output: Path | None) -> None:
    """Validate HEAD, render every environment at BASE and HEAD, and plan HEAD against BASE.

    Each revision is checked out into its own temporary work folder. `-o markdown`
    prints exactly the report the webhook flow posts as the PR comment (sections per
    affected environment: change set, collapsible object diff, metrics of each new model
    version beside the incumbent's with pass/fail against the environment's gates), so a
    CI job without webhooks can post it itself. Exit 0 when HEAD is valid and renders,
    1 when it does not, 2 on usage errors (unknown revision, not a Git repository).

    \b
    Examples:
      mlp plan --base main --head HEAD
      mlp plan --base origin/main --head HEAD -o markdown --output-file plan.md
      mlp plan --base v1.2.0 --head main -o json | jq .affected
    """
    from mlp.plan import plan_to_dict, plan_to_text
    from mlp.webhooks.prcheck import Workspace, WorkspaceError, check_revisions

    try:
        workspace = Workspace(repo)
        click.echo(f"checking {base} → {head} ...", err=True)
        check = check_revisions(workspace, base, head)
    except WorkspaceError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if fmt == "markdown":
        text = check.markdown()
    elif fmt == "json":
        text = (
            json.dumps(
                {
                    "base": check.base_sha,
                    "head": check.head_sha,
                    "valid": check.valid,
                    "diagnostics": check.diagnostics,
                    "changedFiles": check.changed_files,
                    "affected": check.affected,
                    "unaffected": check.unaffected,
                    "environments": [
                        {
                            "name": e.name,
                            "renderError": e.render_error,
                            "plan": plan_to_dict(e.plan) if e.plan is not None else None,
                            "modelVersions": [
                                {
                                    "model": c.model,
                                    "version": c.version,
                                    "role": c.role,
                                    "incumbent": c.incumbent,
                                    "metrics": dict(c.metrics),
                                    "incumbentMetrics": dict(c.incumbent_metrics),
                                    "gatesPassed": c.passed,
                                    "gates": [
                                        {"metric": g.metric, "rule": g.rule, "passed": g.passed, "reason": g.reason}
                                        for g in c.gates
                                    ],
                                }
                                for c in e.changes
                            ],
                        }
                        for e in check.environments
                    ],
                },
                indent=2,
            )
            + "\n"
        )
    else:
        lines = [f"base {check.base_sha[:12]} → head {check.head_sha[:12]}"]
        lines += [f"error: {d}" for d in check.diagnostics]
        for e in check.environments:
            lines.append("")
            lines.append(f"== {e.name}")
            if e.render_error:
                lines.append(f"error: render failed: {e.render_error}")
            elif e.plan is not None:
                lines.append(plan_to_text(e.plan).rstrip("\n"))
            for c in e.changes:
                verdict = (
                    "gates pass" if c.passed else "gates FAIL: " + "; ".join(g.reason for g in c.gates if not g.passed)
                )
                lines.append(f"   {c.model} v{c.version} ({c.role}, incumbent v{c.incumbent}): {verdict}")
        if check.unaffected:
            lines.append("")
            lines.append("unchanged: " + ", ".join(check.unaffected))
        text = "\n".join(lines) + "\n"
    if output is not None:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            click.echo(f"error: cannot write {output}: {exc.strerror}", err=True)
            sys.exit(2)
    else:
        click.echo(text, nl=False)
    sys.exit(0 if check.valid and not check.render_failed else 1)
