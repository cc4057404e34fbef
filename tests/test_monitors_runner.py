"""The monitor runner on real payload-log files: alibi-detect parity, false alarms, model drift, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlp.monitors.detectors import DriftDetector
from mlp.monitors.runner import MonitorError, MonitorMetrics, MonitorRunner
from mlp.serving.artifacts import ArtifactStore
from tests.monitor_helpers import IRIS, iris, monitor_config, receiver, write_payloads, write_reference

pytest.importorskip("alibi_detect", reason="alibi-detect (the `monitors` extra) is not installed")


def make_runner(tmp_path: Path, config: dict[str, Any], **kw: Any) -> tuple[MonitorRunner, list[str]]:
    lines: list[str] = []
    store = ArtifactStore(tmp_path / "cache")
    runner = MonitorRunner(
        config,
        log_root=str(tmp_path / "log"),
        state_dir=tmp_path / "state",
        fetch=store.fetch,
        metrics=MonitorMetrics(),
        echo=lines.append,
        **kw,
    )
    return runner, lines


# --- parity with alibi-detect -------------------------------------------------------------------


@pytest.mark.parametrize("correction", ["bonferroni", "fdr"])
@pytest.mark.parametrize("kind", ["ks", "chi2", "tabular"])
def test_detector_results_equal_alibi_detect_on_the_same_arrays(kind: str, correction: str) -> None:
    from alibi_detect.cd import ChiSquareDrift, KSDrift, TabularDrift

    rng = np.random.default_rng(7)
    if kind == "ks":
        ref = rng.normal(size=(2000, 5))
        x = rng.normal(size=(400, 5))
        x[:, 1] += 0.3
        x[:, 3] *= 1.4
        direct = KSDrift(ref, p_val=0.05, correction=correction)
        cats: list[str] = []
    elif kind == "chi2":
        ref = rng.integers(0, 4, size=(2000, 3)).astype(float)
        x = rng.choice(4, size=(400, 3), p=[0.4, 0.2, 0.2, 0.2]).astype(float)
        direct = ChiSquareDrift(ref, p_val=0.05, correction=correction)
        cats = []
    else:
        ref = np.hstack([rng.normal(size=(2000, 2)), rng.integers(0, 3, size=(2000, 2))]).astype(float)
        x = np.hstack([rng.normal(0.25, 1, size=(400, 2)), rng.choice(3, size=(400, 2), p=[0.5, 0.3, 0.2])])
        direct = TabularDrift(ref, p_val=0.05, correction=correction, categories_per_feature={2: None, 3: None})
        cats = ["f2", "f3"]
    names = [f"f{i}" for i in range(ref.shape[1])]
    ours = DriftDetector(kind, ref, names, categorical=cats, p_val=0.05, correction=correction).test(x)
    theirs = direct.predict(x, drift_type="batch", return_p_val=True, return_distance=True)["data"]
    assert [ours.p_values[n] for n in names] == pytest.approx(list(theirs["p_val"]), rel=0, abs=0)
    assert [ours.distances[n] for n in names] == pytest.approx(list(theirs["distance"]), rel=0, abs=0)
    assert ours.is_drift == bool(theirs["is_drift"])
    assert ours.is_drift  # the shifted arrays really drift: the comparison is not between two "no"s
    # per-feature verdicts are exactly the features under alibi-detect's corrected threshold
    threshold = float(np.min(theirs["threshold"]))
    assert ours.drifted == [n for i, n in enumerate(names) if theirs["p_val"][i] < threshold]


@pytest.mark.parametrize("kind", ["chi2", "tabular"])
def test_counts_kept_from_the_reference_give_alibi_detects_results_window_after_window(kind: str) -> None:
    """The reference is counted once; windows with categories it lacks, or lacking some of its, still agree."""
    from alibi_detect.cd import ChiSquareDrift, TabularDrift

    rng = np.random.default_rng(11)
    ref = rng.integers(0, 4, size=(1500, 3)).astype(float)
    kw: dict[str, Any] = {"categories_per_feature": {0: None, 1: None, 2: None}} if kind == "tabular" else {}
    direct = (ChiSquareDrift if kind == "chi2" else TabularDrift)(ref, p_val=0.05, **kw)
    names = ["a", "b", "c"]
    ours = DriftDetector(kind, ref, names, categorical=names if kind == "tabular" else [], p_val=0.05)
    windows = [
        rng.integers(0, 4, size=(300, 3)).astype(float),
        rng.integers(0, 6, size=(300, 3)).astype(float),  # categories 4 and 5: not in the reference
        rng.integers(1, 3, size=(300, 3)).astype(float),  # two of the reference's categories absent
    ]
    for x in windows:
        got = ours.test(x)
        theirs = direct.predict(x, drift_type="batch", return_p_val=True, return_distance=True)["data"]
        assert [got.p_values[n] for n in names] == list(theirs["p_val"])
        assert [got.distances[n] for n in names] == list(theirs["distance"])
    assert got.is_drift  # the last window really drifts


# --- false alarms -------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_200_seeded_no_drift_windows_alert_within_the_declared_significance(tmp_path: Path) -> None:
    from scipy.stats import binom

    rng = np.random.default_rng(20261201)
    ref = rng.normal(size=(5000, 4))
    uri, digest = write_reference(tmp_path / "ref", ref)
    alpha, windows, size = 0.05, 200, 250
    runner, _ = make_runner(tmp_path, monitor_config((uri, digest), window=size, threshold=alpha))
    runner.prepare()
    for i in range(windows):
        write_payloads(tmp_path / "log", rng.normal(size=(size, 4)), start_ms=1_700_000_000_000 + i * 1000, seq=i)
    reports = runner.check()
    assert len(reports) == windows and all(r.status == "ok" for r in reports)
    alarms = sum(1 for r in reports if r.drift and r.drift["is_drift"])
    # under no drift each window alarms with probability <= alpha (Bonferroni is conservative):
    # more alarms than the binomial's 99% quantile means the declared significance does not hold
    bound = int(binom.ppf(0.99, windows, alpha))
    assert alarms <= bound, (alarms, bound)
    # and the detector is not dead: a shifted window is caught
    write_payloads(tmp_path / "log", rng.normal(0.5, 1, size=(size, 4)), start_ms=1_800_000_000_000, seq=999)
    assert runner.check()[0].drift["is_drift"]  # type: ignore[index]


# --- model drift through labels joined by request id --------------------------------------------


def test_labels_below_tolerance_fire_one_model_drift_alert_and_good_labels_resolve_it(tmp_path: Path) -> None:
    x, y = iris()
    rng = np.random.default_rng(3)
    uri, digest = write_reference(tmp_path / "ref", x, y)
    labels = tmp_path / "labels"
    labels.mkdir()
    with receiver() as rx:
        config = monitor_config(
            (uri, digest),
            receiver_url=rx.url,
            window=150,
            performance=[{"metric": "accuracy", "min": None, "max": None, "tolerance": 0.1, "minLabels": 50}],
            baselines={"1": {"accuracy": 0.97}},
        )
        runner, lines = make_runner(tmp_path, config, labels=str(labels))
        runner.prepare()

        def window(i: int, wrong: float) -> None:
            idx = rng.integers(0, len(x), size=150)
            ids = [f"req-{i}-{k}" for k in range(150)]
            truth = y[idx].astype(float)
            pred = truth.copy()
            flip = rng.random(150) < wrong
            pred[flip] = (pred[flip] + 1) % 3
            write_payloads(
                tmp_path / "log", x[idx], start_ms=1_700_000_000_000 + i, seq=i, prediction=pred, request_ids=ids
            )
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({"request_id": ids, "outcome": truth}), labels / f"{i:04d}.parquet")

        window(0, 0.0)
        first = runner.check()
        assert first[0].metrics["accuracy"]["value"] == 1.0 and not first[0].metrics["accuracy"]["degraded"]
        window(1, 0.4)
        bad = runner.check()[0]
        assert bad.metrics["accuracy"]["value"] < 0.87 and bad.metrics["accuracy"]["degraded"]
        # a restarted monitor knows the alert is active: no second "firing"
        runner, lines = make_runner(tmp_path, config, labels=str(labels))
        runner.prepare()
        window(2, 0.5)
        runner.check()
        window(3, 0.0)
        runner.check()
        events = [(c, s) for c, s, _ in rx.events()]
        assert events == [("accuracy-degraded", "firing"), ("accuracy-degraded", "resolved")], lines
        audit = [json.loads(line) for line in (tmp_path / "state" / "audit.jsonl").read_text().splitlines()]
        assert [(a["event"], a["condition"], a["delivered"]) for a in audit] == [
            ("alert.firing", "accuracy-degraded", ["webhook"]),
            ("alert.resolved", "accuracy-degraded", ["webhook"]),
        ]


# --- bad input ----------------------------------------------------------------------------------


def test_reference_digest_mismatch_is_refused_with_one_clear_line(tmp_path: Path) -> None:
    x, _ = iris()
    uri, digest = write_reference(tmp_path / "ref", x)
    wrong = "sha256:" + ("0" * 64)
    runner, _ = make_runner(tmp_path, monitor_config((uri, wrong)))
    with pytest.raises(MonitorError, match="sha256 mismatch") as exc:
        runner.prepare()
    assert "\n" not in str(exc.value)
    assert digest[7:19] not in str(exc.value) or "refusing" in str(exc.value)


def test_bad_input_gives_status_lines_no_crash_and_no_false_alert(tmp_path: Path) -> None:
    x, _ = iris()
    rng = np.random.default_rng(11)
    uri, digest = write_reference(tmp_path / "ref", x)
    with receiver() as rx:
        runner, lines = make_runner(tmp_path, monitor_config((uri, digest), receiver_url=rx.url, window=100))
        runner.prepare()
        # an empty window: nothing logged yet
        assert runner.check() == []
        assert any("waiting: 0 row(s) pending" in line for line in lines)
        # a corrupt file between two good ones
        write_payloads(tmp_path / "log", x[rng.integers(0, 150, 100)], start_ms=1_700_000_000_000, seq=1)
        bad = tmp_path / "log" / "iris" / "1" / "1700000000500-000002.parquet"
        bad.write_bytes(b"PAR1 this is not parquet PAR1")
        write_payloads(tmp_path / "log", x[rng.integers(0, 150, 100)], start_ms=1_700_000_001_000, seq=3)
        reports = runner.check()
        assert [r.status for r in reports] == ["ok", "ok"]
        assert any("skipped iris/1/1700000000500-000002.parquet: not a readable Parquet file" in line for line in lines)
        # a feature missing from the payloads
        write_payloads(
            tmp_path / "log", x[rng.integers(0, 150, 100)], start_ms=1_700_000_002_000, seq=4, drop=("petal_width",)
        )
        (missing,) = runner.check()
        assert missing.status == "error"
        assert "feature(s) petal_width missing from the payload log" in missing.message
        assert rx.events() == [] and runner.alerter.active == {}
        text = "\n".join(lines)
        assert "Traceback" not in text
        # the state survives a restart: nothing is read twice
        again, _ = make_runner(tmp_path, monitor_config((uri, digest), receiver_url=rx.url, window=100))
        again.prepare()
        assert again.check() == []


KILLED_IN_COMMIT = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, os.getcwd())
from mlp.monitors import store
from mlp.serving.artifacts import ArtifactStore
from mlp.monitors.runner import MonitorMetrics, MonitorRunner
from tests.monitor_helpers import monitor_config

tmp, uri, digest = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
# every window of this check is tested, then the process dies just before its commit
store.MonitorStore.commit = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
runner = MonitorRunner(monitor_config((uri, digest), window=100), log_root=str(tmp / "log"),
                       state_dir=tmp / "state", fetch=ArtifactStore(tmp / "cache").fetch, metrics=MonitorMetrics())
runner.prepare()
print(len(runner.check()))
"""


