"""Where a rollout puts traffic on Kubernetes, in both KServe deployment modes.

- Serverless (Knative): the one InferenceService names the canary's `storageUri` and
  `spec.predictor.canaryTrafficPercent` is the rollout's weight; KServe sends the rest to the
  previously rolled-out revision. Promoted: the field is dropped (100% to the latest
  revision); rolled back: 0. What KServe really routes is read back from
  `status.components.predictor.traffic`.
- Standard (RawDeployment): KServe has no split, so the stable version keeps the
  InferenceService `<model>`, the canary gets `<model>-canary` beside it, and a Gateway API
  `HTTPRoute` `<model>` in front of both carries the weights on its `backendRefs` (KServe's
  raw deployments expose `<isvc>-predictor` services on port 80).

`position(objects, rollout, ...)` rewrites rendered manifests (pure); the target's normal
apply writes them, so the one writer stays the one writer.
"""

from __future__ import annotations

import copy
from typing import Any

from mlp.rollouts.machine import PROMOTED, ROLLED_BACK, Rollout

ISVC = ("serving.kserve.io/v1beta1", "InferenceService")
ROUTE_API = "gateway.networking.k8s.io/v1"


def _isvc(objects: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next(
        (o for o in objects if (o.get("apiVersion"), o.get("kind")) == ISVC and o["metadata"]["name"] == name), None
    )


def position(
    objects: list[dict[str, Any]],
    r: Rollout,
    *,
    mode: str = "serverless",
    stable_uri: str | None = None,
    gateway: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """A copy of the rendered `objects` with the model's canary at the rollout's weight."""
    out = copy.deepcopy(objects)
    primary = _isvc(out, r.model)
    if primary is None:
        return out
    predictor = primary["spec"]["predictor"]
    if mode == "serverless":
        if r.phase == PROMOTED:
            predictor.pop("canaryTrafficPercent", None)
        else:
            predictor["canaryTrafficPercent"] = 0 if r.phase == ROLLED_BACK else r.weight
        primary["metadata"].setdefault("annotations", {})["mlp.dev/rollout-phase"] = r.phase
        return out
    if mode != "standard":
        raise ValueError(f"unknown KServe deployment mode {mode!r}")
    if stable_uri is None or gateway is None:
        raise ValueError("standard mode needs the stable version's storageUri and a gateway")
    predictor.pop("canaryTrafficPercent", None)
    canary = copy.deepcopy(primary)
    canary_uri = _uri(primary)
    canary["metadata"]["name"] = f"{r.model}-canary"
    canary["metadata"].setdefault("labels", {})["mlp.dev/role"] = "canary"
    ann = primary["metadata"].setdefault("annotations", {})
    if r.phase != PROMOTED:
        # the stable version keeps the InferenceService named after the model
        _set_uri(primary, stable_uri)
        ann["mlp.dev/model-version"] = str(r.stable)
        ann.pop("mlp.dev/model-digest", None)
    ann["mlp.dev/rollout-phase"] = r.phase
    weight = 0 if r.phase == ROLLED_BACK else (100 if r.phase == PROMOTED else r.weight)
    backends = [{"name": f"{r.model}-predictor", "port": 80, "weight": 100 - weight if r.phase != PROMOTED else 100}]
    if r.phase not in (PROMOTED, ROLLED_BACK):
        _set_uri(canary, canary_uri)
        out.append(canary)
        backends.append({"name": f"{r.model}-canary-predictor", "port": 80, "weight": weight})
    parent: dict[str, Any] = {"name": gateway["name"]}
    if gateway.get("namespace"):
        parent["namespace"] = gateway["namespace"]
    out.append(
        {
            "apiVersion": ROUTE_API,
            "kind": "HTTPRoute",
            "metadata": {
                "name": r.model,
                "namespace": primary["metadata"].get("namespace"),
                "labels": dict(primary["metadata"].get("labels") or {}),
                "annotations": {"mlp.dev/rollout-phase": r.phase, "mlp.dev/rollout-weight": str(weight)},
            },
            "spec": {
                "parentRefs": [parent],
                "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": backends}],
            },
        }
    )
    return out


def _uri(isvc: dict[str, Any]) -> str | None:
    pred = isvc["spec"]["predictor"]
    if "model" in pred:
        return pred["model"].get("storageUri")
    for env in (pred.get("containers") or [{}])[0].get("env") or []:
        if env.get("name") == "STORAGE_URI":
            return env.get("value")
    return None


def _set_uri(isvc: dict[str, Any], uri: str | None) -> None:
    pred = isvc["spec"]["predictor"]
    if "model" in pred:
        pred["model"]["storageUri"] = uri
        return
    for env in (pred.get("containers") or [{}])[0].get("env") or []:
        if env.get("name") == "STORAGE_URI":
            env["value"] = uri


def observed_traffic(isvc: dict[str, Any] | None) -> dict[str, int]:
    """What KServe reports it routes: {revision name (or tag): percent}, from status.components.predictor.traffic."""
    traffic = (((isvc or {}).get("status") or {}).get("components") or {}).get("predictor", {}).get("traffic") or []
    out: dict[str, int] = {}
    for t in traffic:
        key = t.get("tag") or t.get("revisionName") or ("latest" if t.get("latestRevision") else "previous")
        out[str(key)] = int(t.get("percent") or 0)
    return out
