"""A work queue keyed by environment that coalesces triggers.

Any number of triggers for one environment (interval, Git change, webhook, manual sync)
while it waits become one reconcile carrying all their reasons. An environment is handed
to at most one worker at a time; a trigger that arrives while it is being reconciled
waits and runs once after. Different environments run in parallel.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

URGENT = frozenset({"manual", "webhook"})


class WorkQueue:
    def __init__(self, on_depth: Callable[[int], None] | None = None) -> None:
        self._cond = threading.Condition()
        self._pending: dict[str, set[str]] = {}  # env -> reasons, in arrival order of envs
        self._running: set[str] = set()
        self._closed = False
        self._on_depth = on_depth

    def put(self, key: str, reason: str) -> None:
        with self._cond:
            if self._closed:
                return
            self._pending.setdefault(key, set()).add(reason)
            self._report()
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> tuple[str, set[str]] | None:
        """The next environment not already running, with its coalesced reasons; None when closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._closed:
                    return None
                ready = [k for k in self._pending if k not in self._running]
                if ready:
                    # Someone is waiting on a manual sync or a push webhook: those go first.
                    key = next((k for k in ready if self._pending[k] & URGENT), ready[0])
                    reasons = self._pending.pop(key)
                    self._running.add(key)
                    self._report()
                    return key, reasons
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def done(self, key: str) -> None:
        with self._cond:
            self._running.discard(key)
            self._cond.notify_all()

    def close(self) -> None:
        """Hand out nothing more; workers finish their current item and see None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def depth(self) -> int:
        with self._cond:
            return len(self._pending)

    def running(self) -> set[str]:
        with self._cond:
            return set(self._running)

    def idle(self) -> bool:
        with self._cond:
            return not self._pending and not self._running

    def _report(self) -> None:
        if self._on_depth is not None:
            self._on_depth(len(self._pending))
