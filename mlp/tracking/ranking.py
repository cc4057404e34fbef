"""Rank an Experiment spec's tracked runs by its objective against its baseline model version."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mlp.sources.directory import read_directory
from mlp.specs import load
from mlp.tracking.client import TrackingClient


class RankingError(Exception):
    """The experiment cannot be ranked; the message says which spec or server and why."""


def rank_runs(repo: Path, name: str, client: TrackingClient, max_results: int = 50) -> dict[str, Any]:
    result = load(read_directory(repo), checks=False)
    exp = result.specs.experiments.get(name)
    if exp is None:
        bad = [str(d) for d in result.errors if d.kind == "Experiment" and d.name == name]
        raise RankingError(bad[0] if bad else f"experiment {name!r}: no Experiment spec of that name in {repo}")
    spec = exp.spec
    model = result.specs.models.get(spec.model)
    if model is None:
        raise RankingError(f"experiment {name!r}: model {spec.model!r} has no valid spec")
    version = spec.baseline or max(v.version for v in model.spec.versions)
    mv = model.spec.version(version)
    if mv is None:
        raise RankingError(f"experiment {name!r}: model {spec.model!r} has no version {version}")
    metric, maximize = spec.objective.metric, spec.objective.goal == "maximize"
    baseline = mv.metrics.get(metric)
    tracking_name = spec.mlflowExperiment or name
    exp_id = client.experiment_by_name(tracking_name)["experiment_id"]
    direction = "DESC" if maximize else "ASC"
    found = client.search_runs([exp_id], "", [f"metrics.`{metric}` {direction}"], max_results)
    rows: list[dict[str, Any]] = []
    rank = 0
    for run in found:
        value = run.metrics.get(metric)
        if value is not None and not math.isfinite(value):
            value = None
        delta = None if value is None or baseline is None else value - baseline
        if value is not None:
            rank += 1
        beats = delta is not None and (delta > 0 if maximize else delta < 0)
        rows.append(
            {
                "rank": rank if value is not None else None,
                "run_id": run.id,
                "name": run.name,
                "status": run.status,
                "value": value,
                "delta": delta,
                "beatsBaseline": beats,
                "params": run.params,
            }
        )
    return {
        "experiment": name,
        "trackingExperiment": tracking_name,
        "model": spec.model,
        "objective": {"metric": metric, "goal": spec.objective.goal},
        "baseline": {"version": version, "value": baseline},
        "runs": rows,
    }
