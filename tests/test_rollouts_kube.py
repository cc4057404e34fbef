"""Rollout steps on Kubernetes: Serverless `canaryTrafficPercent` and Standard mode's canary
InferenceService + HTTPRoute, applied through the kubernetes target to the API server stand-in
(or a real cluster with `MLP_TEST_KUBECONFIG`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from standins.kube_apiserver import KubeApiServer, Resource, _crd_factory, write_kubeconfig

from mlp.rollouts import machine
from mlp.rollouts.kube import observed_traffic, position
from mlp.rollouts.machine import Rollout
from mlp.targets.base import ObjectRef
from mlp.targets.kubernetes import KubernetesTarget

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "gateway-api"
NS = "ml-staging"
STABLE_URI = "s3://models/iris/1/model.joblib"
CANARY_URI = "s3://models/iris/2/model.joblib"


def _route_schema() -> dict[str, Any]:
    crd = yaml.safe_load((FIXTURES / "httproutes.yaml").read_text())
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]


def rendered() -> list[dict[str, Any]]:
    """What render emits for `iris: {version: 1, canary: {version: 2, ...}}` on Kubernetes."""
    labels = {"app.kubernetes.io/managed-by": "mlp", "mlp.dev/environment": "staging", "mlp.dev/spec": "iris"}
    return [
        {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {
                "name": "iris",
                "namespace": NS,
                "labels": labels,
                "annotations": {"mlp.dev/stable-version": "1", "mlp.dev/canary-version": "2"},
            },
            "spec": {
                "predictor": {
                    "minReplicas": 1,
                    "canaryTrafficPercent": 10,
                    "model": {"modelFormat": {"name": "sklearn"}, "protocolVersion": "v2", "storageUri": CANARY_URI},
                }
            },
        }
    ]


def _rollout(step: int, phase: str = machine.PROGRESSING) -> Rollout:
    return Rollout("staging", "iris", 1, 2, [10, 50, 100], "k", phase=phase, step=step)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[KubernetesTarget, KubeApiServer | None]]:
    real = os.environ.get("MLP_TEST_KUBECONFIG")
    if real:
        target = KubernetesTarget.from_kubeconfig(Path(real), None, namespace=NS)
        yield target, None
        return
    with KubeApiServer(namespaces=("default", NS)) as api:
        api.resources.append(
            Resource(
                "gateway.networking.k8s.io",
                "v1",
                "httproutes",
                "HTTPRoute",
                singular="httproute",
                custom=True,
                tracks_generation=True,
                schema_factory=_crd_factory(FIXTURES / "httproutes.yaml", "v1"),
            )
        )
        target = KubernetesTarget.from_kubeconfig(
            write_kubeconfig(tmp_path / "kubeconfig", api.url), None, namespace=NS
        )
        yield target, api


def test_standard_mode_renders_two_inferenceservices_and_a_valid_httproute() -> None:
    schema = _route_schema()
    for step, (stable_w, canary_w) in enumerate([(90, 10), (50, 50), (0, 100)]):
        objs = position(rendered(), _rollout(step), mode="standard", stable_uri=STABLE_URI, gateway={"name": "ml"})
        isvcs = {o["metadata"]["name"]: o for o in objs if o["kind"] == "InferenceService"}
        assert set(isvcs) == {"iris", "iris-canary"}
        assert isvcs["iris"]["spec"]["predictor"]["model"]["storageUri"] == STABLE_URI
        assert isvcs["iris-canary"]["spec"]["predictor"]["model"]["storageUri"] == CANARY_URI
        assert all("canaryTrafficPercent" not in i["spec"]["predictor"] for i in isvcs.values())
        route = next(o for o in objs if o["kind"] == "HTTPRoute")
        jsonschema.validate(route, schema)
        weights = [(b["name"], b["weight"]) for b in route["spec"]["rules"][0]["backendRefs"]]
        assert weights == [("iris-predictor", stable_w), ("iris-canary-predictor", canary_w)]
    back = position(
        rendered(), _rollout(1, machine.ROLLED_BACK), mode="standard", stable_uri=STABLE_URI, gateway={"name": "ml"}
    )
    route = next(o for o in back if o["kind"] == "HTTPRoute")
    assert [b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]] == [100]
    assert [o["metadata"]["name"] for o in back if o["kind"] == "InferenceService"] == ["iris"]
    bad = {
        **route,
        "spec": {"parentRefs": [{"name": "ml"}], "rules": [{"backendRefs": [{"name": "x", "port": 80, "weight": -1}]}]},
    }
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_standard_mode_moves_the_weights_on_the_api_server(cluster: tuple[KubernetesTarget, Any]) -> None:
    target, _ = cluster
    for step in range(3):
        for obj in position(rendered(), _rollout(step), mode="standard", stable_uri=STABLE_URI, gateway={"name": "ml"}):
            target.apply(obj)
        live = target.get(ObjectRef("gateway.networking.k8s.io/v1", "HTTPRoute", NS, "iris"))
        assert live is not None
        weights = [b["weight"] for b in live["spec"]["rules"][0]["backendRefs"]]
        assert weights == [100 - [10, 50, 100][step], [10, 50, 100][step]]
        assert target.get(ObjectRef("serving.kserve.io/v1beta1", "InferenceService", NS, "iris-canary")) is not None


def test_serverless_mode_patches_canary_traffic_percent_step_by_step_and_reads_status_back(
    cluster: tuple[KubernetesTarget, KubeApiServer | None],
) -> None:
    target, api = cluster
    ref = ObjectRef("serving.kserve.io/v1beta1", "InferenceService", NS, "iris")
    seen = []
    for step in range(3):
        (obj,) = position(rendered(), _rollout(step), mode="serverless")
        target.apply(obj)
        live = target.get(ref)
        assert live is not None
        pct = live["spec"]["predictor"]["canaryTrafficPercent"]
        seen.append(pct)
        if api is not None:  # the stand-in runs no KServe controller: report the split as KServe does
            key = ("serving.kserve.io", "inferenceservices", NS, "iris")
            with api.lock:
                obj = api.get_object(*key)
                assert obj is not None
                obj["status"] = {
                    "components": {
                        "predictor": {
                            "traffic": [
                                {
                                    "revisionName": "iris-predictor-00002",
                                    "tag": "latest",
                                    "latestRevision": True,
                                    "percent": pct,
                                },
                                {
                                    "revisionName": "iris-predictor-00001",
                                    "tag": "prev",
                                    "latestRevision": False,
                                    "percent": 100 - pct,
                                },
                            ]
                        }
                    }
                }
                api._write(key, obj)
        traffic = observed_traffic(target.get(ref))
        assert traffic.get("latest", traffic.get("latestRevision")) == pct or api is None, traffic
    assert seen == [10, 50, 100]
    (done,) = position(rendered(), _rollout(2, machine.PROMOTED), mode="serverless")
    target.apply(done)
    live = target.get(ref)
    assert live is not None and "canaryTrafficPercent" not in live["spec"]["predictor"]
    (back,) = position(rendered(), _rollout(0, machine.ROLLED_BACK), mode="serverless")
    assert back["spec"]["predictor"]["canaryTrafficPercent"] == 0
