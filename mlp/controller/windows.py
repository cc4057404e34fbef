"""Sync windows: may an automated sync run now?

Rules (as Argo CD's): a deny window that is open blocks; if any allow windows exist, one
of them must be open. Manual syncs (`mlp sync ENV`) are not subject to windows. A window
that cannot be parsed blocks too (fail closed) and says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from mlp.governance.cron import CronError, window_open_since
from mlp.specs.models import SyncWindow


def sync_allowed(windows: Sequence[SyncWindow], now: datetime) -> tuple[bool, str]:
    """(allowed, reason) for an automated sync at `now` (timezone-aware)."""
    if not windows:
        return True, ""
    has_allow = allow_open = False
    for w in windows:
        try:
            since = window_open_since(w.schedule, w.duration, now, w.timezone)
        except (CronError, KeyError, ValueError) as exc:
            return False, f"sync window {w.schedule!r} is invalid: {exc}"
        if w.kind == "deny" and since is not None:
            return False, f"deny window '{w.schedule}' ({w.duration}, {w.timezone}) open since {since:%Y-%m-%d %H:%M}"
        if w.kind == "allow":
            has_allow = True
            allow_open = allow_open or since is not None
    if has_allow and not allow_open:
        return False, "outside every allow window"
    return True, ""
