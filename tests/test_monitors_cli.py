"""`mlp monitor run --once` and `mlp monitor report` as a user runs them: exit codes, one-line errors, reports."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mlp.cli.monitor import monitor
from tests.monitor_helpers import IRIS, iris, monitor_config, write_payloads, write_reference

pytest.importorskip("alibi_detect", reason="alibi-detect (the `monitors` extra) is not installed")


def setup(tmp_path: Path, shift: bool) -> list[str]:
    x, y = iris()
    rng = np.random.default_rng(1)
    ref = write_reference(tmp_path / "ref", x, y)
    (tmp_path / "monitor.json").write_text(json.dumps(monitor_config(ref, window=150)))
    rows = x[rng.integers(0, len(x), 150)].copy()
    if shift:
        rows[:, 0] += 1.0
    write_payloads(tmp_path / "log", rows, seq=1)
    return ["--config", str(tmp_path / "monitor.json"), "--payload-log", str(tmp_path / "log")] + [
        "--state-dir",
        str(tmp_path / "state"),
    ]


def test_run_once_exits_1_with_an_active_alert_and_json_names_the_feature(tmp_path: Path) -> None:
    args = setup(tmp_path, shift=True)
    res = CliRunner().invoke(monitor, ["run", "iris-drift", *args, "--once", "-o", "json"])
    assert res.exit_code == 1, res.output
    out = json.loads(res.stdout)
    assert out["active"] == ["data-drift"]
    assert out["windows"][0]["drift"]["drifted"] == ["sepal_length"]
    # a second run reads nothing new and keeps the alert active (state persisted), exit still 1
    again = CliRunner().invoke(monitor, ["run", "iris-drift", *args, "--once", "-o", "json"])
    assert again.exit_code == 1 and json.loads(again.stdout)["windows"] == []


def test_run_once_exits_0_without_drift(tmp_path: Path) -> None:
    args = setup(tmp_path, shift=False)
    res = CliRunner().invoke(monitor, ["run", "iris-drift", *args, "--once"])
    assert res.exit_code == 0, res.output
    assert "window 1 (150 rows): ok: no drift" in res.stderr


def test_digest_mismatch_is_one_located_line_and_exit_2(tmp_path: Path) -> None:
    args = setup(tmp_path, shift=False)
    config = json.loads((tmp_path / "monitor.json").read_text())
    config["drift"]["reference"]["digest"] = "sha256:" + "1" * 64
    (tmp_path / "monitor.json").write_text(json.dumps(config))
    res = CliRunner().invoke(monitor, ["run", "iris-drift", *args, "--once"])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Monitor/iris-drift: reference ")
    assert "sha256 mismatch" in lines[0] and "Traceback" not in res.output


def test_config_for_another_monitor_is_refused(tmp_path: Path) -> None:
    args = setup(tmp_path, shift=False)
    res = CliRunner().invoke(monitor, ["run", "other", *args, "--once"])
    assert res.exit_code == 2 and "configures monitor 'iris-drift', not 'other'" in res.stderr


def test_report_text_json_and_a_self_contained_html_with_a_histogram_per_feature(tmp_path: Path) -> None:
    args = setup(tmp_path, shift=True)
    assert CliRunner().invoke(monitor, ["run", "iris-drift", *args, "--once"]).exit_code == 1
    text = CliRunner().invoke(monitor, ["report", "iris-drift", *args])
    assert text.exit_code == 0
    assert re.search(r"sepal_length\s+p=\S+\s+stat=\S+\s+DRIFT", text.stdout)
    assert "active alerts: data-drift" in text.stdout
    data = json.loads(CliRunner().invoke(monitor, ["report", "iris-drift", *args, "-o", "json"]).stdout)
    assert set(data["windows"][0]["drift"]["p_values"]) == set(IRIS)
    out = tmp_path / "report.html"
    res = CliRunner().invoke(monitor, ["report", "iris-drift", *args, "-o", "html", "--out", str(out)])
    assert res.exit_code == 0, res.output
    page = out.read_text()
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == len(IRIS)
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    # self-contained: nothing fetched from anywhere
    assert not re.search(r"(src|href)=['\"](https?:)?//", page)
    for feature in IRIS:
        assert re.search(rf"{feature}: p-value [0-9.e-]+", page)
    assert "sepal_length: p-value" in page and "(drift)" in page
