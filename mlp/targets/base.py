"""The `Target` protocol: the one seam between a plan and the place it runs.

A target stores Kubernetes-shaped objects (plain dicts with apiVersion, kind, metadata,
spec). The kubernetes target talks to an API server; the local target hands the same
objects to the embedded runtime. Everything above this protocol (plan, apply, the
controller) is written once against it.

Ownership: every object mlp writes carries the labels in `OWNERSHIP_LABELS`; `list_owned`
returns only objects carrying `app.kubernetes.io/managed-by=mlp` and the environment
label, so prune can never touch what mlp did not create.

Two optional methods a long-running caller (the controller) uses when a target has them:
`owned_versions(environment) -> {ObjectRef: resourceVersion}`, the cheap way to see that
nothing changed, and `forget(environment)`, to drop whatever the target cached of that
environment's objects once a step is over. The kubernetes target has both.

Objects for the local runtime: render emits, per deployed model, one
`mlp.dev/v1` `ModelDeployment` (see `MODEL_DEPLOYMENT_EXAMPLE`) instead of a KServe
InferenceService, because the runtime needs every routed version (stable, canary,
A/B, shadow) with its artifact digest at once, which one InferenceService cannot say.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Manifest = dict[str, Any]

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "mlp"
ENV_LABEL = "mlp.dev/environment"
SPEC_LABEL = "mlp.dev/spec"  # "<kind>.<name>" of the spec the object was rendered from
REVISION_ANNOTATION = "mlp.dev/revision"  # source revision (commit SHA) it was rendered at
HASH_ANNOTATION = "mlp.dev/content-hash"  # sha256 of the rendered object before annotations
OWNERSHIP_LABELS = (MANAGED_BY, ENV_LABEL, SPEC_LABEL)


@dataclass(frozen=True, order=True)
class ObjectRef:
    """Identity of one object in a target."""

    api_version: str
    kind: str
    namespace: str
    name: str

    @classmethod
    def of(cls, obj: Manifest) -> ObjectRef:
        meta = obj.get("metadata") or {}
        return cls(obj["apiVersion"], obj["kind"], meta.get("namespace") or "", meta["name"])

    def __str__(self) -> str:
        ns = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind}/{ns}{self.name}"


@dataclass
class ApplyResult:
    """What a target did with one object: `created`, `configured` or `unchanged`."""

    ref: ObjectRef
    action: str
    live: Manifest = field(default_factory=dict)


class TargetError(Exception):
    """A target refused or could not do what was asked; the message is one clear line."""

    def __init__(self, message: str, *, ref: ObjectRef | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.ref = ref
        self.status = status


@runtime_checkable
class Target(Protocol):
    """Where an environment's objects live."""

    name: str

    def list_owned(self, environment: str, kinds: list[tuple[str, str]] | None = None) -> list[Manifest]:
        """Objects labelled as owned by mlp for `environment`; `kinds` is (apiVersion, kind) pairs."""
        ...

    def apply(self, obj: Manifest, *, dry_run: bool = False, force_conflicts: bool = False) -> ApplyResult:
        """Create or update `obj` (server-side apply semantics, field manager `mlp`)."""
        ...

    def delete(self, ref: ObjectRef, *, dry_run: bool = False) -> None:
        """Delete one object; deleting a missing object is not an error."""
        ...


MODEL_DEPLOYMENT_EXAMPLE: Manifest = {
    "apiVersion": "mlp.dev/v1",
    "kind": "ModelDeployment",
    "metadata": {
        "name": "iris",
        "namespace": "local",
        "labels": {MANAGED_BY: MANAGED_BY_VALUE, ENV_LABEL: "dev", SPEC_LABEL: "Model.iris"},
        "annotations": {REVISION_ANNOTATION: "<sha>", HASH_ANNOTATION: "sha256:<hex>"},
    },
    "spec": {
        "model": "iris",
        "framework": "sklearn",  # sklearn | xgboost | lightgbm | onnx | pytorch | tensorflow | custom
        "modelClass": None,  # for framework custom: "package.module:KServeModelSubclass"
        "signature": {
            "inputs": [{"name": "sepal_length", "type": "float"}],
            "outputs": [{"name": "species", "type": "int"}],
        },
        # roles: stable (exactly one), canary, ab, shadow; weights of stable+canary+ab sum to 100;
        # a shadow's weight is the percent of requests mirrored to it.
        "routes": [
            {
                "version": 1,
                "uri": "s3://models/iris/1/model.joblib",
                "digest": "sha256:<hex>",
                "role": "stable",
                "weight": 90,
            },
            {
                "version": 2,
                "uri": "s3://models/iris/2/model.joblib",
                "digest": "sha256:<hex>",
                "role": "canary",
                "weight": 10,
            },
        ],
        "sticky": {"header": "x-mlp-key"},  # or null: requests with the same key go to the same version
        "batching": {"maxBatchSize": 32, "maxLatencyMs": 1},
        "payloadLog": {"sampleRate": 1.0},
        "resources": {"replicas": 1},
    },
}
