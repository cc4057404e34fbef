"""Controller parts: store, queue, windows, reconciler policy and safety, metrics over HTTP, CLI.

The platform repository is a real Git repository in a temporary folder holding a copy of
the example repository; the Git source fetches it. The target here is `MemoryTarget`, a
small in-process store with the `Target` protocol's semantics, because these tests are
about the controller's decisions (the end-to-end test in test_controller_e2e.py uses the
API server stand-in over HTTP).
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import git
import pytest
from click.testing import CliRunner

from mlp.controller.controller import Controller
from mlp.controller.metrics import ControllerMetrics, serve_metrics
from mlp.controller.queue import WorkQueue
from mlp.controller.reconciler import Reconciler
from mlp.controller.store import AuditEvent, AuditLog, Intent, StateStore, request_sync
from mlp.controller.windows import sync_allowed
from mlp.sources.git import GitSource
from mlp.specs.models import SyncWindow
from mlp.targets.base import ENV_LABEL, ApplyResult, Manifest, ObjectRef
from mlp.testing import MemoryTarget

pytestmark = pytest.mark.timeout(120)

REPO_ROOT = Path(__file__).resolve().parents[1]


# --- helpers -------------------------------------------------------------------------------------


def commit_all(repo: git.Repo, message: str, author: str = "Ada Lovelace") -> str:
    repo.git.add("-A")
    actor = git.Actor(author, author.split()[0].lower() + "@example.com")
    return repo.index.commit(message, author=actor, committer=actor).hexsha


def make_platform_repo(dest: Path) -> git.Repo:
    """A Git repository holding a copy of the example platform repository (specs/, environments/, templates/)."""
    assert (REPO_ROOT / "environments").is_dir(), "the example platform repository (environments/) is missing"
    dest.mkdir(parents=True)
    for top in ("specs", "environments", "templates"):
        if (REPO_ROOT / top).is_dir():
            shutil.copytree(REPO_ROOT / top, dest / top)
    repo = git.Repo.init(dest, initial_branch="main")
    commit_all(repo, "initial platform")
    return repo


def edit(repo: git.Repo, rel: str, fn: Callable[[str], str]) -> None:
    path = Path(repo.working_tree_dir or ".") / rel
    before = path.read_text()
    after = fn(before)
    assert after != before, f"edit of {rel} changed nothing"
    path.write_text(after)


def set_staging_iris(version: int) -> Callable[[str], str]:
    """Rewrite staging's iris stable version (and drop its canary so any declared version is valid)."""

    def fn(text: str) -> str:
        text = re.sub(r"(\n    iris:\n      version: )\d+", rf"\g<1>{version}", text)
        return re.sub(r"\n      canary:\n(        .*\n)+", "\n", text)

    return fn


def add_iris_version(repo: git.Repo, version: int) -> None:
    """Append a version to specs/models/iris.yaml (a copy of version 1 at .../iris/<version>/...)."""
    models = Path(repo.working_tree_dir or ".") / "specs" / "models"
    path = next(p for p in models.iterdir() if "iris" in p.name)
    text = path.read_text()
    block = re.search(r"\n(  versions:\n)((?:    .*\n|\n)+)", text)
    assert block, "iris spec has no versions block"
    first = re.search(r"    - version: 1\n((?:      .*\n)+)", text)
    assert first
    entry = f"    - version: {version}\n" + first.group(1).replace("/1/", f"/{version}/")
    path.write_text(text[: block.end()] + entry + text[block.end() :])


@pytest.fixture()
def platform(tmp_path: Path) -> git.Repo:
    return make_platform_repo(tmp_path / "platform")


class Rig:
    def __init__(self, repo: git.Repo, state: Path, now: Callable[[], datetime] | None = None) -> None:
        self.repo = repo
        self.source = GitSource(str(repo.working_tree_dir), state / "git-cache")
        self.target = MemoryTarget()
        self.store = StateStore(state)
        self.metrics = ControllerMetrics()
        kwargs: dict[str, Any] = {"clock": now} if now else {}
        self.reconciler = Reconciler(
            self.source, lambda env, spec: self.target, self.store, metrics=self.metrics, **kwargs
        )

    def step(self, env: str, *reasons: str) -> Any:
        self.source.refresh(["main"])
        return self.reconciler.step(env, reasons=reasons or ("interval",))

    def audit(self, env: str | None = None) -> list[AuditEvent]:
        return self.store_audit().events(env=env)

    def store_audit(self) -> AuditLog:
        return AuditLog(self.store.state_dir)


