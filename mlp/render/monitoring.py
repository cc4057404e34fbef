"""What a Monitor spec becomes: the runner's configuration and the Prometheus alerting rules.

Pure. `monitor_config` is the JSON document `mlp monitor run` reads (the Kubernetes ConfigMap
holds it; `mlp up` builds the same one in process), and `alert_rules` are PrometheusRule rules
whose expressions use exactly the metric names below, which the runner (`mlp.monitors`)
imports and emits: one list, so a renamed metric cannot leave a rule watching nothing.
"""

from __future__ import annotations

from typing import Any

from mlp import __version__
from mlp.specs import SpecSet
from mlp.specs.models import Environment, Monitor

# Metrics `mlp monitor run` exposes. Labels: monitor, environment, model (+ feature / metric).
DRIFT_DETECTED = "mlp_monitor_drift_detected"  # 1 when the last window drifted (after correction)
FEATURE_DRIFT = "mlp_monitor_feature_drift"  # {feature}: 1 when that feature drifted
FEATURE_P_VALUE = "mlp_monitor_feature_p_value"  # {feature}
FEATURE_DISTANCE = "mlp_monitor_feature_distance"  # {feature}: KS / Chi2 statistic or PSI
PREDICTION_DRIFT = "mlp_monitor_prediction_drift"  # 1 when the outputs drifted (no labels)
METRIC = "mlp_monitor_metric"  # {metric}: the window's accuracy, auc, f1, rmse or mae
METRIC_BASELINE = "mlp_monitor_metric_baseline"  # {metric}: the version's recorded value
METRIC_DEGRADED = "mlp_monitor_metric_degraded"  # {metric}: 1 when worse than baseline by > tolerance
WINDOW_ROWS = "mlp_monitor_window_rows"
WINDOWS = "mlp_monitor_windows_total"  # counter {status}: ok, skipped, error
LAST_WINDOW = "mlp_monitor_last_window_timestamp_seconds"
READ_ERRORS = "mlp_monitor_read_errors_total"  # payload-log files or labels that could not be read

EMITTED = (
    DRIFT_DETECTED,
    FEATURE_DRIFT,
    FEATURE_P_VALUE,
    FEATURE_DISTANCE,
    PREDICTION_DRIFT,
    METRIC,
    METRIC_BASELINE,
    METRIC_DEGRADED,
    WINDOW_ROWS,
    WINDOWS,
    LAST_WINDOW,
    READ_ERRORS,
)

LOWER_IS_BETTER = frozenset({"rmse", "mae"})
DEFAULT_IMAGE = f"mlp:{__version__}"  # the platform's own image and version; override with spec.image
METRICS_PORT = 9102


def _camel(text: str) -> str:
    return "".join(p.capitalize() for p in text.replace("_", "-").split("-") if p)


def monitor_config(specs: SpecSet, monitor: Monitor, env: Environment) -> dict[str, Any]:
    """The runner's configuration of `monitor` in `env` (JSON-serializable)."""
    spec = monitor.spec
    model = specs.models.get(spec.model)
    dep = env.spec.deployments.get(spec.model)
    baselines: dict[str, dict[str, float]] = {}
    inputs: list[str] = []
    outputs: list[str] = []
    if model is not None:
        inputs = [f.name for f in model.spec.signature.inputs]
        outputs = [f.name for f in model.spec.signature.outputs]
        numbers = [v.version for v in model.spec.versions] if dep is None else [dep.version]
        if dep is not None:
            for extra in (dep.canary, dep.abTest, dep.shadow):
                if extra is not None:
                    numbers.append(extra.version)
        for n in numbers:
            v = model.spec.version(n)
            if v is not None:
                baselines[str(n)] = dict(sorted(v.metrics.items()))
    return {
        "monitor": monitor.metadata.name,
        "environment": env.metadata.name,
        "model": spec.model,
        "namespace": env.spec.target.namespace or "local",
        "schedule": spec.schedule,
        # local targets: `mlp up` writes the log and tells the runner where (its state folder)
        "payloadLog": spec.payloadLog.replace("{environment}", env.metadata.name)
        if spec.payloadLog and env.spec.target.kind == "kubernetes"
        else None,
        "inputs": inputs,
        "outputs": outputs,
        "baselines": baselines,
        "predictionDrift": spec.predictionDrift,
        "drift": spec.drift.model_dump(mode="json") if spec.drift else None,
        "performance": [c.model_dump(mode="json") for c in spec.performance],
        "alerts": [a.model_dump(mode="json", by_alias=True) for a in spec.alerts]
        or [{"severity": "warning", "for": "5m", "route": None, "receiver": None}],
    }


def alert_rules(config: dict[str, Any]) -> list[dict[str, Any]]:
    """PrometheusRule rules for one monitor configuration, one set per declared alert severity."""
    name, env_name, model = config["monitor"], config["environment"], config["model"]
    selector = f'monitor="{name}",environment="{env_name}"'
    camel = _camel(name)
    rules: list[dict[str, Any]] = []
    for alert in config["alerts"]:
        sev = alert["severity"]
        labels = {"severity": sev, "model": model, "environment": env_name, "monitor": name}
        if alert.get("route"):
            labels["route"] = alert["route"]
        common = {"for": alert["for"], "labels": labels}
        drift = config.get("drift")
        if drift:
            rules.append(
                {
                    "alert": f"{camel}DataDrift{sev.capitalize()}",
                    "expr": f"{FEATURE_DRIFT}{{{selector}}} > 0",
                    **common,
                    "annotations": {
                        "summary": f"Input drift on model {model} in {env_name}: feature {{{{ $labels.feature }}}}",
                        "description": f"Monitor {name} ({drift['detector']}, significance {drift['threshold']}, "
                        f"{drift['correction']} correction) found feature {{{{ $labels.feature }}}} drifted.",
                    },
                }
            )
        if config.get("predictionDrift") and drift:
            rules.append(
                {
                    "alert": f"{camel}PredictionDrift{sev.capitalize()}",
                    "expr": f"{PREDICTION_DRIFT}{{{selector}}} > 0",
                    **common,
                    "annotations": {"summary": f"The outputs of model {model} in {env_name} drifted"},
                }
            )
        for check in config.get("performance") or []:
            metric = check["metric"]
            msel = f'{selector},metric="{metric}"'
            if check.get("tolerance") is not None:
                rules.append(
                    {
                        "alert": f"{camel}{_camel(metric)}Degraded{sev.capitalize()}",
                        "expr": f"{METRIC_DEGRADED}{{{msel}}} > 0",
                        **common,
                        "annotations": {
                            "summary": f"{metric} of model {model} in {env_name} is worse than recorded "
                            f"by more than {check['tolerance']}"
                        },
                    }
                )
            for bound, op in (("min", "<"), ("max", ">")):
                value = check.get(bound)
                if value is None:
                    continue
                rules.append(
                    {
                        "alert": f"{camel}{_camel(metric)}{'Low' if bound == 'min' else 'High'}{sev.capitalize()}",
                        "expr": f"{METRIC}{{{msel}}} {op} {value}",
                        **common,
                        "annotations": {
                            "summary": f"{metric} of model {model} in {env_name} is "
                            f"{'below' if bound == 'min' else 'above'} {value}"
                        },
                    }
                )
    return rules
