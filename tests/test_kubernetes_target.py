"""The kubernetes target over real HTTP.

Without configuration every test runs against the API server stand-in
(tests/standins/kube_apiserver.py), started fresh per test on a free port of 127.0.0.1 and
reached through a real kubeconfig file. With `MLP_TEST_KUBECONFIG` (and optionally
`MLP_TEST_KUBE_CONTEXT`) pointing at a real cluster (kind, k3d) with the KServe CRDs installed,
the same tests run against it unchanged, each in a namespace of its own that is deleted
afterwards; the few that need the stand-in's knobs (RBAC users, injected 429s, a cluster
without KServe, an admission webhook) skip there.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from standins.kube_apiserver import KubeApiServer, Resource, write_kubeconfig

from mlp.targets.base import ENV_LABEL, MANAGED_BY, REVISION_ANNOTATION, SPEC_LABEL, ObjectRef, Target, TargetError
from mlp.targets.kubernetes import KubernetesTarget, TokenBucket

pytestmark = pytest.mark.timeout(60)

REAL = os.environ.get("MLP_TEST_KUBECONFIG")
REAL_CONTEXT = os.environ.get("MLP_TEST_KUBE_CONTEXT")
ISVC_V = "serving.kserve.io/v1beta1"


@dataclass
class Cluster:
    """A kubeconfig + namespace to test in, and the stand-in behind it (None on a real cluster)."""

    kubeconfig: Path
    namespace: str
    api: KubeApiServer | None
    context: str | None = None
    targets: list[KubernetesTarget] = field(default_factory=list)

    def target(self, **kw: Any) -> KubernetesTarget:
        kw.setdefault("namespace", self.namespace)
        t = KubernetesTarget.from_kubeconfig(self.kubeconfig, self.context, **kw)
        self.targets.append(t)
        return t

    def standin(self, why: str) -> KubeApiServer:
        if self.api is None:
            pytest.skip(f"needs the stand-in: {why}")
        return self.api

    def collect_garbage(self) -> None:
        """The stand-in has no garbage collector running; a real cluster has one."""
        if self.api is not None:
            self.api.collect_garbage()

    def wait_gone(self, target: KubernetesTarget, ref: ObjectRef, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.collect_garbage()
            if target.get(ref) is None:
                return
            time.sleep(0.1)
        pytest.fail(f"{ref} still there after {timeout}s")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    if REAL:
        ns = f"mlp-test-{uuid.uuid4().hex[:8]}"
        c = Cluster(Path(REAL), ns, None, REAL_CONTEXT)
        admin = c.target(namespace=None)
        admin.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        try:
            yield c
        finally:
            admin.delete(ObjectRef("v1", "Namespace", "", ns))
        return
    with KubeApiServer(namespaces=("default", "ml-staging")) as api:
        yield Cluster(write_kubeconfig(tmp_path / "kubeconfig", api.url), "ml-staging", api)


def isvc(name: str, ns: str, *, env: str = "staging", min_replicas: int = 1, **predictor: Any) -> dict[str, Any]:
    pred: dict[str, Any] = {
        "minReplicas": min_replicas,
        "maxReplicas": 3,
        "serviceAccountName": "mlp-models",
        "sklearn": {"storageUri": f"s3://models/{name}/1"},
    }
    pred.update(predictor)
    return {
        "apiVersion": ISVC_V,
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {MANAGED_BY: "mlp", ENV_LABEL: env, SPEC_LABEL: f"Model.{name}"},
            "annotations": {REVISION_ANNOTATION: "abc123"},
        },
        "spec": {"predictor": pred},
    }


def configmap(
    name: str, ns: str, *, env: str = "staging", data: dict[str, str] | None = None, owned: bool = True
) -> dict[str, Any]:
    labels = {MANAGED_BY: "mlp", ENV_LABEL: env, SPEC_LABEL: f"Monitor.{name}"} if owned else {"app": name}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "data": data or {"threshold": "0.2"},
    }


def service_account(ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": "mlp-models",
            "namespace": ns,
            "labels": {MANAGED_BY: "mlp", ENV_LABEL: "staging", SPEC_LABEL: "Environment.staging"},
            "annotations": {"mlp.dev/storage-secret": "models-s3"},
        },
    }


def ref_of(obj: dict[str, Any]) -> ObjectRef:
    return ObjectRef.of(obj)


def hand_edit(target: KubernetesTarget, ref: ObjectRef, patch: dict[str, Any], manager: str) -> None:
    """What `kubectl edit` does: a merge patch under another field manager (operation Update)."""
    info = target.resource_for(ref.api_version, ref.kind)
    resp = target.api.call_api(
        info.item(ref.namespace, ref.name),
        "PATCH",
        query_params=[("fieldManager", manager)],
        header_params={"Content-Type": "application/merge-patch+json", "Accept": "application/json"},
        body=patch,
        auth_settings=["BearerToken"],
        _preload_content=False,
    )
    assert resp.status == 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- apply --------------------------------------------------------------------------------


def test_is_a_target(cluster: Cluster) -> None:
    assert isinstance(cluster.target(), Target)


def test_apply_creates_then_noop_apply_keeps_resource_version(cluster: Cluster) -> None:
    t = cluster.target()
    for obj in (
        service_account(cluster.namespace),
        configmap("drift-iris", cluster.namespace),
        isvc("iris", cluster.namespace),
    ):
        first = t.apply(obj)
        assert first.action == "created", obj["kind"]
        assert first.live["metadata"]["uid"]
        assert [m["manager"] for m in first.live["metadata"]["managedFields"]] == ["mlp"]
    assert t.calls["patch"] == 3

    cm = configmap("drift-iris", cluster.namespace)
    rv = t.get(ref_of(cm))["metadata"]["resourceVersion"]  # type: ignore[index]
    again = t.apply(cm)
    assert again.action == "unchanged"
    assert again.live["metadata"]["resourceVersion"] == rv  # nothing was written
    if cluster.api is not None:  # on a real cluster KServe's controller may write status in between
        model = isvc("iris", cluster.namespace)
        rv = t.get(ref_of(model))["metadata"]["resourceVersion"]  # type: ignore[index]
        assert t.apply(model).live["metadata"]["resourceVersion"] == rv
        assert t.apply(model).action == "unchanged"


def test_forget_drops_what_an_environment_step_remembered(cluster: Cluster) -> None:
    """A long-running controller calls `forget(env)` after each step: the target keeps nothing of
    that environment's objects between steps, and a later list remembers them again."""
    t = cluster.target()
    cm = configmap("remembered", cluster.namespace)
    other = configmap("other-env", cluster.namespace, env="prod")
    t.apply(cm)
    t.apply(other)
    assert t.apply(cm).action == "unchanged"
    t.forget("staging")
    assert t.apply(cm).action == "configured"  # nothing known of staging: it cannot tell
    assert t.apply(other).action == "unchanged"  # another environment's memory is kept
    assert [o["metadata"]["name"] for o in t.list_owned("staging", [("v1", "ConfigMap")])] == ["remembered"]
    assert t.apply(cm).action == "unchanged"


