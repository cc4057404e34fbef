"""Cross-reference and policy checks over a whole `SpecSet`.

Schema validation judges one document; these rules judge how documents fit together
(an environment deploys a model version that exists, promotion has no cycle, ...) and
what the organisation forbids (plaintext secrets, unsafe artifact URIs, unguarded
production). Each rule returns located `Problem`s; none stops the others.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache
from typing import Any
from urllib.parse import unquote, urlsplit

from mlp.specs.diagnostics import Loc, Problem
from mlp.specs.loader import SpecSet

ALLOWED_URI_SCHEMES = ("s3", "gs", "azure", "https", "pvc", "oci", "hdfs", "file")
# What KServe's storage initializer reads (Azure Blob as https://ACCOUNT.blob.core.windows.net/...).
REMOTE_URI_SCHEMES = ("s3", "gs", "https", "pvc", "oci", "hdfs")
# What the embedded runtime's artifact store reads (mlp.serving.artifacts).
LOCAL_URI_SCHEMES = ("s3", "gs", "azure", "https", "file")
SECRET_KEY = re.compile(
    r"(^|[_.-])(password|passwd|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key|credentials?)$",
    re.IGNORECASE,
)
# Keys whose value names where a secret lives rather than holding one.
SECRET_REFERENCE_KEY = re.compile(r"(secret|token|key)(Ref|Name|Secret|File|Env)$|^storageSecret$", re.IGNORECASE)
AWS_ACCESS_KEY = re.compile(r"\b(AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b")
AWS_SECRET_KEY = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])")
REFERENCE_VALUE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$|^(env|file|secret|vault)://")


def check(specs: SpecSet) -> list[Problem]:
    problems: list[Problem] = []
    for rule in (
        _models,
        _features,
        _experiments,
        _monitors,
        _environments,
        _serving,
        _promotion,
        _teams,
        _policy,
        _derived_names,
    ):
        problems.extend(rule(specs))
    return problems


# What each spec becomes on a cluster, and the suffix its name gets: a Kubernetes name is a
# DNS label of at most 63 characters, and Services and KServe InferenceServices also need a
# leading letter (DNS-1035). Checked on the derived name, suffix included.
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME = 63


def _derived_name_problem(name: str, suffix: str, becomes: str) -> str | None:
    full = name + suffix
    if len(full) > MAX_NAME:
        return (
            f"name {name!r} is too long: it becomes the {becomes} {full!r} ({len(full)} characters,"
            f" at most {MAX_NAME}); use at most {MAX_NAME - len(suffix)} characters"
        )
    if not DNS1035.match(full):
        return f"name {name!r} must start with a letter: it becomes the {becomes} {full!r} (a DNS-1035 label)"
    return None


def _derived_names(specs: SpecSet) -> Iterator[Problem]:
    for name in specs.models:
        problem = _derived_name_problem(name, "", "KServe InferenceService")
        if problem:
            yield _at(specs, "Model", name, ("metadata", "name"), problem, rule="schema")
    for name in specs.monitors:
        problem = _derived_name_problem(name, "-monitor", "Service")
        if problem:
            yield _at(specs, "Monitor", name, ("metadata", "name"), problem, rule="schema")
    for env_name, env in specs.environments.items():
        serving = env.spec.serving
        if env.spec.target.kind != "kubernetes" or serving is None or not serving.standard:
            continue
        for model, dep in env.spec.deployments.items():
            # Standard mode: the canary runs as the InferenceService `<model>-canary`
            problem = _derived_name_problem(model, "-canary", "InferenceService") if dep.canary else None
            if problem and DNS1035.match(model):  # a bad leading letter is reported on the model
                loc = ("spec", "deployments", model, "canary")
                yield _at(specs, "Environment", env_name, loc, problem, "schema")


def _at(specs: SpecSet, kind: str, name: str, loc: Loc, message: str, rule: str = "reference") -> Problem:
    ref = specs.sources[(kind, name)]
    return Problem(ref.path, ref.doc, loc, message, kind, name, rule=rule)


def _models(specs: SpecSet) -> Iterator[Problem]:
    for name, model in specs.models.items():
        seen: dict[int, int] = {}
        for i, version in enumerate(model.spec.versions):
            if version.version in seen:
                yield _at(
                    specs,
                    "Model",
                    name,
                    ("spec", "versions", i, "version"),
                    f"duplicate version {version.version} (also at versions[{seen[version.version]}])",
                )
            seen.setdefault(version.version, i)
        if model.spec.features and model.spec.features not in specs.feature_views:
            if specs.declared("FeatureView", model.spec.features):
                continue  # declared but invalid: already reported there
            yield _at(
                specs, "Model", name, ("spec", "features"), f"feature view {model.spec.features!r} does not exist"
            )
        elif model.spec.features:
            view = specs.feature_views[model.spec.features]
            if model.spec.enrichFromFeatures and not view.spec.online:
                yield _at(
                    specs,
                    "Model",
                    name,
                    ("spec", "enrichFromFeatures"),
                    f"feature view {view.metadata.name!r} is not online (online: false), so nothing can enrich requests",
                )
            available = {f.name: f.type for f in view.spec.features}
            for entity_name in view.spec.entities:
                entity = specs.entities.get(entity_name)
                if entity:
                    available.update({k: entity.spec.valueType for k in entity.spec.joinKeys})
            for i, field in enumerate(model.spec.signature.inputs):
                if field.name not in available:
                    yield _at(
                        specs,
                        "Model",
                        name,
                        ("spec", "signature", "inputs", i, "name"),
                        f"input {field.name!r} is not a feature of feature view {view.metadata.name!r}",
                    )
                elif available[field.name] != field.type:
                    yield _at(
                        specs,
                        "Model",
                        name,
                        ("spec", "signature", "inputs", i, "type"),
                        f"input {field.name!r} is {field.type.value} but feature view "
                        f"{view.metadata.name!r} declares it {available[field.name].value}",
                    )


def _features(specs: SpecSet) -> Iterator[Problem]:
    for name, view in specs.feature_views.items():
        for i, entity in enumerate(view.spec.entities):
            if not specs.declared("Entity", entity):
                yield _at(specs, "FeatureView", name, ("spec", "entities", i), f"entity {entity!r} does not exist")
        keys = [k for e in view.spec.entities if (ent := specs.entities.get(e)) for k in ent.spec.joinKeys]
        for i, f in enumerate(view.spec.features):
            if f.name in keys:
                yield _at(
                    specs, "FeatureView", name, ("spec", "features", i, "name"), f"{f.name!r} is an entity join key"
                )
    for env_name, env in specs.environments.items():
        mat = env.spec.features.materialize if env.spec.features else None
        for i, view_name in enumerate(mat.views if mat else []):
            fv = specs.feature_views.get(view_name)
            if fv is None and not specs.declared("FeatureView", view_name):
                yield _at(
                    specs,
                    "Environment",
                    env_name,
                    ("spec", "features", "materialize", "views", i),
                    f"feature view {view_name!r} does not exist",
                )
            elif fv is not None and not fv.spec.online:
                yield _at(
                    specs,
                    "Environment",
                    env_name,
                    ("spec", "features", "materialize", "views", i),
                    f"feature view {view_name!r} is not online (online: false)",
                )
        if mat is not None and mat.image and env.spec.target.kind != "kubernetes":
            yield _at(
                specs,
                "Environment",
                env_name,
                ("spec", "features", "materialize", "image"),
                "image is for kubernetes targets (mlp up materializes in its own process)",
            )
        if env.spec.target.kind == "kubernetes":
            for model_name in env.spec.deployments:
                model = specs.models.get(model_name)
                if model is not None and model.spec.enrichFromFeatures:
                    yield _at(
                        specs,
                        "Environment",
                        env_name,
                        ("spec", "deployments", model_name),
                        f"model {model_name!r} sets enrichFromFeatures, which mlp's own data plane serves "
                        "(local targets); a KServe InferenceService would not enrich its requests",
                    )
        if mat is not None and env.spec.target.kind == "kubernetes":
            assert env.spec.features is not None
            if env.spec.features.onlineStore.kind != "redis":
                yield _at(
                    specs,
                    "Environment",
                    env_name,
                    ("spec", "features", "onlineStore"),
                    "materialization on kubernetes needs a redis online store (a pod's SQLite file is lost with it)",
                )
            for view_name in mat.views or [n for n, v in specs.feature_views.items() if v.spec.online]:
                fv = specs.feature_views.get(view_name)
                if fv is not None and fv.spec.source.uri is None:
                    reads = "PostgreSQL" if fv.spec.source.kind == "postgresql" else "repository files"
                    yield _at(
                        specs,
                        "Environment",
                        env_name,
                        ("spec", "features", "materialize"),
                        f"feature view {view_name!r} reads {reads}; a kubernetes CronJob can only read s3:// sources",
                    )


def _experiments(specs: SpecSet) -> Iterator[Problem]:
    for name, exp in specs.experiments.items():
        model = specs.models.get(exp.spec.model)
        if model is None:
            if not specs.declared("Model", exp.spec.model):
                yield _at(specs, "Experiment", name, ("spec", "model"), f"model {exp.spec.model!r} does not exist")
            continue
        # the runtime ranks runs against this version: it must exist
        if exp.spec.baseline is not None and model.spec.version(exp.spec.baseline) is None:
            yield _at(
                specs,
                "Experiment",
                name,
                ("spec", "baseline"),
                f"model {model.metadata.name!r} has no version {exp.spec.baseline}",
            )
        for i, run in enumerate(exp.spec.runs):
            if run.modelVersion is not None and model.spec.version(run.modelVersion) is None:
                yield _at(
                    specs,
                    "Experiment",
                    name,
                    ("spec", "runs", i, "modelVersion"),
                    f"model {model.metadata.name!r} has no version {run.modelVersion}",
                )


def _deployed_in(specs: SpecSet, model: str) -> list[str]:
    return [env for env, e in specs.environments.items() if model in e.spec.deployments]


def _monitors(specs: SpecSet) -> Iterator[Problem]:
    for name, mon in specs.monitors.items():
        model = specs.models.get(mon.spec.model)
        if model is None:
            if not specs.declared("Model", mon.spec.model):
                yield _at(specs, "Monitor", name, ("spec", "model"), f"model {mon.spec.model!r} does not exist")
            continue
        deployed = _deployed_in(specs, mon.spec.model)
        if not mon.spec.environments and not deployed and not any(k == "Environment" for k, _ in specs.invalid):
            yield _at(
                specs,
                "Monitor",
                name,
                ("spec", "model"),
                f"model {mon.spec.model!r} is not deployed in any environment",
            )
        for i, env in enumerate(mon.spec.environments):
            if env not in specs.environments:
                if not specs.declared("Environment", env):
                    yield _at(
                        specs, "Monitor", name, ("spec", "environments", i), f"environment {env!r} does not exist"
                    )
            elif env not in deployed:
                yield _at(
                    specs,
                    "Monitor",
                    name,
                    ("spec", "environments", i),
                    f"model {mon.spec.model!r} is not deployed in environment {env!r}",
                )
        if mon.spec.drift:
            inputs = {f.name for f in model.spec.signature.inputs}
            for i, feature in enumerate(mon.spec.drift.features):
                if feature not in inputs:
                    yield _at(
                        specs,
                        "Monitor",
                        name,
                        ("spec", "drift", "features", i),
                        f"{feature!r} is not an input of model {model.metadata.name!r}",
                    )
        watched = [e for e in (mon.spec.environments or deployed) if e in specs.environments]
        for i, check in enumerate(mon.spec.performance):
            if check.tolerance is None:
                continue
            lacking: set[int] = set()
            for env in watched:
                dep = specs.environments[env].spec.deployments.get(mon.spec.model)
                numbers = [dep.version] + ([dep.canary.version] if dep and dep.canary else []) if dep else []
                for number in numbers:
                    version = model.spec.version(number)
                    if version is not None and check.metric not in version.metrics:
                        lacking.add(number)
            if lacking:
                yield _at(
                    specs,
                    "Monitor",
                    name,
                    ("spec", "performance", i, "tolerance"),
                    f"tolerance needs model {model.metadata.name!r} to record metrics.{check.metric} on deployed "
                    f"version(s) {', '.join(str(n) for n in sorted(lacking))}",
                )
        if mon.spec.payloadLog is None:
            for env in watched:
                if specs.environments[env].spec.target.kind == "kubernetes":
                    yield _at(
                        specs,
                        "Monitor",
                        name,
                        ("spec",),
                        f"environment {env!r} is a kubernetes target: set payloadLog (s3://bucket/prefix) "
                        "so the monitor can read the model's payloads",
                    )
                    break


def _environments(specs: SpecSet) -> Iterator[Problem]:
    for name, env in specs.environments.items():
        kubernetes = env.spec.target.kind == "kubernetes"
        for model_name, dep in env.spec.deployments.items():
            base: Loc = ("spec", "deployments", model_name)
            model = specs.models.get(model_name)
            if model is None:
                if not specs.declared("Model", model_name):
                    yield _at(specs, "Environment", name, base, f"deploys model {model_name!r}, which does not exist")
                continue
            routed = [("version", dep.version, base + ("version",))]
            if dep.canary:
                routed.append(("canary version", dep.canary.version, base + ("canary", "version")))
                steps = dep.canary.steps
                if any(b <= a for a, b in zip(steps, steps[1:], strict=False)) or steps[-1] != 100:
                    yield _at(
                        specs,
                        "Environment",
                        name,
                        base + ("canary", "steps"),
                        f"canary steps must increase and end at 100, got {steps}",
                    )
                if dep.canary.traffic is not None and dep.canary.traffic not in steps:
                    yield _at(
                        specs,
                        "Environment",
                        name,
                        base + ("canary", "traffic"),
                        f"canary traffic {dep.canary.traffic} is not one of the steps {steps}",
                    )
            if dep.abTest:
                routed.append(("abTest version", dep.abTest.version, base + ("abTest", "version")))
            if dep.shadow:
                routed.append(("shadow version", dep.shadow.version, base + ("shadow", "version")))
            for label, number, loc in routed:
                version = model.spec.version(number)
                if version is None:
                    have = ", ".join(str(v.version) for v in model.spec.versions)
                    yield _at(
                        specs,
                        "Environment",
                        name,
                        loc,
                        f"{label} {number} of model {model_name!r} does not exist (versions: {have})",
                    )
                elif kubernetes and _scheme(version.uri) not in REMOTE_URI_SCHEMES and not uri_problem(version.uri):
                    # (a URI refused by policy is already reported on the model, once)
                    yield _at(
                        specs,
                        "Environment",
                        name,
                        loc,
                        f"{label} {number} of model {model_name!r} has a local artifact URI "
                        f"({version.uri}); a kubernetes target needs s3, gs, https, pvc, oci or hdfs (Azure Blob as https://ACCOUNT.blob.core.windows.net/...)",
                        rule="policy",
                    )
                elif not kubernetes and _scheme(version.uri) not in LOCAL_URI_SCHEMES and not uri_problem(version.uri):
                    yield _at(
                        specs,
                        "Environment",
                        name,
                        loc,
                        f"{label} {number} of model {model_name!r} has an artifact URI the local runtime cannot "
                        f"read ({version.uri}); a local target needs file, s3, gs, azure or https",
                        rule="policy",
                    )
            for label, number, loc in routed[1:]:
                if number == dep.version:
                    yield _at(specs, "Environment", name, loc, f"{label} {number} is the same as the stable version")


# Checks that need a canary's outputs or its feedback, which only the embedded runtime keeps;
# Prometheus answers them only through a check's own PromQL `query`.
RUNTIME_ONLY_CHECKS = ("prediction-shift", "accuracy", "outcome")


def _serving(specs: SpecSet) -> Iterator[Problem]:
    """Serving and rollout fields the environment's target cannot honour: refused, not ignored."""
    for name, env in specs.environments.items():
        spec = env.spec
        kubernetes = spec.target.kind == "kubernetes"
        serving = spec.serving

        def at(loc: Loc, message: str, name: str = name) -> Problem:
            return _at(specs, "Environment", name, loc, message)

        if serving is not None and not kubernetes:
            if serving.mode is not None:
                yield at(
                    ("spec", "serving", "mode"),
                    "serving.mode is KServe's deployment mode: a local target's router splits traffic itself",
                )
            if serving.gateway is not None:
                yield at(("spec", "serving", "gateway"), "serving.gateway is for kubernetes targets in Standard mode")
        elif serving is not None and serving.gateway is not None and not serving.standard:
            yield at(
                ("spec", "serving", "gateway"),
                "serving.gateway is used in Standard (RawDeployment) mode only: set serving.mode: Standard "
                "or remove the gateway",
            )
        for model, dep in spec.deployments.items():
            base: Loc = ("spec", "deployments", model)
            declared = dep.model_fields_set
            for key in ("autoscaling", "resources"):
                if not kubernetes and key in declared:
                    yield at(
                        base + (key,),
                        f"{key} sizes KServe's pods: the local runtime serves each version in this process "
                        "and would ignore it",
                    )
            if kubernetes and "batching" in declared:
                yield at(
                    base + ("batching",),
                    "batching is the local data plane's micro-batching: KServe's model servers would ignore it",
                )
            if kubernetes and dep.abTest is not None:
                yield at(
                    base + ("abTest",),
                    "an A/B test needs the local data plane's router (sticky assignment by a hashed key); "
                    "neither KServe nor a Gateway API HTTPRoute can split that way on a kubernetes target",
                )
            if kubernetes and dep.shadow is not None:
                yield at(
                    base + ("shadow",),
                    "a shadow version needs the local data plane's router to mirror requests to it; "
                    "KServe does not mirror traffic on a kubernetes target",
                )
            if dep.canary is None:
                continue
            if kubernetes and serving is not None and serving.standard and serving.gateway is None:
                yield at(
                    base + ("canary",),
                    f"serving.mode {serving.mode}: the canary needs serving.gateway "
                    "(the Gateway its HTTPRoute attaches to)",
                )
            analysis = dep.canary.analysis
            where = base + ("canary", "analysis")
            provider = spec.analysis_provider(analysis)
            if provider == "local" and kubernetes:
                yield at(
                    where + ("provider",),
                    "provider local reads the embedded runtime; a kubernetes target's canaries are judged by "
                    "prometheus",
                )
                continue
            if provider == "prometheus" and spec.prometheus_url(analysis) is None:
                yield at(
                    where,
                    "the canary's analysis needs a Prometheus: set the environment's serving.prometheus.url "
                    "(or analysis.prometheus.url)",
                )
            if provider == "local" and analysis is not None and analysis.prometheus is not None:
                yield at(where + ("prometheus",), "prometheus.url is read by provider prometheus only")
            for i, check in enumerate(analysis.checks if analysis is not None else []):
                if "percentile" in check.model_fields_set and check.metric != "latency":
                    yield at(where + ("checks", i, "percentile"), "percentile is read by the latency check only")
                if provider == "prometheus" and check.metric in RUNTIME_ONLY_CHECKS and check.query is None:
                    yield at(
                        where + ("checks", i),
                        f"check {check.metric!r} needs the canary's outputs or feedback, which only the local "
                        "runtime keeps: with provider prometheus give it a PromQL query",
                    )
                if provider == "local" and check.query is not None:
                    yield at(
                        where + ("checks", i),
                        f"check {check.metric!r} has a PromQL query: only provider prometheus runs it",
                    )


