"""Import runs from an existing MLflow server into mlp's (both over MLflow's REST protocol).

Experiments are matched by name (created when missing); each run keeps its name, times,
status, params, tags and full metric history, and gets the tag `mlp.importedFrom` with the
source run id, so a second import skips what is already there. Artifacts are copied through
both servers' `mlflow-artifacts` proxies when the source serves them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlp.tracking.client import ClientError, TrackingClient

IMPORTED_TAG = "mlp.importedFrom"


def _ensure_experiment(dst: TrackingClient, name: str) -> str:
    try:
        return str(dst.experiment_by_name(name)["experiment_id"])
    except ClientError as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    return str(dst.call("POST", "experiments/create", {"name": name})["experiment_id"])


def import_runs(
    src: TrackingClient,
    dst: TrackingClient,
    only: list[str],
    *,
    artifacts: bool = True,
    progress: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    report: dict[str, Any] = {"experiments": 0, "imported": 0, "skipped": 0, "runs": {}, "warnings": []}
    for exp in src.experiments():
        if only and exp["name"] not in only:
            continue
        report["experiments"] += 1
        dst_exp = _ensure_experiment(dst, exp["name"])
        already = {r.tags.get(IMPORTED_TAG) for r in dst.search_runs([dst_exp], f"tags.`{IMPORTED_TAG}` LIKE '%'")}
        for raw in src.search_runs_raw([exp["experiment_id"]]):
            info, data = raw["info"], raw.get("data", {})
            run_id = info.get("run_id") or info["run_uuid"]
            if run_id in already:
                report["skipped"] += 1
                continue
            progress(f"importing {exp['name']}/{info.get('run_name', run_id)}")
            tags = [{"key": t["key"], "value": t.get("value", "")} for t in data.get("tags", [])]
            tags.append({"key": IMPORTED_TAG, "value": run_id})
            created = dst.call(
                "POST",
                "runs/create",
                {
                    "experiment_id": dst_exp,
                    "run_name": info.get("run_name", ""),
                    "start_time": info.get("start_time"),
                    "user_id": info.get("user_id", ""),
                    "tags": tags,
                },
            )["run"]["info"]["run_id"]
            params = [{"key": p["key"], "value": p.get("value", "")} for p in data.get("params", [])]
            for i in range(0, len(params), 100):
                dst.call("POST", "runs/log-batch", {"run_id": created, "params": params[i : i + 100]})
            for key in sorted({m["key"] for m in data.get("metrics", [])}):
                history = src.metric_history(run_id, key)
                for i in range(0, len(history), 1000):
                    chunk = [
                        {"key": key, "value": m["value"], "timestamp": m["timestamp"], "step": m.get("step", 0)}
                        for m in history[i : i + 1000]
                    ]
                    dst.call("POST", "runs/log-batch", {"run_id": created, "metrics": chunk})
            inputs = (raw.get("inputs") or {}).get("dataset_inputs") or []
            if inputs:
                dst.call("POST", "runs/log-inputs", {"run_id": created, "datasets": inputs})
            if artifacts:
                _copy_artifacts(src, dst, info["artifact_uri"], created, report)
            dst.call(
                "POST",
                "runs/update",
                {"run_id": created, "status": info.get("status", "FINISHED"), "end_time": info.get("end_time")},
            )
            report["runs"][run_id] = created
            report["imported"] += 1
    return report


def _copy_artifacts(
    src: TrackingClient, dst: TrackingClient, source_uri: str, dst_run: str, report: dict[str, Any]
) -> None:
    try:
        files = list(src.walk_artifacts(source_uri))
    except ClientError as exc:
        report["warnings"].append(f"artifacts of {source_uri} not copied: {exc}")
        return
    dst_uri = dst.get_run(dst_run).artifact_uri
    with tempfile.TemporaryDirectory(prefix="mlp-import-") as tmp:
        for f in files:
            local = Path(tmp) / "file"
            with local.open("wb") as fh:
                src.download(source_uri, f["path"], fh)
            with local.open("rb") as fh:
                dst.upload(dst_uri, f["path"], fh)
