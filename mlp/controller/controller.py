"""The long-running controller: poll the source, queue environments, reconcile them in parallel.

Threads:
- the loop (the thread that calls `run()`): every `interval` seconds refreshes the source
  (Git: `ls-remote`, then a shallow fetch of refs that moved) and queues every
  environment; on demand (`trigger()`, or a row `mlp sync` / the webhook receiver wrote
  into the state database, polled every `poll` seconds, 0.5 by default) it refreshes at once and queues
  the named environment;
- `workers` reconcilers taking environments from a `WorkQueue` (one step per environment
  at a time, different environments in parallel);
- the metrics endpoint.

`stop()` (SIGTERM in `mlp controller`) stops handing out work; each worker finishes the
step it is in, then `run()` returns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from mlp.controller.metrics import ControllerMetrics
from mlp.controller.queue import WorkQueue
from mlp.controller.reconciler import Reconciler, RevisionSource, StepResult

log = logging.getLogger("mlp.controller")

ALL = "*"  # trigger every environment


class RefreshResultLike(Protocol):
    changed: list[str]
    error: str | None
    duration: float


class RefreshingSource(RevisionSource, Protocol):
    def refresh(self, refs: Iterable[str]) -> RefreshResultLike: ...


@dataclass
class ControllerEvents:
    """Hooks for progress output (the CLI prints them; tests wait on them)."""

    on_step: Callable[[StepResult, set[str]], None] | None = None
    on_refresh: Callable[[RefreshResultLike], None] | None = None


@dataclass
class _Demand:
    envs: dict[str, set[str]] = field(default_factory=dict)  # env or ALL -> reasons


class Controller:
    def __init__(
        self,
        source: RefreshingSource,
        reconciler: Reconciler,
        *,
        interval: float = 60.0,
        environments: Iterable[str] | None = None,
        workers: int = 4,
        poll: float = 0.5,
        metrics: ControllerMetrics | None = None,
        events: ControllerEvents | None = None,
        leader: Callable[[], bool] | None = None,
    ) -> None:
        self.source = source
        self.reconciler = reconciler
        self.interval = interval
        self.only = set(environments) if environments else None
        self.workers = max(1, workers)
        self.poll = poll
        self.metrics = metrics
        self.events = events or ControllerEvents()
        # With leader election, a follower only watches and serves metrics: nothing is queued
        # or stepped (so nothing written) unless this says it holds the lease right now.
        self.leader = leader
        self.queue = WorkQueue(on_depth=self._depth)
        self._stop = threading.Event()
        self._wake = threading.Condition()
        self._demand = _Demand()
        self._threads: list[threading.Thread] = []
        self.steps = 0  # completed steps, for tests and progress

    # --- API for webhooks and the CLI ------------------------------------------------------

    def trigger(self, env: str | None = None, reason: str = "manual") -> None:
        """Reconcile `env` (None: every environment) as soon as possible, after a fresh fetch.

        Triggers coalesce: many while one is pending make one reconcile. Reasons:
        "manual" (applies regardless of automated/windows), "webhook", "git", "interval".
        """
        with self._wake:
            self._demand.envs.setdefault(env or ALL, set()).add(reason)
            self._wake.notify_all()

    def stop(self) -> None:
        """Finish the steps in progress, start no new ones, and let `run()` return."""
        self._stop.set()
        self.queue.close()
        with self._wake:
            self._wake.notify_all()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # --- the loop ----------------------------------------------------------------------------

    def environments(self) -> dict[str, str]:
        envs = self.reconciler.environments()
        if self.only is not None:
            envs = {e: r for e, r in envs.items() if e in self.only}
            for missing in self.only - set(envs) - getattr(self.reconciler, "handled_elsewhere", set()):
                envs[missing] = self.reconciler.default_ref
        return envs

    def refresh(self) -> list[str]:
        """Fetch the default ref and every environment's ref; returns the environments whose ref moved."""
        refs = {self.reconciler.default_ref}
        envs = self.environments()
        refs |= set(envs.values())
        result = self.source.refresh(sorted(refs))
        # The environment list (and their branches) may have changed with the default ref.
        if self.reconciler.default_ref in result.changed:
            envs = self.environments()
            missing = set(envs.values()) - refs
            if missing:
                extra = self.source.refresh(sorted(missing))
                result.changed.extend(extra.changed)
                result.error = result.error or extra.error
        if self.metrics is not None:
            self.metrics.git_fetch_duration.observe(result.duration)
            if result.error:
                self.metrics.git_fetch_failures.inc()
        if result.error:
            log.warning("source refresh failed: %s", result.error)
        if self.events.on_refresh:
            self.events.on_refresh(result)
        return [e for e, r in envs.items() if r in result.changed]

    def run(self) -> None:
        """Run until `stop()`; blocking."""
        for i in range(self.workers):
            t = threading.Thread(target=self._work, name=f"mlp-reconcile-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        next_interval = 0.0  # reconcile everything at start
        next_poll = 0.0
        try:
            while not self._stop.is_set():
                if not self.leading():
                    next_interval = next_poll = 0.0  # a new leader reconciles everything at once
                    self._stop.wait(self.poll)
                    continue
                now = time.monotonic()
                if now >= next_poll:
                    next_poll = now + self.poll
                    try:
                        requests = self.reconciler.store.take_sync_requests()
                    except Exception:  # a locked or broken state file must not stop reconciling
                        log.exception("cannot read sync requests")
                        requests = []
                    for env, reason in requests:
                        self.trigger(None if env == ALL else env, reason)
                with self._wake:
                    demand, self._demand = self._demand, _Demand()
                if now >= next_interval or demand.envs:
                    moved = self._safe_refresh()
                    envs = self.environments()
                    if now >= next_interval:
                        next_interval = now + self.interval
                        for env in envs:
                            self.queue.put(env, "git" if env in moved else "interval")
                    for env in moved:
                        self.queue.put(env, "git")
                    for env, reasons in demand.envs.items():
                        for name in envs if env == ALL else [env]:
                            for reason in reasons:
                                self.queue.put(name, reason)
                with self._wake:
                    if self._demand.envs or self._stop.is_set():
                        continue
                    wait = max(0.0, min(next_interval, next_poll) - time.monotonic())
                    self._wake.wait(wait)
        finally:
            self.stop()
            for t in self._threads:
                t.join()

    def _safe_refresh(self) -> list[str]:
        try:
            return self.refresh()
        except Exception as exc:  # the source must never take the loop down
            log.exception("source refresh crashed: %s", exc)
            if self.metrics is not None:
                self.metrics.git_fetch_failures.inc()
            return []

    def _work(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            env, reasons = item
            if not self.leading():
                self.queue.done(env)
                continue
            try:
                result = self.reconciler.step(env, reasons=reasons, ref=None)
                self.steps += 1
                if self.events.on_step:
                    self.events.on_step(result, reasons)
            except Exception:  # step() already catches; this guards the hooks
                log.exception("reconcile of %s crashed", env)
            finally:
                self.queue.done(env)

    def leading(self) -> bool:
        return self.leader is None or self.leader()

    def _depth(self, n: int) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(n)
