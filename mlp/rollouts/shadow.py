"""Shadow report: how a mirrored version's answers compare with the ones users were served.

The data plane mirrors a share of requests to the shadow version after answering them; the
payload log keeps both answers under the same `request_id`. `compare_outputs` pairs them
(row by row within a request) and gives the agreement rate and a two-sample test of the two
output distributions (`mlp.rollouts.analysis.shift_pvalue`: chi-squared on class labels,
Kolmogorov-Smirnov otherwise); `latency` reads both versions' latency histograms from the
data plane's `/metrics` text. Pure but for `read_outputs` (Parquet files).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlp.rollouts.analysis import shift_pvalue


@dataclass
class ShadowReport:
    model: str
    primary: str
    shadow: str
    primary_rows: int
    shadow_rows: int
    paired: int  # rows answered by both for the same request
    agreement: float | None  # share of paired rows with the same answer
    shift_pvalue: float | None  # p-value that both output distributions are one
    mean_primary: float | None
    mean_shadow: float | None
    latency: dict[str, dict[str, float | None]]  # version -> {count, p50, p99} (seconds)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def read_outputs(log_dir: Path, model: str, version: str, column: str) -> tuple[list[str], list[float]]:
    """(request ids, first-output values) of the closed payload-log files of one version."""
    import pyarrow.parquet as pq

    folder = Path(log_dir) / model / version
    ids: list[str] = []
    values: list[float] = []
    if not folder.is_dir():
        return ids, values
    for path in sorted(p for p in folder.glob("*.parquet") if not p.name.startswith(".")):
        table = pq.read_table(path)
        name = column if column in table.column_names else "prediction"
        if name not in table.column_names or "request_id" not in table.column_names:
            continue
        for rid, value in zip(table.column("request_id").to_pylist(), table.column(name).to_pylist(), strict=True):
            first = value[0] if isinstance(value, list) else value
            if first is None:
                continue
            ids.append(rid or "")
            values.append(float(first))
    return ids, values


def compare_outputs(
    primary: tuple[Sequence[str], Sequence[float]], shadow: tuple[Sequence[str], Sequence[float]]
) -> tuple[int, float | None, float | None]:
    """(paired rows, agreement rate, shift p-value) of the shadow's answers against the served ones."""
    served: dict[str, list[float]] = {}
    for rid, value in zip(*primary, strict=True):
        if rid:
            served.setdefault(rid, []).append(value)
    paired = agreed = 0
    used: dict[str, int] = {}
    a: list[float] = []
    b: list[float] = []
    for rid, value in zip(*shadow, strict=True):
        rows = served.get(rid)
        i = used.get(rid, 0)
        if not rows or i >= len(rows):
            continue
        used[rid] = i + 1
        paired += 1
        agreed += math.isclose(rows[i], value, rel_tol=1e-9, abs_tol=1e-12)
        a.append(rows[i])
        b.append(value)
    return paired, (agreed / paired if paired else None), shift_pvalue(b, a)


def latency(metrics_text: str, model: str, versions: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """{version: {count, p50, p99}} from `mlp_model_request_duration_seconds` histograms (Prometheus text),
    interpolating within buckets as PromQL's histogram_quantile does."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: dict[str, list[tuple[float, float]]] = {v: [] for v in versions}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "mlp_model_request_duration_seconds":
            continue
        for s in family.samples:
            v = s.labels.get("version", "")
            if s.name.endswith("_bucket") and s.labels.get("model") == model and v in buckets:
                buckets[v].append((float(s.labels["le"]), float(s.value)))
    return {v: _quantiles(sorted(b)) for v, b in buckets.items()}


def _quantiles(buckets: list[tuple[float, float]]) -> dict[str, float | None]:
    total = buckets[-1][1] if buckets else 0.0
    out: dict[str, float | None] = {"count": total}
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        out[name] = _quantile(buckets, q * total) if total else None
    return out


def _quantile(buckets: list[tuple[float, float]], rank: float) -> float:
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower  # past the last finite bucket: its upper bound, as histogram_quantile
            return lower + (upper - lower) * ((rank - below) / (count - below) if count > below else 0.0)
        lower, below = upper, count
    return lower


def report(
    log_dir: Path, model: str, primary: str, shadow: str, column: str, metrics_text: str | None = None
) -> ShadowReport:
    p = read_outputs(log_dir, model, primary, column)
    s = read_outputs(log_dir, model, shadow, column)
    paired, agreement, pvalue = compare_outputs(p, s)
    return ShadowReport(
        model=model,
        primary=primary,
        shadow=shadow,
        primary_rows=len(p[1]),
        shadow_rows=len(s[1]),
        paired=paired,
        agreement=agreement,
        shift_pvalue=pvalue,
        mean_primary=sum(p[1]) / len(p[1]) if p[1] else None,
        mean_shadow=sum(s[1]) / len(s[1]) if s[1] else None,
        latency=latency(metrics_text, model, [primary, shadow]) if metrics_text else {},
    )
