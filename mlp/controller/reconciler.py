"""`Reconciler.step(env)`: one level-triggered reconcile of one environment.

snapshot -> load + validate -> render -> list live objects -> plan -> (policy) -> execute
-> status + audit + metrics. Each step starts from what Git and the target say now, never
from what the previous step did, so running it again is always safe.

Safety:
- A snapshot that fails to load, validate or render never reaches a target: the
  environment reports Degraded with the located errors, the audit log records the refused
  revision once, and whatever was applied before keeps running (last known good).
- A plan that would delete everything the environment owns is refused (the plan
  raises `PlanRefused`); an environment that vanished from the repository is reported,
  never pruned.
- Before the first write the step records an intent (what it is about to apply, at which
  revision); the audit event is written in the same transaction that closes it. A crash
  in between leaves the intent, the next step (in a new process) finds it, converges
  (applies are idempotent server-side applies) and logs that one apply exactly once.

Policy (`spec.sync` of the environment): a new revision is applied when `automated`
and inside the sync windows; drift at an already-synced revision (a hand edit) is
reverted only with `selfHeal`, otherwise reported OutOfSync; owned objects no longer
declared are deleted only with `prune`. A manual sync (`mlp sync ENV`) applies whatever
the policy says about automation and windows.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from mlp.controller.metrics import ControllerMetrics
from mlp.controller.queue import URGENT
from mlp.controller.store import (
    OUT_OF_SYNC,
    SYNCED,
    UNKNOWN,
    AuditEvent,
    EnvStatus,
    Intent,
    ModelStatus,
    ObjectStatus,
    StateStore,
)
from mlp.controller.windows import sync_allowed
from mlp.engine import (
    Decision,
    ModelObservation,
    Policy,
    Result,
    kinds_stage,
    list_stage,
    observe_deployments,
    reconcile,
    versions_stage,
)
from mlp.plan.core import Action, Plan, PlanItem, PlanRefused
from mlp.plan.health import HealthStatus, assess, worst
from mlp.render.resolve import Position
from mlp.render.stamp import canonical_json
from mlp.sources.base import Snapshot
from mlp.specs import LoadResult, SpecSet, load
from mlp.specs.models import Deployment, Environment, EnvironmentSpec
from mlp.targets.base import Manifest, ObjectRef, Target, TargetError

DEFAULT_REF = "main"
# Identifies this controller run in intents: an intent written by another run was interrupted.
RUN_ID = uuid.uuid4().hex

# Step outcomes (also the `outcome` label of mlp_controller_reconcile_total).
SYNCED_OUTCOME = "synced"  # nothing to do
APPLIED = "applied"  # changes written
OUT_OF_SYNC_OUTCOME = "out_of_sync"  # changes found, policy said wait
REFUSED = "refused"  # the revision is invalid; nothing applied
FAILED = "failed"  # the target or the source failed


class RevisionSource(Protocol):
    """What the reconciler needs from a source: fetched revisions of refs, and snapshots of them."""

    last_error: str | None

    def revision(self, ref: str) -> str | None: ...

    def snapshot(self, rev: str) -> Snapshot: ...


TargetFactory = Callable[[str, Environment], Target]


class Rollouts(Protocol):
    """What the reconciler needs of a rollout driver (`mlp.rollouts.driver.RolloutDriver`)."""

    declared: dict[str, Any]

    def declare(
        self, env: str, revision: str | None, deployments: dict[str, Deployment], spec: EnvironmentSpec | None = None
    ) -> None: ...

    def tick(self, env: str) -> bool: ...

    def positions(self, env: str, deployments: dict[str, Deployment] | None = None) -> dict[str, Position]: ...


@dataclass
class Loaded:
    """What the controller keeps of a loaded commit: enough to list and check environments cheaply."""

    snapshot: Snapshot
    ok: bool
    errors: list[str]
    environments: dict[str, Environment]  # without deployments (see `of`)
    result: LoadResult | None = None  # the full spec set; dropped by `Reconciler.trim`
    canaries: dict[str, dict[str, Deployment]] = field(default_factory=dict)  # env -> its canary deployments

    @classmethod
    def of(cls, snapshot: Snapshot, result: LoadResult) -> Loaded:
        errors = [str(d) for d in result.diagnostics if getattr(d, "severity", "error") == "error"]
        # Without their deployments: what an idle step needs (target, sync policy, branch). Keeping
        # thousands of small objects made in the middle of a load would pin the interpreter's memory
        # pools that the load's garbage is freed from.
        light = {
            name: e.model_copy(update={"spec": e.spec.model_copy(update={"deployments": {}})})
            for name, e in result.specs.environments.items()
        }
        canaries = {
            name: {m: d for m, d in e.spec.deployments.items() if d.canary is not None}
            for name, e in result.specs.environments.items()
        }
        return cls(snapshot, result.ok, errors, light, result, {k: v for k, v in canaries.items() if v})


@dataclass
class StepResult:
    env: str
    outcome: str
    revision: str | None = None
    changes: list[str] = field(default_factory=list)
    message: str = ""
    duration: float = 0.0


def _now() -> datetime:
    return datetime.now(UTC)


def _observed_message(o: ModelObservation) -> str:
    if o.observed is None:
        return ""
    parts = []
    if o.differs:
        parts.append("observed traffic differs from declared")
    if o.observed.ready is False:
        parts.append("not ready")
    if o.observed.message:
        parts.append(o.observed.message)
    if o.observed.url:
        parts.append(o.observed.url)
    return "; ".join(parts)


def _describe(action: Action, ref: ObjectRef) -> str:
    return f"{action.value.upper()} {ref}"


class _PriorityLock:
    """A lock that hands itself to urgent holders (a manual sync, a push webhook) before others."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._held = False
        self._urgent_waiting = 0

    @contextlib.contextmanager
    def hold(self, *, urgent: bool) -> Iterator[bool]:
        """Hold the lock; yields whether it had to wait for another holder."""
        waited = False
        with self._cond:
            if urgent:
                self._urgent_waiting += 1
            try:
                while self._held or (not urgent and self._urgent_waiting):
                    waited = True
                    self._cond.wait()
            finally:
                if urgent:
                    self._urgent_waiting -= 1
            self._held = True
        try:
            yield waited
        finally:
            with self._cond:
                self._held = False
                self._cond.notify_all()