def test_owned_versions_match_the_full_list_across_pages(cluster: Cluster) -> None:
    t = cluster.target(page_size=2)
    for i in range(5):
        t.apply(configmap(f"cm-{i}", cluster.namespace))
    t.apply(configmap("not-owned", cluster.namespace, owned=False))
    t.apply(isvc("iris", cluster.namespace))
    listed = t.list_owned("staging")
    versions = t.owned_versions("staging")
    assert versions == {ref_of(o): o["metadata"]["resourceVersion"] for o in listed}
    assert len(versions) == 6 and all(versions.values())
    assert t.calls["list"] >= 2 * 3  # paged: 5 config maps at 2 a page, twice


def test_apply_without_namespace_uses_the_target_namespace(cluster: Cluster) -> None:
    t = cluster.target()
    obj = configmap("no-ns", cluster.namespace)
    del obj["metadata"]["namespace"]
    res = t.apply(obj)
    assert res.ref.namespace == cluster.namespace
    assert res.live["metadata"]["namespace"] == cluster.namespace


def test_apply_removes_what_mlp_stopped_declaring(cluster: Cluster) -> None:
    t = cluster.target()
    cm = configmap("cfg", cluster.namespace, data={"a": "1", "b": "2"})
    cm["metadata"]["annotations"] = {"mlp.dev/old": "x"}
    t.apply(cm)
    cm = configmap("cfg", cluster.namespace, data={"a": "1"})
    res = t.apply(cm)
    assert res.action == "configured"
    assert res.live["data"] == {"a": "1"}
    assert "mlp.dev/old" not in (res.live["metadata"].get("annotations") or {})


