"""benchmarks/features.py runs end to end on tiny data (numbers are not checked here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_features_benchmark_runs_on_tiny_data(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "features.py"), "--rows", "3000", "--online-seconds", "0.5",
         "--online-keys", "100", "--online-rate", "50", "--connections", "2", "--keep", str(tmp_path / "b")],
        capture_output=True,
        text=True,
        timeout=240,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "rows differing between mlp and raw: 0" in res.stdout, res.stdout
    assert "rows differing between mlp and pandas: 0" in res.stdout, res.stdout
    assert "errors: 0" in res.stdout, res.stdout
