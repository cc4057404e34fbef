"""`mlp experiment`: Experiment specs against their tracked runs, and A/B reports from feedback.

`runs` ranks an Experiment's tracked runs against its objective and baseline; `report` gives the
A/B test of an Experiment's model from the feedback posted to `/v2/models/MODEL/feedback`
(the control is the deployment's stable version, the variant its `abTest` version).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from mlp.cli._common import CONTEXT, fail, load_repo


@click.group("experiment", context_settings=CONTEXT)
def experiment() -> None:
    """Experiments declared in the repository: their tracked runs, and A/B reports.

    \b
    Examples:
      mlp experiment runs iris-tuning
      mlp experiment report iris-tuning --env dev -o markdown
    """


@experiment.command("runs", context_settings=CONTEXT)
@click.argument("name")
@click.option("--repo", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True)
@click.option(
    "--tracking-uri", envvar="MLFLOW_TRACKING_URI", required=True, help="Tracking server [env MLFLOW_TRACKING_URI]."
)
@click.option("--max", "max_results", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("-o", "--output", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def runs(name: str, repo: Path, tracking_uri: str, max_results: int, fmt: str) -> None:
    """Rank the runs of Experiment NAME by its objective, against its baseline model version.

    The runs are those of the tracking experiment named by spec.mlflowExperiment (default: NAME);
    the baseline is spec.baseline (default: the model's newest version) and its metric comes from
    the Model spec. Runs without the objective metric are listed last, unranked.

    \b
    Example:
      mlp experiment runs iris-tuning --tracking-uri http://127.0.0.1:5000 -o json
    """
    from mlp.tracking.client import ClientError, TrackingClient
    from mlp.tracking.ranking import RankingError, rank_runs

    try:
        with TrackingClient(tracking_uri) as client:
            ranking = rank_runs(repo, name, client, max_results)
    except (ClientError, RankingError) as exc:
        fail(str(exc))
    if fmt == "json":
        click.echo(json.dumps(ranking, indent=2))
        return
    base = ranking["baseline"]
    click.echo(
        f"experiment {name}: {ranking['objective']['goal']} {ranking['objective']['metric']} "
        f"(tracking experiment {ranking['trackingExperiment']!r}); baseline {ranking['model']} v{base['version']} = "
        + ("-" if base["value"] is None else f"{base['value']:.6g}")
    )
    if not ranking["runs"]:
        click.echo("no runs")
        return
    rows = [["RANK", "RUN", "NAME", ranking["objective"]["metric"].upper(), "VS BASELINE", ""]]
    for r in ranking["runs"]:
        value = "-" if r["value"] is None else f"{r['value']:.6g}"
        delta = "-" if r["delta"] is None else f"{r['delta']:+.4g}"
        rows.append(
            [
                str(r["rank"] or "-"),
                r["run_id"],
                r["name"],
                value,
                delta,
                "beats baseline" if r["beatsBaseline"] else "",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


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

    _, result = load_repo(repo)
    exp = result.specs.experiments.get(name)
    if exp is None:
        fail(f"specs/: no Experiment {name!r} (declared: {', '.join(sorted(result.specs.experiments)) or 'none'})")
    model = exp.spec.model
    running = {
        e: env.spec.deployments[model]
        for e, env in result.specs.environments.items()
        if model in env.spec.deployments and env.spec.deployments[model].abTest is not None
    }
    if env_name is None:
        if len(running) != 1:
            fail(f"model {model!r} runs an abTest in {len(running)} environments ({', '.join(running)}); pick --env")
        env_name = next(iter(running))
    dep = running.get(env_name)
    if dep is None or dep.abTest is None:
        fail(f"Environment/{env_name}: model {model!r} has no abTest")
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
