"""`mlp install render`: the platform's own manifests, least-privilege RBAC, applied to the API server
stand-in (which checks every object against the official client's schemas), and every command in
them a real `mlp` command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from standins import kube_apiserver as kube

from mlp.cli.main import cli
from mlp.install import ENGINE_VERBS, InstallError, InstallOptions, render_install

REPO_ROOT = Path(__file__).resolve().parents[1]
URL = "https://example.com/acme/platform.git"


def _render(*args: str) -> list[dict[str, Any]]:
    res = CliRunner().invoke(
        cli, ["install", "render", "--repo", str(REPO_ROOT), "--repo-url", URL, "-o", "json", *args]
    )
    assert res.exit_code == 0, res.output
    return list(json.loads(res.output)["items"])


def _by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_rbac_is_least_privilege_and_names_exactly_the_environment_namespaces() -> None:
    docs = _render("--registry", "registry.example/acme")
    cluster_roles = _by_kind(docs, "ClusterRole")
    assert [r["metadata"]["name"] for r in cluster_roles] == ["mlp-controller-discovery"]
    assert cluster_roles[0]["rules"] == [
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["get", "list"]}
    ]
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in _by_kind(docs, "Role")}
    # the example repository's kubernetes environments: staging and prod (dev is local)
    assert sorted(ns for ns, name in roles if name == "mlp-controller") == ["ml-prod", "ml-staging"]
    for role in roles.values():
        for rule in role["rules"]:
            assert set(rule["verbs"]) <= set(ENGINE_VERBS) | {"update"}, rule
            assert "secrets" not in rule["resources"] and "*" not in rule["resources"], rule
            assert "*" not in rule["verbs"] and "*" not in rule["apiGroups"], rule
    leader = roles[("mlp-system", "mlp-controller-leader")]
    assert {"update"} <= {v for r in leader["rules"] for v in r["verbs"]}
    bindings = _by_kind(docs, "RoleBinding") + _by_kind(docs, "ClusterRoleBinding")
    assert {s["name"] for b in bindings for s in b["subjects"]} == {"mlp-controller"}


def test_every_component_runs_restricted_with_probes_and_its_own_service_account() -> None:
    docs = _render("--registry", "registry.example/acme", "--expose", "ingress", "--host", "mlp.example.com")
    deployments = {d["metadata"]["name"]: d for d in _by_kind(docs, "Deployment")}
    assert set(deployments) == {"mlp-controller", "mlp-webhooks", "mlp-server"}
    accounts = {d["metadata"]["name"] for d in _by_kind(docs, "ServiceAccount")}
    for name, dep in deployments.items():
        pod = dep["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == name and name in accounts
        assert pod["securityContext"]["runAsNonRoot"] is True
        (container,) = pod["containers"]
        assert container["image"] == "registry.example/acme/mlp:0.1.0"
        sc = container["securityContext"]
        assert (
            sc["readOnlyRootFilesystem"]
            and not sc["allowPrivilegeEscalation"]
            and sc["capabilities"]["drop"] == ["ALL"]
        )
        assert container["readinessProbe"]["httpGet"]["path"] and container["livenessProbe"]["httpGet"]["path"]
        assert container["resources"]["requests"]
    assert "--leader-elect" in deployments["mlp-controller"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [p["metadata"]["name"] for p in _by_kind(docs, "PodDisruptionBudget")] == ["mlp-server"]
    assert _by_kind(docs, "Ingress")[0]["spec"]["rules"][0]["host"] == "mlp.example.com"
    policies = {p["metadata"]["name"] for p in _by_kind(docs, "NetworkPolicy")}
    assert policies == {"mlp-default-deny-ingress", "mlp-controller", "mlp-webhooks", "mlp-server"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"components": ("controller", "ui")}, "unknown component"),
        ({"expose": "ingress"}, "needs --host"),
        ({"expose": "httproute", "host": "h"}, "needs --gateway"),
        ({"expose": "ingress", "host": "h", "components": ("controller",)}, "add the webhooks component"),
    ],
)
def test_bad_options_are_one_clear_error(options: dict[str, Any], message: str) -> None:
    with pytest.raises(InstallError, match=message):
        render_install(InstallOptions(URL, **options))


def test_no_registry_no_image_is_refused_rather_than_a_made_up_reference() -> None:
    res = CliRunner().invoke(cli, ["install", "render", "--repo", str(REPO_ROOT), "--repo-url", URL])
    assert res.exit_code == 2
    assert "--registry" in res.output and "Traceback" not in res.output


def test_the_kustomize_base_under_deploy_is_current(tmp_path: Path) -> None:
    out = tmp_path / "base"
    res = CliRunner().invoke(
        cli, ["install", "render", "--repo", str(REPO_ROOT), "--repo-url", URL, "--kustomize", str(out)]
    )
    assert res.exit_code == 0, res.output
    shipped = REPO_ROOT / "deploy" / "base"
    assert sorted(p.name for p in shipped.iterdir()) == sorted(p.name for p in out.iterdir())
    for path in out.iterdir():
        assert (shipped / path.name).read_text() == path.read_text(), (
            f"deploy/base/{path.name} is stale: regenerate it (deploy/README.md)"
        )


@pytest.fixture
def standin() -> Iterator[Any]:
    api = kube.KubeApiServer(namespaces=("default", "ml-staging", "ml-prod")).start()
    api.install(
        kube.Resource(
            "gateway.networking.k8s.io",
            "v1",
            "httproutes",
            "HTTPRoute",
            singular="httproute",
            custom=True,
            schema_factory=lambda: kube.ANY,
        )
    )
    yield api
    api.stop()


def _writes(api: Any) -> list[str]:
    with api.lock:
        return [
            f"{r.method} {r.path}"
            for r in api.requests
            if r.method in ("PATCH", "POST", "PUT", "DELETE") and "dryRun" not in r.query
        ]


def test_install_apply_is_clean_a_second_apply_writes_nothing_and_removal_prunes(standin: Any, tmp_path: Path) -> None:
    """`mlp install apply` through the engine: SSA, inventory, zero writes when nothing changed, prune."""
    kubeconfig = str(kube.write_kubeconfig(tmp_path / "kubeconfig", standin.url))
    args = ["install", "apply", "--repo", str(REPO_ROOT), "--repo-url", URL, "--registry", "registry.example/acme"]
    args += ["--expose", "httproute", "--host", "mlp.example.com", "--gateway", "infra/public"]
    args += ["--kubeconfig", kubeconfig, "-o", "json"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    docs = _render(
        "--registry",
        "registry.example/acme",
        "--expose",
        "httproute",
        "--host",
        "mlp.example.com",
        "--gateway",
        "infra/public",
    )
    for doc in docs:  # every object exists, as rendered (the stand-in checks each against its schema)
        assert _version(standin, doc)
    inventory = standin.get_object("", "configmaps", "mlp-system", "mlp-inventory-mlp-install")
    assert inventory is not None and len(json.loads(inventory["data"]["inventory"])) == len(docs)

    before = _writes(standin)
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert _writes(standin)[len(before) :] == [], "a second install apply wrote"

    # the server component dropped: its objects, and only those, are pruned
    smaller = [*args, "--component", "controller,webhooks"]
    mark = len(_writes(standin))
    pruned = CliRunner().invoke(cli, smaller)
    assert pruned.exit_code == 0, pruned.output
    deletes = [w for w in _writes(standin)[mark:] if w.startswith("DELETE")]
    assert deletes and all("mlp-server" in w for w in deletes), deletes
    gone = standin.get_object("apps", "deployments", "mlp-system", "mlp-server")
    assert gone is None or gone["metadata"].get("deletionTimestamp"), "the pruned Deployment is not being deleted"
    assert standin.get_object("apps", "deployments", "mlp-system", "mlp-controller") is not None


def _key(doc: dict[str, Any]) -> tuple[str, str, str]:
    return doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"]


def _version(api: Any, doc: dict[str, Any]) -> str:
    group = doc["apiVersion"].rpartition("/")[0]
    res = next(r for r in api.resources if r.group == group and r.kind == doc["kind"])
    obj = api.get_object(group, res.plural, doc["metadata"].get("namespace", ""), doc["metadata"]["name"])
    assert obj is not None, doc["metadata"]
    return str(obj["metadata"]["resourceVersion"])


def _platform_image(image: str) -> bool:
    return image.rpartition("/")[2].split(":")[0] == "mlp"


def _deployment_commands(docs: list[dict[str, Any]]) -> list[list[str]]:
    """The args of every container that runs the platform image (Deployments, CronJobs, Jobs)."""
    commands = []
    for doc in docs:
        spec = doc.get("spec", {})
        pod = spec.get("template", {}).get("spec") or spec.get("jobTemplate", {}).get("spec", {}).get(
            "template", {}
        ).get("spec")
        for container in (pod or {}).get("containers", []):
            if _platform_image(container.get("image", "")):
                commands.append(list(container["args"]))
    return commands


def _rendered_environment(env: str) -> list[dict[str, Any]]:
    res = CliRunner().invoke(cli, ["render", "--env", env, "--repo", str(REPO_ROOT), "-o", "json"])
    assert res.exit_code == 0, res.output
    return list(json.loads(res.output)["items"])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_rendered_command_is_a_real_command_of_a_freshly_installed_wheel() -> None:
    """Build the wheel, install it into a fresh venv, run `mlp ARGS --help` as a non-root user."""
    docs = _render("--registry", "registry.example/acme")
    commands = _deployment_commands(docs)
    assert len(commands) == 3
    # and every object the environments render to run the platform image (monitor runners, jobs)
    for env in ("staging", "prod"):
        commands += _deployment_commands(_rendered_environment(env))
    assert any(args[:2] == ["monitor", "run"] for args in commands), commands
    work = Path(tempfile.mkdtemp(prefix="mlp-wheel-"))
    try:
        os.chmod(work, 0o755)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "--wheel-dir",
                str(work / "dist"),
                str(REPO_ROOT),
            ],
            check=True,
        )
        (wheel,) = (work / "dist").glob("*.whl")
        subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True)
        extras = (
            "controller,webhooks,kubernetes,api"  # what --help needs: commands import their heavy parts when they run
        )
        subprocess.run(
            [str(work / "venv" / "bin" / "pip"), "install", "--quiet", f"{wheel}[{extras}]"],
            check=True,
        )
        runner: list[str] = []
        if os.geteuid() == 0 and shutil.which("setpriv"):
            runner = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
        for args in commands:
            out = subprocess.run(
                [*runner, str(work / "venv" / "bin" / "mlp"), *args, "--help"],
                capture_output=True,
                text=True,
                env={"PATH": os.environ["PATH"], "HOME": str(work)},
                cwd=work,
            )
            assert out.returncode == 0, (args, out.stderr)
            assert "Usage: mlp" in out.stdout
    finally:
        shutil.rmtree(work, ignore_errors=True)


SA_USER = "system:serviceaccount:mlp-system:mlp-controller"


def _grant_rbac(api: Any, docs: list[dict[str, Any]]) -> None:
    """RBAC evaluation for the stand-in: each binding of the rendered roles becomes the grants it gives."""
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in docs}
    for binding in docs:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        ref = binding["roleRef"]
        ns = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        role = roles[(ref["kind"], ns if ref["kind"] == "Role" else None, ref["name"])]
        for subject in binding["subjects"]:
            user = f"system:serviceaccount:{subject['namespace']}:{subject['name']}"
            for rule in role["rules"]:
                for group in rule["apiGroups"]:
                    api.grant(user, rule["verbs"], group, rule["resources"], ns)


def test_rbac_lets_the_controller_reconcile_its_namespaces_and_nothing_else(tmp_path: Path) -> None:
    from mlp.engine import Policy, reconcile
    from mlp.plan.target import TargetError
    from mlp.sources.directory import read_directory
    from mlp.targets.kubernetes import KubernetesTarget

    api = kube.KubeApiServer(namespaces=("default", "mlp-system", "ml-staging", "ml-prod"), prometheus_operator=True)
    api.start()
    try:
        _grant_rbac(api, _render("--registry", "registry.example/acme"))
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig", api.url)
        cluster = KubernetesTarget.from_kubeconfig(kubeconfig, impersonate=SA_USER)
        snapshot = read_directory(REPO_ROOT)
        for env, ns in (("staging", "ml-staging"), ("prod", "ml-prod")):
            target = cluster.scoped(ns)  # as the controller builds it: one client, one namespace each
            result = reconcile(snapshot, env, target, Policy(prune=True))
            assert result.changes is not None and result.changes.ok, result.changes
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x", "namespace": "ml-staging"}}
        with pytest.raises(TargetError) as denied:
            cluster.apply(secret)
        assert denied.value.status == 403
        elsewhere = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "default"}}
        with pytest.raises(TargetError) as denied:
            cluster.apply(elsewhere)
        assert denied.value.status == 403
        assert any(
            r.user == SA_USER and r.method == "PATCH" and "/namespaces/ml-prod/" in r.path for r in api.requests
        ), "the controller never wrote as its service account"
    finally:
        api.stop()


@pytest.mark.skipif(
    not os.environ.get("MLP_TEST_KUBECONFIG") or shutil.which("kubectl") is None,
    reason="needs a real API server (MLP_TEST_KUBECONFIG) and kubectl",
)
def test_rbac_against_a_real_api_server_with_kubectl_auth_can_i(tmp_path: Path) -> None:
    kubeconfig = os.environ["MLP_TEST_KUBECONFIG"]
    docs = _render("--registry", "registry.example/acme")
    manifest = tmp_path / "install.json"
    manifest.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
    kubectl = ["kubectl", "--kubeconfig", kubeconfig]
    subprocess.run([*kubectl, "apply", "--server-side", "-f", str(manifest)], check=True)

    def can(verb: str, resource: str, namespace: str) -> bool:
        out = subprocess.run(
            [*kubectl, "auth", "can-i", verb, resource, "-n", namespace, "--as", SA_USER],
            capture_output=True,
            text=True,
        )
        return out.stdout.strip() == "yes"

    for ns in ("ml-staging", "ml-prod"):
        assert can("patch", "inferenceservices.serving.kserve.io", ns)
        assert can("delete", "deployments.apps", ns)
        assert not can("get", "secrets", ns)
    assert not can("create", "configmaps", "default")
    assert not can("get", "secrets", "mlp-system")
