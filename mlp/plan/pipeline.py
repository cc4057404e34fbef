"""From a loaded snapshot to a plan: the guard rails every caller needs, in one place.

`desired_state` refuses a snapshot that failed validation (`PlanRefused`): a broken
commit must never produce a plan, so the last good state stays applied. `kinds_to_list`
says which kinds a target must list for the plan to see everything mlp may own, so a
kind that is no longer rendered at all can still be pruned.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from mlp.plan.core import Plan, PlanRefused, make_plan
from mlp.render import MANAGED_KINDS, render
from mlp.specs import LoadResult
from mlp.targets.base import Manifest


def desired_state(
    result: LoadResult, environment: str, *, revision: str | None = None, templates: Mapping[str, str] | None = None
) -> list[Manifest]:
    """Render `environment` from a load result; raises `PlanRefused` if the load had errors
    and `RenderError` if rendering fails."""
    if not result.ok:
        errors = result.errors
        raise PlanRefused(
            f"refusing to plan from specs that failed validation ({len(errors)} errors; first: {errors[0]})"
        )
    return render(result.specs, environment, revision=revision, templates=templates)


def kinds_to_list(target_kind: str, desired: Iterable[Manifest] = ()) -> list[tuple[str, str]]:
    """(apiVersion, kind) pairs to list: everything the package renders for the target kind,
    plus any kind an override added."""
    kinds = list(MANAGED_KINDS.get(target_kind, []))
    for obj in desired:
        pair = (obj["apiVersion"], obj["kind"])
        if pair not in kinds:
            kinds.append(pair)
    return kinds


def plan_environment(
    result: LoadResult,
    environment: str,
    live: Iterable[Manifest],
    *,
    revision: str | None = None,
    templates: Mapping[str, str] | None = None,
    prune: bool = False,
    allow_empty: bool = False,
) -> Plan:
    """`desired_state` then `make_plan`."""
    desired = desired_state(result, environment, revision=revision, templates=templates)
    rev = revision if revision is not None else result.specs.revision
    return make_plan(desired, live, environment=environment, revision=rev, prune=prune, allow_empty=allow_empty)
