"""`mlp install render|apply`: the platform's own manifests (controller, webhooks, API server) for a cluster."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from mlp.cli._common import (
    CONTEXT,
    apply_concurrency,
    context_option,
    fail,
    kube_api_limits,
    kube_api_limits_chosen,
    kube_api_options,
    kubeconfig_option,
    load_repo,
    write_manifest_folder,
)


@click.group("install", context_settings=CONTEXT)
def install() -> None:
    """Install mlp into the cluster it manages.

    \b
    Examples:
      mlp install render --repo-url https://github.com/acme/platform.git --registry registry.example/acme > mlp.yaml
      mlp install apply --registry registry.example/acme --component controller,webhooks
    """


_OPTIONS: list[Callable[[Any], Any]] = [
    click.option(
        "--repo",
        type=click.Path(file_okay=False, path_type=Path),
        default=".",
        show_default=True,
        help="The platform repository: its environments name the namespaces the controller may write to.",
    ),
    click.option("--repo-url", help="The URL the in-cluster components clone [default: the repository's origin]."),
    click.option("--namespace", default="mlp-system", show_default=True, help="Namespace mlp runs in."),
    click.option(
        "--component",
        "components",
        default="controller,webhooks,server",
        show_default=True,
        help="Comma-separated: controller, webhooks, server.",
    ),
    click.option(
        "--registry",
        envvar="MLP_IMAGE_REGISTRY",
        help="Registry holding the platform image: REGISTRY/mlp:VERSION [env MLP_IMAGE_REGISTRY].",
    ),
    click.option("--image", help="The full platform image reference (overrides --registry)."),
    click.option(
        "--state",
        type=click.Choice(["pvc", "ephemeral"]),
        default="pvc",
        show_default=True,
        help="pvc: a PersistentVolumeClaim for the state folder; ephemeral: an emptyDir (lost on restart).",
    ),
    click.option("--state-size", default="1Gi", show_default=True),
    click.option("--storage-class", help="StorageClass of the state volume [default: the cluster's]."),
    click.option(
        "--expose",
        type=click.Choice(["none", "ingress", "httproute"]),
        default="none",
        show_default=True,
        help="Publish the webhook receiver through an Ingress or a Gateway API HTTPRoute.",
    ),
    click.option("--host", help="Host name of the webhook receiver (with --expose)."),
    click.option("--ingress-class", help="IngressClass (with --expose ingress)."),
    click.option("--gateway", help="NAMESPACE/NAME of the Gateway (with --expose httproute)."),
    click.option("--interval", type=int, default=60, show_default=True, help="The controller's sync interval (s)."),
]


def install_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """What `render` and `apply` both take: the components, the image, the state volume, exposure."""
    for option in reversed(_OPTIONS):
        f = option(f)
    return f


def _settings(options: dict[str, Any], *, need_image: bool = True) -> Any:
    from mlp.install import InstallOptions

    repo: Path = options.pop("repo")
    _, result = load_repo(repo)
    namespaces = tuple(
        env.spec.target.namespace
        for env in result.specs.environments.values()
        if env.spec.target.kind == "kubernetes" and env.spec.target.namespace
    )
    url = options.pop("repo_url") or _origin(repo)
    if not url:
        fail(f"{repo}: no --repo-url given and the repository has no origin remote")
    if need_image and not options["image"] and not options["registry"]:
        fail("say where the platform image is: --registry REGISTRY (REGISTRY/mlp:VERSION) or --image REF")
    components = tuple(c.strip() for c in options.pop("components").split(",") if c.strip())
    return InstallOptions(repo_url=url, components=components, environment_namespaces=namespaces, **options)


def _render(settings: Any) -> list[dict[str, Any]]:
    from mlp.install import InstallError, render_install

    try:
        return render_install(settings)
    except InstallError as exc:
        fail(str(exc))


@install.command("render", context_settings=CONTEXT)
@install_options
@click.option("-o", "--output", "fmt", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True)
@click.option(
    "--kustomize",
    "kustomize_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write a Kustomize base (one file per object plus kustomization.yaml) into this folder.",
)
def render(fmt: str, kustomize_dir: Path | None, **options: Any) -> None:
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
    from mlp.render.yamlio import dump_all

    docs = _render(_settings(options, need_image=kustomize_dir is None))
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


@install.command("apply", context_settings=CONTEXT)
@install_options
@click.option(
    "--prune/--no-prune",
    default=True,
    show_default=True,
    help="Delete objects an earlier install applied that this one no longer renders.",
)
@click.option("--dry-run", is_flag=True, help="Send every change as a server-side dry run; nothing is persisted.")
@click.option("-o", "--output", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@kubeconfig_option
@context_option
@kube_api_options
def apply(prune: bool, dry_run: bool, fmt: str, kubeconfig: str | None, context: str | None, **options: Any) -> None:
    """Apply the install manifests with the engine: server-side apply, inventory, prune.

    The same pipeline as `mlp apply`: only changed objects are written (a second apply makes
    no writes), the inventory (`mlp-inventory-mlp-install` in mlp's namespace) records what
    was applied, and objects a later install no longer renders are pruned. Exit 0 on
    success, 2 on error.

    \b
    Examples:
      mlp install apply --registry registry.example/acme --dry-run
      mlp install apply --registry registry.example/acme --component controller,webhooks -o json
    """
    from mlp import __version__
    from mlp.engine import Policy, converge
    from mlp.install import INSTALL_ENVIRONMENT
    from mlp.plan.core import PlanRefused
    from mlp.plan.format import plan_to_text
    from mlp.targets.base import TargetError
    from mlp.targets.kubernetes import KubernetesTarget

    settings = _settings(options)
    docs = _render(settings)
    qps, burst = kube_api_limits()
    try:
        cluster = KubernetesTarget.from_environment(
            kubeconfig, context=context, qps=qps, burst=burst, server_fairness=not kube_api_limits_chosen()
        )
    except TargetError as exc:
        fail(str(exc))
    # inventory and writes in mlp's namespace; listing across the namespaces the install spans
    target = cluster.scoped(settings.namespace, list_all_namespaces=True)
    policy = Policy(prune=prune, dry_run=dry_run, concurrency=apply_concurrency(cluster))
    try:
        result = converge(docs, INSTALL_ENVIRONMENT, target, policy, revision=__version__)
    except (TargetError, PlanRefused) as exc:
        fail(str(exc))
    changes = result.changes
    if fmt == "json":
        click.echo(
            json.dumps(changes.to_dict() if changes is not None else {"ok": True, "changes": []}, indent=2, default=str)
        )
    else:
        click.echo(plan_to_text(result.plan, color=False), nl=False)
        if changes is not None:
            click.echo(changes.summary(), err=True)
    if changes is not None and not changes.ok:
        fail(f"install apply failed at {changes.failed}: {changes.error}")


def _origin(repo: Path) -> str | None:
    try:
        import git

        return str(git.Repo(repo, search_parent_directories=True).remotes.origin.url)
    except Exception:  # no Git, no repository, no origin: the caller asks for --repo-url
        return None


def _write_kustomize(folder: Path, docs: list[dict[str, Any]]) -> None:
    from mlp.render.yamlio import dump as dump_one

    names = write_manifest_folder(folder, docs)
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": names}
    try:
        (folder / "kustomization.yaml").write_text(dump_one(kustomization), encoding="utf-8")
    except OSError as exc:
        fail(f"{folder}: cannot write: {exc.strerror or exc}")
