"""Rollout positions on Kubernetes, through the engine: resolve sets the canary's weight, render
follows the environment's KServe mode (`spec.serving.mode`), apply moves it.

- Serverless (Knative): one InferenceService, `canaryTrafficPercent` at the rollout's weight,
  read back from `status.components.predictor.traffic` (the stand-in answers as KServe does).
- Standard (RawDeployment): the stable and canary InferenceServices plus an HTTPRoute whose
  weighted backendRefs are valid against the Gateway API CRD fixture.

Against the API server stand-in over HTTP, or a real cluster with MLP_TEST_KUBECONFIG.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from standins.kube_apiserver import KubeApiServer, httproute_resource, write_kubeconfig

from mlp.engine import Policy, desired, observe_deployments, reconcile
from mlp.render.resolve import Position
from mlp.sources.directory import read_directory
from mlp.specs import load
from mlp.targets.base import ObjectRef
from mlp.targets.kubernetes import KubernetesTarget

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "gateway-api"
NS = "ml-staging"
STABLE_URI = "s3://mlp-models/iris/1/model.joblib"
CANARY_URI = "s3://mlp-models/iris/2/model.joblib"
ISVC = ObjectRef("serving.kserve.io/v1beta1", "InferenceService", NS, "iris")
ROUTE = ObjectRef("gateway.networking.k8s.io/v1", "HTTPRoute", NS, "iris")
PROM = "prometheus: {url: 'http://prometheus.monitoring:9090'}"
STANDARD = f"  serving: {{mode: Standard, gateway: {{name: ml-gateway, namespace: gateway}}, {PROM}}}\n"
SERVERLESS = f"  serving: {{mode: Serverless, {PROM}}}\n"


def _route_schema() -> dict[str, Any]:
    crd = yaml.safe_load((FIXTURES / "httproutes.yaml").read_text())
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]


def cel_errors(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """What the API server's CEL rules (`x-kubernetes-validations`) of `schema` say about `value`,
    evaluated by cel-python; transition rules (on `oldSelf`) need an old object and are skipped."""
    import celpy

    env = celpy.Environment()
    out: list[str] = []
    if value is None:
        return out
    for rule in schema.get("x-kubernetes-validations") or []:
        if "oldSelf" in rule["rule"]:
            continue
        program = env.program(env.compile(rule["rule"]))
        if not program.evaluate({"self": celpy.json_to_cel(value)}):
            out.append(f"{path or '.'}: {rule.get('message') or rule['rule']}")
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key in value:
                out += cel_errors(sub, value[key], f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            out += cel_errors(schema["items"], item, f"{path}[{i}]")
    return out


def assert_valid_route(route: dict[str, Any], schema: dict[str, Any]) -> None:
    """Valid against the Gateway API CRD fixture: its structural schema and its CEL rules."""
    jsonschema.validate(route, schema)
    assert cel_errors(schema, route) == [], route


def repo(tmp_path: Path, serving: str, *, canary: bool = True) -> Path:
    """The example platform repository with staging's `spec.serving` set (and its iris canary or not)."""
    dest = tmp_path / "platform"
    for top in ("specs", "environments"):
        shutil.copytree(ROOT / top, dest / top)
    path = dest / "environments" / "staging.yaml"
    text = path.read_text()
    text, n = re.subn(r"  serving: .*\n", serving, text)  # the example's own: a Prometheus
    assert n == 1
    if not canary:
        text = re.sub(r"\n      canary:\n(        .*\n)+", "\n", text)
    path.write_text(text)
    return dest


def by_name(objs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


@contextlib.contextmanager
def rollout_cluster(tmp_path: Path) -> Iterator[tuple[KubernetesTarget, KubeApiServer | None]]:
    """A target scoped to NS: a real cluster with MLP_TEST_KUBECONFIG, else the stand-in with
    KServe's traffic answer, the Prometheus Operator and Gateway API's HTTPRoute."""
    real = os.environ.get("MLP_TEST_KUBECONFIG")
    if real:
        yield KubernetesTarget.from_kubeconfig(real).scoped(NS), None
        return
    with KubeApiServer(namespaces=("default", NS), prometheus_operator=True, kserve_traffic=True) as api:
        api.install(httproute_resource())
        target = KubernetesTarget.from_kubeconfig(str(write_kubeconfig(tmp_path / "kubeconfig", api.url)))
        yield target.scoped(NS), api


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[KubernetesTarget, KubeApiServer | None]]:
    with rollout_cluster(tmp_path) as found:
        yield found


