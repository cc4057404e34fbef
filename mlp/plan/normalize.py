"""Normalization: reduce a desired and a live object to the fields mlp decides.

A live object carries much that mlp never wrote: `status`, server bookkeeping in
`metadata` (uid, resourceVersion, managedFields, ...), fields defaulted by the API server
or by admission webhooks (KServe fills in `protocolVersion`, container names, resources),
and labels or annotations other tools add. Comparing those would make every object look
changed forever. So the live side is *projected onto the shape of the desired object*:
only keys that the desired object sets survive, recursively. What remains differs from
the desired object exactly where a field mlp sets has another value on the cluster.

Lists follow server-side apply's list semantics:
- a list whose desired items are all mappings with a `name` (containers, env, ports,
  volumes) is associative: items match by name, and live items with a name mlp does not
  declare belong to someone else (an injected sidecar) and are ignored;
- any other list is atomic: it matches by position, and extra live items are a difference,
  because applying mlp's list would replace them.

Kubernetes quantities compare by value, so `cpu: 1` equals `"1"` and `"1000m"`.

Projection alone cannot see a field the repository *stopped* setting (it is absent from
the desired shape). Two things catch that: the content-hash annotation stays in the
comparison (only the revision annotation is dropped), so any change to the rendered object
shows as an update; and `removed_fields` reads the live object's `managedFields` entry of
field manager `mlp` (server-side apply), so fields mlp owns but no longer declares show
as removals, exactly what applying will delete.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from mlp.objects import REVISION_ANNOTATION, Manifest
from mlp.specs import units

# metadata fields the API server owns; never part of a comparison.
SERVER_METADATA = (
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)
# Top-level fields written by controllers, never by mlp.
SERVER_TOP_LEVEL = ("status",)


def _drop_none(obj: Any) -> Any:
    """Remove null values from mappings: a null in a desired object means "not set"."""
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_drop_none(v) for v in obj]
    return obj


def normalize(obj: Manifest) -> Manifest:
    """A copy of `obj` without server-owned fields, the revision annotation or nulls."""
    # Dropped before copying: `status` and `managedFields` are most of a live object. `_drop_none`
    # builds new containers all the way down (the leaves are immutable), so the result is a deep copy.
    src = {k: v for k, v in obj.items() if k not in SERVER_TOP_LEVEL}
    if isinstance(src.get("metadata"), dict):
        src["metadata"] = {k: v for k, v in src["metadata"].items() if k not in SERVER_METADATA}
    out: Manifest = _drop_none(src)
    meta = out.get("metadata")
    if isinstance(meta, dict):
        annotations = meta.get("annotations")
        if isinstance(annotations, dict):
            annotations.pop(REVISION_ANNOTATION, None)
            if not annotations:
                meta.pop("annotations", None)
        if not meta.get("labels"):
            meta.pop("labels", None)
    return out


def is_associative(items: list[Any]) -> bool:
    """True when a desired list merges by `name` (server-side apply's `listMapKeys: [name]`)."""
    return bool(items) and all(isinstance(i, dict) and "name" in i for i in items)


def project(live: Any, desired: Any) -> Any:
    """The part of `live` that has the shape of `desired` (see the module docstring)."""
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return live
        return {k: project(live[k], v) for k, v in desired.items() if k in live}
    if isinstance(desired, list):
        if not isinstance(live, list):
            return live
        if is_associative(desired):
            by_name = {i.get("name"): i for i in live if isinstance(i, dict)}
            wanted = {d["name"]: d for d in desired}
            # keep the live order of the items mlp declares; ignore items it does not
            return [
                project(by_name[n], wanted[n])
                for n in [i.get("name") for i in live if isinstance(i, dict)]
                if n in wanted
            ]
        return [project(lv, desired[i]) if i < len(desired) else lv for i, lv in enumerate(live)]
    return live


def parse_quantity(value: Any) -> Decimal | None:
    """The numeric value of a Kubernetes quantity ("500m", "2Gi", 1, "1e3"), or None if not one.

    The same parser validation uses (`mlp.specs.units.parse_quantity`, the official client's)."""
    try:
        return units.parse_quantity(value)
    except ValueError:
        return None


def _is_quantity_path(path: tuple[str, ...]) -> bool:
    return len(path) >= 2 and path[-2] in ("requests", "limits")


def values_equal(a: Any, b: Any, path: tuple[str, ...] = ()) -> bool:
    """Leaf equality; quantities under `requests`/`limits` compare by value."""
    if a == b and type(a) is type(b):
        return True
    if _is_quantity_path(path):
        qa, qb = parse_quantity(a), parse_quantity(b)
        return qa is not None and qa == qb
    # 1 and 1.0 are the same JSON number
    if (
        isinstance(a, int | float)
        and isinstance(b, int | float)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        return a == b
    return False
