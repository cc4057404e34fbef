"""Replays the 41 recorded kube-apiserver exchanges against the stand-in, and feeds the recorded
error answers to the kubernetes target's error mapping.

`tests/fixtures/kube-apiserver/exchanges.json` holds a real API server's answers (v1.32.13,
KServe v0.20.0 CRD). The stand-in starts in the recorded setup (KServe CRD installed, namespace
ml-staging, the etcd revision where the recording started) and gets the same requests in the same
order; every status code and every response body must match, after replacing what cannot match
(uids, timestamps) with placeholders in order of first appearance. Nothing else is relaxed:
resourceVersions, generations, managedFields, continue tokens, messages and Status details are
compared as recorded.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from standins.kube_apiserver import ADMIN_TOKEN, KubeApiServer

from mlp.targets.base import ObjectRef, TargetError
from mlp.targets.kubernetes import error_from_response

FIXTURES = Path(__file__).resolve().parent / "fixtures"
EXCHANGES = FIXTURES / "kube-apiserver" / "exchanges.json"

pytestmark = pytest.mark.timeout(120)


def _exchanges() -> list[dict[str, Any]]:
    return json.loads(EXCHANGES.read_text())


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


class Normalizer:
    """Replaces uids by `uid-N` (N = order of first appearance) and timestamps by `<time>`."""

    def __init__(self) -> None:
        self.uids: dict[str, str] = {}

    def __call__(self, body: Any) -> Any:
        text = json.dumps(body)

        def uid(m: re.Match[str]) -> str:
            return self.uids.setdefault(m.group(0), f"uid-{len(self.uids)}")

        return json.loads(_TIME.sub("<time>", _UUID.sub(uid, text)))


def _send(client: httpx.Client, ex: dict[str, Any]) -> httpx.Response:
    headers = dict(ex["request_headers"])
    headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
    if ex["name"] == "unauthorized":
        headers["Authorization"] = "Bearer " + "0" * 32
    if ex["name"] == "forbidden":
        headers["Impersonate-User"] = "nobody"
    content: bytes | None = None
    if ex["request_body"] is not None:
        if headers.get("Content-Type") == "application/apply-patch+yaml":
            content = yaml.safe_dump(ex["request_body"], sort_keys=False).encode()
        else:
            content = json.dumps(ex["request_body"]).encode()
    return client.request(ex["method"], ex["path"], params=ex["query"], headers=headers, content=content)


def _watch(client: httpx.Client, ex: dict[str, Any], out: dict[str, Any]) -> None:
    headers = {**ex["request_headers"], "Authorization": f"Bearer {ADMIN_TOKEN}"}
    with client.stream("GET", ex["path"], params=ex["query"], headers=headers) as resp:
        out["status"] = resp.status_code
        out["body"] = [json.loads(line) for line in resp.iter_lines() if line.strip()]


@pytest.fixture(scope="module")
def replayed() -> list[tuple[dict[str, Any], int, Any, httpx.Headers | None]]:
    exchanges = _exchanges()
    api = KubeApiServer(namespaces=("default", "ml-staging"), kserve=True)
    # The recording's first write got resourceVersion 188: start the stand-in's revision there.
    api.advance_resource_version(187 - api.store.revision)
    results: list[tuple[dict[str, Any], int, Any, httpx.Headers | None]] = []
    with api, httpx.Client(base_url=api.url, timeout=10) as client:
        watch_out: dict[str, Any] = {}
        watcher: threading.Thread | None = None
        for ex in exchanges:
            if ex["name"] == "ssa_prometheusrule_create":
                # Unrecorded setup: `kubectl apply --server-side` of the two Prometheus Operator CRDs,
                # whose writes moved the revision to 207 on the real server.
                api.install_prometheus_operator()
                api.advance_resource_version(207 - api.store.revision)
            if ex["name"] == "watch":
                watcher = threading.Thread(target=_watch, args=(client, ex, watch_out))
                watcher.start()
                # let the watch open before the writes it must see (recorded right after it)
                for _ in range(100):
                    if any(r.query.get("watch") == "1" for r in api.requests):
                        break
                    threading.Event().wait(0.02)
                results.append((ex, -1, None, None))
                continue
            resp = _send(client, ex)
            ctype = resp.headers.get("content-type", "")
            body = resp.json() if ctype.startswith("application/json") else resp.text
            results.append((ex, resp.status_code, body, resp.headers))
            if ex["name"] == "watch_helper_delete" and watcher is not None:
                watcher.join(timeout=10)
                idx = next(i for i, r in enumerate(results) if r[0]["name"] == "watch")
                results[idx] = (results[idx][0], watch_out.get("status", 0), watch_out.get("body"), None)
    return results


def _names() -> list[str]:
    return [e["name"] for e in json.loads(EXCHANGES.read_text())]


def test_recording_has_41_exchanges() -> None:
    assert len(_exchanges()) == 41


@pytest.mark.parametrize("name", _names())
def test_exchange_matches_recording(name: str, replayed: list[tuple[dict[str, Any], int, Any, Any]]) -> None:
    # normalize the whole sequence in order, so uid-N means the same object on both sides
    rec_norm, got_norm = Normalizer(), Normalizer()
    for ex, status, body, _ in replayed:
        expected = rec_norm(ex["response_body"])
        got = got_norm(body)
        if ex["name"] != name:
            continue
        assert status == ex["status"], f"{name}: status {status}, recorded {ex['status']}: {body}"
        assert got == expected, f"{name}: body differs from the recording"
        return
    pytest.fail(f"exchange {name} not replayed")


def test_unknown_field_merge_patch_warns(replayed: list[tuple[dict[str, Any], int, Any, Any]]) -> None:
    """#19: the typo is pruned silently except for a Warning header (recorded in the README)."""
    _, status, _, headers = next(r for r in replayed if r[0]["name"] == "unknown_field_merge_patch")
    assert status == 200
    assert headers.get("warning") == '299 - "unknown field \\"spec.predictor.sklearn.storageUrl\\""'


