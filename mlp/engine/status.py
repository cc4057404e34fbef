"""Observed status: what each deployment really serves next to what was declared."""

from __future__ import annotations

from dataclasses import dataclass

from mlp.engine.plugins import Observed, plugin
from mlp.objects import Manifest, ResolvedDeployment


@dataclass(frozen=True)
class ModelObservation:
    model: str
    declared: dict[str, int]
    observed: Observed | None

    @property
    def differs(self) -> bool:
        """True when the runtime reports a live split other than the declared one (shadows aside)."""
        if self.observed is None or not self.observed.traffic:
            return False
        declared = {k: v for k, v in self.declared.items() if "(shadow)" not in k}
        return declared != self.observed.traffic


def observe_deployments(deployments: dict[str, ResolvedDeployment], live: list[Manifest]) -> list[ModelObservation]:
    """One observation per deployed model, from its primary live object (named like the model)."""
    deployments_plugin = plugin("deployments")
    primary: dict[str, Manifest] = {}
    if deployments_plugin is not None and deployments_plugin.observe is not None:
        kinds = {k for ks in deployments_plugin.observes.values() for k in ks}
        for obj in live:
            if (obj.get("apiVersion"), obj.get("kind")) in kinds:
                primary.setdefault((obj.get("metadata") or {}).get("name", ""), obj)
    out = []
    for name, res in sorted(deployments.items()):
        found = primary.get(name)
        seen: Observed | None = None
        if found is not None and deployments_plugin is not None and deployments_plugin.observe is not None:
            seen = deployments_plugin.observe(found, res)
        out.append(ModelObservation(name, res.traffic(), seen))
    return out
