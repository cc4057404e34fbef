"""The rendered alerting rules against real Prometheus tools: promtool, Prometheus, Alertmanager.

- every rule of the example repository's PrometheusRules passes `promtool check rules`;
- `promtool test rules` proves each alert fires on a series past its threshold and not on one
  at it;
- a real Prometheus scrapes a real `mlp monitor run`, every metric the rules name is in that
  scrape, the drift alert fires, and a real Alertmanager delivers it to the test's receiver.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from mlp.render import render
from mlp.render.monitoring import alert_rules
from mlp.sources.directory import read_directory
from mlp.specs import load
from tests.monitor_helpers import Receiver, iris, monitor_config, receiver, write_payloads, write_reference

ROOT = Path(__file__).resolve().parents[1]
EXPR = re.compile(r"^(\w+)\{(.*)\} (>|<) (\S+)$")


def binary(*names: str) -> str:
    for name in names:
        for candidate in (shutil.which(name), f"/usr/bin/{name}", f"/usr/sbin/{name}"):
            if candidate and Path(candidate).is_file():
                return candidate
    pytest.skip(f"{' or '.join(names)} not found on PATH, /usr/bin or /usr/sbin (installed by .ci/setup.d/2*.sh)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def example_rules() -> list[dict[str, Any]]:
    result = load(read_directory(ROOT))
    assert result.ok, result.diagnostics
    groups = []
    for env in ("staging", "prod"):
        for obj in render(result.specs, env):
            if obj["kind"] == "PrometheusRule":
                groups.extend(obj["spec"]["groups"])
    assert groups and all(g["rules"] for g in groups)
    return groups


def test_rendered_rules_pass_promtool_check_rules(tmp_path: Path) -> None:
    promtool = binary("promtool")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": example_rules()}))
    res = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def _series(selector: str, extra: dict[str, str]) -> str:
    labels = dict(re.findall(r'(\w+)="([^"]*)"', selector))
    labels.update(extra)
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def _rule_tests(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One promtool test per alert: a series past the threshold fires, one at it does not."""
    tests = []
    for group in groups:
        for rule in group["rules"]:
            m = EXPR.match(rule["expr"])
            assert m, f"unexpected expression shape: {rule['expr']}"
            metric, selector, op, value = m.group(1), m.group(2), m.group(3), float(m.group(4))
            past = value + 0.5 if op == ">" else value - 0.05
            extra = {"feature": "petal_length"} if "feature" in rule["annotations"].get("summary", "") else {}
            firing = metric + _series(selector, {**extra, "case": "past"})
            quiet = metric + _series(selector, {**extra, "case": "at"})
            labels = {**rule["labels"], **dict(re.findall(r'(\w+)="([^"]*)"', selector)), **extra, "case": "past"}
            labels.pop("__name__", None)
            annotations = {
                k: v.replace("{{ $labels.feature }}", extra.get("feature", "")) for k, v in rule["annotations"].items()
            }
            minutes = int(rule["for"][:-1]) * {"s": 1 / 60, "m": 1, "h": 60}[rule["for"][-1]]
            tests.append(
                {
                    "interval": "1m",
                    "input_series": [
                        {"series": firing, "values": f"{past}x{int(minutes) + 10}"},
                        {"series": quiet, "values": f"{value}x{int(minutes) + 10}"},
                    ],
                    "alert_rule_test": [
                        # before `for` has passed nothing fires, after it exactly the crossing series
                        {"eval_time": "0m", "alertname": rule["alert"], "exp_alerts": []},
                        {
                            "eval_time": f"{int(minutes) + 2}m",
                            "alertname": rule["alert"],
                            "exp_alerts": [{"exp_labels": labels, "exp_annotations": annotations}],
                        },
                    ],
                }
            )
    return tests