def test_a_monitor_killed_mid_check_neither_skips_nor_repeats_a_window(tmp_path: Path) -> None:
    import subprocess
    import sys

    from mlp.monitors.store import read_reports

    x, _ = iris()
    rng = np.random.default_rng(5)
    uri, digest = write_reference(tmp_path / "ref", x)
    write_payloads(tmp_path / "log", x[rng.integers(0, 150, 120)], start_ms=1_700_000_000_000, seq=1)
    write_payloads(tmp_path / "log", x[rng.integers(0, 150, 130)], start_ms=1_700_000_001_000, seq=2)
    # 250 rows: a check tests two windows of 100 and keeps 50; this one is killed (SIGKILL) before committing
    root = Path(__file__).resolve().parents[1]
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_IN_COMMIT, str(tmp_path), uri, digest], cwd=root, capture_output=True, text=True
    )
    assert killed.returncode == -9, killed.stderr
    runner, _ = make_runner(tmp_path, monitor_config((uri, digest), window=100))
    runner.prepare()
    # the restarted monitor tests the same two windows, once
    assert [(r.index, r.rows) for r in runner.check()] == [(1, 100), (2, 100)]
    write_payloads(tmp_path / "log", x[rng.integers(0, 150, 60)], start_ms=1_700_000_002_000, seq=3)
    # a restart after the commit repeats nothing: the 50 rows kept plus 50 new make window 3
    again, _ = make_runner(tmp_path, monitor_config((uri, digest), window=100))
    again.prepare()
    assert [(r.index, r.rows) for r in again.check()] == [(3, 100)]
    assert again.check() == []
    assert [(r["index"], r["rows"]) for r in read_reports(tmp_path / "state", 10)] == [(1, 100), (2, 100), (3, 100)]


