"""Kind plug-ins: how a spec kind becomes runtime objects, registered in one place.

A plug-in says, for the spec kind it handles (`Model` deployments today; monitors,
rollouts, feature views and experiments next):

- `resolve(specs, environment) -> {name: typed value}`: what is computed once per step
  before render (a deployment's routes and split; a rollout's position will be added here);
- `render(specs, environment, resolved, emit)`: which templates it renders, per target kind,
  through `emit(template, spec, context)` (the same sandboxed, stamped path as the package's
  own templates; the built-in kinds are still rendered by `mlp.render.render`);
- `owned_kinds`: per target kind, the (apiVersion, kind) its package templates produce
  (registered with `mlp.objects.register_kinds`, used to adopt objects of an environment that
  has no inventory yet);
- `health(live) -> Health | None` and `observe(live, resolved) -> Observed | None`: how a
  live object of its kinds is judged and what it really serves.

    register(KindPlugin("monitors", owned_kinds={"kubernetes": [("v1", "ConfigMap")]}, ...))

Adding a kind touches one module under `mlp/engine/kinds/` plus its templates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mlp.objects import KindKey, Manifest, register_kinds
from mlp.plan.health import Health
from mlp.specs import SpecSet

Emit = Callable[[str, str, dict[str, Any]], None]  # (template, "<Kind>.<name>", context)


@dataclass(frozen=True)
class Observed:
    """What a live object really serves, next to what was declared."""

    traffic: dict[str, int]  # {"<version>": percent} as the runtime reports it
    ready: bool | None = None
    url: str | None = None
    conditions: list[dict[str, str]] = field(default_factory=list)
    message: str = ""


@dataclass(frozen=True)
class KindPlugin:
    name: str
    owned_kinds: Mapping[str, list[KindKey]] = field(default_factory=dict)
    resolve: Callable[[SpecSet, str], Mapping[str, Any]] | None = None
    render: Callable[[SpecSet, str, Mapping[str, Any], Emit], None] | None = None
    health: Callable[[Manifest], Health | None] | None = None
    observe: Callable[[Manifest, Any], Observed | None] | None = None
    # which live objects `observe` reads: (apiVersion, kind) per target kind
    observes: Mapping[str, list[KindKey]] = field(default_factory=dict)


_PLUGINS: dict[str, KindPlugin] = {}


def register(plugin: KindPlugin) -> KindPlugin:
    """Add (or replace, by name) a kind plug-in."""
    _PLUGINS[plugin.name] = plugin
    for target_kind, kinds in plugin.owned_kinds.items():
        register_kinds(target_kind, kinds)
    return plugin


def plugins() -> list[KindPlugin]:
    return list(_PLUGINS.values())


def plugin(name: str) -> KindPlugin | None:
    return _PLUGINS.get(name)