def test_hand_edit_conflicts_then_force_takes_the_field_back(cluster: Cluster) -> None:
    t = cluster.target()
    desired = isvc("iris", cluster.namespace, min_replicas=1)
    t.apply(desired)
    ref = ref_of(desired)
    hand_edit(t, ref, {"spec": {"predictor": {"minReplicas": 3}}}, manager="kubectl-edit")
    assert t.get(ref)["spec"]["predictor"]["minReplicas"] == 3  # type: ignore[index]

    with pytest.raises(TargetError) as err:
        t.apply(desired)
    msg = str(err.value)
    assert err.value.status == 409
    assert msg == (
        f"conflict applying InferenceService/{cluster.namespace}/iris: .spec.predictor.minReplicas is owned by "
        f'"kubectl-edit" using {ISVC_V} (another field manager changed them; rerun with --force-conflicts '
        "to take them over)"
    )

    res = t.apply(desired, force_conflicts=True)
    assert res.action == "configured"
    assert res.live["spec"]["predictor"]["minReplicas"] == 1
    managers = {m["manager"]: m for m in res.live["metadata"]["managedFields"]}
    assert "kubectl-edit" not in managers  # it owned nothing else, so its entry is gone
    assert "f:minReplicas" in managers["mlp"]["fieldsV1"]["f:spec"]["f:predictor"]


def test_hand_edit_of_a_field_mlp_does_not_set_is_left_alone(cluster: Cluster) -> None:
    t = cluster.target()
    desired = isvc("iris", cluster.namespace)
    t.apply(desired)
    hand_edit(t, ref_of(desired), {"metadata": {"labels": {"team": "growth"}}}, manager="kubectl-label")
    res = t.apply(desired)
    assert res.live["metadata"]["labels"]["team"] == "growth"


def test_dry_run_persists_nothing(cluster: Cluster) -> None:
    t = cluster.target()
    obj = isvc("iris", cluster.namespace)
    res = t.apply(obj, dry_run=True)
    assert res.action == "created"
    assert t.get(ref_of(obj)) is None
    assert t.write_calls == 0 and t.calls["patch:dry-run"] == 1

    t.apply(obj)
    rv = t.get(ref_of(obj))["metadata"]["resourceVersion"]  # type: ignore[index]
    assert t.apply(obj, dry_run=True).action == "unchanged"
    changed = isvc("iris", cluster.namespace, min_replicas=2)
    res = t.apply(changed, dry_run=True)
    assert res.action == "configured"
    assert res.live["spec"]["predictor"]["minReplicas"] == 2
    live = t.get(ref_of(obj))
    assert live is not None
    assert live["spec"]["predictor"]["minReplicas"] == 1
    assert live["metadata"]["resourceVersion"] == rv


def test_schema_error_500_is_reported_at_once_not_retried(cluster: Cluster) -> None:
    t = cluster.target(max_retries=5, sleep=lambda s: None)
    bad = isvc("typo", cluster.namespace)
    bad["spec"]["predictor"]["sklearn"] = {"storageUrl": "s3://models/typo/1"}
    with pytest.raises(TargetError) as err:
        t.apply(bad)
    assert err.value.status == 500
    assert str(err.value) == (
        f"InferenceService/{cluster.namespace}/typo rejected by the API server: "
        ".spec.predictor.sklearn.storageUrl: field not declared in schema"
    )
    assert t.calls["patch"] == 1 and not t.retries


def test_resource_version_precondition_is_a_stale_conflict(cluster: Cluster) -> None:
    t = cluster.target()
    cm = configmap("cfg", cluster.namespace)
    created = t.apply(cm).live
    t.apply(configmap("cfg", cluster.namespace, data={"threshold": "0.3"}))
    stale = configmap("cfg", cluster.namespace, data={"threshold": "0.4"})
    stale["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"]
    with pytest.raises(TargetError) as err:
        t.apply(stale)
    assert err.value.status == 409
    assert "stale resourceVersion" in str(err.value)


# ---- list ---------------------------------------------------------------------------------


def test_list_owned_returns_only_this_environments_owned_objects(cluster: Cluster) -> None:
    t = cluster.target()
    ns = cluster.namespace
    for obj in (
        isvc("iris", ns),
        isvc("churn", ns, env="prod"),
        configmap("drift-iris", ns),
        configmap("someone-elses", ns, owned=False),
        service_account(ns),
    ):
        t.apply(obj)
    unowned = isvc("hand-made", ns)
    unowned["metadata"]["labels"] = {"app": "hand-made"}
    t.apply(unowned)

    fresh = cluster.target()
    owned = fresh.list_owned("staging")
    names = sorted((o["kind"], o["metadata"]["name"]) for o in owned)
    assert names == [("ConfigMap", "drift-iris"), ("InferenceService", "iris"), ("ServiceAccount", "mlp-models")]
    assert all(o["apiVersion"] for o in owned)
    assert set(fresh.calls) == {"list"}  # reading live state is list calls only
    assert fresh.write_calls == 0
    assert [o["metadata"]["name"] for o in fresh.list_owned("prod")] == ["churn"]


