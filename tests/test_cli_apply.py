"""mlp render / diff / apply end to end, over real HTTP.

The cluster is the Kubernetes API server stand-in (tests/standins/kube_apiserver.py) unless
MLP_TEST_KUBECONFIG names a real cluster (kind, k3d) with KServe and the Prometheus Operator
CRDs installed and namespace ml-staging present: then the same tests run against it, and the
assertions that need the stand-in's request log (write counts, RBAC setup) are skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from mlp.cli.main import cli

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]
REAL = os.environ.get("MLP_TEST_KUBECONFIG")
NS = "ml-staging"
ISVC = ("serving.kserve.io", "inferenceservices")
WRITES = {"POST", "PUT", "PATCH", "DELETE"}


@dataclass
class Cluster:
    kubeconfig: Path
    api: Any | None  # the stand-in, or None for a real cluster

    def writes(self) -> list[str]:
        assert self.api is not None
        # the inventory ConfigMap is written after an apply that changed what mlp owns (see inventory_writes)
        return [
            f"{r.method} {r.path}"
            for r in self.api.requests
            if r.method in WRITES and "/configmaps/mlp-inventory-" not in r.path
        ]

    def inventory_writes(self) -> list[str]:
        assert self.api is not None
        return [
            f"{r.method} {r.path}"
            for r in self.api.requests
            if "/configmaps/mlp-inventory-" in r.path and r.method in WRITES
        ]

    def clear(self) -> None:
        if self.api is not None:
            self.api.requests.clear()

    def get(self, path: str) -> dict[str, Any]:
        return self._http("GET", path).json()

    def _http(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """A raw request with the kubeconfig's credentials (token or client certificate, as kind uses)."""
        from kubernetes import client, config

        cfg = client.Configuration()
        config.load_kube_config(
            config_file=str(self.kubeconfig),
            client_configuration=cfg,
            persist_config=False,
            context=os.environ.get("MLP_TEST_KUBE_CONTEXT") if self.api is None else None,
        )
        token = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
        headers = {"Authorization": token} if token else {}
        cert = (cfg.cert_file, cfg.key_file) if cfg.cert_file else None
        with httpx.Client(base_url=cfg.host, headers=headers, cert=cert, verify=cfg.ssl_ca_cert or False) as c:
            return c.request(method, path, **kw)

    def patch(self, path: str, body: dict[str, Any], manager: str) -> httpx.Response:
        return self._http(
            "PATCH",
            path,
            params={"fieldManager": manager},
            content=json.dumps(body),
            headers={"Content-Type": "application/merge-patch+json"},
        )

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return self._http("POST", path, json=body)


