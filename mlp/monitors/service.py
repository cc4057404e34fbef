"""Run monitors on their cron schedules: the loop of `mlp monitor run` and `mlp up`'s monitor thread.

A schedule is the spec's cron (`cronsim`, as `mlp validate` checks it), evaluated in UTC at minute
granularity; `interval` (seconds) replaces it for development and tests. A runner that fails to
prepare (bad reference digest, missing alibi-detect) is reported once per attempt and retried
at its next due time; a check that throws is reported and never stops the others.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from mlp.monitors.runner import MonitorError, MonitorRunner
from mlp.specs.units import parse_cron


def next_due(schedule: str, after: float) -> float:
    """The first matching minute strictly after `after` (unix seconds), by cronsim as validate checks it."""
    from cronsim import CronSim

    start = datetime.fromtimestamp(after, UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    try:
        return float(next(CronSim(parse_cron(schedule), start)).timestamp())
    except StopIteration:  # a schedule that never matches again (e.g. 30 February)
        return after + 366 * 86400.0


class Scheduled:
    def __init__(self, runner: MonitorRunner, schedule: str, interval: float | None) -> None:
        self.runner = runner
        self.schedule = schedule
        self.interval = interval
        self.ready = False
        self.due = time.time()

    def advance(self, now: float) -> None:
        self.due = now + self.interval if self.interval else next_due(self.schedule, now)


class MonitorService:
    """Several runners, one thread."""

    def __init__(
        self, echo: Callable[[str], None] | None = None, before_tick: Callable[[], None] | None = None
    ) -> None:
        self.items: list[Scheduled] = []
        self.before_tick = before_tick
        self.echo = echo or (lambda _msg: None)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, runner: MonitorRunner, schedule: str, interval: float | None = None) -> None:
        self.items.append(Scheduled(runner, schedule, interval))

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        for item in self.items:
            if now < item.due:
                continue
            item.advance(now)
            try:
                if not item.ready:
                    item.runner.prepare()
                    item.ready = True
                item.runner.check(now)
            except MonitorError as exc:
                self.echo(f"monitor {item.runner.name}: not running: {exc}")
            except Exception as exc:  # one monitor's bug must not stop the others or the server
                self.echo(f"monitor {item.runner.name}: check failed: {type(exc).__name__}: {exc}")

    def run(self) -> None:
        while not self._stop.is_set():
            if self.before_tick is not None:
                try:
                    self.before_tick()
                except Exception as exc:  # e.g. a spec reload: report, keep the running monitors
                    self.echo(f"monitors: {type(exc).__name__}: {exc}")
            self.tick()
            due = min((i.due for i in self.items), default=time.time() + 60)
            # with a reload hook, wake at least every second to notice spec changes
            cap = 1.0 if self.before_tick is not None else 60.0
            self._stop.wait(max(0.05, min(cap, due - time.time())))

    def stop_soon(self) -> None:
        """Make `run` return after the current pass (from inside a hook)."""
        self._stop.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="mlp-monitors", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