def test_list_owned_follows_continue_tokens(cluster: Cluster) -> None:
    t = cluster.target()
    for i in range(5):
        t.apply(isvc(f"model-{i}", cluster.namespace))
    paged = cluster.target(page_size=2)
    owned = paged.list_owned("staging", [(ISVC_V, "InferenceService")])
    assert sorted(o["metadata"]["name"] for o in owned) == [f"model-{i}" for i in range(5)]
    assert paged.calls["list"] == 3


def test_list_owned_skips_kinds_whose_crd_is_missing(cluster: Cluster) -> None:
    api = cluster.standin("a cluster without the Prometheus Operator CRDs")
    assert api.resource("monitoring.coreos.com", "v1", "prometheusrules") is None
    t = cluster.target()
    t.apply(configmap("drift-iris", cluster.namespace))
    owned = t.list_owned("staging")
    assert [o["metadata"]["name"] for o in owned] == ["drift-iris"]


def test_apply_after_noop_reconcile_counts(cluster: Cluster) -> None:
    """The reconcile loop's read side: list_owned makes list calls and nothing else."""
    t = cluster.target()
    t.apply(isvc("iris", cluster.namespace))
    reader = cluster.target()
    reader.list_owned("staging")
    assert reader.write_calls == 0 and set(reader.calls) == {"list"}


# ---- delete -------------------------------------------------------------------------------


def test_delete_is_foreground_and_missing_is_fine(cluster: Cluster) -> None:
    t = cluster.target()
    obj = isvc("iris", cluster.namespace)
    t.apply(obj)
    ref = ref_of(obj)

    t.delete(ref, dry_run=True)
    assert t.get(ref) is not None and t.write_calls == 1  # the apply only

    t.delete(ref)
    live = t.get(ref)
    if cluster.api is not None:
        # no garbage collector has run yet: the object waits with the foreground finalizer
        assert live is not None
        assert live["metadata"]["finalizers"] == ["foregroundDeletion"]
        assert live["metadata"]["deletionTimestamp"]
    cluster.wait_gone(t, ref)
    t.delete(ref)  # already gone: not an error
    assert "iris" not in [o["metadata"]["name"] for o in t.list_owned("staging")]


# ---- errors -------------------------------------------------------------------------------


