"""Drift detectors: alibi-detect's KS, Chi-squared, TabularDrift and MMD; PSI in-house.

alibi-detect (Business Source License 1.1) is the optional extra `monitors`; without it every
detector but `psi` refuses with one clear line. A detector is built once per monitor from the
reference sample (alibi-detect preprocesses `x_ref` at construction), then tests each window.
The reference is prepared once, for every window after: its columns are sorted and stored
column by column (the per-feature tests see each column alone, in any order: KS sorts it again
on every call, which is cheap on sorted contiguous data), and for Chi-squared features its
category counts are taken once (alibi-detect counts the 10,000-row reference again on every
`predict`, most of a Chi-squared window's cost); a category new in a window is counted as
alibi-detect counts it. The p-values and statistics are alibi-detect's, bit for bit.
Per-feature verdicts use alibi-detect's own corrected threshold (`data.threshold` of a batch
prediction: p / n for Bonferroni, the Benjamini-Hochberg cut-off for FDR), so a feature is
reported drifted exactly when it contributed to alibi-detect's batch verdict.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LICENSE_NOTE = "alibi-detect is licensed under the Business Source License 1.1"


class DetectorError(Exception):
    """A detector cannot be built or run; the message is one clear line."""


@dataclass
class DriftResult:
    is_drift: bool
    threshold: float
    p_values: dict[str, float] = field(default_factory=dict)
    distances: dict[str, float] = field(default_factory=dict)
    drifted: list[str] = field(default_factory=list)


def _alibi() -> Any:
    import os

    # alibi-detect imports transformers, which prints advice about missing deep-learning backends
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        import alibi_detect.cd as cd
    except ImportError:
        raise DetectorError(
            "alibi-detect is not installed: pip install 'mlp[monitors]' (" + LICENSE_NOTE + ")"
        ) from None
    return cd


def mmd_backend() -> str | None:
    """The first deep-learning backend alibi-detect's MMDDrift can use here, or None."""
    import importlib.util

    for module, backend in (("torch", "pytorch"), ("tensorflow", "tensorflow"), ("pykeops", "keops")):
        if importlib.util.find_spec(module) is not None:
            return backend
    return None


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index of one feature, bins at the reference's deciles."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)))
    if edges.size < 2:
        return 0.0 if np.all(current == edges[0]) else float("inf")
    edges[0], edges[-1] = -np.inf, np.inf
    eps = 1e-6
    r = np.histogram(reference, edges)[0] / max(1, reference.size) + eps
    c = np.histogram(current, edges)[0] / max(1, current.size) + eps
    return float(np.sum((c - r) * np.log(c / r)))


def _column_sorted(reference: np.ndarray) -> np.ndarray:
    """Each column sorted, column-major: what the per-feature tests read fastest."""
    return np.asfortranarray(np.sort(reference, axis=0))


@functools.cache  # one subclass per alibi-detect class, not one per detector built
def _counted_once(base: type) -> type:
    """`base` (alibi-detect's ChiSquareDrift or TabularDrift) with the reference's counts kept."""

    class CountedOnce(base):  # type: ignore[misc, valid-type]
        def __init__(self, x_ref: np.ndarray, **kwargs: Any) -> None:
            super().__init__(x_ref, **kwargs)
            flat = self.x_ref.reshape(self.x_ref.shape[0], -1)
            # alibi-detect's count (equality per value; NaN never counts), taken once
            self._ref_counts = {
                f: {v: (flat[:, f] == v).sum() for v in values} for f, values in self.x_ref_categories.items()
            }

        def _get_counts(self, x: np.ndarray, categories: dict[int, list[Any]]) -> dict[int, list[Any]]:
            # `feature_score` passes the reference reshaped: a view of the array kept at construction
            if x is not self.x_ref and x.base is not self.x_ref:
                return super()._get_counts(x, categories)  # type: ignore[no-any-return]
            return {
                f: [self._ref_counts[f][v] if v in self._ref_counts[f] else (x[:, f] == v).sum() for v in values]
                for f, values in categories.items()
            }

    CountedOnce.__name__ = CountedOnce.__qualname__ = base.__name__
    return CountedOnce


class DriftDetector:
    """One detector over `features` (columns of the arrays, in this order)."""

    def __init__(
        self,
        kind: str,
        reference: np.ndarray,
        features: list[str],
        *,
        categorical: list[str] = (),  # type: ignore[assignment]
        p_val: float = 0.05,
        correction: str = "bonferroni",
    ) -> None:
        self.kind = kind
        self.features = list(features)
        self.p_val = p_val
        self.correction = correction
        self.reference = np.asarray(reference, dtype=np.float64)
        if self.reference.ndim != 2 or self.reference.shape[1] != len(self.features):
            raise DetectorError(f"reference has shape {self.reference.shape}, expected (n, {len(self.features)})")
        self._cd: Any = None
        if kind == "psi":
            return
        cd = _alibi()
        cats = [self.features.index(c) for c in categorical]
        if kind == "ks":
            self._cd = cd.KSDrift(_column_sorted(self.reference), p_val=p_val, correction=correction)
        elif kind == "chi2":
            self._cd = _counted_once(cd.ChiSquareDrift)(
                _column_sorted(self.reference), p_val=p_val, correction=correction
            )
        elif kind == "tabular":
            self._cd = _counted_once(cd.TabularDrift)(
                _column_sorted(self.reference),
                p_val=p_val,
                correction=correction,
                categories_per_feature={i: None for i in cats},
            )
        elif kind == "mmd":
            backend = mmd_backend()
            if backend is None:
                raise DetectorError(
                    "detector mmd needs PyTorch, TensorFlow or KeOps for alibi-detect; none is installed "
                    "(pip install torch), or use ks/tabular"
                )
            self._cd = cd.MMDDrift(self.reference.astype(np.float32), backend=backend, p_val=p_val)
        else:
            raise DetectorError(f"unknown detector {kind!r}")

    def test(self, x: np.ndarray) -> DriftResult:
        x = np.asarray(x, dtype=np.float64)
        if self.kind == "psi":
            values = {f: psi(self.reference[:, i], x[:, i]) for i, f in enumerate(self.features)}
            drifted = [f for f, v in values.items() if v > self.p_val]
            return DriftResult(bool(drifted), self.p_val, {}, values, drifted)
        if self.kind == "mmd":
            out = self._cd.predict(x.astype(np.float32))["data"]
            return DriftResult(
                bool(out["is_drift"]),
                float(out["threshold"]),
                {"*": float(out["p_val"])},
                {"*": float(out["distance"])},
                list(self.features) if out["is_drift"] else [],
            )
        out = self._cd.predict(x, drift_type="batch", return_p_val=True, return_distance=True)["data"]
        p = np.asarray(out["p_val"], dtype=np.float64)
        d = np.asarray(out["distance"], dtype=np.float64)
        is_drift = bool(out["is_drift"])
        # Bonferroni: alibi-detect's threshold is p_val / n. FDR: the Benjamini-Hochberg cut-off when
        # something drifted (every p below it is significant), else the array of candidate cut-offs.
        raw = np.asarray(out["threshold"], dtype=np.float64)
        threshold = float(raw) if raw.ndim == 0 else float(raw.min())
        drifted = [f for i, f in enumerate(self.features) if is_drift and p[i] < threshold]
        return DriftResult(
            is_drift,
            threshold,
            {f: float(p[i]) for i, f in enumerate(self.features)},
            {f: float(d[i]) for i, f in enumerate(self.features)},
            drifted,
        )
