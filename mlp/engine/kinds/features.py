"""Feature views: an environment's materialization schedule, rendered for Kubernetes.

An environment with `spec.features.materialize` on a kubernetes target gets
- a ConfigMap `mlp-features-ENV` holding a minimal platform repository (the materialized
  views, their entities and an environment naming the online store), and
- a CronJob `mlp-features-ENV` running `mlp features materialize --repo /etc/mlp/repo --env ENV
  --view V...` on the declared schedule (`concurrencyPolicy: Forbid`: a run never overlaps the
  previous one; an interrupted run is simply redone, materialization being idempotent).

Validation (`mlp.specs.checks`) requires such an environment to use a Redis online store and
S3 sources, the only ones a pod can reach. On local targets `mlp up` runs the schedule itself
(`mlp.features.service.FeatureService.tick`), so nothing is rendered there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mlp import __version__
from mlp.engine.plugins import Emit, KindPlugin, register
from mlp.render.core import DEFAULT_SERVICE_ACCOUNT
from mlp.specs import SpecSet
from mlp.specs.models import Environment

IMAGE = f"mlp:{__version__}"  # no registry host: set materialize.image or a template override


def materialize_context(
    specs: SpecSet, env: Environment, namespace: str, service_account: str | None
) -> dict[str, Any] | None:
    cfg = env.spec.features
    if cfg is None or cfg.materialize is None:
        return None
    mat = cfg.materialize
    names = mat.views or sorted(n for n, v in specs.feature_views.items() if v.spec.online)
    views = [specs.feature_views[n] for n in names if n in specs.feature_views]
    entities = sorted({e for v in views for e in v.spec.entities})
    docs: list[dict[str, Any]] = [
        specs.entities[e].model_dump(mode="json", by_alias=True, exclude_none=True)
        for e in entities
        if e in specs.entities
    ]
    docs += [v.model_dump(mode="json", by_alias=True, exclude_none=True) for v in views]
    name = env.metadata.name
    environment = {
        "apiVersion": "mlp.dev/v1",
        "kind": "Environment",
        "metadata": {"name": name},
        "spec": {
            "target": env.spec.target.model_dump(mode="json", exclude_none=True),
            "features": {"onlineStore": cfg.onlineStore.model_dump(mode="json", exclude_none=True)},
        },
    }
    args = ["features", "materialize", "--repo", "/etc/mlp/repo", "--env", name, "--cache-dir", "/var/cache/mlp"]
    for v in views:
        args += ["--view", v.metadata.name]
    return {
        "resourceName": f"mlp-features-{name}"[:52].rstrip("-"),
        "schedule": mat.schedule,
        "image": mat.image or IMAGE,
        "args": args,
        "environment": name,
        "serviceAccountName": service_account,
        "files": {
            "features.yaml": "\n---\n".join(json.dumps(d, sort_keys=True) for d in docs) + "\n",
            "environment.yaml": json.dumps(environment, sort_keys=True) + "\n",
        },
        "labels": {"app.kubernetes.io/name": "mlp-features", "app.kubernetes.io/component": "materialization"},
    }


def _render(specs: SpecSet, environment: str, resolved: Mapping[str, Any], emit: Emit) -> None:
    env = specs.environments[environment]
    if env.spec.target.kind != "kubernetes":
        return
    namespace = env.spec.target.namespace or "default"
    service_account = env.spec.serviceAccount or (DEFAULT_SERVICE_ACCOUNT if env.spec.storageSecret else None)
    ctx = materialize_context(specs, env, namespace, service_account)
    if ctx is None:
        return
    env_ctx = {"name": environment, "namespace": namespace, "tier": env.spec.tier, "target": "kubernetes"}
    for template in ("features-configmap", "features-cronjob"):
        emit(f"kubernetes/{template}.yaml.j2", f"Environment.{environment}", {"env": env_ctx, "materialize": ctx})


PLUGIN = register(
    KindPlugin(
        "feature-views",
        # no owned_kinds: CronJobs are listed and pruned through the inventory once rendered, so an
        # environment without materialization never needs the right to list them
        render=_render,
    )
)
