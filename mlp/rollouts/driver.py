"""Drive the rollouts of one environment: declare, analyse, step, and say where traffic goes.

The loop that reconciles an environment calls, each time round:

- `declare(env, revision, deployments)` with what the repository declares: a new canary
  declaration starts a rollout (Pending); one that already ended (promoted or rolled back)
  is restored as it ended and never retried; an unchanged one continues where it was,
  after a restart too (the state database holds the step and when it began);
- `tick(env)`: one analysis per active rollout and at most one transition each; returns
  True when a canary's weight changed, so the caller re-applies the rendered objects;
- `positions(env)`: where each canary stands, for the engine's resolve stage
  (`mlp.engine.reconcile(..., positions=...)`), which sets the canary's route before render.

After a rollback (by analysis or `mlp rollout abort`) or a promotion the write-back hook runs
once, off the loop's thread; its result (the revert or promotion branch, PR link) is stored
with the rollout (`revert_branch`, `revert_url`).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from mlp.render.resolve import Position
from mlp.rollouts import machine
from mlp.rollouts.analysis import evaluate
from mlp.rollouts.machine import PAUSED, PENDING, PROGRESSING, PROMOTED, ROLLED_BACK, Rollout, Transition
from mlp.rollouts.providers import Provider
from mlp.rollouts.store import RolloutStore
from mlp.specs.models import Analysis, Deployment, EnvironmentSpec
from mlp.specs.models import PrometheusProvider as PrometheusSpec

log = logging.getLogger("mlp.rollouts")

WriteBack = Callable[[Rollout], dict[str, Any]]
PHASE_CODE = {PENDING: 0, PROGRESSING: 1, PAUSED: 2, PROMOTED: 3, ROLLED_BACK: 4}
VERDICT_WRITE_SECONDS = 5.0
VERDICT_CODE = {"pass": 1, "wait": 0, "nodata": -1, "fail": -2}


def resolve_analysis(analysis: Analysis | None, spec: EnvironmentSpec | None) -> Analysis:
    """A canary's analysis with its provider and Prometheus URL as the environment resolves them."""
    a = analysis or Analysis()
    if spec is None:
        return a
    provider = spec.analysis_provider(a)
    url = spec.prometheus_url(a)
    update: dict[str, Any] = {"provider": provider}
    if provider == "prometheus" and a.prometheus is None and url is not None:
        update["prometheus"] = PrometheusSpec(url=url)
    return a.model_copy(update=update)


