"""Render: KServe/Prometheus Operator schema validity, golden files, determinism, located template errors.

Regenerate the golden files after an intended change with
`MLP_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_render.py`.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from ruamel.yaml import YAML

from mlp.render import RenderError, render
from mlp.render.yamlio import dump_all, load_all
from mlp.sources.base import Snapshot
from mlp.sources.directory import read_directory
from mlp.specs import load
from mlp.targets.base import ENV_LABEL, HASH_ANNOTATION, MANAGED_BY, MODEL_DEPLOYMENT_EXAMPLE, SPEC_LABEL

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
GOLDEN = Path(__file__).parent / "golden" / "render"
UPDATE = os.environ.get("MLP_UPDATE_GOLDEN") == "1"

DIGEST = "sha256:" + "ab" * 32


def _strict(schema: Any) -> Any:
    """Reject unknown fields: `additionalProperties: false` on every object schema that lists
    `properties` and neither allows extra properties nor preserves unknown fields."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _crd_schema(path: Path) -> dict[str, Any]:
    crd = YAML(typ="safe").load(path.read_text())
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


@pytest.fixture(scope="module")
def isvc_validator() -> jsonschema.protocols.Validator:
    path = FIXTURES / "kserve" / "inferenceservice-v1beta1.schema.json"
    schema = _strict(json.loads(path.read_text()))
    return jsonschema.Draft202012Validator(schema)


def _prom_validator(kind: str) -> jsonschema.protocols.Validator:
    path = FIXTURES / "prometheus-operator" / f"monitoring.coreos.com_{kind.lower()}s.yaml"
    return jsonschema.Draft202012Validator(_strict(_crd_schema(path)))


# A repository exercising every framework, canary, A/B, shadow, resources and a monitor.
MODELS = {
    "sk": "sklearn",
    "xg": "xgboost",
    "lg": "lightgbm",
    "ox": "onnx",
    "pt": "pytorch",
    "tf": "tensorflow",
    "cu": "custom",
}


def _model(name: str, framework: str) -> str:
    custom = "  custom: {image: 'example/custom-model:1.0', args: [--workers, '2']}\n" if framework == "custom" else ""
    return f"""apiVersion: mlp.dev/v1
kind: Model
metadata: {{name: {name}, team: t}}
spec:
  framework: {framework}
{custom}  signature:
    inputs: [{{name: x, type: float}}]
    outputs: [{{name: y, type: float}}]
  versions:
    - {{version: 1, uri: "s3://b/{name}/1/model", digest: "{DIGEST}"}}
    - {{version: 2, uri: "s3://b/{name}/2/model", digest: "{DIGEST}"}}
"""


ENVIRONMENT = """apiVersion: mlp.dev/v1
kind: Environment
metadata: {name: k}
spec:
  target: {kind: kubernetes, namespace: ml-k}
  serviceAccount: runner
  storageSecret: s3-creds
  serving: {prometheus: {url: "http://prometheus.monitoring:9090"}}
  deployments:
    sk: {version: 1, canary: {version: 2, steps: [10, 100], traffic: 10},
         autoscaling: {minReplicas: 1, maxReplicas: 5, metric: rps, target: 30},
         resources: {requests: {cpu: 100m, memory: 128Mi}, limits: {cpu: 1, memory: 1Gi, nvidia.com/gpu: 1}}}
    xg: {version: 1}
    lg: {version: 2}
    ox: {version: 1, autoscaling: {minReplicas: 0, maxReplicas: 2, metric: cpu, target: 80}}
    pt: {version: 1}
    tf: {version: 2}
    cu: {version: 1, resources: {limits: {memory: 2Gi}}}
---
apiVersion: mlp.dev/v1
kind: Environment
metadata: {name: l}
spec:
  target: {kind: local}
  deployments:
    sk: {version: 1, canary: {version: 2, steps: [25, 100]}}
    xg: {version: 1, abTest: {version: 2, share: 30, stickyHeader: x-user}}
    lg: {version: 2, shadow: {version: 1, percent: 5}, batching: false}
"""

TEAM = """apiVersion: mlp.dev/v1
kind: Team
metadata: {name: t}
spec:
  members: [{user: octocat, role: owner}]
"""

