"""The local target: Target protocol over the embedded runtime, zero-downtime swaps, refusals, restart."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlp.serving.app import DataPlane
from mlp.serving.artifacts import sha256_file
from mlp.serving.runtime import Runtime
from mlp.serving.server import ServerThread
from mlp.serving.testing import client, deployment, route, train_iris
from mlp.targets.base import ObjectRef, Target, TargetError
from mlp.targets.local import LocalTarget

ROW = [6.8, 2.8, 4.8, 1.4]
BAD_DIGEST = "sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[Path, str]]:
    d = tmp_path_factory.mktemp("models")
    return {1: train_iris(d / "1", 1.0), 2: train_iris(d / "2", 0.01), 3: train_iris(d / "3", 100.0)}


@pytest.fixture
def target(tmp_path: Path) -> Iterator[LocalTarget]:
    rt = Runtime(tmp_path / "state", payload_log=False, drain_seconds=5)
    yield LocalTarget(rt)
    rt.close()


def test_protocol_apply_list_delete(target: LocalTarget, models: dict[int, tuple[Path, str]]) -> None:
    assert isinstance(target, Target)
    (p1, d1), (p2, d2) = models[1], models[2]
    obj = deployment("iris", [route(1, p1, d1)])
    assert target.apply(obj).action == "created"
    assert target.apply(obj).action == "unchanged"
    assert target.apply(obj, dry_run=True).action == "configured"
    live = target.list_owned("dev")
    assert [o["metadata"]["name"] for o in live] == ["iris"]
    assert live[0]["status"]["conditions"][0]["status"] == "True"
    assert target.list_owned("prod") == []
    assert target.list_owned("dev", kinds=[("serving.kserve.io/v1beta1", "InferenceService")]) == []
    relabeled = deployment("iris", [route(1, p1, d1)])
    relabeled["metadata"]["annotations"] = {"mlp.dev/revision": "abc123"}
    loaded = target.runtime.models["iris"].versions["1"].loaded
    assert target.apply(relabeled).action == "configured"  # metadata only: recorded, nothing reloaded
    assert target.list_owned("dev")[0]["metadata"]["annotations"] == {"mlp.dev/revision": "abc123"}
    assert target.runtime.models["iris"].versions["1"].loaded is loaded
    assert target.apply(relabeled).action == "unchanged"
    canary = deployment("iris", [route(1, p1, d1, "stable", 80), route(2, p2, d2, "canary", 20)])
    res = target.apply(canary)
    assert res.action == "configured"
    assert "v2 canary 20%" in res.live["status"]["conditions"][0]["message"]
    target.delete(ObjectRef.of(obj))
    assert target.list_owned("dev") == []
    target.delete(ObjectRef.of(obj))  # deleting a missing object is not an error


def test_plan_and_execute_converge_then_nothing_to_do(target: LocalTarget, models: dict[int, tuple[Path, str]]) -> None:
    from mlp.plan.core import Action, make_plan
    from mlp.plan.execute import execute

    (p1, d1) = models[1]
    desired = [deployment("iris", [route(1, p1, d1)]), deployment("iris-b", [route(1, p1, d1)])]
    plan = make_plan(desired, target.list_owned("dev"), environment="dev")
    assert [i.action for i in plan.changes] == [Action.CREATE, Action.CREATE]
    assert execute(plan, target).ok
    again = make_plan(desired, target.list_owned("dev"), environment="dev", prune=True)
    assert again.changes == []  # the live objects (with status) compare equal to what was rendered
    pruned = make_plan(desired[:1], target.list_owned("dev"), environment="dev", prune=True)
    assert [(i.action, i.ref.name) for i in pruned.changes] == [(Action.DELETE, "iris-b")]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda o: o.update(kind="InferenceService"), "ModelDeployment objects only"),
        (lambda o: o["metadata"]["labels"].clear(), "missing label"),
        (lambda o: o["spec"]["routes"][0].update(weight=90), "sum to 100"),
        (lambda o: o["spec"]["routes"][0].update(role="primary"), "role"),
        (lambda o: o["spec"].update(routes=[]), "stable"),
    ],
)
def test_malformed_objects_are_refused(
    target: LocalTarget, models: dict[int, tuple[Path, str]], mutate, message
) -> None:  # type: ignore[no-untyped-def]
    obj = deployment("iris", [route(1, *models[1])])
    mutate(obj)
    with pytest.raises(TargetError, match=message):
        target.apply(obj)


@pytest.mark.timeout(60)
def test_digest_mismatch_refuses_the_version_and_stable_keeps_serving(
    target: LocalTarget, models: dict[int, tuple[Path, str]]
) -> None:
    (p1, d1), (p2, _) = models[1], models[2]
    target.apply(deployment("iris", [route(1, p1, d1)]))
    with ServerThread(DataPlane(target.runtime)) as server, client(server.url) as c:
        for bad in (
            deployment("iris", [route(1, p1, d1, "stable", 90), route(2, p2, BAD_DIGEST, "canary", 10)]),
            deployment("iris", [route(2, p2, BAD_DIGEST)]),
        ):
            with pytest.raises(TargetError, match="sha256 mismatch"):
                target.apply(bad)
            seen = Counter()
            for _ in range(50):
                r = c.post("/v1/models/iris:predict", json={"instances": [ROW]})
                assert r.status_code == 200
                seen[r.headers["x-mlp-model-version"]] += 1
            assert seen == {"1": 50}
            status = target.list_owned("dev")[0]["status"]["conditions"][0]
            assert status["reason"] == "Refused" and "sha256 mismatch" in status["message"]
        # fixing the digest clears the refusal
        target.apply(deployment("iris", [route(1, p1, d1, "stable", 90), route(2, *models[2], "canary", 10)]))
        assert target.list_owned("dev")[0]["status"]["conditions"][0]["reason"] == "Serving"


class Load:
    """Threads hammering one model over HTTP; counts answers per version and every failure."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.stop = threading.Event()
        self.versions: Counter[str] = Counter()
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def run(self) -> None:
        with client(self.url) as c:
            while not self.stop.is_set():
                try:
                    r = c.post("/v1/models/iris:predict", json={"instances": [ROW]})
                    ok = r.status_code == 200 and "predictions" in r.json()
                    with self.lock:
                        if ok:
                            self.versions[r.headers["x-mlp-model-version"]] += 1
                        else:
                            self.failures.append(f"{r.status_code} {r.text}")
                except Exception as exc:
                    with self.lock:
                        self.failures.append(repr(exc))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)