def test_the_last_window_for_the_report_is_the_last_tested_one_and_a_torn_file_reads_as_none(tmp_path: Path) -> None:
    from mlp.monitors.store import LAST_WINDOW, read_last_window

    x, _ = iris()
    rng = np.random.default_rng(9)
    uri, digest = write_reference(tmp_path / "ref", x)
    runner, _ = make_runner(tmp_path, monitor_config((uri, digest), window=100))
    runner.prepare()
    assert read_last_window(tmp_path / "state") is None
    first, second = x[rng.integers(0, 150, 100)], x[rng.integers(0, 150, 100)]
    write_payloads(tmp_path / "log", first, start_ms=1_700_000_000_000, seq=1)
    write_payloads(tmp_path / "log", second, start_ms=1_700_000_001_000, seq=2)
    assert [r.index for r in runner.check()] == [1, 2]
    last = read_last_window(tmp_path / "state")
    assert last is not None and last.column_names == list(IRIS)  # the watched columns
    assert np.array_equal(np.column_stack([last.column(f).to_numpy() for f in IRIS]), second)
    # bytes that are not the committed ones (a rewrite in progress, a torn write): no window, never mixed rows
    path = tmp_path / "state" / LAST_WINDOW
    good = path.read_bytes()
    path.write_bytes(good[:-100] + bytes(100))
    assert read_last_window(tmp_path / "state") is None
    path.write_bytes(good[: len(good) // 2])
    assert read_last_window(tmp_path / "state") is None
    # the next tested window replaces it, shorter or longer
    third = x[rng.integers(0, 150, 100)] * 2
    write_payloads(tmp_path / "log", third, start_ms=1_700_000_002_000, seq=3)
    runner.check()
    last = read_last_window(tmp_path / "state")
    assert last is not None
    assert np.array_equal(np.column_stack([last.column(f).to_numpy() for f in IRIS]), third)


def test_time_windows_with_too_few_rows_are_skipped_not_tested(tmp_path: Path) -> None:
    x, _ = iris()
    uri, digest = write_reference(tmp_path / "ref", x)
    config = monitor_config((uri, digest), window=50)
    config["drift"]["windowDuration"] = "1m"
    runner, _ = make_runner(tmp_path, config)
    runner.prepare()
    t0 = 1_700_000_040_000 // 60_000 * 60_000
    write_payloads(tmp_path / "log", x[:10], start_ms=t0 + 1000, seq=1)  # 10 rows in minute 0
    write_payloads(tmp_path / "log", x[:80], start_ms=t0 + 61_000, seq=2)  # 80 rows in minute 1
    reports = runner.check(now=(t0 + 10 * 60_000) / 1000)
    assert [(r.status, r.rows) for r in reports] == [("skipped", 10), ("ok", 80)]
    assert "fewer than the 50 a window needs" in reports[0].message


def test_s3_payload_log_through_moto(tmp_path: Path) -> None:
    moto_server = pytest.importorskip("moto.server")
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        import os

        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="payloads")
        x, _ = iris()
        uri, digest = write_reference(tmp_path / "ref", x)
        local = tmp_path / "staging"
        for i in range(3):
            path = write_payloads(local, x[np.arange(100) + i * 10], start_ms=1_700_000_000_000 + i, seq=i)
            s3.upload_file(str(path), "payloads", f"prod/iris/1/{path.name}")
        s3.put_object(Bucket="payloads", Key="prod/iris/1/.1700000009999-000009.parquet", Body=b"open")
        store = ArtifactStore(tmp_path / "cache")
        runner = MonitorRunner(
            monitor_config((uri, digest), window=150),
            log_root="s3://payloads/prod",
            state_dir=tmp_path / "state",
            fetch=store.fetch,
            metrics=MonitorMetrics(),
            s3_endpoint_url=endpoint,
        )
        runner.prepare()
        reports = runner.check()
        assert [r.rows for r in reports] == [150, 150]
        assert set(reports[0].drift["p_values"]) == set(IRIS)  # type: ignore[index]
    finally:
        server.stop()


def test_slack_and_webhook_bodies_and_a_failing_receiver_is_reported_not_fatal(tmp_path: Path) -> None:
    from mlp.monitors.alerts import Alerter, Condition

    lines: list[str] = []
    with receiver() as rx:
        alerter = Alerter(
            [
                {"type": "slack", "url": f"{rx.url}/slack"},
                {"type": "webhook", "url": "http://127.0.0.1:9/unreachable"},
            ],
            echo=lines.append,
            timeout=0.5,
        )
        alerter.update([Condition("data-drift", True, "data drift on iris: petal_length", {"monitor": "m"})])
        assert [b for p, b in rx.bodies if p == "/slack"] == [
            {"text": ":rotating_light: [FIRING] data drift on iris: petal_length"}
        ]
        assert any("delivery to webhook receiver failed" in line for line in lines)
        # still active: no second "firing" for the same condition, one "resolved" when it ends
        assert alerter.update([Condition("data-drift", True, "x", {})]) == []
        assert alerter.update([Condition("data-drift", False, "x", {})]) == [("data-drift", "resolved")]
        assert rx.bodies[-1][1]["text"].startswith(":white_check_mark: [RESOLVED]")
