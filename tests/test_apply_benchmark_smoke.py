"""benchmarks/apply.py runs end to end against the API-server stand-in on a few objects.

What CI runs of the apply benchmark: every row's first apply, no-op apply (which must say
"No changes.") and diff (which must exit 0) against the stand-in. Times are not checked here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_the_apply_benchmark_runs_against_the_standin() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MLP_TEST_KUBECONFIG"}
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "apply.py"), "--models", "12"],
        capture_output=True,
        text=True,
        env=env,
        timeout=280,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "12 models (13 objects) against the API-server stand-in" in res.stdout
    rows = [line for line in res.stdout.splitlines() if line.startswith("| ") and "client settings" not in line]
    assert len(rows) == 4, res.stdout