MONITOR = """apiVersion: mlp.dev/v1
kind: Monitor
metadata: {name: sk-watch}
spec:
  model: sk
  payloadLog: "s3://payloads/{environment}"
  drift:
    detector: psi
    threshold: 0.2
    reference: {uri: "s3://refs/sk/train.parquet", digest: "sha256:abababababababababababababababababababababababababababababababab"}
  performance: [{metric: accuracy, min: 0.8}, {metric: rmse, max: 0.25}]
  alerts: [{severity: critical, for: 5m, route: pager}, {severity: info, for: 1h}]
"""


def _snapshot(templates: dict[str, str] | None = None) -> Snapshot:
    files = {f"specs/models/{n}.yaml": _model(n, f).encode() for n, f in MODELS.items()}
    files["environments/envs.yaml"] = ENVIRONMENT.encode()
    files["specs/monitors/sk.yaml"] = MONITOR.encode()
    files["specs/teams/t.yaml"] = TEAM.encode()
    for name, text in (templates or {}).items():
        files[f"templates/{name}"] = text.encode()
    return Snapshot(revision="0" * 40, files=files)


def _render(snap: Snapshot, env: str, revision: str = "golden") -> list[dict[str, Any]]:
    result = load(snap)
    assert result.ok, [str(d) for d in result.diagnostics]
    return render(result.specs, env, revision=revision, templates=snap.templates())


def _all_rendered() -> list[dict[str, Any]]:
    out = _render(_snapshot(), "k")
    example = read_directory(REPO)
    result = load(example)
    for env in sorted(result.specs.environments):
        out += render(result.specs, env, revision="golden", templates=example.templates())
    return out


def test_every_inference_service_validates_against_the_kserve_crd(isvc_validator: Any) -> None:
    isvcs = [o for o in _all_rendered() if o["kind"] == "InferenceService"]
    assert len(isvcs) >= 10
    for obj in isvcs:
        assert obj["apiVersion"] == "serving.kserve.io/v1beta1"
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in isvc_validator.iter_errors(obj)]
        assert not errors, (obj["metadata"]["name"], errors)
    formats = {o["spec"]["predictor"].get("model", {}).get("modelFormat", {}).get("name") for o in isvcs}
    assert {"sklearn", "xgboost", "lightgbm", "onnx", "pytorch", "tensorflow"} <= formats
    assert any("containers" in o["spec"]["predictor"] for o in isvcs)


def test_strict_kserve_schema_rejects_a_typo(isvc_validator: Any) -> None:
    obj = next(o for o in _render(_snapshot(), "k") if o["metadata"]["name"] == "sk")
    bad = copy.deepcopy(obj)
    bad["spec"]["predictor"]["model"]["storageUrl"] = bad["spec"]["predictor"]["model"].pop("storageUri")
    assert any("storageUrl" in e.message for e in isvc_validator.iter_errors(bad))
    bad = copy.deepcopy(obj)
    bad["spec"]["predictr"] = bad["spec"].pop("predictor")
    assert list(isvc_validator.iter_errors(bad))


@pytest.mark.parametrize("kind", ["PrometheusRule", "ServiceMonitor"])
def test_monitoring_objects_validate_against_prometheus_operator_crds(kind: str) -> None:
    validator = _prom_validator(kind)
    objs = [o for o in _all_rendered() if o["kind"] == kind]
    assert len(objs) >= 2
    for obj in objs:
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
        assert not errors, (obj["metadata"]["name"], errors)
    bad = copy.deepcopy(objs[0])
    bad["spec"]["selectr"] = {}
    assert list(validator.iter_errors(bad))


