"""`mlp experiment report NAME`: the A/B test of an Experiment's model, from the feedback it received.

The control is the deployment's stable version, the variant its `abTest` version, in the
environment that runs the split; outcomes are the feedback posted to
`/v2/models/MODEL/feedback` (see FEEDBACK_CONTRACT.md), read from the serving state folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def experiment() -> None:
    """A/B experiments: reports with always-valid statistics.

    \b
    Example:
      mlp experiment report iris-tuning --env dev -o markdown
    """


@experiment.command("report")
@click.argument("name")
@click.option("--repo", default=".", type=click.Path(file_okay=False, path_type=Path), help="Platform repository.")
@click.option("--env", "env_name", help="Environment running the A/B split [default: the only one that does].")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Serving state folder holding payloads/ [default: REPO/.mlp/up-ENV].",
)
@click.option("--alpha", default=0.05, show_default=True, type=click.FloatRange(0.0001, 0.5))
@click.option("--power", default=0.8, show_default=True, type=click.FloatRange(0.5, 0.999))
@click.option("--mde", type=float, help="Smallest effect worth finding (absolute) [default: 0.2 standard deviations].")
@click.option(
    "-o", "--output", "fmt", type=click.Choice(["text", "json", "markdown"]), default="text", show_default=True
)
def report(
    name: str,
    repo: Path,
    env_name: str | None,
    state_dir: Path | None,
    alpha: float,
    power: float,
    mde: float | None,
    fmt: str,
) -> None:
    """Effect size, confidence interval, p-value (safe to peek at), samples still needed, recommendation.

    Exit 0 with a report, 1 when there are not enough outcomes yet, 2 on error.

    \b
    Examples:
      mlp experiment report iris-tuning --env dev
      mlp experiment report iris-tuning --env dev -o json | jq .p_value
    """
    from mlp.rollouts.stats import compare
    from mlp.serving.feedback import read_feedback
    from mlp.sources.directory import read_directory
    from mlp.specs import load

    result = load(read_directory(repo))
    if not result.ok:
        _fail(f"{repo}: the repository does not validate (run mlp validate)")
    exp = result.specs.experiments.get(name)
    if exp is None:
        _fail(f"specs/: no Experiment {name!r} (declared: {', '.join(sorted(result.specs.experiments)) or 'none'})")
    model = exp.spec.model
    running = {
        e: env.spec.deployments[model]
        for e, env in result.specs.environments.items()
        if model in env.spec.deployments and env.spec.deployments[model].abTest is not None
    }
    if env_name is None:
        if len(running) != 1:
            _fail(f"model {model!r} runs an abTest in {len(running)} environments ({', '.join(running)}); pick --env")
        env_name = next(iter(running))
    dep = running.get(env_name)
    if dep is None or dep.abTest is None:
        _fail(f"Environment/{env_name}: model {model!r} has no abTest")
    state = state_dir or repo / ".mlp" / f"up-{env_name}"
    table = read_feedback(state / "payloads", model)
    versions = table.column("version").to_pylist()
    outcomes = table.column("outcome").to_pylist()
    control = [o for v, o in zip(versions, outcomes, strict=True) if v == str(dep.version)]
    variant = [o for v, o in zip(versions, outcomes, strict=True) if v == str(dep.abTest.version)]
    try:
        rep = compare(control, variant, alpha=alpha, mde=mde, power=power)
    except ValueError as exc:
        click.echo(f"{name}: not enough outcomes yet: {exc}", err=True)
        sys.exit(1)
    data: dict[str, Any] = {
        "experiment": name,
        "environment": env_name,
        "model": model,
        "control": dep.version,
        "variant": dep.abTest.version,
        **rep.to_json(),
    }
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
        return
    rows = [
        ("arm", f"v{dep.version} (control)", f"v{dep.abTest.version} (variant)"),
        ("outcomes", str(rep.n_control), str(rep.n_variant)),
        ("mean", f"{rep.mean_control:.4g}", f"{rep.mean_variant:.4g}"),
    ]
    facts = [
        ("test", f"{rep.test}, always-valid (mSPRT)"),
        (
            "effect",
            f"{rep.effect:+.4g}" + (f" ({rep.relative_effect:+.1%})" if rep.relative_effect is not None else ""),
        ),
        (f"{1 - alpha:.0%} confidence interval", f"[{rep.ci_low:+.4g}, {rep.ci_high:+.4g}]"),
        ("p-value (safe to peek)", f"{rep.p_value:.4g}"),
        ("p-value (one look, fixed horizon)", f"{rep.fixed_horizon_p_value:.4g}"),
        ("samples per arm for the MDE", f"{rep.samples_needed_per_arm} ({rep.remaining_per_arm} more)"),
        ("recommendation", rep.recommendation),
    ]
    if fmt == "markdown":
        lines = [f"### Experiment `{name}`: {model} in {env_name}", "", "| | control | variant |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in rows[1:]]
        lines += ["", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in facts]
        click.echo("\n".join(lines))
        return
    click.echo(f"experiment {name}: {model} in {env_name}")
    for a, b, c in rows:
        click.echo(f"  {a:<10} {b:<16} {c}")
    for k, v in facts:
        click.echo(f"  {k}: {v}")
