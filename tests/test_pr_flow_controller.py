"""The whole loop in one process: a PR merged on the GitHub stand-in reconciles at once.

The receiver runs with the real `Controller.trigger` as its trigger and the controller's
SQLite audit log as its audit sink; the controller reconciles from a Git source into an
in-memory target with a one-hour interval, so only the webhook can make it act within
seconds.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from standins.github_api import GitHubStandIn, serve
from test_pr_flow import REPO, SECRET, TOKENS, WEDNESDAY, commit_all, edit, make_origin

from mlp.controller.controller import Controller
from mlp.controller.reconciler import Reconciler
from mlp.controller.store import AuditLog, StateStore
from mlp.sources.git import GitSource
from mlp.targets.base import ObjectRef
from mlp.testing import MemoryTarget
from mlp.webhooks.flow import ControllerAudit, PullRequestFlow
from mlp.webhooks.github import GitHubClient
from mlp.webhooks.prcheck import Workspace
from mlp.webhooks.receiver import ReceiverConfig, WebhookReceiver
from mlp.webhooks.store import DeliveryStore

pytestmark = pytest.mark.timeout(90)

STAGING_IRIS = (
    "iris:\n      version: 1\n      canary:\n        version: 2\n        steps: [10, 50, 100]\n"
    "        analysis: {metric: error-rate, max: 0.01, interval: 5m}"
)


class DictTarget(MemoryTarget):
    """The package's in-memory target (the cluster is not the point here) and one question about it."""

    def stable_version(self, namespace: str, name: str) -> str | None:
        """The stable model version an InferenceService declares (render's annotation)."""
        obj = self.get(ObjectRef("serving.kserve.io/v1beta1", "InferenceService", namespace, name))
        return str(obj["metadata"]["annotations"]["mlp.dev/stable-version"]) if obj is not None else None


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_merge_reconciles_staging_at_once(tmp_path: Path) -> None:
    origin = make_origin(tmp_path / "origin")
    state = tmp_path / "state"
    target = DictTarget()
    source = GitSource(str(tmp_path / "origin"), state / "git-cache")
    store = StateStore(state)
    reconciler = Reconciler(source, lambda env, spec: target, store, clock=lambda: WEDNESDAY)
    controller = Controller(source, reconciler, interval=3600, poll=0.1, environments=["staging", "prod"])
    loop = threading.Thread(target=controller.run, daemon=True)
    loop.start()
    standin = GitHubStandIn(TOKENS, webhook_secret=SECRET)
    standin.add_repo(REPO, tmp_path / "origin")
    try:
        wait_for(lambda: target.stable_version("ml-staging", "iris") is not None, 30, "the first sync of staging")
        assert target.stable_version("ml-staging", "iris") == "1"

        with serve(standin.app) as api:
            flow = PullRequestFlow(
                Workspace(Path(tmp_path / "origin").as_uri(), tmp_path / "cache"),
                {"github": GitHubClient("t-mlp", api)},
                trigger=controller.trigger,
                audit=ControllerAudit(str(state)),
                clock=lambda: WEDNESDAY,
            )
            rx = WebhookReceiver(ReceiverConfig(github_secret=SECRET), flow.handle, DeliveryStore())
            rx.start()
            with serve(rx.app) as url:
                standin.webhook_url = f"{url}/webhooks/github"
                origin.git.checkout("-b", "staging-iris-2")
                edit(tmp_path / "origin" / "environments" / "staging.yaml", STAGING_IRIS, "iris:\n      version: 2")
                head = commit_all(origin, "staging: iris v2 stable", when="2026-11-23T10:00:00+0000")
                origin.git.checkout("main")
                number = httpx.post(
                    f"{api}/repos/{REPO}/pulls",
                    headers={"Authorization": "Bearer t-dave"},
                    json={"title": "iris v2", "head": "staging-iris-2", "base": "main"},
                ).json()["number"]
                assert rx.drain(30)
                assert standin.latest_status(REPO, head, "mlp/governance")["state"] == "pending"  # type: ignore[index]
                httpx.post(
                    f"{api}/repos/{REPO}/pulls/{number}/reviews",
                    headers={"Authorization": "Bearer t-erin"},
                    json={"event": "APPROVE"},
                )
                assert rx.drain(30)
                assert standin.latest_status(REPO, head, "mlp/governance")["state"] == "success"  # type: ignore[index]

                merged_at = time.monotonic()
                merge_sha = httpx.put(
                    f"{api}/repos/{REPO}/pulls/{number}/merge", headers={"Authorization": "Bearer t-erin"}, json={}
                ).json()["sha"]
                wait_for(
                    lambda: target.stable_version("ml-staging", "iris") == "2",
                    20,
                    "staging to serve iris v2 after the merge",
                )
                assert time.monotonic() - merged_at < 20  # the interval is an hour: the webhook did it
                rx.stop()
        events = AuditLog(state).events(env="staging")
        merge = [e for e in events if e.action == "merge"]
        assert [(e.pr, e.approvers, e.merge_commit) for e in merge] == [
            (f"github:{REPO}#{number}", ["erin"], merge_sha)
        ]
        assert any(e.action == "apply" and e.revision == merge_sha for e in events)
    finally:
        controller.stop()
        loop.join(10)
