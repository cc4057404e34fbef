"""Benchmark: canary rollouts on the local target.

1. Rollback latency: a real `mlp up` serving a stable iris model and a canary that fails on
   20% of its inputs, analysis interval 5 s, loop interval 0.2 s, four client threads sending
   traffic. The clock starts at the canary's first failed request (a 500 from the canary
   version) and stops at its last answer (traffic at 0% from then on). Goal: under one
   interval plus 1 s. Repeated; the baseline is the interval itself (ratio = time / interval).
2. Analysis cost: 100 concurrent rollouts in one process (100 deployments, each a stable and
   a canary iris model with traffic in their windows), checks error-rate, latency p99 and
   prediction-shift; one driver tick analyses all of them, as `mlp up` does every loop
   interval (1 s by default). CPU time per tick (process_time) over wall time = share of one
   core. Baseline in the same run: the same ticks with only the error-rate check.

    .venv/bin/python benchmarks/rollout.py                 # 3 rollbacks, 100 rollouts x 30 ticks
    .venv/bin/python benchmarks/rollout.py --runs 1 --rollouts 20 --ticks 5   # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ENV = """\
apiVersion: mlp.dev/v1
kind: Environment
metadata: {name: dev}
spec:
  target: {kind: local}
  deployments:
    iris:
      version: 1
      canary: {version: 3, steps: [20, 50, 100], analysis: {interval: 5s, minRequests: 20, checks: [{metric: error-rate, max: 0.05}]}}
