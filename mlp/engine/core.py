"""`reconcile(snapshot, environment, target, policy) -> Result`: the one reconcile pipeline.

Every caller (`mlp apply`, `mlp diff`, `mlp up`, the controller, the PR check) runs it;
they differ only in their `Policy`. The stages, in order, each a function of this module:

    load      the snapshot's specs (a snapshot that failed validation never reaches a plan)
    resolve   each deployment's routes and split, typed, computed once (kind plug-ins)
    render    templates per kind and target kind (`mlp.render`)
    list      live objects named by the inventory plus the kinds the render produced
    plan      normalize + diff (pure, `mlp.plan`)
    policy    `Policy.decide`: sync windows, self-heal, approvals (prune is in the plan)
    execute   the only writer (`mlp.plan.execute`)
    record    verify (re-plan against what the writes answered) and write the inventory

Errors: `RenderError` and `PlanRefused` (the repository's fault), `TargetError` (the
target's), `ValueError` (two rendered objects with one identity). Nothing is written before
the policy stage allowed it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from mlp.engine.inventory import adopted_kinds, read_inventory, write_inventory
from mlp.engine.plugins import Emit, KindPlugin, plugins
from mlp.objects import KindKey, Manifest, ObjectRef, ResolvedDeployment
from mlp.plan.core import Action, Plan, PlanItem, PlanRefused, make_plan
from mlp.plan.execute import ChangeSet, execute
from mlp.plan.target import ApplyResult, Target, TargetError
from mlp.render import render
from mlp.render.resolve import Position, with_position
from mlp.specs import LoadResult, SpecSet, load
from mlp.specs.snapshot import Snapshot

Progress = Callable[[int, int, PlanItem, str], None]


@dataclass(frozen=True)
class Decision:
    """The policy stage's verdict on a plan with changes."""

    allowed: bool
    reason: str = ""


@dataclass
class Policy:
    """What a caller lets the engine do. The defaults are `mlp apply --yes` without prune."""

    prune: bool = False
    allow_empty: bool = False
    execute: bool = True  # False: stop after the plan (diff, PR check)
    dry_run: bool = False
    force_conflicts: bool = False
    keep_going: bool = False  # one failed object does not stop the others (the local runtime)
    progress: Progress | None = None
    concurrency: int = 1  # objects applied at once (execute's runs of independent objects); 1 = in order
    # sync windows, self-heal, approvals, interactive confirmation: None allows every plan
    decide: Callable[[Plan], Decision] | None = None
    # called once the decision allows writes, before the first one (the controller's intent)
    before_execute: Callable[[Plan], None] | None = None


@dataclass
class Result:
    environment: str
    revision: str
    specs: SpecSet
    resolved: dict[str, Any]  # plug-in name -> {spec name: resolved value}
    desired: list[Manifest]
    live: list[Manifest]
    kinds: list[KindKey]  # what was listed (and what an idle check must list again)
    plan: Plan
    decision: Decision = field(default_factory=lambda: Decision(True))
    changes: ChangeSet | None = None
    after: Plan | None = None  # re-planned against the live state after execute
    live_after: list[Manifest] | None = None
    inventory: list[ObjectRef] | None = None  # as recorded (None: not written this time)
    adopted: bool = False  # the target had no inventory: labelled objects were adopted
    warnings: list[str] = field(default_factory=list)

    @property
    def deployments(self) -> dict[str, ResolvedDeployment]:
        return dict(self.resolved.get("deployments") or {})

    @property
    def final_plan(self) -> Plan:
        return self.after if self.after is not None else self.plan

    @property
    def final_live(self) -> list[Manifest]:
        return self.live_after if self.live_after is not None else self.live


# --- stages -------------------------------------------------------------------------------------


def load_stage(snapshot: Snapshot, loaded: LoadResult | SpecSet | None = None) -> SpecSet:
    """The snapshot's specs; `PlanRefused` when it failed validation (the last good state stays)."""
    if isinstance(loaded, SpecSet):
        return loaded
    result = loaded if loaded is not None else load(snapshot)
    if not result.ok:
        errors = result.errors
        raise PlanRefused(
            f"refusing to plan from specs that failed validation ({len(errors)} errors; first: {errors[0]})"
        )
    return result.specs


def resolve_stage(specs: SpecSet, environment: str, positions: Mapping[str, Position] | None = None) -> dict[str, Any]:
    """Every plug-in's resolution for `environment`, by plug-in name; `positions` (model ->
    rollout position, from mlp.rollouts) set where each canary stands."""
    if environment not in specs.environments:
        from mlp.render import RenderError

        known = ", ".join(sorted(specs.environments)) or "none"
        raise RenderError(f"unknown environment {environment!r} (declared: {known})")
    resolved = {p.name: dict(p.resolve(specs, environment)) for p in plugins() if p.resolve is not None}
    if positions and "deployments" in resolved:
        deployments = resolved["deployments"]
        for name, pos in positions.items():
            if name in deployments:
                deployments[name] = with_position(deployments[name], pos)
    return resolved


