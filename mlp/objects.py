"""The shared vocabulary at the bottom of mlp: what every layer speaks in, with no I/O.

- `Manifest` (a Kubernetes-shaped dict) and `ObjectRef` (its identity);
- ownership: the labels and annotations every object mlp writes carries, the field
  manager, and `content_hash` (the one hash of a rendered object);
- the kind registry: apply order, cluster-scoped kinds, what the package's own templates
  produce per target kind (kind plug-ins add theirs with `register_kinds`);
- typed objects that cross the render -> target seam: `ModelDeployment` with its `Route`s,
  parsed and validated once (`ModelDeployment.parse`), so the local target and the
  runtime never re-check or default a field on their own.

Nothing here imports another mlp module: the import-linter contract puts it below specs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

Manifest = dict[str, Any]

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "mlp"
ENV_LABEL = "mlp.dev/environment"
SPEC_LABEL = "mlp.dev/spec"  # "<kind>.<name>" of the spec the object was rendered from
REVISION_ANNOTATION = "mlp.dev/revision"  # source revision (commit SHA) it was rendered at
HASH_ANNOTATION = "mlp.dev/content-hash"  # sha256 of the rendered object before annotations
OWNERSHIP_LABELS = (MANAGED_BY, ENV_LABEL, SPEC_LABEL)
# Annotations that describe provenance, not content: outside the content hash and plan comparisons.
PROVENANCE_ANNOTATIONS = (REVISION_ANNOTATION, HASH_ANNOTATION)
FIELD_MANAGER = "mlp"  # server-side apply field manager of every write


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

    @property
    def kind_key(self) -> tuple[str, str]:
        return (self.api_version, self.kind)

    def __str__(self) -> str:
        ns = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind}/{ns}{self.name}"


def canonical_json(obj: Any) -> str:
    """Sorted-key, whitespace-free JSON: the byte form hashed and compared."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def content_hash(obj: Manifest) -> str:
    """sha256 of the object without its provenance annotations, as `sha256:<hex>`."""
    meta = obj.get("metadata") or {}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in PROVENANCE_ANNOTATIONS}
    meta = {k: v for k, v in meta.items() if k != "annotations"}
    if annotations:
        meta["annotations"] = annotations
    body = {**obj, "metadata": meta}
    return "sha256:" + hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def is_owned(obj: Manifest, environment: str) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return bool(labels.get(MANAGED_BY) == MANAGED_BY_VALUE and labels.get(ENV_LABEL) == environment)


# --- kind registry ----------------------------------------------------------------------------

# Apply order by kind (lower first): what others reference before what uses it, monitoring last.
KIND_RANK: dict[str, int] = {
    "Namespace": 0,
    "ServiceAccount": 1,
    "Secret": 2,
    "ConfigMap": 3,
    "Role": 4,
    "RoleBinding": 4,
    "Service": 5,
    "InferenceService": 6,
    "ModelDeployment": 6,
    "Deployment": 6,
    "CronJob": 6,
    "Job": 6,
    "PrometheusRule": 8,
    "ServiceMonitor": 8,
    "PodMonitor": 8,
}
DEFAULT_RANK = 7

# Kinds an override may add that live outside namespaces: render never gives them one.
CLUSTER_SCOPED = frozenset(
    {
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "PriorityClass",
        "StorageClass",
        "PersistentVolume",
        "ClusterServingRuntime",
        "ClusterStorageContainer",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
        "IngressClass",
        "RuntimeClass",
    }
)

KindKey = tuple[str, str]  # (apiVersion, kind)

# (apiVersion, kind) the package's templates can produce, per target kind (kind plug-ins register
# theirs: `mlp.engine.plugins.register`). Used only to adopt
# objects of an environment that has no inventory yet (upgrading from label-only ownership);
# afterwards the inventory plus what the current render produces decide what is listed.
_OWNED_KINDS: dict[str, list[KindKey]] = {"kubernetes": [], "local": []}


def register_kinds(target_kind: str, kinds: list[KindKey]) -> None:
    """A kind plug-in declares the kinds its package templates produce on `target_kind`."""
    known = _OWNED_KINDS.setdefault(target_kind, [])
    for k in kinds:
        if k not in known:
            known.append(k)


def owned_kinds(target_kind: str) -> list[KindKey]:
    return list(_OWNED_KINDS.get(target_kind, []))


def kind_rank(kind: str) -> int:
    return KIND_RANK.get(kind, DEFAULT_RANK)


def sort_manifests(objs: list[Manifest]) -> list[Manifest]:
    def key(o: Manifest) -> tuple[int, str, str, str]:
        meta = o.get("metadata") or {}
        return (kind_rank(o.get("kind", "")), o.get("kind", ""), meta.get("namespace") or "", meta.get("name", ""))

    return sorted(objs, key=key)


# --- typed objects across the render -> target seam --------------------------------------------

MODEL_DEPLOYMENT_API = ("mlp.dev/v1", "ModelDeployment")
ROLES = ("stable", "canary", "ab", "shadow")
SPLIT_ROLES = ("stable", "canary", "ab")  # share live traffic; a shadow's weight is a mirror percent
FRAMEWORKS = ("sklearn", "xgboost", "lightgbm", "onnx", "pytorch", "tensorflow", "custom")