def test_kubernetes_environment_contents() -> None:
    objs = _render(_snapshot(), "k")
    by = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    sa = by[("ServiceAccount", "runner")]
    assert sa["secrets"] == [{"name": "s3-creds"}] and "data" not in sa and "stringData" not in sa
    sk = by[("InferenceService", "sk")]["spec"]["predictor"]
    # KServe canary semantics: the spec serves the canary's artifact with its traffic share
    assert sk["canaryTrafficPercent"] == 10 and sk["model"]["storageUri"] == "s3://b/sk/2/model"
    assert (sk["scaleMetric"], sk["scaleTarget"], sk["minReplicas"], sk["maxReplicas"]) == ("rps", 30, 1, 5)
    assert sk["model"]["resources"]["limits"] == {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"}
    assert sk["serviceAccountName"] == "runner"
    ann = by[("InferenceService", "sk")]["metadata"]["annotations"]
    assert (ann["mlp.dev/stable-version"], ann["mlp.dev/canary-version"]) == ("1", "2")
    assert ann["mlp.dev/canary-digest"] == DIGEST
    cu = by[("InferenceService", "cu")]["spec"]["predictor"]["containers"][0]
    assert cu["image"] == "example/custom-model:1.0"
    assert {"name": "STORAGE_URI", "value": "s3://b/cu/1/model"} in cu["env"]
    for o in objs:
        labels = o["metadata"]["labels"]
        assert labels[MANAGED_BY] == "mlp" and labels[ENV_LABEL] == "k" and labels[SPEC_LABEL]
        assert o["metadata"]["namespace"] == "ml-k"
        assert o["metadata"]["annotations"][HASH_ANNOTATION].startswith("sha256:")
    kinds = [o["kind"] for o in objs]
    assert (
        kinds.index("ServiceAccount")
        < kinds.index("ConfigMap")
        < kinds.index("InferenceService")
        < kinds.index("PrometheusRule")
    )
    rule = by[("PrometheusRule", "sk-watch-monitor")]["spec"]["groups"][0]["rules"]
    assert {r["labels"]["severity"] for r in rule} == {"critical", "info"}
    assert any('metric="rmse"' in r["expr"] and "> 0.25" in r["expr"] for r in rule)


def test_local_environment_matches_the_model_deployment_contract() -> None:
    objs = _render(_snapshot(), "l")
    assert {o["kind"] for o in objs} == {"ModelDeployment"}
    example_keys = set(MODEL_DEPLOYMENT_EXAMPLE["spec"])
    by = {o["metadata"]["name"]: o for o in objs}
    for o in objs:
        assert o["apiVersion"] == "mlp.dev/v1" and set(o["spec"]) == example_keys
        routes = o["spec"]["routes"]
        assert sum(r["weight"] for r in routes if r["role"] != "shadow") == 100
        assert routes[0]["role"] == "stable"
        assert set(routes[0]) == set(MODEL_DEPLOYMENT_EXAMPLE["spec"]["routes"][0])
    assert [(r["role"], r["version"], r["weight"]) for r in by["sk"]["spec"]["routes"]] == [
        ("stable", 1, 75),
        ("canary", 2, 25),
    ]
    assert by["xg"]["spec"]["sticky"] == {"header": "x-user"}
    assert [(r["role"], r["weight"]) for r in by["lg"]["spec"]["routes"]] == [("stable", 100), ("shadow", 5)]
    assert by["lg"]["spec"]["batching"] is None


def test_output_is_deterministic_and_revision_does_not_change_the_hash() -> None:
    a = dump_all(_render(_snapshot(), "k", revision="r1"))
    assert a == dump_all(_render(_snapshot(), "k", revision="r1"))
    b = _render(_snapshot(), "k", revision="r2")
    assert [o["metadata"]["annotations"][HASH_ANNOTATION] for o in load_all(a)] == [
        o["metadata"]["annotations"][HASH_ANNOTATION] for o in b
    ]


def _golden_cases() -> list[tuple[str, str]]:
    return [
        ("frameworks-k", "k"),
        ("frameworks-l", "l"),
        ("example-dev", "dev"),
        ("example-staging", "staging"),
        ("example-prod", "prod"),
    ]


@pytest.mark.parametrize(("name", "env"), _golden_cases())
def test_golden(name: str, env: str) -> None:
    if name.startswith("example-"):
        snap = read_directory(REPO)
        result = load(snap)
        assert result.ok
        text = dump_all(render(result.specs, env, revision="golden", templates=snap.templates()))
    else:
        text = dump_all(_render(_snapshot(), env))
    path = GOLDEN / f"{name}.yaml"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with MLP_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"render output changed; if intended, rerun with MLP_UPDATE_GOLDEN=1 ({path})"


def test_example_override_is_used() -> None:
    snap = read_directory(REPO)
    assert "kubernetes/inferenceservice.yaml.j2" in snap.templates(), "the example InferenceService override is missing"
    result = load(snap)
    isvc = next(o for o in render(result.specs, "prod", templates=snap.templates()) if o["kind"] == "InferenceService")
    assert isvc["spec"]["predictor"]["nodeSelector"] == {"kubernetes.io/os": "linux"}


OVERRIDE = "kubernetes/inferenceservice.yaml.j2"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("apiVersion: v1\n{% if %}\n", "templates/kubernetes/inferenceservice.yaml.j2:2: template syntax error"),
        (
            "apiVersion: v1\nkind: X\nmetadata: {name: {{ isvc.nmae }}}\n",
            "templates/kubernetes/inferenceservice.yaml.j2:3: undefined variable: 'dict object' has no attribute 'nmae'",
        ),
        (
            "# a comment\n\nname: {{ modle.name }}\n",
            "templates/kubernetes/inferenceservice.yaml.j2:3: undefined variable: 'modle' is undefined",
        ),
        (
            "{{ isvc.__class__.__mro__ }}\n",
            "templates/kubernetes/inferenceservice.yaml.j2:1: not allowed in a template",
        ),
        ("a: [\n", "templates/kubernetes/inferenceservice.yaml.j2: rendered output is not valid YAML"),
        ("{% extends 'package:kubernetes/nope.yaml.j2' %}\n", "template not found"),
    ],
)
def test_template_errors_are_located(template: str, expected: str) -> None:
    snap = _snapshot({OVERRIDE: template})
    with pytest.raises(RenderError) as err:
        _render(snap, "k")
    assert str(err.value).startswith(expected) or expected in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_errors_in_package_templates_name_the_package_file() -> None:
    snap = _snapshot(
        {
            "kubernetes/serviceaccount.yaml.j2": "{% extends 'package:kubernetes/serviceaccount.yaml.j2' %}"
            "{% block x %}{{ nope }}{% endblock %}\n"
        }
    )
    # a block the parent does not define is never rendered: no error, same output as the package
    assert _render(snap, "k") == _render(_snapshot(), "k")