def render_stage(
    specs: SpecSet, environment: str, resolved: Mapping[str, Any], *, revision: str, templates: Mapping[str, str]
) -> list[Manifest]:
    """The package's templates (deployments, monitors) plus every plug-in's `render`, through one
    sandboxed, stamped path."""
    extra = [partial(_plugin_render, p, specs, environment, resolved) for p in plugins() if p.render is not None]
    return render(
        specs, environment, revision=revision, templates=templates, resolved=resolved.get("deployments"), extra=extra
    )


def _plugin_render(
    plugin: KindPlugin, specs: SpecSet, environment: str, resolved: Mapping[str, Any], emit: Emit
) -> None:
    if plugin.render is not None:
        plugin.render(specs, environment, resolved.get(plugin.name) or {}, emit)


def kinds_stage(
    target: Target, environment: str, target_kind: str, desired: Iterable[Manifest]
) -> tuple[list[KindKey], list[ObjectRef] | None]:
    """(kinds to list, the recorded inventory or None): the inventory's kinds plus the rendered ones;
    with no inventory yet, the kinds the plug-ins' templates produce (to adopt labelled objects)."""
    inventory = read_inventory(target, environment)
    kinds: list[KindKey] = []
    seen: set[KindKey] = set()

    def add(k: KindKey) -> None:
        if k not in seen:
            seen.add(k)
            kinds.append(k)

    for ref in inventory or []:
        add(ref.kind_key)
    for obj in desired:
        add((obj["apiVersion"], obj["kind"]))
    if inventory is None:
        for k in adopted_kinds(target_kind):
            add(k)
    return kinds, inventory


def list_stage(target: Target, environment: str, kinds: list[KindKey], needed: set[KindKey]) -> list[Manifest]:
    """Owned live objects of `environment`, kind by kind. A kind the cluster does not serve (its CRD
    is not installed: 404) holds nothing, so it is skipped unless the plan must write one."""
    out: list[Manifest] = []
    for kind in kinds:
        try:
            out.extend(target.list_owned(environment, [kind]))
        except TargetError as exc:
            if exc.status == 404 and kind not in needed:
                continue
            raise
    return out


def versions_stage(target: Target, environment: str, kinds: list[KindKey]) -> dict[ObjectRef, str] | None:
    """The resourceVersion of each owned live object, as `list_stage` would list them (a kind the
    cluster does not serve holds nothing), without keeping the objects; None when the target cannot
    list versions alone. The controller's idle check compares these with the last in-sync step."""
    owned_versions = getattr(target, "owned_versions", None)
    if owned_versions is None:
        return None
    out: dict[ObjectRef, str] = {}
    for kind in kinds:
        try:
            out.update(owned_versions(environment, [kind]))
        except TargetError as exc:
            if exc.status != 404:
                raise
    return out


def plan_stage(desired: list[Manifest], live: list[Manifest], environment: str, revision: str, policy: Policy) -> Plan:
    return make_plan(
        desired, live, environment=environment, revision=revision, prune=policy.prune, allow_empty=policy.allow_empty
    )