def _wipe_real_cluster(kubeconfig: Path) -> None:
    """Tests assume an empty namespace: remove what an earlier test left on a real cluster."""
    import time

    from mlp.engine.inventory import adopted_kinds
    from mlp.targets.base import ObjectRef, TargetError
    from mlp.targets.kubernetes import KubernetesTarget

    target = KubernetesTarget.from_kubeconfig(
        str(kubeconfig), context=os.environ.get("MLP_TEST_KUBE_CONTEXT"), namespace=NS
    )

    def leftovers() -> list[ObjectRef]:
        refs = [
            ObjectRef("v1", "ConfigMap", NS, n)
            for n in ("hand-made", "other-env")
            if target.get(ObjectRef("v1", "ConfigMap", NS, n)) is not None
        ]
        for env in ("staging", "prod"):
            for kind in [*adopted_kinds("kubernetes"), ("policy/v1", "PodDisruptionBudget")]:
                try:
                    refs += [ObjectRef.of(o) for o in target.list_owned(env, [kind])]
                except TargetError:
                    continue
        return refs

    deadline = time.monotonic() + 60
    while (refs := leftovers()) and time.monotonic() < deadline:
        for ref in refs:
            target.delete(ref)
        time.sleep(1)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    if REAL:
        _wipe_real_cluster(Path(REAL))
        yield Cluster(Path(REAL), None)
        _wipe_real_cluster(Path(REAL))
        return
    from standins import kube_apiserver as standin  # type: ignore[import-not-found]

    with standin.KubeApiServer(prometheus_operator=True, auto_gc=True) as api:
        kubeconfig = standin.write_kubeconfig(tmp_path / "kubeconfig", api.url)
        yield Cluster(kubeconfig, api)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A copy of the example platform repository."""
    out = tmp_path / "repo"
    for top in ("specs", "environments", "templates"):
        if (REPO / top).is_dir():
            shutil.copytree(REPO / top, out / top)
    return out


def mlp(*args: str, cluster: Cluster | None = None) -> Result:
    extra = ["--kubeconfig", str(cluster.kubeconfig)] if cluster is not None else []
    if cluster is not None and cluster.api is None and os.environ.get("MLP_TEST_KUBE_CONTEXT"):
        extra += ["--context", os.environ["MLP_TEST_KUBE_CONTEXT"]]
    return CliRunner().invoke(cli, [*args, *extra], catch_exceptions=False)


def _require_target() -> None:
    import mlp.targets.kubernetes  # noqa: F401  (a broken install fails here, it is not skipped)


ISVC_PATH = f"/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices"


def test_render_yaml_json_and_out(repo: Path, tmp_path: Path) -> None:
    yaml_out = mlp("render", "--env", "staging", "--repo", str(repo))
    assert yaml_out.exit_code == 0, yaml_out.output
    assert yaml_out.output.startswith("---\napiVersion: v1\nkind: ServiceAccount\n")
    as_json = json.loads(mlp("render", "--env", "staging", "--repo", str(repo), "--format", "json").output)
    assert as_json["apiVersion"] == "v1" and as_json["kind"] == "List"
    assert [o["kind"] for o in as_json["items"]].count("InferenceService") == 2
    out = tmp_path / "rendered"
    out.mkdir()
    (out / "12-inferenceservice-removed-model.yaml").write_text("stale")
    (out / "README.md").write_text("kept")
    res = mlp("render", "--env", "staging", "--repo", str(repo), "--out", str(out))
    assert res.exit_code == 0
    names = sorted(p.name for p in out.iterdir())
    assert names[0] == "01-serviceaccount-mlp-models.yaml" and len(names) == 9
    assert "README.md" in names and "12-inferenceservice-removed-model.yaml" not in names
    assert mlp("render", "--env", "staging", "--repo", str(repo)).output == yaml_out.output  # deterministic


def test_render_errors_are_located_one_liners(repo: Path) -> None:
    res = mlp("render", "--env", "nope", "--repo", str(repo))
    assert (
        res.exit_code == 2 and res.output.strip() == "error: unknown environment 'nope' (declared: dev, prod, staging)"
    )
    (repo / "environments" / "staging.yaml").write_text(
        (repo / "environments" / "staging.yaml").read_text().replace("version: 2\n", "version: 9\n", 1)
    )
    res = mlp("render", "--env", "staging", "--repo", str(repo))
    assert res.exit_code == 2
    assert "environments/staging.yaml:" in res.output and "Traceback" not in res.output


def test_apply_is_idempotent_and_diff_gates(repo: Path, cluster: Cluster) -> None:
    _require_target()
    before = mlp("diff", "--env", "staging", "--repo", str(repo), "--no-color", cluster=cluster)
    assert before.exit_code == 1, before.output
    assert "create InferenceService/ml-staging/iris" in before.output
    res = mlp("apply", "--env", "staging", "--repo", str(repo), "--yes", cluster=cluster)
    assert res.exit_code == 0, res.output
    assert "[" in res.output and "created" in res.output  # progress lines
    iris = cluster.get(f"{ISVC_PATH}/iris")
    assert iris["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert iris["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "mlp"

    cluster.clear()
    again = mlp("apply", "--env", "staging", "--repo", str(repo), "--yes", cluster=cluster)
    assert again.exit_code == 0, again.output
    assert "No changes." in again.output
    if cluster.api is not None:
        assert cluster.writes() == []  # zero write calls
        assert all(r.method == "GET" for r in cluster.api.requests)
    after = mlp("diff", "--env", "staging", "--repo", str(repo), cluster=cluster)
    assert after.exit_code == 0, after.output
    md = mlp("diff", "--env", "staging", "--repo", str(repo), "--format", "markdown", cluster=cluster)
    assert md.exit_code == 0 and "**No changes.**" in md.output


def test_hand_edit_shows_in_diff_and_apply_reverts_it(repo: Path, cluster: Cluster) -> None:
    _require_target()
    assert mlp("apply", "--env", "staging", "--repo", str(repo), "--yes", cluster=cluster).exit_code == 0
    edit = cluster.patch(f"{ISVC_PATH}/iris", {"spec": {"predictor": {"minReplicas": 7}}}, manager="kubectl-edit")
    assert edit.status_code == 200, edit.text
    diff = mlp("diff", "--env", "staging", "--repo", str(repo), "--no-color", cluster=cluster)
    assert diff.exit_code == 1
    assert "update InferenceService/ml-staging/iris (drift)" in diff.output
    assert "-    minReplicas: 7\n+    minReplicas: 1" in diff.output
    data = json.loads(mlp("diff", "--env", "staging", "--repo", str(repo), "--format", "json", cluster=cluster).output)
    (upd,) = [i for i in data["items"] if i["action"] == "update"]
    assert upd["diffs"] == [{"path": "spec.predictor.minReplicas", "op": "change", "old": 7, "new": 1}]
    cluster.clear()
    res = mlp("apply", "--env", "staging", "--repo", str(repo), "--yes", cluster=cluster)
    assert res.exit_code == 0, res.output
    assert cluster.get(f"{ISVC_PATH}/iris")["spec"]["predictor"]["minReplicas"] == 1
    if cluster.api is not None:
        assert cluster.writes() == [f"PATCH {ISVC_PATH}/iris"]  # exactly the drifted object
    assert mlp("diff", "--env", "staging", "--repo", str(repo), cluster=cluster).exit_code == 0


def test_prune_deletes_exactly_the_removed_models_objects(repo: Path, cluster: Cluster) -> None:
    _require_target()
    assert mlp("apply", "--env", "staging", "--repo", str(repo), "--yes", cluster=cluster).exit_code == 0
    # objects mlp does not own in the same namespace: hand-made, and another environment's
    hand = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "hand-made", "namespace": NS},
        "data": {"a": "b"},
    }
    other = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "other-env",
            "namespace": NS,
            "labels": {"app.kubernetes.io/managed-by": "mlp", "mlp.dev/environment": "prod", "mlp.dev/spec": "Model.x"},
        },
    }
    for obj in (hand, other):
        assert cluster.post(f"/api/v1/namespaces/{NS}/configmaps", obj).status_code == 201
    env_file = repo / "environments" / "staging.yaml"
    text = env_file.read_text()
    start = text.index("    breast-cancer:")
    env_file.write_text(text[:start])  # breast-cancer is the last deployment in the file
    plan = mlp("diff", "--env", "staging", "--repo", str(repo), "--no-color", cluster=cluster)
    assert plan.exit_code == 0, plan.output  # without --prune the orphan is reported, not changed
    assert "orphan InferenceService/ml-staging/breast-cancer" in plan.output
    cluster.clear()
    res = mlp("apply", "--env", "staging", "--repo", str(repo), "--prune", "--yes", cluster=cluster)
    assert res.exit_code == 0, res.output
    if cluster.api is not None:
        assert cluster.writes() == [f"DELETE {ISVC_PATH}/breast-cancer"]
        assert cluster.inventory_writes() == [f"PATCH /api/v1/namespaces/{NS}/configmaps/mlp-inventory-staging"]
    names = {
        o["metadata"]["name"] for o in cluster.get(ISVC_PATH)["items"] if not o["metadata"].get("deletionTimestamp")
    }
    assert names == {"iris"}
    cms = {o["metadata"]["name"] for o in cluster.get(f"/api/v1/namespaces/{NS}/configmaps")["items"]}
    assert {"hand-made", "other-env", "iris-drift-monitor"} <= cms
    assert mlp("diff", "--env", "staging", "--repo", str(repo), "--prune", cluster=cluster).exit_code == 0


def test_refuses_to_prune_everything(repo: Path, cluster: Cluster) -> None:
    _require_target()
    assert mlp("apply", "--env", "staging", "--repo", str(repo), "--yes", cluster=cluster).exit_code == 0
    env_file = repo / "environments" / "staging.yaml"
    text = env_file.read_text()
    text = text[: text.index("  deployments:")] + "  deployments: {}\n"
    env_file.write_text(text)
    for monitor in (repo / "specs" / "monitors").glob("*.yaml"):
        monitor.unlink()
    (repo / "environments" / "staging.yaml").write_text(text.replace("  storageSecret: mlp-s3-credentials\n", ""))
    cluster.clear()
    res = mlp("apply", "--env", "staging", "--repo", str(repo), "--prune", "--yes", cluster=cluster)
    assert res.exit_code == 2 and "refusing to delete all" in res.output and "--allow-empty" in res.output
    if cluster.api is not None:
        assert cluster.writes() == []


def test_template_override_errors_stop_before_the_cluster(repo: Path, cluster: Cluster) -> None:
    override = repo / "templates" / "kubernetes" / "inferenceservice.yaml.j2"
    override.parent.mkdir(parents=True, exist_ok=True)
    for body, where in [
        (
            "apiVersion: v1\nkind: X\n{% for x in %}\n",
            "templates/kubernetes/inferenceservice.yaml.j2:3: template syntax error",
        ),
        (
            "apiVersion: v1\nkind: X\nmetadata:\n  name: {{ isvc.nmae }}\n",
            "templates/kubernetes/inferenceservice.yaml.j2:4: undefined variable",
        ),
    ]:
        override.write_text(body)
        cluster.clear()
        for cmd in (["apply", "--yes"], ["diff"], ["render"]):
            res = mlp(
                cmd[0],
                "--env",
                "staging",
                "--repo",
                str(repo),
                *cmd[1:],
                cluster=cluster if cmd[0] != "render" else None,
            )
            assert res.exit_code == 2, res.output
            assert res.output.startswith(f"error: {where}"), res.output
            assert len(res.output.strip().splitlines()) == 1
        if cluster.api is not None:
            assert cluster.api.requests == []  # nothing was even read, let alone applied


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_cluster_is_one_line_exit_2(repo: Path, tmp_path: Path) -> None:
    _require_target()
    from standins.kube_apiserver import write_kubeconfig

    kubeconfig = write_kubeconfig(tmp_path / "dead", f"http://127.0.0.1:{_free_port()}")
    for cmd in (["diff"], ["apply", "--yes"]):
        res = CliRunner().invoke(
            cli,
            [cmd[0], "--env", "staging", "--repo", str(repo), *cmd[1:], "--kubeconfig", str(kubeconfig)],
            catch_exceptions=False,
        )
        assert res.exit_code == 2, res.output
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), res.output
        assert "Traceback" not in res.output


def test_forbidden_is_one_line_and_partial_apply_is_reported(repo: Path, tmp_path: Path) -> None:
    _require_target()
    if REAL:
        pytest.skip("needs the stand-in's RBAC helpers")
    from standins.kube_apiserver import KubeApiServer, write_kubeconfig

    with KubeApiServer(prometheus_operator=True) as api:
        api.add_user("nobody-token", "nobody")
        kubeconfig = write_kubeconfig(tmp_path / "nobody", api.url, token="nobody-token")
        res = CliRunner().invoke(
            cli,
            ["diff", "--env", "staging", "--repo", str(repo), "--kubeconfig", str(kubeconfig)],
            catch_exceptions=False,
        )
        assert res.exit_code == 2
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and "forbidden" in lines[0].lower(), res.output

        # may read everything and write core objects, but not InferenceServices
        api.add_user("partial-token", "partial")
        for group, resources in (
            ("", ["serviceaccounts", "configmaps", "services"]),
            ("apps", ["deployments"]),
            ("serving.kserve.io", ["inferenceservices"]),
            ("monitoring.coreos.com", ["prometheusrules", "servicemonitors"]),
        ):
            api.grant("partial", ["get", "list", "watch"], group, resources)
            if group != "serving.kserve.io":
                api.grant("partial", ["create", "patch", "update", "delete"], group, resources)
        kubeconfig = write_kubeconfig(tmp_path / "partial", api.url, token="partial-token")
        res = CliRunner().invoke(
            cli,
            ["apply", "--env", "staging", "--repo", str(repo), "--yes", "--kubeconfig", str(kubeconfig)],
            catch_exceptions=False,
        )
        assert res.exit_code == 2, res.output
        summary = next(line for line in res.output.splitlines() if line.startswith("applied before the failure: "))
        assert "objects (" in summary and "created ServiceAccount/ml-staging/mlp-models" in summary
        assert "forbidden" in res.output.lower()
        # both InferenceServices went out together (concurrent apply) and failed: PrometheusRule, ServiceMonitor
        assert "not attempted: 2" in res.output


def test_dry_run_persists_nothing(repo: Path, cluster: Cluster) -> None:
    _require_target()
    res = mlp("apply", "--env", "staging", "--repo", str(repo), "--dry-run", cluster=cluster)
    assert res.exit_code == 0, res.output
    assert "dry run:" in res.output
    assert cluster.get(ISVC_PATH)["items"] == [] or REAL
    assert mlp("diff", "--env", "staging", "--repo", str(repo), cluster=cluster).exit_code == 1


def test_apply_needs_yes_without_a_terminal(repo: Path, cluster: Cluster) -> None:
    _require_target()
    res = mlp("apply", "--env", "staging", "--repo", str(repo), cluster=cluster)
    assert res.exit_code == 2 and "pass --yes" in res.output


def test_conflict_with_another_manager_needs_force(repo: Path, cluster: Cluster) -> None:
    _require_target()
    assert mlp("apply", "--env", "staging", "--repo", str(repo), "--yes", cluster=cluster).exit_code == 0
    # someone else takes minReplicas, and the repository changes the same object (maxReplicas)
    assert (
        cluster.patch(
            f"{ISVC_PATH}/iris", {"spec": {"predictor": {"minReplicas": 2}}}, manager="kubectl-edit"
        ).status_code
        == 200
    )
    env_file = repo / "environments" / "staging.yaml"
    env_file.write_text(
        env_file.read_text().replace("minReplicas: 1, maxReplicas: 3", "minReplicas: 1, maxReplicas: 4")
    )
    res = mlp("apply", "--env", "staging", "--repo", str(repo), "--yes", cluster=cluster)
    assert res.exit_code == 2, res.output
    assert "kubectl-edit" in res.output and "--force-conflicts" in res.output, res.output
    res = mlp(
        "apply",
        "--env",
        "staging",
        "--repo",
        str(repo),
        "--yes",
        "--force-conflicts",
        "--format",
        "json",
        cluster=cluster,
    )
    assert res.exit_code == 0, res.output
    changes = json.loads(res.stdout)
    assert changes["ok"] and [d["ref"]["name"] for d in changes["done"]] == ["iris"]
    predictor = cluster.get(f"{ISVC_PATH}/iris")["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (1, 4)


def test_a_field_dropped_from_the_repository_is_removed(repo: Path, cluster: Cluster) -> None:
    _require_target()
    assert mlp("apply", "--env", "staging", "--repo", str(repo), "--yes", cluster=cluster).exit_code == 0
    assert cluster.get(f"{ISVC_PATH}/iris")["spec"]["predictor"]["scaleTarget"] == 10
    env_file = repo / "environments" / "staging.yaml"
    env_file.write_text(env_file.read_text().replace("metric: concurrency, target: 10}", "metric: concurrency}"))
    diff = mlp("diff", "--env", "staging", "--repo", str(repo), "--format", "json", cluster=cluster)
    assert diff.exit_code == 1
    (item,) = [i for i in json.loads(diff.output)["items"] if i["action"] != "unchanged"]
    assert {"path": "spec.predictor.scaleTarget", "op": "remove", "old": 10, "new": None} in item["diffs"]
    assert mlp("apply", "--env", "staging", "--repo", str(repo), "--yes", cluster=cluster).exit_code == 0
    assert "scaleTarget" not in cluster.get(f"{ISVC_PATH}/iris")["spec"]["predictor"]
    assert mlp("diff", "--env", "staging", "--repo", str(repo), cluster=cluster).exit_code == 0


def test_local_environment_apply_then_diff(tmp_path: Path) -> None:
    """A `local` environment goes through the serving helper's LocalTarget (the embedded runtime's state)."""
    import hashlib

    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    versions = ""
    for version, c in ((1, 1.0), (2, 10.0)):
        path = tmp_path / f"iris-{version}.joblib"
        joblib.dump(LogisticRegression(C=c, max_iter=500).fit(X, y), path)
        digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
        versions += f"    - {{version: {version}, uri: '{path.as_uri()}', digest: '{digest}'}}\n"
    repo = tmp_path / "repo"
    (repo / "specs").mkdir(parents=True)
    (repo / "environments").mkdir()
    inputs = ", ".join(f"{{name: {n}, type: float}}" for n in ("sl", "sw", "pl", "pw"))
    (repo / "specs" / "iris.yaml").write_text(
        "apiVersion: mlp.dev/v1\nkind: Model\nmetadata: {name: iris}\nspec:\n  framework: sklearn\n"
        f"  signature:\n    inputs: [{inputs}]\n    outputs: [{{name: species, type: int}}]\n"
        f"  versions:\n{versions}"
    )
    env_file = repo / "environments" / "dev.yaml"
    env_file.write_text(
        "apiVersion: mlp.dev/v1\nkind: Environment\nmetadata: {name: dev}\nspec:\n"
        "  target: {kind: local}\n  deployments:\n"
        "    iris: {version: 1, canary: {version: 2, steps: [20, 100]}}\n"
    )
    state = ["--repo", str(repo), "--state-dir", str(tmp_path / "state")]
    assert mlp("diff", "--env", "dev", *state).exit_code == 1
    res = mlp("apply", "--env", "dev", "--yes", *state)
    assert res.exit_code == 0, res.output
    assert "create ModelDeployment/local/iris ... created" in res.output
    assert mlp("diff", "--env", "dev", *state).exit_code == 0  # a fresh runtime restored from the state folder
    env_file.write_text(env_file.read_text().replace("steps: [20, 100]", "steps: [20, 100], traffic: 100"))
    diff = mlp("diff", "--env", "dev", "--format", "json", *state)
    assert diff.exit_code == 1
    (item,) = [i for i in json.loads(diff.output)["items"] if i["action"] == "update"]
    assert {"path": "spec.routes[0].weight", "op": "change", "old": 80, "new": 0} in item["diffs"]


def test_prune_with_foreground_deletion_pending(repo: Path, tmp_path: Path) -> None:
    """Until the garbage collector runs, a pruned object stays with deletionTimestamp: it is
    neither deleted again nor reported as a change."""
    _require_target()
    if REAL:
        pytest.skip("needs the stand-in's manual garbage collector")
    from standins.kube_apiserver import KubeApiServer, write_kubeconfig

    with KubeApiServer(prometheus_operator=True, auto_gc=False) as api:
        cluster = Cluster(write_kubeconfig(tmp_path / "kc", api.url), api)
        assert mlp("apply", "--env", "staging", "--repo", str(repo), "--yes", cluster=cluster).exit_code == 0
        env_file = repo / "environments" / "staging.yaml"
        text = env_file.read_text()
        env_file.write_text(text[: text.index("    breast-cancer:")])
        assert mlp("apply", "--env", "staging", "--repo", str(repo), "--prune", "--yes", cluster=cluster).exit_code == 0
        pending = cluster.get(f"{ISVC_PATH}/breast-cancer")
        assert (
            pending["metadata"].get("deletionTimestamp") and "foregroundDeletion" in pending["metadata"]["finalizers"]
        )
        cluster.clear()
        again = mlp("apply", "--env", "staging", "--repo", str(repo), "--prune", "--yes", cluster=cluster)
        assert again.exit_code == 0 and "No changes." in again.output
        assert cluster.writes() == []
        api.collect_garbage()
        assert cluster._http("GET", f"{ISVC_PATH}/breast-cancer").status_code == 404
