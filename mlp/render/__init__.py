"""mlp.render: one environment's declared world as Kubernetes-shaped manifests (pure).

`render(specs, environment, revision=..., templates=...)` returns stamped, sorted
manifests; `RenderError` is always located (`path:line: message`).
"""

from mlp.objects import KIND_RANK, kind_rank, sort_manifests
from mlp.render.core import render
from mlp.render.engine import RenderError, package_templates
from mlp.render.stamp import content_hash, stamp

__all__ = [
    "KIND_RANK",
    "RenderError",
    "content_hash",
    "kind_rank",
    "package_templates",
    "render",
    "sort_manifests",
    "stamp",
]
