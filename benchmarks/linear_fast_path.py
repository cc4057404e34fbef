"""Benchmark: the serving loader's linear fast path against scikit-learn's own predict.

Same process, same fitted models (iris LogisticRegression, 3 classes; breast-cancer
LogisticRegression predict_proba, binary), per call of 1 row and of 12 rows (the average
micro-batch the serving benchmark saw):
- sklearn: `est.predict(x)` as is;
- sklearn + config_context(assume_finite=True, skip_parameter_validation=True): scikit-learn
  with its per-call finiteness and parameter checks off (what the data plane could use instead);
- mlp fast path: `mlp.serving.loaders._linear_fast_path` (numpy only, checked equal at load).
The rule (issue 12): if the config_context row is within 20% of the fast path, the fast path goes.

    .venv/bin/python benchmarks/linear_fast_path.py [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlp.serving.loaders import _linear_fast_path


def per_call_us(fn: Callable[[], Any], seconds: float) -> float:
    """Best of 5 rounds of the mean time per call."""
    best = float("inf")
    for _ in range(5):
        n, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds / 5:
            for _ in range(50):
                fn()
            n += 50
        best = min(best, elapsed / n * 1e6)
    return best


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()
    from sklearn import config_context
    from sklearn.datasets import load_breast_cancer, load_iris
    from sklearn.linear_model import LogisticRegression

    xi, yi = load_iris(return_X_y=True)
    iris = LogisticRegression(max_iter=1000).fit(xi, yi)
    xb, yb = load_breast_cancer(return_X_y=True)
    bc = LogisticRegression(max_iter=5000).fit(xb, yb)

    def positive(x: np.ndarray) -> np.ndarray:
        return np.asarray(bc.predict_proba(x))[:, 1]

    cases = [
        ("iris predict", iris.predict, _linear_fast_path(iris, iris.predict, proba=False), xi),
        ("breast-cancer P(1)", positive, _linear_fast_path(bc, positive, proba=True), xb),
    ]
    print(
        "| model, rows per call | sklearn us | sklearn + config_context us | mlp fast path us | config_context / fast path |"
    )
    print("|---|---|---|---|---|")
    for name, reference, fast, data in cases:
        assert fast is not None, name
        for rows in (1, 12):
            x = np.ascontiguousarray(data[:rows], dtype=np.float64)

            def lenient(ref: Callable[[np.ndarray], Any] = reference, x: np.ndarray = x) -> Any:
                with config_context(assume_finite=True, skip_parameter_validation=True):
                    return ref(x)

            plain = per_call_us(lambda ref=reference, x=x: ref(x), args.seconds)
            relaxed = per_call_us(lenient, args.seconds)
            quick = per_call_us(lambda f=fast, x=x: f(x), args.seconds)
            print(f"| {name}, {rows} | {plain:.1f} | {relaxed:.1f} | {quick:.1f} | {relaxed / quick:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