def test_unreachable_cluster_is_one_line_and_quick(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    slept: list[float] = []
    t = KubernetesTarget.from_kubeconfig(
        write_kubeconfig(tmp_path / "dead", url), namespace="ml-staging", connect_retries=2, sleep=slept.append
    )
    with pytest.raises(TargetError) as err:
        t.list_owned("staging")
    assert str(err.value) == f"cannot reach the Kubernetes API server at {url}: connection refused"
    # quick: three tries, two short waits, not the whole retry budget
    assert t.calls["list"] == 3 and len(slept) == 2 and sum(slept) < 1.0


def test_bad_token_is_401(cluster: Cluster, tmp_path: Path) -> None:
    cfg = yaml.safe_load(cluster.kubeconfig.read_text())
    ctx_name = cluster.context or cfg["current-context"]
    ctx = next(c for c in cfg["contexts"] if c["name"] == ctx_name)["context"]
    for u in cfg["users"]:
        if u["name"] == ctx["user"]:
            u["user"] = {"token": "0" * 32}
    bad = tmp_path / "bad-token"
    bad.write_text(yaml.safe_dump(cfg))
    t = KubernetesTarget.from_kubeconfig(bad, cluster.context, namespace=cluster.namespace)
    with pytest.raises(TargetError) as err:
        t.list_owned("staging")
    assert err.value.status == 401
    assert str(err.value) == (
        f"the API server at {t.server} rejected the credentials (401 Unauthorized): check the kubeconfig user or token"
    )


def test_forbidden_names_user_verb_resource_namespace(cluster: Cluster) -> None:
    t = cluster.target(impersonate="nobody")
    with pytest.raises(TargetError) as err:
        t.list_owned("staging", [(ISVC_V, "InferenceService")])
    assert err.value.status == 403
    assert str(err.value) == (
        f'forbidden by RBAC: user "nobody" cannot list inferenceservices.serving.kserve.io '
        f'in namespace "{cluster.namespace}"'
    )
    with pytest.raises(TargetError) as err:
        t.apply(configmap("cfg", cluster.namespace))
    assert str(err.value) == (
        f'forbidden by RBAC: user "nobody" cannot patch configmaps in namespace "{cluster.namespace}"'
    )


def test_partial_rbac_grants(cluster: Cluster, tmp_path: Path) -> None:
    api = cluster.standin("creates users with chosen RBAC grants")
    api.add_user("reader-token", "reader")
    api.grant("reader", ["get", "list", "watch"], "*", ["*"], namespace=cluster.namespace)
    t = KubernetesTarget.from_kubeconfig(
        write_kubeconfig(tmp_path / "reader", api.url, token="reader-token"), namespace=cluster.namespace
    )
    assert t.list_owned("staging") == []
    with pytest.raises(TargetError, match=r'user "reader" cannot patch inferenceservices.serving.kserve.io'):
        t.apply(isvc("iris", cluster.namespace))


def test_crd_missing_says_kserve_is_not_installed(tmp_path: Path) -> None:
    if REAL:
        pytest.skip("needs a cluster without KServe: the stand-in without its CRD")
    with KubeApiServer(kserve=False) as api:
        t = KubernetesTarget.from_kubeconfig(write_kubeconfig(tmp_path / "k", api.url), namespace="ml-staging")
        with pytest.raises(TargetError) as err:
            t.apply(isvc("iris", "ml-staging"))
        assert str(err.value) == "KServe is not installed: serving.kserve.io/v1beta1 InferenceService not found"
        assert t.list_owned("staging") == []  # nothing of a missing kind can be owned


def test_unknown_kind_is_discovered_or_reported(cluster: Cluster) -> None:
    t = cluster.target(discovery_retry_delay=0.05)
    widget = {
        "apiVersion": "widgets.mlp-test.dev/v1",
        "kind": "Widget",
        "metadata": {"name": "w", "namespace": cluster.namespace},
        "spec": {},
    }
    with pytest.raises(TargetError) as err:
        t.apply(widget)
    assert str(err.value) == (
        f"widgets.mlp-test.dev/v1 Widget is not served by the API server at {t.server} (is its CRD installed?)"
    )
    if cluster.api is None:
        return
    assert t.calls["discovery"] == 2  # asked twice: discovery can lag just after a CRD is installed
    cluster.api.install(Resource("widgets.mlp-test.dev", "v1", "widgets", "Widget", custom=True))
    cluster.api.lag_discovery("widgets.mlp-test.dev/v1")
    res = t.apply(widget)
    assert res.action == "created"
    assert t.resource_for("widgets.mlp-test.dev/v1", "Widget").plural == "widgets"
    assert t.calls["discovery"] == 4  # a 404 while discovery lagged, then the answer; cached since


def test_model_deployment_is_refused(cluster: Cluster) -> None:
    t = cluster.target()
    with pytest.raises(TargetError, match="local target"):
        t.apply({"apiVersion": "mlp.dev/v1", "kind": "ModelDeployment", "metadata": {"name": "iris"}})
    assert not t.calls


def test_namespace_missing(cluster: Cluster) -> None:
    t = cluster.target()
    ns = f"does-not-exist-{uuid.uuid4().hex[:6]}"
    with pytest.raises(TargetError) as err:
        t.apply(isvc("iris", ns))
    assert str(err.value) == (
        f'namespace "{ns}" does not exist: create it (or declare it) before applying InferenceService/{ns}/iris'
    )


def test_admission_webhook_rejection_shows_the_message(cluster: Cluster) -> None:
    api = cluster.standin("installs a rejecting admission webhook")
    api.reject_with_webhook(
        "InferenceService",
        "inferenceservice.kserve-webhook-server.validator",
        'the InferenceService "iris" is invalid: exactly one predictor must be specified',
    )
    t = cluster.target()
    with pytest.raises(TargetError) as err:
        t.apply(isvc("iris", cluster.namespace))
    assert str(err.value) == (
        f"InferenceService/{cluster.namespace}/iris rejected by admission webhook "
        '"inferenceservice.kserve-webhook-server.validator": the InferenceService "iris" is invalid: '
        "exactly one predictor must be specified"
    )


def test_kubeconfig_problems_are_one_line(tmp_path: Path, cluster: Cluster) -> None:
    with pytest.raises(TargetError, match=r"^kubeconfig .*missing"):
        KubernetesTarget.from_kubeconfig(tmp_path / "missing")
    with pytest.raises(TargetError, match=r"^kubeconfig .*no-such-context"):
        KubernetesTarget.from_kubeconfig(cluster.kubeconfig, "no-such-context")


def test_in_cluster_config_outside_a_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(TargetError, match=r"^in-cluster config: "):
        KubernetesTarget.in_cluster()


# ---- rate limiting and retries ------------------------------------------------------------


def test_429_and_503_are_retried_with_backoff_and_retry_after(cluster: Cluster) -> None:
    api = cluster.standin("injects 429 / 503 answers")
    slept: list[float] = []
    t = cluster.target(sleep=slept.append, backoff_base=0.2)
    api.inject_fault(429, headers={"Retry-After": "2"}, methods=["PATCH"])
    api.inject_fault(503, methods=["PATCH"])
    res = t.apply(configmap("cfg", cluster.namespace))
    assert res.action == "created"
    assert t.calls["patch"] == 3
    assert t.retries == {429: 1, 503: 1}
    assert slept[0] == 2.0  # Retry-After honoured
    assert 0.4 <= slept[1] <= 0.6  # 0.2 * 2**1 plus up to 0.2 s of jitter (mlp.retry)


def test_retries_give_up_with_a_clear_error(cluster: Cluster) -> None:
    api = cluster.standin("injects 429 answers")
    t = cluster.target(sleep=lambda s: None, max_retries=3)
    api.inject_fault(429, times=10)
    with pytest.raises(TargetError) as err:
        t.list_owned("staging")
    assert err.value.status == 429
    assert "throttling" in str(err.value) and "3 retries" in str(err.value)
    assert t.calls["list"] == 4


def test_internal_error_500_is_retried(cluster: Cluster) -> None:
    api = cluster.standin("injects a 500 InternalError")
    t = cluster.target(sleep=lambda s: None)
    api.inject_fault(500, methods=["GET"])
    assert t.list_owned("staging", [(ISVC_V, "InferenceService")]) == []
    assert t.retries == {500: 1}


def test_token_bucket_holds_qps_after_the_burst() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    bucket = TokenBucket(qps=10, burst=3, clock=lambda: now[0], sleep=sleep)
    for _ in range(8):
        bucket.acquire()
    assert slept[:0] == [] and len(slept) == 5  # the first 3 go at once
    assert sum(slept) == pytest.approx(0.5)  # then 10 per second
    assert bucket.waited == pytest.approx(0.5)


def test_target_is_rate_limited_over_http(cluster: Cluster) -> None:
    cluster.standin("timing is only meaningful against the local stand-in")
    t = cluster.target(qps=20, burst=1)
    started = time.monotonic()
    for _ in range(6):
        t.get(ObjectRef("v1", "ConfigMap", cluster.namespace, "absent"))
    assert time.monotonic() - started >= 0.2  # 5 waits of 1/20 s


def test_server_fairness_lifts_the_client_limit_once_the_server_shows_it(cluster: Cluster) -> None:
    absent = ObjectRef("v1", "ConfigMap", cluster.namespace, "absent")
    lifted = cluster.target(qps=5, burst=1, server_fairness=True)
    kept = cluster.target(qps=5, burst=1)  # limits the user chose: never lifted
    for t in (lifted, kept):
        for _ in range(3):
            t.get(absent)
    assert lifted.bucket.lifted and lifted.bucket.waited == 0  # only the first call took a token
    assert not kept.bucket.lifted and kept.bucket.waited > 0


def test_a_server_without_priority_and_fairness_keeps_the_client_limit(tmp_path: Path) -> None:
    with KubeApiServer(namespaces=("default",), priority_and_fairness=False) as api:
        t = KubernetesTarget.from_kubeconfig(
            write_kubeconfig(tmp_path / "kubeconfig", api.url), qps=5, burst=1, server_fairness=True
        )
        for _ in range(3):
            t.get(ObjectRef("v1", "ConfigMap", "default", "absent"))
        assert not t.bucket.lifted and t.bucket.waited > 0


def test_builtin_kinds_round_trip_with_server_defaults(cluster: Cluster) -> None:
    """Deployment / CronJob / Service: the server adds defaults mlp never sent, and re-applying
    the same manifest is still a no-op (the defaults are nobody's fields)."""
    ns = cluster.namespace
    labels = {MANAGED_BY: "mlp", ENV_LABEL: "staging", SPEC_LABEL: "Monitor.drift-iris"}
    pod = {
        "containers": [
            {
                "name": "monitor",
                "image": "ghcr.io/example/mlp-monitor:1.0",
                "args": ["--monitor", "drift-iris"],
                "ports": [{"containerPort": 8080}],
            }
        ]
    }
    objs = [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "drift-iris", "namespace": ns, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "drift-iris"}},
                "template": {"metadata": {"labels": {"app": "drift-iris"}}, "spec": pod},
            },
        },
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": "perf-iris", "namespace": ns, "labels": labels},
            "spec": {
                "schedule": "*/15 * * * *",
                "jobTemplate": {"spec": {"template": {"spec": {**pod, "restartPolicy": "OnFailure"}}}},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "drift-iris", "namespace": ns, "labels": labels},
            "spec": {"selector": {"app": "drift-iris"}, "ports": [{"name": "metrics", "port": 8080}]},
        },
    ]
    t = cluster.target()
    for obj in objs:
        assert t.apply(obj).action == "created"
    for obj in objs:
        before = t.get(ref_of(obj))
        assert before is not None
        res = t.apply(obj)
        assert res.live["spec"] == before["spec"], obj["kind"]
        if cluster.api is not None:  # on a real cluster the controllers write status in between
            assert res.action == "unchanged", obj["kind"]
    dep = t.get(ref_of(objs[0]))
    assert dep is not None
    assert dep["spec"]["revisionHistoryLimit"] == 10
    assert dep["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    assert dep["spec"]["template"]["spec"]["containers"][0]["ports"][0]["protocol"] == "TCP"
    svc = t.get(ref_of(objs[2]))
    assert svc is not None and svc["spec"]["clusterIP"] and svc["spec"]["type"] == "ClusterIP"
    mlp_fields = next(m for m in dep["metadata"]["managedFields"] if m["manager"] == "mlp")["fieldsV1"]
    assert "f:revisionHistoryLimit" not in mlp_fields["f:spec"]


def test_namespace_objects_are_cluster_scoped(cluster: Cluster) -> None:
    t = cluster.target()
    name = f"mlp-ns-{uuid.uuid4().hex[:6]}"
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {MANAGED_BY: "mlp"}}}
    res = t.apply(ns)
    assert res.action == "created" and res.ref.namespace == ""
    assert res.live["status"]["phase"] == "Active"
    t.delete(res.ref)
    cluster.wait_gone(t, res.ref, timeout=60)


