"""End to end: a real Git repository holding the example platform repository, a running controller.

The controller runs its loop (threads, interval 1 s) against a Git repository in a temp
folder. Each scene commits (or edits the target by hand) and waits for the controller:
a new model version is applied within one interval; an invalid commit is refused and the
old state keeps serving; a revert heals; a hand edit is reverted with self-heal and
reported OutOfSync without it. A recorder thread keeps every status transition of the
environment, and each scene asserts them; the audit log holds each event.

The target is the Kubernetes target talking HTTP to the API server stand-in when both
exist in this checkout (or a real cluster with MLP_TEST_KUBECONFIG), else the in-process
memory target of test_controller.py.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import git
import httpx
import pytest
from test_controller import (
    MemoryTarget,
    add_iris_version,
    commit_all,
    edit,
    make_platform_repo,
    set_staging_iris,
)

from mlp.controller.controller import Controller
from mlp.controller.metrics import ControllerMetrics
from mlp.controller.reconciler import Reconciler
from mlp.controller.store import AuditLog, StateStore
from mlp.sources.git import GitSource
from mlp.targets.base import Manifest, Target

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

INTERVAL = 1.0
HANG = 60.0  # a wait's timeout only guards against a hang; the assertions count steps, not seconds
ENV = "staging"
NS = "ml-staging"


class Recorder(threading.Thread):
    """Polls the state store and keeps every distinct (sync, health, revision) of one environment."""

    def __init__(self, store: StateStore, env: str) -> None:
        super().__init__(daemon=True)
        self.store, self.env = store, env
        self.seen: list[tuple[str, str, str]] = []
        self.halt = threading.Event()
        self.polls = 0
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                st = self.store.load(self.env, details=False)
            except Exception as exc:  # keep polling, but remember: a test failure will show it
                self.errors.append(repr(exc))
                time.sleep(0.01)
                continue
            if st is not None:
                state = (st.sync_status, st.health, (st.revision or "")[:12])
                if not self.seen or self.seen[-1] != state:
                    self.seen.append(state)
            self.polls += 1
            time.sleep(0.01)

    def catch_up(self) -> None:
        """Let the recorder poll at least twice more, so it has seen what the test just saw."""
        n = self.polls
        _wait(lambda: self.polls >= n + 2, HANG, "the status recorder")

    def since(self, mark: int) -> list[tuple[str, str]]:
        return [(s, h) for s, h, _ in self.seen[mark:]]


def _kube_target(tmp_path: Path) -> tuple[Target, Callable[[], None]]:
    """A KubernetesTarget on the stand-in API server (or MLP_TEST_KUBECONFIG)."""
    from standins import kube_apiserver as standin

    from mlp.targets.kubernetes import KubernetesTarget

    real = os.environ.get("MLP_TEST_KUBECONFIG")
    if real:
        return KubernetesTarget.from_kubeconfig(real), lambda: None
    api = standin.KubeApiServer(namespaces=("default", NS), prometheus_operator=True).start()
    kubeconfig = standin.write_kubeconfig(tmp_path / "kubeconfig", api.url)
    target = KubernetesTarget.from_kubeconfig(str(kubeconfig))
    target.standin_url = api.url  # type: ignore[attr-defined]  # lets the test hand-edit like kubectl
    return target, api.stop


@pytest.fixture(params=["kubernetes", "memory"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    if request.param == "memory":
        yield MemoryTarget()
        return
    tgt, stop = _kube_target(tmp_path)
    yield tgt
    stop()


def _live(target: Target, kind: str, name: str) -> Manifest | None:
    return next((o for o in target.list_owned(ENV) if o["kind"] == kind and o["metadata"]["name"] == name), None)


def _merge(obj: Manifest, patch: Manifest) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(obj.get(key), dict):
            _merge(obj[key], value)
        else:
            obj[key] = value


def _hand_edit(target: Target, kind: str, name: str, patch: Manifest) -> None:
    """What `kubectl edit` does: a merge patch of the live object by another field manager, outside Git."""
    obj = _live(target, kind, name)
    assert obj is not None
    if isinstance(target, MemoryTarget):
        _merge(obj, patch)
        target.put(obj)  # a write by someone else: a new resourceVersion
        return
    url = getattr(target, "standin_url", None)
    if url is not None:
        from standins import kube_apiserver as standin  # type: ignore[import-not-found]

        group, version = obj["apiVersion"].split("/")
        answer = httpx.patch(
            f"{url}/apis/{group}/{version}/namespaces/{NS}/{kind.lower()}s/{name}",
            params={"fieldManager": "kubectl-edit"},
            content=json.dumps(patch),
            headers={"Authorization": f"Bearer {standin.ADMIN_TOKEN}", "Content-Type": "application/merge-patch+json"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        return
    # A real cluster (MLP_TEST_KUBECONFIG): apply the edited object.
    for key in ("status",):
        obj.pop(key, None)
    meta = obj["metadata"]
    for key in ("managedFields", "resourceVersion", "uid", "generation", "creationTimestamp"):
        meta.pop(key, None)
    _merge(obj, patch)
    target.apply(obj, force_conflicts=True)


def _storage_uri(obj: Manifest | None) -> str:
    assert obj is not None
    pred = obj["spec"]["predictor"]
    model = pred.get("model") or next(v for k, v in pred.items() if isinstance(v, dict) and "storageUri" in v)
    return str(model["storageUri"])


def _wait(pred: Callable[[], Any], timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if pred():
            return time.monotonic() - start
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def test_controller_end_to_end(target: Target, tmp_path: Path) -> None:
    repo: git.Repo = make_platform_repo(tmp_path / "platform")
    state = tmp_path / "state"
    store = StateStore(state)
    source = GitSource(str(repo.working_tree_dir), state / "git-cache")
    metrics = ControllerMetrics()
    reconciler = Reconciler(source, lambda env, spec: target, store, metrics=metrics)
    ctl = Controller(source, reconciler, interval=INTERVAL, poll=0.1, environments=[ENV], metrics=metrics)
    rec = Recorder(store, ENV)
    rec.start()
    loop = threading.Thread(target=ctl.run, daemon=True)
    loop.start()
    audit = AuditLog(state)

    def status() -> Any:
        return store.load(ENV)

    def steps() -> float:
        """Reconcile steps of the environment finished so far, whatever their outcome."""
        return sum(
            sample.value
            for family in metrics.registry.collect()
            if family.name == "mlp_controller_reconcile"
            for sample in family.samples
            if sample.name.endswith("_total") and sample.labels.get("environment") == ENV
        )

    try:
        # 1. First reconcile: everything created, Synced.
        _wait(lambda: (s := status()) is not None and s.sync_status == "Synced", HANG, "first sync")
        first = repo.head.commit.hexsha
        assert status().synced_revision == first
        assert "iris/2/" in _storage_uri(_live(target, "InferenceService", "iris"))  # the canary's artifact
        rec.catch_up()
        assert rec.seen and rec.since(0)[-1][0] == "Synced", rec.errors

        # 2. A new model version: picked up and applied within one interval.
        add_iris_version(repo, 3)
        edit(repo, "environments/staging.yaml", set_staging_iris(3))
        mark = len(rec.seen)
        v3 = commit_all(repo, "iris v3 to staging", author="Grace Hopper")
        before = steps()
        _wait(lambda: status().synced_revision == v3, HANG, "v3 applied")
        # not missed: applied by the next step that could see it (one step may be running and one
        # queued from before the commit); counted in steps, not seconds, so load cannot fail it
        assert steps() - before <= 3, f"{steps() - before:.0f} reconcile steps before the new commit was applied"
        assert "iris/3/" in _storage_uri(_live(target, "InferenceService", "iris"))
        st = status()
        assert [m.served_version for m in st.models if m.model == "iris"] == [3]
        assert st.sync_status == "Synced" and st.errors == []
        rec.catch_up()
        assert rec.since(mark) and rec.since(mark)[-1][0] == "Synced", (mark, rec.seen, rec.errors)

        # 3. An invalid spec: refused, Degraded with located errors, old state keeps serving.
        before = _live(target, "InferenceService", "iris")
        edit(repo, "environments/staging.yaml", set_staging_iris(42))
        mark = len(rec.seen)
        bad = commit_all(repo, "iris v42 (does not exist)", author="Mallory")
        _wait(lambda: status().refused_revision == bad, HANG, "refusal")
        st = status()
        assert st.health == "Degraded" and st.sync_status == "Unknown" and st.synced_revision == v3
        assert any(e.startswith("environments/staging.yaml:") and "42" in e for e in st.errors), st.errors
        assert [m.served_version for m in st.models if m.model == "iris"] == [3]
        after = _live(target, "InferenceService", "iris")
        assert after is not None and before is not None and after["spec"] == before["spec"]
        rec.catch_up()
        assert ("Unknown", "Degraded") in rec.since(mark), (mark, rec.seen)

        # 4. A revert commit heals it.
        mark = len(rec.seen)
        repo.git.revert("--no-edit", "HEAD")
        fixed = repo.head.commit.hexsha
        _wait(lambda: status().synced_revision == fixed, HANG, "revert synced")
        st = status()
        assert st.sync_status == "Synced" and st.health != "Degraded" and st.errors == []
        rec.catch_up()
        assert rec.since(mark)[-1][0] == "Synced" and all(h != "Degraded" for _, h in rec.since(mark)[1:])

        # 5. A hand edit is reverted by self-heal within one interval.
        mark = len(rec.seen)
        _hand_edit(target, "InferenceService", "iris", {"spec": {"predictor": {"minReplicas": 9}}})
        before = steps()
        _wait(
            lambda: _live(target, "InferenceService", "iris")["spec"]["predictor"].get("minReplicas") != 9,
            HANG,
            "self-heal",
        )
        assert steps() - before <= 3, f"{steps() - before:.0f} reconcile steps before the hand edit was reverted"
        _wait(lambda: any(e.action == "self-heal" for e in audit.events(env=ENV)), HANG, "self-heal audit")

        # 6. Without self-heal the hand edit stays and the environment reports OutOfSync.
        edit(repo, "environments/staging.yaml", lambda t: t.replace("selfHeal: true", "selfHeal: false"))
        no_heal = commit_all(repo, "staging: no self-heal")
        _wait(lambda: status().synced_revision == no_heal, HANG, "policy change synced")
        mark = len(rec.seen)
        _hand_edit(target, "InferenceService", "iris", {"spec": {"predictor": {"minReplicas": 9}}})
        _wait(lambda: status().sync_status == "OutOfSync", HANG, "OutOfSync")
        seen = steps()
        _wait(lambda: steps() >= seen + 2, HANG, "two more reconcile steps")  # and still not reverted:
        assert _live(target, "InferenceService", "iris")["spec"]["predictor"]["minReplicas"] == 9  # type: ignore
        st = status()
        iris = next(o for o in st.objects if o.ref.startswith("InferenceService/") and o.name == "iris")
        assert iris.sync_status == "OutOfSync" and iris.message.startswith("drift")
        rec.catch_up()
        assert ("OutOfSync", st.health) in rec.since(mark)
    finally:
        ctl.stop()
        loop.join(timeout=15)
        rec.halt.set()
    assert not loop.is_alive()

    events = audit.events(env=ENV)
    actions = [(e.action, (e.revision or "")[:12]) for e in events]
    assert actions[0] == ("apply", first[:12])
    assert ("apply", v3[:12]) in actions
    assert ("refused", bad[:12]) in actions
    assert ("recovered", fixed[:12]) in actions
    assert any(a == "self-heal" for a, _ in actions)
    assert ("drift", no_heal[:12]) in actions
    v3_event = next(e for e in events if e.revision == v3)
    assert v3_event.author.startswith("Grace") and "UPDATE InferenceService/ml-staging/iris" in v3_event.objects
    refused = next(e for e in events if e.action == "refused")
    assert refused.author.startswith("Mallory") and "environments/staging.yaml:" in refused.message
