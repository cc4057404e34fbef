"""The parsers for values whose meaning a consumer defines: one each, used by validate and runtime.

What `mlp validate` accepts must be exactly what the runtime accepts, so validation and
every runtime consumer call these same functions and nothing else:

- `parse_cron(expr)`: a cron schedule, by `cronsim` (Debian cron's semantics, `@daily`
  style macros included); sync windows and monitor schedules.
- `parse_duration(text)`: `30s`, `15m`, `4h`, `2d`, `1w` and combinations (`2h30m`), as
  Prometheus writes them; sync windows, alert `for`, analysis intervals, feature TTLs.
- `parse_timezone(name)`: an IANA zone via `zoneinfo`.
- `parse_quantity(value)`: a Kubernetes quantity, by the official client's
  `kubernetes.utils.parse_quantity` (what the API server's format accepts).

Each raises `ValueError` with a message that says what is wrong.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# Largest values the consumers store: SQLite and JSON integers (int64), Kubernetes int32 fields.
INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1

_DURATION_UNITS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
# Longest duration anything here needs (a sync window, a TTL): ten years.
MAX_DURATION = timedelta(days=3660)


def parse_duration(text: str) -> timedelta:
    """`2h30m` as a timedelta; units w, d, h, m, s in that order, each at most once."""
    m = _DURATION.fullmatch(text) if isinstance(text, str) else None
    if not text or m is None or not any(m.groups()):
        raise ValueError(f"duration {text!r} is not like 30s, 15m, 4h, 2d, 1w or 2h30m")
    seconds = sum(int(n) * _DURATION_UNITS[u] for n, u in zip(m.groups(), "wdhms", strict=True) if n)
    if seconds <= 0:
        raise ValueError(f"duration {text!r} must be longer than zero")
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"duration {text!r} is longer than {MAX_DURATION.days} days")
    return timedelta(seconds=seconds)


@lru_cache(maxsize=256)
def parse_timezone(name: str) -> ZoneInfo:
    if not isinstance(name, str) or not name or name.startswith("/") or ".." in name:
        raise ValueError(f"{name!r} is not an IANA time zone (like UTC or Europe/Paris)")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not an IANA time zone (like UTC or Europe/Paris)") from None


# Debian cron's macros, which cronsim leaves to the caller; `@reboot` has no time and is refused.
CRON_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


@lru_cache(maxsize=256)
def parse_cron(expression: str) -> str:
    """The five-field form of `expression`, checked by the cron library the runtime evaluates it with."""
    from cronsim import CronSim, CronSimError

    if not isinstance(expression, str) or not expression.strip():
        raise ValueError("empty cron expression")
    text = CRON_MACROS.get(expression.strip().lower(), expression)
    try:
        CronSim(text, datetime(2000, 1, 1))
    except CronSimError as exc:
        raise ValueError(f"cron expression {expression!r}: {exc}") from None
    except (ValueError, IndexError, KeyError) as exc:
        raise ValueError(f"cron expression {expression!r}: {exc}") from None
    return text


def cron_previous(expression: str, at: datetime) -> datetime | None:
    """The latest time at or before `at` (timezone-aware) that `expression` matches, or None."""
    from cronsim import CronSim

    start = at.replace(second=0, microsecond=0) + timedelta(minutes=1)
    it = CronSim(parse_cron(expression), start, reverse=True)
    try:
        found: datetime = next(it)
    except StopIteration:
        return None
    return found


@lru_cache(maxsize=1)
def _k8s_parse_quantity() -> Any:
    """`kubernetes.utils.quantity.parse_quantity`, loaded without the `kubernetes` package's
    `__init__` (which imports the whole generated API client, about a second): the module
    itself needs only `decimal`."""
    import importlib.util

    spec = importlib.util.find_spec("kubernetes")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the kubernetes package is required to check quantities")
    path = Path(next(iter(spec.submodule_search_locations))) / "utils" / "quantity.py"
    module_spec = importlib.util.spec_from_file_location("_mlp_kubernetes_quantity", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.parse_quantity


def parse_quantity(value: Any) -> Decimal:
    """The value of a Kubernetes quantity ("500m", "2Gi", 1); refuses what the API server refuses."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (like 500m, 2, 512Mi or 1Gi)")
    try:
        result: Decimal = _k8s_parse_quantity()(value)
    except (ValueError, ArithmeticError, TypeError):
        hint = " (use Mi/Gi for memory, not MB/GB)" if isinstance(value, str) and value.endswith("B") else ""
        raise ValueError(f"{value!r} is not a Kubernetes quantity (like 500m, 2, 512Mi or 1Gi){hint}") from None
    if not result.is_finite() or result < 0:
        raise ValueError(f"{value!r}: a resource quantity must be a finite number, zero or more")
    return result