def test_default_mode_renders_as_before_and_a_declared_mode_is_annotated(tmp_path: Path) -> None:
    plain = by_name(desired(read_directory(ROOT), "staging"), "InferenceService")["iris"]
    assert "serving.kserve.io/deploymentMode" not in plain["metadata"]["annotations"]
    assert plain["spec"]["predictor"]["canaryTrafficPercent"] == 10
    for mode in ("Serverless", "Knative"):
        objs = desired(read_directory(repo(tmp_path / mode, f"  serving: {{mode: {mode}, {PROM}}}\n")), "staging")
        isvcs = by_name(objs, "InferenceService")
        assert set(isvcs) == {"iris", "breast-cancer"} and not by_name(objs, "HTTPRoute")
        assert all(i["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == mode for i in isvcs.values())
        assert isvcs["iris"]["spec"]["predictor"]["canaryTrafficPercent"] == 10


def test_standard_mode_renders_two_inferenceservices_and_a_valid_httproute_at_each_position(tmp_path: Path) -> None:
    schema = _route_schema()
    snap = read_directory(repo(tmp_path, STANDARD))
    specs = load(snap).specs
    for pos, want in [
        (None, [("iris-predictor", 90), ("iris-canary-predictor", 10)]),
        (Position("Progressing", 50), [("iris-predictor", 50), ("iris-canary-predictor", 50)]),
        (Position("Progressing", 100), [("iris-predictor", 0), ("iris-canary-predictor", 100)]),
    ]:
        from mlp.engine import render_stage, resolve_stage

        resolved = resolve_stage(specs, "staging", {"iris": pos} if pos else None)
        objs = render_stage(specs, "staging", resolved, revision="r", templates={})
        isvcs = by_name(objs, "InferenceService")
        assert set(isvcs) == {"iris", "iris-canary", "breast-cancer"}
        assert isvcs["iris"]["spec"]["predictor"]["model"]["storageUri"] == STABLE_URI
        assert isvcs["iris-canary"]["spec"]["predictor"]["model"]["storageUri"] == CANARY_URI
        assert all("canaryTrafficPercent" not in i["spec"]["predictor"] for i in isvcs.values())
        assert isvcs["iris-canary"]["metadata"]["labels"]["mlp.dev/role"] == "canary"
        routes = by_name(objs, "HTTPRoute")
        assert set(routes) == {"iris", "breast-cancer"}  # every model has its route: a stable entry point
        for r in routes.values():
            assert_valid_route(r, schema)
        assert [(b["name"], b["weight"]) for b in routes["iris"]["spec"]["rules"][0]["backendRefs"]] == want
        # KServe's model server knows the canary by its InferenceService's name: the path is rewritten
        rewrite = routes["iris"]["spec"]["rules"][0]["backendRefs"][1]["filters"][0]["urlRewrite"]["path"]
        assert rewrite == {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2/models/iris-canary"}
        assert routes["breast-cancer"]["spec"]["rules"][0]["matches"][0]["path"]["value"] == "/v2/models/breast-cancer"
        parent = routes["iris"]["spec"]["parentRefs"][0]
        assert (parent["name"], parent["namespace"]) == ("ml-gateway", "gateway")
    for phase, uri in [("Promoted", CANARY_URI), ("RolledBack", STABLE_URI)]:
        resolved = resolve_stage(specs, "staging", {"iris": Position(phase, 0)})
        objs = render_stage(specs, "staging", resolved, revision="r", templates={})
        assert set(by_name(objs, "InferenceService")) == {"iris", "breast-cancer"}
        assert by_name(objs, "InferenceService")["iris"]["spec"]["predictor"]["model"]["storageUri"] == uri
        route = by_name(objs, "HTTPRoute")["iris"]
        assert [b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]] == [100]
        assert_valid_route(route, schema)
    bad = {**route, "spec": {"parentRefs": [{"name": "g"}], "rules": [{"backendRefs": [{"name": "x", "weight": -1}]}]}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    # the CEL rules see what the structural schema cannot: a prefix rewrite under an Exact match
    crooked = copy.deepcopy(route)
    rule = crooked["spec"]["rules"][0]
    rule["matches"][0]["path"]["type"] = "Exact"
    rewrite = {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2/models/iris-stable"}
    rule["backendRefs"][0]["filters"] = [{"type": "URLRewrite", "urlRewrite": {"path": rewrite}}]
    jsonschema.validate(crooked, schema)
    assert any("exactly one PathPrefix match" in e for e in cel_errors(schema, crooked))


def test_serving_mode_is_validated(tmp_path: Path) -> None:
    def errors(serving: str, name: str) -> str:
        result = load(read_directory(repo(tmp_path / name, serving)))
        return "\n".join(str(d) for d in result.errors)

    assert "needs serving.gateway" in errors(f"  serving: {{mode: Standard, {PROM}}}\n", "nogw")
    assert "serving.mode" in errors(f"  serving: {{mode: Fancy, {PROM}}}\n", "fancy")
    assert "url" in errors("  serving: {prometheus: {url: 'ftp://x'}}\n", "badurl")
    assert "needs a Prometheus" in errors("", "noprom")
    assert errors(f"  serving: {{mode: RawDeployment, gateway: {{name: g}}, {PROM}}}\n", "raw") == ""
    local = repo(tmp_path / "local", SERVERLESS)
    text = (local / "environments" / "staging.yaml").read_text()
    text = text.replace("analysis: {metric: error-rate", "analysis: {provider: local, metric: error-rate")
    (local / "environments" / "staging.yaml").write_text(text)
    assert "provider local reads the embedded runtime" in "\n".join(str(d) for d in load(read_directory(local)).errors)


def test_serverless_mode_moves_canary_traffic_percent_through_apply_and_reads_status_back(
    tmp_path: Path, cluster: tuple[KubernetesTarget, KubeApiServer | None]
) -> None:
    target, api = cluster
    policy = Policy(prune=True)
    # the stable version runs first (KServe sends 100% to the first revision of a new
    # InferenceService whatever canaryTrafficPercent says), then the canary is declared
    stable = read_directory(repo(tmp_path / "stable", SERVERLESS, canary=False))
    assert reconcile(stable, "staging", target, policy).changes is not None
    snap = read_directory(repo(tmp_path, SERVERLESS))
    seen: list[int | None] = []
    observed: list[dict[str, int]] = []
    for pos in [None, Position("Progressing", 50), Position("Progressing", 100), Position("Promoted", 100)]:
        run = reconcile(snap, "staging", target, policy, positions={"iris": pos} if pos else None)
        assert run.changes is not None and run.changes.ok, run.changes
        live = target.get(ISVC)
        assert live is not None
        seen.append(live["spec"]["predictor"].get("canaryTrafficPercent"))
        assert live["spec"]["predictor"]["model"]["storageUri"] == CANARY_URI
        (obs,) = [o for o in observe_deployments(run.deployments, [live]) if o.model == "iris"]
        if obs.observed is not None:  # what KServe reports, as the controller's status reads it
            observed.append(obs.observed.traffic)
    assert seen == [10, 50, 100, None]
    if api is not None:
        assert observed == [{"2": 10, "1": 90}, {"2": 50, "1": 50}, {"2": 100}, {"2": 100}]
    reconcile(snap, "staging", target, policy, positions={"iris": Position("RolledBack", 0)})
    live = target.get(ISVC)
    assert live is not None and live["spec"]["predictor"]["model"]["storageUri"] == STABLE_URI
    assert "canaryTrafficPercent" not in live["spec"]["predictor"]
    if api is not None:
        (obs,) = [o for o in observe_deployments(run.deployments, [live]) if o.model == "iris"]
        assert obs.observed is not None and obs.observed.traffic == {"1": 100}


def test_standard_mode_moves_the_httproute_weights_on_the_api_server(
    tmp_path: Path, cluster: tuple[KubernetesTarget, KubeApiServer | None]
) -> None:
    target, api = cluster
    snap = read_directory(repo(tmp_path, STANDARD))
    policy = Policy(prune=True)
    for weight in (10, 50, 100):
        run = reconcile(snap, "staging", target, policy, positions={"iris": Position("Progressing", weight)})
        assert run.changes is not None and run.changes.ok, run.changes
        live = target.get(ROUTE)
        assert live is not None
        assert [b["weight"] for b in live["spec"]["rules"][0]["backendRefs"]] == [100 - weight, weight]
        assert cel_errors(_route_schema(), live) == []  # what the API server stored (defaults included)
        assert target.get(ObjectRef(ISVC.api_version, ISVC.kind, NS, "iris-canary")) is not None
    reconcile(snap, "staging", target, policy, positions={"iris": Position("RolledBack", 0)})
    live = target.get(ROUTE)
    assert live is not None and [b["weight"] for b in live["spec"]["rules"][0]["backendRefs"]] == [100]
    # pruned: deleted in the foreground, gone once the garbage collector has run
    canary = ObjectRef(ISVC.api_version, ISVC.kind, NS, "iris-canary")
    if api is not None:
        api.collect_garbage()
        assert target.get(canary) is None
    else:
        gone = target.get(canary)
        assert gone is None or gone["metadata"].get("deletionTimestamp")