@pytest.mark.timeout(120)
def test_version_swaps_under_load_fail_no_request(target: LocalTarget, models: dict[int, tuple[Path, str]]) -> None:
    (p1, d1), (p2, d2), (p3, d3) = models[1], models[2], models[3]
    steps = [
        [route(1, p1, d1)],
        [route(1, p1, d1, "stable", 50), route(2, p2, d2, "canary", 50)],
        [route(2, p2, d2)],
        [route(3, p3, d3, "stable", 70), route(1, p1, d1, "canary", 30)],
        [route(3, p3, d3)],
    ]
    target.apply(deployment("iris", steps[0]))
    events: list[str] = []
    target.runtime.on_event = events.append
    with ServerThread(DataPlane(target.runtime)) as server, Load(server.url) as load:
        time.sleep(0.3)
        for routes in steps[1:] * 2 + steps[:1]:
            target.apply(deployment("iris", routes))
            time.sleep(0.25)
        time.sleep(0.2)
    assert load.failures == []
    assert set(load.versions) == {"1", "2", "3"}
    assert sum(load.versions.values()) > 200
    t0 = time.monotonic()
    target.runtime.wait_drained()
    assert time.monotonic() - t0 < 2  # every in-flight count came back to zero (drain_seconds is 5)
    assert any("version 2 drained and unloaded" in e for e in events)
    assert set(target.runtime.models["iris"].versions) == {"1"}


@pytest.mark.timeout(60)
def test_restart_reloads_from_the_state_folder_and_cache(tmp_path: Path, models: dict[int, tuple[Path, str]]) -> None:
    src = tmp_path / "src.joblib"
    src.write_bytes(models[1][0].read_bytes())
    digest = sha256_file(src)
    state = tmp_path / "state"
    first = Runtime(state, payload_log=False)
    LocalTarget(first).apply(deployment("iris", [route(1, src, digest)], payload_rate=0.0))
    first.close()
    src.unlink()  # the restart needs neither the repository nor the artifact source
    second = Runtime(state, payload_log=False)
    assert second.restore() == []
    target = LocalTarget(second)
    assert [o["metadata"]["name"] for o in target.list_owned("dev")] == ["iris"]
    with ServerThread(DataPlane(second)) as server, client(server.url) as c:
        assert c.post("/v1/models/iris:predict", json={"instances": [ROW]}).json() == {"predictions": [1]}
    target.delete(ObjectRef("mlp.dev/v1", "ModelDeployment", "local", "iris"))
    assert Runtime(state, payload_log=False).restore() == [] and not list((state / "deployments").glob("*.json"))
    second.close()


def test_testing_helpers_use_the_real_ownership_labels() -> None:
    from mlp.serving import testing
    from mlp.targets import base

    assert (testing.MANAGED_BY, testing.MANAGED_BY_VALUE, testing.ENV_LABEL, testing.SPEC_LABEL) == (
        base.MANAGED_BY,
        base.MANAGED_BY_VALUE,
        base.ENV_LABEL,
        base.SPEC_LABEL,
    )


def test_a_signature_that_does_not_fit_the_artifact_is_refused(
    target: LocalTarget, models: dict[int, tuple[Path, str]]
) -> None:
    sig = {
        "inputs": [{"name": "a", "type": "float"}, {"name": "b", "type": "float"}],
        "outputs": [{"name": "species", "type": "int"}],
    }
    with pytest.raises(TargetError, match=r"declares 2 input features .* the artifact expects 4"):
        target.apply(deployment("iris", [route(1, *models[1])], signature=sig))
    assert target.list_owned("dev") == []
