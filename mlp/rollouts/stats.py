"""A/B statistics that stay valid however often you look (pure: numpy and scipy only).

`compare(a, b)` takes the outcomes of the control (a) and the variant (b). Binary outcomes
(all 0/1) use the two-proportion z statistic, anything else Welch's statistic; both are
turned into *always-valid* inference with the mixture sequential probability ratio test
(mSPRT, Johari, Koomen, Pekelis & Walsh, "Always valid inference", 2017): with a normal
mixing distribution of variance tau^2 over the effect, the likelihood ratio after n
observations is

    L = sqrt(V / (V + tau^2)) * exp(tau^2 * d^2 / (2 V (V + tau^2)))

where d is the observed difference and V its variance. `p = min(1, 1/L)` may be read at any
time (and the running minimum over looks, kept by the caller, stays valid); the matching
confidence sequence is d +- sqrt(V (V + tau^2) / tau^2 * (2 log(1/alpha) + log((V + tau^2)/V))).
The fixed-horizon p-value (two-proportion z or Welch t) is reported too, marked as valid
only for a single look at a planned sample size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np


@dataclass
class Report:
    test: str  # two-proportion | welch
    n_control: int
    n_variant: int
    mean_control: float
    mean_variant: float
    effect: float  # variant - control
    relative_effect: float | None
    ci_low: float  # always-valid (1 - alpha) confidence sequence
    ci_high: float
    p_value: float  # always-valid
    fixed_horizon_p_value: float
    alpha: float
    mde: float
    samples_needed_per_arm: int | None  # for `power` against `mde` with the sequential test
    remaining_per_arm: int | None
    recommendation: str

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _variance(a: np.ndarray, b: np.ndarray, binary: bool) -> tuple[float, float]:
    """(V of the difference of means, per-observation variance pooled) from the two samples."""
    if binary:
        pooled = (a.sum() + b.sum()) / (len(a) + len(b))
        s2 = max(pooled * (1 - pooled), 1e-12)
        return s2 / len(a) + s2 / len(b), s2
    va, vb = a.var(ddof=1), b.var(ddof=1)
    return max(va / len(a) + vb / len(b), 1e-24), max((va + vb) / 2, 1e-12)


def msprt_p(effect: float, v: float, tau2: float) -> float:
    log_l = 0.5 * math.log(v / (v + tau2)) + tau2 * effect * effect / (2 * v * (v + tau2))
    return 1.0 if log_l <= 0 else min(1.0, math.exp(-log_l))


def ci_halfwidth(v: float, tau2: float, alpha: float) -> float:
    return math.sqrt(v * (v + tau2) / tau2 * (2 * math.log(1 / alpha) + math.log((v + tau2) / v)))


def samples_needed(mde: float, s2: float, alpha: float, power: float, tau2: float) -> int:
    """Per-arm n at which the sequential test rejects with probability `power` when the effect is `mde`."""
    z = NormalDist().inv_cdf(power)

    def enough(n: int) -> bool:
        v = 2 * s2 / n
        return mde - z * math.sqrt(v) >= ci_halfwidth(v, tau2, alpha)

    hi = 2
    while not enough(hi):
        hi *= 2
        if hi > 1 << 40:
            return hi
    lo = hi // 2
    while lo + 1 < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return hi


def compare(
    control: Sequence[float],
    variant: Sequence[float],
    *,
    alpha: float = 0.05,
    mde: float | None = None,
    power: float = 0.8,
) -> Report:
    a = np.asarray(control, dtype=float)
    b = np.asarray(variant, dtype=float)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 outcomes per arm (control {len(a)}, variant {len(b)})")
    binary = bool(np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all())
    v, s2 = _variance(a, b, binary)
    effect = float(b.mean() - a.mean())
    if binary:
        fixed_p = 2 * (1 - NormalDist().cdf(abs(effect) / math.sqrt(v)))
    else:
        from scipy import stats

        fixed_p = float(stats.ttest_ind(b, a, equal_var=False).pvalue) if v > 1e-24 else 1.0
    # tau: the effect size we want to find (MDE); by default a fifth of a standard deviation
    mde = mde if mde is not None else 0.2 * math.sqrt(s2)
    tau2 = mde * mde
    p = msprt_p(effect, v, tau2)
    half = ci_halfwidth(v, tau2, alpha)
    needed = samples_needed(mde, s2, alpha, power, tau2)
    remaining = max(0, needed - min(len(a), len(b)))
    if p < alpha:
        better = "variant" if effect > 0 else "control"
        recommendation = f"ship the {better}: the difference is significant (always-valid p={p:.3g})"
    elif remaining == 0:
        recommendation = f"stop: no difference as large as {mde:.3g} at {power:.0%} power; keep the control or decide on other grounds"
    else:
        recommendation = f"keep running: about {remaining} more outcomes per arm for {power:.0%} power at {mde:.3g}"
    return Report(
        test="two-proportion" if binary else "welch",
        n_control=len(a),
        n_variant=len(b),
        mean_control=float(a.mean()),
        mean_variant=float(b.mean()),
        effect=effect,
        relative_effect=effect / float(a.mean()) if a.mean() != 0 else None,
        ci_low=effect - half,
        ci_high=effect + half,
        p_value=p,
        fixed_horizon_p_value=fixed_p,
        alpha=alpha,
        mde=mde,
        samples_needed_per_arm=needed,
        remaining_per_arm=remaining,
        recommendation=recommendation,
    )
