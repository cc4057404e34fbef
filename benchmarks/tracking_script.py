"""The MLflow client script the compatibility check runs against a tracking server.

Uses only the unmodified `mlflow` client (MLFLOW_TRACKING_URI names the server): experiments,
runs, params, metrics with steps, tags, NaN and infinity, artifacts, mlflow.sklearn.log_model,
search_runs with filters and ordering, metric history, errors. Prints one JSON document with
ids, times and host-specific values replaced by placeholders, so the outputs of two servers can
be diffed line by line.

    MLFLOW_TRACKING_URI=http://127.0.0.1:5000 python benchmarks/tracking_script.py
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")


def _norm(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return value
    if isinstance(value, dict):
        return {k: _norm(v, ids) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [_norm(v, ids) for v in value]
    if isinstance(value, str):
        for real, placeholder in ids.items():
            value = value.replace(real, placeholder)
        return re.sub(r"m-[0-9a-f]{32}", "<model-id>", value)
    return value


def main() -> dict[str, Any]:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    out: dict[str, Any] = {}
    ids: dict[str, str] = {}
    client = MlflowClient()
    exp_id = mlflow.create_experiment("compat")
    ids[f"/{exp_id}/"] = "/<exp>/"
    mlflow.set_experiment("compat")
    out["experiment"] = {k: getattr(client.get_experiment(exp_id), k) for k in ("name", "lifecycle_stage")} | {
        "by_name": client.get_experiment_by_name("compat").experiment_id == exp_id
    }

    run_ids = []
    for i, c in enumerate([0.1, 1.0, 10.0]):
        with mlflow.start_run(run_name=f"lr-{i}") as run:
            ids[run.info.run_id] = f"<run{i}>"
            run_ids.append(run.info.run_id)
            mlflow.log_param("C", c)
            mlflow.log_params({"max_iter": 500, "solver": "lbfgs"})
            for step in range(5):
                mlflow.log_metric("loss", 1.0 / (step + 1 + i), step=step)
            mlflow.log_metrics({"accuracy": 0.9 + i / 100, "weird_nan": float("nan"), "weird_inf": float("inf")})
            mlflow.log_metric("neg_inf", float("-inf"))
            mlflow.set_tag("team", "growth" if i < 2 else "risk")
            mlflow.set_tags({"stage": "dev", "idx": str(i)})
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "notes.txt").write_text(f"run {i}\n")
                (Path(d) / "sub").mkdir()
                (Path(d) / "sub" / "data.csv").write_text("a,b\n1,2\n")
                mlflow.log_artifact(str(Path(d) / "notes.txt"))
                mlflow.log_artifacts(d, artifact_path="bundle")
            if i == 2:
                X, y = load_iris(return_X_y=True)
                model = LogisticRegression(C=c, max_iter=500).fit(X, y)
                info = mlflow.sklearn.log_model(model, name="model", serialization_format="cloudpickle")
                out["logged_model_uri"] = info.model_uri
                loaded = mlflow.sklearn.load_model(info.model_uri)
                out["loaded_model_predicts"] = [int(v) for v in loaded.predict(X[:3])]
    with mlflow.start_run(run_name="failed") as run:
        ids[run.info.run_id] = "<run-failed>"
        mlflow.log_metric("accuracy", 0.5)
    client.set_terminated(run.info.run_id, status="FAILED")
    client.delete_run(run_ids[0])

    def run_view(r: Any) -> dict[str, Any]:
        return {
            "run_id": r.info.run_id,
            "name": r.info.run_name,
            "status": r.info.status,
            "lifecycle_stage": r.info.lifecycle_stage,
            "artifact_uri": r.info.artifact_uri,
            "metrics": r.data.metrics,
            "params": r.data.params,
            "tags": {
                k: v
                for k, v in r.data.tags.items()
                if k not in ("mlflow.source.name", "mlflow.user", "mlflow.source.git.commit")
            },
        }

    out["get_run"] = run_view(client.get_run(run_ids[2]))
    out["metric_history"] = [
        {"key": m.key, "value": m.value, "step": m.step} for m in client.get_metric_history(run_ids[1], "loss")
    ]
    out["metric_history_inf"] = [m.value for m in client.get_metric_history(run_ids[1], "weird_inf")]
    out["metric_history_nan"] = [m.value for m in client.get_metric_history(run_ids[1], "weird_nan")]
    out["artifacts_root"] = sorted((f.path, f.is_dir, f.file_size) for f in client.list_artifacts(run_ids[1]))
    out["artifacts_bundle"] = sorted(
        (f.path, f.is_dir, f.file_size) for f in client.list_artifacts(run_ids[1], "bundle")
    )
    with tempfile.TemporaryDirectory() as d:
        local = client.download_artifacts(run_ids[1], "bundle/sub/data.csv", d)
        out["downloaded"] = Path(local).read_text()

    searches = {
        "all": ("", None),
        "accuracy_gt": ("metrics.accuracy > 0.905", ["metrics.accuracy DESC"]),
        "param_eq": ("params.C = '10.0'", None),
        "tag_like": ("tags.team LIKE 'gro%'", ["attributes.run_name ASC"]),
        "status": ("attributes.status = 'FAILED'", None),
        "id_in": (f"attributes.run_id IN ('{run_ids[1]}', '{run_ids[2]}')", ["params.C DESC"]),
        "order_metric_asc": ("", ["metrics.accuracy ASC"]),
        "and": (
            "metrics.accuracy >= 0.5 and tags.stage = 'dev' and params.solver != 'x'",
            ["attributes.run_name DESC"],
        ),
    }
    for name, (flt, order) in searches.items():
        runs = client.search_runs([exp_id], filter_string=flt, order_by=order)
        out[f"search_{name}"] = [r.info.run_name for r in runs]
    deleted = client.search_runs([exp_id], run_view_type=3)  # ViewType.ALL
    out["search_all_view"] = sorted(r.info.run_name for r in deleted)
    frame = mlflow.search_runs(experiment_ids=[exp_id], order_by=["attributes.run_name ASC"])
    out["search_frame_columns"] = sorted(c for c in frame.columns if not c.startswith("tags.mlflow."))
    out["search_frame_names"] = list(frame["tags.mlflow.runName"])
    paged = client.search_runs([exp_id], max_results=1, order_by=["attributes.run_name ASC"])
    out["page_1"] = [r.info.run_name for r in paged]
    out["page_2"] = [
        r.info.run_name
        for r in client.search_runs(
            [exp_id], max_results=1, order_by=["attributes.run_name ASC"], page_token=paged.token
        )
    ]

    errors = {}
    for name, call in {
        "unknown_run": lambda: client.get_run("0" * 32),
        "unknown_experiment": lambda: client.get_experiment("987654"),
        "unknown_experiment_name": lambda: client.get_experiment_by_name("no-such-experiment"),
        "duplicate_experiment": lambda: client.create_experiment("compat"),
        "changed_param": lambda: client.log_param(run_ids[1], "C", "99"),
        "bad_filter": lambda: client.search_runs([exp_id], filter_string="metrics.accuracy >> 1"),
        "log_to_deleted_run": lambda: client.log_metric(run_ids[0], "x", 1.0),
    }.items():
        try:
            result = call()
            errors[name] = f"no error: {result!r}"[:60]
        except MlflowException as exc:
            errors[name] = exc.error_code
    out["errors"] = errors
    return _norm(out, ids)


if __name__ == "__main__":
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):  # the client prints "View run ..." links
        result = main()
    json.dump(result, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
