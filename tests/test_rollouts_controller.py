"""The controller drives canary rollouts on Kubernetes targets.

Real parts: the controller's reconcile step (`Reconciler.step`, as `mlp controller` runs it) over
a Git repository in a temp folder, the Kubernetes target talking HTTP to the API server stand-in
(or a real cluster with MLP_TEST_KUBECONFIG), a real Prometheus (Debian's package) scraping a real
data plane that serves the stable and canary versions under a load loop, and the PromQL provider.
The stand-in answers for KServe's controller (`status.components.predictor.traffic` follows
`canaryTrafficPercent`) and validates HTTPRoutes against the Gateway API CRD fixture.

- Serverless: a good canary walks canaryTrafficPercent 10 -> 50 -> 100 and is promoted; killed
  mid-rollout (a new reconciler and driver on the same state), it resumes at the same step.
- Serverless: a canary that errs on 20% of requests is rolled back: the stable version gets
  100%, a revert branch removing the canary is pushed to the repository, never retried.
- Standard: the HTTPRoute's weights move step by step; a pause holds them.
- A Prometheus that is down pauses the rollout with the reason; it never promotes.
- The real `mlp controller` process walks a canary that `mlp rollout pause|resume|status`
  steer and read from the same state folder.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import git
import pytest
from standins.kube_apiserver import KubeApiServer
from test_controller import commit_all, make_platform_repo
from test_controller_process import _stop as stop
from test_rollouts_kube import rollout_cluster as cluster
from test_rollouts_prometheus import _free_port, run_prometheus

from mlp.controller.reconciler import Reconciler
from mlp.controller.store import AuditLog, StateStore
from mlp.rollouts import machine
from mlp.rollouts.driver import RolloutDriver
from mlp.rollouts.kube import kube_driver
from mlp.rollouts.store import RolloutStore
from mlp.serving.app import DataPlane
from mlp.serving.runtime import Runtime
from mlp.serving.server import ServerThread
from mlp.serving.testing import client, deployment, route, train_faulty, train_iris
from mlp.sources.git import GitSource
from mlp.targets.base import ObjectRef
from mlp.targets.kubernetes import KubernetesTarget

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

ENV, NS = "staging", "ml-staging"
ISVC = ObjectRef("serving.kserve.io/v1beta1", "InferenceService", NS, "iris")
CANARY_ISVC = ObjectRef("serving.kserve.io/v1beta1", "InferenceService", NS, "iris-canary")
ROUTE = ObjectRef("gateway.networking.k8s.io/v1", "HTTPRoute", NS, "iris")
STABLE_URI = "s3://mlp-models/iris/1/model.joblib"
CANARY_URI = "s3://mlp-models/iris/2/model.joblib"
ANALYSIS = "        analysis: {metric: error-rate, max: 0.01, interval: 5m}"


# --- the parts ---------------------------------------------------------------------------------


@contextlib.contextmanager
def data_plane(tmp_path: Path, *, fail_share: float) -> Iterator[str]:
    """A real data plane serving iris v1 (stable) and v2 (canary, failing `fail_share` of requests)
    half and half, under a load loop; yields its host:port for Prometheus to scrape."""
    p1, d1 = train_iris(tmp_path / "m1")
    p2, d2 = train_faulty(tmp_path / "m2", fail_share=fail_share) if fail_share else train_iris(tmp_path / "m2", c=10)
    rt = Runtime(tmp_path / "plane", payload_log=False)
    rt.apply(deployment("iris", [route(1, p1, d1, "stable", 50), route(2, p2, d2, "canary", 50)]))
    stop = threading.Event()
    with ServerThread(DataPlane(rt)) as server:

        def load() -> None:
            rng = random.Random(7)
            with client(server.url) as c:
                while not stop.is_set():
                    row = [rng.uniform(4, 8), rng.uniform(2, 4), rng.uniform(1, 7), rng.uniform(0.1, 2.5)]
                    c.post("/v1/models/iris:predict", json={"instances": [row]})
                    stop.wait(0.01)

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        try:
            yield server.url.removeprefix("http://")
        finally:
            stop.set()
            loader.join(10)
    rt.close()


@contextlib.contextmanager
def scene(tmp_path: Path, fail_share: float) -> Iterator[tuple[KubernetesTarget, KubeApiServer | None, str]]:
    """(target, the stand-in or None, the Prometheus URL) around a loaded data plane."""
    with (
        data_plane(tmp_path, fail_share=fail_share) as scrape,
        run_prometheus(tmp_path, scrape) as prom,
        cluster(tmp_path) as (target, api),
    ):
        yield target, api, prom


def platform(tmp_path: Path, serving: str) -> tuple[git.Repo, str]:
    """The example platform repository with staging served per `serving`, selfHeal off (a rollout's
    move must not be taken for drift) and iris's canary taken out; returns it and the text with
    the canary, which `declare_canary` commits once the stable version runs."""
    repo = make_platform_repo(tmp_path / "platform")
    path = Path(repo.working_tree_dir or ".") / "environments" / "staging.yaml"
    with_canary = path.read_text().replace("selfHeal: true", "selfHeal: false")
    with_canary, n = re.subn(r"  serving: .*\n", serving, with_canary)  # replaces the example's own
    assert n == 1
    path.write_text(re.sub(r"\n      canary:\n(        .*\n)+", "\n", with_canary))
    commit_all(repo, "staging: serving mode, iris v1 only")
    return repo, with_canary


def declare_canary(repo: git.Repo, text: str, analysis: str) -> None:
    assert ANALYSIS in text
    path = Path(repo.working_tree_dir or ".") / "environments" / "staging.yaml"
    path.write_text(text.replace(ANALYSIS, f"        analysis: {analysis}"))
    commit_all(repo, "staging: iris canary v2")


class Rig:
    """The controller's reconcile step with a rollout driver, as `mlp controller` wires them."""

    def __init__(self, repo: git.Repo, state: Path, target: KubernetesTarget) -> None:
        self.repo, self.state, self.target = repo, state, target
        self.source = GitSource(str(repo.working_tree_dir), state / "git-cache")
        self.restart()

    @classmethod
    def running(cls, tmp_path: Path, target: KubernetesTarget, serving: str, analysis: str) -> Rig:
        """The stable version applied, then the canary declared in a new commit."""
        repo, with_canary = platform(tmp_path, serving)
        rig = cls(repo, tmp_path / "state", target)
        rig.step()
        assert storage_uri(target) == STABLE_URI
        declare_canary(repo, with_canary, analysis)
        return rig

    def restart(self) -> None:
        """A new process: a new driver and reconciler on the same state folder."""
        self.driver: RolloutDriver = kube_driver(self.state, self.source.cache_dir)
        self.reconciler = Reconciler(
            self.source, lambda e, s: self.target, StateStore(self.state), rollouts=self.driver
        )

    def step(self) -> None:
        self.source.refresh(["main"])
        result = self.reconciler.step(ENV)
        assert result.outcome in ("synced", "applied"), result.message

    def rollout(self) -> machine.Rollout | None:
        return RolloutStore(self.state).get(ENV, "iris")

    def run_until(
        self, done: Callable[[machine.Rollout], bool], watch: Callable[[], Any], timeout: float = 120
    ) -> list[Any]:
        """Step every 0.3 s until `done(rollout)`; returns what `watch()` saw after each step, deduplicated."""
        seen: list[Any] = []
        deadline = time.monotonic() + timeout
        while True:
            self.step()
            value = watch()
            if not seen or seen[-1] != value:
                seen.append(value)
            r = self.rollout()
            if r is not None and done(r):
                return seen
            assert time.monotonic() < deadline, f"rollout did not finish: {r and r.message}; saw {seen}"
            time.sleep(0.3)

    def transitions(self) -> list[str]:
        events = AuditLog(self.state).events(env=ENV)
        return [e.objects[0].split(" ModelDeployment/")[0] for e in events if e.action == "rollout" and e.objects]


