"""`mlp runs`: list, show, compare and plot tracked runs; import runs from an MLflow server."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from mlp.cli._common import CONTEXT, fail

uri_option = click.option(
    "--tracking-uri", envvar="MLFLOW_TRACKING_URI", required=True, help="Tracking server [env MLFLOW_TRACKING_URI]."
)
output_option = click.option(
    "-o", "--output", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)


def _client(uri: str) -> Any:
    from mlp.tracking.client import ClientError, TrackingClient

    try:
        return TrackingClient(uri)
    except ClientError as exc:
        fail(str(exc))


def _when(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.6g}"


@click.group("runs", context_settings=CONTEXT)
def runs() -> None:
    """Tracked runs on an MLflow-protocol server (mlp's or MLflow's).

    \b
    Example:
      mlp runs list --experiment iris-tuning --order-by "metrics.accuracy DESC"
      mlp runs compare 1f2e... 9a8b... -o json
    """


@runs.command("list", context_settings=CONTEXT)
@uri_option
@click.option("--experiment", "experiments", multiple=True, help="Experiment name (repeatable) [default: all].")
@click.option(
    "--filter", "filter_string", default="", help="MLflow filter, e.g. \"metrics.accuracy > 0.9 and params.C = '1'\"."
)
@click.option("--order-by", "order_by", multiple=True, help='e.g. "metrics.accuracy DESC" (repeatable).')
@click.option("--max", "max_results", type=click.IntRange(min=1), default=100, show_default=True)
@output_option
def list_runs(
    tracking_uri: str,
    experiments: tuple[str, ...],
    filter_string: str,
    order_by: tuple[str, ...],
    max_results: int,
    fmt: str,
) -> None:
    """List runs, newest first unless --order-by says otherwise.

    \b
    Example:
      mlp runs list --experiment iris-tuning --filter "metrics.accuracy > 0.95" -o json
    """
    from mlp.tracking.client import ClientError

    with _client(tracking_uri) as client:
        try:
            if experiments:
                ids = [client.experiment_by_name(name)["experiment_id"] for name in experiments]
            else:
                ids = [e["experiment_id"] for e in client.experiments()]
            found = client.search_runs(ids, filter_string, list(order_by), max_results) if ids else []
        except ClientError as exc:
            fail(str(exc))
    if fmt == "json":
        click.echo(json.dumps([r.json() for r in found], indent=2))
        return
    if not found:
        click.echo("no runs")
        return
    keys = sorted({k for r in found for k in r.metrics})[:4]
    rows = [["RUN", "NAME", "STATUS", "STARTED", *keys]]
    rows += [[r.id, r.name, r.status, _when(r.start_time), *(_fmt(r.metrics.get(k)) for k in keys)] for r in found]
    click.echo(_table(rows))


@runs.command("show", context_settings=CONTEXT)
@uri_option
@click.argument("run_id")
@output_option
def show(tracking_uri: str, run_id: str, fmt: str) -> None:
    """Show one run: status, params, latest metrics, tags, datasets.

    \b
    Example:
      mlp runs show 1f2e3d4c5b6a79881726354453627180 -o json
    """
    from mlp.tracking.client import ClientError

    with _client(tracking_uri) as client:
        try:
            run = client.get_run(run_id)
        except ClientError as exc:
            fail(str(exc))
    if fmt == "json":
        click.echo(json.dumps(run.json(), indent=2))
        return
    click.echo(f"run:        {run.id} ({run.name})")
    click.echo(f"experiment: {run.experiment_id}")
    click.echo(f"status:     {run.status}  started {_when(run.start_time)}  ended {_when(run.end_time)}")
    click.echo(f"artifacts:  {run.artifact_uri}")
    for title, items in (("params", run.params), ("metrics", run.metrics), ("tags", run.tags)):
        if items:
            click.echo(f"{title}:")
            for k, v in sorted(items.items()):
                click.echo(f"  {k}: {_fmt(v) if isinstance(v, float) else v}")
    for ds in run.datasets:
        click.echo(f"dataset:    {ds.get('name')} digest {ds.get('digest')} source {ds.get('source')}")


@runs.command("compare", context_settings=CONTEXT)
@uri_option
@click.argument("run_ids", nargs=-1, required=True)
@output_option
def compare(tracking_uri: str, run_ids: tuple[str, ...], fmt: str) -> None:
    """Params and metrics of several runs side by side; rows that differ are marked with *.

    \b
    Example:
      mlp runs compare 1f2e... 9a8b... 7c6d...
    """
    from mlp.tracking.client import ClientError

    with _client(tracking_uri) as client:
        try:
            found = [client.get_run(r) for r in run_ids]
        except ClientError as exc:
            fail(str(exc))
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "runs": [r.id for r in found],
                    "params": {
                        k: [r.params.get(k) for r in found] for k in sorted({k for r in found for k in r.params})
                    },
                    "metrics": {
                        k: [r.metrics.get(k) for r in found] for k in sorted({k for r in found for k in r.metrics})
                    },
                },
                indent=2,
            )
        )
        return
    rows = [["", *[r.name or r.id[:8] for r in found]]]
    for k in sorted({k for r in found for k in r.params}):
        values = [r.params.get(k, "-") for r in found]
        rows.append([("* " if len(set(values)) > 1 else "  ") + f"params.{k}", *values])
    for k in sorted({k for r in found for k in r.metrics}):
        nums = [r.metrics.get(k) for r in found]
        rows.append([("* " if len(set(nums)) > 1 else "  ") + f"metrics.{k}", *(_fmt(v) for v in nums)])
    click.echo(_table(rows))


@runs.command("plot", context_settings=CONTEXT)
@uri_option
@click.argument("run_ids", nargs=-1, required=True)
@click.option("--metric", "metric", required=True, help="Metric key whose history to plot.")
@click.option(
    "--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="FILE.png or FILE.html."
)
def plot(tracking_uri: str, run_ids: tuple[str, ...], metric: str, out: Path) -> None:
    """Plot a metric's history (value per step) for one or more runs, as PNG or HTML (SVG inline).

    \b
    Example:
      mlp runs plot 1f2e... 9a8b... --metric loss --out loss.png
    """
    from mlp.tracking.client import ClientError
    from mlp.tracking.plots import history_plot

    if out.suffix.lower() not in (".png", ".html"):
        fail(f"{out}: the output must end in .png or .html")
    series: dict[str, list[tuple[int, float]]] = {}
    with _client(tracking_uri) as client:
        try:
            for run_id in run_ids:
                run = client.get_run(run_id)
                points = client.metric_history(run_id, metric)
                if not points:
                    fail(f"run {run_id}: no metric {metric!r}")
                series[run.name or run.id[:8]] = [(int(p["step"]), float(p["value"])) for p in points]
        except ClientError as exc:
            fail(str(exc))
    history_plot(series, metric, out)
    click.echo(f"wrote {out} ({sum(len(s) for s in series.values())} points, {len(series)} runs)", err=True)


@runs.command("import-mlflow", context_settings=CONTEXT)
@click.argument("source")
@uri_option
@click.option("--experiment", "experiments", multiple=True, help="Only these experiments (repeatable) [default: all].")
@click.option("--no-artifacts", is_flag=True, help="Copy runs without their artifacts.")
@output_option
def import_mlflow(source: str, tracking_uri: str, experiments: tuple[str, ...], no_artifacts: bool, fmt: str) -> None:
    """Copy experiments and runs (params, tags, full metric history, artifacts) from an MLflow server.

    SOURCE is the MLflow tracking server's URL. Runs already imported (tag mlp.importedFrom) are
    skipped, so the import can be re-run.

    \b
    Example:
      mlp runs import-mlflow http://mlflow.internal:5000 --tracking-uri http://127.0.0.1:5000
    """
    from mlp.tracking.client import ClientError, TrackingClient
    from mlp.tracking.importer import import_runs

    try:
        with TrackingClient(source) as src, TrackingClient(tracking_uri) as dst:
            report = import_runs(
                src, dst, list(experiments), artifacts=not no_artifacts, progress=lambda m: click.echo(m, err=True)
            )
    except ClientError as exc:
        fail(str(exc))
    if fmt == "json":
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(
            f"imported {report['imported']} runs ({report['skipped']} already there) from {report['experiments']} experiments"
        )
    if report["warnings"]:
        for w in report["warnings"]:
            click.echo(f"warning: {w}", err=True)
    sys.exit(0)