def test_crd_missing_is_plain_text(replayed: list[tuple[dict[str, Any], int, Any, Any]]) -> None:
    _, status, body, headers = next(r for r in replayed if r[0]["name"] == "crd_missing")
    assert status == 404 and body == "404 page not found\n"
    assert headers["content-type"].startswith("text/plain")


# ---- the target's error messages, on the recorded answers ----------------------------------

ISVC = ObjectRef("serving.kserve.io/v1beta1", "InferenceService", "ml-staging", "churn")


def _recorded(name: str) -> dict[str, Any]:
    return next(e for e in _exchanges() if e["name"] == name)


def _error(name: str, ref: ObjectRef = ISVC, verb: str = "apply") -> TargetError:
    ex = _recorded(name)
    body = ex["response_body"]
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    ctype = "text/plain; charset=utf-8" if isinstance(body, str) else "application/json"
    return error_from_response(ex["status"], raw, ctype, ref=ref, verb=verb, server="https://10.0.0.1:6443")


def test_message_conflict_names_the_owner() -> None:
    err = _error("ssa_conflict")
    assert err.status == 409
    msg = str(err)
    assert '.spec.predictor.minReplicas is owned by "mlp"' in msg
    assert "--force-conflicts" in msg and "\n" not in msg


def test_message_stale_resource_version() -> None:
    msg = str(_error("put_stale"))
    assert "InferenceService/ml-staging/churn" in msg and "modified" in msg and "\n" not in msg


def test_message_invalid_type_500_is_surfaced_not_retried() -> None:
    err = _error("invalid_type")
    assert err.status == 500
    assert str(err) == (
        "InferenceService/ml-staging/churn rejected by the API server: .spec.predictor.canaryTrafficPercent: "
        "expected numeric (int or float), got string"
    )


def test_message_unknown_field() -> None:
    for name in ("unknown_field", "unknown_field_strict"):
        assert str(_error(name)) == (
            "InferenceService/ml-staging/churn rejected by the API server: "
            ".spec.predictor.sklearn.storageUrl: field not declared in schema"
        )


def test_message_invalid_422() -> None:
    msg = str(_error("invalid_type_merge_patch"))
    assert msg.startswith("InferenceService/ml-staging/churn is invalid: spec.predictor.canaryTrafficPercent")


def test_message_crd_missing() -> None:
    ref = ObjectRef("monitoring.coreos.com/v1", "PrometheusRule", "ml-staging", "churn-alerts")
    assert str(_error("crd_missing", ref)) == (
        "Prometheus Operator is not installed: monitoring.coreos.com/v1 PrometheusRule not found"
    )
    assert str(_error("crd_missing", ISVC)) == (
        "KServe is not installed: serving.kserve.io/v1beta1 InferenceService not found"
    )