def percent(target: KubernetesTarget) -> int | None:
    live = target.get(ISVC)
    assert live is not None
    return live["spec"]["predictor"].get("canaryTrafficPercent")


def storage_uri(target: KubernetesTarget, ref: ObjectRef = ISVC) -> str:
    live = target.get(ref)
    assert live is not None
    return str(live["spec"]["predictor"]["model"]["storageUri"])


def observed(state: Path) -> dict[str, int] | None:
    st = StateStore(state).load(ENV)
    iris = next((m for m in st.models if m.model == "iris"), None) if st is not None else None
    return iris.observed if iris is not None else None


GOOD = "{metric: error-rate, max: 0.05, interval: 3s, minRequests: 20}"


# --- the scenes --------------------------------------------------------------------------------


def test_serverless_canary_walks_its_steps_on_prometheus_and_resumes_after_a_restart(tmp_path: Path) -> None:
    with scene(tmp_path, 0) as (target, api, prom):
        serving = f"  serving: {{mode: Serverless, prometheus: {{url: '{prom}'}}}}\n"
        rig = Rig.running(tmp_path, target, serving, GOOD)
        first = rig.run_until(lambda r: r.step == 1, lambda: (percent(target), observed(rig.state)))
        assert [p for p, _ in first] == [10, 50], first
        if api is not None:  # KServe's answer, read back into the status
            assert [o for _, o in first] == [{"2": 10, "1": 90}, {"2": 50, "1": 50}], first
        live = target.get(ISVC)
        assert live is not None
        assert live["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
        assert storage_uri(target) == CANARY_URI

        rig.restart()  # killed mid-rollout: the new process goes on at step 2, not from step 1
        rest = rig.run_until(lambda r: r.phase == machine.PROMOTED, lambda: percent(target))
        assert rest == [50, 100, None], rest
        assert storage_uri(target) == CANARY_URI  # promoted: the canary's revision takes 100%
        if api is not None:
            assert observed(rig.state) == {"2": 100}
        assert rig.transitions() == [
            " -> Pending",
            "Pending -> Progressing",
            "Progressing -> Progressing",
            "Progressing -> Progressing",
            "Progressing -> Promoted",
        ]
        # the weight moves were applied as rollout steps (selfHeal is off: not drift)
        actions = [e.action for e in AuditLog(rig.state).events(env=ENV)]
        assert actions.count("rollout-step") == 3, actions
        for _ in range(3):  # promoted and idle: the drift check does not fight the position
            rig.step()
        assert percent(target) is None


def test_serverless_erring_canary_is_rolled_back_with_a_revert_branch(tmp_path: Path) -> None:
    with scene(tmp_path, 0.2) as (target, api, prom):
        serving = f"  serving: {{mode: Serverless, prometheus: {{url: '{prom}'}}}}\n"
        rig = Rig.running(tmp_path, target, serving, GOOD)
        repo = rig.repo
        seen = rig.run_until(lambda r: r.phase == machine.ROLLED_BACK, lambda: percent(target))
        assert seen == [10, None], seen
        r = rig.rollout()
        assert r is not None and r.step == 0 and "error-rate" in r.message
        assert storage_uri(target) == STABLE_URI  # users get only the stable version
        if api is not None:
            assert observed(rig.state) == {"1": 100}
        rig.driver.wait()
        branch = "mlp/rollback/staging/iris-v2"
        assert branch in [h.name for h in repo.heads], [h.name for h in repo.heads]
        diff = repo.git.diff("main", branch, "--", "environments/staging.yaml")
        removed = [ln for ln in diff.splitlines() if ln.startswith("-") and not ln.startswith("---")]
        added = [ln for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
        assert added == [] and removed[0] == "-      canary:" and len(removed) == 4, diff
        assert repo.git.diff("main", branch, "--stat").count("|") == 1  # only the environment file
        for _ in range(3):  # the same declaration is never retried
            rig.step()
        r = rig.rollout()
        assert r is not None and r.phase == machine.ROLLED_BACK and percent(target) is None


def test_standard_mode_moves_the_httproute_weights_and_pause_holds_them(tmp_path: Path) -> None:
    with scene(tmp_path, 0) as (target, _api, prom):
        serving = (
            f"  serving: {{mode: Standard, gateway: {{name: ml-gateway, namespace: gateway}}, "
            f"prometheus: {{url: '{prom}'}}}}\n"
        )
        rig = Rig.running(tmp_path, target, serving, GOOD)

        def weights() -> list[tuple[str, int]]:
            live = target.get(ROUTE)
            assert live is not None
            return [(b["name"], b["weight"]) for b in live["spec"]["rules"][0]["backendRefs"]]

        seen = rig.run_until(lambda r: r.step == 1, weights)
        assert seen == [
            [("iris-predictor", 90), ("iris-canary-predictor", 10)],
            [("iris-predictor", 50), ("iris-canary-predictor", 50)],
        ], seen
        assert storage_uri(target) == STABLE_URI and storage_uri(target, CANARY_ISVC) == CANARY_URI
        live = target.get(ISVC)
        assert live is not None and "canaryTrafficPercent" not in live["spec"]["predictor"]

        RolloutStore(rig.state).update(ENV, "iris", machine.pause)  # `mlp rollout pause staging iris`
        rig.restart()  # and the pause holds across a restart
        for _ in range(12):  # ~4 analysis intervals
            rig.step()
            time.sleep(0.3)
        r = rig.rollout()
        assert r is not None and r.phase == machine.PAUSED and weights()[1][1] == 50

        RolloutStore(rig.state).update(ENV, "iris", lambda r: machine.resume(r, time.time()))
        rest = rig.run_until(lambda r: r.phase == machine.PROMOTED, weights)
        assert rest[-2:] == [
            [("iris-predictor", 0), ("iris-canary-predictor", 100)],
            [("iris-predictor", 100)],
        ], rest
        assert storage_uri(target) == CANARY_URI  # promoted: `iris` serves the canary's version


def test_prometheus_down_pauses_the_rollout_and_never_promotes(tmp_path: Path) -> None:
    with cluster(tmp_path) as (target, _api):
        down = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
        fast = "{metric: error-rate, max: 0.05, interval: 1s, minRequests: 1}"
        serving = f"  serving: {{mode: Serverless, prometheus: {{url: '{down}'}}}}\n"
        rig = Rig.running(tmp_path, target, serving, fast)
        seen = rig.run_until(lambda r: r.phase == machine.PAUSED, lambda: percent(target), timeout=30)
        for _ in range(5):
            rig.step()
            time.sleep(0.3)
        r = rig.rollout()
        assert r is not None and r.phase == machine.PAUSED and r.paused_by == "metrics"
        assert "unreachable" in r.message and down in r.message, r.message
        assert seen == [10] and percent(target) == 10


def test_the_mlp_controller_process_drives_the_rollout_that_mlp_rollout_steers(tmp_path: Path) -> None:
    """The real `mlp controller` process (its CLI wiring of the driver) walks the canary; `mlp rollout
    pause|resume|status` on the same state folder steer and read it."""
    import json
    import subprocess
    import sys

    def mlp(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mlp.cli.main", *args], capture_output=True, text=True, timeout=60, check=False
        )

    def status() -> dict[str, Any] | None:
        res = mlp("rollout", "status", ENV, "iris", "--state-dir", str(state), "-o", "json")
        return json.loads(res.stdout) if res.returncode in (0, 1) and res.stdout.strip() else None

    def wait(pred: Callable[[], Any], what: str, timeout: float = 90) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = pred()
            if value:
                return value
            assert proc.poll() is None, f"controller exited {proc.returncode}: {proc.stderr and proc.stderr.read()}"
            time.sleep(0.3)
        pytest.fail(f"timed out waiting for {what}; rollout {status()}")

    with scene(tmp_path, 0) as (target, _api, prom):
        kubeconfig = os.environ.get("MLP_TEST_KUBECONFIG") or str(tmp_path / "kubeconfig")
        repo, with_canary = platform(tmp_path, f"  serving: {{mode: Serverless, prometheus: {{url: '{prom}'}}}}\n")
        state = tmp_path / "state"
        cmd = ["controller", "--repo", str(repo.working_tree_dir), "--interval", "1", "--metrics-port", "0"]
        cmd += ["--state-dir", str(state), "--env", ENV, "--kubeconfig", kubeconfig]
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlp.cli.main", *cmd],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            wait(lambda: target.get(ISVC) is not None and storage_uri(target) == STABLE_URI, "the stable version")
            # steps of 6 s: time enough for `mlp rollout pause` to start and act within the 50% step
            declare_canary(repo, with_canary, GOOD.replace("interval: 3s", "interval: 6s"))
            wait(lambda: percent(target) == 50, "the second step (50%)")
            paused = mlp("rollout", "pause", ENV, "iris", "--state-dir", str(state), "-o", "json")
            assert paused.returncode == 0, paused.stderr
            assert json.loads(paused.stdout)["phase"] == machine.PAUSED
            time.sleep(10)  # more than the step's interval: a running rollout would have moved on
            r = status()
            assert r is not None and r["phase"] == machine.PAUSED and r["weight"] == 50 and percent(target) == 50
            assert mlp("rollout", "resume", ENV, "iris", "--state-dir", str(state)).returncode == 0
            done = wait(lambda: (s := status()) and s["phase"] == machine.PROMOTED and s, "the promotion")
            assert done["weight"] == 100
            wait(lambda: percent(target) is None, "canaryTrafficPercent dropped")
            assert storage_uri(target) == CANARY_URI
        finally:
            stop(proc)
            if proc.stderr is not None:
                proc.stderr.close()
