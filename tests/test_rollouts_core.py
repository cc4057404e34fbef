"""The rollout core: state machine, analysis verdicts, spec validation, A/B statistics by
seeded simulation, and the driver over a real state database."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from mlp.cli.main import cli
from mlp.objects import ResolvedDeployment
from mlp.objects import Route as ObjRoute
from mlp.render.resolve import Position, with_position
from mlp.rollouts import machine
from mlp.rollouts.analysis import Sample, Window, evaluate, shift_pvalue
from mlp.rollouts.driver import RolloutDriver
from mlp.rollouts.machine import Rollout
from mlp.rollouts.providers import PrometheusProvider, fill
from mlp.rollouts.stats import compare
from mlp.rollouts.store import RolloutStore
from mlp.specs.models import Analysis, AnalysisCheck, Deployment

ERR = [AnalysisCheck(metric="error-rate", max=0.05)]


def _r(**kw: object) -> Rollout:
    base = Rollout("dev", "iris", 1, 2, [10, 50, 100], machine.declaration_key(1, 2, [10, 50, 100]))
    for k, v in kw.items():
        setattr(base, k, v)
    return base


# --- state machine ---------------------------------------------------------------------------


def test_a_step_advances_only_after_its_interval_with_every_check_passing() -> None:
    r, t = machine.start(_r(), now=100.0)
    assert r.phase == "Progressing" and r.weight == 10 and t.after == "Progressing"
    ok = evaluate(ERR, 20, Window(Sample(requests=50, errors=0), Sample(requests=400)))
    assert ok.outcome == "pass"
    same, t = machine.tick(r, ok, now=105.0, interval=10.0)
    assert same.step == 0 and t is None
    r, t = machine.tick(r, ok, now=110.0, interval=10.0)
    assert r.step == 1 and r.weight == 50 and t is not None
    r, _ = machine.tick(r, ok, now=120.0, interval=10.0)
    assert r.weight == 100
    r, t = machine.tick(r, ok, now=130.0, interval=10.0)
    assert r.phase == "Promoted" and r.weight == 100 and t is not None and t.after == "Promoted"


def test_a_failing_check_rolls_back_at_once_and_missing_data_pauses() -> None:
    r, _ = machine.start(_r(), now=0.0)
    bad = evaluate(ERR, 20, Window(Sample(requests=40, errors=8), Sample(requests=100)))
    assert bad.outcome == "fail" and "error-rate" in bad.reason
    rolled, t = machine.tick(r, bad, now=0.1, interval=60)
    assert rolled.phase == "RolledBack" and rolled.weight == 0 and t is not None
    nodata = evaluate(ERR, 20, Window(Sample(), Sample(), error="Prometheus at http://x unreachable"))
    paused, t = machine.tick(r, nodata, now=1, interval=60)
    assert paused.phase == "Paused" and paused.paused_by == "metrics" and "unreachable" in paused.message
    # never promoted while data is missing, however long it lasts
    still, _ = machine.tick(paused, nodata, now=10_000, interval=60)
    assert still.phase == "Paused"
    back, t = machine.tick(still, evaluate(ERR, 20, Window(Sample(requests=1), Sample())), now=10_001, interval=60)
    assert back.phase == "Progressing" and back.step_started == 10_001 and t is not None


def test_user_pause_holds_until_resume_and_terminal_states_do_not_move() -> None:
    r, _ = machine.start(_r(), now=0.0)
    ok = evaluate(ERR, 1, Window(Sample(requests=5), Sample()))
    paused, t = machine.pause(r)
    assert t is not None and paused.weight == 10
    held, t = machine.tick(paused, ok, now=1e9, interval=1)
    assert held.phase == "Paused" and t is None
    resumed, t = machine.resume(held, now=5.0)
    assert resumed.phase == "Progressing" and resumed.step_started == 5.0
    done, _ = machine.abort(resumed)
    assert done.phase == "RolledBack"
    assert machine.promote(done)[1] is None and machine.resume(done, 1)[1] is None


def test_early_failure_when_errors_already_exceed_what_the_minimum_allows() -> None:
    # 3 errors in 6 requests: even 14 more successes leave 3/20 = 15% > 5%
    v = evaluate(ERR, 20, Window(Sample(requests=6, errors=3), Sample()))
    assert v.outcome == "fail"
    assert evaluate(ERR, 20, Window(Sample(requests=6, errors=1), Sample())).outcome == "wait"


def test_prediction_shift_test_tells_a_moved_distribution_from_the_same_one() -> None:
    rng = np.random.default_rng(0)
    stable = rng.integers(0, 3, 500)
    assert shift_pvalue(rng.integers(0, 3, 200), stable) > 0.01  # type: ignore[operator]
    assert shift_pvalue(np.zeros(200), stable) < 1e-6  # type: ignore[operator]
    cont = rng.normal(0, 1, 500)
    assert shift_pvalue(rng.normal(0.5, 1, 300), cont) < 1e-4  # type: ignore[operator]
    checks = [AnalysisCheck(metric="prediction-shift", min=0.01)]
    moved = evaluate(checks, 20, Window(Sample(requests=200, outputs=[0.0] * 200), Sample(outputs=list(stable))))
    assert moved.outcome == "fail" and "prediction-shift" in moved.reason


# --- spec fields -----------------------------------------------------------------------------


def test_analysis_spec_fields_validate() -> None:
    with pytest.raises(ValidationError, match="unknown analysis metric 'errors'"):
        Analysis.model_validate({"checks": [{"metric": "errors", "max": 0.1}]})
    with pytest.raises(ValidationError, match="unknown analysis metric"):
        Analysis.model_validate({"metric": "p99", "max": 0.1})
    with pytest.raises(ValidationError, match="needs a max or a min"):
        Analysis.model_validate({"checks": [{"metric": "latency"}]})
    with pytest.raises(ValidationError, match="share between 0 and 1"):
        Analysis.model_validate({"checks": [{"metric": "error-rate", "max": 5}]})
    custom = Analysis.model_validate({"checks": [{"metric": "conversion", "min": 0.1, "query": "sum(x)"}]})
    assert custom.checks[0].query == "sum(x)"
    legacy = Analysis.model_validate({"metric": "error-rate", "max": 0.01, "interval": "5m"})
    assert [c.metric for c in legacy.checks] == ["error-rate"] and legacy.interval_seconds() == 300


def _write_env(repo: Path, canary: str, *, target: str = "{kind: local}", spec: str = "", dep: str = "") -> None:
    (repo / "specs").mkdir(parents=True, exist_ok=True)
    (repo / "environments").mkdir(exist_ok=True)
    digest = "sha256:" + "0" * 64
    (repo / "specs" / "iris.yaml").write_text(
        "apiVersion: mlp.dev/v1\nkind: Model\nmetadata: {name: iris}\nspec:\n  framework: sklearn\n"
        "  signature:\n    inputs: [{name: a, type: float}]\n    outputs: [{name: y, type: int}]\n  versions:\n"
        f"    - {{version: 1, uri: 's3://m/iris/1/model.joblib', digest: '{digest}'}}\n"
        f"    - {{version: 2, uri: 's3://m/iris/2/model.joblib', digest: '{digest}'}}\n"
    )
    (repo / "environments" / "dev.yaml").write_text(
        f"apiVersion: mlp.dev/v1\nkind: Environment\nmetadata: {{name: dev}}\nspec:\n  target: {target}\n{spec}"
        f"  deployments:\n    iris: {{version: 1{', canary: ' + canary if canary else ''}{dep}}}\n"
    )


@pytest.mark.parametrize(
    ("canary", "message"),
    [
        ("{version: 2, steps: [50, 20, 100]}", "canary steps must increase"),
        ("{version: 2, steps: [10, 50, 100], analysis: {checks: [{metric: acuracy, min: 0.9}]}}", "acuracy"),
        ("{version: 2, steps: [10, 100], analysis: {minRequests: 0}}", "minRequests"),
    ],
)
def test_mlp_validate_refuses_bad_rollouts_with_a_located_error(tmp_path: Path, canary: str, message: str) -> None:
    _write_env(tmp_path, canary)
    res = CliRunner().invoke(cli, ["validate", str(tmp_path)])
    assert res.exit_code == 1, res.output
    assert message in res.output and "dev.yaml" in res.output and "Traceback" not in res.output


KUBE = "{kind: kubernetes, namespace: ml-dev}"
PROM = "  serving: {prometheus: {url: 'http://prometheus:9090'}}\n"
STEPS = "{version: 2, steps: [10, 100]}"


@pytest.mark.parametrize(
    ("target", "spec", "canary", "dep", "message"),
    [
        # a kubernetes canary is judged by Prometheus: without one it could only ever pause
        (KUBE, "", STEPS, "", "needs a Prometheus"),
        (KUBE, PROM, "{version: 2, steps: [10, 100], analysis: {provider: local}}", "", "provider local reads"),
        # outputs and feedback live in the local runtime; Prometheus answers them only through a query
        (KUBE, PROM, "{version: 2, steps: [10, 100], analysis: {metric: prediction-shift}}", "", "prediction-shift"),
        (
            KUBE,
            PROM,
            "{version: 2, steps: [10, 100], analysis: {checks: [{metric: accuracy, min: 0.9}]}}",
            "",
            "only the local",
        ),
        (
            "{kind: local}",
            "",
            "{version: 2, steps: [10, 100], analysis: {checks: [{metric: c, min: 1, query: 'x'}]}}",
            "",
            "only provider prometheus",
        ),
        (
            "{kind: local}",
            "",
            "{version: 2, steps: [10, 100], analysis: {prometheus: {url: 'http://p:9090'}}}",
            "",
            "read by provider prometheus only",
        ),
        (
            "{kind: local}",
            "",
            "{version: 2, steps: [10, 100], analysis: {provider: prometheus}}",
            "",
            "needs a Prometheus",
        ),
        # KServe's deployment mode and the Gateway mean nothing to the local router
        ("{kind: local}", "  serving: {mode: Standard}\n", STEPS, "", "serving.mode is KServe's"),
        ("{kind: local}", "  serving: {gateway: {name: g}}\n", STEPS, "", "serving.gateway is for kubernetes"),
        (
            KUBE,
            "  serving: {mode: Serverless, gateway: {name: g}, prometheus: {url: 'http://p:9090'}}\n",
            STEPS,
            "",
            "Standard (RawDeployment) mode only",
        ),
        (KUBE, "  serving: {mode: Standard, prometheus: {url: 'http://p:9090'}}\n", STEPS, "", "needs serving.gateway"),
        # pod sizes mean nothing to the local runtime, its micro-batching nothing to KServe
        ("{kind: local}", "", "", ", autoscaling: {minReplicas: 2, maxReplicas: 4}", "autoscaling sizes KServe's pods"),
        ("{kind: local}", "", "", ", resources: {limits: {cpu: '1'}}", "resources sizes KServe's pods"),
        (KUBE, "", "", ", batching: false", "batching is the local data plane's"),
        (
            "{kind: local}",
            "",
            "{version: 2, steps: [10, 100], analysis: {checks: [{metric: error-rate, max: 0.1, percentile: 95}]}}",
            "",
            "percentile is read by the latency check only",
        ),
        # no sticky hashed split and no mirroring on a kubernetes target
        (KUBE, "", "", ", abTest: {version: 2}", "an A/B test needs the local data plane"),
        (KUBE, "", "", ", shadow: {version: 2}", "KServe does not mirror"),
    ],
)
def test_mlp_validate_refuses_serving_fields_the_target_cannot_honour(
    tmp_path: Path, target: str, spec: str, canary: str, dep: str, message: str
) -> None:
    _write_env(tmp_path, canary, target=target, spec=spec, dep=dep)
    res = CliRunner().invoke(cli, ["validate", str(tmp_path)])
    assert res.exit_code == 1, res.output
    assert message in res.output and "dev.yaml:" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize(
    ("target", "spec", "canary", "dep"),
    [
        (KUBE, PROM, "{version: 2, steps: [10, 100], analysis: {checks: [{metric: latency, max: 0.2}]}}", ""),
        (
            KUBE,
            PROM,
            "{version: 2, steps: [10, 100], analysis: {checks: [{metric: accuracy, min: 0.9, query: 'x'}]}}",
            "",
        ),
        (KUBE, "  serving: {mode: Standard, gateway: {name: g}, prometheus: {url: 'http://p:9090'}}\n", STEPS, ""),
        ("{kind: local}", PROM, "", ", abTest: {version: 2}, shadow: {version: 2}"),
        ("{kind: local}", PROM, STEPS, ", shadow: {version: 2}"),
        ("{kind: local}", "", "{version: 2, steps: [10, 100], analysis: {metric: prediction-shift}}", ""),
    ],
)
def test_mlp_validate_accepts_what_the_target_honours(
    tmp_path: Path, target: str, spec: str, canary: str, dep: str
) -> None:
    _write_env(tmp_path, canary, target=target, spec=spec, dep=dep)
    res = CliRunner().invoke(cli, ["validate", str(tmp_path)])
    assert res.exit_code == 0, res.output


def test_a_local_environment_with_a_prometheus_analyses_its_canaries_there() -> None:
    from mlp.rollouts.driver import resolve_analysis
    from mlp.specs.models import EnvironmentSpec

    plain = EnvironmentSpec.model_validate({"target": {"kind": "local"}})
    with_prom = EnvironmentSpec.model_validate(
        {"target": {"kind": "local"}, "serving": {"prometheus": {"url": "http://p:9090"}}}
    )
    assert resolve_analysis(None, plain).provider == "local"
    a = resolve_analysis(None, with_prom)
    assert a.provider == "prometheus" and a.prometheus is not None and a.prometheus.url == "http://p:9090"


def test_a_rollout_starts_at_the_declared_traffic_step(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path)
    driver = RolloutDriver(store, _Down())
    dep = Deployment.model_validate({"version": 1, "canary": {"version": 2, "steps": [10, 50, 100], "traffic": 50}})
    driver.declare("dev", "abc", {"iris": dep})
    assert driver.tick("dev")
    r = store.get("dev", "iris")
    assert r is not None and (r.phase, r.step, r.weight) == ("Progressing", 1, 50)
    assert driver.positions("dev") == {"iris": Position("Progressing", 50)}


# --- driver over the state database ------------------------------------------------------------


class _Down:
    """A PrometheusProvider pointed at a port nothing listens on."""

    def __new__(cls) -> PrometheusProvider:  # type: ignore[misc]
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        return PrometheusProvider(f"http://127.0.0.1:{port}", timeout=1.0)


def test_prometheus_down_pauses_the_rollout_and_says_why(tmp_path: Path) -> None:
    clock = [1000.0]
    store = RolloutStore(tmp_path)
    driver = RolloutDriver(store, _Down(), clock=lambda: clock[0])
    dep = Deployment.model_validate(
        {"version": 1, "canary": {"version": 2, "steps": [10, 100], "analysis": {"interval": "1s"}}}
    )
    driver.declare("dev", "abc", {"iris": dep})
    assert driver.tick("dev")  # Pending -> Progressing at 10%
    for _ in range(3):
        clock[0] += 5
        driver.tick("dev")
    r = store.get("dev", "iris")
    assert r is not None and r.phase == "Paused" and r.paused_by == "metrics" and r.weight == 10
    assert "unreachable" in r.message
    events = store.query("SELECT message FROM audit WHERE action = 'rollout' ORDER BY id")
    assert [e["message"] for e in events][-1].startswith("paused at step 1 (10%): metrics unavailable")


def test_a_rolled_back_declaration_is_never_retried_and_a_new_one_starts(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path)
    r = _r(phase="RolledBack", message="failed")
    store.replace(r)
    store.remove("dev", "iris")
    driver = RolloutDriver(store, _Down())
    same = Deployment.model_validate({"version": 1, "canary": {"version": 2, "steps": [10, 50, 100]}})
    driver.declare("dev", "def", {"iris": same})
    again = store.get("dev", "iris")
    assert again is not None and again.phase == "RolledBack"
    other = Deployment.model_validate({"version": 1, "canary": {"version": 2, "steps": [5, 100]}})
    driver.declare("dev", "ghi", {"iris": other})
    fresh = store.get("dev", "iris")
    assert fresh is not None and fresh.phase == "Pending" and fresh.revision == "ghi"


def test_the_resolve_stage_puts_the_canary_at_the_rollout_position() -> None:
    rd = ResolvedDeployment(
        "iris",
        (ObjRoute("1", "stable", 90, "file:///1", "d1"), ObjRoute("2", "canary", 10, "file:///2", "d2")),
        canary_steps=(10, 50, 100),
    )

    def weights(pos: Position) -> list[tuple[str, str, int]]:
        return [(r.version, r.role, r.weight) for r in with_position(rd, pos).routes]

    assert weights(Position("Progressing", 50)) == [("1", "stable", 50), ("2", "canary", 50)]
    assert weights(Position("Paused", 100)) == [("1", "stable", 0), ("2", "canary", 100)]
    assert weights(Position("RolledBack", 0)) == [("1", "stable", 100)]
    assert weights(Position("Promoted", 100)) == [("2", "stable", 100)]
    assert rd.routes[0].weight == 90  # resolved values are not changed in place


def test_promql_templates_fill_only_known_placeholders() -> None:
    q = fill(
        'rate(x{model="{model}",version="{version}"}[{window}]) {__class__} {0}',
        {"model": "iris", "version": "2", "stable": "1", "namespace": "", "window": "30s"},
    )
    assert q == 'rate(x{model="iris",version="2"}[30s]) {__class__} {0}'


# --- A/B statistics by seeded simulation -------------------------------------------------------


def test_peeking_with_no_effect_claims_a_difference_in_at_most_5_percent_of_400_runs() -> None:
    rng = np.random.default_rng(20261201)
    claimed = 0
    for _ in range(400):
        a = (rng.random(3000) < 0.3).astype(float)
        b = (rng.random(3000) < 0.3).astype(float)
        # look after every 100 outcomes per arm and stop at the first "significant" answer
        claimed += any(compare(a[:n], b[:n], mde=0.05).p_value < 0.05 for n in range(100, 3001, 100))
    assert claimed / 400 <= 0.05, claimed


def test_a_known_effect_is_found_at_the_stated_power() -> None:
    rng = np.random.default_rng(7)
    plan = compare(np.array([0.0, 1.0] * 50), np.array([0.0, 1.0] * 50), mde=0.05, power=0.8)
    # the plan's sample size assumes the pooled variance seen so far (0.25); use a 0.5 base rate
    n = plan.samples_needed_per_arm
    assert n is not None and 1000 < n < 20000
    found = 0
    runs = 200
    for _ in range(runs):
        a = (rng.random(n) < 0.5).astype(float)
        b = (rng.random(n) < 0.55).astype(float)
        found += any(compare(a[:k], b[:k], mde=0.05).p_value < 0.05 for k in range(n // 4, n + 1, n // 4))
    # stated power 80%; 200 runs have a standard error of ~2.8 points
    assert found / runs >= 0.8 - 2 * 0.028, found


def test_welch_path_for_continuous_outcomes() -> None:
    rng = np.random.default_rng(3)
    rep = compare(rng.normal(10, 2, 800), rng.normal(10.6, 3, 800))
    assert rep.test == "welch" and rep.p_value < 0.05 and rep.ci_low < 0.6 < rep.ci_high
    assert rep.fixed_horizon_p_value < rep.p_value  # the always-valid p-value pays for peeking
    null = compare(rng.normal(10, 2, 300), rng.normal(10, 2, 300))
    assert null.p_value > 0.05 and null.recommendation.startswith(("keep running", "stop"))