class _Recording:
    """The target during execute: remembers what the server answered to each write."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.name = target.name
        self.applied: dict[ObjectRef, Manifest] = {}
        self.deleted: set[ObjectRef] = set()
        self.complete = True  # every apply answered with the live object

    def list_owned(self, environment: str, kinds: list[tuple[str, str]] | None = None) -> list[Manifest]:
        return self.target.list_owned(environment, kinds)

    def apply(self, obj: Manifest, *, dry_run: bool = False, force_conflicts: bool = False) -> ApplyResult:
        result = self.target.apply(obj, dry_run=dry_run, force_conflicts=force_conflicts)
        if result.live and (result.live.get("metadata") or {}).get("name"):
            self.applied[result.ref] = result.live
        else:
            self.complete = False
        return result

    def delete(self, ref: ObjectRef, *, dry_run: bool = False) -> None:
        self.target.delete(ref, dry_run=dry_run)
        self.deleted.add(ref)

    def live_after(self, before: list[Manifest]) -> list[Manifest] | None:
        if not self.complete:
            return None
        out = [o for o in before if ObjectRef.of(o) not in self.applied and ObjectRef.of(o) not in self.deleted]
        return out + list(self.applied.values())


def record_stage(
    target: Target,
    environment: str,
    result: Result,
    recording: _Recording | None,
    previous: list[ObjectRef] | None,
) -> None:
    """Write the inventory: what mlp owns in the environment now. After a failure, what it owned
    before plus what it wrote (never less: an object mlp applied must stay prunable)."""
    changes = result.changes
    if changes is not None and changes.dry_run:
        return
    plan = result.plan
    deleted = recording.deleted if recording is not None else set()
    if changes is None or changes.ok:
        refs = {i.ref for i in plan.items if i.action is not Action.DELETE} | set(plan.orphans)
    else:
        done = {c.ref for c in changes.done}
        refs = (set(previous or []) | {i.ref for i in plan.items if i.action is Action.UNCHANGED} | done) - deleted
    refs -= deleted
    new = sorted(refs)
    if previous is not None and sorted(previous) == new:
        return
    try:
        write_inventory(target, environment, new)
    except TargetError as exc:  # the apply itself succeeded; the next run adopts by labels again
        result.warnings.append(f"could not record the inventory: {exc}")
        return
    result.inventory = new


def desired(snapshot: Snapshot, environment: str, *, loaded: LoadResult | SpecSet | None = None) -> list[Manifest]:
    """load -> resolve -> render: what `environment` declares (`mlp render`)."""
    specs = load_stage(snapshot, loaded)
    resolved = resolve_stage(specs, environment)
    return render_stage(specs, environment, resolved, revision=snapshot.revision, templates=snapshot.templates())


def preview(
    snapshot: Snapshot, environment: str, before: list[Manifest], *, loaded: LoadResult | SpecSet | None = None
) -> Plan:
    """Plan `snapshot` against `before` (another revision's rendered objects) as if those were live,
    with prune: exactly what merging would change (the PR check). An environment the snapshot no
    longer declares plans the deletion of everything it had."""
    from mlp.engine.memory import MemoryTarget

    specs = load_stage(snapshot, loaded)
    policy = Policy(prune=True, allow_empty=True, execute=False)
    if environment not in specs.environments:
        return plan_stage([], before, environment, snapshot.revision, policy)
    return reconcile(snapshot, environment, MemoryTarget(before), policy, loaded=specs).plan


# --- the pipeline -------------------------------------------------------------------------------


def reconcile(
    snapshot: Snapshot,
    environment: str,
    target: Target,
    policy: Policy | None = None,
    *,
    loaded: LoadResult | SpecSet | None = None,
    live: list[Manifest] | None = None,
    live_kinds: list[KindKey] | None = None,
    positions: Mapping[str, Position] | None = None,
) -> Result:
    """Converge `environment` on `target` with `snapshot`, as far as `policy` allows.

    `loaded` spares loading the snapshot again (a caller that validated it already);
    `live` spares the list when the caller has just listed `live_kinds` (only the kinds
    missing from them are listed); `positions` are the canary rollouts' positions (resolve).
    """
    policy = policy or Policy()
    specs = load_stage(snapshot, loaded)
    revision = snapshot.revision
    resolved = resolve_stage(specs, environment, positions)
    desired = render_stage(specs, environment, resolved, revision=revision, templates=snapshot.templates())
    target_kind = specs.environments[environment].spec.target.kind
    return converge(
        desired,
        environment,
        target,
        policy,
        revision=revision,
        target_kind=target_kind,
        specs=specs,
        resolved=resolved,
        live=live,
        live_kinds=live_kinds,
    )


def converge(
    desired: list[Manifest],
    environment: str,
    target: Target,
    policy: Policy | None = None,
    *,
    revision: str,
    target_kind: str = "kubernetes",
    specs: SpecSet | None = None,
    resolved: dict[str, Any] | None = None,
    live: list[Manifest] | None = None,
    live_kinds: list[KindKey] | None = None,
) -> Result:
    """The stages after render (list, plan, policy, execute, record) for objects already rendered.

    `reconcile` runs it for an environment's specs; `mlp install apply` for the platform's own
    manifests (its inventory and prune work the same way).
    """
    policy = policy or Policy()
    kinds, inventory = kinds_stage(target, environment, target_kind, desired)
    needed = {(o["apiVersion"], o["kind"]) for o in desired}
    if live is None:
        live = list_stage(target, environment, kinds, needed)
    elif live_kinds is not None:
        listed = set(live_kinds)
        live = live + list_stage(target, environment, [k for k in kinds if k not in listed], needed)
    plan = plan_stage(desired, live, environment, revision, policy)
    result = Result(
        environment,
        revision,
        specs if specs is not None else SpecSet(revision=revision),
        dict(resolved or {}),
        desired,
        live,
        kinds,
        plan,
        adopted=inventory is None,
    )
    if not policy.execute:
        return result
    if not plan.has_changes:
        record_stage(target, environment, result, None, inventory)
        return result
    if policy.decide is not None:
        result.decision = policy.decide(plan)
        if not result.decision.allowed:
            return result
    if policy.before_execute is not None:
        policy.before_execute(plan)
    recording = _Recording(target)
    result.changes = execute(
        plan,
        recording,
        dry_run=policy.dry_run,
        force_conflicts=policy.force_conflicts,
        progress=policy.progress,
        keep_going=policy.keep_going,
        concurrency=policy.concurrency,
    )
    record_stage(target, environment, result, recording, inventory)
    if policy.dry_run or not result.changes.ok:
        return result
    after = recording.live_after(live)
    result.live_after = after if after is not None else list_stage(target, environment, kinds, set())
    try:
        result.after = plan_stage(desired, result.live_after, environment, revision, policy)
    except (PlanRefused, ValueError):
        result.after = None
    return result
