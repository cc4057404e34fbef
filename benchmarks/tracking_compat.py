"""Compatibility: the same MLflow client script against mlp's server and `mlflow server`, diffed.

Creates the benchmark's own venv with the full MLflow (benchmarks/mlflow_venv.py), starts both
servers on loopback, runs benchmarks/tracking_script.py against each with the unmodified
client, and prints a unified diff of the two outputs (ids and times already replaced by
placeholders). Exit status 0 when they are equal, 1 when they differ.

    .venv/bin/python benchmarks/tracking_compat.py
"""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from mlflow_venv import mlflow_server_venv  # noqa: E402
from tracking_servers import QUIET_ENV, mlflow_server, mlp_server  # noqa: E402


def run_script(url: str) -> str:
    env = {**os.environ, **QUIET_ENV, "MLFLOW_TRACKING_URI": url}
    proc = subprocess.run(
        [sys.executable, str(HERE / "tracking_script.py")], env=env, capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        raise SystemExit(f"client script failed against {url}:\n{proc.stderr[-3000:]}")
    return proc.stdout


def main() -> int:
    exe = mlflow_server_venv()
    with tempfile.TemporaryDirectory(prefix="mlp-compat-") as tmp:
        with mlp_server(Path(tmp) / "mlp") as server:
            ours = run_script(server.url)
        with mlflow_server(exe, Path(tmp) / "mlflow") as server:
            theirs = run_script(server.url)
    diff = list(
        difflib.unified_diff(theirs.splitlines(), ours.splitlines(), "mlflow server", "mlp tracking serve", lineterm="")
    )
    print(f"client output: {len(ours.splitlines())} lines (mlp), {len(theirs.splitlines())} lines (mlflow server)")
    if not diff:
        print("identical: the mlflow client got the same answers from both servers (ids and times aside)")
        return 0
    print("\n".join(diff))
    return 1


if __name__ == "__main__":
    sys.exit(main())
