"""Model metrics per window (scikit-learn's implementations) and the labels they need.

Labels arrive through the feedback endpoint (`<payload log>/<model>/_feedback/*.parquet`,
see FEEDBACK_CONTRACT) or a declared labels file or folder; both have `request_id` and
`outcome` columns and are joined to the payload log's `request_id`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

LOWER_IS_BETTER = frozenset({"rmse", "mae"})


def compute(metric: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from sklearn import metrics as m

    if metric == "accuracy":
        return float(m.accuracy_score(y_true, np.rint(y_pred)))
    if metric == "f1":
        labels = np.unique(np.concatenate([y_true, np.rint(y_pred)]))
        average = "binary" if labels.size <= 2 and set(labels.tolist()) <= {0.0, 1.0} else "macro"
        return float(m.f1_score(y_true, np.rint(y_pred), average=average))
    if metric == "auc":
        if np.unique(y_true).size < 2:
            return float("nan")
        return float(m.roc_auc_score(y_true, y_pred))
    if metric == "rmse":
        return float(np.sqrt(m.mean_squared_error(y_true, y_pred)))
    if metric == "mae":
        return float(m.mean_absolute_error(y_true, y_pred))
    raise ValueError(f"unknown metric {metric!r}")


def degraded(metric: str, value: float, baseline: float, tolerance: float) -> bool:
    if np.isnan(value):
        return False
    if metric in LOWER_IS_BETTER:
        return value > baseline + tolerance
    return value < baseline - tolerance


class Labels:
    """Outcomes by request id, re-read when the files change (new feedback arrives)."""

    def __init__(self, where: str, on_problem: Callable[[str], None] | None = None) -> None:
        self.path = Path(where[len("file://") :] if where.startswith("file://") else where)
        self.on_problem = on_problem or (lambda _msg: None)
        self._stamp: tuple[tuple[str, int, float], ...] = ()
        self._map: dict[str, float] = {}
        self._bad: set[str] = set()

    def _files(self) -> list[Path]:
        if self.path.is_file():
            return [self.path]
        if self.path.is_dir():
            return sorted(p for p in self.path.glob("*.parquet") if not p.name.startswith("."))
        return []

    def lookup(self) -> dict[str, float]:
        files = self._files()
        stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime) for p in files)
        if stamp == self._stamp:
            return self._map
        out: dict[str, float] = {}
        for p in files:
            try:
                t = pq.read_table(p, columns=["request_id", "outcome"])
            except (pa.ArrowException, OSError, KeyError) as exc:
                if str(p) not in self._bad:
                    self._bad.add(str(p))
                    self.on_problem(f"labels {p.name}: unreadable ({str(exc).splitlines()[0]})")
                continue
            ids = t.column("request_id").to_pylist()
            vals = t.column("outcome").cast(pa.float64()).to_numpy(zero_copy_only=False)
            out.update(zip(ids, vals.tolist(), strict=True))
        self._stamp, self._map = stamp, out
        return out