def _promotion(specs: SpecSet) -> Iterator[Problem]:
    for name, env in specs.environments.items():
        source = env.spec.promotesFrom
        if source is None:
            continue
        if source == name:
            yield _at(specs, "Environment", name, ("spec", "promotesFrom"), "an environment cannot promote from itself")
        elif not specs.declared("Environment", source):
            yield _at(specs, "Environment", name, ("spec", "promotesFrom"), f"environment {source!r} does not exist")
    # cycles: follow promotesFrom from each environment
    reported: set[frozenset[str]] = set()
    for start in specs.environments:
        path: list[str] = []
        current: str | None = start
        while current is not None and current in specs.environments and current not in path:
            path.append(current)
            current = specs.environments[current].spec.promotesFrom
        if current is not None and current in path and current != path[-1]:
            cycle = path[path.index(current) :]
            key = frozenset(cycle)
            if key not in reported and start == current:
                reported.add(key)
                shown = " -> ".join([*cycle, current])
                yield _at(specs, "Environment", start, ("spec", "promotesFrom"), f"promotion cycle: {shown}")


def _teams(specs: SpecSet) -> Iterator[Problem]:
    for kind, name in specs.sources:
        obj = specs.by_kind(kind)[name]
        team = obj.metadata.team
        if team and not specs.declared("Team", team):
            yield _at(specs, kind, name, ("metadata", "team"), f"team {team!r} does not exist")
    for name, env in specs.environments.items():
        for i, who in enumerate(env.spec.approvals.from_):
            scope, _, value = who.partition(":")
            if scope == "team" and not specs.declared("Team", value):
                yield _at(
                    specs, "Environment", name, ("spec", "approvals", "from", i), f"team {value!r} does not exist"
                )


