"""Health assessment of live objects: pure functions of an object's status.

Statuses follow Argo CD's gitops-engine, ordered from best to worst:
Healthy < Progressing < Missing < Degraded < Unknown. `worst()` aggregates an environment
(or a model's objects) into one status; the controller reports it.

- InferenceService (KServe v1beta1): `Ready` condition True -> Healthy. A failed model load
  (`status.modelStatus.transitionStatus` BlockedByFailedLoad / InvalidSpec, or a
  `PredictorReady`/`Ready` condition False with a failure reason) -> Degraded. Otherwise,
  including "no status yet" and a status older than the spec (`observedGeneration`),
  -> Progressing.
- Deployment: the `kubectl rollout status` rules: spec newer than status, fewer updated or
  available replicas than wanted, or old replicas still running -> Progressing; the
  `Progressing` condition with reason ProgressDeadlineExceeded -> Degraded.
- ModelDeployment (local runtime) and any other object with a `Ready` condition: True ->
  Healthy, False -> Degraded, Unknown -> Progressing.
- Objects without a status model (ConfigMap, ServiceAccount, CronJob, PrometheusRule, ...):
  Healthy when they exist.
- No object at all -> Missing. An object being deleted -> Progressing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from mlp.objects import Manifest


class HealthStatus(str, Enum):
    HEALTHY = "Healthy"
    PROGRESSING = "Progressing"
    MISSING = "Missing"
    DEGRADED = "Degraded"
    UNKNOWN = "Unknown"

    @property
    def severity(self) -> int:
        return _ORDER.index(self)


_ORDER = [
    HealthStatus.HEALTHY,
    HealthStatus.PROGRESSING,
    HealthStatus.MISSING,
    HealthStatus.DEGRADED,
    HealthStatus.UNKNOWN,
]


@dataclass(frozen=True)
class Health:
    status: HealthStatus
    message: str = ""


def worst(statuses: list[HealthStatus] | list[Health]) -> HealthStatus:
    """The worst of several statuses; Healthy for none."""
    values = [s.status if isinstance(s, Health) else s for s in statuses]
    return max(values, key=lambda s: s.severity, default=HealthStatus.HEALTHY)


def _conditions(obj: Manifest) -> dict[str, dict[str, Any]]:
    status = obj.get("status") or {}
    conds = status.get("conditions") or []
    if not isinstance(conds, list):
        raise TypeError(f"status.conditions is a {type(conds).__name__}, not a list")
    return {c.get("type", ""): c for c in conds if isinstance(c, dict)}


def _cond_text(cond: dict[str, Any]) -> str:
    return ": ".join(x for x in (cond.get("reason"), cond.get("message")) if x) or "not ready"


_ISVC_FAILED_TRANSITIONS = {"BlockedByFailedLoad", "InvalidSpec"}
# Condition reasons that mean "will not get better by waiting".
_FAILURE_REASONS = {
    "RevisionFailed",
    "RevisionMissing",
    "ContainerMissing",
    "ExitCode",
    "InvalidSpec",
    "BlockedByFailedLoad",
    "ModelLoadFailed",
    "ServerlessModeRejected",
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "ProgressDeadlineExceeded",
}


def _stale(obj: Manifest) -> bool:
    gen = (obj.get("metadata") or {}).get("generation")
    observed = (obj.get("status") or {}).get("observedGeneration")
    return isinstance(gen, int) and isinstance(observed, int) and observed < gen


def _inference_service(obj: Manifest) -> Health:
    status = obj.get("status") or {}
    if not status:
        return Health(HealthStatus.PROGRESSING, "waiting for the KServe controller to report status")
    model_status = status.get("modelStatus") or {}
    transition = model_status.get("transitionStatus")
    if transition in _ISVC_FAILED_TRANSITIONS:
        failure = model_status.get("lastFailureInfo") or {}
        return Health(
            HealthStatus.DEGRADED,
            f"{transition}: {failure.get('message') or failure.get('reason') or 'model failed to load'}",
        )
    conds = _conditions(obj)
    for ctype in ("PredictorReady", "Ready"):
        cond = conds.get(ctype)
        if cond and cond.get("status") == "False" and cond.get("reason") in _FAILURE_REASONS:
            return Health(HealthStatus.DEGRADED, f"{ctype}: {_cond_text(cond)}")
    if _stale(obj):
        return Health(HealthStatus.PROGRESSING, "the controller has not yet observed the latest spec")
    ready = conds.get("Ready")
    if ready and ready.get("status") == "True":
        if transition == "InProgress":
            return Health(HealthStatus.PROGRESSING, "a new model version is rolling out")
        return Health(HealthStatus.HEALTHY)
    if ready:
        return Health(HealthStatus.PROGRESSING, _cond_text(ready))
    return Health(HealthStatus.PROGRESSING, "not ready yet")


def _deployment(obj: Manifest) -> Health:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if spec.get("paused"):
        return Health(HealthStatus.PROGRESSING, "rollout is paused")
    if _stale(obj):
        return Health(HealthStatus.PROGRESSING, "waiting for the rollout to be observed")
    cond = _conditions(obj).get("Progressing")
    if cond and cond.get("reason") == "ProgressDeadlineExceeded":
        return Health(HealthStatus.DEGRADED, _cond_text(cond))
    want = spec.get("replicas", 1)
    updated = status.get("updatedReplicas", 0)
    total = status.get("replicas", 0)
    available = status.get("availableReplicas", 0)
    if updated < want:
        return Health(HealthStatus.PROGRESSING, f"{updated} of {want} replicas updated")
    if total > updated:
        return Health(HealthStatus.PROGRESSING, f"{total - updated} old replicas pending termination")
    if available < updated:
        return Health(HealthStatus.PROGRESSING, f"{available} of {updated} updated replicas available")
    return Health(HealthStatus.HEALTHY)


def _ready_condition(obj: Manifest) -> Health:
    ready = _conditions(obj).get("Ready")
    if ready is None:
        return Health(HealthStatus.HEALTHY)
    if ready.get("status") == "True":
        return Health(HealthStatus.HEALTHY)
    if ready.get("status") == "False":
        return Health(HealthStatus.DEGRADED, _cond_text(ready))
    return Health(HealthStatus.PROGRESSING, _cond_text(ready))


def assess(obj: Manifest | None) -> Health:
    """Health of one live object (None: the object does not exist)."""
    if obj is None:
        return Health(HealthStatus.MISSING, "not found")
    if (obj.get("metadata") or {}).get("deletionTimestamp"):
        return Health(HealthStatus.PROGRESSING, "being deleted")
    kind = obj.get("kind")
    try:
        if kind == "InferenceService":
            return _inference_service(obj)
        if kind in ("Deployment", "StatefulSet"):
            return _deployment(obj)
        if kind == "ModelDeployment" and not obj.get("status"):
            return Health(HealthStatus.PROGRESSING, "waiting for the local runtime to report status")
        return _ready_condition(obj)
    except (AttributeError, TypeError) as exc:  # a status of an unexpected shape
        return Health(HealthStatus.UNKNOWN, f"unreadable status: {exc}")