def test_deleting_a_namespace_removes_its_contents(cluster: Cluster) -> None:
    cluster.standin("plays the namespace controller step by step")
    t = cluster.target(namespace=None)
    name = f"mlp-ns-{uuid.uuid4().hex[:6]}"
    ns_ref = t.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}).ref
    cm = configmap("inside", name)
    t.apply(cm)
    t.delete(ns_ref)
    live = t.get(ns_ref)
    assert live is not None and live["status"]["phase"] == "Terminating"
    with pytest.raises(TargetError, match=f'namespace "{name}" is being deleted'):
        t.apply(configmap("late", name))
    cluster.wait_gone(t, ns_ref)
    assert t.get(ref_of(cm)) is None


def test_list_owned_of_a_named_missing_kind_says_it_is_not_installed(tmp_path: Path) -> None:
    if REAL:
        pytest.skip("needs a cluster without KServe: the stand-in without its CRD")
    with KubeApiServer(kserve=False) as api:
        t = KubernetesTarget.from_kubeconfig(write_kubeconfig(tmp_path / "k", api.url), namespace="ml-staging")
        with pytest.raises(TargetError) as err:
            t.list_owned("staging", [(ISVC_V, "InferenceService")])
        assert err.value.status == 404
        assert str(err.value) == "KServe is not installed: serving.kserve.io/v1beta1 InferenceService not found"