def test_message_namespace_missing() -> None:
    ref = ObjectRef("serving.kserve.io/v1beta1", "InferenceService", "does-not-exist", "churn")
    assert str(_error("namespace_missing", ref)) == (
        'namespace "does-not-exist" does not exist: create it (or declare it) before applying '
        "InferenceService/does-not-exist/churn"
    )


def test_message_unauthorized_and_forbidden() -> None:
    assert str(_error("unauthorized", verb="list")) == (
        "the API server at https://10.0.0.1:6443 rejected the credentials (401 Unauthorized): "
        "check the kubeconfig user or token"
    )
    assert str(_error("forbidden", verb="list")) == (
        'forbidden by RBAC: user "nobody" cannot list inferenceservices.serving.kserve.io in namespace "ml-staging"'
    )


def test_message_not_found_has_status() -> None:
    err = _error("get_missing", verb="get")
    assert err.status == 404 and "not found" in str(err)


# ---- the stand-in's documented semantics beyond the recording ------------------------------

CM = "/api/v1/namespaces/ml-staging/configmaps"
ISVCS = "/apis/serving.kserve.io/v1beta1/namespaces/ml-staging/inferenceservices"


@pytest.fixture
def http() -> Any:
    with (
        KubeApiServer() as api,
        httpx.Client(base_url=api.url, timeout=10, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client,
    ):
        client.api = api  # type: ignore[attr-defined]
        yield client


def _apply(client: httpx.Client, path: str, obj: dict[str, Any], manager: str = "mlp", **query: str) -> httpx.Response:
    return client.patch(
        path,
        params={"fieldManager": manager, **query},
        content=yaml.safe_dump(obj).encode(),
        headers={"Content-Type": "application/apply-patch+yaml"},
    )


def _cm(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}


def test_label_selector_operators(http: httpx.Client) -> None:
    for name, labels in (
        ("a", {"env": "staging", "tier": "1"}),
        ("b", {"env": "prod"}),
        ("c", {"env": "dev"}),
        ("d", {}),
    ):
        assert _apply(http, f"{CM}/{name}", _cm(name, labels)).status_code == 201

    def names(selector: str) -> list[str]:
        resp = http.get(CM, params={"labelSelector": selector})
        assert resp.status_code == 200, resp.text
        return [i["metadata"]["name"] for i in resp.json()["items"]]

    assert names("env=staging") == ["a"]
    assert names("env==staging") == ["a"]
    assert names("env!=staging") == ["b", "c", "d"]  # != also matches objects without the label
    assert names("env in (staging, prod)") == ["a", "b"]
    assert names("env notin (staging,prod)") == ["c", "d"]
    assert names("tier") == ["a"]
    assert names("!tier") == ["b", "c", "d"]
    assert names("env,!tier") == ["b", "c"]
    assert names("") == ["a", "b", "c", "d"]
    bad = http.get(CM, params={"labelSelector": "env=(oops"})
    assert bad.status_code == 400 and bad.json()["reason"] == "BadRequest"
    assert [
        i["metadata"]["name"] for i in http.get(CM, params={"fieldSelector": "metadata.name=c"}).json()["items"]
    ] == ["c"]


def test_builtin_list_items_carry_no_kind_but_custom_ones_do(http: httpx.Client) -> None:
    _apply(http, f"{CM}/a", _cm("a", {}))
    item = http.get(CM).json()["items"][0]
    assert "kind" not in item and "apiVersion" not in item
    assert http.get(f"{CM}/a").json()["kind"] == "ConfigMap"


def test_pagination_with_a_selector_has_no_remaining_count(http: httpx.Client) -> None:
    for i in range(4):
        _apply(http, f"{CM}/m{i}", _cm(f"m{i}", {"keep": "yes" if i % 2 == 0 else "no"}))
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        params = {"labelSelector": "keep=yes", "limit": "1", **({"continue": token} if token else {})}
        page = http.get(CM, params=params).json()
        pages += 1
        assert "remainingItemCount" not in page["metadata"]
        seen += [i["metadata"]["name"] for i in page["items"]]
        token = page["metadata"]["continue"]
        if not token:
            break
    assert seen == ["m0", "m2"] and pages >= 2
    stale = http.get(CM, params={"limit": "1", "continue": "not-a-token"})
    assert stale.status_code == 400


def test_pages_read_one_snapshot(http: httpx.Client) -> None:
    for i in range(3):
        _apply(http, f"{CM}/s{i}", _cm(f"s{i}", {}))
    first = http.get(CM, params={"limit": "2"}).json()
    _apply(http, f"{CM}/s9", _cm("s9", {}))  # written after page 1: not in the snapshot
    second = http.get(CM, params={"limit": "2", "continue": first["metadata"]["continue"]}).json()
    assert [i["metadata"]["name"] for i in second["items"]] == ["s2"]
    assert second["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]


def test_post_creates_with_an_update_manager_and_refuses_duplicates(http: httpx.Client) -> None:
    resp = http.post(CM, json=_cm("posted", {"a": "b"}))
    assert resp.status_code == 201
    entry = resp.json()["metadata"]["managedFields"][0]
    assert (entry["manager"], entry["operation"]) == ("python-httpx", "Update")
    again = http.post(CM, json=_cm("posted", {}))
    assert again.status_code == 409 and again.json()["reason"] == "AlreadyExists"
    assert again.json()["message"] == 'configmaps "posted" already exists'


def test_apply_needs_a_field_manager_and_custom_resources_refuse_strategic_merge(http: httpx.Client) -> None:
    isvc = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "x"},
        "spec": {"predictor": {"sklearn": {"storageUri": "s3://m/x/1"}}},
    }
    resp = http.patch(
        f"{ISVCS}/x", content=yaml.safe_dump(isvc).encode(), headers={"Content-Type": "application/apply-patch+yaml"}
    )
    assert resp.status_code == 400
    assert _apply(http, f"{ISVCS}/x", isvc).status_code == 201
    smp = http.patch(
        f"{ISVCS}/x", json={"spec": {}}, headers={"Content-Type": "application/strategic-merge-patch+json"}
    )
    assert smp.status_code == 415


