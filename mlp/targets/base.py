"""Compatibility names for the targets: the vocabulary lives in `mlp.objects`, the `Target`
port in `mlp.plan.target` (owned by its consumer). Edges import from here or from there."""

from mlp.objects import (
    ENV_LABEL,
    FIELD_MANAGER,
    HASH_ANNOTATION,
    MANAGED_BY,
    MANAGED_BY_VALUE,
    MODEL_DEPLOYMENT_EXAMPLE,
    OWNERSHIP_LABELS,
    REVISION_ANNOTATION,
    SPEC_LABEL,
    Manifest,
    ObjectRef,
)
from mlp.plan.target import ApplyResult, Target, TargetError

__all__ = [
    "ENV_LABEL",
    "FIELD_MANAGER",
    "HASH_ANNOTATION",
    "MANAGED_BY",
    "MANAGED_BY_VALUE",
    "MODEL_DEPLOYMENT_EXAMPLE",
    "OWNERSHIP_LABELS",
    "REVISION_ANNOTATION",
    "SPEC_LABEL",
    "ApplyResult",
    "Manifest",
    "ObjectRef",
    "Target",
    "TargetError",
]