def test_expired_continue_token_restarts_the_list(cluster: Cluster) -> None:
    api = cluster.standin("compacts etcd on demand")
    t = cluster.target()
    for i in range(3):
        t.apply(isvc(f"model-{i}", cluster.namespace))
    paged = cluster.target(page_size=2)
    real_request = paged._request
    seen = []

    def request(*args: Any, **kw: Any) -> Any:
        out = real_request(*args, **kw)
        seen.append(out[0])
        if len(seen) == 1:
            t.apply(isvc("model-3", cluster.namespace))  # a write after page 1,
            api.compact()  # and a compaction: page 1's token is now too old
        return out

    paged._request = request  # type: ignore[method-assign]
    owned = paged.list_owned("staging", [(ISVC_V, "InferenceService")])
    assert sorted(o["metadata"]["name"] for o in owned) == ["model-0", "model-1", "model-2", "model-3"]
    assert seen == [200, 410, 200, 200]


def test_a_server_that_never_answers_times_out_in_one_line(tmp_path: Path) -> None:
    slept: list[float] = []
    with socket.socket() as silent:  # accepts connections (backlog) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        t = KubernetesTarget.from_kubeconfig(
            write_kubeconfig(tmp_path / "silent", url),
            namespace="ml-staging",
            request_timeout=(0.3, 0.3),
            backoff_base=0.01,
            sleep=slept.append,
        )
        with pytest.raises(TargetError) as err:
            t.apply(configmap("cfg", "ml-staging"))
        assert str(err.value) == f"cannot reach the Kubernetes API server at {url}: timed out"
        # quick: a few timed-out tries with short waits between them, not the whole retry budget
        assert sum(t.calls.values()) == 3 and len(slept) == 2 and sum(slept) < 1.0


