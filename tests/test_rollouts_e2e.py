"""Canary rollouts end to end on the local target: a real `mlp up`, real traffic, a real Git
repository with a bare remote, and the GitHub stand-in receiving the revert pull request."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import git
import pytest
from standins.github_api import GitHubStandIn, serve

from mlp.rollouts.store import RolloutStore
from mlp.serving.testing import client, train_faulty, train_iris

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "t-mlp-bot"

MODEL = """\
apiVersion: mlp.dev/v1
kind: Model
metadata: {name: iris}
spec:
  framework: sklearn
  signature:
    inputs:
      - {name: sepal_length, type: float}
      - {name: sepal_width, type: float}
      - {name: petal_length, type: float}
      - {name: petal_width, type: float}
    outputs:
      - {name: species, type: int}
  versions:
"""

ENV = """\
# The dev environment: canaries here walk their steps on the runtime's own metrics.
apiVersion: mlp.dev/v1
kind: Environment
metadata:
  name: dev   # kept by the revert
spec:
  target: {kind: local}
  deployments:
    iris:
      version: 1
      canary: CANARY
"""


class Up:
    def __init__(self, repo: Path, state: Path, github: str) -> None:
        env = {**os.environ, "MLP_GITHUB_TOKEN": TOKEN}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlp.cli.main",
                "up",
                str(repo),
                "--env",
                "dev",
                "--port",
                "0",
                "--state-dir",
                str(state),
                "--interval",
                "0.2",
                "--format",
                "json",
                "--pr-repo",
                "acme/platform",
                "--github-url",
                github,
                "--no-payload-log",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"mlp up exited: {self.proc.stderr.read() if self.proc.stderr else ''}")
        self.url = json.loads(line)["url"]
        self.log: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Load:
    """A closed load loop: one request at a time, recording (time, status, version)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[tuple[float, int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rng = random.Random(7)
        from sklearn.datasets import load_iris

        rows = load_iris().data.tolist()
        with client(self.url, timeout=5) as c:
            while not self._stop.is_set():
                try:
                    row = [v + rng.uniform(-0.05, 0.05) for v in rng.choice(rows)]  # distinct requests
                    r = c.post("/v1/models/iris:predict", json={"instances": [row]})
                    self.answers.append((time.time(), r.status_code, r.headers.get("x-mlp-model-version", "")))
                except Exception:
                    self.answers.append((time.time(), 0, ""))
                time.sleep(0.005)

    def since(self, t: float) -> list[tuple[float, int, str]]:
        return [a for a in list(self.answers) if a[0] >= t]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[Path, str]]:
    folder = tmp_path_factory.mktemp("artifacts")
    return {
        1: train_iris(folder / "1", c=1.0),
        2: train_iris(folder / "2", c=10.0),
        3: train_faulty(folder / "3", fail_share=0.2),
        4: train_faulty(folder / "4", constant=0),
    }


@pytest.fixture
def github() -> Iterator[GitHubStandIn]:
    standin = GitHubStandIn({TOKEN: "mlp-bot"})
    with serve(standin.app) as url:
        standin.base_url = url
        yield standin


def write_platform(repo: Path, artifacts: dict[int, tuple[Path, str]], env: str) -> Path:
    """The iris model with these versions (artifact, digest) and the dev environment `env`."""
    (repo / "specs").mkdir(parents=True)
    (repo / "environments").mkdir()
    versions = "".join(
        f"    - {{version: {v}, uri: 'file://{p.resolve()}', digest: '{d}'}}\n" for v, (p, d) in artifacts.items()
    )
    (repo / "specs" / "iris.yaml").write_text(MODEL + versions)
    (repo / "environments" / "dev.yaml").write_text(env)
    return repo


def make_repo(tmp: Path, artifacts: dict[int, tuple[Path, str]], canary: str, github: GitHubStandIn) -> Path:
    origin = tmp / "origin.git"
    git.Repo.init(origin, bare=True, initial_branch="main")
    repo = write_platform(tmp / "platform", artifacts, ENV.replace("CANARY", canary))
    r = git.Repo.init(repo, initial_branch="main")
    r.index.add(["specs/iris.yaml", "environments/dev.yaml"])
    author = git.Actor("ds", "ds@example.com")
    r.index.commit("declare the canary", author=author, committer=author)
    r.create_remote("origin", str(origin))
    r.git.push("origin", "main")
    github.add_repo("acme/platform", origin)
    return repo


def rollout(state: Path) -> dict[str, Any] | None:
    """The rollout as the state database holds it (read in-process: a CLI start per poll is slow)."""
    if not (state / "state.db").exists():
        return None
    store = RolloutStore(state)
    try:
        r = store.get("dev", "iris")
        return r.to_json() if r else None
    finally:
        store.close()


def cli_status(state: Path) -> tuple[int, dict[str, Any]]:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlp.cli.main",
            "rollout",
            "status",
            "dev",
            "iris",
            "--state-dir",
            str(state),
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return res.returncode, json.loads(res.stdout)


def wait_for(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def phase_is(state: Path, *phases: str) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        r = rollout(state)
        return r if r and r["phase"] in phases else None

    return check


def audit(state: Path) -> list[dict[str, Any]]:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlp.cli.main",
            "audit",
            "--env",
            "dev",
            "--action",
            "rollout",
            "--state-dir",
            str(state),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return list(json.loads(res.stdout))


ANALYSIS = "analysis: {interval: 2s, minRequests: 20, checks: [{metric: error-rate, max: 0.05}, {metric: prediction-shift, min: 0.001}]}"


@pytest.mark.timeout(120)
def test_good_canary_walks_every_step_and_is_promoted(
    tmp_path: Path, artifacts: dict[int, tuple[Path, str]], github: GitHubStandIn
) -> None:
    repo = make_repo(tmp_path, artifacts, f"{{version: 2, steps: [20, 50, 100], {ANALYSIS}}}", github)
    state = tmp_path / "state"
    up = Up(repo, state, github.base_url)
    load = Load(up.url)
    try:
        done = wait_for(phase_is(state, "Promoted", "RolledBack"), 60, "the rollout to end")
        assert done["phase"] == "Promoted", (done, "".join(up.log))
        code, shown = cli_status(state)
        assert code == 0 and shown["phase"] == "Promoted" and shown["weight"] == 100
        overview = subprocess.run(
            [sys.executable, "-m", "mlp.cli.main", "status", "--state-dir", str(state)], capture_output=True, text=True
        )
        assert "dev/iris" in overview.stdout and "Promoted" in overview.stdout, overview
        t = time.time()
        time.sleep(0.5)
        after = load.since(t + 0.3)
        with client(up.url) as c:
            metrics = c.get("/metrics").text
        labels = '{canary="2",environment="dev",model="iris"}'
        assert f"mlp_rollout_canary_weight{labels} 100.0" in metrics
        assert f"mlp_rollout_phase{labels} 3.0" in metrics and f"mlp_rollout_step{labels} 3.0" in metrics
        # Git stays the truth: the promotion opens the PR that makes v2 the stable version
        linked = wait_for(lambda: (rollout(state) or {}).get("revert_url"), 30, "the promotion PR link")
    finally:
        load.stop()
        up.stop()
    branch = "mlp/promote/dev/iris-v2"
    pulls = github.calls("POST", "/repos/acme/platform/pulls")
    assert len(pulls) == 1 and pulls[0].status == 201, pulls
    assert pulls[0].body["head"] == branch and pulls[0].body["title"] == "Promote iris v2 to stable in dev"
    assert linked == github.repos["acme/platform"].pulls[1]["html_url"]
    origin = git.Repo(tmp_path / "origin.git")
    diff = origin.git.diff(f"main..{branch}", "--unified=0")
    changed = [ln for ln in diff.splitlines() if ln[:1] in "+-" and ln[:3] not in ("+++", "---")]
    assert changed == [
        "-      version: 1",
        "-      canary: " + f"{{version: 2, steps: [20, 50, 100], {ANALYSIS}}}",
        "+      version: 2",
    ], diff
    events = [e["message"] for e in audit(state)]
    assert any("started at 20%" in m for m in events), events
    assert any("advanced to step 2/3: 50%" in m for m in events), events
    assert any("advanced to step 3/3: 100%" in m for m in events), events
    assert any(m.startswith("promoted") for m in events), events
    # every answer while it walked succeeded, and the canary served a growing share
    assert all(status == 200 for _, status, _ in load.answers)
    assert {v for _, _, v in after} == {"2"}, Counter(v for _, _, v in after)


def check_rolled_back(
    tmp_path: Path, artifacts: dict[int, tuple[Path, str]], github: GitHubStandIn, version: int, reason: str
) -> None:
    canary = f"{{version: {version}, steps: [20, 50, 100], {ANALYSIS.replace('2s', '3s')}}}"
    repo = make_repo(tmp_path, artifacts, canary, github)
    state = tmp_path / "state"
    up = Up(repo, state, github.base_url)
    load = Load(up.url)
    try:
        started = wait_for(
            lambda: next((a[0] for a in list(load.answers) if a[2] == str(version)), None), 30, "a canary answer"
        )
        done = wait_for(phase_is(state, "Promoted", "RolledBack"), 60, "the rollout to end")
        assert done["phase"] == "RolledBack", done
        assert done["step"] == 0, done  # at the first failing step
        assert reason in done["message"], done["message"]
        last_canary = max(a[0] for a in list(load.answers) if a[2] == str(version))
        # rolled back within one analysis interval (3 s) of the canary's first answer
        assert last_canary - started < 3.0, last_canary - started
        time.sleep(0.5)
        t = time.time()
        time.sleep(1.0)
        after = load.since(t)
        linked = wait_for(lambda: (rollout(state) or {}).get("revert_url"), 30, "the revert PR link")
        code, shown = cli_status(state)
        assert code == 1 and shown["revert_url"] == linked  # status links to the revert PR
    finally:
        load.stop()
        up.stop()
    assert after and {v for _, _, v in after} == {"1"}, Counter(v for _, _, v in after)
    assert all(status == 200 for _, status, _ in after)
    # the revert branch: one commit on the declaring commit, removing exactly the canary line
    origin = git.Repo(tmp_path / "origin.git")
    branch = f"mlp/rollback/dev/iris-v{version}"
    head = origin.commit(branch)
    assert head.parents[0].hexsha == origin.commit("main").hexsha
    diff = origin.git.diff(f"main..{branch}", "--unified=0")
    changed = [line for line in diff.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert changed == [f"-      canary: {canary}"], diff
    # the GitHub stand-in received the pull request with the documented shape
    pulls = github.calls("POST", "/repos/acme/platform/pulls")
    assert len(pulls) == 1
    body = pulls[0].body
    assert body["head"] == branch and body["base"] == "main" and body["title"].startswith("Roll back iris canary")
    assert pulls[0].status == 201 and pulls[0].user == "mlp-bot"
    assert linked == github.repos["acme/platform"].pulls[1]["html_url"]
    # never retried: the same declaration stays rolled back after a restart
    up2 = Up(repo, state, github.base_url)
    try:
        time.sleep(1.5)
        assert (rollout(state) or {}).get("phase") == "RolledBack"
        with client(up2.url) as c:
            versions = {
                c.post("/v1/models/iris:predict", json={"instances": [[6.8, 2.8, 4.8, 1.4]]}).headers[
                    "x-mlp-model-version"
                ]
                for _ in range(30)
            }
        assert versions == {"1"}
    finally:
        up2.stop()


@pytest.mark.timeout(150)
def test_canary_erring_on_a_fifth_of_requests_is_rolled_back(
    tmp_path: Path, artifacts: dict[int, tuple[Path, str]], github: GitHubStandIn
) -> None:
    check_rolled_back(tmp_path, artifacts, github, 3, "error-rate")


@pytest.mark.timeout(150)
def test_canary_whose_predictions_shift_is_rolled_back(
    tmp_path: Path, artifacts: dict[int, tuple[Path, str]], github: GitHubStandIn
) -> None:
    check_rolled_back(tmp_path, artifacts, github, 4, "prediction-shift")


@pytest.mark.timeout(150)
def test_killed_mid_rollout_resumes_at_the_same_step_and_pause_holds_across_restart(
    tmp_path: Path, artifacts: dict[int, tuple[Path, str]], github: GitHubStandIn
) -> None:
    slow = "analysis: {interval: 5s, minRequests: 20, checks: [{metric: error-rate, max: 0.05}]}"
    repo = make_repo(tmp_path, artifacts, f"{{version: 2, steps: [20, 50, 100], {slow}}}", github)
    state = tmp_path / "state"
    up = Up(repo, state, github.base_url)
    load = Load(up.url)
    try:
        wait_for(lambda: (rollout(state) or {}).get("step") == 1, 30, "step 2")
        up.kill()  # SIGKILL: no shutdown code runs
        load.stop()
        before = rollout(state)
        assert before is not None and before["phase"] == "Progressing" and before["step"] == 1
        up = Up(repo, state, github.base_url)
        load = Load(up.url)
        time.sleep(1.0)
        resumed = rollout(state)
        assert resumed is not None and resumed["step"] >= 1 and resumed["phase"] == "Progressing", resumed
        served = Counter(v for _, _, v in load.since(time.time() - 0.8))
        assert served["2"] > 0 and served["1"] > 0, served  # the split of step 2, not a restart at 20% or 0%
        # pause, restart: it holds
        res = subprocess.run(
            [sys.executable, "-m", "mlp.cli.main", "rollout", "pause", "dev", "iris", "--state-dir", str(state)],
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, res.stderr
        paused = rollout(state)
        assert paused is not None and paused["phase"] == "Paused"
        up.stop()
        load.stop()
        up = Up(repo, state, github.base_url)
        load = Load(up.url)
        time.sleep(4.0)  # longer than a step's interval
        held = rollout(state)
        assert held is not None and held["phase"] == "Paused" and held["step"] == paused["step"], held
        res = subprocess.run(
            [sys.executable, "-m", "mlp.cli.main", "rollout", "resume", "dev", "iris", "--state-dir", str(state)],
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, res.stderr
        done = wait_for(phase_is(state, "Promoted", "RolledBack"), 60, "the rollout to end")
        assert done["phase"] == "Promoted"
    finally:
        load.stop()
        up.stop()
    events = [e["message"] for e in audit(state)]
    assert sum("started at 20%" in m for m in events) == 1, events  # resumed, never restarted
