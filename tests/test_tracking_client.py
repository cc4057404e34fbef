"""The unmodified `mlflow` client against `mlp tracking serve` (benchmarks/tracking_script.py).

The same script runs against `mlflow server` in benchmarks/tracking_compat.py, which diffs the
two outputs; here the answers the client got from mlp are checked directly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from trackingutil import REPO_ROOT, client_env, tracking_server

pytest.importorskip("mlflow", reason="the mlflow client is in the dev extra")
pytestmark = pytest.mark.timeout(300)


def test_mlflow_client_script_against_mlp(tmp_path: Path) -> None:
    with tracking_server(tmp_path / "state") as server:
        proc = subprocess.run(
            [sys.executable, str(REPO_ROOT / "benchmarks" / "tracking_script.py")],
            env=client_env(server.url),
            capture_output=True,
            text=True,
            timeout=280,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["experiment"] == {"by_name": True, "lifecycle_stage": "active", "name": "compat"}
    run = out["get_run"]
    assert (
        run["name"] == "lr-2"
        and run["status"] == "FINISHED"
        and run["artifact_uri"] == "mlflow-artifacts:/<exp>/<run2>/artifacts"
    )
    assert run["params"] == {"C": "10.0", "max_iter": "500", "solver": "lbfgs"}
    # MLflow's storage: NaN kept, infinities become the largest finite double
    assert run["metrics"]["weird_nan"] == "NaN"
    assert (
        run["metrics"]["weird_inf"] == 1.7976931348623157e308 and run["metrics"]["neg_inf"] == -1.7976931348623157e308
    )
    assert run["metrics"]["loss"] == pytest.approx(1 / 7)
    assert [m["step"] for m in out["metric_history"]] == [0, 1, 2, 3, 4]
    assert [m["value"] for m in out["metric_history"]] == pytest.approx([1 / 2, 1 / 3, 1 / 4, 1 / 5, 1 / 6])
    assert out["metric_history_nan"] == ["NaN"]
    assert out["artifacts_root"] == [["bundle", True, None], ["notes.txt", False, 6]]
    assert out["artifacts_bundle"] == [["bundle/notes.txt", False, 6], ["bundle/sub", True, None]]
    assert out["downloaded"] == "a,b\n1,2\n"
    assert out["logged_model_uri"] == "models:/<model-id>" and out["loaded_model_predicts"] == [0, 0, 0]
    assert out["search_all"] == ["failed", "lr-2", "lr-1"]  # newest first; the deleted lr-0 hidden
    assert out["search_all_view"] == ["failed", "lr-0", "lr-1", "lr-2"]
    assert out["search_accuracy_gt"] == ["lr-2", "lr-1"]
    assert out["search_param_eq"] == ["lr-2"]
    assert out["search_tag_like"] == ["lr-1"]
    assert out["search_status"] == ["failed"]
    assert out["search_id_in"] == ["lr-2", "lr-1"]
    assert out["search_order_metric_asc"] == ["failed", "lr-1", "lr-2"]
    assert out["search_and"] == ["lr-2", "lr-1"]
    assert out["page_1"] == ["failed"] and out["page_2"] == ["lr-1"]
    assert out["search_frame_names"] == ["failed", "lr-1", "lr-2"]
    assert out["errors"] == {
        "bad_filter": "INVALID_PARAMETER_VALUE",
        "changed_param": "INVALID_PARAMETER_VALUE",
        "duplicate_experiment": "RESOURCE_ALREADY_EXISTS",
        "log_to_deleted_run": "INVALID_PARAMETER_VALUE",
        "unknown_experiment": "RESOURCE_DOES_NOT_EXIST",
        "unknown_experiment_name": "no error: None",
        "unknown_run": "RESOURCE_DOES_NOT_EXIST",
    }


PROVENANCE = """
import mlflow
from mlp.tracking.provenance import log_provenance
with mlflow.start_run(run_name="prov") as run:
    log_provenance(datasets={"train": "train.csv"})
print(run.info.run_id)
"""


def test_run_records_commit_packages_and_dataset_digest(tmp_path: Path) -> None:
    import hashlib

    import git
    import httpx

    work = tmp_path / "code"
    work.mkdir()
    (work / "train.csv").write_text("a,b\n1,2\n")
    repo = git.Repo.init(work)
    repo.git.add("-A")
    commit = repo.index.commit("data").hexsha
    with tracking_server(tmp_path / "state") as server:
        proc = subprocess.run(
            [sys.executable, "-c", PROVENANCE],
            cwd=work,
            env=client_env(server.url),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        run_id = proc.stdout.strip().splitlines()[-1]
        run = httpx.get(f"{server.url}/api/2.0/mlflow/runs/get", params={"run_id": run_id}).json()["run"]
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert tags["mlp.git.commit"] == commit and tags["mlp.git.dirty"] == "false"
        art = run["info"]["artifact_uri"].split(":", 1)[1].strip("/")
        packages = httpx.get(f"{server.url}/api/2.0/mlflow-artifacts/artifacts/{art}/environment/packages.txt").text
        assert (
            "scikit-learn==" in packages
            and hashlib.sha256(packages.encode()).hexdigest() == tags["mlp.packages.sha256"]
        )
        (dataset,) = [d["dataset"] for d in run["inputs"]["dataset_inputs"]]
        assert dataset["name"] == "train" and dataset["source"] == (work / "train.csv").resolve().as_uri()
        assert dataset["digest"] == "sha256:" + hashlib.sha256(b"a,b\n1,2\n").hexdigest()