def test_put_on_a_custom_resource_needs_the_current_resource_version(http: httpx.Client) -> None:
    isvc = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "x"},
        "spec": {"predictor": {"minReplicas": 1, "sklearn": {"storageUri": "s3://m/x/1"}}},
    }
    live = _apply(http, f"{ISVCS}/x", isvc).json()
    body = {**live, "spec": {"predictor": {"minReplicas": 2, "sklearn": {"storageUri": "s3://m/x/1"}}}}
    no_rv = {**body, "metadata": {k: v for k, v in live["metadata"].items() if k != "resourceVersion"}}
    assert http.put(f"{ISVCS}/x", json=no_rv).status_code == 422
    ok = http.put(f"{ISVCS}/x", json=body)
    assert ok.status_code == 200 and ok.json()["metadata"]["generation"] == 2
    assert http.put(f"{ISVCS}/x", json=body).status_code == 409  # body's rv is now stale


def test_same_value_is_shared_ownership_and_survives_one_owner_dropping_it(http: httpx.Client) -> None:
    cm = _cm("shared", {"a": "1"})
    _apply(http, f"{CM}/shared", cm, manager="mlp")
    other = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared"}, "data": {"k": "v"}}
    resp = _apply(http, f"{CM}/shared", other, manager="other-tool")
    assert resp.status_code == 200  # same value: no conflict, both own data.k
    managers = {m["manager"] for m in resp.json()["metadata"]["managedFields"]}
    assert managers == {"mlp", "other-tool"}
    dropped = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared", "labels": {"a": "1"}}}
    after = _apply(http, f"{CM}/shared", dropped, manager="mlp").json()
    assert after["data"] == {"k": "v"}  # still owned by other-tool, so it stays


def test_wrong_type_in_a_builtin_apply_is_a_500(http: httpx.Client) -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "typed"}, "data": {"threshold": 0.2}}
    resp = _apply(http, f"{CM}/typed", cm)
    assert resp.status_code == 500
    assert resp.json()["message"] == (
        "failed to create typed patch object (ml-staging/typed; /v1, Kind=ConfigMap): "
        ".data.threshold: expected string, got &value.valueUnstructured{Value:0.2}"
    )


def test_foreground_delete_waits_for_dependents(http: httpx.Client) -> None:
    api = http.api  # type: ignore[attr-defined]
    owner = _apply(http, f"{CM}/owner", _cm("owner", {})).json()
    dep = _cm("dep", {})
    dep["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "name": "owner",
            "uid": owner["metadata"]["uid"],
            "blockOwnerDeletion": True,
        }
    ]
    _apply(http, f"{CM}/dep", dep)
    deleted = http.request("DELETE", f"{CM}/owner", json={"propagationPolicy": "Foreground"})
    assert deleted.status_code == 200 and deleted.json()["metadata"]["finalizers"] == ["foregroundDeletion"]
    assert http.get(f"{CM}/dep").status_code == 200
    api.collect_garbage()
    assert http.get(f"{CM}/dep").status_code == 404
    assert http.get(f"{CM}/owner").status_code == 404


