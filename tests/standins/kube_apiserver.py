"""A stand-in for the Kubernetes API server, spoken to over real HTTP on 127.0.0.1.

No kube-apiserver can run on the test machine, so the kubernetes target is tested against
this server instead. It follows the API server's documented semantics for what mlp uses, and
its answers are shaped like the real ones recorded in
`tests/fixtures/kube-apiserver/exchanges.json` (tests/test_kube_exchanges.py replays all
of them against it):

- discovery (`/api`, `/api/v1`, `/apis`, `/apis/G`, `/apis/G/V`); a group whose CRD is not
  installed answers the mux's plain-text `404 page not found`, like the real server;
- bearer-token authentication (401 Status `Unauthorized`), `Impersonate-User`, and a small
  RBAC: the admin may do everything, other users only what `grant()` allowed (403 with the
  real `... is forbidden: User "u" cannot VERB resource ...` message);
- namespaced and cluster CRUD for Namespace, ServiceAccount, ConfigMap, Secret, Service,
  Deployment, CronJob and the KServe / Prometheus Operator custom resources, with a global
  resourceVersion counter like etcd's revision (no-op writes do not consume one);
- server-side apply (`application/apply-patch+yaml`): creates (201) or updates (200), tracks
  managedFields per manager at field granularity (associative lists by key, sets by value,
  atomic lists and maps whole), reports conflicts with other managers (409, real message and
  causes) unless `force=true` (which moves ownership), removes fields the same manager stopped
  applying when nobody else owns them, keeps the resourceVersion on a no-op apply, and rejects
  a body that does not fit the schema with the real server's 500 ("failed to create typed
  patch object ... field not declared in schema");
- merge patch and update (PUT) as operation `Update` managers (named from the User-Agent when
  no fieldManager is given), optimistic concurrency (409 on a stale resourceVersion), unknown
  fields pruned with a `Warning` header or refused with `fieldValidation=Strict`, 422 Invalid
  for wrong types;
- CRD schema defaults and the common defaults of the built-in kinds (a real server adds them,
  so a plan that forgets to ignore them must show a diff here too);
- `dryRun=All` on every write: the answer is computed, nothing is stored;
- label selectors (`=`, `==`, `!=`, exists, `!key`, `in`, `notin`), `fieldSelector` on
  metadata.name / metadata.namespace, pagination with `limit` / `continue` served from a
  consistent snapshot (continue tokens in the real format) and `remainingItemCount`;
- deletion with finalizers: foreground deletion leaves the object with `deletionTimestamp`
  and the `foregroundDeletion` finalizer until `collect_garbage()` plays the garbage
  collector (or at once with `auto_gc=True`, like a full cluster); deleting an object without
  finalizers answers a Status;
- watch (`watch=1`) with chunked newline-delimited events from a resourceVersion;
- fault injection (`inject_fault`) for 429 / 5xx answers a real server gives under load.

Not modelled: admission webhooks (tests add a rejecting one with `reject_with_webhook`), real
controllers (nothing fills `status`; a test plays one with a merge PATCH of `.../status`),
strategic merge patch on custom resources (415, as in Kubernetes), JSON patch, subresources
other than the main resource and `status` (GET and merge PATCH).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime as _dt
import hashlib
import json
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ADMIN_TOKEN = "mlp-standin-admin-token"
ADMIN_USER = "admin"
SERVER_VERSION = {"major": "1", "minor": "32", "gitVersion": "v1.32.13-mlp-standin", "platform": "linux/amd64"}

Obj = dict[str, Any]
_MISSING: Any = object()


# --------------------------------------------------------------------------------------
# Schemas: a structural schema per kind, from a CRD's openAPIV3Schema or, for the built-in
# kinds, from the official client's model classes (their openapi_types list every field).
# --------------------------------------------------------------------------------------


@dataclass
class Schema:
    type: str  # object | array | string | integer | number | boolean | int-or-string | any
    properties: dict[str, Schema] | None = None
    additional: Schema | None = None
    preserve: bool = False
    map_atomic: bool = False
    items: Schema | None = None
    list_type: str = "atomic"  # atomic | set | map
    keys: tuple[str, ...] = ()
    default: Any = _MISSING
    required: tuple[str, ...] = ()
    enum: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    pattern: str | None = None
    min_length: int | None = None
    max_length: int | None = None
    min_items: int | None = None
    max_items: int | None = None
    nullable: bool = False

    @property
    def untyped(self) -> bool:
        return self.type == "any" or (self.type == "object" and self.preserve and not self.properties)


ANY = Schema("any")


def _from_openapi(node: dict[str, Any]) -> Schema:
    common: dict[str, Any] = {
        "default": node.get("default", _MISSING),
        "nullable": bool(node.get("nullable")),
        "pattern": node.get("pattern"),
        "min_length": node.get("minLength"),
        "max_length": node.get("maxLength"),
        "min_items": node.get("minItems"),
        "max_items": node.get("maxItems"),
    }
    if node.get("x-kubernetes-int-or-string"):
        return Schema("int-or-string", **common)
    t = node.get("type")
    if "enum" in node:
        common["enum"] = tuple(node["enum"])
    if t == "object" or (t is None and ("properties" in node or "additionalProperties" in node)):
        props = {k: _from_openapi(v) for k, v in (node.get("properties") or {}).items()}
        add = node.get("additionalProperties")
        additional = _from_openapi(add) if isinstance(add, dict) else (ANY if add is True else None)
        return Schema(
            "object",
            properties=props or None,
            additional=additional,
            preserve=bool(node.get("x-kubernetes-preserve-unknown-fields")),
            map_atomic=node.get("x-kubernetes-map-type") == "atomic",
            required=tuple(node.get("required") or ()),
            **common,
        )
    if t == "array":
        return Schema(
            "array",
            items=_from_openapi(node.get("items") or {}),
            list_type=node.get("x-kubernetes-list-type", "atomic"),
            keys=tuple(node.get("x-kubernetes-list-map-keys") or ()),
            **common,
        )
    if t in ("string", "integer", "number", "boolean"):
        return Schema(t, minimum=node.get("minimum"), maximum=node.get("maximum"), **common)
    return Schema("any", preserve=True, **common)


def _object_meta_schema() -> Schema:
    s = Schema("string")
    i = Schema("integer")
    owner = Schema(
        "object",
        properties={
            "apiVersion": s,
            "kind": s,
            "name": s,
            "uid": s,
            "controller": Schema("boolean"),
            "blockOwnerDeletion": Schema("boolean"),
        },
        required=("apiVersion", "kind", "name", "uid"),
    )
    return Schema(
        "object",
        properties={
            "name": s,
            "generateName": s,
            "namespace": s,
            "selfLink": s,
            "uid": s,
            "resourceVersion": s,
            "generation": i,
            "creationTimestamp": Schema("string", nullable=True),
            "deletionTimestamp": Schema("string", nullable=True),
            "deletionGracePeriodSeconds": i,
            "labels": Schema("object", additional=s),
            "annotations": Schema("object", additional=s),
            "ownerReferences": Schema("array", items=owner, list_type="map", keys=("uid",)),
            "finalizers": Schema("array", items=s, list_type="set"),
            "managedFields": Schema("array", items=ANY),
        },
    )


OBJECT_META = _object_meta_schema()

# Associative lists of the built-in kinds: (model class, json field) -> list-map keys, or () for a set.
_BUILTIN_LISTS: dict[tuple[str, str], tuple[str, ...]] = {
    ("V1PodSpec", "containers"): ("name",),
    ("V1PodSpec", "initContainers"): ("name",),
    ("V1PodSpec", "ephemeralContainers"): ("name",),
    ("V1PodSpec", "volumes"): ("name",),
    ("V1PodSpec", "imagePullSecrets"): ("name",),
    ("V1PodSpec", "hostAliases"): ("ip",),
    ("V1PodSpec", "topologySpreadConstraints"): ("topologyKey", "whenUnsatisfiable"),
    ("V1PodSpec", "schedulingGates"): ("name",),
    ("V1PodSpec", "resourceClaims"): ("name",),
    ("V1Container", "ports"): ("containerPort", "protocol"),
    ("V1Container", "env"): ("name",),
    ("V1Container", "volumeMounts"): ("mountPath",),
    ("V1Container", "volumeDevices"): ("devicePath",),
    ("V1ServiceSpec", "ports"): ("port", "protocol"),
    ("V1ServiceAccount", "secrets"): ("name",),
}
_QUANTITY_MAPS = {"limits", "requests", "overhead", "hard", "capacity", "allocatable"}
_model_cache: dict[str, Schema] = {}


def _from_model(model_name: str) -> Schema:
    """A structural schema for a built-in type, read from the official client's model class."""
    if model_name in _model_cache:
        return _model_cache[model_name]
    from kubernetes import client as k8s_client

    if model_name == "V1ObjectMeta":
        return OBJECT_META
    cls = getattr(k8s_client, model_name)
    schema = Schema("object", properties={})
    _model_cache[model_name] = schema  # before recursing: models can refer to themselves
    assert schema.properties is not None
    for attr, type_name in cls.openapi_types.items():
        json_name = cls.attribute_map[attr]
        schema.properties[json_name] = _type_schema(model_name, json_name, type_name)
    return schema


def _type_schema(owner: str, json_name: str, type_name: str) -> Schema:
    scalar = {
        "str": "string",
        "int": "integer",
        "float": "number",
        "bool": "boolean",
        "datetime": "string",
        "date": "string",
    }
    if type_name in scalar:
        return Schema(scalar[type_name], nullable=type_name == "datetime")
    if type_name == "object":
        return ANY
    m = re.fullmatch(r"list\[(.+)\]", type_name)
    if m:
        items = _type_schema(owner, json_name, m.group(1))
        keys = _BUILTIN_LISTS.get((owner, json_name))
        if keys is None:
            return Schema("array", items=items)
        return Schema("array", items=items, list_type="map" if keys else "set", keys=keys)
    m = re.fullmatch(r"dict\[str, (.+)\]|dict\(str, (.+)\)", type_name)
    if m:
        value_type = m.group(1) or m.group(2)
        if json_name in _QUANTITY_MAPS:
            return Schema("object", additional=Schema("int-or-string"))
        return Schema("object", additional=_type_schema(owner, json_name, value_type))
    return _from_model(type_name)


_crd_cache: dict[Path, dict[str, Any]] = {}


def _load_crd_schema(path: Path, version: str) -> dict[str, Any]:
    if path not in _crd_cache:
        if path.suffix == ".json":
            _crd_cache[path] = json.loads(path.read_text())
        else:
            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            crd = yaml.load(path.read_text(), Loader=loader)
            ver = next(v for v in crd["spec"]["versions"] if v["name"] == version)
            _crd_cache[path] = ver["schema"]["openAPIV3Schema"]
    return _crd_cache[path]


# --------------------------------------------------------------------------------------
# Resources
# --------------------------------------------------------------------------------------


@dataclass
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    singular: str = ""
    short_names: tuple[str, ...] = ()
    custom: bool = False  # a custom resource (CRD): unstructured, generation always tracked
    status_subresource: bool = True
    tracks_generation: bool = False
    schema_factory: Callable[[], Schema] | None = None
    _schema: Schema | None = None

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """`inferenceservices.serving.kserve.io` (the GroupResource string in messages)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def kind_qualified(self) -> str:
        """`InferenceService.serving.kserve.io` (the GroupKind string in 'is invalid' messages)."""
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def schema(self) -> Schema:
        if self._schema is None:
            self._schema = self.schema_factory() if self.schema_factory else Schema("any", preserve=True)
        return self._schema

    @property
    def storage_version_hash(self) -> str:
        digest = hashlib.sha256(f"{self.group}/{self.version}/{self.kind}".encode()).digest()
        return base64.b64encode(digest[:8]).decode()


def _crd_factory(path: Path, version: str) -> Callable[[], Schema]:
    def make() -> Schema:
        root = _from_openapi(_load_crd_schema(path, version))
        assert root.properties is not None
        root.properties["metadata"] = OBJECT_META
        root.properties.setdefault("apiVersion", Schema("string"))
        root.properties.setdefault("kind", Schema("string"))
        return root

    return make


def httproute_resource() -> Resource:
    """Gateway API's HTTPRoute, each object validated against the recorded CRD (tests/fixtures/gateway-api)."""
    crd = Path(__file__).resolve().parents[1] / "fixtures" / "gateway-api" / "httproutes.yaml"
    return Resource(
        "gateway.networking.k8s.io",
        "v1",
        "httproutes",
        "HTTPRoute",
        singular="httproute",
        custom=True,
        tracks_generation=True,
        schema_factory=_crd_factory(crd, "v1"),
    )


