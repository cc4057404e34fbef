"""Tracking throughput: the same MLflow client against mlp's server and `mlflow server`, interleaved.

Workloads (the unmodified `mlflow` client in this process, sequential calls unless stated):
  metrics   100,000 metric points into one run through log_batch calls of 1,000
  runs      1,000 runs, each created, given 3 params and 2 metrics in one log_batch, and ended
  search    search_runs over an experiment of 10,000 runs (seeded by 8 client threads), all of
            them in one call, then a filtered and ordered search; median of 3

Both servers run at once on loopback with SQLite on disk and a local artifact folder
(benchmarks/tracking_servers.py); MLflow's server is the full `mlflow` package in the
benchmark's own venv (benchmarks/mlflow_venv.py), with its defaults (4 uvicorn workers). The
workloads are interleaved: each is cut into rounds that run on one server then the other
(alternating which goes first), so a change in the machine's load hits both alike. Reports wall
seconds and the servers' CPU seconds (user+system of the server's whole process tree, from
/proc: far less sensitive to a shared machine's load), each with the ratio mlflow/mlp (higher:
mlp faster).

--client-floor adds an analysis (not part of the comparison): the same client's search_runs
against a stub that returns a canned copy of each server's answer, i.e. what the client's own
HTTP and protobuf/JSON parsing cost, which bounds the ratio any server can reach on search.

    .venv/bin/python benchmarks/tracking.py [--points 100000] [--runs 1000] [--search-runs 10000] [--client-floor]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.update({"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"})

from mlflow_venv import mlflow_server_venv  # noqa: E402
from tracking_servers import Running, mlflow_server, mlp_server  # noqa: E402

ROUNDS = 10
FILTER = "metrics.acc > 0.5 and params.lr = '3'"


@dataclass
class Target:
    """One server, the client talking to it, and the experiments the workloads made there."""

    name: str
    server: Running
    client: Any
    exps: dict[str, str] = field(default_factory=dict)
    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)

    def measure(self, label: str, fn: Callable[[], object]) -> None:
        cpu0, start = self.server.cpu_seconds(), time.perf_counter()
        fn()
        self.wall.setdefault(label, []).append(time.perf_counter() - start)
        self.cpu.setdefault(label, []).append(self.server.cpu_seconds() - cpu0)


def interleave(targets: list[Target], label: str, work: Callable[[Target, int], object], rounds: int) -> None:
    """Round r of `work` on every target, the first target alternating between rounds."""
    for r in range(rounds):
        order = targets if r % 2 == 0 else targets[::-1]
        for t in order:
            t.measure(label, functools.partial(work, t, r))


def run_workloads(targets: list[Target], points: int, n_runs: int, search_runs: int) -> list[tuple[str, str]]:
    """Run every workload on every target; returns (label, how to combine the rounds)."""
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    for t in targets:
        t.exps["metrics"] = t.client.create_experiment("bench-metrics")
        t.exps["run"] = t.client.create_run(t.exps["metrics"]).info.run_id
        t.exps["runs"] = t.client.create_experiment("bench-runs")
        t.exps["search"] = t.client.create_experiment("bench-search")

    def slice_of(total: int, r: int, rounds: int) -> range:
        return range(total * r // rounds, total * (r + 1) // rounds)

    def log_points(t: Target, r: int) -> None:
        steps = slice_of(points // 1000, r, ROUNDS)
        for b in steps:
            batch = [Metric("loss", 1.0 / (i + 1), now + i, i) for i in range(b * 1000, min(points, b * 1000 + 1000))]
            t.client.log_batch(t.exps["run"], metrics=batch)

    def make_runs(t: Target, r: int) -> None:
        for i in slice_of(n_runs, r, ROUNDS):
            run = t.client.create_run(t.exps["runs"], run_name=f"run-{i}")
            t.client.log_batch(
                run.info.run_id,
                metrics=[Metric("acc", (i % 97) / 97, now, 0), Metric("loss", 1 - (i % 97) / 97, now, 0)],
                params=[Param("lr", str(i % 10)), Param("depth", str(i % 7)), Param("seed", str(i))],
            )
            t.client.set_terminated(run.info.run_id)

    def seed(t: Target, r: int) -> None:
        def one(i: int) -> None:
            run = t.client.create_run(t.exps["search"], run_name=f"s-{i}")
            t.client.log_batch(
                run.info.run_id,
                metrics=[Metric("acc", (i % 101) / 101, now, 0)],
                params=[Param("lr", str(i % 10)), Param("seed", str(i))],
            )

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, slice_of(search_runs, r, ROUNDS)))

    def search_all(t: Target, r: int) -> None:
        found = t.client.search_runs([t.exps["search"]], max_results=search_runs)
        assert len(found) == search_runs, len(found)

    def search_filtered(t: Target, r: int) -> None:
        found = t.client.search_runs(
            [t.exps["search"]], filter_string=FILTER, order_by=["metrics.acc DESC"], max_results=search_runs
        )
        assert found and all(run.data.params["lr"] == "3" for run in found)

    labels = [
        (f"log {points:,} points (log_batch of 1,000)", "sum"),
        (f"create {n_runs:,} runs (create, log_batch, end)", "sum"),
        (f"search_runs: all {search_runs:,} runs in one call (median of 3)", "median"),
        (f"search_runs: filter + order_by over {search_runs:,} runs (median of 3)", "median"),
        (f"(seed {search_runs:,} runs from 8 client threads)", "sum"),
    ]
    interleave(targets, labels[0][0], log_points, ROUNDS)
    for t in targets:
        assert len(t.client.get_metric_history(t.exps["run"], "loss")) == points
    interleave(targets, labels[1][0], make_runs, ROUNDS)
    interleave(targets, labels[4][0], seed, ROUNDS)
    interleave(targets, labels[2][0], search_all, 3)
    interleave(targets, labels[3][0], search_filtered, 3)
    return labels


@contextlib.contextmanager
def canned(answer: bytes) -> Iterator[str]:
    """A loopback stub answering every request with `answer` (the client-floor analysis only)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def client_floor(targets: list[Target], search_runs: int) -> list[tuple[str, float]]:
    """The client's own cost of search_runs for all runs: the same call against each server's canned answer."""
    import httpx
    from mlflow import MlflowClient

    out = []
    for t in targets:
        answer = httpx.post(
            f"{t.server.url}/api/2.0/mlflow/runs/search",
            json={"experiment_ids": [t.exps["search"]], "max_results": search_runs, "run_view_type": "ACTIVE_ONLY"},
            timeout=600,
        ).content
        with canned(answer) as url:
            client = MlflowClient(tracking_uri=url)
            times = []
            for _ in range(3):
                start = time.perf_counter()
                found = client.search_runs(["0"], max_results=search_runs)
                times.append(time.perf_counter() - start)
            assert len(found) == search_runs
        out.append((f"client alone on {t.name}'s answer ({len(answer) / 1e6:.1f} MB)", statistics.median(times)))
    return out