def _policy(specs: SpecSet) -> Iterator[Problem]:
    for name, env in specs.environments.items():
        if env.spec.tier == "production" and env.spec.approvals.required < 1:
            yield _at(
                specs,
                "Environment",
                name,
                ("spec", "tier"),
                "a production environment must require at least one approval (spec.approvals.required)",
                rule="policy",
            )
        if env.spec.tier == "production" and env.spec.approvals.required and not env.spec.approvals.from_:
            yield _at(
                specs,
                "Environment",
                name,
                ("spec", "approvals"),
                "a production environment must name who approves (spec.approvals.from)",
                rule="policy",
            )


def document_policy(path: str, index: int, doc: dict[str, Any]) -> Iterator[Problem]:
    """Policy that holds for any document, valid or not: no plaintext secrets, safe URIs.

    Runs on every document of every file, so it is one plain recursive walk (no generator
    per node) and the key tests are memoized: keys repeat across documents.
    """
    kind = doc.get("kind") if isinstance(doc.get("kind"), str) else None
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) and isinstance(meta.get("name"), str) else None
    problems: list[Problem] = []

    def leaf(loc: Loc, key: str, in_spec: bool, value: Any) -> None:
        if isinstance(value, str):
            if in_spec and key in _URI_KEYS:
                message = uri_problem(value)
                if message:
                    problems.append(Problem(path, index, loc, message, kind, name, rule="policy"))
            if _secret_key(key) and _is_literal(value):
                problems.append(Problem(path, index, loc, _secret_message(key), kind, name, rule="policy"))
            elif AWS_ACCESS_KEY.search(value):
                problems.append(
                    Problem(
                        path,
                        index,
                        loc,
                        "looks like an AWS access key id: never commit credentials",
                        kind,
                        name,
                        rule="policy",
                    )
                )
        elif _secret_key(key) and _is_literal(value):
            problems.append(Problem(path, index, loc, _secret_message(key), kind, name, rule="policy"))

    def walk(node: Any, loc: Loc, key: str, in_spec: bool) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(k, str):
                    walk(v, (*loc, k), k, in_spec or k == "spec")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, (*loc, i), key, in_spec)
        else:
            leaf(loc, key, in_spec, node)

    walk(doc, (), "", False)
    return iter(problems)


