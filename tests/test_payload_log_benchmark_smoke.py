"""benchmarks/payload_log.py runs end to end for a second at a low rate (its speed is not checked here)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _row(stdout: str) -> list[str]:
    line = next(x for x in stdout.splitlines() if x.startswith("| current |"))
    return [c.strip() for c in line.strip("|").split("|")]


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (.ci/setup.d/60-wrk.sh)")
def test_the_payload_log_benchmark_runs_with_wrk() -> None:
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "payload_log.py"), "--only", "current", "--duration", "1",
         "--rate", "300", "--conns", "4"],
        capture_output=True,
        text=True,
        timeout=240,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    cells = _row(res.stdout)
    requests, non_2xx, answered, dropped, rows = cells[2], cells[4], cells[8], cells[9], cells[10]
    assert int(requests.replace(",", "")) > 0 and non_2xx == "0", res.stdout
    # every answered request is a row in the Parquet files
    assert dropped == "0" and rows == answered, res.stdout
