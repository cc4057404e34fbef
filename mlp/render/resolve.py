"""Resolve one deployment: its routed versions and the traffic split, computed once (pure).

The engine's resolve stage calls `resolve_deployments`; render, status and policy read the
result (`mlp.objects.ResolvedDeployment`) instead of recomputing `100 - canary` on their own.
A rollout position (progressive delivery) will override a canary's weight here, before render.
"""

from __future__ import annotations

from mlp.objects import ResolvedDeployment, Route
from mlp.render.engine import RenderError
from mlp.specs import SpecSet
from mlp.specs.models import Deployment, Model


def _route(model: Model, number: int, role: str, weight: int, where: str, path: str | None) -> Route:
    version = model.spec.version(number)
    if version is None:
        raise RenderError(f"{where}: model {model.metadata.name!r} has no version {number}", path=path)
    return Route(str(version.version), role, weight, version.uri, version.digest)


def resolve_deployment(specs: SpecSet, environment: str, name: str, dep: Deployment) -> ResolvedDeployment:
    where = f"Environment/{environment}"
    src = specs.sources.get(("Environment", environment))
    path = src.path if src else None
    model = specs.models.get(name)
    if model is None:
        raise RenderError(f"{where}: deploys unknown model {name!r}", path=path)
    stable_weight = 100
    extra: list[Route] = []
    if dep.canary is not None:
        stable_weight -= dep.canary.current
        extra.append(_route(model, dep.canary.version, "canary", dep.canary.current, where, path))
    if dep.abTest is not None:
        stable_weight -= dep.abTest.share
        extra.append(_route(model, dep.abTest.version, "ab", dep.abTest.share, where, path))
    if dep.shadow is not None:
        extra.append(_route(model, dep.shadow.version, "shadow", dep.shadow.percent, where, path))
    routes = (_route(model, dep.version, "stable", stable_weight, where, path), *extra)
    return ResolvedDeployment(
        model=name,
        routes=routes,
        canary_steps=tuple(dep.canary.steps) if dep.canary else (),
        sticky_header=dep.abTest.stickyHeader if dep.abTest else None,
    )


def resolve_deployments(specs: SpecSet, environment: str) -> dict[str, ResolvedDeployment]:
    """Every deployment of `environment`, by model name."""
    env = specs.environments[environment]
    return {
        name: resolve_deployment(specs, environment, name, dep) for name, dep in sorted(env.spec.deployments.items())
    }
