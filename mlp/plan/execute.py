"""`execute(plan, target)`: the only code path in mlp that writes to a target.

It walks the plan in order and calls the `Target` protocol: `apply` for CREATE and UPDATE,
`delete` for DELETE, nothing at all for UNCHANGED (so an up-to-date environment costs zero
writes). The first `TargetError` stops the walk: the returned `ChangeSet` says what was
done before it, what failed and why, and what was not attempted, so nothing partially
applied goes unreported. This module imports no client library; it only knows the protocol.

Field-manager conflicts: an item planned as "drift" (the repository did not change the
object, someone changed it on the cluster) is applied with `force_conflicts=True`: the
hand edit took ownership of a field mlp declares, and reverting hand edits to declared
fields is the point of GitOps (Flux applies with force for the same reason). For items the
repository changed, a conflict is reported and `force_conflicts` decides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mlp.objects import ObjectRef
from mlp.plan.core import Action, Plan, PlanItem
from mlp.plan.target import Target, TargetError

# progress(index starting at 1, total, item, outcome): outcome is "applying"/"deleting" before
# the call and the result ("created", "configured", "unchanged", "deleted", "failed") after it.
Progress = Callable[[int, int, PlanItem, str], None]


@dataclass
class Change:
    ref: ObjectRef
    action: Action
    result: str  # created | configured | unchanged | deleted (with " (dry run)" when dry)


@dataclass
class ChangeSet:
    """What `execute` did."""

    environment: str
    revision: str
    dry_run: bool
    done: list[Change] = field(default_factory=list)
    failed: ObjectRef | None = None
    error: TargetError | None = None
    not_attempted: list[ObjectRef] = field(default_factory=list)
    # every failure, in order; with keep_going there may be more than the first (`failed`/`error`)
    failures: list[tuple[ObjectRef, TargetError]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def writes(self) -> int:
        return len(self.done)

    def summary(self) -> str:
        verb = "would be " if self.dry_run else ""
        counts: dict[str, int] = {}
        for change in self.done:
            counts[change.result] = counts.get(change.result, 0) + 1
        parts = [f"{n} {verb}{what}" for what, n in sorted(counts.items())] or ["no changes"]
        text = f"{self.environment}: " + ", ".join(parts)
        if self.error is not None:
            text += f"; FAILED at {self.failed}: {self.error}; {len(self.not_attempted)} not attempted"
        return text

    def to_dict(self) -> dict[str, object]:
        return {
            "environment": self.environment,
            "revision": self.revision,
            "dryRun": self.dry_run,
            "ok": self.ok,
            "done": [{"ref": _ref(c.ref), "action": c.action.value, "result": c.result} for c in self.done],
            "failed": _ref(self.failed) if self.failed else None,
            "error": str(self.error) if self.error else None,
            "notAttempted": [_ref(r) for r in self.not_attempted],
        }


def _ref(ref: ObjectRef) -> dict[str, str]:
    return {"apiVersion": ref.api_version, "kind": ref.kind, "namespace": ref.namespace, "name": ref.name}


def execute(
    plan: Plan,
    target: Target,
    *,
    dry_run: bool = False,
    force_conflicts: bool = False,
    progress: Progress | None = None,
    keep_going: bool = False,
    concurrency: int = 1,
) -> ChangeSet:
    """Carry out `plan` on `target` in order, stopping at the first error.

    With `keep_going` a failed item does not stop the walk: the embedded runtime uses it so
    that one model's refused artifact does not hold back the other models' changes.

    With `concurrency` > 1, a run of consecutive items of the same kind and action (objects that
    do not depend on each other: the plan orders dependencies, such as a ServiceAccount before the
    InferenceServices that name it, into different runs) goes out up to `concurrency` at a time; the
    target's own rate limit still holds. A failure stops the walk after the run it happened in.
    """
    out = ChangeSet(environment=plan.environment, revision=plan.revision, dry_run=dry_run)
    work = plan.changes
    if concurrency > 1:
        return _execute_concurrently(work, target, out, dry_run, force_conflicts, progress, keep_going, concurrency)
    for index, item in enumerate(work, start=1):
        try:
            if item.action is Action.DELETE:
                if progress:
                    progress(index, len(work), item, "deleting")
                target.delete(item.ref, dry_run=dry_run)
                result = "deleted"
            else:
                assert item.desired is not None
                if progress:
                    progress(index, len(work), item, "applying")
                force = force_conflicts or item.reason == "drift"
                result = target.apply(item.desired, dry_run=dry_run, force_conflicts=force).action
        except TargetError as exc:
            out.failures.append((item.ref, exc))
            if out.error is None:
                out.failed, out.error = item.ref, exc
            if progress:
                progress(index, len(work), item, "failed")
            if keep_going:
                continue
            out.not_attempted = [i.ref for i in work[index:]]
            return out
        out.done.append(Change(item.ref, item.action, result))
        if progress:
            progress(index, len(work), item, result)
    return out


def _one(item: PlanItem, target: Target, dry_run: bool, force_conflicts: bool) -> str:
    if item.action is Action.DELETE:
        target.delete(item.ref, dry_run=dry_run)
        return "deleted"
    assert item.desired is not None
    force = force_conflicts or item.reason == "drift"
    return target.apply(item.desired, dry_run=dry_run, force_conflicts=force).action


def _runs(work: list[PlanItem]) -> list[list[int]]:
    """Indexes of consecutive items with the same action kind and object kind."""
    runs: list[list[int]] = []
    last: tuple[bool, str, str] | None = None
    for i, item in enumerate(work):
        key = (item.action is Action.DELETE, item.ref.api_version, item.ref.kind)
        if runs and key == last:
            runs[-1].append(i)
        else:
            runs.append([i])
        last = key
    return runs


def _execute_concurrently(
    work: list[PlanItem],
    target: Target,
    out: ChangeSet,
    dry_run: bool,
    force_conflicts: bool,
    progress: Progress | None,
    keep_going: bool,
    concurrency: int,
) -> ChangeSet:
    from concurrent.futures import ThreadPoolExecutor

    total = len(work)

    def run(i: int) -> tuple[int, str | TargetError]:
        try:
            return i, _one(work[i], target, dry_run, force_conflicts)
        except TargetError as exc:
            return i, exc

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="apply") as pool:
        for indexes in _runs(work):
            # in plan order as they finish (map keeps the order), so progress shows while a long run goes out
            results = pool.map(run, indexes) if len(indexes) > 1 else map(run, indexes)
            failed = False
            for i, result in results:
                item = work[i]
                if isinstance(result, TargetError):
                    failed = True
                    out.failures.append((item.ref, result))
                    if out.error is None:
                        out.failed, out.error = item.ref, result
                    if progress:
                        progress(i + 1, total, item, "failed")
                    continue
                out.done.append(Change(item.ref, item.action, result))
                if progress:
                    progress(i + 1, total, item, result)
            if failed and not keep_going:
                out.not_attempted = [w.ref for w in work[indexes[-1] + 1 :]]
                return out
    return out
