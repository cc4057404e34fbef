"""`mlp install render`: the platform's own manifests (controller, webhooks, API server) for a cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from mlp.cli._common import CONTEXT, fail, load_repo


@click.group("install", context_settings=CONTEXT)
def install() -> None:
    """Install mlp into the cluster it manages.

    \b
    Examples:
      mlp install render --repo-url https://github.com/acme/platform.git --registry registry.example/acme > mlp.yaml
      mlp install render --component controller --image registry.example/acme/mlp:0.1.0 -o json
    """


@install.command("render", context_settings=CONTEXT)
@click.option(
    "--repo",
    type=click.Path(file_okay=False, path_type=Path),
    default=".",
    show_default=True,
    help="The platform repository: its environments name the namespaces the controller may write to.",
)
@click.option("--repo-url", help="The URL the in-cluster components clone [default: the repository's origin].")
@click.option("--namespace", default="mlp-system", show_default=True, help="Namespace mlp runs in.")
@click.option(
    "--component",
    "components",
    default="controller,webhooks,server",
    show_default=True,
    help="Comma-separated: controller, webhooks, server.",
)
@click.option(
    "--registry",
    envvar="MLP_IMAGE_REGISTRY",
    help="Registry holding the platform image: REGISTRY/mlp:VERSION [env MLP_IMAGE_REGISTRY].",
)
@click.option("--image", help="The full platform image reference (overrides --registry).")
@click.option(
    "--state",
    type=click.Choice(["pvc", "ephemeral"]),
    default="pvc",
    show_default=True,
    help="pvc: a PersistentVolumeClaim for the state folder; ephemeral: an emptyDir (lost on restart).",
)
@click.option("--state-size", default="1Gi", show_default=True)
@click.option("--storage-class", help="StorageClass of the state volume [default: the cluster's].")
@click.option(
    "--expose",
    type=click.Choice(["none", "ingress", "httproute"]),
    default="none",
    show_default=True,
    help="Publish the webhook receiver through an Ingress or a Gateway API HTTPRoute.",
)
@click.option("--host", help="Host name of the webhook receiver (with --expose).")
@click.option("--ingress-class", help="IngressClass (with --expose ingress).")
@click.option("--gateway", help="NAMESPACE/NAME of the Gateway (with --expose httproute).")
@click.option("--interval", type=int, default=60, show_default=True, help="The controller's sync interval (s).")
@click.option("-o", "--output", "fmt", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True)
@click.option(
    "--kustomize",
    "kustomize_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write a Kustomize base (one file per object plus kustomization.yaml) into this folder.",
)
def render(
    repo: Path,
    repo_url: str | None,
    namespace: str,
    components: str,
    registry: str | None,
    image: str | None,
    state: str,
    state_size: str,
    storage_class: str | None,
    expose: str,
    host: str | None,
    ingress_class: str | None,
    gateway: str | None,
    interval: int,
    fmt: str,
    kustomize_dir: Path | None,
) -> None:
    """Print the manifests that install mlp into a cluster.

    Renders a Namespace, a ServiceAccount, Deployment, Service and NetworkPolicy per
    component, PodDisruptionBudgets, the state volume, least-privilege RBAC (CRD discovery
    cluster-wide; the rendered kinds in exactly the namespaces the repository's kubernetes
    environments name; the leader Lease), and optionally an Ingress or HTTPRoute for webhooks.

    \b
    Examples:
      mlp install render --registry registry.example/acme | kubectl apply --server-side -f -
      mlp install render --repo platform/ --component controller,webhooks \\
          --expose httproute --host mlp.example.com --gateway infra/public -o json
      mlp install render --kustomize deploy/base
    """
    from mlp.install import InstallError, InstallOptions, render_install
    from mlp.render.yamlio import dump_all

    _, result = load_repo(repo)
    namespaces = tuple(
        env.spec.target.namespace
        for env in result.specs.environments.values()
        if env.spec.target.kind == "kubernetes" and env.spec.target.namespace
    )
    url = repo_url or _origin(repo)
    if not url:
        fail(f"{repo}: no --repo-url given and the repository has no origin remote")
    if not image and not registry and not kustomize_dir:
        fail("say where the platform image is: --registry REGISTRY (REGISTRY/mlp:VERSION) or --image REF")
    try:
        docs = render_install(
            InstallOptions(
                repo_url=url,
                namespace=namespace,
                components=tuple(c.strip() for c in components.split(",") if c.strip()),
                image=image,
                registry=registry,
                environment_namespaces=namespaces,
                interval=interval,
                state=state,
                state_size=state_size,
                storage_class=storage_class,
                expose=expose,
                host=host,
                ingress_class=ingress_class,
                gateway=gateway,
            )
        )
    except InstallError as exc:
        fail(str(exc))
    if kustomize_dir is not None:
        _write_kustomize(kustomize_dir, docs)
        click.echo(f"wrote {len(docs)} objects and kustomization.yaml to {kustomize_dir}", err=True)
        return
    if fmt == "json":
        click.echo(
            json.dumps({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": docs}, indent=2, sort_keys=True)
        )
    else:
        click.echo(dump_all(docs), nl=False)


def _origin(repo: Path) -> str | None:
    try:
        import git

        return str(git.Repo(repo, search_parent_directories=True).remotes.origin.url)
    except Exception:  # no Git, no repository, no origin: the caller asks for --repo-url
        return None


def _write_kustomize(folder: Path, docs: list[dict[str, Any]]) -> None:
    from mlp.render.yamlio import dump as dump_one

    try:
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.yaml"):
            old.unlink()
        names = []
        for index, doc in enumerate(docs, start=1):
            name = f"{index:02d}-{doc['kind'].lower()}-{doc['metadata']['name']}.yaml"
            (folder / name).write_text(dump_one(doc), encoding="utf-8")
            names.append(name)
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": names,
        }
        (folder / "kustomization.yaml").write_text(dump_one(kustomization), encoding="utf-8")
    except OSError as exc:
        fail(f"{folder}: cannot write: {exc.strerror or exc}")
