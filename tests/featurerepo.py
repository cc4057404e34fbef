"""A small platform repository with one entity and feature views, for the feature-store tests."""

from __future__ import annotations

from pathlib import Path

ENTITY = """apiVersion: mlp.dev/v1
kind: Entity
metadata: {name: customer}
spec: {joinKeys: [customer_id], valueType: long}
"""

VIEW = """---
apiVersion: mlp.dev/v1
kind: FeatureView
metadata: {name: %(name)s}
spec:
  entities: [customer]
  source: {kind: %(kind)s, %(where)s, timestampField: ts}
%(ttl)s  online: %(online)s
  features:
%(features)s
"""

ENV = """apiVersion: mlp.dev/v1
kind: Environment
metadata: {name: dev}
spec:
  target: {kind: local}
%(extra)s"""


def write_repo(
    root: Path,
    views: list[dict[str, object]],
    *,
    env_extra: str = "",
    models: str = "",
) -> Path:
    """`views`: dicts with name, kind, path (or uri or query), features {name: type}, ttl, online."""
    (root / "specs").mkdir(parents=True, exist_ok=True)
    (root / "environments").mkdir(parents=True, exist_ok=True)
    text = ENTITY
    for v in views:
        feats = v.get("features") or {"x": "double"}
        assert isinstance(feats, dict)
        where = (
            f"query: {v['query']!r}"
            if v.get("query")
            else (f"uri: {v['uri']}" if v.get("uri") else f"path: {v['path']}")
        )
        text += VIEW % {
            "name": v["name"],
            "kind": v.get("kind", "parquet"),
            "where": where,
            "ttl": f"  ttl: {v['ttl']}\n" if v.get("ttl") else "",
            "online": "true" if v.get("online", True) else "false",
            "features": "\n".join(f"    - {{name: {n}, type: {t}}}" for n, t in feats.items()),
        }
    (root / "specs" / "features.yaml").write_text(text)
    if models:
        (root / "specs" / "models.yaml").write_text(models)
    (root / "environments" / "dev.yaml").write_text(ENV % {"extra": env_extra})
    return root