def _permissive_crd() -> Schema:
    return Schema(
        "object",
        properties={"apiVersion": Schema("string"), "kind": Schema("string"), "metadata": OBJECT_META},
        preserve=True,
    )


def _builtin(group: str, version: str, plural: str, kind: str, model: str, **kw: Any) -> Resource:
    return Resource(group, version, plural, kind, schema_factory=lambda: _from_model(model), **kw)


def builtin_resources() -> list[Resource]:
    return [
        _builtin(
            "",
            "v1",
            "namespaces",
            "Namespace",
            "V1Namespace",
            namespaced=False,
            singular="namespace",
            short_names=("ns",),
        ),
        _builtin(
            "",
            "v1",
            "serviceaccounts",
            "ServiceAccount",
            "V1ServiceAccount",
            singular="serviceaccount",
            short_names=("sa",),
            status_subresource=False,
        ),
        _builtin(
            "",
            "v1",
            "configmaps",
            "ConfigMap",
            "V1ConfigMap",
            singular="configmap",
            short_names=("cm",),
            status_subresource=False,
        ),
        _builtin("", "v1", "secrets", "Secret", "V1Secret", singular="secret", status_subresource=False),
        _builtin("", "v1", "services", "Service", "V1Service", singular="service", short_names=("svc",)),
        _builtin(
            "apps",
            "v1",
            "deployments",
            "Deployment",
            "V1Deployment",
            singular="deployment",
            short_names=("deploy",),
            tracks_generation=True,
        ),
        _builtin(
            "",
            "v1",
            "persistentvolumeclaims",
            "PersistentVolumeClaim",
            "V1PersistentVolumeClaim",
            singular="persistentvolumeclaim",
            short_names=("pvc",),
        ),
        _builtin(
            "networking.k8s.io",
            "v1",
            "networkpolicies",
            "NetworkPolicy",
            "V1NetworkPolicy",
            singular="networkpolicy",
            short_names=("netpol",),
            status_subresource=False,
        ),
        _builtin(
            "networking.k8s.io", "v1", "ingresses", "Ingress", "V1Ingress", singular="ingress", short_names=("ing",)
        ),
        _builtin(
            "policy",
            "v1",
            "poddisruptionbudgets",
            "PodDisruptionBudget",
            "V1PodDisruptionBudget",
            singular="poddisruptionbudget",
            short_names=("pdb",),
        ),
        _builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterroles",
            "ClusterRole",
            "V1ClusterRole",
            namespaced=False,
            singular="clusterrole",
            status_subresource=False,
        ),
        _builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterrolebindings",
            "ClusterRoleBinding",
            "V1ClusterRoleBinding",
            namespaced=False,
            singular="clusterrolebinding",
            status_subresource=False,
        ),
        _builtin(
            "rbac.authorization.k8s.io", "v1", "roles", "Role", "V1Role", singular="role", status_subresource=False
        ),
        _builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "rolebindings",
            "RoleBinding",
            "V1RoleBinding",
            singular="rolebinding",
            status_subresource=False,
        ),
        _builtin(
            "coordination.k8s.io",
            "v1",
            "leases",
            "Lease",
            "V1Lease",
            singular="lease",
            status_subresource=False,
        ),
        _builtin(
            "batch",
            "v1",
            "cronjobs",
            "CronJob",
            "V1CronJob",
            singular="cronjob",
            short_names=("cj",),
            tracks_generation=True,
        ),
    ]


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"fixture {path} is missing: tests/fixtures is part of the repository")
    return path


def kserve_resource(fixtures: Path = FIXTURES) -> Resource:
    """The KServe InferenceService CRD, with the real CRD's schema (a missing fixture file fails loudly)."""
    factory = _crd_factory(_require(fixtures / "kserve" / "inferenceservice-v1beta1.schema.json"), "v1beta1")
    return Resource(
        "serving.kserve.io",
        "v1beta1",
        "inferenceservices",
        "InferenceService",
        singular="inferenceservice",
        short_names=("isvc",),
        custom=True,
        tracks_generation=True,
        schema_factory=factory,
    )


def prometheus_operator_resources(fixtures: Path = FIXTURES) -> list[Resource]:
    out = []
    for plural, kind, short, file in (
        ("prometheusrules", "PrometheusRule", "promrule", "monitoring.coreos.com_prometheusrules.yaml"),
        ("servicemonitors", "ServiceMonitor", "smon", "monitoring.coreos.com_servicemonitors.yaml"),
    ):
        factory = _crd_factory(_require(fixtures / "prometheus-operator" / file), "v1")
        out.append(
            Resource(
                "monitoring.coreos.com",
                "v1",
                plural,
                kind,
                singular=kind.lower(),
                short_names=(short,),
                custom=True,
                tracks_generation=True,
                schema_factory=factory,
            )
        )
    return out


# --------------------------------------------------------------------------------------
# Errors and Status bodies
# --------------------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, code: int, body: Obj | str, headers: dict[str, str] | None = None) -> None:
        super().__init__(str(body))
        self.code = code
        self.body = body
        self.headers = headers or {}


def status_body(code: int, reason: str | None, message: str, details: Obj | None = None) -> Obj:
    body: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message}
    if reason:
        body["reason"] = reason
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


def _details(res: Resource, name: str | None = None, *, kind: str | None = None) -> Obj:
    d: Obj = {}
    if name:
        d["name"] = name
    if res.group:
        d["group"] = res.group
    d["kind"] = kind or res.plural
    return d


def not_found(res: Resource, name: str) -> ApiError:
    return ApiError(404, status_body(404, "NotFound", f'{res.qualified} "{name}" not found', _details(res, name)))


