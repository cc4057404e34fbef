"""`mlp experiment`: Experiment specs against their tracked runs.

The group is shared: other `experiment` subcommands (e.g. `report`) register on it here.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from mlp.cli._common import CONTEXT, fail


@click.group("experiment", context_settings=CONTEXT)
def experiment() -> None:
    """Experiments declared in the repository and the runs that belong to them.

    \b
    Example:
      mlp experiment runs iris-tuning
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