def combine(values: list[float], how: str) -> float:
    return sum(values) if how == "sum" else statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=1_000)
    parser.add_argument("--search-runs", type=int, default=10_000)
    parser.add_argument("--client-floor", action="store_true", help="Also measure the client alone (analysis).")
    args = parser.parse_args()
    from mlflow import MlflowClient

    exe = mlflow_server_venv()
    print(f"load average at start: {os.getloadavg()}", file=sys.stderr)
    with (
        tempfile.TemporaryDirectory(prefix="mlp-bench-tracking-") as tmp,
        mlp_server(Path(tmp) / "mlp") as ours,
        mlflow_server(exe, Path(tmp) / "mlflow") as theirs,
        open(os.devnull, "w") as devnull,
        contextlib.redirect_stdout(devnull),  # the client prints "View run" links
    ):
        targets = [
            Target("mlp", ours, MlflowClient(tracking_uri=ours.url)),
            Target("mlflow", theirs, MlflowClient(tracking_uri=theirs.url)),
        ]
        labels = run_workloads(targets, args.points, args.runs, args.search_runs)
        floor = client_floor(targets, args.search_runs) if args.client_floor else []
    print(f"load average at end: {os.getloadavg()}", file=sys.stderr)
    mlp, mlf = targets
    width = max(len(k) for k, _ in labels)
    print(
        f"{'workload':<{width}}  {'mlp s':>8}  {'mlflow s':>8}  {'ratio':>6}  {'mlp cpu':>8}  {'mlflow cpu':>10}  {'ratio':>6}"
    )
    for key, how in labels:
        w = (combine(mlp.wall[key], how), combine(mlf.wall[key], how))
        c = (combine(mlp.cpu[key], how), combine(mlf.cpu[key], how))
        print(
            f"{key:<{width}}  {w[0]:>8.2f}  {w[1]:>8.2f}  {w[1] / w[0]:>5.1f}x  {c[0]:>8.2f}  {c[1]:>10.2f}  "
            f"{c[1] / max(c[0], 1e-9):>5.1f}x"
        )
    requests = 3 * args.runs
    runs_key = labels[1][0]
    print(
        f"server CPU per request while creating runs: mlp {1e3 * sum(mlp.cpu[runs_key]) / requests:.2f} ms, "
        f"mlflow {1e3 * sum(mlf.cpu[runs_key]) / requests:.2f} ms"
    )
    for label, seconds in floor:
        print(f"(analysis) {label}: {seconds:.2f} s")


if __name__ == "__main__":
    main()