def test_auto_gc_finishes_foreground_deletion_like_a_full_cluster() -> None:
    with (
        KubeApiServer(auto_gc=True) as api,
        httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as http,
    ):
        _apply(http, f"{CM}/gone", _cm("gone", {}))
        assert http.request("DELETE", f"{CM}/gone", json={"propagationPolicy": "Foreground"}).status_code == 200
        assert http.get(f"{CM}/gone").status_code == 404


def test_watch_from_a_resource_version_streams_later_events(http: httpx.Client) -> None:
    rv = http.get(CM).json()["metadata"]["resourceVersion"]
    _apply(http, f"{CM}/w", _cm("w", {}))
    http.delete(f"{CM}/w")
    with http.stream("GET", CM, params={"watch": "1", "resourceVersion": rv, "timeoutSeconds": "1"}) as resp:
        events = [json.loads(line) for line in resp.iter_lines() if line.strip()]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "w"), ("DELETED", "w")]


def test_openapi_value_validation_of_custom_resources(http: httpx.Client) -> None:
    """Constraints of the real CRD schemas that a renderer can trip over: 422 Invalid."""
    isvc = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "v"},
        "spec": {
            "predictor": {
                "canaryTrafficPercent": 150,
                "sklearn": {"storageUri": "s3://m/v/1", "resources": {"limits": {"cpu": "one", "memory": "1Gi"}}},
            }
        },
    }
    resp = _apply(http, f"{ISVCS}/v", isvc)
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert body["reason"] == "Invalid"
    # the CRD sets no maximum on canaryTrafficPercent (KServe's webhook checks it, not the API server)
    assert [c["field"] for c in body["details"]["causes"]] == ["spec.predictor.sklearn.resources.limits.cpu"]
    assert body["message"].startswith(
        'InferenceService.serving.kserve.io "v" is invalid: '
        'spec.predictor.sklearn.resources.limits.cpu: Invalid value: "one": '
    )
    assert http.get(f"{ISVCS}/v").status_code == 404  # nothing stored
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "r"},
        "spec": {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "up == 0", "for": "10 m"}]}]},
    }
    http.api.install_prometheus_operator()  # type: ignore[attr-defined]
    resp = _apply(http, "/apis/monitoring.coreos.com/v1/namespaces/ml-staging/prometheusrules/r", rule)
    assert resp.status_code == 422 and "spec.groups[0].rules[0].for" in resp.json()["message"]


def test_associative_list_items_merge_by_key_and_dropped_items_go(http: httpx.Client) -> None:
    path = "/apis/apps/v1/namespaces/ml-staging/deployments/d"

    def deployment(env: list[dict[str, str]]) -> dict[str, Any]:
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "d"},
            "spec": {
                "selector": {"matchLabels": {"app": "d"}},
                "template": {
                    "metadata": {"labels": {"app": "d"}},
                    "spec": {"containers": [{"name": "main", "image": "busybox:1.36", "env": env}]},
                },
            },
        }

    first = _apply(http, path, deployment([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]))
    assert first.status_code == 201
    mf = first.json()["metadata"]["managedFields"][0]["fieldsV1"]
    container = mf["f:spec"]["f:template"]["f:spec"]["f:containers"]['k:{"name":"main"}']
    assert container["."] == {} and 'k:{"name":"B"}' in container["f:env"]
    # someone else adds a sidecar container (operation Update)
    sidecar = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "main",
                            "image": "busybox:1.36",
                            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                        },
                        {"name": "sidecar", "image": "envoy:1"},
                    ]
                }
            }
        }
    }
    assert (
        http.patch(
            path,
            json=sidecar,
            headers={"Content-Type": "application/merge-patch+json"},
            params={"fieldManager": "injector"},
        ).status_code
        == 200
    )
    after = _apply(http, path, deployment([{"name": "A", "value": "1"}])).json()
    containers = {c["name"]: c for c in after["spec"]["template"]["spec"]["containers"]}
    assert [e["name"] for e in containers["main"]["env"]] == ["A"]  # mlp dropped B: gone
    assert "sidecar" in containers  # not mlp's: kept