def test_get_of_a_kind_that_is_not_served_is_an_error_not_none(cluster: Cluster) -> None:
    api = cluster.standin("a cluster without the Prometheus Operator CRDs")
    assert api.resource("monitoring.coreos.com", "v1", "servicemonitors") is None
    t = cluster.target()
    with pytest.raises(TargetError) as err:
        t.get(ObjectRef("monitoring.coreos.com/v1", "ServiceMonitor", cluster.namespace, "x"))
    assert str(err.value) == "Prometheus Operator is not installed: monitoring.coreos.com/v1 ServiceMonitor not found"
    t.delete(ObjectRef("monitoring.coreos.com/v1", "ServiceMonitor", cluster.namespace, "x"))  # nothing to delete


def test_server_warnings_are_collected_once(cluster: Cluster) -> None:
    api = cluster.standin("marks an API version deprecated")
    note = "serving.kserve.io/v1beta1 InferenceService is deprecated in v9.9+; use v1 InferenceService"
    api.deprecate(ISVC_V, "InferenceService", note)
    t = cluster.target()
    t.apply(isvc("iris", cluster.namespace))
    t.apply(isvc("iris", cluster.namespace))
    t.apply(configmap("cfg", cluster.namespace))
    assert t.warnings == [note]


def test_https_with_the_cluster_ca_and_a_wrong_ca(tmp_path: Path) -> None:
    from standins.kube_apiserver import self_signed_certificate

    cert, key, ca = self_signed_certificate(tmp_path)
    (tmp_path / "other").mkdir()
    _, _, other_ca = self_signed_certificate(tmp_path / "other")
    with KubeApiServer(tls=(cert, key)) as api:
        assert api.url.startswith("https://")
        good = KubernetesTarget.from_kubeconfig(
            write_kubeconfig(tmp_path / "good", api.url, ca_pem=ca), namespace="ml-staging"
        )
        assert good.apply(configmap("cfg", "ml-staging")).action == "created"
        bad = KubernetesTarget.from_kubeconfig(
            write_kubeconfig(tmp_path / "bad", api.url, ca_pem=other_ca), namespace="ml-staging", backoff_base=0.01
        )
        with pytest.raises(TargetError) as err:
            bad.list_owned("staging")
        assert str(err.value) == (
            f"cannot reach the Kubernetes API server at {api.url}: "
            "TLS verification failed (check the cluster CA in the kubeconfig)"
        )


def test_in_cluster_config_with_a_service_account_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a pod sees: KUBERNETES_SERVICE_HOST/PORT and the mounted token and CA (their paths are
    the one thing redirected here)."""
    from kubernetes.config import incluster_config
    from standins.kube_apiserver import self_signed_certificate

    cert, key, ca = self_signed_certificate(tmp_path)
    with KubeApiServer(tls=(cert, key)) as api:
        api.add_user("sa-token", "system:serviceaccount:mlp:controller")
        api.grant("system:serviceaccount:mlp:controller", ["*"], "*", ["*"], namespace="ml-staging")
        (tmp_path / "token").write_text("sa-token")
        (tmp_path / "ca.crt").write_bytes(ca)
        monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(tmp_path / "token"))
        monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(tmp_path / "ca.crt"))
        port = api.url.rsplit(":", 1)[1]
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
        monkeypatch.delenv("KUBECONFIG", raising=False)
        monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config: from_environment picks in-cluster
        t = KubernetesTarget.from_environment(namespace="ml-staging")
        assert t.server == api.url
        assert t.apply(configmap("cfg", "ml-staging")).action == "created"
        with pytest.raises(TargetError, match='user "system:serviceaccount:mlp:controller" cannot list'):
            KubernetesTarget.in_cluster(namespace=None).list_owned("staging")
