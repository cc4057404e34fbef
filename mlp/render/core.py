"""`render(specs, environment)`: the declared world of one environment as Kubernetes objects.

Pure: a `SpecSet` and template sources in, a list of plain-dict manifests out. Python
builds a small, documented context per object (below); Jinja2 templates give it shape.
Templates are the package's (`mlp/render/templates/`) unless the repository overrides
one under its `templates/` folder. A template renders a YAML stream, so an override may
also add objects (a NetworkPolicy next to every InferenceService, say).

kubernetes targets, per deployed model:
- `kubernetes/inferenceservice.yaml.j2`: a KServe v1beta1 InferenceService. With a canary
  it follows KServe's own canary semantics: the spec names the *canary* version's
  `storageUri` with `canaryTrafficPercent`, and KServe keeps routing the rest to the
  previously rolled-out revision; the stable and canary versions and digests are recorded
  in `mlp.dev/*` annotations. That is KServe's Serverless (Knative) mode; in Standard
  (RawDeployment) mode (`spec.serving.mode`) KServe has no split, so the canary is a second
  InferenceService `<model>-canary` and `kubernetes/httproute.yaml.j2` renders a Gateway API
  HTTPRoute `<model>` weighing `<model>-predictor` and `<model>-canary-predictor` (every model
  gets its route when `serving.gateway` is set). A declared mode is also written as the
  `serving.kserve.io/deploymentMode` annotation. A/B tests and shadows need the local data
  plane's router (a sticky hashed split, mirroring): validate refuses them on kubernetes targets.
- once per environment with a `storageSecret`: `kubernetes/serviceaccount.yaml.j2`, a
  ServiceAccount that *references* the storage Secret (`secrets: [{name: ...}]`), never
  holds credentials.
- per monitor watching a deployed model: `monitor-configmap`, `monitor-deployment`,
  `monitor-service`, `servicemonitor` and `prometheusrule` templates.

local targets: `local/modeldeployment.yaml.j2`, one `mlp.dev/v1 ModelDeployment` per
deployed model, shaped exactly like `mlp.objects.MODEL_DEPLOYMENT_EXAMPLE`.

Every object is stamped (`mlp.render.stamp`) and the list is sorted by kind rank, kind,
namespace and name, with every mapping's keys sorted, so output is byte-stable.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ruamel.yaml.error import YAMLError

from mlp.objects import CLUSTER_SCOPED, Manifest, ResolvedDeployment, Route, sort_manifests
from mlp.render.engine import RenderError, close_environment, make_environment, render_template
from mlp.render.monitoring import DEFAULT_IMAGE, METRICS_PORT, alert_rules, monitor_config
from mlp.render.resolve import resolve_deployments
from mlp.render.stamp import stamp
from mlp.render.yamlio import load_all, sort_keys
from mlp.specs import SpecSet
from mlp.specs.models import Deployment, Environment, Framework, Model, Monitor

DEFAULT_SERVICE_ACCOUNT = "mlp-models"
LOCAL_NAMESPACE = "local"

# KServe v0.20 `predictor.model.modelFormat.name` and the protocol its default runtime speaks.
MODEL_FORMATS: dict[Framework, tuple[str, str]] = {
    Framework.sklearn: ("sklearn", "v2"),
    Framework.xgboost: ("xgboost", "v2"),
    Framework.lightgbm: ("lightgbm", "v2"),
    Framework.onnx: ("onnx", "v2"),
    Framework.pytorch: ("pytorch", "v1"),
    Framework.tensorflow: ("tensorflow", "v1"),
}


def _where(specs: SpecSet, kind: str, name: str) -> str | None:
    src = specs.sources.get((kind, name))
    return src.path if src else None


def _resources(dep: Deployment) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if dep.resources.requests:
        out["requests"] = {k: str(v) for k, v in sorted(dep.resources.requests.items())}
    if dep.resources.limits:
        out["limits"] = {k: str(v) for k, v in sorted(dep.resources.limits.items())}
    return out


def _version_info(route: Route) -> dict[str, Any]:
    return {"version": int(route.version), "uri": route.uri, "digest": route.digest}


def _base_labels(model: Model, role: str) -> dict[str, str]:
    labels = dict(model.metadata.labels)
    labels.update(
        {"app.kubernetes.io/name": model.metadata.name, "mlp.dev/model": model.metadata.name, "mlp.dev/role": role}
    )
    if model.metadata.team:
        labels["mlp.dev/team"] = model.metadata.team
    return labels


def _isvc_contexts(
    specs: SpecSet, env: Environment, name: str, dep: Deployment, res: ResolvedDeployment, service_account: str | None
) -> list[dict[str, Any]]:
    model = specs.models[name]
    framework = model.spec.framework
    custom = None
    if framework is Framework.custom:
        runtime = model.spec.custom
        if runtime is None or not runtime.image:
            raise RenderError(
                f"Model/{name}: framework custom needs custom.image to run on Kubernetes",
                path=_where(specs, "Model", name),
            )
        custom = {"image": runtime.image, "args": list(runtime.args)}
    model_format, protocol = MODEL_FORMATS.get(framework, ("", "v1"))
    stable = _version_info(res.stable)
    annotations = {"mlp.dev/stable-version": str(stable["version"]), "mlp.dev/stable-digest": stable["digest"]}
    served, canary_percent = stable, None
    canary_route = res.route("canary")
    if canary_route is not None:
        canary = _version_info(canary_route)
        served, canary_percent = canary, canary_route.weight
        annotations.update(
            {
                "mlp.dev/canary-version": str(canary["version"]),
                "mlp.dev/canary-digest": canary["digest"],
                "mlp.dev/canary-steps": ",".join(str(s) for s in res.canary_steps),
            }
        )
    scaling = dep.autoscaling

    def ctx(
        role: str, version: dict[str, Any], canary_pct: int | None, extra: dict[str, str], suffix: str
    ) -> dict[str, Any]:
        return {
            "name": name + suffix,
            "role": role,
            "version": version["version"],
            "uri": version["uri"],
            "digest": version["digest"],
            "modelFormat": model_format,
            "protocolVersion": protocol,
            "custom": custom,
            "minReplicas": scaling.minReplicas,
            "maxReplicas": scaling.maxReplicas,
            "scaleMetric": scaling.metric,
            "scaleTarget": scaling.target,
            "canaryTrafficPercent": canary_pct,
            "resources": _resources(dep),
            "serviceAccountName": service_account,
            "labels": _base_labels(model, role),
            "annotations": {
                **extra,
                "mlp.dev/model-version": str(version["version"]),
                "mlp.dev/model-digest": version["digest"],
            },
        }

    annotations.update(_mode(env))
    serving = env.spec.serving
    if serving is not None and serving.standard and canary_route is not None:
        # Standard (RawDeployment) mode has no split inside an InferenceService: the stable version
        # keeps `<model>`, the canary runs beside it as `<model>-canary`, an HTTPRoute weighs them.
        out = [ctx("primary", stable, None, annotations, "")]
        canary_annotations = {k: v for k, v in annotations.items() if not k.startswith("mlp.dev/stable-")}
        out.append(ctx("canary", served, None, canary_annotations, "-canary"))
    else:
        out = [ctx("primary", served, canary_percent, annotations, "")]
    for role, field in (("ab", "abTest"), ("shadow", "shadow")):
        if res.route(role) is not None:  # `mlp validate` refuses these (mlp.specs.checks._serving)
            raise RenderError(
                f"Environment/{env.metadata.name}: deployments.{name}.{field} needs the local data plane's "
                "router; a kubernetes target cannot honour it",
                path=_where(specs, "Environment", env.metadata.name),
            )
    return out


def _mode(env: Environment) -> dict[str, str]:
    serving = env.spec.serving
    return {"serving.kserve.io/deploymentMode": serving.mode} if serving is not None and serving.mode else {}


def _route_ctx(env: Environment, name: str, model: Model, res: ResolvedDeployment) -> dict[str, Any] | None:
    """Standard mode: the HTTPRoute in front of `<model>` (and `<model>-canary`) with the weights.

    KServe's raw deployments expose each InferenceService as the Service `<isvc>-predictor` on
    port 80, and its model server knows the model by the InferenceService's name, so the canary's
    backend rewrites `/v2/models/<model>` to `/v2/models/<model>-canary` (and the v1 predict path
    alike). Matching on the model's own paths lets every model's route share one Gateway. The
    canary's weight is its resolved route's (the rollout position when one runs)."""
    serving = env.spec.serving
    if serving is None or not serving.standard or serving.gateway is None:
        return None
    canary = res.route("canary")
    service = {"group": "", "kind": "Service", "port": 80}

    def backends(rewrite: dict[str, str] | None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [
            {**service, "name": f"{name}-predictor", "weight": 100 - (canary.weight if canary else 0)}
        ]
        if canary is not None:
            b: dict[str, Any] = {**service, "name": f"{name}-canary-predictor", "weight": canary.weight}
            if rewrite is not None:
                b["filters"] = [{"type": "URLRewrite", "urlRewrite": {"path": rewrite}}]
            out.append(b)
        return out

    rules = [
        {
            "matches": [{"path": {"type": "PathPrefix", "value": f"/v2/models/{name}"}}],
            "backendRefs": backends({"type": "ReplacePrefixMatch", "replacePrefixMatch": f"/v2/models/{name}-canary"}),
        },
        {
            "matches": [{"path": {"type": "Exact", "value": f"/v1/models/{name}:predict"}}],
            "backendRefs": backends(
                {"type": "ReplaceFullPath", "replaceFullPath": f"/v1/models/{name}-canary:predict"}
            ),
        },
    ]
    parent = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": serving.gateway.name}
    if serving.gateway.namespace:
        parent["namespace"] = serving.gateway.namespace
    return {"name": name, "parent": parent, "rules": rules, "labels": _base_labels(model, "primary")}


def _model_ctx(model: Model) -> dict[str, Any]:
    return {
        "name": model.metadata.name,
        "team": model.metadata.team,
        "framework": model.spec.framework.value,
        "description": model.metadata.description,
    }


def monitors_for(specs: SpecSet, env: Environment) -> list[Monitor]:
    env_name = env.metadata.name
    return [
        m
        for _, m in sorted(specs.monitors.items())
        if m.spec.model in env.spec.deployments and (not m.spec.environments or env_name in m.spec.environments)
    ]


def _monitor_ctx(specs: SpecSet, monitor: Monitor, env: Environment) -> dict[str, Any]:
    spec = monitor.spec
    name = monitor.metadata.name
    config = monitor_config(specs, monitor, env)
    text = json.dumps(config, sort_keys=True, indent=2) + "\n"
    return {
        "name": name,
        "resourceName": f"{name}-monitor",
        "model": spec.model,
        "schedule": spec.schedule,
        "config": text,
        # in the pod template: a changed configuration (a promoted version's baselines) rolls the pod
        "configHash": "sha256:" + hashlib.sha256(text.encode()).hexdigest(),
        "image": spec.image or DEFAULT_IMAGE,
        # boto3 in the pod reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (KServe's S3 secret keys)
        "storageSecret": env.spec.storageSecret,
        "metricsPort": METRICS_PORT,
        "rules": alert_rules(config),
        "labels": {"app.kubernetes.io/name": f"{name}-monitor", "mlp.dev/monitor": name, "mlp.dev/model": spec.model},
    }


def _local_ctx(specs: SpecSet, env: Environment, name: str, dep: Deployment, res: ResolvedDeployment) -> dict[str, Any]:
    model = specs.models[name]
    routes = [
        {"version": int(r.version), "uri": r.uri, "digest": r.digest, "role": r.role, "weight": r.weight}
        for r in res.routes
    ]
    custom = model.spec.custom
    # enrichment is only in the object when asked for, so other deployments render as before
    enrich = {"features": {"view": model.spec.features}} if model.spec.enrichFromFeatures else {}
    return {
        "name": name,
        "namespace": env.spec.target.namespace or LOCAL_NAMESPACE,
        "spec": {
            **enrich,
            "model": name,
            "framework": model.spec.framework.value,
            "modelClass": custom.modelClass if custom else None,
            "signature": model.spec.signature.model_dump(mode="json", exclude_none=True),
            "routes": routes,
            "sticky": {"header": res.sticky_header} if res.sticky_header else None,
            "batching": {"maxBatchSize": 32, "maxLatencyMs": 1} if dep.batching else None,
            "payloadLog": {"sampleRate": 1.0},
            "resources": {"replicas": max(1, dep.autoscaling.minReplicas)},
        },
        "labels": _base_labels(model, "primary"),
    }


class _Renderer:
    def __init__(self, templates: Mapping[str, str] | None, env: Environment, revision: str) -> None:
        self.jinja = make_environment(templates)
        # Repository templates render in a child process: stop it as soon as this render is over.
        weakref.finalize(self, close_environment, self.jinja)
        self.env = env
        self.revision = revision
        self.out: list[Manifest] = []

    def emit(self, template: str, spec: str, context: dict[str, Any]) -> None:
        text = render_template(self.jinja, template, context)
        from mlp.render.engine import display_path

        path = display_path(self.jinja, template)
        try:
            docs = load_all(text)
        except YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" at line {mark.line + 1} of its output" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise RenderError(f"rendered output is not valid YAML{line}: {problem}", path=path) from None
        for doc in docs:
            if (
                not isinstance(doc, dict)
                or not doc.get("apiVersion")
                or not doc.get("kind")
                or not isinstance(doc.get("metadata"), dict)
                or not doc["metadata"].get("name")
            ):
                raise RenderError("rendered a document without apiVersion, kind and metadata.name", path=path)
            namespace = self.env.spec.target.namespace or (
                LOCAL_NAMESPACE if self.env.spec.target.kind == "local" else None
            )
            if namespace and "namespace" not in doc["metadata"] and doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = namespace
            self.out.append(stamp(doc, environment=self.env.metadata.name, spec=spec, revision=self.revision))


def render(
    specs: SpecSet,
    environment: str,
    *,
    revision: str | None = None,
    templates: Mapping[str, str] | None = None,
    resolved: Mapping[str, ResolvedDeployment] | None = None,
    extra: Sequence[Callable[[Callable[[str, str, dict[str, Any]], None]], None]] = (),
) -> list[Manifest]:
    """Every object `environment` declares, stamped, sorted and with sorted keys.

    `templates` are the repository's overrides (`Snapshot.templates()`); `revision` defaults
    to the spec set's; `resolved` is the engine's resolve stage (computed here when absent);
    each of `extra` (kind plug-ins) is called with `emit(template, spec, context)`. Raises `RenderError` (located) on any failure; nothing partial returns.
    """
    env = specs.environments.get(environment)
    if env is None:
        known = ", ".join(sorted(specs.environments)) or "none"
        raise RenderError(f"unknown environment {environment!r} (declared: {known})")
    rev = revision if revision is not None else specs.revision
    if resolved is None:
        resolved = resolve_deployments(specs, environment)
    r = _Renderer(templates, env, rev)
    env_ctx = {
        "name": environment,
        "namespace": env.spec.target.namespace or LOCAL_NAMESPACE,
        "tier": env.spec.tier,
        "target": env.spec.target.kind,
    }
    env_spec = f"Environment.{environment}"

    if env.spec.target.kind == "local":
        for name, dep in sorted(env.spec.deployments.items()):
            md = _local_ctx(specs, env, name, dep, resolved[name])
            r.emit(
                "local/modeldeployment.yaml.j2",
                f"Model.{name}",
                {"env": env_ctx, "model": _model_ctx(specs.models[name]), "deployment": md},
            )
    else:
        service_account = env.spec.serviceAccount
        if env.spec.storageSecret:
            service_account = service_account or DEFAULT_SERVICE_ACCOUNT
            r.emit(
                "kubernetes/serviceaccount.yaml.j2",
                env_spec,
                {"env": env_ctx, "serviceAccount": {"name": service_account, "secret": env.spec.storageSecret}},
            )
        for name, dep in sorted(env.spec.deployments.items()):
            for isvc in _isvc_contexts(specs, env, name, dep, resolved[name], service_account):
                r.emit(
                    "kubernetes/inferenceservice.yaml.j2",
                    f"Model.{name}",
                    {"env": env_ctx, "model": _model_ctx(specs.models[name]), "isvc": isvc},
                )
            route = _route_ctx(env, name, specs.models[name], resolved[name])
            if route is not None:
                r.emit(
                    "kubernetes/httproute.yaml.j2",
                    f"Model.{name}",
                    {"env": env_ctx, "model": _model_ctx(specs.models[name]), "route": route},
                )
        for monitor in monitors_for(specs, env):
            mctx = {"env": env_ctx, "monitor": _monitor_ctx(specs, monitor, env)}
            spec = f"Monitor.{monitor.metadata.name}"
            for template in (
                "monitor-configmap",
                "monitor-deployment",
                "monitor-service",
                "servicemonitor",
                "prometheusrule",
            ):
                r.emit(f"kubernetes/{template}.yaml.j2", spec, mctx)
    for plugin_render in extra:
        plugin_render(r.emit)
    objs = [sort_keys(o) for o in r.out]
    seen: set[tuple[str, str, str]] = set()
    for o in objs:
        ident = (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])
        if ident in seen:
            raise RenderError(f"two rendered objects are both {ident[0]}/{ident[1]}/{ident[2]}")
        seen.add(ident)
    return sort_manifests(objs)
