"""Benchmark: `mlp controller` on a repository with 1,000 models and 3 environments.

Measures, against the Kubernetes API server stand-in over HTTP (tests/standins):
1. the first sync of 3 x 1,000 InferenceServices (plus ServiceAccounts) from a cold start;
2. push -> applied: a commit changes one model's version in one environment, `mlp sync`
   is asked at once (as the webhook receiver does) and the clock stops when the stand-in
   holds the new object; repeated, median and max;
3. an idle controller over a window (default 60 s) while nothing changes: CPU time of the
   process (utime+stime from /proc) as a share of one core, and peak RSS. The window
   contains at least one full periodic resync (the interval is shorter than the window)
   so the drift check is counted.

Baselines from the same run: the same interpreter importing the same modules and
sleeping for the same window (the floor an idle Python process costs), and the duration
of a reconcile that finds nothing to change (what each interval costs).

    .venv/bin/python benchmarks/controller.py                   # 1,000 models, 60 s idle window
    .venv/bin/python benchmarks/controller.py --models 100 --idle 10   # quick check
    .venv/bin/python benchmarks/controller.py --pymalloc        # with CPython's allocator instead
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

ENVS = {"bench-dev": "development", "bench-staging": "staging", "bench-prod": "production"}
DIGEST = "sha256:" + "ab" * 32


def write_repo(root: Path, n_models: int) -> None:
    (root / "specs" / "models").mkdir(parents=True)
    (root / "specs" / "teams").mkdir(parents=True)
    (root / "environments").mkdir()
    (root / "specs" / "teams" / "ml.yaml").write_text(
        "apiVersion: mlp.dev/v1\nkind: Team\nmetadata: {name: ml}\n"
        "spec:\n  members:\n    - {user: ada, role: owner}\n    - {user: bob}\n"
    )
    for i in range(n_models):
        name = f"m{i:04d}"
        versions = "".join(
            f"    - version: {v}\n      uri: s3://bench/{name}/{v}/model.joblib\n      digest: {DIGEST}\n"
            f"      metrics: {{accuracy: 0.9{v}}}\n"
            for v in (1, 2, 3)
        )
        (root / "specs" / "models" / f"{name}.yaml").write_text(
            f"apiVersion: mlp.dev/v1\nkind: Model\nmetadata: {{name: {name}, team: ml}}\nspec:\n"
            "  framework: sklearn\n  signature:\n    inputs: [{name: x, type: float}]\n"
            "    outputs: [{name: y, type: int}]\n  versions:\n" + versions
        )
    for env, tier in ENVS.items():
        deployments = "".join(f"    m{i:04d}: {{version: 1}}\n" for i in range(n_models))
        approvals = "  approvals: {required: 1, from: ['team:ml']}\n" if tier == "production" else ""
        (root / "environments" / f"{env}.yaml").write_text(
            f"apiVersion: mlp.dev/v1\nkind: Environment\nmetadata: {{name: {env}}}\nspec:\n"
            f"  target: {{kind: kubernetes, namespace: {env}}}\n  tier: {tier}\n{approvals}"
            "  sync: {automated: true, prune: true, selfHeal: true}\n  deployments:\n" + deployments
        )


def git(root: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Bench",
        "GIT_AUTHOR_EMAIL": "bench@example.com",
        "GIT_COMMITTER_NAME": "Bench",
        "GIT_COMMITTER_EMAIL": "bench@example.com",
    }
    return subprocess.run(
        ["git", "-C", str(root), *args], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) / 1024 if m else 0.0


def idle_window(pid: int, seconds: float) -> tuple[float, float]:
    """(CPU share of one core in %, peak RSS MiB) of `pid` over `seconds`."""
    c0, t0, peak = cpu_seconds(pid), time.monotonic(), rss_mib(pid)
    while time.monotonic() - t0 < seconds:
        time.sleep(min(1.0, seconds / 10))
        peak = max(peak, rss_mib(pid))
    return 100 * (cpu_seconds(pid) - c0) / (time.monotonic() - t0), peak


def status(state: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "mlp.cli.main", "status", "--state-dir", str(state), "--format", "json"],
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout) if out.stdout.strip().startswith("[") else []


def _iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(int(ts), UTC).isoformat(timespec="seconds")


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=int, default=1000)
    p.add_argument("--idle", type=float, default=60.0, help="idle window, seconds")
    p.add_argument("--pushes", type=int, default=5)
    p.add_argument(
        "--pymalloc",
        action="store_true",
        help="run the controller with CPython's own allocator (PYTHONMALLOC=pymalloc) instead of the C "
        "allocator `mlp controller` picks: what that choice is worth",
    )
    args = p.parse_args()

    from standins.kube_apiserver import KubeApiServer, write_kubeconfig

    tmp = Path(tempfile.mkdtemp(prefix="mlp-bench-controller-"))
    repo, state = tmp / "platform", tmp / "state"
    write_repo(repo, args.models)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "bench platform")
    api = KubeApiServer(namespaces=("default", *ENVS)).start()
    kubeconfig = write_kubeconfig(tmp / "kubeconfig", api.url)
    interval = max(5.0, args.idle / 2)  # the idle window holds at least one periodic resync
    cmd = [
        sys.executable,
        "-m",
        "mlp.cli.main",
        "controller",
        "--repo",
        str(repo),
        "--interval",
        str(interval),
        "--metrics-port",
        "0",
        "--state-dir",
        str(state),
        "--kubeconfig",
        str(kubeconfig),
        "--quiet",
    ]
    print(f"repo: {args.models} models x {len(ENVS)} environments; interval {interval:g}s", file=sys.stderr)
    start = time.monotonic()
    proc_env = {**os.environ, "PYTHONMALLOC": "pymalloc"} if args.pymalloc else None
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, env=proc_env)
    rows: list[tuple[str, str, str]] = []
    try:
        while True:
            st = status(state)
            if len(st) == len(ENVS) and all(s["sync_status"] == "Synced" for s in st):
                break
            if proc.poll() is not None:
                raise SystemExit(f"controller exited {proc.returncode}")
            time.sleep(0.5)
        first_sync = time.monotonic() - start
        port = json.loads((state / "controller.json").read_text())["metricsPort"]
        n_objects = sum(len(api.objects("serving.kserve.io", "inferenceservices")) for _ in [0])
        rows.append(
            ("first sync (cold start, all environments)", f"{first_sync:.1f} s", f"{n_objects} InferenceServices")
        )

        # push -> applied, with an immediate trigger (what a push webhook does)
        latencies = []
        for k in range(args.pushes):
            name, env = f"m{k:04d}", "bench-prod"
            path = repo / "environments" / f"{env}.yaml"
            version = 2 if k % 2 == 0 else 3
            text = re.sub(rf"\n    {name}: {{version: \d}}", f"\n    {name}: {{version: {version}}}", path.read_text())
            path.write_text(text)
            git(repo, "commit", "-q", "-am", f"{name} v{version} to prod")
            t0 = time.monotonic()
            subprocess.run(
                [sys.executable, "-m", "mlp.cli.main", "sync", env, "--state-dir", str(state)],
                check=True,
                capture_output=True,
            )
            want = f"s3://bench/{name}/{version}/model.joblib"
            while True:
                obj = api.get_object("serving.kserve.io", "inferenceservices", env, name) or {}
                uri = (((obj.get("spec") or {}).get("predictor") or {}).get("model") or {}).get("storageUri")
                if uri == want:
                    break
                if time.monotonic() - t0 > 120:
                    raise SystemExit(f"push {k} not applied within 120 s")
                time.sleep(0.01)
            latencies.append(time.monotonic() - t0)
        rows.append(
            (
                "push -> applied (trigger at push), median",
                f"{statistics.median(latencies):.2f} s",
                f"max {max(latencies):.2f} s over {len(latencies)} pushes; includes `mlp sync` start-up",
            )
        )
        rows.append(
            (
                "push -> applied by polling alone",
                f"<= {interval:g} s + above",
                "the interval bounds it when no webhook is configured",
            )
        )

        # Every environment tracks main, so each push is a new revision for all of them: wait until
        # each has reconciled the last one, so that the idle window holds no change at all.
        head = git(repo, "rev-parse", "HEAD")
        settle = time.monotonic()
        while not all(s["synced_revision"] == head and s["sync_status"] == "Synced" for s in status(state)):
            if time.monotonic() - settle > 120:
                raise SystemExit("environments did not settle on the last push within 120 s")
            time.sleep(0.2)
        rows.append(("settled: every environment at the last push", f"{time.monotonic() - t0:.2f} s", "after it"))

        # baseline: a reconcile that finds nothing to change (from the histogram)
        time.sleep(1.0)
        steps0 = metric(port, "mlp_controller_reconcile_duration_seconds_count")
        sum0 = metric(port, "mlp_controller_reconcile_duration_seconds_sum")

        cpu, peak = idle_window(proc.pid, args.idle)
        steps = metric(port, "mlp_controller_reconcile_duration_seconds_count") - steps0
        spent = metric(port, "mlp_controller_reconcile_duration_seconds_sum") - sum0
        rows.append(
            (
                f"idle controller CPU over {args.idle:g} s",
                f"{cpu:.2f} % of one core",
                f"goal < 2 %; {int(steps)} no-change reconciles in the window",
            )
        )
        rows.append((f"idle controller peak RSS over {args.idle:g} s", f"{peak:.0f} MiB", "goal < 150 MiB"))
        if steps:
            rows.append(
                (
                    "baseline: one idle reconcile of an environment",
                    f"{spent / steps:.2f} s",
                    f"{args.models} live objects listed and compared",
                )
            )
        # a restarted controller (the objects exist already): its first pass plans but writes nothing
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        restarted = time.time()
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, env=proc_env)
        while True:
            st = status(state)
            if len(st) == len(ENVS) and all(s["updated_at"] and s["updated_at"] >= _iso(restarted) for s in st):
                break
            time.sleep(0.5)
        rows.append(
            (
                "restart: first pass over all environments (no writes)",
                f"{time.monotonic() - start:.1f} s",
                "includes interpreter start-up and the first fetch",
            )
        )
        # Status is saved inside a step; the step's metrics come after it has given its memory back.
        port = json.loads((state / "controller.json").read_text())["metricsPort"]
        while metric(port, "mlp_controller_reconcile_duration_seconds_count") < len(ENVS):
            time.sleep(0.2)
        window = min(args.idle, 30.0)
        cpu, peak = idle_window(proc.pid, window)
        rows.append(
            (
                f"restarted controller idle over {window:g} s",
                f"{cpu:.2f} % / {peak:.0f} MiB",
                "CPU share of one core / peak RSS",
            )
        )
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
        api.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    # baseline: the same interpreter with the same imports, sleeping
    base = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time, mlp.controller.controller, mlp.cli.controller, mlp.targets.kubernetes, "
            "mlp.render, mlp.specs, mlp.plan.execute, mlp.sources.git, kubernetes.config, kubernetes.client; "
            "time.sleep(1e6)",
        ]
    )
    time.sleep(3)
    bcpu, bpeak = idle_window(base.pid, min(args.idle, 10.0))
    base.kill()
    rows.append(
        (
            "baseline: idle python with the same imports (kubernetes client included)",
            f"{bcpu:.2f} % / {bpeak:.0f} MiB",
            "the floor of any Python controller",
        )
    )

    width = max(len(r[0]) for r in rows)
    print(f"{'measure'.ljust(width)}  {'result':<24}  note")
    for name, value, note in rows:
        print(f"{name.ljust(width)}  {value:<24}  {note}")


if __name__ == "__main__":
    main()
