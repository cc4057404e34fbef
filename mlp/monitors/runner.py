"""`MonitorRunner`: one monitor's loop body: read new payloads, test whole windows, publish.

Built from the JSON configuration `mlp.render.monitoring.monitor_config` produces (the same
document on Kubernetes, in a ConfigMap, and in `mlp up`). `prepare()` fetches the reference
sample (refused unless its sha256 matches the declared digest) and builds the detectors once;
`check()` reads the payload log files that closed since the last call, cuts whole windows and
evaluates each: data drift per feature, prediction drift when a window has no labels, and the
declared model metrics against the deployed version's recorded ones. Every window ends in one
status line; a window that cannot be tested (too few rows, a watched feature missing, a corrupt
file) says why and changes no alert. Results go to Prometheus gauges (names in
`mlp.render.monitoring`), to the alert conditions (`mlp.monitors.alerts`) and, with the cursor,
the left-over rows and the alert state, to the state folder's database in one commit per check
(`mlp.monitors.store`; what `mlp monitor report` reads).

The runner lives as long as `mlp monitor run` (or `mlp up`'s monitor process): the reference is
read and the detectors fitted once, the per-feature metric series are resolved once, and each
check decodes only the payload-log columns the monitor uses.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlp.monitors.alerts import Alerter, Condition
from mlp.monitors.detectors import DetectorError, DriftDetector, DriftResult
from mlp.monitors.performance import Labels, compute, degraded
from mlp.monitors.source import PayloadSource, Windower
from mlp.monitors.store import MonitorStore
from mlp.render import monitoring as names

MAX_REPORTS = 500


class MonitorError(Exception):
    """The monitor cannot start (bad reference, missing dependency); one clear line."""


def parse_duration_ms(text: str) -> int:
    return int(text[:-1]) * {"s": 1000, "m": 60_000, "h": 3_600_000}[text[-1]]


class MonitorMetrics:
    """The Prometheus series every runner in this process publishes (one registry)."""

    def __init__(self, registry: Any = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = registry if registry is not None else CollectorRegistry()
        base = ["monitor", "environment", "model"]

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> Any:
            return Gauge(name, doc, [*base, *extra], registry=self.registry)

        self.drift = gauge(names.DRIFT_DETECTED, "1 when the last tested window drifted (after correction)")
        self.features = FeatureSeries()
        self.registry.register(self.features)
        self.prediction_drift = gauge(names.PREDICTION_DRIFT, "1 when the outputs drifted (windows without labels)")
        self.metric = gauge(names.METRIC, "The model metric on the last labelled window", ("metric",))
        self.baseline = gauge(names.METRIC_BASELINE, "The deployed version's recorded metric", ("metric",))
        self.degraded = gauge(
            names.METRIC_DEGRADED, "1 when the metric is worse than recorded beyond tolerance", ("metric",)
        )
        self.rows = gauge(names.WINDOW_ROWS, "Rows in the last window")
        self.last = gauge(names.LAST_WINDOW, "End of the last window (unix seconds)")
        self.windows = Counter(
            names.WINDOWS,
            "Windows by outcome: ok, skipped (too few rows), error",
            [*base, "status"],
            registry=self.registry,
        )
        self.read_errors = Counter(
            names.READ_ERRORS, "Payload-log or labels files that could not be read", base, registry=self.registry
        )


class FeatureSeries:
    """The per-feature series (drifted, p-value, statistic), made from each monitor's last result
    when scraped: a tested window stores one reference instead of setting three gauges per feature."""

    def __init__(self) -> None:
        # (monitor, environment, model) -> (the monitor's features, its last result); entries are replaced
        self.last: dict[tuple[str, str, str], tuple[list[str], DriftResult]] = {}

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        labels = ["monitor", "environment", "model", "feature"]
        drift = GaugeMetricFamily(names.FEATURE_DRIFT, "1 when this feature drifted in the last window", labels=labels)
        p_value = GaugeMetricFamily(names.FEATURE_P_VALUE, "The feature's p-value in the last window", labels=labels)
        distance = GaugeMetricFamily(names.FEATURE_DISTANCE, "The feature's test statistic or PSI", labels=labels)
        for base, (features, r) in list(self.last.items()):
            drifted = set(r.drifted)
            for f in features:
                drift.add_metric([*base, f], 1.0 if f in drifted else 0.0)
                if f in r.p_values:
                    p_value.add_metric([*base, f], r.p_values[f])
                if f in r.distances:
                    distance.add_metric([*base, f], r.distances[f])
        yield from (drift, p_value, distance)


@dataclass
class WindowReport:
    index: int
    start_ms: int
    end_ms: int
    rows: int
    status: str  # ok | skipped | error
    message: str
    drift: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    active: list[str] = field(default_factory=list)


def _result_dict(r: DriftResult) -> dict[str, Any]:
    return {
        "is_drift": r.is_drift,
        "threshold": r.threshold,
        "p_values": r.p_values,
        "distances": r.distances,
        "drifted": r.drifted,
    }


def _matrix(t: pa.Table, names: list[str]) -> np.ndarray:
    """Columns as one float64 array (nulls as NaN), filled column by column: no intermediate copies."""
    out = np.empty((t.num_rows, len(names)), dtype=np.float64)
    for i, name in enumerate(names):
        col = t.column(name)
        if col.type != pa.float64():
            col = col.cast(pa.float64())
        out[:, i] = col.to_numpy(zero_copy_only=False)
    return out


def _read_reference(path: Path) -> pa.Table:
    try:
        if path.suffix == ".csv":
            import pyarrow.csv as pcsv

            return pcsv.read_csv(path)
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise MonitorError(
            f"reference {path.name}: not a readable Parquet/CSV file ({str(exc).splitlines()[0]})"
        ) from None


class MonitorRunner:
    def __init__(
        self,
        config: dict[str, Any],
        *,
        log_root: str,
        state_dir: Path,
        fetch: Callable[[str, str], Path],
        metrics: MonitorMetrics | None = None,
        echo: Callable[[str], None] | None = None,
        s3_endpoint_url: str | None = None,
        labels: str | None = None,
        audit: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.config = config
        self.name = config["monitor"]
        self.log_root = log_root
        self.state_dir = state_dir
        self.fetch = fetch
        self.metrics = metrics or MonitorMetrics()
        self.echo = echo or (lambda _msg: None)
        self.labels_override = labels
        self.base = (self.name, config["environment"], config["model"])
        drift = config.get("drift") or {}
        self.features: list[str] = list(drift.get("features") or config.get("inputs") or []) if drift else []
        # outputs feed prediction drift and model metrics; request ids and versions, model metrics
        outputs = [*(config.get("outputs") or [])[:1], "prediction"]
        performance = ["request_id", "version", *outputs] if config.get("performance") else []
        prediction = outputs if config.get("predictionDrift") else []
        self.source = PayloadSource(
            log_root,
            config["model"],
            s3_endpoint_url=s3_endpoint_url,
            on_problem=self._problem,
            columns=["ts", *self.features, *prediction, *performance],
        )
        duration = drift.get("windowDuration")
        size = int(
            drift.get("window") or max([c.get("minLabels", 50) for c in config.get("performance") or []] + [100])
        )
        self.min_rows = size
        self.windower = Windower(size, parse_duration_ms(duration) if duration else None)
        self.detector: DriftDetector | None = None
        self.output_detector: DriftDetector | None = None
        self.reference: pa.Table | None = None
        self.index = 0
        receivers = [a["receiver"] for a in config.get("alerts") or [] if a.get("receiver")]
        self.store = MonitorStore(state_dir, MAX_REPORTS)
        self.audit_path = state_dir / "audit.jsonl"
        self.alerter = Alerter(receivers, audit=audit or self._audit, echo=self._say)
        self._restore()
        self._labels: dict[str, Labels] = {}
        self._warned: set[str] = set()
        self._last_pending = -1
        self._last_ok: tuple[int, pa.Table] | None = None
        self._new_reports: list[tuple[int, str]] = []
        self._alerts_changed = False

    def _restore(self) -> None:
        """Back to the last committed check (at start, and when a commit failed)."""
        saved = self.store.load()
        self.source.seen = saved.files
        self.source.take_changes()
        self.windower.pending = saved.pending
        self.index = saved.index
        self.alerter.active = saved.alerts

    # --- set-up ------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Fetch and check the reference, build detectors once; raise MonitorError."""
        from mlp.serving.artifacts import ArtifactError

        drift = self.config.get("drift")
        if not drift:
            return
        ref = drift["reference"]
        try:
            path = self.fetch(ref["uri"], ref["digest"])
        except ArtifactError as exc:
            raise MonitorError(f"reference {exc}") from None
        table = _read_reference(path)
        self.reference = table
        missing = [f for f in self.features if f not in table.schema.names]
        if missing:
            raise MonitorError(f"reference {ref['uri']}: no column for feature(s) {', '.join(missing)}")
        try:
            x = _matrix(table, self.features)
            self.detector = DriftDetector(
                drift["detector"],
                x,
                self.features,
                categorical=list(drift.get("categorical") or []),
                p_val=float(drift["threshold"]),
                correction=drift.get("correction", "bonferroni"),
            )
            out = self._output_name(table)
            if self.config.get("predictionDrift") and out is not None:
                y = table.column(out).cast(pa.float64()).to_numpy(zero_copy_only=False).reshape(-1, 1)
                discrete = bool(np.all(np.equal(np.mod(y, 1), 0))) and np.unique(y).size <= 50
                self.output_detector = DriftDetector(
                    "chi2" if discrete else "ks", y, [out], p_val=float(drift["threshold"])
                )
        except (DetectorError, pa.ArrowException, ValueError) as exc:
            raise MonitorError(str(exc).splitlines()[0]) from None

    def _output_name(self, table: pa.Table) -> str | None:
        for name in [*(self.config.get("outputs") or [])[:1], "prediction"]:
            if name in table.schema.names:
                return name
        return None

    # --- one pass ----------------------------------------------------------------------------

    def check(self, now: float | None = None) -> list[WindowReport]:
        """Test every window that is complete now; never raises for bad data."""
        now = time.time() if now is None else now
        self.windower.add(self.source.read_new())
        reports = [self._evaluate(w.table, w.start_ms, w.end_ms, now) for w in self.windower.cut(int(now * 1000))]
        self._commit()
        pending = self.windower.pending.num_rows if self.windower.pending is not None else 0
        if not reports and pending != self._last_pending:  # say it once per change, not every check
            self._say(f"waiting: {pending} row(s) pending, a window is {self._window_text()}")
        self._last_pending = pending
        return reports

    def _window_text(self) -> str:
        d = self.windower.duration_ms
        return f"{d // 1000}s (at least {self.min_rows} rows)" if d else f"{self.windower.size} rows"

    def _evaluate(self, t: pa.Table, start_ms: int, end_ms: int, now: float) -> WindowReport:
        self.index += 1
        report = WindowReport(self.index, start_ms, end_ms, int(t.num_rows), "ok", "")
        conditions: list[Condition] = []
        problems: list[str] = []
        if t.num_rows < self.min_rows:
            report.status = "skipped"
            report.message = f"{t.num_rows} row(s), fewer than the {self.min_rows} a window needs; not tested"
        else:
            if self.detector is not None:
                self._drift(t, report, conditions, problems)
            labelled = self._performance(t, report, conditions, problems)
            if not labelled and self.output_detector is not None:
                self._prediction_drift(t, report, conditions, problems)
            if problems:
                report.status = "error" if not (report.drift or report.metrics or report.prediction) else "ok"
            report.message = "; ".join(problems + self._summary(report))
        self.metrics.windows.labels(*self.base, report.status).inc()
        self.metrics.rows.labels(*self.base).set(report.rows)
        self.metrics.last.labels(*self.base).set(end_ms / 1000)
        if self.alerter.update(conditions, now):
            self._alerts_changed = True
        report.active = sorted(self.alerter.active)
        self._say(f"window {report.index} ({report.rows} rows): {report.status}: {report.message}")
        self._record(report, t)
        return report

    def _drift(self, t: pa.Table, report: WindowReport, conditions: list[Condition], problems: list[str]) -> None:
        assert self.detector is not None
        # a file without the column, concatenated with others, reads as an all-null column
        present = set(t.schema.names)  # `schema.names`: `column_names` costs 7x more per call
        missing = [f for f in self.features if f not in present or t.column(f).null_count == t.num_rows]
        if missing:
            problems.append(f"feature(s) {', '.join(missing)} missing from the payload log; drift not tested")
            return
        x = _matrix(t, self.features)
        incomplete = np.isnan(x).any(axis=1)
        if incomplete.any():
            x = x[~incomplete]
        if x.shape[0] < self.min_rows:
            problems.append(f"{x.shape[0]} complete row(s) after dropping missing values; drift not tested")
            return
        r = self.detector.test(x)
        report.drift = _result_dict(r)
        self.metrics.drift.labels(*self.base).set(1 if r.is_drift else 0)
        self.metrics.features.last[self.base] = (self.features, r)
        conditions.append(
            Condition(
                "data-drift",
                r.is_drift,
                f"data drift on model {self.config['model']} ({self.config['environment']}): "
                f"{', '.join(r.drifted) or 'none'}",
                self._labels_for("DataDrift", features=",".join(r.drifted)),
            )
        )

    def _prediction_drift(
        self, t: pa.Table, report: WindowReport, conditions: list[Condition], problems: list[str]
    ) -> None:
        assert self.output_detector is not None
        out = self.output_detector.features[0]
        if out not in t.schema.names:
            return
        y = t.column(out).cast(pa.float64()).to_numpy(zero_copy_only=False)
        y = y[~np.isnan(y)].reshape(-1, 1)
        if y.shape[0] < self.min_rows:
            return
        r = self.output_detector.test(y)
        report.prediction = _result_dict(r)
        self.metrics.prediction_drift.labels(*self.base).set(1 if r.is_drift else 0)
        conditions.append(
            Condition(
                "prediction-drift",
                r.is_drift,
                f"prediction drift on model {self.config['model']} ({self.config['environment']})",
                self._labels_for("PredictionDrift"),
            )
        )

    def _labels_source(self, check: dict[str, Any]) -> Labels | None:
        where = self.labels_override or check.get("labels")
        if where is None:
            if self.log_root.startswith("s3://"):
                return None
            root = self.log_root[len("file://") :] if self.log_root.startswith("file://") else self.log_root
            where = str(Path(root) / self.config["model"] / "_feedback")
        if where not in self._labels:
            self._labels[where] = Labels(where, on_problem=self._problem)
        return self._labels[where]

    def _performance(self, t: pa.Table, report: WindowReport, conditions: list[Condition], problems: list[str]) -> bool:
        labelled_any = False
        for check in self.config.get("performance") or []:
            metric = check["metric"]
            source = self._labels_source(check)
            lookup = source.lookup() if source is not None else {}
            if not lookup:
                continue
            if "request_id" not in t.schema.names:
                self._once("no-request-id", "the payload log has no request_id column: labels cannot be joined")
                continue
            out = self._output_name(t)
            if out is None:
                problems.append("no output column in the payload log; model metrics not computed")
                continue
            ids = t.column("request_id").to_pylist()
            y_true = np.array([lookup.get(i, math.nan) if i is not None else math.nan for i in ids], dtype=np.float64)
            keep = ~np.isnan(y_true)
            n = int(keep.sum())
            if n < int(check.get("minLabels", 50)):
                continue
            labelled_any = True
            y_pred = t.column(out).cast(pa.float64()).to_numpy(zero_copy_only=False)[keep]
            value = compute(metric, y_true[keep], y_pred)
            entry: dict[str, Any] = {"value": value, "labelled": n}
            self.metrics.metric.labels(*self.base, metric).set(value)
            baseline = self._baseline(t, metric)
            tolerance = check.get("tolerance")
            if baseline is not None:
                entry["baseline"] = baseline
                self.metrics.baseline.labels(*self.base, metric).set(baseline)
            if tolerance is not None and baseline is not None:
                bad = degraded(metric, value, baseline, float(tolerance))
                entry["degraded"] = bad
                self.metrics.degraded.labels(*self.base, metric).set(1 if bad else 0)
                conditions.append(
                    Condition(
                        f"{metric}-degraded",
                        bad,
                        f"model drift on model {self.config['model']} ({self.config['environment']}): {metric} "
                        f"{value:.4g} vs recorded {baseline:.4g} (tolerance {tolerance})",
                        self._labels_for(f"{metric.capitalize()}Degraded", metric=metric),
                    )
                )
            for bound in ("min", "max"):
                limit = check.get(bound)
                if limit is None or math.isnan(value):
                    continue
                bad = value < limit if bound == "min" else value > limit
                conditions.append(
                    Condition(
                        f"{metric}-{'low' if bound == 'min' else 'high'}",
                        bad,
                        f"{metric} of model {self.config['model']} ({self.config['environment']}) is {value:.4g}, "
                        f"{'below' if bound == 'min' else 'above'} {limit}",
                        self._labels_for(f"{metric.capitalize()}{'Low' if bound == 'min' else 'High'}", metric=metric),
                    )
                )
            report.metrics[metric] = entry
        return labelled_any

    def _baseline(self, t: pa.Table, metric: str) -> float | None:
        baselines: dict[str, dict[str, float]] = self.config.get("baselines") or {}
        version = None
        if "version" in t.schema.names and t.num_rows:
            counts = pc.value_counts(t.column("version")).to_pylist()
            version = str(max(counts, key=lambda c: c["counts"])["values"])
        values = baselines.get(version or "") or (next(iter(baselines.values())) if len(baselines) == 1 else {})
        v = values.get(metric)
        return float(v) if v is not None else None

    def _labels_for(self, kind: str, **extra: str) -> dict[str, str]:
        camel = "".join(p.capitalize() for p in self.name.split("-"))
        labels = {
            "alertname": f"{camel}{kind}",
            "monitor": self.name,
            "environment": self.config["environment"],
            "model": self.config["model"],
        }
        labels.update({k: v for k, v in extra.items() if v})
        return labels

    def _summary(self, report: WindowReport) -> list[str]:
        out = []
        if report.drift is not None:
            drifted = report.drift["drifted"]
            out.append(f"drift in {', '.join(drifted)}" if drifted else "no drift")
        if report.prediction is not None:
            out.append("prediction drift" if report.prediction["is_drift"] else "no prediction drift")
        for metric, e in report.metrics.items():
            text = f"{metric} {e['value']:.4g} on {e['labelled']} labels"
            if "baseline" in e:
                text += f" (recorded {e['baseline']:.4g})"
            if e.get("degraded"):
                text += ": degraded"
            out.append(text)
        return out

    # --- output ------------------------------------------------------------------------------

    def _say(self, msg: str) -> None:
        self.echo(f"monitor {self.name}: {msg}")

    def _once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self._say(msg)

    def _problem(self, msg: str) -> None:
        self.metrics.read_errors.labels(*self.base).inc()
        self._say(msg)

    def _audit(self, event: dict[str, Any]) -> None:
        event = {"monitor": self.name, "environment": self.config["environment"], **event}
        with self.audit_path.open("a") as fh:
            fh.write(json.dumps(event, sort_keys=True) + "\n")

    def _record(self, report: WindowReport, t: pa.Table) -> None:
        # a shallow dict: `asdict` deep-copies every per-feature result only for json to walk it again
        body = {f.name: getattr(report, f.name) for f in fields(report)}
        self._new_reports.append((report.index, json.dumps(body, sort_keys=True, allow_nan=True)))
        if report.status == "ok":
            self._last_ok = (report.index, t)

    def _commit(self) -> None:
        """Everything this check changed, in one transaction; nothing when nothing changed."""
        added, removed = self.source.take_changes()
        reports, self._new_reports = self._new_reports, []
        if not (added or removed or reports):
            return
        last: tuple[int, pa.Table] | None = None
        if self._last_ok is not None:  # the last tested window, for the report's histograms: watched columns only
            index, t = self._last_ok
            keep = [*self.features, *(self.config.get("outputs") or [])[:1], "prediction"]
            present = set(t.schema.names)
            last = (index, t.select([c for c in dict.fromkeys(keep) if c in present]))
        self._last_ok = None
        alerts = dict(self.alerter.active) if self._alerts_changed else None
        self._alerts_changed = False
        try:
            self.store.commit(
                added=added,
                removed=removed,
                pending=self.windower.pending,
                index=self.index,
                reports=reports,
                last_window=last,
                alerts=alerts,
            )
        except Exception:
            self._restore()  # redo this check's work next time rather than skip or repeat a window
            raise