def test_message_admission_webhook_is_not_mistaken_for_rbac() -> None:
    for code, reason in ((403, "Forbidden"), (400, None)):
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "code": code,
            "message": 'admission webhook "inferenceservice.kserve-webhook-server.validator" denied the '
            "request: exactly one of [sklearn, xgboost] must be specified in predictor",
        }
        if reason:
            body["reason"] = reason
        err = error_from_response(
            code, json.dumps(body).encode(), "application/json", ref=ISVC, verb="apply", server="https://10.0.0.1:6443"
        )
        assert str(err) == (
            "InferenceService/ml-staging/churn rejected by admission webhook "
            '"inferenceservice.kserve-webhook-server.validator": exactly one of [sklearn, xgboost] must be '
            "specified in predictor"
        )


def test_builtin_validation_a_renderer_can_trip(http: httpx.Client) -> None:
    bad_dep = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {
            "selector": {"matchLabels": {"app": "d"}},
            "template": {"metadata": {"labels": {"app": "other"}}, "spec": {"containers": [{"name": "c"}]}},
        },
    }
    resp = _apply(http, "/apis/apps/v1/namespaces/ml-staging/deployments/d", bad_dep)
    assert resp.status_code == 422
    assert sorted(c["field"] for c in resp.json()["details"]["causes"]) == [
        "spec.template.metadata.labels",
        "spec.template.spec.containers[0].image",
    ]
    cron = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "c"},
        "spec": {
            "schedule": "*/5 * * * *",
            "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}},
        },
    }
    resp = _apply(http, "/apis/batch/v1/namespaces/ml-staging/cronjobs/c", cron)
    assert resp.status_code == 422
    assert resp.json()["details"]["causes"][0]["field"] == "spec.jobTemplate.spec.template.spec.restartPolicy"
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "k"}, "data": {"bad key": "x"}}
    assert _apply(http, f"{CM}/k", cm).status_code == 422


def test_typed_patch_500_is_not_retried_even_with_reason_internal_error() -> None:
    from mlp.targets.kubernetes import KubernetesTarget

    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "reason": "InternalError",
        "code": 500,
        "message": "failed to create typed patch object (ml-staging/churn; /v1, Kind=ConfigMap): "
        ".data.x: expected string, got &value.valueUnstructured{Value:1}",
    }
    assert not KubernetesTarget._retryable(500, json.dumps(body).encode(), "application/json")
    transient = {**body, "message": "Internal error occurred: etcdserver: request timed out"}
    assert KubernetesTarget._retryable(500, json.dumps(transient).encode(), "application/json")
    assert not KubernetesTarget._retryable(
        500, json.dumps(_recorded("invalid_type")["response_body"]).encode(), "application/json"
    )


def test_port_without_protocol_is_keyed_with_the_default(http: httpx.Client) -> None:
    path = "/api/v1/namespaces/ml-staging/services/s"
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "s"},
        "spec": {"selector": {"app": "s"}, "ports": [{"name": "metrics", "port": 9102}]},
    }
    first = _apply(http, path, svc).json()
    ports = first["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"]["f:ports"]
    assert list(ports) == ['k:{"port":9102,"protocol":"TCP"}']
    again = _apply(http, path, svc).json()
    assert again["spec"]["ports"] == [{"name": "metrics", "port": 9102, "protocol": "TCP", "targetPort": 9102}]
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]


def test_merged_list_order_follows_structured_merge_diff() -> None:
    from standins.kube_apiserver import interleave

    def order(live: list[str], applied: list[str]) -> list[str]:
        return [k for k, _, _ in interleave(live, applied)]

    assert order(["main", "sidecar"], ["main"]) == ["main", "sidecar"]
    assert order(["a", "b"], ["b", "a"]) == ["b", "a"]
    assert order(["a", "x", "b"], ["b", "c", "a"]) == ["x", "b", "c", "a"]
    assert order([], ["a", "b"]) == ["a", "b"]


def test_warning_header_of_the_recording_is_parsed() -> None:
    """#19's header, as the README quotes it."""
    from urllib3 import HTTPHeaderDict

    from mlp.targets.kubernetes import _warnings

    headers = HTTPHeaderDict({"Warning": '299 - "unknown field \\"spec.predictor.sklearn.storageUrl\\""'})
    assert _warnings(headers) == ['unknown field "spec.predictor.sklearn.storageUrl"']
