"""The platform's own install manifests, rendered from templates like everything else mlp applies.

`render_install(options)` is pure: it turns the chosen components (controller, webhooks,
server), the image, the repository URL and the namespaces the repository's environments name
into plain manifests — Namespace, one ServiceAccount per component, Deployments with probes,
resources and the restricted security profile, Services, NetworkPolicies,
PodDisruptionBudgets, the state PersistentVolumeClaim, an optional Ingress or HTTPRoute for
the webhook receiver, and least-privilege RBAC. `mlp install render` prints them; the
Kustomize base under `deploy/` is generated from the same function (`mlp install render
--kustomize deploy/base`), and a test keeps it current.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from mlp import __version__
from mlp.render.stamp import stamp
from mlp.render.yamlio import load_all

TEMPLATES = Path(__file__).parent / "templates"
COMPONENTS = ("controller", "webhooks", "server")
# The install is an "environment" of its own for the engine: its objects carry this environment
# label, its inventory is `mlp-inventory-mlp-install` in mlp's namespace, and prune follows it.
INSTALL_ENVIRONMENT = "mlp-install"
PART_OF = {"app.kubernetes.io/part-of": "mlp", "app.kubernetes.io/managed-by": "mlp"}

# The kinds the engine renders into environment namespaces, with their API groups and plural
# names: the controller's namespaced Role grants exactly these.
RENDERED_KINDS: tuple[tuple[str, str], ...] = (
    ("serving.kserve.io", "inferenceservices"),
    ("", "services"),
    ("", "configmaps"),
    ("", "serviceaccounts"),
    ("apps", "deployments"),
    ("batch", "cronjobs"),
    ("monitoring.coreos.com", "prometheusrules"),
    ("monitoring.coreos.com", "servicemonitors"),
    ("gateway.networking.k8s.io", "httproutes"),
    ("policy", "poddisruptionbudgets"),
)
# get/list read live state and the inventory; server-side apply is a PATCH that may create;
# prune deletes. Nothing else: no update, no watch, no Secrets.
ENGINE_VERBS = ("get", "list", "create", "patch", "delete")


class InstallError(ValueError):
    """An install option is unusable; the message is one line."""


@dataclass(frozen=True)
class InstallOptions:
    repo_url: str
    namespace: str = "mlp-system"
    components: tuple[str, ...] = COMPONENTS
    image: str | None = None  # default: REGISTRY/mlp:VERSION
    registry: str | None = None  # where this installation's platform image is pushed
    environment_namespaces: tuple[str, ...] = ()
    interval: int = 60
    state: str = "pvc"  # pvc | ephemeral
    state_size: str = "1Gi"
    storage_class: str | None = None
    expose: str = "none"  # none | ingress | httproute
    host: str | None = None
    ingress_class: str | None = None
    gateway: str | None = None  # NAMESPACE/NAME of the Gateway an HTTPRoute attaches to
    replicas: dict[str, int] = field(default_factory=dict)
    extra_args: dict[str, tuple[str, ...]] = field(default_factory=dict)


def image_reference(registry: str | None, version: str = __version__) -> str:
    """The one image reference every rendered object uses: the platform's own version.

    Without a registry the reference is the bare `mlp:VERSION`, which is what the Kustomize
    base ships: an overlay's `images:` entry points it at the installation's registry.
    """
    return f"{registry.rstrip('/')}/mlp:{version}" if registry else f"mlp:{version}"


def _labels(component: str | None = None) -> dict[str, str]:
    labels = {"app.kubernetes.io/name": "mlp", **PART_OF, "app.kubernetes.io/version": __version__}
    if component:
        labels["app.kubernetes.io/component"] = component
    return labels


def _component(name: str, o: InstallOptions) -> dict[str, Any]:
    state = ["--state-dir", "/var/lib/mlp"]
    repo = "$(MLP_REPO)"  # expanded by the kubelet from the mlp-config ConfigMap
    env: list[dict[str, Any]] = [
        {"name": "MLP_REPO", "valueFrom": {"configMapKeyRef": {"name": "mlp-config", "key": "repo"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    if name == "controller":
        args = ["controller", "--repo", repo, "--interval", str(o.interval), *state]
        args += ["--metrics-host", "0.0.0.0", "--metrics-port", "9464", "--leader-elect"]
        port, port_name, probe, needs_api = 9464, "metrics", "/healthz", True
        replicas = o.replicas.get(name, 1)
    elif name == "webhooks":
        args = ["webhooks", "--repo", repo, "--host", "0.0.0.0", "--port", "8090", *state]
        port, port_name, probe, needs_api = 8090, "http", "/healthz", False
        replicas = o.replicas.get(name, 1)
    else:
        args = ["server", "--repo", repo, "--host", "0.0.0.0", "--port", "8080", *state]
        port, port_name, probe, needs_api = 8080, "http", "/healthz", False
        replicas = o.replicas.get(name, 2)  # reads mostly: two replicas and a PodDisruptionBudget
    args += list(o.extra_args.get(name, ()))
    labels = _labels(name)
    selector = {"app.kubernetes.io/name": "mlp", "app.kubernetes.io/component": name}
    affinity = None
    if name != "controller" and o.state == "pvc" and "controller" in o.components:
        # The state volume is ReadWriteOnce: share it by running on the controller's node.
        affinity = {
            "podAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "controller"}},
                        "topologyKey": "kubernetes.io/hostname",
                    }
                ]
            }
        }
    # The controller's and the webhook receiver's state folders take one process each (a lock
    # file): replace the pod rather than run old and new side by side.
    strategy = {"type": "Recreate"} if name != "server" else {"type": "RollingUpdate"}
    return {
        "name": f"mlp-{name}",
        "component": name,
        "labels": labels,
        "selector": selector,
        "replicas": replicas,
        "strategy": strategy,
        "affinity": affinity,
        "args": args,
        "env": env,
        "port": port,
        "portName": port_name,
        "probePath": probe,
        "needsApi": needs_api,
        "resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"memory": "1Gi"},
        },
    }


def _rules() -> list[dict[str, Any]]:
    groups: dict[str, list[str]] = {}
    for group, plural in RENDERED_KINDS:
        groups.setdefault(group, []).append(plural)
    return [
        {"apiGroups": [g], "resources": sorted(rs), "verbs": list(ENGINE_VERBS)} for g, rs in sorted(groups.items())
    ]


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["json"] = lambda value: json.dumps(value, sort_keys=True)
    return env


def render_install(o: InstallOptions) -> list[dict[str, Any]]:
    """The install manifests for these options, in apply order (namespace first)."""
    unknown = sorted(set(o.components) - set(COMPONENTS))
    if unknown or not o.components:
        raise InstallError(
            f"unknown component(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(COMPONENTS)}"
        )
    if o.state not in ("pvc", "ephemeral"):
        raise InstallError(f"state {o.state!r}: choose pvc or ephemeral")
    if o.expose not in ("none", "ingress", "httproute"):
        raise InstallError(f"expose {o.expose!r}: choose none, ingress or httproute")
    if o.expose != "none" and "webhooks" not in o.components:
        raise InstallError("--expose publishes the webhook receiver: add the webhooks component")
    if o.expose != "none" and not o.host:
        raise InstallError(f"--expose {o.expose} needs --host")
    if o.expose == "httproute" and (not o.gateway or "/" not in o.gateway):
        raise InstallError("--expose httproute needs --gateway NAMESPACE/NAME")
    if not o.repo_url:
        raise InstallError("the repository URL is empty")
    env = _environment()
    parent_refs = []
    if o.gateway:
        gw_ns, _, gw_name = o.gateway.partition("/")
        parent_refs = [{"name": gw_name, "namespace": gw_ns}]
    ctx: dict[str, Any] = {
        "namespace": o.namespace,
        "labels": _labels(),
        "image": o.image or image_reference(o.registry),
        "state": {"kind": o.state, "size": o.state_size, "storageClass": o.storage_class},
        "expose": {"kind": o.expose, "host": o.host, "className": o.ingress_class, "parentRefs": parent_refs},
        "environmentNamespaces": sorted(set(o.environment_namespaces)),
        "rules": _rules(),
        "repoUrl": o.repo_url,
    }
    text = [env.get_template("base.yaml.j2").render(ctx)]
    for name in COMPONENTS:
        if name in o.components:
            text.append(env.get_template("component.yaml.j2").render({**ctx, "c": _component(name, o)}))
    if "controller" in o.components:
        text.append(env.get_template("rbac.yaml.j2").render(ctx))
    if o.expose != "none":
        text.append(env.get_template("expose.yaml.j2").render(ctx))
    docs: list[dict[str, Any]] = []
    for chunk in text:
        docs.extend(
            stamp(d, environment=INSTALL_ENVIRONMENT, spec="Install.mlp", revision=__version__)
            for d in load_all(chunk)
            if d
        )
    return docs
