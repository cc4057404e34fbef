"""`GET /api/v1/monitors` shows the windows the monitor runner really tested (its state database)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from mlp.monitors.runner import MonitorMetrics, MonitorRunner
from mlp.serving.artifacts import ArtifactStore
from tests.api_support import ApiWorld
from tests.monitor_helpers import monitor_config, write_payloads, write_reference

pytest.importorskip("alibi_detect", reason="alibi-detect (the `monitors` extra) is not installed")


def test_latest_results_are_the_runners_reports_newest_first(tmp_path: Path) -> None:
    world = ApiWorld(tmp_path / "api")
    try:
        client = world.client(world.token("data-science", "viewer"))
        assert client.get("/api/v1/monitors/iris-drift").json()["latest"] == []  # nothing tested yet

        rng = np.random.default_rng(7)
        uri, digest = write_reference(tmp_path / "ref", rng.normal(size=(2000, 4)))
        # where `mlp up` runs the environment's monitors: STATE/monitors/NAME
        runner = MonitorRunner(
            monitor_config((uri, digest), window=200, threshold=0.01),
            log_root=str(tmp_path / "log"),
            state_dir=world.state / "monitors" / "iris-drift",
            fetch=ArtifactStore(tmp_path / "cache").fetch,
            metrics=MonitorMetrics(),
        )
        runner.prepare()
        write_payloads(tmp_path / "log", rng.normal(size=(200, 4)), start_ms=1_700_000_000_000, seq=0)
        write_payloads(tmp_path / "log", rng.normal(3, 1, size=(200, 4)), start_ms=1_700_000_060_000, seq=1)
        reports = runner.check()
        assert [r.status for r in reports] == ["ok", "ok"]

        latest = client.get("/api/v1/monitors/iris-drift").json()["latest"]
        assert [w["window"] for w in latest] == [reports[1].index, reports[0].index]  # newest first
        assert latest[0]["driftDetected"] is True and latest[1]["driftDetected"] is False
        assert set(latest[0]["driftedFeatures"]) == set(reports[1].drift["drifted"])  # type: ignore[index]
        assert latest[0]["rows"] == 200 and latest[0]["status"] == "ok"
        listed = client.get("/api/v1/monitors").json()["items"]
        assert next(m for m in listed if m["name"] == "iris-drift")["latest"] == latest
        # a report without a report's shape is skipped, not a 500
        db = sqlite3.connect(world.state / "monitors" / "iris-drift" / "state.db")
        with db:
            db.execute("INSERT INTO reports VALUES (?, ?)", (reports[1].index + 1, '{"index": "seven", "rows": []}'))
            db.execute("INSERT INTO reports VALUES (?, ?)", (reports[1].index + 2, "{not json"))
        db.close()
        assert client.get("/api/v1/monitors/iris-drift").json()["latest"] == latest
    finally:
        world.close()