def _take_warnings(target: Target) -> list[str]:
    """Server warnings a target collected (deprecations, pruned fields): shown once, then dropped,
    so a long-running controller does not accumulate them."""
    warnings = getattr(target, "warnings", None)
    if not isinstance(warnings, list) or not warnings:
        return []
    taken = list(dict.fromkeys(str(w) for w in warnings))
    warnings.clear()
    return taken


def release_memory(*, collect: bool = True) -> None:
    """After a step (thousands of short-lived dicts from a list, a render, a plan), give the memory back.

    A long-running controller otherwise keeps the high-water mark of its largest step for
    ever; collecting and trimming the C heap keeps an idle controller small (`mlp controller`
    runs with PYTHONMALLOC=malloc, so every freed object is in that heap).
    """
    if collect:  # cycles; what an idle check lists has none (reference counting frees it)
        gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def _versions(live: list[Manifest]) -> dict[ObjectRef, str]:
    """Each live object's resourceVersion, or its content when a target has none."""
    return {ObjectRef.of(o): str((o.get("metadata") or {}).get("resourceVersion") or canonical_json(o)) for o in live}


def _fingerprint(versions: dict[ObjectRef, str]) -> str:
    """Identity of a set of live objects (see `_versions`)."""
    digest = hashlib.sha256()
    for ref, version in sorted((str(r), v) for r, v in versions.items()):
        digest.update(f"{ref}={version}\n".encode())
    return digest.hexdigest()