class InvalidObject(ValueError):
    """A typed object's manifest is not what the contract says; the message is one located line."""


@dataclass(frozen=True)
class Route:
    """One routed version of a model: its artifact and its share of traffic."""

    version: str
    role: str
    weight: int
    uri: str = ""
    digest: str = ""


@dataclass(frozen=True)
class ModelDeployment:
    """The local runtime's contract (`mlp.dev/v1 ModelDeployment`, see `MODEL_DEPLOYMENT_EXAMPLE`).

    Validated once by `parse`: exactly one stable route, known roles, stable+canary+ab weights
    summing to 100, a known framework. Nothing downstream defaults a field.
    """

    name: str
    framework: str
    routes: tuple[Route, ...]
    model_class: str | None = None
    signature: dict[str, Any] = field(default_factory=dict)
    sticky_header: str | None = None
    max_batch_size: int | None = None
    max_latency_ms: float | None = None
    payload_sample_rate: float = 0.0
    replicas: int = 1

    @property
    def stable(self) -> Route:
        return next(r for r in self.routes if r.role == "stable")

    def split(self) -> dict[str, int]:
        """{version: percent} of live traffic (shadows excluded)."""
        return {r.version: r.weight for r in self.routes if r.role in SPLIT_ROLES and r.weight}

    @classmethod
    def parse(cls, obj: Manifest) -> ModelDeployment:
        """Check and type a ModelDeployment manifest; raises `InvalidObject`."""
        if not isinstance(obj, dict) or (obj.get("apiVersion"), obj.get("kind")) != MODEL_DEPLOYMENT_API:
            what = f"{obj.get('apiVersion')}/{obj.get('kind')}" if isinstance(obj, dict) else type(obj).__name__
            raise InvalidObject(f"expected {'/'.join(MODEL_DEPLOYMENT_API)}, not {what}")
        meta = obj.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        if not isinstance(name, str) or not name:
            raise InvalidObject("ModelDeployment without metadata.name")
        where = f"ModelDeployment/{name}"
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            raise InvalidObject(f"{where}: spec must be a mapping")
        framework = spec.get("framework")
        if framework not in FRAMEWORKS:
            raise InvalidObject(f"{where}: spec.framework must be one of {', '.join(FRAMEWORKS)}, not {framework!r}")
        raw = spec.get("routes")
        if not isinstance(raw, list) or not raw:
            raise InvalidObject(f"{where}: spec.routes must list at least the stable version")
        routes: list[Route] = []
        for i, r in enumerate(raw):
            if not isinstance(r, dict) or r.get("role") not in ROLES:
                raise InvalidObject(f"{where}: spec.routes[{i}]: role must be one of {', '.join(ROLES)}")
            weight = r.get("weight", 0)
            if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
                raise InvalidObject(f"{where}: spec.routes[{i}].weight must be an integer 0..100")
            if r.get("version") is None:
                raise InvalidObject(f"{where}: spec.routes[{i}].version is required")
            routes.append(
                Route(str(r["version"]), r["role"], weight, str(r.get("uri") or ""), str(r.get("digest") or ""))
            )
        stables = sum(1 for r in routes if r.role == "stable")
        if stables != 1:
            raise InvalidObject(f"{where}: exactly one route must have role stable, not {stables}")
        total = sum(r.weight for r in routes if r.role in SPLIT_ROLES)
        if total != 100:
            raise InvalidObject(f"{where}: stable+canary+ab weights must sum to 100, not {total}")
        batching = spec.get("batching") or {}
        sticky = spec.get("sticky") or {}
        payload = spec.get("payloadLog") or {}
        resources = spec.get("resources") or {}
        return cls(
            name=name,
            framework=framework,
            routes=tuple(routes),
            model_class=spec.get("modelClass"),
            signature=dict(spec.get("signature") or {}),
            sticky_header=sticky.get("header") if isinstance(sticky, dict) else None,
            max_batch_size=batching.get("maxBatchSize") if batching else None,
            max_latency_ms=batching.get("maxLatencyMs") if batching else None,
            payload_sample_rate=float(payload.get("sampleRate") or 0.0),
            replicas=int(resources.get("replicas") or 1),
        )


@dataclass(frozen=True)
class ResolvedDeployment:
    """One deployment of one environment, resolved once (the engine's resolve stage): which versions
    serve which share. Render, status and policy read the split from here and nowhere else."""

    model: str
    routes: tuple[Route, ...]
    canary_steps: tuple[int, ...] = ()
    sticky_header: str | None = None

    @property
    def stable(self) -> Route:
        return next(r for r in self.routes if r.role == "stable")

    def route(self, role: str) -> Route | None:
        return next((r for r in self.routes if r.role == role), None)

    def traffic(self) -> dict[str, int]:
        """{"<version>": percent}; a shadow is "<version> (shadow)" with its mirror percent."""
        out = {r.version: r.weight for r in self.routes if r.role in SPLIT_ROLES and r.weight}
        out.update({f"{r.version} (shadow)": r.weight for r in self.routes if r.role == "shadow"})
        return out


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