def namespace_not_found(ns: str) -> ApiError:
    return ApiError(
        404, status_body(404, "NotFound", f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"})
    )


def conflict_modified(res: Resource, name: str) -> ApiError:
    msg = (
        f'Operation cannot be fulfilled on {res.qualified} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )
    return ApiError(409, status_body(409, "Conflict", msg, _details(res, name)))


def bad_request(message: str) -> ApiError:
    return ApiError(400, status_body(400, "BadRequest", message))


def invalid(res: Resource, name: str, errors: list[tuple[str, str, str]]) -> ApiError:
    """422 Invalid; errors are (field, cause reason, message-after-field)."""
    parts = [f"{f}: {m}" for f, _, m in errors]
    joined = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    msg = f'{res.kind_qualified} "{name}" is invalid: {joined}'
    causes = [{"reason": r, "message": m, "field": f} for f, r, m in errors]
    details = _details(res, name, kind=res.kind)
    details["causes"] = causes
    return ApiError(422, status_body(422, "Invalid", msg, details))


PAGE_NOT_FOUND = ApiError(404, "404 page not found\n")


# --------------------------------------------------------------------------------------
# Field paths (the FieldsV1 vocabulary: f:<field>, k:<json key>, v:<json value>)
# --------------------------------------------------------------------------------------

Path_ = tuple[str, ...]


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when PyYAML has it


def _load_yaml(text: str) -> Any:
    """YAML as the API server reads it. JSON is YAML, and clients (client-go, kubectl, mlp) send
    apply patches as JSON: that is read by the JSON parser, the rest by libyaml."""
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except ValueError:
            pass
    return yaml.load(text, Loader=_YAML_LOADER)


def _jkey(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def path_string(path: Path_) -> str:
    """Path as structured-merge-diff prints it: `.spec.containers[name="a"].image`."""
    out = []
    for el in path:
        kind, rest = el[0], el[2:]
        if kind == "f":
            out.append("." + rest)
        elif kind == "k":
            key = json.loads(rest)
            out.append("[" + ",".join(f"{k}={json.dumps(v)}" for k, v in key.items()) + "]")
        elif kind == "v":
            out.append(f"[={rest}]")
        else:
            out.append(f"[{rest}]")
    return "".join(out)


def dotted(path: Path_) -> str:
    """Path as OpenAPI validation messages print it: `spec.predictor.minReplicas`."""
    out: list[str] = []
    for el in path:
        if el.startswith("f:"):
            out.append(("." if out else "") + el[2:])
        elif el.startswith("i:"):
            out.append(f"[{el[2:]}]")
        else:
            out.append("[" + el[2:] + "]")
    return "".join(out)


def fields_to_v1(paths: Iterable[Path_]) -> Obj:
    root: Obj = {}
    members = set(paths)
    for p in members:
        node = root
        for el in p:
            node = node.setdefault(el, {})
    for p in members:
        node = root
        for el in p:
            node = node[el]
        if node and "." not in node:
            node["."] = {}
    return root


def fields_from_v1(tree: Obj, prefix: Path_ = ()) -> set[Path_]:
    out: set[Path_] = set()
    for key, child in tree.items():
        if key == ".":
            out.add(prefix)
            continue
        p = (*prefix, key)
        if not child:
            out.add(p)
        else:
            out |= fields_from_v1(child, p)
    return out


# Key fields the server defaults before it keys an associative list item (a container port
# applied without `protocol` is the item `{"containerPort":80,"protocol":"TCP"}`).
KEY_DEFAULTS = {"protocol": "TCP"}


def list_key(item: Any, keys: Iterable[str]) -> Obj:
    if not isinstance(item, dict):
        return {}
    return {k: item.get(k, KEY_DEFAULTS.get(k)) for k in keys if k in item or k in KEY_DEFAULTS}


def _match_key(item: Any, key: Obj) -> bool:
    return isinstance(item, dict) and all(item.get(k, KEY_DEFAULTS.get(k)) == v for k, v in key.items())


def get_at(obj: Any, path: Path_) -> Any:
    cur = obj
    for el in path:
        kind, rest = el[0], el[2:]
        if kind == "f":
            if not isinstance(cur, dict) or rest not in cur:
                return _MISSING
            cur = cur[rest]
        elif kind == "k":
            key = json.loads(rest)
            if not isinstance(cur, list):
                return _MISSING
            cur = next((i for i in cur if _match_key(i, key)), _MISSING)
            if cur is _MISSING:
                return cur
        elif kind == "v":
            val = json.loads(rest)
            if not isinstance(cur, list) or val not in cur:
                return _MISSING
            cur = val
        else:
            idx = int(rest)
            if not isinstance(cur, list) or idx >= len(cur):
                return _MISSING
            cur = cur[idx]
    return cur


def remove_at(obj: Any, path: Path_) -> None:
    parent = get_at(obj, path[:-1])
    el = path[-1]
    kind, rest = el[0], el[2:]
    if kind == "f" and isinstance(parent, dict):
        parent.pop(rest, None)
    elif kind == "k" and isinstance(parent, list):
        key = json.loads(rest)
        parent[:] = [i for i in parent if not _match_key(i, key)]
    elif kind == "v" and isinstance(parent, list):
        val = json.loads(rest)
        parent[:] = [i for i in parent if i != val]


def _go_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int | float):
        return "float64" if isinstance(value, float) else "int64"
    if isinstance(value, dict):
        return "map[string]interface {}"
    if isinstance(value, list):
        return "[]interface {}"
    return "<nil>"


def _go_unstructured(value: Any) -> str:
    shown = json.dumps(value) if isinstance(value, str) else ("<nil>" if value is None else value)
    return f"&value.valueUnstructured{{Value:{shown}}}"


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "null"


class TypeWalk:
    """Walks a value against a schema like structured-merge-diff's typed conversion.

    Collects the apply field set (leaves, associative-list items and set members), the
    conversion errors (unknown field, wrong type) and, for non-apply writes, the unknown
    fields so they can be pruned.
    """

    def __init__(self) -> None:
        self.fields: set[Path_] = set()
        self.errors: list[str] = []
        self.unknown: list[Path_] = []
        self.type_errors: list[tuple[Path_, str, Any]] = []  # (path, expected type, value)

    def walk(self, value: Any, schema: Schema, path: Path_ = ()) -> None:
        if value is None:
            self.fields.add(path)
            return
        if schema.untyped:
            if isinstance(value, dict) and value:
                for k, v in value.items():
                    self.walk(v, ANY, (*path, "f:" + k))
            else:
                self.fields.add(path)
            return
        t = schema.type
        if t == "object":
            if not isinstance(value, dict):
                self.errors.append(f"{path_string(path)}: expected map, got {_go_unstructured(value)}")
                self.type_errors.append((path, "object", value))
                return
            if schema.map_atomic or not value:
                self.fields.add(path)
                inner = TypeWalk()
                for k, v in value.items():
                    inner._walk_child(v, schema, (*path, "f:" + k), k)
                self._absorb_errors(inner)
                return
            for k, v in value.items():
                self._walk_child(v, schema, (*path, "f:" + k), k)
            return
        if t == "array":
            if not isinstance(value, list):
                self.errors.append(f"{path_string(path)}: expected list, got {_go_unstructured(value)}")
                self.type_errors.append((path, "array", value))
                return
            items = schema.items or ANY
            if schema.list_type == "set":
                seen: list[Any] = []
                for item in value:
                    if item in seen:
                        self.errors.append(f"{path_string(path)}: duplicate entries for key [={json.dumps(item)}]")
                    seen.append(item)
                    self.fields.add((*path, "v:" + _jkey(item)))
                return
            if schema.list_type == "map":
                seen_keys: list[str] = []
                for item in value:
                    if not isinstance(item, dict):
                        self.errors.append(f"{path_string(path)}: expected map, got {_go_unstructured(item)}")
                        continue
                    key = list_key(item, schema.keys)
                    ek = _jkey(key)
                    if ek in seen_keys:
                        self.errors.append(f"{path_string(path)}: duplicate entries for key {ek}")
                    seen_keys.append(ek)
                    kp = (*path, "k:" + ek)
                    self.fields.add(kp)
                    self.walk(item, items, kp)
                return
            self.fields.add(path)
            inner = TypeWalk()
            for i, item in enumerate(value):
                inner.walk(item, items, (*path, f"i:{i}"))
            self._absorb_errors(inner)
            return
        self.fields.add(path)
        ok = {
            "string": isinstance(value, str),
            "integer": isinstance(value, int | float) and not isinstance(value, bool),
            "number": isinstance(value, int | float) and not isinstance(value, bool),
            "boolean": isinstance(value, bool),
            "int-or-string": isinstance(value, str | int) and not isinstance(value, bool),
        }[t]
        if ok and t == "integer" and isinstance(value, float) and not value.is_integer():
            self.type_errors.append((path, "integer", value))
        if not ok:
            if t in ("integer", "number"):
                self.errors.append(f"{path_string(path)}: expected numeric (int or float), got {_go_type(value)}")
            elif t == "boolean":  # structured-merge-diff formats this one with %v, the others with %#v
                shown = json.dumps(value) if not isinstance(value, str) else value
                self.errors.append(f"{path_string(path)}: expected boolean, got &{{{shown}}}")
            else:
                expected = {"int-or-string": "string or int"}.get(t, t)
                self.errors.append(f"{path_string(path)}: expected {expected}, got {_go_unstructured(value)}")
            self.type_errors.append((path, t, value))

    def _walk_child(self, value: Any, schema: Schema, path: Path_, key: str) -> None:
        child = (schema.properties or {}).get(key)
        if child is None:
            child = schema.additional
        if child is None:
            if schema.preserve:
                child = ANY
            else:
                self.errors.append(f"{path_string(path)}: field not declared in schema")
                self.unknown.append(path)
                return
        self.walk(value, child, path)

    def _absorb_errors(self, other: TypeWalk) -> None:
        self.errors += other.errors
        self.unknown += other.unknown
        self.type_errors += other.type_errors


# Metadata fields that are identity or system-owned: never part of a manager's field set.
_STRIPPED = [("f:apiVersion",), ("f:kind",)] + [
    ("f:metadata", "f:" + f)
    for f in (
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
        "managedFields",
        "generateName",
    )
]


def _strip_paths(fields: set[Path_], res: Resource) -> set[Path_]:
    prefixes = list(_STRIPPED) + ([("f:status",)] if res.status_subresource else [])
    return {p for p in fields if p and not any(p[: len(pre)] == pre for pre in prefixes) and p != ("f:metadata",)}


# --------------------------------------------------------------------------------------
# Merging, defaulting, validation
# --------------------------------------------------------------------------------------


def merge_apply(live: Any, config: Any, schema: Schema) -> Any:
    """Merge an applied configuration into the live value, schema-aware."""
    if live is _MISSING or live is None or config is None:
        return copy.deepcopy(config)
    if schema.untyped:
        if isinstance(live, dict) and isinstance(config, dict):
            out = dict(live)
            for k, v in config.items():
                out[k] = merge_apply(live.get(k, _MISSING), v, ANY)
            return out
        return copy.deepcopy(config)
    if schema.type == "object" and isinstance(live, dict) and isinstance(config, dict) and not schema.map_atomic:
        out = dict(live)
        for k, v in config.items():
            child = (schema.properties or {}).get(k) or schema.additional or ANY
            out[k] = merge_apply(live.get(k, _MISSING), v, child)
        return out
    if (
        schema.type == "array"
        and isinstance(live, list)
        and isinstance(config, list)
        and schema.list_type in ("set", "map")
    ):
        items = schema.items or ANY

        def key_of(item: Any) -> str:
            if schema.list_type == "set":
                return _jkey(item)
            return _jkey(list_key(item, schema.keys))

        lhs = {key_of(i): i for i in live}
        rhs = {key_of(i): i for i in config}
        merged: list[Any] = []
        for k, in_lhs, in_rhs in interleave(list(lhs), list(rhs)):
            if in_lhs and in_rhs:
                merged.append(merge_apply(lhs[k], rhs[k], items))
            else:
                merged.append(copy.deepcopy(lhs[k] if in_lhs else rhs[k]))
        return merged
    return copy.deepcopy(config)


def interleave(lhs: list[str], rhs: list[str]) -> list[tuple[str, bool, bool]]:
    """The order structured-merge-diff gives a merged associative list: live items keep their
    places, applied items come in their applied order, items in both are merged where the
    applied order reaches them. Returns (key, in live, in applied) in output order."""
    in_l, in_r = set(lhs), set(rhs)
    shared = [k for k in rhs if k in in_l]
    next_shared = shared.pop(0) if shared else None
    out: list[tuple[str, bool, bool]] = []
    li = ri = 0
    while li < len(lhs) or ri < len(rhs):
        if li < len(lhs) and ri < len(rhs):
            k = lhs[li]
            if k == rhs[ri]:
                out.append((k, True, True))
                li += 1
                ri += 1
                next_shared = shared.pop(0) if shared else None
                continue
            if k in in_r and next_shared is not None and next_shared != k:
                li += 1  # a shared item, but not the one due now: it comes with the applied order
                continue
        if li < len(lhs) and lhs[li] not in in_r:
            out.append((lhs[li], True, False))
            li += 1
            continue
        if ri < len(rhs):
            k = rhs[ri]
            out.append((k, k in in_l, True))
            ri += 1
            if next_shared is not None and next_shared == k:
                next_shared = shared.pop(0) if shared else None
            continue
        li += 1  # a live item already emitted with the applied order
    return out


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def apply_schema_defaults(value: Any, schema: Schema) -> None:
    """Structural-schema defaulting: fill missing properties that declare a default."""
    if schema.untyped or value is None:
        return
    if schema.type == "object" and isinstance(value, dict):
        for name, child in (schema.properties or {}).items():
            if name == "metadata" and child is OBJECT_META:
                continue
            if name not in value and child.default is not _MISSING:
                value[name] = copy.deepcopy(child.default)
            if name in value:
                apply_schema_defaults(value[name], child)
        if schema.additional is not None and not schema.properties:
            for v in value.values():
                apply_schema_defaults(v, schema.additional)
    elif schema.type == "array" and isinstance(value, list) and schema.items is not None:
        for item in value:
            apply_schema_defaults(item, schema.items)


def _default_pod_spec(spec: Obj) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        if not isinstance(c, dict):
            continue
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
        image = str(c.get("image", ""))
        tag = image.rsplit("/", 1)[-1]
        c.setdefault("imagePullPolicy", "Always" if ":" not in tag or tag.endswith(":latest") else "IfNotPresent")
        c.setdefault("resources", {})
        for p in c.get("ports") or []:
            if isinstance(p, dict):
                p.setdefault("protocol", "TCP")


def _default_template(template: Obj) -> None:
    meta = template.setdefault("metadata", {})
    meta.setdefault("creationTimestamp", None)
    _default_pod_spec(template.setdefault("spec", {}))


def builtin_defaults(res: Resource, obj: Obj, ip_alloc: Callable[[], str]) -> None:
    """The defaults a real API server adds to the built-in kinds mlp writes (a subset)."""
    kind = res.kind
    if kind == "Namespace":
        labels = obj.setdefault("metadata", {}).setdefault("labels", {})
        labels.setdefault("kubernetes.io/metadata.name", obj["metadata"]["name"])
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj.setdefault("status", {}).setdefault("phase", "Active")
    elif kind == "Deployment":
        spec = obj.setdefault("spec", {})
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        strategy = spec.setdefault("strategy", {})
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            ru = strategy.setdefault("rollingUpdate", {})
            ru.setdefault("maxSurge", "25%")
            ru.setdefault("maxUnavailable", "25%")
        _default_template(spec.setdefault("template", {}))
    elif kind == "CronJob":
        spec = obj.setdefault("spec", {})
        spec.setdefault("concurrencyPolicy", "Allow")
        spec.setdefault("suspend", False)
        spec.setdefault("successfulJobsHistoryLimit", 3)
        spec.setdefault("failedJobsHistoryLimit", 1)
        jt = spec.setdefault("jobTemplate", {})
        jt.setdefault("metadata", {}).setdefault("creationTimestamp", None)
        _default_template(jt.setdefault("spec", {}).setdefault("template", {}))
    elif kind == "Service":
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        if spec["type"] != "ExternalName":
            ip = spec.get("clusterIP") or ip_alloc()
            spec.setdefault("clusterIP", ip)
            spec.setdefault("clusterIPs", [spec["clusterIP"]])
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
            spec.setdefault("internalTrafficPolicy", "Cluster")
        for p in spec.get("ports") or []:
            if isinstance(p, dict):
                p.setdefault("protocol", "TCP")
                p.setdefault("targetPort", p.get("port"))
        obj.setdefault("status", {}).setdefault("loadBalancer", {})


_DNS1123_SUB = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_SUB_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_LABEL_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or "
    "'12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)


def validate_object(res: Resource, obj: Obj) -> list[tuple[str, str, str]]:
    """Validation after decoding: metadata rules and the OpenAPI value constraints we model."""
    errors: list[tuple[str, str, str]] = []
    meta = obj.get("metadata") or {}
    name = meta.get("name", "")
    pattern = _DNS1123_LABEL if res.kind in ("Namespace", "Service") else _DNS1123_SUB
    if not pattern.fullmatch(name) or len(name) > (63 if pattern is _DNS1123_LABEL else 253):
        errors.append(("metadata.name", "FieldValueInvalid", f'Invalid value: "{name}": {_SUB_MSG}'))
    for k, v in (meta.get("labels") or {}).items():
        prefix, _, lname = k.rpartition("/")
        if (prefix and not _DNS1123_SUB.fullmatch(prefix)) or not _LABEL_NAME.fullmatch(lname) or len(lname) > 63:
            errors.append(
                (
                    "metadata.labels",
                    "FieldValueInvalid",
                    f'Invalid value: "{k}": name part must '
                    "consist of alphanumeric characters, '-', '_' or '.', and must start and end with "
                    "an alphanumeric character",
                )
            )
        if not isinstance(v, str) or not _LABEL_VALUE.fullmatch(v) or len(v) > 63:
            shown = v if isinstance(v, str) else json.dumps(v)
            detail = "must be no more than 63 characters" if isinstance(v, str) and len(v) > 63 else _LABEL_MSG
            errors.append(("metadata.labels", "FieldValueInvalid", f'Invalid value: "{shown}": {detail}'))
    _validate_values(obj, res.schema, (), errors, top=True)
    if not res.custom:
        errors += _builtin_validation(res.kind, obj)
    return errors


def _go_map(d: dict[str, Any]) -> str:
    return "map[string]string{" + ", ".join(f'"{k}":"{v}"' for k, v in sorted(d.items())) + "}"


def _pod_spec_errors(spec: Obj, where: str) -> list[tuple[str, str, str]]:
    errors: list[tuple[str, str, str]] = []
    containers = spec.get("containers") or []
    if not containers:
        errors.append((f"{where}.containers", "FieldValueRequired", "Required value"))
    for i, c in enumerate(containers):
        if not isinstance(c, dict):
            continue
        if not c.get("name"):
            errors.append((f"{where}.containers[{i}].name", "FieldValueRequired", "Required value"))
        if not c.get("image"):
            errors.append((f"{where}.containers[{i}].image", "FieldValueRequired", "Required value"))
    return errors


def _builtin_validation(kind: str, obj: Obj) -> list[tuple[str, str, str]]:
    """The built-in kinds' own validation rules a renderer can break (a subset of the real ones)."""
    errors: list[tuple[str, str, str]] = []
    spec = obj.get("spec") or {}
    if kind == "Deployment":
        selector = (spec.get("selector") or {}).get("matchLabels")
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        if not spec.get("selector"):
            errors.append(("spec.selector", "FieldValueRequired", "Required value"))
        elif selector and any(labels.get(k) != v for k, v in selector.items()):
            errors.append(
                (
                    "spec.template.metadata.labels",
                    "FieldValueInvalid",
                    f"Invalid value: {_go_map(labels)}: `selector` does not match template `labels`",
                )
            )
        errors += _pod_spec_errors((spec.get("template") or {}).get("spec") or {}, "spec.template.spec")
    elif kind == "CronJob":
        if not spec.get("schedule"):
            errors.append(("spec.schedule", "FieldValueRequired", "Required value"))
        where = "spec.jobTemplate.spec.template.spec"
        pod = (((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
        errors += _pod_spec_errors(pod, where)
        policy = pod.get("restartPolicy")
        if policy not in ("OnFailure", "Never"):
            errors.append(
                (
                    f"{where}.restartPolicy",
                    "FieldValueNotSupported",
                    f'Unsupported value: "{policy}": supported values: "OnFailure", "Never"',
                )
            )
    elif kind == "Service":
        for i, port in enumerate(spec.get("ports") or []):
            if isinstance(port, dict) and not port.get("port"):
                errors.append((f"spec.ports[{i}].port", "FieldValueRequired", "Required value"))
    elif kind in ("ConfigMap", "Secret"):
        for key in list(obj.get("data") or {}) + list(obj.get("binaryData") or {}):
            if not re.fullmatch(r"[-._a-zA-Z0-9]+", key) or len(key) > 253:
                errors.append(
                    (
                        f"data[{key}]",
                        "FieldValueInvalid",
                        f'Invalid value: "{key}": a valid config '
                        "key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  "
                        "or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                    )
                )
    return errors


def _validate_values(
    value: Any, schema: Schema, path: Path_, errors: list[tuple[str, str, str]], top: bool = False
) -> None:
    if schema.untyped or value is None:
        return
    where = dotted(path)
    if schema.enum is not None and value not in schema.enum:
        allowed = ", ".join(json.dumps(e) for e in schema.enum)
        errors.append(
            (where, "FieldValueNotSupported", f"Unsupported value: {json.dumps(value)}: supported values: {allowed}")
        )
    if schema.type in ("integer", "number") and isinstance(value, int | float) and not isinstance(value, bool):
        if schema.minimum is not None and value < schema.minimum:
            errors.append(
                (
                    where,
                    "FieldValueInvalid",
                    f"Invalid value: {value}: {where} in body should be greater than or equal to {schema.minimum:g}",
                )
            )
        if schema.maximum is not None and value > schema.maximum:
            errors.append(
                (
                    where,
                    "FieldValueInvalid",
                    f"Invalid value: {value}: {where} in body should be less than or equal to {schema.maximum:g}",
                )
            )
    if isinstance(value, str):
        if schema.pattern is not None and not re.search(schema.pattern, value):
            errors.append(
                (
                    where,
                    "FieldValueInvalid",
                    f"Invalid value: {json.dumps(value)}: {where} in body should match '{schema.pattern}'",
                )
            )
        if schema.min_length is not None and len(value) < schema.min_length:
            errors.append(
                (
                    where,
                    "FieldValueInvalid",
                    f"Invalid value: {json.dumps(value)}: {where} in body "
                    f"should be at least {schema.min_length} chars long",
                )
            )
        if schema.max_length is not None and len(value) > schema.max_length:
            errors.append((where, "FieldValueTooLong", f"Too long: may not be more than {schema.max_length} bytes"))
    if isinstance(value, list):
        if schema.min_items is not None and len(value) < schema.min_items:
            errors.append(
                (
                    where,
                    "FieldValueInvalid",
                    f"Invalid value: {len(value)}: {where} in body should have at least {schema.min_items} items",
                )
            )
        if schema.max_items is not None and len(value) > schema.max_items:
            errors.append(
                (where, "FieldValueTooMany", f"Too many: {len(value)}: must have at most {schema.max_items} items")
            )
    if schema.type == "object" and isinstance(value, dict):
        for req in schema.required:
            if req not in value:
                errors.append((dotted((*path, "f:" + req)), "FieldValueRequired", "Required value"))
        for k, v in value.items():
            if top and k == "metadata":
                continue
            child = (schema.properties or {}).get(k) or schema.additional
            if child is not None:
                _validate_values(v, child, (*path, "f:" + k), errors)
    if schema.type == "array" and isinstance(value, list) and schema.items is not None:
        for i, item in enumerate(value):
            _validate_values(item, schema.items, (*path, f"i:{i}"), errors)


# --------------------------------------------------------------------------------------
# Label and field selectors
# --------------------------------------------------------------------------------------

_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_VAL = r"[-A-Za-z0-9_.]*"


def _split_selector(s: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in s:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def _requirement_holds(labels: dict[str, str], key: str, op: str, values: frozenset[str]) -> bool:
    if op == "=":
        return labels.get(key) in values
    if op == "!=":
        return labels.get(key) not in values  # also true when the label is absent
    if op == "in":
        return labels.get(key) in values
    if op == "notin":
        return labels.get(key) not in values
    if op == "exists":
        return key in labels
    return key not in labels  # "!key"


def parse_label_selector(s: str) -> Callable[[dict[str, str]], bool]:
    reqs: list[tuple[str, str, frozenset[str]]] = []
    for term in _split_selector(s):
        if m := re.fullmatch(rf"({_KEY})\s*(==|=|!=)\s*({_VAL})", term):
            k, op, v = m.groups()
            reqs.append((k, "!=" if op == "!=" else "=", frozenset([v])))
        elif m := re.fullmatch(rf"({_KEY})\s+(in|notin)\s*\(([^)]*)\)", term):
            k, op, vs = m.groups()
            values = frozenset(x.strip() for x in vs.split(",") if x.strip())
            if not values:
                raise ValueError(
                    f"unable to parse requirement: for 'in', 'notin' operators, values set can't be empty: {term}"
                )
            reqs.append((k, op, values))
        elif m := re.fullmatch(rf"!\s*({_KEY})", term):
            reqs.append((m.group(1), "!", frozenset()))
        elif m := re.fullmatch(rf"({_KEY})", term):
            reqs.append((m.group(1), "exists", frozenset()))
        else:
            raise ValueError(
                f'unable to parse requirement: <nil>: Invalid value: "{term}": found unexpected token in label selector'
            )

    def match(labels: dict[str, str]) -> bool:
        return all(_requirement_holds(labels, k, op, vs) for k, op, vs in reqs)

    return match


def parse_field_selector(s: str) -> Callable[[Obj], bool]:
    reqs: list[tuple[str, bool, str]] = []  # (metadata key, equal?, value)
    for term in _split_selector(s):
        m = re.fullmatch(r"([A-Za-z.]+)\s*(==|=|!=)\s*(.*)", term)
        if not m:
            raise ValueError(f"invalid selector: '{term}'; can't understand '{term}'")
        f, op, v = m.groups()
        if f not in ("metadata.name", "metadata.namespace"):
            raise ValueError(f"field label not supported: {f}")
        reqs.append((f.split(".")[1], op != "!=", v))

    def match(obj: Obj) -> bool:
        meta = obj.get("metadata") or {}
        return all((meta.get(k, "") == v) == equal for k, equal, v in reqs)

    return match


# --------------------------------------------------------------------------------------
# The server state
# --------------------------------------------------------------------------------------


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sorted(obj: Any) -> Any:
    """Custom resources are unstructured: the real server writes their keys sorted."""
    if isinstance(obj, dict):
        return {k: _sorted(obj[k]) for k in sorted(obj)}
    if isinstance(obj, list):
        return [_sorted(i) for i in obj]
    return obj


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    user: str = ""


@dataclass
class Fault:
    status: int
    body: Obj | str | None
    headers: dict[str, str]
    remaining: int
    methods: tuple[str, ...] | None
    path_contains: str | None


@dataclass
class Grant:
    verbs: frozenset[str]
    group: str
    resources: frozenset[str]
    namespace: str | None


_ALL_VERBS = frozenset({"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"})


@dataclass
class Store:
    """Objects by key, with per-key history so a paginated list reads one consistent snapshot."""

    revision: int = 0
    current: dict[tuple[str, str, str, str], Obj] = field(default_factory=dict)
    history: dict[tuple[str, str, str, str], list[tuple[int, Obj | None]]] = field(default_factory=dict)
    events: list[tuple[int, str, tuple[str, str, str, str], Obj]] = field(default_factory=list)

    def snapshot(self, group: str, plural: str, rv: int) -> dict[tuple[str, str, str, str], Obj]:
        out = {}
        for key, hist in self.history.items():
            if key[0] != group or key[1] != plural:
                continue
            state: Obj | None = None
            for r, o in hist:
                if r > rv:
                    break
                state = o
            if state is not None:
                out[key] = state
        return out


class _Listener(ThreadingHTTPServer):
    """A listen backlog as deep as the kernel allows, as the API server's (Go's net.Listen uses
    somaxconn). socketserver's default of 5 drops the SYNs of a client that opens many connections
    at once (a concurrent apply), which then waits a second to retransmit each."""

    request_queue_size = socket.SOMAXCONN


class KubeApiServer:
    """The stand-in. `with KubeApiServer() as api:` starts it on a free port of 127.0.0.1."""

    def __init__(
        self,
        *,
        token: str = ADMIN_TOKEN,
        namespaces: Iterable[str] = ("default", "kube-system", "ml-staging"),
        kserve: bool = True,
        prometheus_operator: bool = False,
        fixtures: Path = FIXTURES,
        initial_resource_version: int = 100,
        auto_gc: bool = False,
        tls: tuple[Path, Path] | None = None,
        kserve_traffic: bool = False,
        priority_and_fairness: bool = True,
    ) -> None:
        self.fixtures = fixtures
        # A real API server (1.20+) runs API Priority and Fairness and names, on every response,
        # the FlowSchema and priority level the request was classified into.
        self.priority_and_fairness = priority_and_fairness
        self.apf_uids = (str(uuid.uuid4()), str(uuid.uuid4()))
        # Answer for KServe's controller in Serverless mode: status.components.predictor.traffic
        # follows each InferenceService's canaryTrafficPercent (see `_kserve_traffic`).
        self.kserve_traffic = kserve_traffic
        self._revisions: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self.schemas_available = (fixtures / "kserve" / "inferenceservice-v1beta1.schema.json").is_file()
        self.tokens: dict[str, str] = {token: ADMIN_USER}
        self.admin_token = token
        self.grants: dict[str, list[Grant]] = {}
        self.resources: list[Resource] = builtin_resources()
        self.store = Store(revision=initial_resource_version)
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.auto_gc = auto_gc
        self.tls = tls  # (certificate, key) files: serve HTTPS like a real API server
        self.compacted = 0
        self.discovery_lag: dict[str, int] = {}
        self.deprecations: dict[
            tuple[str, str], str
        ] = {}  # (apiVersion, kind) -> Warning text  # group/version -> discovery requests still answered 404
        self.faults: list[Fault] = []
        self.webhook_rejections: list[tuple[str, str, str]] = []  # (kind, webhook name, message)
        self.requests: list[Request] = []
        self._ip = 10
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        if kserve:
            self.install(kserve_resource(fixtures))
        if prometheus_operator:
            for r in prometheus_operator_resources(fixtures):
                self.install(r)
        for ns in namespaces:
            self.create_namespace(ns)

    # ---- lifecycle ----

    def start(self) -> KubeApiServer:
        handler = type("Handler", (_Handler,), {"api": self})
        self._httpd = _Listener(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        if self.tls is not None:
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="kube-apiserver-standin", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            with self.changed:
                self.changed.notify_all()
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> KubeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "start() the stand-in first"
        host, port = self._httpd.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host!s}:{port}"

    # ---- configuration helpers for tests ----

    def install(self, res: Resource) -> None:
        with self.lock:
            self.resources = [r for r in self.resources if (r.group, r.plural) != (res.group, res.plural)]
            self.resources.append(res)

    def install_prometheus_operator(self) -> None:
        for r in prometheus_operator_resources(self.fixtures):
            self.install(r)

    def uninstall(self, group: str, plural: str) -> None:
        with self.lock:
            self.resources = [r for r in self.resources if (r.group, r.plural) != (group, plural)]
            for key in [k for k in self.store.current if k[:2] == (group, plural)]:
                del self.store.current[key]

    def add_user(self, token: str, user: str) -> None:
        self.tokens[token] = user

    def grant(
        self, user: str, verbs: Iterable[str], group: str, resources: Iterable[str], namespace: str | None = None
    ) -> None:
        self.grants.setdefault(user, []).append(Grant(frozenset(verbs), group, frozenset(resources), namespace))

    def inject_fault(
        self,
        status: int,
        body: Obj | str | None = None,
        *,
        headers: dict[str, str] | None = None,
        times: int = 1,
        methods: Iterable[str] | None = None,
        path_contains: str | None = None,
    ) -> None:
        """The next `times` matching requests get this answer instead of being served."""
        if body is None:
            reason = {429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}.get(
                status, "InternalError"
            )
            message = {429: "Too many requests, please try again later."}.get(
                status, "Internal error occurred: the server is unable to serve the request right now"
            )
            body = status_body(status, reason, message)
        self.faults.append(
            Fault(
                status,
                body,
                headers or {},
                times,
                tuple(m.upper() for m in methods) if methods else None,
                path_contains,
            )
        )

    def reject_with_webhook(self, kind: str, webhook: str, message: str) -> None:
        """Act as if a validating admission webhook denies writes of `kind`."""
        self.webhook_rejections.append((kind, webhook, message))

    def deprecate(self, api_version: str, kind: str, message: str) -> None:
        """Answer every request for this kind with `Warning: 299 - "message"`, as a real server
        does for a deprecated API version."""
        self.deprecations[(api_version, kind)] = message

    def lag_discovery(self, group_version: str, requests: int = 1) -> None:
        """The race the recording's README describes: right after a CRD is installed its resources
        are served while `GET /apis/<group>/<version>` still answers `404 page not found`."""
        self.discovery_lag[group_version] = requests

    def compact(self) -> None:
        """Like etcd compaction at the current revision: continue tokens from older revisions expire (410)."""
        with self.lock:
            self.compacted = self.store.revision

    def advance_resource_version(self, n: int) -> None:
        """Stand for writes the test did not make (e.g. installing a CRD on a real server)."""
        with self.lock:
            self.store.revision += n

    def get_object(self, group: str, plural: str, namespace: str, name: str) -> Obj | None:
        with self.lock:
            obj = self.store.current.get((group, plural, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def objects(self, group: str, plural: str) -> list[Obj]:
        with self.lock:
            return [copy.deepcopy(o) for k, o in sorted(self.store.current.items()) if k[:2] == (group, plural)]

    def create_namespace(self, name: str) -> None:
        res = self.resource("", "v1", "namespaces")
        assert res is not None
        with self.lock:
            obj: Obj = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
            self._create(res, "", obj, manager="kubectl-create", dry_run=False, apply_fields=None)

    def resource(self, group: str, version: str, plural: str) -> Resource | None:
        return next((r for r in self.resources if (r.group, r.version, r.plural) == (group, version, plural)), None)

    # ---- garbage collection ----

    def collect_garbage(self) -> int:
        """Play kube-controller-manager's garbage collector and namespace controller once, to a
        fixed point; returns how many objects were removed."""
        removed = 0
        with self.lock:
            progress = True
            while progress:
                progress = False
                for key in sorted(self.store.current):
                    if key not in self.store.current:
                        continue
                    before = len(self.store.current)
                    progress |= self._collect_one(key)
                    removed += max(0, before - len(self.store.current))
        return removed

    def _collect_one(self, key: tuple[str, str, str, str]) -> bool:
        obj = self.store.current[key]
        meta = obj["metadata"]
        uids = {o["metadata"]["uid"] for o in self.store.current.values()}
        owners = [r.get("uid") for r in meta.get("ownerReferences") or []]
        if owners and not any(u in uids for u in owners) and not meta.get("deletionTimestamp"):
            self._begin_delete(key, "Background")  # every owner is gone: background cascade
            return True
        if not meta.get("deletionTimestamp"):
            return False
        dependents = [
            k
            for k, o in self.store.current.items()
            if any(r.get("uid") == meta["uid"] for r in o["metadata"].get("ownerReferences") or [])
        ]
        fins = list(meta.get("finalizers") or [])
        if "foregroundDeletion" in fins:
            pending = [k for k in dependents if not self.store.current[k]["metadata"].get("deletionTimestamp")]
            for dep in pending:
                self._begin_delete(dep, "Foreground")
            if not dependents:
                self._remove_finalizer(key, "foregroundDeletion")
                return True
            return bool(pending)
        if "orphan" in fins:
            for dep in dependents:
                d = copy.deepcopy(self.store.current[dep])
                d["metadata"]["ownerReferences"] = [
                    r for r in d["metadata"]["ownerReferences"] if r.get("uid") != meta["uid"]
                ]
                if not d["metadata"]["ownerReferences"]:
                    del d["metadata"]["ownerReferences"]
                self._write(dep, d)
            self._remove_finalizer(key, "orphan")
            return True
        if key[:2] == ("", "namespaces"):
            # the namespace controller: delete the contents, then drop the `kubernetes` finalizer
            contents = [k for k in self.store.current if k[2] == key[3] and k[:2] != key[:2]]
            acted = False
            for k in contents:
                if not self.store.current[k]["metadata"].get("deletionTimestamp"):
                    self._begin_delete(k, "Background")
                    acted = True
            if contents or fins:
                return acted
            ns = copy.deepcopy(obj)
            ns.setdefault("spec", {})["finalizers"] = []
            self.store.current[key] = ns
            self._delete_key(key)
            return True
        return False

    # ---- storage primitives (callers hold the lock) ----

    def _next_rv(self) -> int:
        self.store.revision += 1
        return self.store.revision

    def _write(self, key: tuple[str, str, str, str], obj: Obj, event: str = "MODIFIED") -> Obj:
        if self.kserve_traffic and key[:2] == ("serving.kserve.io", "inferenceservices"):
            self._kserve_traffic(key, obj)
        rv = self._next_rv()
        obj["metadata"]["resourceVersion"] = str(rv)
        stored = copy.deepcopy(obj)
        self.store.current[key] = stored
        self.store.history.setdefault(key, []).append((rv, stored))
        self.store.events.append((rv, event, key, stored))
        self.changed.notify_all()
        return copy.deepcopy(stored)

    def _kserve_traffic(self, key: tuple[str, str, str, str], obj: Obj) -> None:
        """What KServe's controller reports for a Serverless InferenceService, as its docs describe:
        each change of the predictor (other than canaryTrafficPercent) is a new Knative revision;
        the first revision and a revision without canaryTrafficPercent get 100% (and become the
        rolled-out one); otherwise the latest gets canaryTrafficPercent and the last rolled-out
        revision the rest. Raw deployments (the deploymentMode annotation) report no traffic."""
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        if annotations.get("serving.kserve.io/deploymentMode") in ("Standard", "RawDeployment"):
            return
        predictor = dict((obj.get("spec") or {}).get("predictor") or {})
        percent = predictor.pop("canaryTrafficPercent", None)
        state = self._revisions.setdefault(key, {"count": 0, "template": None, "rolled": None})
        if predictor != state["template"]:
            state["count"] += 1
            state["template"] = copy.deepcopy(predictor)
        latest = f"{key[3]}-predictor-{state['count']:05d}"
        rolled = state["rolled"]
        if rolled is None or percent is None or rolled == latest:
            state["rolled"] = latest
            traffic = [{"revisionName": latest, "tag": "latest", "latestRevision": True, "percent": 100}]
        else:
            traffic = [
                {"revisionName": latest, "tag": "latest", "latestRevision": True, "percent": int(percent)},
                {"revisionName": rolled, "tag": "prev", "latestRevision": False, "percent": 100 - int(percent)},
            ]
        status = obj.setdefault("status", {})
        status["components"] = {
            "predictor": {
                "latestCreatedRevision": latest,
                "latestReadyRevision": latest,
                "latestRolledoutRevision": state["rolled"],
                "traffic": traffic,
            }
        }
        status["conditions"] = [{"type": "Ready", "status": "True"}, {"type": "PredictorReady", "status": "True"}]

    def _delete_key(self, key: tuple[str, str, str, str]) -> Obj:
        obj = copy.deepcopy(self.store.current.pop(key))
        rv = self._next_rv()
        gone = copy.deepcopy(obj)
        gone["metadata"]["resourceVersion"] = str(rv)
        self.store.history.setdefault(key, []).append((rv, None))
        self.store.events.append((rv, "DELETED", key, gone))
        self.changed.notify_all()
        return obj

    def _remove_finalizer(self, key: tuple[str, str, str, str], fin: str) -> None:
        obj = copy.deepcopy(self.store.current[key])
        fins = [f for f in obj["metadata"].get("finalizers") or [] if f != fin]
        if not fins and (obj.get("spec") or {}).get("finalizers") and key[:2] == ("", "namespaces"):
            obj["metadata"].pop("finalizers", None)  # the namespace controller still has work to do
            self._write(key, obj)
        elif fins:
            obj["metadata"]["finalizers"] = fins
            self._write(key, obj)
        else:
            obj["metadata"].pop("finalizers", None)
            self.store.current[key] = obj
            self._delete_key(key)

    def _begin_delete(self, key: tuple[str, str, str, str], policy: str) -> None:
        res = next(r for r in self.resources if (r.group, r.plural) == key[:2])
        obj = copy.deepcopy(self.store.current[key])
        self._mark_deleted(res, key, obj, policy, dry_run=False)

    def _mark_deleted(
        self, res: Resource, key: tuple[str, str, str, str], obj: Obj, policy: str, dry_run: bool
    ) -> tuple[Obj, bool]:
        """Returns (object or its last state, deleted-immediately)."""
        meta = obj["metadata"]
        fins = list(meta.get("finalizers") or [])
        add = {"Foreground": "foregroundDeletion", "Orphan": "orphan"}.get(policy)
        namespace_pending = res.kind == "Namespace" and bool((obj.get("spec") or {}).get("finalizers"))
        if meta.get("deletionTimestamp"):
            if add and add not in fins:
                meta["finalizers"] = [*fins, add]
                return (obj if dry_run else self._write(key, obj)), False
            return obj, False
        if add and add not in fins:
            fins.append(add)
        if fins or namespace_pending:
            meta["deletionTimestamp"] = _now()
            meta["deletionGracePeriodSeconds"] = 0
            if fins:
                meta["finalizers"] = fins
            if res.custom or res.tracks_generation:
                meta["generation"] = int(meta.get("generation", 1)) + 1
            if res.kind == "Namespace":
                obj.setdefault("status", {})["phase"] = "Terminating"
            return (obj if dry_run else self._write(key, obj)), False
        if dry_run:
            return obj, True
        return self._delete_key(key), True

    def _create(
        self,
        res: Resource,
        ns: str,
        obj: Obj,
        *,
        manager: str,
        dry_run: bool,
        apply_fields: set[Path_] | None,
        api_version: str | None = None,
    ) -> Obj:
        meta = obj.setdefault("metadata", {})
        name = meta.get("name", "")
        key = (res.group, res.plural, ns, name)
        if key in self.store.current:
            raise ApiError(
                409, status_body(409, "AlreadyExists", f'{res.qualified} "{name}" already exists', _details(res, name))
            )
        self._check_namespace(res, ns, name)
        for f in (
            "resourceVersion",
            "uid",
            "generation",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
        ):
            meta.pop(f, None)
        if res.status_subresource and res.kind != "Namespace":
            obj.pop("status", None)
        if ns:
            meta["namespace"] = ns
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        if res.custom or res.tracks_generation:
            meta["generation"] = 1
        self._default(res, obj)
        errors = validate_object(res, obj)
        if errors:
            raise invalid(res, name, errors)
        self._admit(res, obj)
        if apply_fields is not None:
            fields = apply_fields
            entry = self._entry(res, manager, "Apply", fields)
        else:
            fields = _strip_paths(_update_fields(None, obj, res.schema), res)
            entry = self._entry(res, manager, "Update", fields, api_version=api_version)
        if fields:
            meta["managedFields"] = [entry]
        if dry_run:
            return obj
        return self._write(key, obj, event="ADDED")

    def _entry(
        self, res: Resource, manager: str, operation: str, fields: set[Path_], api_version: str | None = None
    ) -> Obj:
        return {
            "apiVersion": api_version or res.group_version,
            "fieldsType": "FieldsV1",
            "fieldsV1": fields_to_v1(fields),
            "manager": manager,
            "operation": operation,
            "time": _now(),
        }

    def _default(self, res: Resource, obj: Obj) -> None:
        if res.custom:
            apply_schema_defaults(obj, res.schema)
        else:
            builtin_defaults(res, obj, self._alloc_ip)

    def _alloc_ip(self) -> str:
        self._ip += 1
        return f"10.96.{self._ip // 250}.{self._ip % 250}"

    def _check_namespace(self, res: Resource, ns: str, name: str) -> None:
        if not res.namespaced:
            return
        ns_obj = self.store.current.get(("", "namespaces", "", ns))
        if ns_obj is None:
            raise namespace_not_found(ns)
        if ns_obj["metadata"].get("deletionTimestamp"):
            msg = f"unable to create new content in namespace {ns} because it is being terminated"
            details = _details(res, name)
            details["causes"] = [{"reason": "NamespaceTerminating", "message": msg, "field": "metadata.namespace"}]
            raise ApiError(403, status_body(403, "Forbidden", f'{res.qualified} "{name}" is forbidden: {msg}', details))

    def _admit(self, res: Resource, obj: Obj) -> None:
        for kind, hook, message in self.webhook_rejections:
            if kind == res.kind:
                # what a controller-runtime validating webhook (KServe's) answers with `Denied`:
                # the API server prefixes the webhook's message, and keeps its code 403 / Forbidden
                msg = f'admission webhook "{hook}" denied the request: {message}'
                raise ApiError(403, status_body(403, "Forbidden", msg))


def _update_fields(old: Any, new: Any, schema: Schema, path: Path_ = ()) -> set[Path_]:
    """Fields an Update (merge patch, PUT, POST) sets: added or changed nodes of `new`."""
    out: set[Path_] = set()
    if old == new:
        return out
    if isinstance(new, dict) and not (schema.map_atomic and not schema.untyped) and new:
        old_d = old if isinstance(old, dict) else {}
        if (old is None or old is _MISSING) and path and schema.additional is not None and not schema.properties:
            out.add(path)
        for k, v in new.items():
            child = ANY if schema.untyped else ((schema.properties or {}).get(k) or schema.additional or ANY)
            out |= _update_fields(old_d.get(k, _MISSING), v, child, (*path, "f:" + k))
        return out
    if isinstance(new, list) and schema.type == "array" and schema.list_type in ("map", "set"):
        old_l = old if isinstance(old, list) else []
        for item in new:
            if schema.list_type == "set":
                if item not in old_l:
                    out.add((*path, "v:" + _jkey(item)))
                continue
            key = list_key(item, schema.keys)
            kp = (*path, "k:" + _jkey(key))
            prev = next((i for i in old_l if _match_key(i, key)), _MISSING)
            if prev is _MISSING:
                out.add(kp)
            out |= _update_fields(prev, item, schema.items or ANY, kp)
        return out
    out.add(path)
    return out


def _removed_fields(old: Any, new: Any, schema: Schema, path: Path_ = ()) -> set[Path_]:
    """Paths present in `old` and gone from `new` (their descendants go with them)."""
    out: set[Path_] = set()
    if isinstance(old, dict) and isinstance(new, dict):
        for k, v in old.items():
            child = ANY if schema.untyped else ((schema.properties or {}).get(k) or schema.additional or ANY)
            p = (*path, "f:" + k)
            if k not in new:
                out.add(p)
            else:
                out |= _removed_fields(v, new[k], child, p)
    elif isinstance(old, list) and isinstance(new, list) and schema.list_type == "map":
        for item in old:
            key = list_key(item, schema.keys)
            kp = (*path, "k:" + _jkey(key))
            nxt = next((i for i in new if _match_key(i, key)), _MISSING)
            if nxt is _MISSING:
                out.add(kp)
            else:
                out |= _removed_fields(item, nxt, schema.items or ANY, kp)
    elif isinstance(old, list) and isinstance(new, list) and schema.list_type == "set":
        out |= {(*path, "v:" + _jkey(i)) for i in old if i not in new}
    return out


def _under(p: Path_, prefixes: set[Path_]) -> bool:
    return any(p[: len(q)] == q for q in prefixes)


def _sort_entries(entries: list[Obj]) -> list[Obj]:
    return sorted(
        entries,
        key=lambda e: (e.get("operation", ""), e.get("time", ""), e.get("manager", ""), e.get("apiVersion", "")),
    )


def _spec_part(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


# --------------------------------------------------------------------------------------
# Request handling
# --------------------------------------------------------------------------------------


@dataclass
class Target_:
    res: Resource
    namespace: str | None
    name: str | None
    subresource: str | None


def _conflict_error(conflicts: list[tuple[str, Path_]]) -> ApiError:
    causes = [
        {"reason": "FieldManagerConflict", "message": f"conflict with {m}", "field": path_string(p)}
        for m, p in conflicts
    ]
    if len(conflicts) == 1:
        m, p = conflicts[0]
        msg = f"Apply failed with 1 conflict: conflict with {m}: {path_string(p)}"
    else:
        by: dict[str, list[Path_]] = {}
        for m, p in conflicts:
            by.setdefault(m, []).append(p)
        lines = []
        for m in sorted(by):
            lines.append(f"conflicts with {m}:")
            lines += [f"- {path_string(p)}" for p in by[m]]
        msg = f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)
    return ApiError(409, status_body(409, "Conflict", msg, {"causes": causes}))


def _manager_label(entry: Obj) -> str:
    if entry.get("operation") == "Update":
        return f'"{entry["manager"]}" using {entry.get("apiVersion")}'
    return f'"{entry["manager"]}"'


class Server:
    """The request logic, separated from the HTTP plumbing; every method runs under the lock."""

    def __init__(self, api: KubeApiServer) -> None:
        self.api = api

    # ---- routing ----

    def route(self, path: str) -> Target_ | None:
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        ns: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces" and not (len(rest) == 3 and rest[2] in ("status", "finalize")):
            ns, rest = rest[1], rest[2:]
        if not rest:
            return None
        res = self.api.resource(group, version, rest[0])
        if res is None:
            if not any((r.group, r.version) == (group, version) for r in self.api.resources):
                raise PAGE_NOT_FOUND
            raise ApiError(404, status_body(404, "NotFound", "the server could not find the requested resource", {}))
        if res.namespaced is False and ns is not None:
            raise PAGE_NOT_FOUND
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if len(rest) > 3:
            raise PAGE_NOT_FOUND
        return Target_(res, ns, name, sub)

    def discovery(self, path: str) -> Obj | None:
        parts = [p for p in path.split("/") if p]
        if parts == ["version"]:
            return SERVER_VERSION
        if parts == ["api"]:
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
            }
        groups: dict[str, list[str]] = {}
        for r in self.api.resources:
            if r.group and r.version not in groups.setdefault(r.group, []):
                groups[r.group].append(r.version)
        if parts == ["apis"]:
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [self._group(g, vs) for g, vs in sorted(groups.items())],
            }
        if len(parts) == 2 and parts[0] == "apis" and parts[1] in groups:
            return {"kind": "APIGroup", "apiVersion": "v1", **self._group(parts[1], groups[parts[1]])}
        if parts == ["api", "v1"]:
            return self._resource_list("", "v1")
        if len(parts) == 3 and parts[0] == "apis":
            lag = self.api.discovery_lag.get(f"{parts[1]}/{parts[2]}", 0)
            if lag > 0:
                self.api.discovery_lag[f"{parts[1]}/{parts[2]}"] = lag - 1
                raise PAGE_NOT_FOUND
            if parts[2] in groups.get(parts[1], []):
                return self._resource_list(parts[1], parts[2])
            raise PAGE_NOT_FOUND
        return None

    @staticmethod
    def _group(g: str, versions: list[str]) -> Obj:
        vs = [{"groupVersion": f"{g}/{v}", "version": v} for v in versions]
        return {"name": g, "versions": vs, "preferredVersion": vs[0]}

    def _resource_list(self, group: str, version: str) -> Obj:
        resources: list[Obj] = []
        for r in self.api.resources:
            if (r.group, r.version) != (group, version):
                continue
            entry: Obj = {
                "name": r.plural,
                "singularName": r.singular,
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"],
            }
            if r.short_names:
                entry["shortNames"] = list(r.short_names)
            entry["storageVersionHash"] = r.storage_version_hash
            resources.append(entry)
            if r.status_subresource:
                resources.append(
                    {
                        "name": f"{r.plural}/status",
                        "singularName": "",
                        "namespaced": r.namespaced,
                        "kind": r.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        gv = f"{group}/{version}" if group else version
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}

    # ---- authorization ----

    def authorize(self, req: Request, verb: str, t: Target_) -> None:
        if req.user == ADMIN_USER:
            return
        for g in self.api.grants.get(req.user, []):
            if (
                (verb in g.verbs or "*" in g.verbs)
                and g.group in (t.res.group, "*")
                and (t.res.plural in g.resources or "*" in g.resources)
                and (g.namespace is None or g.namespace == t.namespace)
            ):
                return
        res = t.res
        who = f'{res.qualified} "{t.name}"' if t.name else res.qualified
        scope = f' in the namespace "{t.namespace}"' if t.namespace else " at the cluster scope"
        msg = (
            f'{who} is forbidden: User "{req.user}" cannot {verb} resource "{res.plural}" '
            f'in API group "{res.group}"{scope}'
        )
        raise ApiError(403, status_body(403, "Forbidden", msg, _details(res, t.name)))

    # ---- verbs ----

    def handle(self, req: Request) -> tuple[int, Obj | str, dict[str, str]]:
        t = self.route(req.path)
        if t is None:
            raise PAGE_NOT_FOUND
        if t.subresource == "status" and t.res.status_subresource and t.name:
            return self.status_subresource(req, t)
        if t.subresource is not None:
            raise ApiError(404, status_body(404, "NotFound", "the server could not find the requested resource", {}))
        q = req.query
        if req.method == "GET":
            if t.name is None:
                verb = "watch" if q.get("watch") in ("1", "true") else "list"
                self.authorize(req, verb, t)
                return 200, self.list_objects(t, q), {}
            self.authorize(req, "get", t)
            return 200, self.get(t), {}
        dry_run = q.get("dryRun") == "All"
        if "dryRun" in q and q["dryRun"] != "All":
            raise bad_request(f'dryRun: Unsupported value: "{q["dryRun"]}": supported values: "All"')
        ctype = req.headers.get("content-type", "application/json").split(";")[0].strip()
        if req.method == "PATCH" and t.name:
            self.authorize(req, "patch", t)
            manager = q.get("fieldManager") or _manager_from_agent(req.headers.get("user-agent", ""))
            if ctype == "application/apply-patch+yaml":
                if not q.get("fieldManager"):
                    raise bad_request(
                        'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: '
                        "is required for apply patch"
                    )
                return self.apply(req, t, manager, q.get("force") == "true", dry_run)
            if ctype == "application/merge-patch+json" or (
                ctype == "application/strategic-merge-patch+json" and not t.res.custom
            ):
                return self.merge_patch(req, t, manager, dry_run, q.get("fieldValidation", "Warn"))
            raise ApiError(
                415,
                status_body(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media "
                    "types include: application/json-patch+json, "
                    "application/merge-patch+json, application/apply-patch+yaml",
                ),
            )
        if req.method == "PUT" and t.name:
            self.authorize(req, "update", t)
            manager = q.get("fieldManager") or _manager_from_agent(req.headers.get("user-agent", ""))
            return self.update(req, t, manager, dry_run)
        if req.method == "POST" and t.name is None:
            self.authorize(req, "create", t)
            manager = q.get("fieldManager") or _manager_from_agent(req.headers.get("user-agent", ""))
            return self.create(req, t, manager, dry_run, q.get("fieldValidation", "Warn"))
        if req.method == "DELETE" and t.name:
            self.authorize(req, "delete", t)
            return self.delete(req, t, dry_run)
        raise ApiError(
            405, status_body(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        )

    def _key(self, t: Target_, name: str | None = None) -> tuple[str, str, str, str]:
        return (t.res.group, t.res.plural, t.namespace or "", name or t.name or "")

    def get(self, t: Target_) -> Obj:
        obj = self.api.store.current.get(self._key(t))
        if obj is None:
            raise not_found(t.res, t.name or "")
        return self._out(t.res, obj)

    def _out(self, res: Resource, obj: Obj) -> Obj:
        if res.custom:  # its sorted copy is already a deep copy (the leaves are immutable)
            return _sorted({"apiVersion": res.group_version, "kind": res.kind, **obj})  # type: ignore[no-any-return]
        o = copy.deepcopy(obj)
        o.setdefault("apiVersion", res.group_version)
        o.setdefault("kind", res.kind)
        return o

    def list_objects(self, t: Target_, q: dict[str, str]) -> Obj:
        try:
            label_match = parse_label_selector(q.get("labelSelector", ""))
            field_match = parse_field_selector(q.get("fieldSelector", ""))
        except ValueError as exc:
            raise bad_request(str(exc)) from None
        limit = int(q.get("limit") or 0)
        token = q.get("continue")
        store = self.api.store
        start = ""
        if token:
            try:
                raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
                rv = int(raw["rv"])
                start = str(raw["start"]).lstrip("/").rstrip("\x00")
                if raw.get("v") != "meta.k8s.io/v1":
                    raise ValueError
            except (ValueError, KeyError, TypeError):
                raise bad_request(
                    "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"
                ) from None
            if rv < self.api.compacted:
                msg = (
                    "The provided continue parameter is too old to display a consistent list result. You can "
                    "start a new list without the continue parameter, or use the continue token in this "
                    "response to retrieve the remainder of the results. Continuing with the provided token "
                    "results in an inconsistent list - objects that were created, modified, or deleted "
                    "between the time the first chunk was returned and now may show up in the list."
                )
                raise ApiError(410, status_body(410, "Expired", msg))
            objects = store.snapshot(t.res.group, t.res.plural, rv)
        else:
            rv = store.revision
            objects = {k: v for k, v in store.current.items() if k[:2] == (t.res.group, t.res.plural)}
        ns = t.namespace
        rel = sorted(
            ((f"{k[2]}/{k[3]}" if ns is None and t.res.namespaced else k[3]), o)
            for k, o in objects.items()
            if ns is None or k[2] == ns
        )
        rel = [(k, o) for k, o in rel if not start or k > start]
        items: list[Obj] = []
        last = ""
        more = False
        for n, (k, o) in enumerate(rel):
            if limit and len(items) >= limit:
                more = True
                break
            last = k
            if label_match(o["metadata"].get("labels") or {}) and field_match(o):
                item = self._out(t.res, o)
                if not t.res.custom:
                    # typed lists of built-in kinds do not repeat apiVersion/kind on their items
                    item.pop("apiVersion", None)
                    item.pop("kind", None)
                items.append(item)
            if limit and len(items) >= limit and n == len(rel) - 1:
                break
        meta: Obj = {"continue": "", "resourceVersion": str(rv)}
        if more:
            lead = "" if token else "/"
            raw_token = json.dumps(
                {"v": "meta.k8s.io/v1", "rv": rv, "start": f"{lead}{last}\x00"}, separators=(",", ":")
            )
            meta["continue"] = base64.urlsafe_b64encode(raw_token.encode()).decode().rstrip("=")
            if not q.get("labelSelector") and not q.get("fieldSelector"):
                meta["remainingItemCount"] = len([k for k, _ in rel if k > last])
        return {
            "apiVersion": t.res.group_version,
            "items": items,
            "kind": f"{t.res.kind}List",
            "metadata": dict(sorted(meta.items())),
        }

    def _decode_body(self, req: Request, yaml_ok: bool) -> Obj:
        """The request body: JSON, or YAML for an apply patch (as the API server decodes them)."""
        try:
            text = req.body.decode() or "null"
            body = _load_yaml(text) if yaml_ok else json.loads(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise bad_request(f"error decoding patch: {exc}") from None
        if not isinstance(body, dict):
            raise bad_request("the body of the request is not an object")
        return body

    def _check_identity(self, t: Target_, body: Obj) -> None:
        meta = body.get("metadata") or {}
        if body.get("apiVersion") not in (None, t.res.group_version) or body.get("kind") not in (None, t.res.kind):
            raise bad_request(
                f"the API version in the data ({body.get('apiVersion')}) does not match the "
                f"expected API version ({t.res.group_version})"
                if body.get("apiVersion") != t.res.group_version
                else f"the kind in the data ({body.get('kind')}) does not match the expected kind ({t.res.kind})"
            )
        if t.name is not None and meta.get("name") not in (None, t.name):
            raise bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({t.name})"
            )
        if meta.get("namespace") not in (None, "", t.namespace or ""):
            raise bad_request("the namespace of the provided object does not match the namespace sent on the request")

    # -- server-side apply --

    def apply(
        self, req: Request, t: Target_, manager: str, force: bool, dry_run: bool
    ) -> tuple[int, Obj | str, dict[str, str]]:
        res = t.res
        config = self._decode_body(req, yaml_ok=True)
        self._check_identity(t, config)
        if not config.get("apiVersion") or not config.get("kind"):
            raise bad_request("apiVersion and kind must be set in an applied configuration")
        walk = TypeWalk()
        walk.walk(config, res.schema)
        if walk.errors:
            errs = walk.errors
            text = errs[0] if len(errs) == 1 else "errors:\n  " + "\n  ".join(errs)
            # GroupVersionKind.String(): "serving.kserve.io/v1beta1, Kind=X", "/v1, Kind=ConfigMap"
            msg = (
                f"failed to create typed patch object ({t.namespace + '/' if t.namespace else ''}{t.name}; "
                f"{res.group}/{res.version}, Kind={res.kind}): {text}"
            )
            raise ApiError(500, status_body(500, None, msg))
        fields = _strip_paths(walk.fields, res)
        key = self._key(t)
        live = self.api.store.current.get(key)
        precondition = (config.get("metadata") or {}).get("resourceVersion")
        if live is None:
            if precondition:
                raise not_found(res, t.name or "")
            self.authorize(req, "create", t)
            obj = copy.deepcopy(config)
            obj["metadata"] = {k: v for k, v in (config.get("metadata") or {}).items()}
            obj["metadata"]["name"] = t.name
            created = self.api._create(
                res, t.namespace or "", obj, manager=manager, dry_run=dry_run, apply_fields=fields
            )
            return 201, self._out(res, created), {}
        if precondition and precondition != live["metadata"]["resourceVersion"]:
            raise conflict_modified(res, t.name or "")
        entries = copy.deepcopy(live["metadata"].get("managedFields") or [])
        sets = [fields_from_v1(e.get("fieldsV1") or {}) for e in entries]
        mine = next(
            (
                i
                for i, e in enumerate(entries)
                if e["manager"] == manager and e["operation"] == "Apply" and not e.get("subresource")
            ),
            None,
        )
        # conflicts: fields another manager owns whose value this apply would change
        conflicts: list[tuple[str, Path_]] = []
        for i, e in enumerate(entries):
            if i == mine or e.get("subresource"):
                continue
            for p in sorted(fields & sets[i]):
                cur, new = get_at(live, p), get_at(config, p)
                if p[-1].startswith(("k:", "v:")) and cur is not _MISSING:
                    continue
                if cur != new:
                    conflicts.append((_manager_label(e), p))
                    if force:
                        sets[i].discard(p)
        if conflicts and not force:
            raise _conflict_error(conflicts)
        previous = sets[mine] if mine is not None else set()
        merged_cfg = {k: v for k, v in config.items() if not (k == "status" and res.status_subresource)}
        merged_meta = {
            k: v
            for k, v in (config.get("metadata") or {}).items()
            if k in ("labels", "annotations", "finalizers", "ownerReferences")
        }
        merged_cfg["metadata"] = merged_meta
        new = merge_apply(copy.deepcopy(live), merged_cfg, res.schema)
        others: set[Path_] = set()
        for i, s in enumerate(sets):
            if i != mine:
                others |= s
        # fields this manager applied before and not now, that no other manager owns, go away
        dropped = {
            p
            for p in previous - fields
            if p not in others and not any(q[: len(p)] == p for q in others if len(q) > len(p))
        }
        for p in sorted(dropped, key=len):
            if any(p[:n] in dropped for n in range(1, len(p))):
                continue  # an ancestor (a whole list item) goes, and takes this with it
            if len(p) >= 2 and p[-2].startswith("k:") and p[-1][2:] in json.loads(p[-2][2:]):
                continue  # an item that stays keeps its key fields
            remove_at(new, p)
        for f in ("labels", "annotations", "finalizers", "ownerReferences"):
            if f in new["metadata"] and not new["metadata"][f]:
                del new["metadata"][f]
        self.api._default(res, new)
        if res.status_subresource and "status" in live:
            new["status"] = copy.deepcopy(live["status"])
        new_entries = []
        for i, e in enumerate(entries):
            if i == mine:
                continue
            if sets[i]:
                e = dict(e)
                e["fieldsV1"] = fields_to_v1(sets[i])
                new_entries.append(e)
        old_mine = entries[mine] if mine is not None else None
        if fields:
            if old_mine is not None and previous == fields:
                new_entries.append(old_mine)
            else:
                new_entries.append(self.api._entry(res, manager, "Apply", fields))
        return self._finish_update(t, live, new, new_entries, manager, "Apply", dry_run)

    def _finish_update(
        self, t: Target_, live: Obj, new: Obj, entries: list[Obj], manager: str, op: str, dry_run: bool
    ) -> tuple[int, Obj | str, dict[str, str]]:
        res = t.res
        live_cmp = {k: v for k, v in live.items()}
        live_cmp["metadata"] = {k: v for k, v in live["metadata"].items() if k != "managedFields"}
        new_cmp = {k: v for k, v in new.items()}
        new_cmp["metadata"] = {k: v for k, v in new["metadata"].items() if k != "managedFields"}
        old_sets = sorted(
            (e["manager"], e["operation"], _jkey(e.get("fieldsV1")))
            for e in live["metadata"].get("managedFields") or []
        )
        new_sets = sorted((e["manager"], e["operation"], _jkey(e.get("fieldsV1"))) for e in entries)
        if live_cmp == new_cmp and old_sets == new_sets:
            return 200, self._out(res, live), {}
        errors = validate_object(res, new)
        if errors:
            raise invalid(res, t.name or "", errors)
        self.api._admit(res, new)
        now = _now()
        for e in entries:
            if e["manager"] == manager and e["operation"] == op:
                e["time"] = now
        if entries:
            new["metadata"]["managedFields"] = _sort_entries(entries)
        else:
            new["metadata"].pop("managedFields", None)
        if (res.custom or res.tracks_generation) and _spec_part(new) != _spec_part(live):
            new["metadata"]["generation"] = int(live["metadata"].get("generation", 1)) + 1
        key = self._key(t)
        if (
            new["metadata"].get("deletionTimestamp")
            and not new["metadata"].get("finalizers")
            and not (res.kind == "Namespace" and (new.get("spec") or {}).get("finalizers"))
        ):
            # the last finalizer went away: the object is deleted; the answer still shows its last state
            out = copy.deepcopy(new)
            if not dry_run:
                self.api.store.current[key] = copy.deepcopy(new)
                self.api._delete_key(key)
            return 200, self._out(res, out), {}
        if dry_run:
            return 200, self._out(res, new), {}
        stored = self.api._write(key, new)
        if self.api.auto_gc:
            self.api.collect_garbage()
        return 200, self._out(res, stored), {}

    # -- Update operations --

    def _prune_or_refuse(self, t: Target_, obj: Obj, validation: str, code: int = 422) -> tuple[Obj, list[str]]:
        res = t.res
        walk = TypeWalk()
        walk.walk(obj, res.schema)
        warnings = []
        if walk.type_errors:
            errs = []
            for p, expected, value in walk.type_errors:
                where = dotted(p)
                got = _json_type(value)
                want = "integer" if expected == "integer" else expected
                errs.append(
                    (
                        where,
                        "FieldValueTypeInvalid",
                        f'Invalid value: "{got}": {where} in body must be of type {want}: "{got}"',
                    )
                )
            raise invalid(res, t.name or "", errs)
        if walk.unknown:
            names = [dotted(p) for p in walk.unknown]
            if validation == "Strict":
                shown = json.dumps(_sorted(obj), separators=(",", ":"))
                unknown = ", ".join(f'unknown field "{n}"' for n in names)
                if code == 400:
                    raise bad_request(f"strict decoding error: {unknown}")
                message = f"Invalid value: {json.dumps(shown)}: strict decoding error: {unknown}"
                raise ApiError(
                    422,
                    status_body(
                        422,
                        "Invalid",
                        f' "" is invalid: patch: {message}',
                        {"causes": [{"reason": "FieldValueInvalid", "message": message, "field": "patch"}]},
                    ),
                )
            obj = copy.deepcopy(obj)
            for p in walk.unknown:
                remove_at(obj, p)
            if validation != "Ignore":
                warnings = [f'299 - "unknown field \\"{n}\\""' for n in names]
        return obj, warnings

    def _update_entries(self, t: Target_, live: Obj, new: Obj, manager: str) -> list[Obj]:
        res = t.res
        entries = copy.deepcopy(live["metadata"].get("managedFields") or [])
        live_body = {k: v for k, v in live.items() if k != "metadata"}
        new_body = {k: v for k, v in new.items() if k != "metadata"}
        live_body["metadata"] = {k: v for k, v in live["metadata"].items() if k != "managedFields"}
        new_body["metadata"] = {k: v for k, v in new["metadata"].items() if k != "managedFields"}
        changed = _strip_paths(_update_fields(live_body, new_body, res.schema), res)
        removed = _strip_paths(_removed_fields(live_body, new_body, res.schema), res)
        out: list[Obj] = []
        mine_idx = None
        for e in entries:
            s = fields_from_v1(e.get("fieldsV1") or {})
            is_me = e["manager"] == manager and e["operation"] == "Update" and e.get("apiVersion") == res.group_version
            s = {p for p in s if not _under(p, removed)}
            if not is_me:
                s -= changed
            else:
                s |= changed
                mine_idx = len(out)
            if s:
                e["fieldsV1"] = fields_to_v1(s)
                out.append(e)
            elif is_me:
                mine_idx = None
        if mine_idx is None and changed:
            out.append(self.api._entry(res, manager, "Update", changed))
        return out

    def merge_patch(
        self, req: Request, t: Target_, manager: str, dry_run: bool, validation: str
    ) -> tuple[int, Obj | str, dict[str, str]]:
        res = t.res
        patch = self._decode_body(req, yaml_ok=False)
        live = self.api.store.current.get(self._key(t))
        if live is None:
            raise not_found(res, t.name or "")
        precondition = (patch.get("metadata") or {}).get("resourceVersion")
        if precondition and precondition != live["metadata"]["resourceVersion"]:
            raise conflict_modified(res, t.name or "")
        new = merge_patch(copy.deepcopy(live), patch)
        for f in (
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "resourceVersion",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ):
            if f in live["metadata"]:
                new.setdefault("metadata", {})[f] = live["metadata"][f]
        if res.status_subresource:
            if "status" in live:
                new["status"] = copy.deepcopy(live["status"])
            else:
                new.pop("status", None)
        new, warnings = self._prune_or_refuse(t, new, validation)
        self.api._default(res, new)
        entries = self._update_entries(t, live, new, manager)
        code, body, headers = self._finish_update(t, live, new, entries, manager, "Update", dry_run)
        if warnings:
            headers = {**headers, "Warning": ", ".join(warnings)}
        return code, body, headers

    def status_subresource(self, req: Request, t: Target_) -> tuple[int, Obj | str, dict[str, str]]:
        """GET and merge PATCH of `.../status`: what a runtime (KServe's controller) writes; the rest
        of the object is left alone, and the generation does not move."""
        res = t.res
        if req.method == "GET":
            self.authorize(req, "get", t)
            return 200, self.get(t), {}
        ctype = req.headers.get("content-type", "application/json").split(";")[0].strip()
        if req.method != "PATCH" or ctype != "application/merge-patch+json":
            raise ApiError(
                405,
                status_body(405, "MethodNotAllowed", "the server does not allow this method on the requested resource"),
            )
        self.authorize(req, "patch", t)
        patch = self._decode_body(req, yaml_ok=False)
        live = self.api.store.current.get(self._key(t))
        if live is None:
            raise not_found(res, t.name or "")
        new = copy.deepcopy(live)
        new["status"] = merge_patch(copy.deepcopy(live.get("status") or {}), patch.get("status") or {})
        manager = req.query.get("fieldManager") or _manager_from_agent(req.headers.get("user-agent", ""))
        entries = copy.deepcopy(live["metadata"].get("managedFields") or [])
        return self._finish_update(t, live, new, entries, manager, "Update", req.query.get("dryRun") == "All")

    def update(self, req: Request, t: Target_, manager: str, dry_run: bool) -> tuple[int, Obj | str, dict[str, str]]:
        res = t.res
        body = self._decode_body(req, yaml_ok=False)
        self._check_identity(t, body)
        live = self.api.store.current.get(self._key(t))
        if live is None:
            raise not_found(res, t.name or "")
        rv = (body.get("metadata") or {}).get("resourceVersion")
        if not rv and res.custom:
            raise invalid(
                res,
                t.name or "",
                [
                    (
                        "metadata.resourceVersion",
                        "FieldValueInvalid",
                        "Invalid value: 0x0: must be specified for an update",
                    )
                ],
            )
        if rv and rv != live["metadata"]["resourceVersion"]:
            raise conflict_modified(res, t.name or "")
        new = copy.deepcopy(body)
        new.setdefault("metadata", {})
        for f in (
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "resourceVersion",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ):
            if f in live["metadata"]:
                new["metadata"][f] = live["metadata"][f]
        new["metadata"].pop("managedFields", None)
        if res.status_subresource:
            if "status" in live:
                new["status"] = copy.deepcopy(live["status"])
            else:
                new.pop("status", None)
        new, warnings = self._prune_or_refuse(t, new, req.query.get("fieldValidation", "Warn"))
        self.api._default(res, new)
        entries = self._update_entries(t, live, new, manager)
        code, out, headers = self._finish_update(t, live, new, entries, manager, "Update", dry_run)
        if warnings:
            headers = {**headers, "Warning": ", ".join(warnings)}
        return code, out, headers

    def create(
        self, req: Request, t: Target_, manager: str, dry_run: bool, validation: str
    ) -> tuple[int, Obj | str, dict[str, str]]:
        res = t.res
        body = self._decode_body(req, yaml_ok=False)
        self._check_identity(t, body)
        name = (body.get("metadata") or {}).get("name")
        if not name:
            raise invalid(
                res, "", [("metadata.name", "FieldValueRequired", "Required value: name or generateName is required")]
            )
        t = Target_(res, t.namespace, name, None)
        body, warnings = self._prune_or_refuse(t, body, validation, code=400)
        body.setdefault("apiVersion", res.group_version)
        body.setdefault("kind", res.kind)
        created = self.api._create(res, t.namespace or "", body, manager=manager, dry_run=dry_run, apply_fields=None)
        return 201, self._out(res, created), ({"Warning": ", ".join(warnings)} if warnings else {})

    def delete(self, req: Request, t: Target_, dry_run: bool) -> tuple[int, Obj | str, dict[str, str]]:
        res = t.res
        options: Obj = {}
        if req.body.strip():
            try:
                options = json.loads(req.body)
            except ValueError:
                raise bad_request("invalid DeleteOptions body") from None
        policy = options.get("propagationPolicy") or req.query.get("propagationPolicy") or "Background"
        if policy not in ("Foreground", "Background", "Orphan"):
            raise bad_request(f'propagationPolicy: Unsupported value: "{policy}"')
        if options.get("dryRun") == ["All"]:
            dry_run = True
        key = self._key(t)
        live = self.api.store.current.get(key)
        if live is None:
            raise not_found(res, t.name or "")
        pre = options.get("preconditions") or {}
        if pre.get("resourceVersion") and pre["resourceVersion"] != live["metadata"]["resourceVersion"]:
            raise conflict_modified(res, t.name or "")
        if pre.get("uid") and pre["uid"] != live["metadata"]["uid"]:
            raise conflict_modified(res, t.name or "")
        obj, deleted = self.api._mark_deleted(res, key, copy.deepcopy(live), policy, dry_run)
        if self.api.auto_gc and not dry_run:
            self.api.collect_garbage()
        if deleted:
            details = _details(res, t.name)
            details["uid"] = live["metadata"]["uid"]
            return (
                200,
                {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details},
                {},
            )
        return 200, self._out(res, obj), {}

    # -- watch --

    def watch_events(self, t: Target_, q: dict[str, str]) -> Iterator[Obj]:
        """Yields events after `resourceVersion` until `timeoutSeconds` pass (or the server stops)."""
        import time

        try:
            match = parse_label_selector(q.get("labelSelector", ""))
        except ValueError as exc:
            raise bad_request(str(exc)) from None
        timeout = min(float(q.get("timeoutSeconds") or 30), 300.0)
        deadline = time.monotonic() + timeout
        api = self.api
        with api.lock:
            since = q.get("resourceVersion")
            pending: list[Obj] = []
            if since in (None, "", "0"):
                for k, o in sorted(api.store.current.items()):
                    if k[:2] == (t.res.group, t.res.plural) and (t.namespace is None or k[2] == t.namespace):
                        pending.append({"type": "ADDED", "object": self._out(t.res, o)})
                cursor = api.store.revision
            else:
                cursor = int(since)
        yield from pending
        while True:
            with api.lock:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or api._httpd is None:
                    return
                fresh = [e for e in api.store.events if e[0] > cursor]
                if not fresh:
                    api.changed.wait(timeout=min(remaining, 0.5))
                    continue
                cursor = fresh[-1][0]
            for _, typ, key, obj in fresh:
                if key[:2] != (t.res.group, t.res.plural) or (t.namespace is not None and key[2] != t.namespace):
                    continue
                if not match(obj["metadata"].get("labels") or {}):
                    continue
                yield {"type": typ, "object": self._out(t.res, obj)}


def _manager_from_agent(agent: str) -> str:
    """The API server names a manager with no fieldManager after the User-Agent's first segment."""
    return (agent.split("/")[0] or "unknown")[:128]


class _Handler(BaseHTTPRequestHandler):
    api: KubeApiServer
    protocol_version = "HTTP/1.1"
    server_version = "kube-apiserver-standin"

    def setup(self) -> None:
        super().setup()
        # headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm and
        # the client's delayed ACK add ~40 ms to every answer
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _serve(self) -> None:
        api = self.api
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        req = Request(self.command, parts.path, query, headers, body)
        with api.lock:
            api.requests.append(req)
        try:
            self._authenticate(req)
            with api.lock:
                for fault in api.faults:
                    if (
                        fault.remaining > 0
                        and (fault.methods is None or req.method in fault.methods)
                        and (fault.path_contains is None or fault.path_contains in req.path)
                    ):
                        fault.remaining -= 1
                        raise ApiError(fault.status, fault.body or "", fault.headers)
            server = Server(api)
            with api.lock:
                doc = server.discovery(req.path) if req.method == "GET" else None
            if doc is not None:
                self._send(200, doc, {})
                return
            if req.method == "GET" and query.get("watch") in ("1", "true"):
                with api.lock:
                    t = server.route(req.path)
                    if t is None or t.name is not None:
                        raise PAGE_NOT_FOUND
                    server.authorize(req, "watch", t)
                self._stream(server.watch_events(t, query))
                return
            with api.lock:
                code, out, extra = server.handle(req)
                t = server.route(req.path)
                note = api.deprecations.get((t.res.group_version, t.res.kind)) if t else None
            if note:  # the API server's deprecation warning for a version on its way out
                extra = {**extra, "Warning": f'299 - "{note}"'}
            self._send(code, out, extra)
        except ApiError as exc:
            self._send(exc.code, exc.body, exc.headers)

    def _authenticate(self, req: Request) -> None:
        auth = req.headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        user = self.api.tokens.get(token or "")
        if user is None:
            raise ApiError(401, status_body(401, "Unauthorized", "Unauthorized"))
        imp = req.headers.get("impersonate-user")
        if imp:
            if user != ADMIN_USER:
                msg = (
                    f'users "{imp}" is forbidden: User "{user}" cannot impersonate resource "users" '
                    'in API group "" at the cluster scope'
                )
                raise ApiError(403, status_body(403, "Forbidden", msg, {"name": imp, "kind": "users"}))
            user = imp
        req.user = user

    def _send(self, code: int, body: Obj | str, headers: dict[str, str]) -> None:
        if isinstance(body, str):
            data = body.encode()
            ctype = "text/plain; charset=utf-8"
        else:
            data = json.dumps(body).encode()
            ctype = "application/json"
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Audit-Id", str(uuid.uuid4()))
        if self.api.priority_and_fairness:
            self.send_header("X-Kubernetes-PF-FlowSchema-UID", self.api.apf_uids[0])
            self.send_header("X-Kubernetes-PF-PriorityLevel-UID", self.api.apf_uids[1])
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, events: Iterator[Obj]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for ev in events:
                line = json.dumps(ev).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = _serve
    do_POST = _serve
    do_PUT = _serve
    do_PATCH = _serve
    do_DELETE = _serve


# --------------------------------------------------------------------------------------
# kubeconfig
# --------------------------------------------------------------------------------------


def write_kubeconfig(
    path: Path,
    server: str,
    token: str = ADMIN_TOKEN,
    *,
    context: str = "standin",
    namespace: str | None = None,
    ca_pem: bytes | None = None,
) -> Path:
    """A kubeconfig with one cluster / user (bearer token) / context, made current; `ca_pem` is
    the cluster's CA for an HTTPS stand-in (see `self_signed_certificate`)."""
    ctx: Obj = {"cluster": context, "user": f"{context}-user"}
    if namespace:
        ctx["namespace"] = namespace
    cluster: Obj = {"server": server}
    if ca_pem is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": cluster}],
        "users": [{"name": f"{context}-user", "user": {"token": token}}],
        "contexts": [{"name": context, "context": ctx}],
        "current-context": context,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def self_signed_certificate(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path, bytes]:
    """A throwaway certificate for `host` (its own CA): (certificate file, key file, PEM)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver-standin")])
    now = _dt.datetime.now(_dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_file, key_file = folder / "apiserver.crt", folder / "apiserver.key"
    cert_file.write_bytes(pem)
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file, pem


@contextlib.contextmanager
def running(**kwargs: Any) -> Iterator[KubeApiServer]:
    api = KubeApiServer(**kwargs)
    with api:
        yield api