def test_unknown_environment_and_custom_without_image() -> None:
    with pytest.raises(RenderError, match="unknown environment 'nope'"):
        _render(_snapshot(), "nope")
    snap = _snapshot()
    files = dict(snap.files)
    files["specs/models/cu.yaml"] = (
        _model("cu", "custom")
        .replace(
            "custom: {image: 'example/custom-model:1.0', args: [--workers, '2']}", "custom: {modelClass: 'pkg.mod:Cls'}"
        )
        .encode()
    )
    with pytest.raises(RenderError, match=r"^specs/models/cu.yaml: Model/cu: framework custom needs custom.image"):
        _render(Snapshot(revision="x", files=files), "k")


def test_an_override_may_add_objects_namespaced_or_not() -> None:
    # a template renders a YAML stream: an override can emit more documents than it replaces
    override = (
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {{ serviceAccount.name }}\n"
        "secrets:\n  - name: {{ serviceAccount.secret }}\n---\n"
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: mlp-{{ env.name }}\n"
        "rules: []\n"
    )
    objs = _render(_snapshot({"kubernetes/serviceaccount.yaml.j2": override}), "k")
    by = {o["kind"]: o for o in objs}
    assert by["ServiceAccount"]["metadata"]["namespace"] == "ml-k"  # filled in from the environment
    assert "namespace" not in by["ClusterRole"]["metadata"]
    assert by["ClusterRole"]["metadata"]["labels"]["mlp.dev/spec"] == "Environment.k"


@pytest.mark.parametrize(
    "text",
    [
        "a: 1\nb: [x, 'on', yes, 0o17, 1e3, ~, 2026-01-01]\n---\n---\nc: {d: null}\n",
        "base: &b {x: 1}\nuse: *b\n",  # an anchor: ruamel's loader decides
        "when: !!str 12\n",  # an explicit tag: likewise
        "? [a, b]\n: 1\n",  # a non-scalar key: likewise (and refuses it as ruamel does)
    ],
)
def test_rendered_output_loads_as_ruamels_safe_loader_reads_it(text: str) -> None:
    def stock() -> Any:
        return [d for d in YAML(typ="safe").load_all(text) if d is not None]

    try:
        expected = stock()
    except Exception as exc:
        with pytest.raises(type(exc)):
            load_all(text)
        return
    assert load_all(text) == expected