_URI_KEYS = frozenset(("uri", "reference", "labels", "payloadLog"))


@lru_cache(maxsize=4096)
def _secret_key(key: str) -> bool:
    return bool(SECRET_KEY.search(key)) and not SECRET_REFERENCE_KEY.search(key)


def _secret_message(key: str) -> str:
    return f"plaintext secret in {key!r}: reference a Secret or environment variable instead"


def _is_literal(value: Any) -> bool:
    """A value that would be the secret itself (not empty, not a reference to where it lives)."""
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, int | float):
        return True
    return isinstance(value, str) and bool(value.strip()) and not REFERENCE_VALUE.match(value.strip())


def _scheme(uri: str) -> str:
    try:
        return urlsplit(uri).scheme
    except ValueError:
        return ""


def uri_problem(uri: str) -> str | None:
    """Why an artifact URI is refused, or None when it is acceptable."""
    try:
        parts = urlsplit(uri)
    except ValueError as exc:  # e.g. an unbalanced '[' reads as a broken IPv6 host
        return f"URI {uri!r} is not a valid URI ({exc})"
    if parts.scheme not in ALLOWED_URI_SCHEMES:
        allowed = ", ".join(f"{s}://" for s in ALLOWED_URI_SCHEMES)
        shown = f"{parts.scheme}://" if parts.scheme else "no scheme"
        return f"URI {uri!r} uses {shown}; allowed: {allowed}"
    if parts.password is not None:
        return f"URI {uri!r} embeds credentials: use the environment's storage secret"
    decoded = unquote(unquote(parts.path))
    if "\\" in decoded or any(seg in ("..", ".") for seg in decoded.split("/")):
        return f"URI {uri!r} contains a path traversal segment ('..' or '.')"
    if "\0" in decoded:
        return f"URI {uri!r} contains a NUL byte"
    if parts.scheme == "file" and (parts.netloc or not decoded.startswith("/")):
        return f"URI {uri!r}: file URIs must be absolute, as file:///path"
    if parts.scheme in ("s3", "gs") and not parts.netloc:
        return f"URI {uri!r} names no bucket"
    if parts.query or parts.fragment:
        # SAS tokens and signed URLs travel in the query string: credentials go by reference.
        return f"URI {uri!r} has a query string or fragment: credentials go in the environment's storage secret"
    if parts.scheme == "azure" and len([seg for seg in decoded.split("/") if seg]) < 2:
        return f"URI {uri!r}: azure URIs name an account, a container and a key (azure://ACCOUNT/CONTAINER/key)"
    return None
