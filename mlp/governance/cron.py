"""Cron schedules for sync windows, evaluated with the same parsers validation uses (pure).

Parsing and matching are `cronsim`'s (Debian cron semantics: names, ranges, steps,
`@daily`-style macros; day-of-month and day-of-week OR-ed when both are restricted),
durations and time zones are `mlp.specs.units`': so a window `mlp validate` accepts is
a window this module can evaluate. A window is open at `now` when its schedule matched
at some minute in `(now - duration, now]`, in the window's time zone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from mlp.specs.units import cron_previous, parse_cron, parse_duration, parse_timezone

__all__ = ["Cron", "CronError", "parse_duration", "window_open_since"]


class CronError(ValueError):
    """A cron expression, duration or time zone that cannot be parsed; the message says why."""


@dataclass(frozen=True)
class Cron:
    """A checked cron expression."""

    expression: str

    @classmethod
    def parse(cls, expression: str) -> Cron:
        try:
            return cls(parse_cron(expression))
        except ValueError as exc:
            raise CronError(str(exc)) from None

    def matches(self, t: datetime) -> bool:
        minute = t.replace(second=0, microsecond=0)
        return cron_previous(self.expression, minute) == minute


def window_open_since(schedule: str, duration: str, now: datetime, timezone: str = "UTC") -> datetime | None:
    """The start of the window that contains `now`, or None when `now` is outside every window.

    `now` must be timezone-aware. The latest matching start wins, so overlapping
    windows report the most recent opening.
    """
    try:
        length: timedelta = parse_duration(duration)
        zone = parse_timezone(timezone)
        parse_cron(schedule)
    except ValueError as exc:
        raise CronError(str(exc)) from None
    local_now = now.astimezone(zone).replace(second=0, microsecond=0)
    start = cron_previous(schedule, local_now)
    if start is None or local_now - start >= length:
        return None
    return start
