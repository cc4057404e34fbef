"""`mlp controller` as a real process against the Kubernetes API server stand-in over HTTP.

- SIGKILL in the middle of an apply (the stand-in delays every write so there is a
  middle), then a restart: the environment converges, every object exists once with the
  desired content, objects written before the kill are not written again, and the audit
  log holds that apply exactly once (marked as resumed).
- SIGTERM in the middle of an apply: the step finishes, then the process exits 0.
- Metrics scraped over HTTP from the running process, in the Prometheus text format.
- `mlp sync ENV --wait` and `mlp status` / `mlp audit` against the running process's state.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from standins import kube_apiserver as kube
from test_controller import commit_all, edit, make_platform_repo, set_staging_iris

from mlp.controller.store import AuditLog, StateStore

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


ENV, NS = "staging", "ml-staging"
GROUP, PLURAL = "serving.kserve.io", "inferenceservices"
WRITES = ("PATCH", "POST", "PUT", "DELETE")


class SlowApi:
    """The stand-in with an adjustable delay before every write (a slow, busy API server)."""

    def __init__(self) -> None:
        self.api = kube.KubeApiServer(namespaces=("default", NS, "ml-prod"), prometheus_operator=True).start()
        self.delay = 0.0
        outer = self
        base = self.api._httpd.RequestHandlerClass  # type: ignore[union-attr]

        class Slow(base):  # type: ignore[misc, valid-type]
            def _authenticate(self, req: Any) -> None:
                if req.method in WRITES and "dryRun" not in req.query and outer.delay:
                    time.sleep(outer.delay)
                super()._authenticate(req)

        self.api._httpd.RequestHandlerClass = Slow  # type: ignore[union-attr]

    def owned(self) -> list[dict[str, Any]]:
        out = []
        for res in self.api.resources:
            for obj in self.api.objects(res.group, res.plural):
                labels = obj.get("metadata", {}).get("labels") or {}
                if labels.get("app.kubernetes.io/managed-by") == "mlp" and labels.get("mlp.dev/environment") == ENV:
                    out.append(obj)
        return out

    def writes_per_object(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        with self.api.lock:
            requests = list(self.api.requests)
        for r in requests:
            if r.method == "PATCH" and "dryRun" not in r.query and f"/namespaces/{NS}/" in r.path:
                counts[r.path] = counts.get(r.path, 0) + 1
        return counts


@pytest.fixture()
def slow_api() -> Iterator[SlowApi]:
    s = SlowApi()
    yield s
    s.api.stop()


def _start(repo: Path, state: Path, kubeconfig: Path, *extra: str) -> subprocess.Popen[str]:
    cmd = [
        sys.executable,
        "-m",
        "mlp.cli.main",
        "controller",
        "--repo",
        str(repo),
        "--interval",
        "1",
        "--metrics-port",
        "0",
        "--state-dir",
        str(state),
        "--env",
        ENV,
        "--kubeconfig",
        str(kubeconfig),
        *extra,
    ]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )


def _wait(pred: Any, timeout: float, what: str, proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"controller exited {proc.returncode} while waiting for {what}: {proc.stderr.read()}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def _stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.stderr.read() if proc.stderr else ""


def _status(state: Path) -> Any:
    if not (state / "state.db").exists():
        return None
    store = StateStore(state)
    try:
        return store.load(ENV)
    finally:
        store.close()


def test_sigkill_mid_apply_then_restart_converges(slow_api: SlowApi, tmp_path: Path) -> None:
    repo = make_platform_repo(tmp_path / "platform")
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig", slow_api.api.url)
    state = tmp_path / "state"
    slow_api.delay = 0.4
    proc = _start(Path(repo.working_tree_dir or "."), state, kubeconfig)
    try:
        _wait(lambda: len(slow_api.owned()) >= 2, 60, "the first writes", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    written_before = {p for p, n in slow_api.writes_per_object().items() if n}
    partial = len(slow_api.owned())
    store = StateStore(state)
    intent = store.intent(ENV)
    assert intent is not None, "no intent recorded before writing"
    assert partial < len(intent.objects), "the kill came too late: nothing left to resume"
    assert [e for e in AuditLog(state).events(env=ENV) if e.action == "apply"] == []

    slow_api.delay = 0.0
    proc = _start(Path(repo.working_tree_dir or "."), state, kubeconfig)
    try:
        _wait(
            lambda: (
                (s := _status(state)) is not None
                and s.sync_status == "Synced"
                and s.synced_revision == repo.head.commit.hexsha
            ),
            60,
            "convergence after restart",
            proc,
        )
    finally:
        err = _stop(proc)
    assert proc.returncode == 0, err

    # Nothing lost: exactly the declared objects exist, with the desired content.
    names = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in slow_api.owned())
    assert len(names) == len(set(names)) == len(intent.objects), (names, intent.objects)
    assert sorted(x.split(" ", 1)[1].replace(f"{NS}/", "") for x in intent.objects) == names
    # Nothing duplicated: what was written before the kill was not written again.
    counts = slow_api.writes_per_object()
    assert all(counts[p] == 1 for p in written_before), counts
    assert store.intent(ENV) is None
    applies = [e for e in AuditLog(state).events(env=ENV) if e.action == "apply"]
    assert len(applies) == 1 and "resumed an apply" in applies[0].message, [a.message for a in applies]
    assert applies[0].revision == repo.head.commit.hexsha


def test_sigterm_finishes_the_step_metrics_sync_and_cli(slow_api: SlowApi, tmp_path: Path) -> None:
    repo = make_platform_repo(tmp_path / "platform")
    root = Path(repo.working_tree_dir or ".")
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig", slow_api.api.url)
    state = tmp_path / "state"
    proc = _start(root, state, kubeconfig, "--interval", "30")  # only triggers and the first pass run
    try:
        _wait(lambda: (s := _status(state)) is not None and s.sync_status == "Synced", 60, "first sync", proc)
        port = json.loads((state / "controller.json").read_text())["metricsPort"]
        applied = f'mlp_controller_reconcile_total{{environment="{ENV}",outcome="applied"}} 1.0'
        # The same process (re-executed in place) runs with the C allocator, whose freed pages go back
        # to the OS; `mlp controller --help` and in-process invocations are not re-executed.
        if sys.platform.startswith("linux"):
            environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
            assert b"PYTHONMALLOC=malloc" in environ
            assert json.loads((state / "controller.json").read_text())["pid"] == proc.pid

        def scrape() -> str:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()

        _wait(lambda: applied in scrape(), 10, "the step's metrics")  # status is saved just before them
        text = scrape()
        assert "# TYPE mlp_controller_reconcile_duration_seconds histogram" in text
        assert f'mlp_controller_reconcile_total{{environment="{ENV}",outcome="applied"}} 1.0' in text
        assert f'mlp_controller_last_successful_sync_timestamp_seconds{{environment="{ENV}"}}' in text
        assert "mlp_controller_git_fetch_failures_total 0.0" in text

        # A new commit, then `mlp sync --wait`: applied at once although the interval is 30 s.
        edit(repo, "environments/staging.yaml", set_staging_iris(2))
        new = commit_all(repo, "iris v2 stable in staging")
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "mlp.cli.main",
                "sync",
                ENV,
                "--state-dir",
                str(state),
                "--wait",
                "--timeout",
                "30",
                "--format",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)[0]["synced_revision"] == new

        # SIGTERM while an apply is in progress: that step completes, then the process exits 0.
        slow_api.delay = 0.3
        edit(repo, "environments/staging.yaml", lambda t: t.replace("maxReplicas: 3", "maxReplicas: 4"))
        edit(repo, "environments/staging.yaml", lambda t: t.replace("maxReplicas: 2", "maxReplicas: 5"))
        last = commit_all(repo, "scale staging")
        subprocess.run(
            [sys.executable, "-m", "mlp.cli.main", "sync", ENV, "--state-dir", str(state)],
            check=True,
            capture_output=True,
            timeout=30,
        )
        _wait(lambda: StateStore(state).intent(ENV) is not None, 30, "apply in progress", proc)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        err = proc.stderr.read() if proc.stderr else ""
        assert proc.returncode == 0, err
        assert "finishing the current step" in err
    finally:
        if proc.poll() is None:
            proc.kill()
    st = _status(state)
    assert st is not None and st.synced_revision == last and st.sync_status == "Synced"
    assert StateStore(state).intent(ENV) is None

    status = subprocess.run(
        [sys.executable, "-m", "mlp.cli.main", "status", ENV, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Synced" in status.stdout and "InferenceService/ml-staging/iris" in status.stdout
    audit = subprocess.run(
        [sys.executable, "-m", "mlp.cli.main", "audit", "--state-dir", str(state), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    events = json.loads(audit.stdout)
    # the repository's staging declares a canary: the controller records that its rollout began
    assert [e["action"] for e in events if e["action"] != "rollout"] == ["apply", "apply", "apply"], audit.stdout
    assert [e["message"] for e in events if e["action"] == "rollout"] == ["canary v2 declared (stable v1)"]