class RolloutMetrics:
    """Prometheus gauges per rollout: step, canary weight, phase and the last analysis result."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Gauge

        labels = ["environment", "model", "canary"]
        self.step = Gauge("mlp_rollout_step", "Current step (1-based) of the rollout", labels, registry=registry)
        self.weight = Gauge("mlp_rollout_canary_weight", "Canary share of traffic, percent", labels, registry=registry)
        self.phase = Gauge(
            "mlp_rollout_phase",
            "0 Pending, 1 Progressing, 2 Paused, 3 Promoted, 4 RolledBack",
            labels,
            registry=registry,
        )
        self.analysis = Gauge(
            "mlp_rollout_analysis", "Last analysis: 1 pass, 0 waiting, -1 no data, -2 failed", labels, registry=registry
        )

    def set(self, r: Rollout) -> None:
        labels = (r.env, r.model, str(r.canary))
        self.step.labels(*labels).set(r.step + 1)
        self.weight.labels(*labels).set(r.weight)
        self.phase.labels(*labels).set(PHASE_CODE.get(r.phase, -1))
        outcome = (r.last_verdict or {}).get("outcome")
        if outcome in VERDICT_CODE:
            self.analysis.labels(*labels).set(VERDICT_CODE[outcome])


class RolloutDriver:
    def __init__(
        self,
        store: RolloutStore,
        provider: Provider | Callable[[Analysis], Provider],
        *,
        writeback: WriteBack | None = None,
        metrics: RolloutMetrics | None = None,
        clock: Callable[[], float] = time.time,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self._provider = provider
        self.writeback = writeback
        self.metrics = metrics
        self.clock = clock
        self.echo = echo or log.info
        self.declared: dict[str, dict[str, Analysis]] = {}
        self._marks: dict[tuple[Any, ...], Any] = {}
        self._seen: dict[tuple[str, str], tuple[str, str]] = {}  # (env, model) -> (key, phase) last seen here
        self._threads: list[threading.Thread] = []
        self._written: dict[tuple[str, str], float] = {}  # when a rollout's verdict was last stored

    def provider(self, analysis: Analysis) -> Provider:
        p = self._provider
        return p(analysis) if callable(p) and not hasattr(p, "window") else p  # type: ignore[return-value]

    # --- declaration -------------------------------------------------------------------------

    def declare(
        self, env: str, revision: str | None, deployments: dict[str, Deployment], spec: EnvironmentSpec | None = None
    ) -> None:
        """`spec` (the environment's) resolves each analysis' provider and Prometheus URL."""
        declared: dict[str, Analysis] = {}
        for model, dep in deployments.items():
            if dep.canary is None:
                continue
            analysis = resolve_analysis(dep.canary.analysis, spec)
            declared[model] = analysis
            key = machine.declaration_key(dep.version, dep.canary.version, list(dep.canary.steps))
            current = self.store.get(env, model)
            if current is not None and current.key == key:
                if (env, model) not in self._seen:
                    self._resume_after_restart(current)
                continue
            ended = self.store.ended(env, model, key)
            if ended is not None:
                self.store.replace(ended)  # this declaration already ran: never retried
                self._seen[(env, model)] = (ended.key, ended.phase)
                continue
            steps = list(dep.canary.steps)
            first = steps.index(dep.canary.traffic) if dep.canary.traffic in steps else 0
            r = Rollout(env, model, dep.version, dep.canary.version, steps, key, revision=revision, first_step=first)
            self.store.replace(r, Transition("", PENDING, f"canary v{r.canary} declared (stable v{r.stable})"))
            self._seen[(env, model)] = (r.key, r.phase)
        for r in self.store.all(env):
            if r.model not in declared:
                self.store.remove(env, r.model)  # the canary is no longer declared: nothing to drive
        self.declared[env] = declared

    def _resume_after_restart(self, r: Rollout) -> None:
        """First sight of a stored rollout in this process: it continues at its step.

        The step's measurements lived in the previous process, so its interval starts again
        (a restart never shortens a step's observation)."""
        now = self.clock()

        def change(cur: Rollout) -> tuple[Rollout, Transition | None]:
            if cur.key != r.key or cur.phase != PROGRESSING:
                return cur, None
            cur = copy.copy(cur)
            cur.step_started = now
            cur.message = f"resumed after a restart at step {cur.step + 1}/{len(cur.steps)} ({cur.weight}%)"
            return cur, None

        after = self.store.update(r.env, r.model, change)
        if after is not None:
            self._seen[(r.env, r.model)] = (after.key, after.phase)
            if after.phase == PROGRESSING:
                self.echo(f"rollout {r.env}/{r.model}: {after.message}")

    # --- analysis ----------------------------------------------------------------------------

    def tick(self, env: str) -> bool:
        """Analyse every active rollout of `env` once; True when some canary's weight changed."""
        changed = False
        now = self.clock()
        stored = {r.model: r for r in self.store.all(env)}  # one read for every rollout of env
        for model, analysis in self.declared.get(env, {}).items():
            before = stored.get(model)
            if before is None:
                continue
            after: Rollout | None = before
            if before.phase == PENDING:
                after = self.store.update(
                    env, model, lambda r: machine.start(r, now) if r.phase == PENDING else (r, None)
                )
            elif before.phase in (PROGRESSING, PAUSED) and not (before.phase == PAUSED and before.paused_by == "user"):
                after = self._analyse(env, model, analysis, before, now)
            if after is None:
                continue
            seen = self._seen.get((env, model))
            if after.weight != before.weight or after.phase != before.phase or (seen and seen[1] != after.phase):
                changed = True
            if (
                after.phase in (ROLLED_BACK, PROMOTED)
                and seen is not None
                and seen[0] == after.key
                and seen[1] != after.phase
            ):
                self._write_back(after)
            self._seen[(env, model)] = (after.key, after.phase)
            if self.metrics is not None:
                self.metrics.set(after)
        return changed

    def _analyse(self, env: str, model: str, analysis: Analysis, r: Rollout, now: float) -> Rollout | None:
        provider = self.provider(analysis)
        mark_key = (env, model, r.key, r.step, r.step_started, id(provider))
        if mark_key not in self._marks:
            self._marks = {k: v for k, v in self._marks.items() if k[:2] != (env, model)}
            self._marks[mark_key] = provider.mark(model, (str(r.stable), str(r.canary)))
        window = provider.window(
            model, str(r.stable), str(r.canary), self._marks[mark_key], now - r.step_started, analysis.checks
        )
        verdict = evaluate(analysis.checks, analysis.minRequests, window)
        interval = analysis.interval_seconds()
        quiet, transition = machine.tick(r, verdict, now, interval)
        last = self._written.get((env, model), 0.0)
        if (
            transition is None
            and quiet.phase == r.phase
            and quiet.step == r.step
            and now - last < VERDICT_WRITE_SECONDS
        ):
            return quiet  # only the verdict moved: it is stored every few seconds, not every tick
        self._written[(env, model)] = now

        def change(cur: Rollout) -> tuple[Rollout, Transition | None]:
            if cur.key != r.key or cur.step != r.step or cur.phase != r.phase:
                return cur, None  # changed underneath us (mlp rollout ...): judge it next time
            return machine.tick(cur, verdict, now, interval)

        after = self.store.update(env, model, change)
        if after is not None and after.phase != r.phase:
            self.echo(f"rollout {env}/{model}: {r.phase} -> {after.phase}: {after.message}")
        elif after is not None and after.step != r.step:
            self.echo(f"rollout {env}/{model}: {after.message}")
        return after

    def _write_back(self, r: Rollout) -> None:
        if self.writeback is None:
            return
        hook = self.writeback

        def run() -> None:
            try:
                info = hook(r)
                kind = "promotion" if r.phase == PROMOTED else "revert"
                message = f"{kind} branch {info.get('revert_branch')}" + (
                    f", {info['revert_url']}" if info.get("revert_url") else ""
                )
            except Exception as exc:  # write-back must never stop the loop
                info, message = {}, f"write-back not opened: {type(exc).__name__}: {exc}"
            self.echo(f"rollout {r.env}/{r.model}: {message}")

            def record(cur: Rollout) -> tuple[Rollout, Transition | None]:
                if cur.key != r.key:
                    return cur, None
                cur = copy.copy(cur)
                cur.revert_branch = info.get("revert_branch")
                cur.revert_url = info.get("revert_url")
                cur.message = f"{cur.message}; {message}"
                return cur, None

            self.store.update(r.env, r.model, record)

        t = threading.Thread(target=run, name="mlp-rollout-writeback", daemon=True)
        t.start()
        self._threads = [x for x in self._threads if x.is_alive()] + [t]

    def wait(self, timeout: float = 30.0) -> None:
        for t in list(self._threads):
            t.join(timeout)

    # --- where traffic goes ------------------------------------------------------------------

    def positions(self, env: str, deployments: dict[str, Deployment] | None = None) -> dict[str, Position]:
        """model -> where its canary stands, for the engine's resolve stage.

        With `deployments` (a revision about to be applied), only the rollouts of the canaries it
        declares unchanged: a new canary declaration starts at its first step."""
        out = {}
        for r in self.store.all(env):
            if r.model not in self.declared.get(env, {}):
                continue
            if deployments is not None:
                dep = deployments.get(r.model)
                if dep is None or dep.canary is None:
                    continue
                if machine.declaration_key(dep.version, dep.canary.version, list(dep.canary.steps)) != r.key:
                    continue
            out[r.model] = Position(r.phase, r.weight)
        return out
