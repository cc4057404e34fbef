"""Canary analysis: judge one step's window of measurements against the declared checks.

Pure: no I/O. A metrics provider fills a `Window` (canary and stable `Sample`s for the
time since the step began, plus custom query values); `evaluate` returns a `Verdict`:

- ``fail``  a check is outside its threshold with enough requests seen: roll back now;
- ``pass``  every check holds and the canary answered at least `min_requests`;
- ``wait``  not enough requests yet;
- ``nodata`` a provider could not answer: the rollout pauses and never promotes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mlp.specs.models import AnalysisCheck


@dataclass
class Sample:
    """What one version did during the window."""

    requests: int = 0  # answered: 2xx + 5xx (client mistakes are not the model's)
    errors: int = 0  # 5xx
    latencies: Sequence[float] = ()
    outputs: Sequence[float] = ()
    feedback_count: int = 0
    feedback_sum: float = 0.0

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


@dataclass
class Window:
    canary: Sample
    stable: Sample
    custom: dict[str, float | None] = field(default_factory=dict)  # metric -> value (prometheus queries)
    error: str | None = None  # the provider could not answer: why


@dataclass
class CheckResult:
    metric: str
    value: float | None
    ok: bool | None  # None: no value yet
    detail: str

    def to_json(self) -> dict[str, object]:
        return {"metric": self.metric, "value": self.value, "ok": self.ok, "detail": self.detail}


@dataclass
class Verdict:
    outcome: str  # pass | fail | wait | nodata
    reason: str
    results: list[CheckResult] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"outcome": self.outcome, "reason": self.reason, "checks": [r.to_json() for r in self.results]}


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (what a latency objective means: q% of requests at or under it)."""
    if not len(values):
        return None
    arr = np.asarray(values, dtype=float)
    k = min(len(arr) - 1, max(0, int(np.ceil(q / 100 * len(arr))) - 1))
    return float(np.partition(arr, k)[k])


def shift_pvalue(canary: Sequence[float], stable: Sequence[float]) -> float | None:
    """p-value that canary and stable outputs come from one distribution.

    Few distinct values (class labels): chi-squared test of homogeneity on the counts;
    otherwise the two-sample Kolmogorov-Smirnov test.
    """
    if len(canary) < 5 or len(stable) < 5:
        return None
    # By hand over scipy's special functions: scipy.stats' wrappers cost ~5 ms a call,
    # which 100 rollouts analysed every second cannot afford.
    from scipy import special

    a = np.asarray(canary, dtype=float)
    b = np.asarray(stable, dtype=float)
    both = np.concatenate([a, b])
    values, inverse = np.unique(both, return_inverse=True)
    if len(values) <= 20:
        if len(values) < 2:
            return 1.0
        observed = np.stack(
            [
                np.bincount(inverse[: len(a)], minlength=len(values)),
                np.bincount(inverse[len(a) :], minlength=len(values)),
            ]
        ).astype(float)
        expected = observed.sum(axis=1, keepdims=True) * observed.sum(axis=0, keepdims=True) / observed.sum()
        stat = float(((observed - expected) ** 2 / expected).sum())
        return float(special.chdtrc(len(values) - 1, stat))
    # two-sample Kolmogorov-Smirnov, asymptotic distribution
    a.sort()
    b.sort()
    cdf_a = np.searchsorted(a, both, side="right") / len(a)
    cdf_b = np.searchsorted(b, both, side="right") / len(b)
    d = float(np.abs(cdf_a - cdf_b).max())
    en = np.sqrt(len(a) * len(b) / (len(a) + len(b)))
    return float(min(1.0, special.kolmogorov(en * d)))


def _value(check: AnalysisCheck, w: Window) -> tuple[float | None, str]:
    c = w.canary
    if check.query is not None or check.metric in w.custom:
        return w.custom.get(check.metric), "from the metrics provider"
    if check.metric == "error-rate":
        return c.error_rate, f"{c.errors}/{c.requests} canary requests failed"
    if check.metric == "latency":
        return percentile(c.latencies, check.percentile), f"p{check.percentile:g} of {len(c.latencies)} requests"
    if check.metric == "prediction-shift":
        return shift_pvalue(c.outputs, w.stable.outputs), (
            f"two-sample test on {len(c.outputs)} canary vs {len(w.stable.outputs)} stable outputs"
        )
    # accuracy / outcome: the mean feedback outcome of the canary's answers
    if c.feedback_count == 0:
        return None, "no feedback yet"
    return c.feedback_sum / c.feedback_count, f"mean of {c.feedback_count} feedback outcomes"


def evaluate(checks: Sequence[AnalysisCheck], min_requests: int, w: Window) -> Verdict:
    if w.error is not None:
        return Verdict("nodata", f"metrics unavailable: {w.error}")
    results = []
    for check in checks:
        value, how = _value(check, w)
        if value is None or not np.isfinite(value):
            results.append(CheckResult(check.metric, None, None, how))
            continue
        ok = (check.max is None or value <= check.max) and (check.min is None or value >= check.min)
        bound = " and ".join(
            s
            for s in (
                f">= {check.min:g}" if check.min is not None else "",
                f"<= {check.max:g}" if check.max is not None else "",
            )
            if s
        )
        results.append(CheckResult(check.metric, value, ok, f"{value:.4g} (want {bound}; {how})"))
    enough = w.canary.requests >= min_requests
    if not enough:
        # Errors already past what the threshold allows over the minimum request count
        # cannot be undone by the requests still to come: fail now rather than serve more.
        for check in checks:
            if check.metric == "error-rate" and check.max is not None and w.canary.errors > check.max * min_requests:
                return Verdict(
                    "fail",
                    f"error-rate {w.canary.errors} failed of {w.canary.requests} canary requests already exceeds "
                    f"{check.max:g} of the {min_requests} the step needs",
                    results,
                )
        return Verdict("wait", f"{w.canary.requests}/{min_requests} canary requests so far", results)
    failed = [r for r in results if r.ok is False]
    if failed:
        return Verdict("fail", "; ".join(f"{r.metric} {r.detail}" for r in failed), results)
    missing = [r for r in results if r.ok is None]
    if missing:
        return Verdict("wait", "; ".join(f"{r.metric}: {r.detail}" for r in missing), results)
    return Verdict("pass", "every check holds", results)
