"""Tracking throughput: the same MLflow client against mlp's server and `mlflow server`, same run.

Workloads (the unmodified `mlflow` client, one process, sequential calls unless stated):
  metrics   100,000 metric points into one run through log_batch calls of 1,000
  runs      1,000 runs, each created, given 3 params and 2 metrics in one log_batch, and ended
  search    search_runs over an experiment of 10,000 runs (seeded by 8 client threads), all of
            them in one call, then a filtered and ordered search; median of 3

Both servers use SQLite and a local artifact folder (benchmarks/tracking_servers.py); MLflow's
server is the full `mlflow` package in the benchmark's own venv (benchmarks/mlflow_venv.py).
Prints a table of seconds and the ratio mlflow/mlp (higher: mlp faster).

    .venv/bin/python benchmarks/tracking.py [--points 100000] [--runs 1000] [--search-runs 10000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.update({"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"})

from mlflow_venv import mlflow_server_venv  # noqa: E402
from tracking_servers import mlflow_server, mlp_server  # noqa: E402


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def workloads(url: str, points: int, n_runs: int, search_runs: int) -> dict[str, float]:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(tracking_uri=url)
    results: dict[str, float] = {}

    exp = client.create_experiment("bench-metrics")
    run = client.create_run(exp)
    now = int(time.time() * 1000)

    def log_points() -> None:
        for start in range(0, points, 1000):
            batch = [Metric("loss", 1.0 / (i + 1), now + i, i) for i in range(start, min(points, start + 1000))]
            client.log_batch(run.info.run_id, metrics=batch)

    results[f"log {points:,} points (log_batch of 1,000)"] = timed(log_points)
    assert len(client.get_metric_history(run.info.run_id, "loss")) == points

    exp_runs = client.create_experiment("bench-runs")

    def make_runs() -> None:
        for i in range(n_runs):
            r = client.create_run(exp_runs, run_name=f"run-{i}")
            client.log_batch(
                r.info.run_id,
                metrics=[Metric("acc", (i % 97) / 97, now, 0), Metric("loss", 1 - (i % 97) / 97, now, 0)],
                params=[Param("lr", str(i % 10)), Param("depth", str(i % 7)), Param("seed", str(i))],
            )
            client.set_terminated(r.info.run_id)

    results[f"create {n_runs:,} runs (create, log_batch, end)"] = timed(make_runs)

    exp_search = client.create_experiment("bench-search")

    def seed(i: int) -> None:
        r = client.create_run(exp_search, run_name=f"s-{i}")
        client.log_batch(
            r.info.run_id,
            metrics=[Metric("acc", (i % 101) / 101, now, 0)],
            params=[Param("lr", str(i % 10)), Param("seed", str(i))],
        )

    seed_time = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(seed, range(search_runs)))
    seed_time = time.perf_counter() - seed_time

    def search_all() -> None:
        found = client.search_runs([exp_search], max_results=search_runs)
        assert len(found) == search_runs, len(found)

    def search_filtered() -> None:
        found = client.search_runs(
            [exp_search],
            filter_string="metrics.acc > 0.5 and params.lr = '3'",
            order_by=["metrics.acc DESC"],
            max_results=search_runs,
        )
        assert found and all(r.data.params["lr"] == "3" for r in found)

    results[f"search_runs: all {search_runs:,} runs (median of 3)"] = statistics.median(
        timed(search_all) for _ in range(3)
    )
    results["search_runs: filter + order_by (median of 3)"] = statistics.median(
        timed(search_filtered) for _ in range(3)
    )
    results[f"(seed {search_runs:,} runs, 8 client threads)"] = seed_time
    return results


def quiet_workloads(url: str, points: int, n_runs: int, search_runs: int) -> dict[str, float]:
    import contextlib

    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):  # the client prints "View run" links
        return workloads(url, points, n_runs, search_runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=1_000)
    parser.add_argument("--search-runs", type=int, default=10_000)
    args = parser.parse_args()
    exe = mlflow_server_venv()
    with tempfile.TemporaryDirectory(prefix="mlp-bench-tracking-") as tmp:
        print("mlp tracking serve ...", file=sys.stderr)
        with mlp_server(Path(tmp) / "mlp") as url:
            ours = quiet_workloads(url, args.points, args.runs, args.search_runs)
        print("mlflow server ...", file=sys.stderr)
        with mlflow_server(exe, Path(tmp) / "mlflow") as url:
            theirs = quiet_workloads(url, args.points, args.runs, args.search_runs)
    width = max(len(k) for k in ours)
    print(f"{'workload':<{width}}  {'mlp s':>9}  {'mlflow s':>9}  {'mlflow/mlp':>10}")
    for key in ours:
        print(f"{key:<{width}}  {ours[key]:>9.2f}  {theirs[key]:>9.2f}  {theirs[key] / ours[key]:>9.1f}x")


if __name__ == "__main__":
    main()