def test_promtool_test_rules_proves_each_alert_fires_past_its_threshold_and_not_at_it(tmp_path: Path) -> None:
    promtool = binary("promtool")
    groups = example_rules()
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    tests = _rule_tests(groups)
    assert len(tests) == sum(len(g["rules"]) for g in groups)
    (tmp_path / "tests.yaml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests})
    )
    res = subprocess.run(
        [promtool, "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stdout + res.stderr
    # and the check can fail: swap which series crosses and promtool must object
    for t in tests:
        t["input_series"][0]["values"], t["input_series"][1]["values"] = (
            t["input_series"][1]["values"],
            t["input_series"][0]["values"],
        )
    (tmp_path / "tests.yaml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests})
    )
    res = subprocess.run(
        [promtool, "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert res.returncode != 0


# --- a real Prometheus scraping a real monitor, and a real Alertmanager -------------------------


class Proc:
    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self.fh = log.open("w")
        self.proc = subprocess.Popen(args, stdout=self.fh, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.fh.close()


def wait_for(what: Callable[[], Any], timeout: float, logs: list[Path]) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            got = what()
        except (httpx.HTTPError, ValueError, KeyError):
            got = None
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError("timed out:\n" + "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs))


@pytest.fixture
def rx() -> Iterator[Receiver]:
    with receiver() as r:
        yield r


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_prometheus_scrapes_mlp_monitor_run_and_alertmanager_delivers_the_drift_alert(
    tmp_path: Path, rx: Receiver
) -> None:
    pytest.importorskip("alibi_detect", reason="alibi-detect (the `monitors` extra) is not installed")
    prometheus, alertmanager = binary("prometheus"), binary("prometheus-alertmanager", "alertmanager")
    x, y = iris()
    rng = np.random.default_rng(5)
    ref = write_reference(tmp_path / "ref", x, y)
    config = monitor_config(ref, window=150)
    config["alerts"][0]["for"] = "1s"
    (tmp_path / "monitor.json").write_text(json.dumps(config))
    shifted = x[rng.integers(0, len(x), 150)].copy()
    shifted[:, 2] += 1.5  # petal_length
    write_payloads(tmp_path / "log", shifted, seq=1)
    procs: list[Proc] = []
    mport, aport, pport = free_port(), free_port(), free_port()
    try:
        procs.append(
            Proc(
                [sys.executable, "-m", "mlp.cli.main", "monitor", "run", "iris-drift"]
                + ["--config", str(tmp_path / "monitor.json"), "--payload-log", str(tmp_path / "log")]
                + ["--state-dir", str(tmp_path / "state"), "--metrics-port", str(mport), "--interval", "1"],
                tmp_path / "monitor.log",
            )
        )
        (tmp_path / "am.yml").write_text(
            yaml.safe_dump(
                {
                    "route": {
                        "receiver": "test",
                        "group_by": ["alertname", "feature"],
                        "group_wait": "1s",
                        "group_interval": "1s",
                        "repeat_interval": "1h",
                    },
                    "receivers": [{"name": "test", "webhook_configs": [{"url": f"{rx.url}/alertmanager"}]}],
                }
            )
        )
        procs.append(
            Proc(
                [alertmanager, f"--config.file={tmp_path / 'am.yml'}", f"--storage.path={tmp_path / 'am'}"]
                + [f"--web.listen-address=127.0.0.1:{aport}", "--cluster.listen-address="],
                tmp_path / "alertmanager.log",
            )
        )
        rules = alert_rules(config)
        (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "mlp", "rules": rules}]}))
        (tmp_path / "prometheus.yml").write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(tmp_path / "rules.yml")],
                    "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{aport}"]}]}]},
                    "scrape_configs": [
                        {"job_name": "mlp-monitor", "static_configs": [{"targets": [f"127.0.0.1:{mport}"]}]}
                    ],
                }
            )
        )
        procs.append(
            Proc(
                [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}"]
                + [f"--web.listen-address=127.0.0.1:{pport}"],
                tmp_path / "prometheus.log",
            )
        )
        logs = [p.log for p in procs]
        # the monitor tested its window; every metric a rule names is in its real scrape

        def scraped() -> str | None:
            text = httpx.get(f"http://127.0.0.1:{mport}/metrics").text
            return text if "mlp_monitor_feature_drift{" in text else None

        scrape = wait_for(scraped, 90, logs)
        exposed = {
            line.split("{")[0].split(" ")[0] for line in scrape.splitlines() if line and not line.startswith("#")
        }
        for rule in rules:
            assert EXPR.match(rule["expr"]).group(1) in exposed, rule["expr"]  # type: ignore[union-attr]

        # Prometheus scraped it and evaluates the rule
        def firing() -> Any:
            r = httpx.get(f"http://127.0.0.1:{pport}/api/v1/alerts").json()
            return [a for a in r["data"]["alerts"] if a["state"] == "firing"]

        alerts = wait_for(firing, 60, logs)
        assert {a["labels"]["feature"] for a in alerts} == {"petal_length"}

        # Alertmanager delivered it to the receiver
        def delivered() -> Any:
            return [b for p, b in list(rx.bodies) if p == "/alertmanager" and b.get("status") == "firing"]

        (body, *_) = wait_for(delivered, 60, logs)
        assert body["alerts"][0]["labels"]["alertname"] == "IrisDriftDataDriftWarning"
        assert body["alerts"][0]["labels"]["feature"] == "petal_length"
        assert body["alerts"][0]["labels"]["monitor"] == "iris-drift"
    finally:
        for p in reversed(procs):
            p.stop()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_local_route_to_an_alertmanager_url_fires_and_resolves_through_a_real_alertmanager(
    tmp_path: Path, rx: Receiver
) -> None:
    from mlp.monitors.alerts import Alerter, Condition

    alertmanager = binary("prometheus-alertmanager", "alertmanager")
    aport = free_port()
    (tmp_path / "am.yml").write_text(
        yaml.safe_dump(
            {
                "route": {"receiver": "test", "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"},
                "receivers": [{"name": "test", "webhook_configs": [{"url": f"{rx.url}/am", "send_resolved": True}]}],
            }
        )
    )
    am = Proc(
        [alertmanager, f"--config.file={tmp_path / 'am.yml'}", f"--storage.path={tmp_path / 'am'}"]
        + [f"--web.listen-address=127.0.0.1:{aport}", "--cluster.listen-address="],
        tmp_path / "alertmanager.log",
    )
    try:
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{aport}/-/ready").status_code == 200, 30, [am.log])
        events: list[dict[str, Any]] = []
        alerter = Alerter([{"type": "alertmanager", "url": f"http://127.0.0.1:{aport}"}], audit=events.append)
        labels = {"alertname": "IrisDriftDataDrift", "monitor": "iris-drift", "features": "petal_length"}
        assert alerter.update([Condition("data-drift", True, "drift in petal_length", labels)]) == [
            ("data-drift", "firing")
        ]
        assert alerter.update([Condition("data-drift", True, "drift in petal_length", labels)]) == []

        def statuses() -> list[str]:
            return [b["status"] for p, b in list(rx.bodies) if p == "/am"]

        wait_for(lambda: "firing" in statuses(), 30, [am.log])
        assert alerter.update([Condition("data-drift", False, "no drift", labels)]) == [("data-drift", "resolved")]
        wait_for(lambda: "resolved" in statuses(), 30, [am.log])
        body = next(b for p, b in rx.bodies if p == "/am")
        assert body["alerts"][0]["labels"]["features"] == "petal_length"
        assert [e["event"] for e in events] == ["alert.firing", "alert.resolved"]
        assert all(e["delivered"] == ["alertmanager"] for e in events)
    finally:
        am.stop()
