"""Alert conditions for the local target: fire once when a condition starts, resolve once when it ends.

A condition is a named state (`data-drift`, `prediction-drift`, `accuracy-degraded`,
`accuracy-low`, ...) the runner sets after every evaluated window. `Alerter` remembers which
are active (the runner persists `active` with its check, so a restarted monitor does not fire
again) and on each transition posts to the declared receivers and appends one line to the audit log:

- `webhook`: generic JSON `{"status": "firing"|"resolved", "alert": ..., "labels": ..., ...}`
- `slack`: a Slack-compatible body `{"text": "..."}`
- `alertmanager`: Alertmanager's API, `POST <url>/api/v2/alerts` (resolve sets `endsAt`)
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mlp.retry import RetryPolicy, status_verdict


@dataclass
class Condition:
    name: str
    active: bool
    summary: str
    labels: dict[str, str]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _body(kind: str, status: str, cond: Condition, since: float, now: float) -> tuple[str, Any]:
    if kind == "slack":
        icon = ":rotating_light:" if status == "firing" else ":white_check_mark:"
        return "", {"text": f"{icon} [{status.upper()}] {cond.summary}"}
    if kind == "alertmanager":
        alert = {
            "labels": {"alertname": cond.labels.get("alertname", cond.name), **cond.labels},
            "annotations": {"summary": cond.summary},
            "startsAt": _iso(since),
        }
        if status == "resolved":
            alert["endsAt"] = _iso(now)
        return "/api/v2/alerts", [alert]
    return "", {
        "status": status,
        "alert": cond.name,
        "summary": cond.summary,
        "labels": cond.labels,
        "startsAt": _iso(since),
        **({"endsAt": _iso(now)} if status == "resolved" else {}),
    }


class Alerter:
    def __init__(
        self,
        receivers: list[dict[str, Any]],
        *,
        audit: Callable[[dict[str, Any]], None] | None = None,
        echo: Callable[[str], None] | None = None,
        timeout: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.receivers = receivers
        self.retry = RetryPolicy(attempts=3, budget=30.0, sleep=sleep)
        self.audit = audit or (lambda _event: None)
        self.echo = echo or (lambda _msg: None)
        self.timeout = timeout
        self.active: dict[str, dict[str, Any]] = {}

    def update(self, conditions: list[Condition], now: float | None = None) -> list[tuple[str, str]]:
        """Apply one window's conditions; returns the transitions [(condition, firing|resolved)]."""
        now = time.time() if now is None else now
        changes: list[tuple[str, str]] = []
        for cond in conditions:
            was = cond.name in self.active
            if cond.active and not was:
                self.active[cond.name] = {"since": now, "summary": cond.summary, "labels": cond.labels}
                self._notify("firing", cond, now, now)
                changes.append((cond.name, "firing"))
            elif not cond.active and was:
                since = float(self.active.pop(cond.name)["since"])
                resolved = Condition(cond.name, False, cond.summary, cond.labels)
                self._notify("resolved", resolved, since, now)
                changes.append((cond.name, "resolved"))
        return changes

    def _notify(self, status: str, cond: Condition, since: float, now: float) -> None:
        delivered: list[str] = []
        if self.receivers:
            delivered = self._deliver(status, cond, since, now)
        self.audit(
            {
                "event": f"alert.{status}",
                "condition": cond.name,
                "summary": cond.summary,
                "labels": cond.labels,
                "delivered": delivered,
                "time": _iso(now),
            }
        )

    def _deliver(self, status: str, cond: Condition, since: float, now: float) -> list[str]:
        import httpx  # only a monitor with receivers pays for the import, and only once it alerts

        delivered: list[str] = []
        for receiver in self.receivers:
            suffix, body = _body(receiver["type"], status, cond, since, now)
            url = receiver["url"].rstrip("/") + suffix if suffix else receiver["url"]
            try:
                outcome = self.retry.run(
                    functools.partial(httpx.post, url, json=body, timeout=self.timeout),
                    verdict=lambda r: status_verdict(r.status_code, r.headers, self.retry.now),
                    # A notification carries its alert, status and startsAt, so a receiver can tell a
                    # repeat; a duplicate is better than a lost alert (Alertmanager retries its own).
                    idempotent=True,
                )
                code = outcome.answer.status_code
                error = None if code < 300 else f"HTTP {code}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            if error:
                self.echo(f"alert {cond.name} {status}: delivery to {receiver['type']} receiver failed ({error})")
            else:
                delivered.append(receiver["type"])
        return delivered
