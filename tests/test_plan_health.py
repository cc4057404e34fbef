"""Health assessment: InferenceService conditions, Deployment rollout status, ordering."""

from __future__ import annotations

from typing import Any

from mlp.plan.health import Health, HealthStatus, assess, worst


def isvc(status: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "iris", "generation": generation},
        "spec": {},
    }
    if status is not None:
        obj["status"] = status
    return obj


def cond(ctype: str, status: str, reason: str = "", message: str = "") -> dict[str, str]:
    return {"type": ctype, "status": status, "reason": reason, "message": message}


def test_inference_service_states() -> None:
    assert assess(None).status is HealthStatus.MISSING
    assert assess(isvc(None)).status is HealthStatus.PROGRESSING
    ready = {
        "conditions": [cond("PredictorReady", "True"), cond("Ready", "True")],
        "observedGeneration": 1,
        "modelStatus": {"transitionStatus": "UpToDate"},
    }
    assert assess(isvc(ready)) == Health(HealthStatus.HEALTHY)
    assert assess(isvc(ready, generation=2)).status is HealthStatus.PROGRESSING  # spec not observed yet
    rolling = {**ready, "modelStatus": {"transitionStatus": "InProgress"}}
    assert assess(isvc(rolling)).status is HealthStatus.PROGRESSING
    waiting = {"conditions": [cond("PredictorReady", "Unknown", "RevisionMissing"), cond("Ready", "Unknown")]}
    assert assess(isvc(waiting)).status is HealthStatus.PROGRESSING
    failed = {
        "conditions": [cond("PredictorReady", "False", "RevisionFailed", "Container failed"), cond("Ready", "False")]
    }
    health = assess(isvc(failed))
    assert health.status is HealthStatus.DEGRADED and "RevisionFailed: Container failed" in health.message
    load_failed = {
        "conditions": [cond("Ready", "True")],
        "modelStatus": {
            "transitionStatus": "BlockedByFailedLoad",
            "lastFailureInfo": {"reason": "ModelLoadFailed", "message": "bad digest"},
        },
    }
    health = assess(isvc(load_failed))
    assert health.status is HealthStatus.DEGRADED and "bad digest" in health.message


def deployment(want: int, **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "m", "generation": 2},
        "spec": {"replicas": want},
        "status": {"observedGeneration": 2, **status},
    }


def test_deployment_rollout_rules() -> None:
    assert assess(deployment(2, replicas=2, updatedReplicas=2, availableReplicas=2)).status is HealthStatus.HEALTHY
    assert "1 of 2 replicas updated" in assess(deployment(2, replicas=2, updatedReplicas=1)).message
    assert "old replicas" in assess(deployment(2, replicas=3, updatedReplicas=2, availableReplicas=2)).message
    assert assess(deployment(2, replicas=2, updatedReplicas=2, availableReplicas=1)).status is HealthStatus.PROGRESSING
    stuck = deployment(
        2,
        replicas=2,
        updatedReplicas=1,
        conditions=[cond("Progressing", "False", "ProgressDeadlineExceeded", "timed out")],
    )
    assert assess(stuck).status is HealthStatus.DEGRADED
    stale = deployment(2, replicas=2, updatedReplicas=2, availableReplicas=2)
    stale["status"]["observedGeneration"] = 1
    assert assess(stale).status is HealthStatus.PROGRESSING


def test_other_kinds_and_ordering() -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
    assert assess(cm).status is HealthStatus.HEALTHY
    md = {"apiVersion": "mlp.dev/v1", "kind": "ModelDeployment", "metadata": {"name": "m"}}
    assert assess(md).status is HealthStatus.PROGRESSING
    md["status"] = {"conditions": [cond("Ready", "False", "LoadFailed", "digest mismatch")]}
    assert assess(md).status is HealthStatus.DEGRADED
    gone = {**cm, "metadata": {"name": "c", "deletionTimestamp": "2026-01-01T00:00:00Z"}}
    assert assess(gone).status is HealthStatus.PROGRESSING
    weird = {"apiVersion": "v1", "kind": "InferenceService", "metadata": {}, "status": {"conditions": "nope"}}
    assert assess(weird).status is HealthStatus.UNKNOWN
    assert worst([HealthStatus.HEALTHY, HealthStatus.DEGRADED, HealthStatus.PROGRESSING]) is HealthStatus.DEGRADED
    assert worst([HealthStatus.MISSING, HealthStatus.UNKNOWN]) is HealthStatus.UNKNOWN
    assert worst([Health(HealthStatus.HEALTHY), Health(HealthStatus.MISSING)]) is HealthStatus.MISSING
    assert worst([]) is HealthStatus.HEALTHY
