"""Model deployments: resolve (routes and split, once), owned kinds, and observed traffic.

Observed traffic is what really serves, which may differ from what was declared:
- KServe: `status.components.predictor.traffic` lists revisions with `percent` and
  `latestRevision`; the latest revision runs the version the spec names in `storageUri`
  (the canary when there is one), an older one the previously rolled-out (stable) version.
  On a first create KServe sends 100% to the only revision whatever `canaryTrafficPercent`
  says (and canaries work only in Serverless mode), so declared and observed differ.
- the local runtime: the live router's split, reported by the local target in `status.traffic`.
"""

from __future__ import annotations

from typing import Any

from mlp.engine.plugins import KindPlugin, Observed, register
from mlp.objects import Manifest, ResolvedDeployment
from mlp.render.resolve import resolve_deployments

ISVC = ("serving.kserve.io/v1beta1", "InferenceService")
MODEL_DEPLOYMENT = ("mlp.dev/v1", "ModelDeployment")
CONDITIONS = ("Ready", "PredictorReady")


def _kserve(live: Manifest, declared: ResolvedDeployment) -> Observed | None:
    status = live.get("status")
    if not isinstance(status, dict):
        return None
    annotations = (live.get("metadata") or {}).get("annotations") or {}
    latest = str(annotations.get("mlp.dev/model-version") or declared.stable.version)
    previous = annotations.get("mlp.dev/stable-version") if annotations.get("mlp.dev/canary-version") else None
    traffic: dict[str, int] = {}
    components = status.get("components") or {}
    predictor = components.get("predictor") if isinstance(components, dict) else None
    for entry in (predictor or {}).get("traffic") or []:
        if not isinstance(entry, dict):
            continue
        percent = int(entry.get("percent") or 0)
        if entry.get("latestRevision"):
            key = latest
        elif previous is not None:
            key = str(previous)
        else:
            key = f"revision {entry.get('revisionName') or '?'}"
        traffic[key] = traffic.get(key, 0) + percent
    conditions = [
        {"type": str(c.get("type")), "status": str(c.get("status")), "message": str(c.get("message") or "")}
        for c in status.get("conditions") or []
        if isinstance(c, dict) and c.get("type") in CONDITIONS
    ]
    ready = next((c["status"] == "True" for c in conditions if c["type"] == "Ready"), None)
    messages = "; ".join(f"{c['type']}: {c['message']}" for c in conditions if c["status"] != "True" and c["message"])
    url = status.get("url")
    return Observed({k: v for k, v in traffic.items() if v}, ready, str(url) if url else None, conditions, messages)


def _local(live: Manifest, declared: ResolvedDeployment) -> Observed | None:
    status = live.get("status")
    if not isinstance(status, dict) or not isinstance(status.get("traffic"), dict):
        return None
    conditions = [
        {"type": str(c.get("type")), "status": str(c.get("status")), "message": str(c.get("message") or "")}
        for c in status.get("conditions") or []
        if isinstance(c, dict)
    ]
    ready = next((c["status"] == "True" for c in conditions if c["type"] == "Ready"), None)
    return Observed({str(k): int(v) for k, v in status["traffic"].items() if v}, ready, None, conditions)


def observe(live: Manifest, declared: Any) -> Observed | None:
    """What `live` (the model's primary object) serves; None when it does not say yet."""
    key = (live.get("apiVersion"), live.get("kind"))
    if key == ISVC:
        return _kserve(live, declared)
    if key == MODEL_DEPLOYMENT:
        return _local(live, declared)
    return None


PLUGIN = register(
    KindPlugin(
        "deployments",
        owned_kinds={"kubernetes": [("v1", "ServiceAccount"), ISVC], "local": [MODEL_DEPLOYMENT]},
        resolve=resolve_deployments,
        observe=observe,
        observes={"kubernetes": [ISVC], "local": [MODEL_DEPLOYMENT]},
    )
)
