"""mlp.engine: the one reconcile pipeline (`reconcile`) and the kind plug-ins it runs.

See `mlp.engine.core` for the stages and `mlp.engine.plugins` for the registration API.
"""

from mlp.engine import kinds as _kinds  # registers the built-in kind plug-ins
from mlp.engine.core import (
    Decision,
    Policy,
    Result,
    converge,
    desired,
    kinds_stage,
    list_stage,
    load_stage,
    preview,
    reconcile,
    render_stage,
    resolve_stage,
    versions_stage,
)
from mlp.engine.plugins import KindPlugin, Observed, plugins, register
from mlp.engine.status import ModelObservation, observe_deployments

__all__ = [
    "Decision",
    "KindPlugin",
    "ModelObservation",
    "Observed",
    "Policy",
    "Result",
    "_kinds",
    "converge",
    "desired",
    "kinds_stage",
    "list_stage",
    "load_stage",
    "observe_deployments",
    "plugins",
    "preview",
    "reconcile",
    "register",
    "render_stage",
    "resolve_stage",
    "versions_stage",
]
