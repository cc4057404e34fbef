"""Benchmark: `mlp apply` of 1,000 InferenceServices, first apply and no-op, and `mlp diff`.

Each row runs the real command (`python -m mlp.cli.main apply ...`, a fresh process: import and
kubeconfig loading included) against a Kubernetes API server:
- the real one named by MLP_TEST_KUBECONFIG (and MLP_TEST_KUBE_CONTEXT) when set; the namespace
  `ml-bench` must exist and be empty; every first apply is undone with `apply --prune --allow-empty`;
- else the API-server stand-in (tests/standins/kube_apiserver.py) in its own process, restarted
  (empty) before every first apply.

Rows, same run, same machine:
- baseline: one object at a time (`--kube-api-burst 1`, so nothing runs concurrently), 50 req/s:
  the client as it was before concurrent apply;
- the defaults (qps 50, burst 100, up to 32 objects in flight; the client-side limit is lifted once
  the server shows API Priority and Fairness, as a real API server and the stand-in do);
- the defaults named on the command line (--kube-api-qps 50 --kube-api-burst 100: always kept);
- --kube-api-qps 200 --kube-api-burst 200 (what a dedicated CI job may allow itself).

    .venv/bin/python benchmarks/apply.py [--models 1000] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from reconcile import snapshot  # noqa: E402

NAMESPACE = "ml-bench"
STANDIN = f"""
import sys, time
sys.path.insert(0, {str(ROOT / "tests")!r})
from standins.kube_apiserver import KubeApiServer
api = KubeApiServer(namespaces=("default", {NAMESPACE!r})).start()
print(api.url, flush=True)
time.sleep(10**6)
"""


def write_repo(folder: Path, models: int) -> Path:
    for rel, data in snapshot(models).files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


class Server:
    """The real API server (MLP_TEST_KUBECONFIG) or a fresh stand-in process."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.real = os.environ.get("MLP_TEST_KUBECONFIG")
        self.proc: subprocess.Popen[str] | None = None
        self.kubeconfig = Path(self.real) if self.real else tmp / "kubeconfig"

    def fresh(self) -> None:
        if self.real:
            return
        self.stop()
        self.proc = subprocess.Popen([sys.executable, "-c", STANDIN], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        url = self.proc.stdout.readline().strip()
        from standins.kube_apiserver import write_kubeconfig

        write_kubeconfig(self.kubeconfig, url)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def cpu(self) -> float:
        """CPU seconds the stand-in process has used so far (0 for a real API server)."""
        if self.proc is None:
            return 0.0
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def args(self) -> list[str]:
        extra = ["--kubeconfig", str(self.kubeconfig)]
        if self.real and os.environ.get("MLP_TEST_KUBE_CONTEXT"):
            extra += ["--context", os.environ["MLP_TEST_KUBE_CONTEXT"]]
        return extra


def mlp(
    repo: Path, server: Server, *args: str, ok: tuple[int, ...] = (0, 1), says: str = ""
) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds of the mlp process, CPU seconds of the stand-in meanwhile): on a
    loaded machine the CPU times are the steadier ones. Stops the benchmark when the command exits
    otherwise than `ok` or its output lacks `says` (a no-op that was not one)."""
    cmd = [sys.executable, "-m", "mlp.cli.main", *args, "--env", "bench", "--repo", str(repo), *server.args()]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = server.cpu()
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in ok or says not in proc.stdout:
        raise SystemExit(f"{' '.join(args)}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu, server.cpu() - server_before


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    configs = [
        ("baseline: one at a time, 50/s", ["--kube-api-qps", "50", "--kube-api-burst", "1"]),
        ("defaults (qps 50, burst 100; lifted under APF)", []),
        ("--kube-api-qps 50 --kube-api-burst 100 (kept)", ["--kube-api-qps", "50", "--kube-api-burst", "100"]),
        ("--kube-api-qps 200 --kube-api-burst 200", ["--kube-api-qps", "200", "--kube-api-burst", "200"]),
    ]
    with tempfile.TemporaryDirectory(prefix="mlp-bench-apply-") as tmp_name:
        tmp = Path(tmp_name)
        repo = write_repo(tmp / "repo", args.models)
        empty = write_repo(tmp / "empty", 0)
        server = Server(tmp)
        where = "a real API server (MLP_TEST_KUBECONFIG)" if server.real else "the API-server stand-in"
        print(f"{args.models} models ({args.models + 1} objects) against {where}; best of {args.repeat}")
        print("each cell: wall s (mlp CPU s, stand-in CPU s)")
        print("| client settings | first apply | no-op apply | no-op diff |\n|---|---|---|---|")
        results = {}
        try:
            for label, flags in configs:
                first, noop, diff = [], [], []
                for _ in range(args.repeat):
                    server.fresh()
                    first.append(mlp(repo, server, "apply", "--yes", *flags, ok=(0,)))
                    noop.append(mlp(repo, server, "apply", "--yes", *flags, ok=(0,), says="No changes."))
                    diff.append(mlp(repo, server, "diff", *flags, ok=(0,)))  # 1 would be changes left
                    if server.real:
                        mlp(empty, server, "apply", "--yes", "--prune", "--allow-empty", *flags)
                results[label] = (min(first), min(noop), min(diff))
                cells = " | ".join(f"{w:.2f} ({c:.2f}, {s:.2f})" for w, c, s in results[label])
                print(f"| {label} | {cells} |", flush=True)
        finally:
            server.stop()
        base = results[configs[0][0]][0][0]
        for label, (first_apply, _, _) in results.items():
            print(f"first apply, {label}: {base / first_apply[0]:.1f}x faster than the baseline (wall)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
