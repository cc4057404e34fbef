"""A small five-field cron matcher for sync windows (pure, no I/O).

Supports what sync windows need: `*`, numbers, ranges `a-b`, steps `*/n` and `a-b/n`,
lists `a,b`, and month / weekday names (`JAN`, `MON`). Day-of-month and day-of-week
follow classic cron: when both are restricted, a time matches if either matches.
A window is open at `now` when some minute in `(now - duration, now]` matches the
schedule, evaluated in the window's time zone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

_MONTHS = {
    m: i + 1 for i, m in enumerate(["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"])
}
_DAYS = {d: i for i, d in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])}
_BOUNDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_FIELD_NAMES = ("minute", "hour", "day of month", "month", "day of week")


class CronError(ValueError):
    """A cron expression that cannot be parsed; the message names the bad field."""


def _value(token: str, index: int) -> int:
    names = _MONTHS if index == 3 else _DAYS if index == 4 else {}
    upper = token.upper()
    if upper in names:
        return names[upper]
    if not token.isdigit():
        raise CronError(f"{_FIELD_NAMES[index]}: {token!r} is not a number")
    return int(token)


def _field(text: str, index: int) -> frozenset[int] | None:
    """The allowed values of one field, or None for an unrestricted `*`."""
    low, high = _BOUNDS[index]
    if text == "*":
        return None
    values: set[int] = set()
    for part in text.split(","):
        m = re.fullmatch(r"([^/]+)(?:/(\d+))?", part)
        if not m:
            raise CronError(f"{_FIELD_NAMES[index]}: cannot parse {part!r}")
        span, step_text = m.group(1), m.group(2)
        step = int(step_text) if step_text else 1
        if step < 1:
            raise CronError(f"{_FIELD_NAMES[index]}: step must be at least 1")
        if span == "*":
            start, end = low, high
        elif "-" in span:
            a, b = span.split("-", 1)
            start, end = _value(a, index), _value(b, index)
        else:
            start = _value(span, index)
            end = high if step_text else start
        if not (low <= start <= high and low <= end <= high) or start > end:
            raise CronError(f"{_FIELD_NAMES[index]}: {part!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step))
    if index == 4 and 7 in values:  # 7 and 0 both mean Sunday
        values.discard(7)
        values.add(0)
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    """A parsed five-field cron expression."""

    expression: str
    minute: frozenset[int] | None
    hour: frozenset[int] | None
    day: frozenset[int] | None
    month: frozenset[int] | None
    weekday: frozenset[int] | None

    @classmethod
    def parse(cls, expression: str) -> Cron:
        fields = expression.split()
        if len(fields) != 5:
            raise CronError(f"expected 5 fields (minute hour day month weekday), got {len(fields)}")
        parsed = [_field(f, i) for i, f in enumerate(fields)]
        return cls(expression, *parsed)

    def matches(self, t: datetime) -> bool:
        if self.minute is not None and t.minute not in self.minute:
            return False
        if self.hour is not None and t.hour not in self.hour:
            return False
        if self.month is not None and t.month not in self.month:
            return False
        cron_weekday = (t.weekday() + 1) % 7  # Python: Monday=0; cron: Sunday=0
        day_ok = self.day is None or t.day in self.day
        weekday_ok = self.weekday is None or cron_weekday in self.weekday
        if self.day is not None and self.weekday is not None:
            return day_ok or weekday_ok
        return day_ok and weekday_ok


def parse_duration(text: str) -> timedelta:
    """`30m`, `4h`, `2d` as a timedelta."""
    m = re.fullmatch(r"(\d+)([smhd])", text)
    if not m:
        raise CronError(f"duration {text!r} is not like 30m, 4h or 2d")
    n, unit = int(m.group(1)), m.group(2)
    return timedelta(**{{"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[unit]: n})


def window_open_since(schedule: str, duration: str, now: datetime, timezone: str = "UTC") -> datetime | None:
    """The start of the window that contains `now`, or None when `now` is outside every window.

    `now` must be timezone-aware. The latest matching start wins, so overlapping
    windows report the most recent opening.
    """
    cron = Cron.parse(schedule)
    length = parse_duration(duration)
    local_now = now.astimezone(ZoneInfo(timezone)).replace(second=0, microsecond=0)
    minutes = int(length.total_seconds() // 60)
    for back in range(minutes):
        t = local_now - timedelta(minutes=back)
        if cron.matches(t):
            return t
    return None
