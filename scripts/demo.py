"""`make demo`: train the example models if needed, then serve the example `dev` environment.

  python scripts/demo.py            # serve on 127.0.0.1:8080 until Ctrl-C
  python scripts/demo.py --port 0   # any free port
  python scripts/demo.py --check    # bring it up, send one request, print the answer, exit 0

It runs `mlp up . --env dev` from the repository root (the example platform repository
lives at the top of this checkout). Artifacts go to the gitignored `artifacts/` mirror.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import train_examples  # noqa: E402


def _mlp() -> list[str]:
    return [sys.executable, "-m", "mlp.cli.main"]


def check(repo: Path, port: int, timeout: float) -> int:
    """Start `mlp up`, send one request to the curl URL it prints, print the prediction."""
    with tempfile.TemporaryDirectory(prefix="mlp-demo-") as state:
        cmd = [
            *_mlp(),
            "up",
            str(repo),
            "--env",
            "dev",
            "--port",
            str(port),
            "--state-dir",
            state,
            "--format",
            "json",
            "--no-payload-log",
        ]
        proc = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                print("demo --check: mlp up exited before it was ready", file=sys.stderr)
                return 1
            info = json.loads(line)
            model = "iris" if "iris" in info["models"] else sorted(info["models"])[0]
            url = info["models"][model]["v1"]
            body = json.dumps({"instances": [train_examples_row(model)]}).encode()
            deadline = time.monotonic() + timeout
            while True:
                try:
                    req = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
                    with urllib.request.urlopen(req, timeout=5) as resp:
                        answer = json.loads(resp.read())
                        version = resp.headers.get("x-mlp-model-version")
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            print(f"POST {url}")
            print(f"  -> {json.dumps(answer)} (answered by version {version})")
            return 0
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def train_examples_row(model: str) -> list[float]:
    if model == "iris":
        return [6.8, 2.8, 4.8, 1.4]
    from sklearn.datasets import load_breast_cancer

    return [float(v) for v in load_breast_cancer().data[0]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Serve the example repository's dev environment.")
    ap.add_argument("--port", type=int, default=int(os.environ.get("MLP_DEMO_PORT", "8080")))
    ap.add_argument("--check", action="store_true", help="start, send one request, print it, exit")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--repo", type=Path, default=ROOT, help="platform repository (default: this checkout)")
    args = ap.parse_args(argv)
    repo = args.repo.resolve()
    if train_examples.main([str(repo)]) != 0:
        return 1
    if args.check:
        return check(repo, 0 if args.port == 8080 else args.port, args.timeout)
    proc = subprocess.Popen([*_mlp(), "up", str(repo), "--env", "dev", "--port", str(args.port)], cwd=repo)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        # The terminal sent SIGINT to the whole process group; mlp up is shutting down too.
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait()
        return 0


if __name__ == "__main__":
    sys.exit(main())
