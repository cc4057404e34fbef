"""The rollout state machine of one deployment's canary (pure: no I/O, time is passed in).

    Pending -> Progressing(step k) -> Promoted | RolledBack
                    ^   |
                    |   v
                   Paused (by a user, or by missing metrics: resumes when they return)

A rollout is identified by its environment, model and *declaration* (stable version,
canary version, steps): a new commit that leaves the canary block unchanged continues the
same rollout; a rolled-back declaration is never retried, whatever commit carries it.
Every transition returns one `Transition` for the audit log.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy and scipy stay out of `mlp status` and `mlp rollout`
    from mlp.rollouts.analysis import Verdict

PENDING, PROGRESSING, PAUSED, PROMOTED, ROLLED_BACK = "Pending", "Progressing", "Paused", "Promoted", "RolledBack"
TERMINAL = (PROMOTED, ROLLED_BACK)


def declaration_key(stable: int, canary: int, steps: list[int]) -> str:
    raw = json.dumps({"stable": stable, "canary": canary, "steps": steps}, sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


@dataclass
class Rollout:
    env: str
    model: str
    stable: int
    canary: int
    steps: list[int]
    key: str
    revision: str | None = None  # the commit that started it
    phase: str = PENDING
    step: int = 0
    step_started: float = 0.0
    paused_by: str | None = None  # user | metrics
    message: str = ""
    last_verdict: dict[str, Any] = field(default_factory=dict)
    revert_branch: str | None = None
    revert_url: str | None = None
    updated_at: float = 0.0
    first_step: int = 0  # where it starts: the step of the declared `canary.traffic`

    @property
    def weight(self) -> int:
        """The canary's share of traffic right now."""
        if self.phase == PROMOTED:
            return 100
        if self.phase in (ROLLED_BACK, PENDING):
            return 0
        return self.steps[min(self.step, len(self.steps) - 1)]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "weight": self.weight}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Rollout:
        data = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**data)


@dataclass(frozen=True)
class Transition:
    before: str
    after: str
    message: str


def start(r: Rollout, now: float) -> tuple[Rollout, Transition]:
    k = min(max(r.first_step, 0), len(r.steps) - 1)
    new = replace(r, phase=PROGRESSING, step=k, step_started=now, message=f"step {k + 1}/{len(r.steps)}: {r.steps[k]}%")
    return new, Transition(r.phase, PROGRESSING, f"canary v{r.canary} started at {r.steps[k]}%")


def tick(r: Rollout, verdict: Verdict, now: float, interval: float) -> tuple[Rollout, Transition | None]:
    """Apply one analysis verdict; returns the new state and the transition, if any."""
    if r.phase == PENDING:
        return start(r, now)
    if r.phase in TERMINAL:
        return r, None
    v = verdict.to_json()
    if r.phase == PAUSED:
        if r.paused_by == "metrics" and verdict.outcome != "nodata":
            # the metrics are back: continue the step from the start (its window had a gap)
            new = replace(r, phase=PROGRESSING, paused_by=None, step_started=now, message="metrics available again")
            return new, Transition(PAUSED, PROGRESSING, "metrics available again; step restarted")
        if r.paused_by == "metrics":
            return replace(r, last_verdict=v, message=verdict.reason), None
        return r, None
    if verdict.outcome == "fail":
        msg = f"step {r.step + 1} ({r.weight}%) failed: {verdict.reason}"
        return replace(r, phase=ROLLED_BACK, message=msg, last_verdict=v), Transition(PROGRESSING, ROLLED_BACK, msg)
    if verdict.outcome == "nodata":
        msg = f"paused at step {r.step + 1} ({r.weight}%): {verdict.reason}"
        new = replace(r, phase=PAUSED, paused_by="metrics", message=msg, last_verdict=v)
        return new, Transition(PROGRESSING, PAUSED, msg)
    if verdict.outcome == "pass" and now - r.step_started >= interval:
        if r.step + 1 >= len(r.steps):
            msg = f"promoted: v{r.canary} passed all {len(r.steps)} steps"
            return replace(r, phase=PROMOTED, message=msg, last_verdict=v), Transition(PROGRESSING, PROMOTED, msg)
        k = r.step + 1
        msg = f"step {k + 1}/{len(r.steps)}: {r.steps[k]}%"
        new = replace(r, step=k, step_started=now, message=msg, last_verdict=v)
        return new, Transition(PROGRESSING, PROGRESSING, f"advanced to {msg}")
    return replace(
        r, last_verdict=v, message=f"step {r.step + 1}/{len(r.steps)} at {r.weight}%: {verdict.reason}"
    ), None


def pause(r: Rollout, why: str = "paused by user") -> tuple[Rollout, Transition | None]:
    if r.phase in TERMINAL or (r.phase == PAUSED and r.paused_by == "user"):
        return r, None
    return replace(r, phase=PAUSED, paused_by="user", message=why), Transition(r.phase, PAUSED, why)


def resume(r: Rollout, now: float) -> tuple[Rollout, Transition | None]:
    if r.phase != PAUSED:
        return r, None
    new = replace(r, phase=PROGRESSING, paused_by=None, step_started=now, message="resumed")
    return new, Transition(PAUSED, PROGRESSING, f"resumed at step {r.step + 1} ({r.weight}%)")


def abort(r: Rollout, why: str = "aborted by user") -> tuple[Rollout, Transition | None]:
    if r.phase in TERMINAL:
        return r, None
    return replace(r, phase=ROLLED_BACK, message=why), Transition(r.phase, ROLLED_BACK, why)


def promote(r: Rollout, why: str = "promoted by user") -> tuple[Rollout, Transition | None]:
    if r.phase in TERMINAL:
        return r, None
    return replace(r, phase=PROMOTED, message=why), Transition(r.phase, PROMOTED, why)
