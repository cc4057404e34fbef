"""Ownership stamping and content hashing of rendered objects.

Render stamps every object it emits (see `stamp`): the ownership labels of
`mlp.objects` (managed-by, environment, spec) and two annotations, the source
revision and a content hash. Stamping lives here, in render, and not in plan, so the
manifests `mlp render` prints are exactly what `mlp apply` sends: a user who pipes them
to `kubectl apply` still produces objects mlp recognises as its own.

The content hash covers the whole object except the two annotations themselves, so an
object whose content did not change keeps its hash across commits. The revision
annotation therefore means "the revision that last changed this object": plan ignores
it when comparing, so a new commit that leaves an object alone does not rewrite it.
"""

from __future__ import annotations

import copy

from mlp.objects import (
    ENV_LABEL,
    HASH_ANNOTATION,
    MANAGED_BY,
    MANAGED_BY_VALUE,
    PROVENANCE_ANNOTATIONS,
    REVISION_ANNOTATION,
    SPEC_LABEL,
    Manifest,
    canonical_json,
    content_hash,
)

__all__ = ["PROVENANCE_ANNOTATIONS", "canonical_json", "content_hash", "stamp"]


def stamp(obj: Manifest, *, environment: str, spec: str, revision: str) -> Manifest:
    """A copy of `obj` carrying mlp's ownership labels and provenance annotations.

    `spec` is "<Kind>.<name>" of the spec the object was rendered from (e.g. "Model.iris").
    """
    out = copy.deepcopy(obj)
    meta = out.setdefault("metadata", {})
    labels = meta.setdefault("labels", {})
    labels[MANAGED_BY] = MANAGED_BY_VALUE
    labels[ENV_LABEL] = environment
    labels[SPEC_LABEL] = spec
    annotations = meta.setdefault("annotations", {})
    for key in PROVENANCE_ANNOTATIONS:
        annotations.pop(key, None)
    digest = content_hash(out)
    annotations[REVISION_ANNOTATION] = revision
    annotations[HASH_ANNOTATION] = digest
    return out