@pytest.fixture()
def rig(platform: git.Repo, tmp_path: Path) -> Rig:
    return Rig(platform, tmp_path / "state")


def isvc_version(target: MemoryTarget, name: str) -> str:
    obj = target.named("InferenceService", name)
    assert obj is not None, f"no InferenceService {name}"
    return str(obj["spec"]["predictor"])


# --- store, queue, windows ---------------------------------------------------------------------------


def test_store_roundtrip_intents_and_sync_requests(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    from mlp.controller.store import EnvStatus, ModelStatus, ObjectStatus

    st = EnvStatus(
        "prod",
        "OutOfSync",
        "Progressing",
        revision="a" * 40,
        errors=["x.yaml:1:2: Model/a: bad"],
        objects=[
            ObjectStatus(
                "InferenceService/ml-prod/iris",
                "InferenceService",
                "ml-prod",
                "iris",
                "OutOfSync",
                "Progressing",
                "drift: spec.x",
            )
        ],
        models=[ModelStatus("iris", 2, {"2": 90, "3": 10})],
    )
    store.save(st)
    again = StateStore(tmp_path).load("prod")  # a second connection (another process) sees it
    assert again is not None and again.errors == st.errors and again.models[0].traffic == {"2": 90, "3": 10}
    assert again.objects[0].message == "drift: spec.x"

    store.begin_intent(Intent("prod", "b" * 40, "apply", ["CREATE X"], time.time(), 1))
    assert store.intent("prod") is not None
    store.finish_intent("prod", [AuditEvent("prod", "apply", "succeeded", revision="b" * 40, objects=["CREATE X"])])
    assert store.intent("prod") is None
    events = AuditLog(tmp_path).events(env="prod")
    assert [(e.action, e.objects) for e in events] == [("apply", ["CREATE X"])]

    request_sync(tmp_path, "prod", "manual")
    request_sync(tmp_path, "dev", "webhook")
    assert store.take_sync_requests() == [("prod", "manual"), ("dev", "webhook")]
    assert store.take_sync_requests() == []


def test_audit_append_api_for_webhooks(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    log.append(
        AuditEvent(
            "prod",
            "merge",
            "succeeded",
            revision="c" * 40,
            author="Ada",
            pr="42",
            approvers=["bob", "eve"],
            merge_commit="c" * 40,
            objects=["environments/prod.yaml"],
        )
    )
    log.append(AuditEvent("dev", "apply", "succeeded", time=time.time() - 7200))
    assert [e.pr for e in log.events(env="prod")] == ["42"]
    assert [e.environment for e in log.events(since=time.time() - 3600)] == ["prod"]
    assert len(log.events(limit=1)) == 1
    assert log.events(action="merge")[0].to_json()["approvers"] == ["bob", "eve"]


def test_queue_coalesces_and_serializes_per_environment() -> None:
    depths: list[int] = []
    q = WorkQueue(on_depth=depths.append)
    q.put("prod", "interval")
    q.put("prod", "webhook")
    q.put("dev", "manual")
    assert q.depth() == 2
    env, reasons = q.get(timeout=1) or ("", set())
    assert env == "prod" and reasons == {"interval", "webhook"}
    q.put("prod", "git")  # arrives while prod runs: waits, does not run twice at once
    env2, _ = q.get(timeout=1) or ("", set())
    assert env2 == "dev"
    assert q.get(timeout=0.05) is None  # prod is still running
    q.done("prod")
    env3, reasons3 = q.get(timeout=1) or ("", set())
    assert env3 == "prod" and reasons3 == {"git"}
    q.close()
    assert q.get(timeout=1) is None
    assert depths[-1] == 0


def test_sync_windows() -> None:
    fri_19 = datetime(2026, 11, 27, 19, 0, tzinfo=UTC)
    thu_12 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    deny = [SyncWindow(kind="deny", schedule="0 18 * * 5", duration="62h")]
    assert sync_allowed(deny, thu_12) == (True, "")
    ok, why = sync_allowed(deny, fri_19)
    assert not ok and "deny window" in why
    allow = [SyncWindow(kind="allow", schedule="0 9 * * 1-5", duration="8h")]
    assert sync_allowed(allow, thu_12)[0]
    assert not sync_allowed(allow, fri_19)[0]


# --- reconciler --------------------------------------------------------------------------------------


def test_step_applies_then_is_idempotent(rig: Rig) -> None:
    first = rig.step("staging")
    assert first.outcome == "applied", first.message
    assert rig.target.named("InferenceService", "iris") is not None
    writes = rig.target.writes
    again = rig.step("staging")
    assert again.outcome == "synced"
    assert rig.target.writes == writes  # level-triggered, nothing rewritten
    st = rig.store.load("staging")
    assert st is not None and st.sync_status == "Synced" and st.synced_revision == rig.repo.head.commit.hexsha
    assert {m.model for m in st.models} == {"iris", "breast-cancer"}
    iris = next(m for m in st.models if m.model == "iris")
    assert iris.served_version == 1 and iris.traffic == {"1": 90, "2": 10}
    assert all(o.sync_status == "Synced" for o in st.objects)
    [event] = rig.audit("staging")
    assert event.action == "apply" and event.outcome == "succeeded" and event.author.startswith("Ada")
    assert any("InferenceService/ml-staging/iris" in o for o in event.objects)


def test_invalid_commit_refused_last_known_good_and_revert(rig: Rig) -> None:
    rig.step("staging")
    good = rig.repo.head.commit.hexsha
    before = copy.deepcopy(rig.target.objects)
    edit(rig.repo, "environments/staging.yaml", set_staging_iris(99))  # no such version
    bad = commit_all(rig.repo, "deploy iris 99", author="Bob Builder")
    res = rig.step("staging")
    assert res.outcome == "refused"
    assert rig.target.objects == before  # nothing applied
    st = rig.store.load("staging")
    assert st is not None and st.health == "Degraded" and st.revision == bad and st.synced_revision == good
    assert st.errors and re.match(r"environments/staging\.yaml:\d+:\d+: ", st.errors[0]), st.errors
    assert "99" in " ".join(st.errors)
    assert [m.served_version for m in st.models if m.model == "iris"] == [1]  # old state keeps serving
    rig.step("staging")  # refused again, but logged once
    refused = [e for e in rig.audit("staging") if e.action == "refused"]
    assert len(refused) == 1 and refused[0].revision == bad and refused[0].author.startswith("Bob")

    rig.repo.git.revert("--no-edit", "HEAD")
    healed = rig.step("staging")
    assert healed.outcome == "synced"  # the revert restores what runs: nothing to write
    st = rig.store.load("staging")
    assert st is not None and st.health != "Degraded" and st.errors == [] and st.sync_status == "Synced"
    assert st.synced_revision == rig.repo.head.commit.hexsha != good
    assert [e.action for e in rig.audit("staging")] == ["apply", "refused", "recovered"]


def test_drift_self_heal_and_report_without_it(rig: Rig) -> None:
    rig.step("staging")
    iris = rig.target.named("InferenceService", "iris")
    assert iris is not None
    iris["spec"]["predictor"]["minReplicas"] = 7  # a hand edit
    rig.target.put(iris)
    res = rig.step("staging")
    assert res.outcome == "applied"
    assert rig.target.named("InferenceService", "iris")["spec"]["predictor"]["minReplicas"] != 7  # type: ignore[index]
    heal = rig.audit("staging")[-1]
    assert heal.action == "self-heal" and heal.objects == ["UPDATE InferenceService/ml-staging/iris"]

    edit(rig.repo, "environments/staging.yaml", lambda t: t.replace("selfHeal: true", "selfHeal: false"))
    commit_all(rig.repo, "no self-heal in staging")
    assert rig.step("staging").outcome == "synced"
    iris = rig.target.named("InferenceService", "iris")
    assert iris is not None
    iris["spec"]["predictor"]["minReplicas"] = 7
    rig.target.put(iris)
    res = rig.step("staging")
    assert res.outcome == "out_of_sync"
    assert rig.target.named("InferenceService", "iris")["spec"]["predictor"]["minReplicas"] == 7  # type: ignore[index]
    st = rig.store.load("staging")
    assert st is not None and st.sync_status == "OutOfSync"
    obj = next(o for o in st.objects if o.ref == "InferenceService/ml-staging/iris")
    assert obj.sync_status == "OutOfSync" and obj.message.startswith("drift:")
    assert "selfHeal is off" in st.message
    rig.step("staging")  # still drifted: reported, logged once
    drift = [e for e in rig.audit("staging") if e.action == "drift"]
    assert (
        len(drift) == 1
        and drift[0].outcome == "skipped"
        and drift[0].objects == ["UPDATE InferenceService/ml-staging/iris"]
    )
    # A manual sync reverts it even without self-heal.
    assert rig.step("staging", "manual").outcome == "applied"
    assert rig.store.load("staging").sync_status == "Synced"  # type: ignore[union-attr]


def test_prune_policy_and_never_prune_everything(rig: Rig) -> None:
    rig.step("staging")
    # Remove breast-cancer from staging: prune is on, so its InferenceService is deleted and audited.
    edit(rig.repo, "environments/staging.yaml", lambda t: re.sub(r"\n    breast-cancer:\n(      .*\n)+", "\n", t))
    commit_all(rig.repo, "retire breast-cancer from staging")
    res = rig.step("staging")
    assert res.outcome == "applied", res.message
    assert rig.target.named("InferenceService", "breast-cancer") is None
    prune = [e for e in rig.audit("staging") if e.action == "prune"]
    assert prune and prune[-1].objects == ["DELETE InferenceService/ml-staging/breast-cancer"]

    # A commit that empties the repository (a bad merge, a wrong branch) must never prune the environment.
    before = copy.deepcopy(rig.target.objects)
    root = Path(rig.repo.working_tree_dir or ".")
    shutil.rmtree(root / "specs")
    shutil.rmtree(root / "environments")
    empty = commit_all(rig.repo, "oops: everything deleted")
    res = rig.step("staging")
    assert res.outcome == "refused", res.message
    assert rig.target.objects == before
    st = rig.store.load("staging")
    assert st is not None and st.health == "Degraded" and st.revision == empty and st.errors


def test_automated_off_windows_and_manual(platform: git.Repo, tmp_path: Path) -> None:
    friday_evening = datetime(2026, 11, 27, 19, 0, tzinfo=UTC)
    rig = Rig(platform, tmp_path / "state", now=lambda: friday_evening)
    res = rig.step("prod")  # prod's deny window (Fri 18:00 + 62h) is open
    assert res.outcome == "out_of_sync" and "deny window" in res.message
    assert not rig.target.objects
    assert rig.step("prod", "manual").outcome == "applied"  # manual sync is not subject to windows

    edit(platform, "environments/staging.yaml", lambda t: t.replace("automated: true", "automated: false"))
    commit_all(platform, "manual staging")
    res = rig.step("staging")
    assert res.outcome == "out_of_sync" and "automated sync is off" in res.message
    assert rig.step("staging", "manual").outcome == "applied"


def test_target_failure_is_reported_and_retried(rig: Rig) -> None:
    rig.target.fail_on = "iris"
    res = rig.step("staging")
    assert res.outcome == "failed" and "admission webhook denied" in res.message
    st = rig.store.load("staging")
    assert st is not None and st.sync_status == "OutOfSync" and st.synced_revision is None
    failed = rig.audit("staging")[-1]
    assert failed.outcome == "failed" and "FAILED at InferenceService/ml-staging/iris" in failed.message
    assert "CREATE InferenceService/ml-staging/iris" not in failed.objects  # only what was written
    assert "CREATE ServiceAccount/ml-staging/mlp-models" in failed.objects
    rig.target.fail_on = None
    assert rig.step("staging").outcome == "applied"
    rig.target.down = True
    res = rig.step("staging")
    assert res.outcome == "failed"
    st = rig.store.load("staging")
    assert st is not None and st.sync_status == "Unknown" and st.health == "Unknown"


def test_interrupted_apply_is_resumed_and_logged_once(rig: Rig) -> None:
    rev = rig.source.refresh(["main"]).revisions["main"]
    # A previous run recorded its intent, wrote one object, and died. Its PID may be ours (PID 1 in a
    # container): runs are told apart by a run id, not the PID.
    rig.store.begin_intent(
        Intent("staging", rev, "apply", ["CREATE everything"], time.time(), pid=os.getpid(), run="a-previous-run")
    )
    res = rig.step("staging")
    assert res.outcome == "applied"
    assert rig.store.intent("staging") is None
    [event] = rig.audit("staging")
    assert event.action == "apply" and "resumed an apply" in event.message
    # Crash after every write but before the log: the next step logs it exactly once, writing nothing.
    rig2 = rig
    rig2.store.begin_intent(Intent("staging", rev, "apply", ["CREATE x"], time.time(), pid=999999))
    writes = rig2.target.writes
    assert rig2.step("staging").outcome == "synced"
    assert rig2.target.writes == writes
    events = rig2.audit("staging")
    assert len(events) == 2 and events[-1].objects == ["CREATE x"] and "verified on restart" in events[-1].message


def test_remote_down_keeps_last_revision(rig: Rig, tmp_path: Path) -> None:
    assert rig.step("staging").outcome == "applied"
    root = Path(rig.repo.working_tree_dir or ".")
    shutil.move(str(root), tmp_path / "away")
    res = rig.step("staging")
    assert res.outcome == "synced"
    st = rig.store.load("staging")
    assert st is not None and "using last fetched revision" in st.message and "failed" in st.message
    shutil.move(str(tmp_path / "away"), str(root))


# --- the controller loop, metrics, CLI ----------------------------------------------------------------


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "_created" not in text
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_controller_loop_triggers_and_metrics_over_http(rig: Rig) -> None:
    rig.reconciler.local_elsewhere = True  # as `mlp controller` builds it
    ctl = Controller(rig.source, rig.reconciler, interval=0.5, poll=0.1, metrics=rig.metrics)
    server, port = serve_metrics(rig.metrics, 0)
    thread = threading.Thread(target=ctl.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            statuses = rig.store.all(details=False)
            # dev has a local target: `mlp up` serves it, the controller records no step for it
            if {s.env for s in statuses} == {"staging", "prod"} and all(s.sync_status == "Synced" for s in statuses):
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"not synced: {[(s.env, s.message) for s in rig.store.all()]}")
        request_sync(rig.store.state_dir, "staging", "manual")  # what `mlp sync` does
        synced = 'mlp_controller_reconcile_total{environment="staging",outcome="synced"}'
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and synced not in (m := _scrape(port)):
            time.sleep(0.05)
        assert m['mlp_controller_reconcile_total{environment="staging",outcome="applied"}'] == 1
        assert m['mlp_controller_reconcile_total{environment="staging",outcome="synced"}'] >= 1
        assert m['mlp_controller_reconcile_duration_seconds_count{environment="staging"}'] >= 2
        assert m['mlp_controller_objects{environment="staging",health="Progressing",sync_status="Synced"}'] >= 2
        assert m["mlp_controller_git_fetch_duration_seconds_count"] >= 1
        assert m["mlp_controller_git_fetch_failures_total"] == 0
        assert "mlp_controller_queue_depth" in m
        assert abs(m['mlp_controller_last_successful_sync_timestamp_seconds{environment="prod"}'] - time.time()) < 60
        health = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read()
        assert health == b"ok\n"
    finally:
        ctl.stop()
        thread.join(timeout=10)
        server.shutdown()
    assert not thread.is_alive()


def test_status_and_audit_cli(rig: Rig) -> None:
    from mlp.cli.status import audit, status

    rig.step("staging")
    edit(rig.repo, "environments/staging.yaml", set_staging_iris(99))
    commit_all(rig.repo, "bad")
    rig.step("staging")
    state = str(rig.store.state_dir)
    runner = CliRunner()
    out = runner.invoke(status, ["--state-dir", state])
    assert out.exit_code == 1, out.output
    assert re.search(r"staging\s+Unknown\s+Degraded", out.output)
    out = runner.invoke(status, ["staging", "--state-dir", state])
    assert "ERRORS" in out.output and "environments/staging.yaml:" in out.output and "v1: 90%" in out.output
    out = runner.invoke(status, ["staging", "--state-dir", state, "--format", "json"])
    import json

    data = json.loads(out.output)
    assert data["health"] == "Degraded" and data["models"][0]["model"] == "breast-cancer"
    out = runner.invoke(audit, ["--state-dir", state, "--format", "json", "--env", "staging", "--since", "1h"])
    assert [e["action"] for e in json.loads(out.output)] == ["apply", "refused"]
    out = runner.invoke(audit, ["--state-dir", state])
    assert out.exit_code == 0 and "refused" in out.output and "Ada" in out.output
    out = runner.invoke(audit, ["--state-dir", state, "--since", "yesterday-ish"])
    assert out.exit_code == 2 and "neither a duration" in out.output
    out = runner.invoke(status, ["--state-dir", str(rig.store.state_dir / "nope")])
    assert out.exit_code == 2


def test_folder_source_and_watcher_drive_the_controller(tmp_path: Path) -> None:
    from mlp.sources.watch import FolderSource, Watcher

    folder = tmp_path / "platform"
    for top in ("specs", "environments", "templates"):
        if (REPO_ROOT / top).is_dir():
            shutil.copytree(REPO_ROOT / top, folder / top)
    source = FolderSource(folder)
    first = source.refresh(["main"])
    assert first.changed == ["main"] and source.refresh(["main"]).changed == []
    target = MemoryTarget()
    store = StateStore(tmp_path / "state")
    ctl = Controller(
        source, Reconciler(source, lambda e, s: target, store), interval=3600, poll=0.05, environments=["staging"]
    )
    fired = threading.Event()

    def changed() -> None:
        fired.set()
        ctl.trigger(None, "watch")

    watcher = Watcher(folder, changed, debounce=0.05).start()
    loop = threading.Thread(target=ctl.run, daemon=True)
    loop.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not ((s := store.load("staging")) and s.sync_status == "Synced"):
            time.sleep(0.05)
        (folder / "README.md").write_text("not watched")  # outside specs/: no trigger
        time.sleep(0.3)
        assert not fired.is_set()
        path = folder / "environments" / "staging.yaml"
        path.write_text(set_staging_iris(2)(path.read_text()))
        assert fired.wait(10), "the watcher did not fire"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            st = store.load("staging")
            if st and [m.served_version for m in st.models if m.model == "iris"] == [2]:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the edit was not applied")
        assert st.revision and st.revision.startswith("dir-")
    finally:
        watcher.stop()
        ctl.stop()
        loop.join(timeout=10)


def test_rollback_is_audited_as_rollback(rig: Rig) -> None:
    edit(rig.repo, "environments/staging.yaml", set_staging_iris(2))
    commit_all(rig.repo, "iris v2 stable")
    assert rig.step("staging").outcome == "applied"
    edit(rig.repo, "environments/staging.yaml", set_staging_iris(1))
    back = commit_all(rig.repo, "roll iris back to v1", author="Ops Person")
    assert rig.step("staging").outcome == "applied"
    last = rig.audit("staging")[-1]
    assert (last.action, last.revision, last.outcome) == ("rollback", back, "succeeded")
    assert last.author.startswith("Ops")


def test_environment_tracks_its_own_branch(rig: Rig) -> None:
    # main says: staging follows the `release` branch; the release branch holds another iris version.
    edit(
        rig.repo,
        "environments/staging.yaml",
        lambda t: t.replace("  tier: staging\n", "  tier: staging\n  branch: release\n"),
    )
    commit_all(rig.repo, "staging follows release")
    rig.repo.git.checkout("-b", "release")
    edit(rig.repo, "environments/staging.yaml", set_staging_iris(2))
    release = commit_all(rig.repo, "release: iris v2")
    rig.repo.git.checkout("main")
    ctl = Controller(rig.source, rig.reconciler, interval=3600)
    ctl.refresh()
    assert ctl.environments()["staging"] == "release"
    assert rig.reconciler.step("staging").outcome == "applied"
    st = rig.store.load("staging")
    assert st is not None and st.synced_revision == release
    assert [m.served_version for m in st.models if m.model == "iris"] == [2]
    assert rig.store.load("staging") is not None


def test_fetch_failures_are_counted(rig: Rig, tmp_path: Path) -> None:
    ctl = Controller(rig.source, rig.reconciler, interval=3600, metrics=rig.metrics)
    ctl.refresh()
    root = Path(rig.repo.working_tree_dir or ".")
    shutil.move(str(root), tmp_path / "away")
    try:
        ctl.refresh()
        ctl.refresh()
    finally:
        shutil.move(str(tmp_path / "away"), str(root))
    assert rig.metrics.registry.get_sample_value("mlp_controller_git_fetch_failures_total") == 2
    assert rig.metrics.registry.get_sample_value("mlp_controller_git_fetch_duration_seconds_count") == 3


def test_cli_usage_errors_and_help(tmp_path: Path) -> None:
    from mlp.cli.main import cli

    runner = CliRunner()
    for cmd in ("controller", "sync", "status", "audit"):
        out = runner.invoke(cli, [cmd, "--help"])
        assert out.exit_code == 0 and "Example" in out.output, cmd
    out = runner.invoke(cli, ["controller", "--state-dir", str(tmp_path / "s")])
    assert out.exit_code == 2 and "--repo" in out.output
    out = runner.invoke(cli, ["sync", "prod", "--state-dir", str(tmp_path / "none")])
    assert out.exit_code == 2 and "no controller state" in out.output
    out = runner.invoke(
        cli,
        [
            "controller",
            "--repo",
            str(tmp_path / "nothing"),
            "--state-dir",
            str(tmp_path / "s"),
            "--once",
            "--metrics-port",
            "-1",
        ],
    )
    # fail fast (exit 2, one line) instead of starting on a source that can never be fetched
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert "neither a Git URL nor a folder" in out.output


def test_queue_serves_manual_and_webhook_first() -> None:
    q = WorkQueue()
    q.put("dev", "interval")
    q.put("staging", "git")
    q.put("prod", "webhook")
    assert (q.get(timeout=1) or ("",))[0] == "prod"
    assert (q.get(timeout=1) or ("",))[0] == "dev"


def test_health_follows_inference_service_conditions(rig: Rig) -> None:
    rig.step("staging")
    st = rig.store.load("staging")
    assert st is not None and st.health == "Progressing"  # nothing has reported readiness yet
    for ref, obj in list(rig.target.objects.items()):  # what KServe and the kubelet report
        if obj["kind"] == "InferenceService":
            rig.target.set_status(
                ref, {"conditions": [{"type": "Ready", "status": "True"}, {"type": "PredictorReady", "status": "True"}]}
            )
        elif obj["kind"] == "Deployment":
            replicas = obj["spec"].get("replicas", 1)
            rig.target.set_status(
                ref,
                {
                    "observedGeneration": obj["metadata"]["generation"],
                    "replicas": replicas,
                    "updatedReplicas": replicas,
                    "availableReplicas": replicas,
                    "readyReplicas": replicas,
                },
            )
    assert rig.step("staging").outcome == "synced"
    st = rig.store.load("staging")
    assert st is not None and st.health == "Healthy", [(o.ref, o.health, o.message) for o in st.objects]
    iris = rig.target.named("InferenceService", "iris")
    assert iris is not None
    rig.target.set_status(
        ObjectRef.of(iris),
        {
            "conditions": [
                {
                    "type": "PredictorReady",
                    "status": "False",
                    "reason": "RevisionFailed",
                    "message": "image pull failed",
                },
                {"type": "Ready", "status": "False", "reason": "RevisionFailed", "message": "image pull failed"},
            ]
        },
    )
    rig.step("staging")
    st = rig.store.load("staging")
    assert st is not None and st.health == "Degraded" and st.sync_status == "Synced"
    obj = next(o for o in st.objects if o.ref == "InferenceService/ml-staging/iris")
    assert obj.health == "Degraded" and "image pull failed" in obj.message
    assert (
        rig.metrics.registry.get_sample_value(
            "mlp_controller_objects", {"environment": "staging", "sync_status": "Synced", "health": "Degraded"}
        )
        == 1
    )


def test_status_watch_redraws_until_interrupted(rig: Rig) -> None:
    import signal
    import subprocess
    import sys

    rig.step("staging")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlp.cli.main",
            "status",
            "--watch",
            "--every",
            "0.2",
            "--state-dir",
            str(rig.store.state_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
        # a shell without job control starts background jobs with SIGINT ignored, and Python keeps an
        # inherited SIG_IGN: give the child the disposition a terminal gives it, whatever runs pytest
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # interrupt once two frames are drawn (not after a fixed sleep: a slow start is not a failure)
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if sum("ENVIRONMENT" in x for x in lines) >= 2:
            break
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    out = "".join(lines) + out
    assert out.count("ENVIRONMENT") >= 2 and "staging" in out


def test_full_step_lock_serves_urgent_steps_first() -> None:
    from mlp.controller.reconciler import _PriorityLock

    lock = _PriorityLock()
    order: list[str] = []
    first = threading.Event()
    release = threading.Event()

    def run(name: str, urgent: bool) -> None:
        with lock.hold(urgent=urgent):
            order.append(name)
            if name == "holder":
                first.set()
                release.wait(5)

    holder = threading.Thread(target=run, args=("holder", False))
    holder.start()
    first.wait(5)
    background = threading.Thread(target=run, args=("interval", False))
    background.start()
    time.sleep(0.1)
    urgent = threading.Thread(target=run, args=("webhook", True))
    urgent.start()
    time.sleep(0.1)
    release.set()
    for t in (holder, background, urgent):
        t.join(5)
    assert order == ["holder", "webhook", "interval"]


def test_full_steps_run_one_environment_at_a_time(rig: Rig) -> None:
    """Rendering, planning and applying of different environments never overlap (their working sets
    would add up in the controller's memory high-water mark); each environment's idle check does."""
    spans: dict[str, list[float]] = {}
    lock = threading.Lock()

    class SlowTarget(MemoryTarget):
        def apply(self, obj: Manifest, *, dry_run: bool = False, force_conflicts: bool = False) -> ApplyResult:
            with lock:  # a full step's span: from its first write to its last
                spans.setdefault(obj["metadata"]["labels"][ENV_LABEL], [time.monotonic(), 0.0])
            time.sleep(0.02)
            result = super().apply(obj, dry_run=dry_run, force_conflicts=force_conflicts)
            with lock:
                spans[obj["metadata"]["labels"][ENV_LABEL]][1] = time.monotonic()
            return result

    forgotten: list[str] = []

    class ForgetfulTarget(SlowTarget):
        def forget(self, environment: str) -> None:
            forgotten.append(environment)

    rig.target = ForgetfulTarget()
    rig.source.refresh(["main"])
    envs = ["dev", "staging", "prod"]
    threads = [threading.Thread(target=rig.reconciler.step, args=(e,), kwargs={"reasons": ["interval"]}) for e in envs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(spans) == sorted(envs), "every environment rendered and applied"
    ordered = sorted(spans.values())
    for (_, end), (start, _) in zip(ordered, ordered[1:], strict=False):
        assert end <= start, f"full steps overlapped: {ordered}"
    assert sorted(forgotten) == sorted(envs), "the target is told to forget each environment after its step"


def test_environments_on_one_cluster_share_one_target_and_its_rate_limit(tmp_path: Path) -> None:
    """Environments step in parallel; each asks for its target at once. One cluster context is one
    target, so the client-side rate limit holds for the controller as a whole, not per environment."""
    from standins.kube_apiserver import write_kubeconfig

    from mlp.cli.controller import _make_targets
    from mlp.specs.models import Environment

    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:9")
    factory = _make_targets(str(kubeconfig), tmp_path, qps=7.0, burst=3)
    specs = {
        name: Environment.model_validate(
            {
                "apiVersion": "mlp.dev/v1",
                "kind": "Environment",
                "metadata": {"name": name},
                "spec": {"target": {"kind": "kubernetes", "namespace": name}},
            }
        )
        for name in ("dev", "staging", "prod")
    }
    got: list[Any] = []
    start = threading.Barrier(len(specs))

    def ask(name: str) -> None:
        start.wait(5)
        got.append(factory(name, specs[name]))

    threads = [threading.Thread(target=ask, args=(n,)) for n in specs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    # one client and one rate limit for the cluster; each environment lists only its own namespace
    assert len(got) == 3 and len({id(t.api) for t in got}) == 1 and len({id(t.cluster) for t in got}) == 1
    assert (got[0].bucket.qps, got[0].bucket.burst) == (7.0, 3)
    assert sorted(t.namespace for t in got) == ["dev", "prod", "staging"]
    assert factory("staging", specs["staging"]) is next(t for t in got if t.namespace == "staging")


def test_a_slow_cluster_does_not_hold_up_environments_on_another(rig: Rig) -> None:
    """Full steps are one at a time per target (cluster); an environment on another cluster goes on."""
    entered, release = threading.Event(), threading.Event()

    class StuckTarget(MemoryTarget):
        def apply(self, obj: Manifest, *, dry_run: bool = False, force_conflicts: bool = False) -> ApplyResult:
            entered.set()
            release.wait(30)
            return super().apply(obj, dry_run=dry_run, force_conflicts=force_conflicts)

    targets: dict[str, MemoryTarget] = {"staging": StuckTarget(), "prod": MemoryTarget()}
    rig.reconciler.targets = lambda env, spec: targets[env]
    rig.source.refresh(["main"])
    results: dict[str, Any] = {}

    def step(env: str) -> None:
        results[env] = rig.reconciler.step(env, reasons=["interval"])

    stuck = threading.Thread(target=step, args=("staging",))
    stuck.start()
    try:
        assert entered.wait(30), "staging never started applying"
        other = threading.Thread(target=step, args=("prod",))
        other.start()
        other.join(30)
        assert not other.is_alive(), "prod waited for staging's cluster"
        assert results["prod"].outcome == "applied" and targets["prod"].objects
        assert "staging" not in results
    finally:
        release.set()
        stuck.join(30)
    assert results["staging"].outcome == "applied"