def described_changes(items: Iterable[PlanItem]) -> list[str]:
    return [_describe(i.action, i.ref) for i in items]


class Reconciler:
    """Reconciles environments one step at a time; thread-safe for different environments."""

    def __init__(
        self,
        source: RevisionSource,
        targets: TargetFactory,
        store: StateStore,
        *,
        metrics: ControllerMetrics | None = None,
        default_ref: str = DEFAULT_REF,
        clock: Callable[[], datetime] = _now,
        local_elsewhere: bool = False,
        rollouts: Rollouts | None = None,
    ) -> None:
        self.source = source
        # Canary rollouts of kubernetes environments: analysed each step, their positions rendered.
        self.rollouts = rollouts
        self.local_elsewhere = local_elsewhere
        self.targets = targets
        self.store = store
        self.metrics = metrics
        self.default_ref = default_ref
        # With local_elsewhere (`mlp controller`): environments with a local target are left out, as
        # `mlp up` serves and reconciles them in its own process; reported, never counted as failed.
        self.handled_elsewhere: set[str] = set()
        self.clock = clock
        self._cache_lock = threading.Lock()
        self._loaded: dict[str, Loaded] = {}
        self._active = 0  # steps in progress (trim waits for none)
        self._full_steps = 0  # steps that went past the fast path
        self._full: dict[int, tuple[Target, _PriorityLock]] = {}  # id(target) -> its full-step lock
        self._ref_rev: dict[str, str] = {}  # ref -> newest loaded commit
        self._loading: dict[str, threading.Lock] = {}
        self._env_locks: dict[str, threading.Lock] = {}
        self._step_targets: dict[str, Target] = {}  # env -> the target its running step uses
        self._in_sync: dict[str, tuple[str, str, str | None]] = {}  # env -> (revision, live fingerprint, source error)
        self._kinds: dict[str, list[tuple[str, str]]] = {}  # env -> what its last full step listed

    # --- sources and caches ------------------------------------------------------------------

    def load_revision(self, rev: str, ref: str | None = None) -> Loaded:
        """A commit, loaded and validated; cached (a commit never changes).

        The cache keeps the newest commit of each ref: loading a new commit of `ref` evicts
        that ref's previous one. The full spec set (~20 MB for 1,000 models) is dropped when
        no step is running (`trim`) and loaded again only when a step must render.
        """
        with self._cache_lock:
            hit = self._loaded.get(rev)
            if hit is not None:
                if ref is not None:
                    self._ref_rev[ref] = rev
                return hit
            loading = self._loading.setdefault(rev, threading.Lock())
        with loading:  # single flight: environments stepping in parallel load a new commit once
            with self._cache_lock:
                hit = self._loaded.get(rev)
            if hit is not None:
                return hit
            snap = self.source.snapshot(rev)
            loaded = Loaded.of(snap, load(snap))
        with self._cache_lock:
            self._loading.pop(rev, None)
            self._loaded[rev] = loaded
            if ref is not None:
                self._ref_rev[ref] = rev
            keep = set(self._ref_rev.values()) | {rev}
            for old in [r for r in self._loaded if r not in keep]:
                del self._loaded[old]
        return loaded

    def specs_of(self, loaded: Loaded) -> SpecSet:
        """The full spec set of a loaded commit, loading it again if `trim` dropped it."""
        with self._cache_lock:
            result = loaded.result
        if result is not None:
            return result.specs
        with self._loading.setdefault(loaded.snapshot.revision, threading.Lock()):
            with self._cache_lock:
                result = loaded.result
            if result is None:
                result = load(loaded.snapshot)
                with self._cache_lock:
                    loaded.result = result
        return result.specs

    def _full_lock(self, target: Target) -> _PriorityLock:
        """The lock full steps against `target` take: one per cluster. A target scoped to one
        environment's namespace names the cluster it shares with the others (`cluster`)."""
        anchor = getattr(target, "cluster", target)
        with self._cache_lock:
            entry = self._full.get(id(anchor))
            if entry is None or entry[0] is not anchor:
                entry = self._full[id(anchor)] = (anchor, _PriorityLock())
            return entry[1]

    def trim(self) -> None:
        """Drop full spec sets while no step runs (an idle controller keeps only summaries)."""
        with self._cache_lock:
            if self._active == 0:
                for loaded in self._loaded.values():
                    loaded.result = None

    def environments(self) -> dict[str, str]:
        """Environments to reconcile -> the branch or tag each tracks.

        Read from the default ref's newest commit; when that commit does not load, the
        environments already known to the state store are kept (never forget one because
        of a bad commit).
        """
        envs = {name: DEFAULT_REF for name in self.store.environments()}
        rev = self.source.revision(self.default_ref)
        if rev is None:
            return {e: self.default_ref for e in envs}
        try:
            loaded = self.load_revision(rev, self.default_ref)
        except Exception:  # an unreadable commit: keep what we knew
            return {e: self.default_ref for e in envs}
        if self.local_elsewhere:
            self.handled_elsewhere = {n for n, e in loaded.environments.items() if e.spec.target.kind == "local"}
        found = {n: e.spec.branch for n, e in loaded.environments.items() if n not in self.handled_elsewhere}
        if loaded.ok:
            return {n: (b if b != DEFAULT_REF else self.default_ref) for n, b in found.items()}
        merged = {e: self.default_ref for e in envs if e not in self.handled_elsewhere}
        merged.update({n: (b if b != DEFAULT_REF else self.default_ref) for n, b in found.items()})
        return merged

    def ref_for(self, env: str) -> str:
        return self.environments().get(env, self.default_ref)

    # --- the step ------------------------------------------------------------------------------

    def step(self, env: str, *, reasons: Iterable[str] = ("interval",), ref: str | None = None) -> StepResult:
        lock = self._env_locks.setdefault(env, threading.Lock())
        start = time.monotonic()
        full = self._full_steps
        with self._cache_lock:
            self._active += 1
        with lock:
            try:
                result = self._step(env, set(reasons), ref)
            except Exception as exc:  # never let one environment's surprise kill the controller
                result = StepResult(env, FAILED, message=f"internal error: {type(exc).__name__}: {exc}")
                status = self.store.load(env) or EnvStatus(env)
                status.health, status.message = HealthStatus.UNKNOWN.value, result.message
                self.store.save(status)
            finally:
                with self._cache_lock:
                    self._active -= 1
                # What a target remembered of this environment's objects is needed only within the step.
                forget = getattr(self._step_targets.pop(env, None), "forget", None)
                if forget is not None:
                    forget(env)
        self.trim()  # also after a fast step: the loop may have loaded a commit no step rendered
        release_memory(collect=self._full_steps != full)  # an idle check's listing is garbage now too
        result.duration = time.monotonic() - start
        if self.metrics is not None:
            self.metrics.reconcile_duration.labels(env).observe(result.duration)
            self.metrics.reconcile_results.labels(env, result.outcome).inc()
        return result

    def _step(self, env: str, reasons: set[str], ref: str | None) -> StepResult:
        status = self.store.load(env) or EnvStatus(env)
        manual = "manual" in reasons
        ref = ref or self.ref_for(env)
        rev = self.source.revision(ref)
        if rev is None:
            why = self.source.last_error or f"{ref} has not been fetched yet"
            status.sync_status, status.health = UNKNOWN, HealthStatus.UNKNOWN.value
            status.message = f"no revision of {ref}: {why}"
            self.store.save(status)
            return StepResult(env, FAILED, message=status.message)
        source_note = (
            f" (source: {self.source.last_error}; using last fetched revision)" if self.source.last_error else ""
        )

        loaded = self.load_revision(rev, ref)
        snap = loaded.snapshot
        seen_before = (status.sync_status, status.revision)
        status.revision, status.author = rev, snap.author
        if not snap.spec_files():
            return self._refuse(
                status,
                snap,
                [f"{rev[:12]} has no files under specs/ or environments/"],
                "empty source (nothing is pruned)",
            )
        if not loaded.ok:
            return self._refuse(status, snap, loaded.errors or ["the snapshot did not load"], "invalid specs")
        envspec = loaded.environments.get(env)
        if envspec is None:
            return self._refuse(
                status,
                snap,
                [f"environment {env!r} is not declared at {rev[:12]}"],
                "environment not declared (nothing is pruned)",
            )
        moved = self._drive_rollouts(env, rev, loaded, envspec, status.synced_revision)
        # Fast path for the common idle case: same revision, same live objects (by resourceVersion)
        # as the last step that found everything in sync -> still in sync. Rendering and planning
        # 1,000 objects again would cost most of an idle controller's CPU and memory. A target that
        # can list versions alone (page by page) spares holding every object for the comparison.
        live: list[Manifest] | None = None
        try:
            target = self._step_targets[env] = self.targets(env, envspec)
            # a canary that moved is a change to apply, whatever the live objects say
            check = self._in_sync.get(env) if not manual and not moved and self.store.intent(env) is None else None
            # What to list: the kinds the last full step listed (its inventory plus what it rendered);
            # after a restart, the inventory stored in the target (plus the kinds to adopt).
            kinds = self._kinds.get(env)
            if kinds is None:
                kinds, _ = kinds_stage(target, env, envspec.spec.target.kind, ())
            only_versions = versions_stage(target, env, kinds) if check is not None and check[0] == rev else None
            if only_versions is not None:
                versions: dict[ObjectRef, str] = only_versions
            else:
                live = list_stage(target, env, kinds, set())
                versions = _versions(live)
        except TargetError as exc:
            return self._fail(status, rev, f"cannot read live state: {exc}", unknown=True)
        if check is not None and check == (rev, _fingerprint(versions), self.source.last_error):
            _take_warnings(target)  # a list's warnings were reported when the state was first seen
            self.store.touch(env)
            if self.metrics is not None:  # confirmed in sync now: alerts on a stale timestamp stay quiet
                self.metrics.last_sync.labels(env).set(time.time())
            return StepResult(env, SYNCED_OUTCOME, rev, message=status.message)
        self._in_sync.pop(env, None)
        self._full_steps += 1
        # One full step (load, render, plan, apply, verify) at a time per target (a cluster), urgent
        # ones first. Environments on one cluster share its client-side rate limit, so applying them
        # together is no faster, while their working sets would pile up into one high-water mark of
        # the process; render and plan are one core's work under the GIL anyway. Environments on
        # other clusters (a slow one must not hold them up) and idle checks stay parallel.
        with self._full_lock(target).hold(urgent=bool(reasons & URGENT)) as waited:
            if waited:
                live = None  # another environment's step ran meanwhile: what was listed may be stale
            result = self._full_step(env, reasons, status, loaded, target, live, kinds, seen_before, source_note, moved)
        if status.synced_revision == rev and status.revision == rev:
            # the revision runs now: its canaries start (or go on) rolling out from the next step
            self._drive_rollouts(env, rev, loaded, envspec, rev, tick=False)
        return result

    def _drive_rollouts(
        self, env: str, rev: str, loaded: Loaded, envspec: Environment, synced: str | None, *, tick: bool = True
    ) -> bool:
        """Declare the canaries of the applied revision and analyse them once; True when one moved.

        Only the revision that runs (`synced`) drives rollouts: a commit the sync policy holds
        back (automated off, a deny window) must not start its canary."""
        if self.rollouts is None or envspec.spec.target.kind != "kubernetes" or synced != rev:
            return False
        canaries = loaded.canaries.get(env, {})
        if canaries or self.rollouts.declared.get(env) or env not in self.rollouts.declared:
            self.rollouts.declare(env, rev, canaries, envspec.spec)
        return bool(tick and canaries and self.rollouts.tick(env))

    def _full_step(
        self,
        env: str,
        reasons: set[str],
        status: EnvStatus,
        loaded: Loaded,
        target: Target,
        live: list[Manifest] | None,
        kinds: list[tuple[str, str]],
        seen_before: tuple[str, str | None],
        source_note: str,
        moved: bool = False,
    ) -> StepResult:
        """Run the engine with the environment's sync policy; `_step` found it out of its fast path."""
        manual = "manual" in reasons
        snap = loaded.snapshot
        rev = snap.revision
        specs = self.specs_of(loaded)
        envspec = specs.environments[env]  # with its deployments (`loaded` keeps environments without)
        sync = envspec.spec.sync
        intent = self.store.intent(env)
        interrupted = intent is not None and intent.run != RUN_ID
        new_revision = rev != status.synced_revision
        chosen: dict[str, str] = {}

        def decide(plan: Plan) -> Decision:
            """The policy stage: automation, sync windows and self-heal (prune is in the plan)."""
            allowed, why = True, ""
            if interrupted and intent is not None and intent.revision == rev:
                allowed, why = True, "resuming an interrupted apply"
            elif manual:
                allowed = True
            elif moved and not new_revision:
                # a canary's analysis moved it (a step, a promotion, a rollback): part of running the
                # applied revision, so neither automation, windows nor selfHeal holds it back
                allowed = True
            elif not sync.automated:
                allowed, why = False, "automated sync is off; run `mlp sync " + env + "`"
            else:
                ok, window = sync_allowed(sync.windows, self.clock())
                if not ok:
                    allowed, why = False, f"automated sync blocked: {window}"
                elif not new_revision and not sync.selfHeal:
                    allowed, why = False, "live objects drifted from Git; selfHeal is off"
            if not allowed and seen_before != (OUT_OF_SYNC, rev):
                # Logged when the environment goes out of sync, not at every interval it stays so.
                self.store.append_audit(
                    AuditEvent(
                        env,
                        "drift" if not new_revision else "hold",
                        "skipped",
                        revision=rev,
                        author=snap.author,
                        objects=described_changes(plan.changes),
                        message=why,
                    )
                )
            return Decision(allowed, why)

        def before_execute(plan: Plan) -> None:
            if new_revision or manual:
                action = "rollback" if self._is_rollback(status, envspec) else "apply"
            elif moved:
                action = "rollout-step"  # the driver's transition itself is its own "rollout" event
            else:
                action = "self-heal"
            chosen["action"] = action
            described = described_changes(plan.changes)
            self.store.begin_intent(Intent(env, rev, action, described, time.time(), os.getpid(), RUN_ID))

        policy = Policy(prune=sync.prune, decide=decide, before_execute=before_execute)
        try:
            positions = (
                self.rollouts.positions(env, loaded.canaries.get(env, {})) if self.rollouts is not None else None
            )
            run = reconcile(snap, env, target, policy, loaded=specs, live=live, live_kinds=kinds, positions=positions)
        except TargetError as exc:
            return self._fail(status, rev, f"cannot read live state: {exc}", unknown=True)
        except (PlanRefused, ValueError) as exc:
            return self._refuse(status, snap, [str(exc)], "unsafe plan")
        except Exception as exc:  # render errors are the repository's fault: refuse, located if possible
            return self._refuse(status, snap, [str(exc)], "render failed")
        del specs
        self._kinds[env] = run.kinds
        if run.inventory is not None:
            self.store.save_inventory(env, [str(r) for r in run.inventory])
        plan = run.plan
        changes = plan.changes

        if not changes:
            if interrupted and intent is not None:
                # The crashed process wrote everything but died before logging it: log it now, once.
                self.store.finish_intent(
                    env,
                    [
                        AuditEvent(
                            env,
                            intent.action,
                            "succeeded",
                            revision=intent.revision,
                            author=snap.author,
                            objects=intent.objects,
                            message="completed before the controller stopped; verified on restart",
                        )
                    ],
                )
            elif status.refused_revision is not None and not plan.orphans:
                # A fix (often a revert) after a refused revision: record that the environment recovered.
                self.store.append_audit(
                    AuditEvent(
                        env,
                        "recovered",
                        "succeeded",
                        revision=rev,
                        author=snap.author,
                        message=f"{rev[:12]} is valid again after refused {status.refused_revision[:12]}; "
                        "live state already matches",
                    )
                )
            return self._report(status, run, applied=False, source_note=source_note)

        if not run.decision.allowed:
            return self._report(status, run, applied=False, hold=run.decision.reason, source_note=source_note)

        action = chosen.get("action", "apply")
        changeset = run.changes
        assert changeset is not None
        writes = [i for i in changes if i.action is not Action.DELETE]
        deletes = [i for i in changes if i.action is Action.DELETE]
        described = described_changes(changes)
        done = {c.ref for c in changeset.done}
        events: list[AuditEvent] = []
        note = ""
        if interrupted and intent is not None:
            note = (
                f"resumed an apply of {intent.revision[:12]} interrupted at "
                f"{datetime.fromtimestamp(intent.started_at, UTC):%H:%M:%S} (pid {intent.pid}); "
            )
        if manual:
            note += "manual sync; "
        outcome = "succeeded" if changeset.ok else "failed"
        if writes:
            events.append(
                AuditEvent(
                    env,
                    action,
                    outcome if changeset.ok or any(i.ref in done for i in writes) else "failed",
                    revision=rev,
                    author=snap.author,
                    # what was written; a failed apply lists only what it got done (the message says the rest)
                    objects=[_describe(i.action, i.ref) for i in writes if changeset.ok or i.ref in done],
                    message=(note + changeset.summary()).strip(),
                )
            )
        if deletes:
            events.append(
                AuditEvent(
                    env,
                    "prune",
                    "succeeded" if all(i.ref in done for i in deletes) else "failed",
                    revision=rev,
                    author=snap.author,
                    objects=[_describe(i.action, i.ref) for i in deletes if changeset.ok or i.ref in done],
                    message=note.strip("; "),
                )
            )
        self.store.finish_intent(env, events)
        if not changeset.ok:
            return self._fail(
                status,
                rev,
                f"apply failed at {changeset.failed}: {changeset.error}",
                changes=[_describe(c.action, c.ref) for c in changeset.done],
            )
        if run.after is None:
            return self._fail(status, rev, "applied, but cannot read back live state", unknown=True)
        result = self._report(status, run, applied=True, source_note=source_note, action=action)
        result.changes = described + [f"warning: {w}" for w in [*run.warnings, *_take_warnings(target)]]
        return result

    # --- outcomes ------------------------------------------------------------------------------

    def _is_rollback(self, status: EnvStatus, envspec: Environment) -> bool:
        served = {m.model: m.served_version for m in status.models}
        for name, dep in envspec.spec.deployments.items():
            before = served.get(name)
            if before is not None and dep.version < before:
                return True
        return False

    def _refuse(self, status: EnvStatus, snap: Snapshot, errors: list[str], what: str) -> StepResult:
        rev = snap.revision
        first_time = status.refused_revision != rev
        status.sync_status = UNKNOWN
        status.health = HealthStatus.DEGRADED.value
        status.errors = errors
        status.refused_revision = rev
        kept = f"; still serving {status.synced_revision[:12]}" if status.synced_revision else ""
        status.message = f"refused {rev[:12]}: {what} ({len(errors)} error{'s' * (len(errors) != 1)}){kept}"
        self.store.save(status)
        if first_time:
            self.store.append_audit(
                AuditEvent(
                    status.env,
                    "refused",
                    "refused",
                    revision=rev,
                    author=snap.author,
                    objects=[],
                    message=f"{what}: " + "; ".join(errors[:20]),
                )
            )
        return StepResult(status.env, REFUSED, rev, message=status.message)

    def _fail(
        self, status: EnvStatus, rev: str, message: str, changes: list[str] | None = None, *, unknown: bool = False
    ) -> StepResult:
        # unknown: the target could not be read, so nothing is known about its objects.
        status.sync_status = UNKNOWN if unknown else OUT_OF_SYNC
        if unknown:
            status.health = HealthStatus.UNKNOWN.value
        status.errors = [message]
        status.message = message
        self.store.save(status)
        return StepResult(status.env, FAILED, rev, changes=changes or [], message=message)

    def _report(
        self,
        status: EnvStatus,
        run: Result,
        *,
        applied: bool,
        hold: str = "",
        source_note: str = "",
        action: str = "",
    ) -> StepResult:
        """Record per-object status from a plan against the live objects it was made from, and what
        each model really serves (observed) next to what was declared."""
        plan, live, rev = run.final_plan, run.final_live, run.revision
        live_by_ref = {ObjectRef.of(o): o for o in live}
        objects: list[ObjectStatus] = []
        for item in plan.items:
            obj = live_by_ref.get(item.ref)
            health = assess(obj)
            if item.action is Action.UNCHANGED:
                sync, msg = SYNCED, ""
            elif item.action is Action.DELETE:
                sync, msg = OUT_OF_SYNC, "no longer declared; will be pruned"
            elif item.action is Action.CREATE:
                sync, msg = OUT_OF_SYNC, "declared but not in the target"
            else:
                fields = ", ".join(d.path for d in item.diffs[:5])
                sync, msg = OUT_OF_SYNC, f"{'drift' if item.reason == 'drift' else 'changed'}: {fields}"
            objects.append(
                ObjectStatus(
                    str(item.ref),
                    item.ref.kind,
                    item.ref.namespace,
                    item.ref.name,
                    sync,
                    health.status.value,
                    msg or health.message,
                )
            )
        for ref in plan.orphans:
            health = assess(live_by_ref.get(ref))
            objects.append(
                ObjectStatus(
                    str(ref),
                    ref.kind,
                    ref.namespace,
                    ref.name,
                    OUT_OF_SYNC,
                    health.status.value,
                    "no longer declared; prune is off",
                )
            )
        in_sync = all(o.sync_status == SYNCED for o in objects)
        status.objects = objects
        status.sync_status = SYNCED if in_sync else OUT_OF_SYNC
        status.health = worst([HealthStatus(o.health) for o in objects]).value
        status.errors = []
        status.refused_revision = None
        now = time.time()
        if in_sync:
            status.synced_revision = rev
            status.synced_at = now
            deployments = run.deployments
            status.models = [
                ModelStatus(
                    o.model,
                    int(deployments[o.model].stable.version),
                    o.declared,
                    observed=o.observed.traffic if o.observed is not None else None,
                    observed_message=_observed_message(o),
                )
                for o in observe_deployments(deployments, live)
            ]
        if in_sync:
            status.message = (f"{action} {rev[:12]}" if applied else f"synced at {rev[:12]}") + source_note
        else:
            n = sum(1 for o in objects if o.sync_status != SYNCED)
            status.message = (
                f"{n} object{'s' * (n != 1)} out of sync at {rev[:12]}" + (f": {hold}" if hold else "") + source_note
            )
        self.store.save(status)
        if self.metrics is not None:
            self.metrics.set_objects(status.env, [(o.sync_status, o.health) for o in objects])
            if in_sync:
                self.metrics.last_sync.labels(status.env).set(now)
        if in_sync:
            self._in_sync[status.env] = (rev, _fingerprint(_versions(live)), self.source.last_error)
        outcome = APPLIED if applied else (SYNCED_OUTCOME if in_sync else OUT_OF_SYNC_OUTCOME)
        return StepResult(status.env, outcome, rev, message=status.message)