"""


def model_spec(artifacts: dict[int, tuple[Path, str]]) -> str:
    versions = "".join(f"    - {{version: {v}, uri: 'file://{p}', digest: '{d}'}}\n" for v, (p, d) in artifacts.items())
    return (
        "apiVersion: mlp.dev/v1\nkind: Model\nmetadata: {name: iris}\nspec:\n  framework: sklearn\n  signature:\n"
        "    inputs:\n" + "".join(f"      - {{name: f{i}, type: float}}\n" for i in range(4)) + "    outputs:\n"
        "      - {name: species, type: int}\n  versions:\n" + versions
    )


def rollback_once(tmp: Path, artifacts: dict[int, tuple[Path, str]]) -> float:
    from mlp.serving.testing import client

    repo = tmp / "platform"
    (repo / "specs").mkdir(parents=True)
    (repo / "environments").mkdir()
    (repo / "specs" / "iris.yaml").write_text(model_spec(artifacts))
    (repo / "environments" / "dev.yaml").write_text(ENV)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlp.cli.main",
            "up",
            str(repo),
            "--port",
            "0",
            "--state-dir",
            str(tmp / "state"),
            "--interval",
            "0.2",
            "--format",
            "json",
            "--no-payload-log",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    url = json.loads(proc.stdout.readline())["url"]
    answers: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def load(seed: int) -> None:
        rng = random.Random(seed)
        with client(url, timeout=5) as c:
            while not stop.is_set():
                row = [rng.uniform(4, 8), rng.uniform(2, 4), rng.uniform(1, 7), rng.uniform(0.1, 2.5)]
                r = c.post("/v1/models/iris:predict", json={"instances": [row]})
                answers.append((time.time(), r.status_code, r.headers.get("x-mlp-model-version", "")))

    threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            time.sleep(0.5)
            bad = [a for a in list(answers) if a[2] == "3" and a[1] == 500]
            last = max((a[0] for a in list(answers) if a[2] == "3"), default=None)
            if bad and last is not None and time.time() - last > 2.0:
                return last - bad[0][0]
        raise RuntimeError("the canary was not rolled back within 60 s")
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        proc.send_signal(signal.SIGINT)
        proc.wait(15)


def analysis_cost(tmp: Path, rollouts: int, ticks: int, checks: list[dict[str, Any]]) -> tuple[float, float]:
    """(CPU seconds per tick, wall seconds per tick) for `rollouts` concurrent rollouts."""
    import numpy as np

    from mlp.rollouts.driver import RolloutDriver
    from mlp.rollouts.providers import LocalProvider
    from mlp.rollouts.store import RolloutStore
    from mlp.serving.runtime import Runtime
    from mlp.serving.testing import deployment, route, train_iris
    from mlp.specs.models import Deployment

    (p1, d1), (p2, d2) = train_iris(tmp / "m1", 1.0), train_iris(tmp / "m2", 10.0)
    rt = Runtime(tmp / "state", payload_log=False, on_event=lambda m: None)
    deps = {}
    rng = np.random.default_rng(0)
    for i in range(rollouts):
        name = f"m{i}"
        rt.apply(deployment(name, [route(1, p1, d1, "stable", 80), route(2, p2, d2, "canary", 20)]))
        for version, n in (("1", 400), ("2", 100)):  # a window's worth of answers per version
            vm = rt.models[name].versions[version].metrics
            for _ in range(n):
                vm.ok.inc()
                vm.observe(rng.integers(0, 3, 1), float(rng.uniform(0.001, 0.01)))
        deps[name] = Deployment.model_validate(
            {
                "version": 1,
                "canary": {"version": 2, "steps": [20, 50, 100], "analysis": {"interval": "1h", "checks": checks}},
            }
        )
    driver = RolloutDriver(RolloutStore(tmp / "state"), LocalProvider(rt), echo=lambda m: None)
    driver.declare("dev", "bench", deps)
    driver.tick("dev")  # Pending -> Progressing
    driver.tick("dev")  # marks taken
    for name in deps:  # traffic inside the step's window
        for version, n in (("1", 400), ("2", 100)):
            vm = rt.models[name].versions[version].metrics
            for _ in range(n):
                vm.ok.inc()
                vm.observe(rng.integers(0, 3, 1), float(rng.uniform(0.001, 0.01)))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(ticks):
        driver.tick("dev")
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    phases = {r.phase for r in driver.store.all("dev")}
    assert phases == {"Progressing"}, phases  # every rollout was analysed, none ended
    rt.close()
    return cpu / ticks, wall / ticks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rollouts", type=int, default=100)
    ap.add_argument("--ticks", type=int, default=30)
    ap.add_argument("--loop-interval", type=float, default=1.0, help="mlp up's --interval: seconds between ticks")
    args = ap.parse_args(argv)

    from mlp.serving.testing import train_faulty, train_iris

    with tempfile.TemporaryDirectory(prefix="mlp-bench-rollout-") as td:
        tmp = Path(td)
        artifacts = {1: train_iris(tmp / "a1"), 3: train_faulty(tmp / "a3", fail_share=0.2)}
        times = []
        for i in range(args.runs):
            t = rollback_once(tmp / f"run{i}", artifacts)
            times.append(t)
            print(f"rollback run {i + 1}: first failed canary request -> 0% traffic in {t:.2f} s", file=sys.stderr)
        interval = 5.0
        print("\n| measure | value | goal |\n|---|---|---|")
        print(
            f"| first bad request -> 0% canary (median of {args.runs}, max) | {statistics.median(times):.2f} s, "
            f"{max(times):.2f} s | < {interval + 1:.0f} s |"
        )
        print(f"| ratio to the analysis interval (5 s) | {statistics.median(times) / interval:.2f} | < 1.2 |")
        full = [
            {"metric": "error-rate", "max": 0.05},
            {"metric": "latency", "percentile": 99, "max": 0.5},
            {"metric": "prediction-shift", "min": 0.001},
        ]
        cpu_full, wall_full = analysis_cost(tmp / "cost-full", args.rollouts, args.ticks, full)
        cpu_err, _ = analysis_cost(tmp / "cost-err", args.rollouts, args.ticks, [{"metric": "error-rate", "max": 0.05}])
        share = cpu_full / args.loop_interval
        print(
            f"| analysis of {args.rollouts} rollouts per tick (3 checks): CPU | {cpu_full * 1000:.1f} ms "
            f"(wall {wall_full * 1000:.1f} ms) | |"
        )
        print(f"| share of one core at one tick per {args.loop_interval:g} s | {share:.2%} | < 5% |")
        print(f"| baseline: error-rate check only, CPU per tick | {cpu_err * 1000:.1f} ms | |")
        print(f"| ratio 3 checks / error-rate only | {cpu_full / cpu_err:.2f} | |")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
