"""The engine's must-shows, over real HTTP to the API server stand-in (or a real cluster).

- A template override that adds a PodDisruptionBudget per InferenceService: applied once; an
  idle controller makes zero writes and zero audit rows over 10 intervals; deleting the
  controller's state folder and restarting neither orphans nor re-creates anything; removing
  the override prunes exactly those objects.
- `mlp status staging` shows what KServe serves (a recorded status: 100% to the latest
  revision) next to what the spec declares (a 10% canary), and marks the difference.
- The pipeline stages are called only by the engine (the grep property).

Runs against a real cluster when MLP_TEST_KUBECONFIG is set (namespace ml-staging must exist
and the policy/v1 API is built in there).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import git
import httpx
import pytest
from click.testing import CliRunner
from standins import kube_apiserver as standin
from test_controller import commit_all, make_platform_repo

from mlp.controller.reconciler import Reconciler
from mlp.controller.store import AuditLog, StateStore
from mlp.engine.inventory import inventory_name
from mlp.objects import ObjectRef
from mlp.sources.git import GitSource
from mlp.targets.kubernetes import KubernetesTarget

ENV, NS = "staging", "ml-staging"
ROOT = Path(__file__).resolve().parent.parent
PACKAGE_ISVC = ROOT / "mlp" / "render" / "templates" / "kubernetes" / "inferenceservice.yaml.j2"
WRITES = ("POST", "PUT", "PATCH", "DELETE")

PDB = """
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ isvc.name }}
  namespace: {{ env.namespace }}
  labels: {{ isvc.labels | json }}
spec:
  minAvailable: 1
  selector:
    matchLabels:
      serving.kserve.io/inferenceservice: {{ isvc.name }}
"""


class Cluster:
    def __init__(self, kubeconfig: str, api: Any = None) -> None:
        self.kubeconfig = kubeconfig
        self.api = api

    def target(self) -> KubernetesTarget:
        return KubernetesTarget.from_kubeconfig(self.kubeconfig, namespace=NS)

    def writes(self) -> int:
        """Writes the cluster received (the stand-in's request log; a real cluster: the target's count)."""
        assert self.api is not None
        return sum(1 for r in self.api.requests if r.method in WRITES and "dryRun" not in r.query)

    def names(self, target: KubernetesTarget, api_version: str, kind: str) -> set[str]:
        return {o["metadata"]["name"] for o in target.list_owned(ENV, [(api_version, kind)])}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    real = os.environ.get("MLP_TEST_KUBECONFIG")
    if real:
        yield Cluster(real)
        return
    api = standin.KubeApiServer(namespaces=("default", NS), prometheus_operator=True).start()
    api.install(
        standin.Resource(
            "policy",
            "v1",
            "poddisruptionbudgets",
            "PodDisruptionBudget",
            singular="poddisruptionbudget",
            short_names=("pdb",),
            custom=True,
            schema_factory=standin._permissive_crd,
        )
    )
    kubeconfig = standin.write_kubeconfig(tmp_path / "kubeconfig", api.url)
    try:
        yield Cluster(str(kubeconfig), api)
    finally:
        api.stop()


def _controller(repo: git.Repo, state: Path, cluster: Cluster) -> tuple[Reconciler, StateStore, KubernetesTarget]:
    target = cluster.target()
    store = StateStore(state)
    source = GitSource(str(repo.working_tree_dir), state / "git-cache")
    source.refresh(["main"])
    return Reconciler(source, lambda env, spec: target, store), store, target


def _audit_rows(state: Path) -> int:
    log = AuditLog(state)
    try:
        return len(log.events(env=ENV))
    finally:
        log.close()


@pytest.mark.skipif(bool(os.environ.get("MLP_TEST_KUBECONFIG")), reason="counts the stand-in's request log")
def test_an_override_kind_is_owned_idle_is_silent_restart_is_safe_and_removal_prunes_it(
    tmp_path: Path, cluster: Cluster
) -> None:
    repo = make_platform_repo(tmp_path / "platform")
    override = Path(repo.working_tree_dir or ".") / "templates" / "kubernetes" / "inferenceservice.yaml.j2"
    override.parent.mkdir(parents=True, exist_ok=True)
    override.write_text(PACKAGE_ISVC.read_text() + PDB)
    commit_all(repo, "a PodDisruptionBudget per InferenceService")

    state = tmp_path / "state"
    reconciler, store, target = _controller(repo, state, cluster)
    first = reconciler.step(ENV, reasons=["interval"])
    assert first.outcome == "applied", first.message
    isvcs = cluster.names(target, "serving.kserve.io/v1beta1", "InferenceService")
    pdbs = cluster.names(target, "policy/v1", "PodDisruptionBudget")
    assert pdbs == isvcs and len(pdbs) >= 2, (pdbs, isvcs)
    inventory = target.read_inventory(ENV)
    assert inventory is not None
    assert {r.name for r in inventory if r.kind == "PodDisruptionBudget"} == pdbs
    assert {r for r in store.inventory(ENV)} == {str(r) for r in inventory}, "mirrored in the state database"

    # idle: 10 intervals, zero writes, zero audit rows
    writes, rows = cluster.writes(), _audit_rows(state)
    for _ in range(10):
        assert reconciler.step(ENV, reasons=["interval"]).outcome == "synced"
    assert cluster.writes() == writes
    assert _audit_rows(state) == rows

    # lose the state folder, restart: nothing orphaned, nothing re-created, still silent
    store.close()
    shutil.rmtree(state)
    reconciler, store, target = _controller(repo, state, cluster)
    for _ in range(10):
        result = reconciler.step(ENV, reasons=["interval"])
        assert result.outcome == "synced", result.message
    assert cluster.writes() == writes, "a restart without state re-created nothing"
    assert _audit_rows(state) == 0
    status = store.load(ENV)
    assert status is not None and status.sync_status == "Synced"
    assert not [o for o in status.objects if o.sync_status != "Synced"], "nothing orphaned"
    assert any(o.kind == "PodDisruptionBudget" for o in status.objects)

    # remove the override: exactly the PDBs are pruned, nothing else is touched
    before = {
        kind: cluster.names(target, av, kind)
        for av, kind in (("serving.kserve.io/v1beta1", "InferenceService"), ("v1", "ServiceAccount"))
    }
    override.unlink()
    commit_all(repo, "drop the PodDisruptionBudgets")
    reconciler.source.refresh(["main"])  # type: ignore[attr-defined]
    deleted_before = [r for r in cluster.api.requests if r.method == "DELETE"]
    result = reconciler.step(ENV, reasons=["interval"])
    assert result.outcome == "applied", result.message
    deletes = [r.path for r in cluster.api.requests if r.method == "DELETE"][len(deleted_before) :]
    assert sorted(deletes) == sorted(f"/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/{name}" for name in pdbs), (
        deletes
    )
    cluster.api.collect_garbage()  # foreground deletion: the garbage collector finishes it
    assert cluster.names(target, "policy/v1", "PodDisruptionBudget") == set()
    for av, kind in (("serving.kserve.io/v1beta1", "InferenceService"), ("v1", "ServiceAccount")):
        assert cluster.names(target, av, kind) == before[kind]
    inventory = target.read_inventory(ENV)
    assert inventory is not None and not [r for r in inventory if r.kind == "PodDisruptionBudget"]
    events = AuditLog(state).events(env=ENV)
    assert [e.action for e in events] == ["prune"], [(e.action, e.objects) for e in events]
    assert len(events[0].objects) == len(pdbs)


def test_idle_check_on_a_cluster_without_optional_crds_stays_synced(tmp_path: Path) -> None:
    """A cluster without the Prometheus Operator (no ServiceMonitor CRD): the first run lists the kinds
    it may adopt, and the idle checks after it must skip the kinds the cluster does not serve, as
    the full list does, instead of reporting "cannot read live state" for ever."""
    api = standin.KubeApiServer(namespaces=("default", NS), prometheus_operator=False).start()
    try:
        cluster = Cluster(str(standin.write_kubeconfig(tmp_path / "kubeconfig", api.url)), api)
        repo = make_platform_repo(tmp_path / "platform")
        shutil.rmtree(Path(repo.working_tree_dir or ".") / "specs" / "monitors")  # monitors need the CRDs
        commit_all(repo, "no monitors on this cluster")
        reconciler, store, _ = _controller(repo, tmp_path / "state", cluster)
        first = reconciler.step(ENV, reasons=["interval"])
        assert first.outcome == "applied", first.message
        for _ in range(3):
            result = reconciler.step(ENV, reasons=["interval"])
            assert result.outcome == "synced", result.message
        status = store.load(ENV)
        assert status is not None and status.sync_status == "Synced", status.message
    finally:
        api.stop()


def test_first_run_adopts_labelled_objects_into_the_inventory(tmp_path: Path, cluster: Cluster) -> None:
    """Upgrading from label-only ownership: objects an older mlp applied are adopted, not re-created."""
    repo = make_platform_repo(tmp_path / "platform")
    reconciler, _, target = _controller(repo, tmp_path / "state", cluster)
    assert reconciler.step(ENV, reasons=["interval"]).outcome == "applied"
    # an older mlp wrote no inventory
    target.delete(ObjectRef("v1", "ConfigMap", NS, inventory_name(ENV)))
    if cluster.api is not None:
        cluster.api.collect_garbage()
    assert target.read_inventory(ENV) is None
    reconciler2, _, target2 = _controller(repo, tmp_path / "state2", cluster)
    result = reconciler2.step(ENV, reasons=["interval"])
    assert result.outcome == "synced", result.message  # nothing re-created
    inventory = target2.read_inventory(ENV)
    assert inventory is not None
    assert {r.name for r in inventory if r.kind == "InferenceService"} == cluster.names(
        target2, "serving.kserve.io/v1beta1", "InferenceService"
    )


@pytest.mark.skipif(bool(os.environ.get("MLP_TEST_KUBECONFIG")), reason="writes KServe's status subresource")
def test_status_shows_declared_and_observed_traffic_and_marks_the_difference(tmp_path: Path, cluster: Cluster) -> None:
    from mlp.cli.main import cli

    repo = make_platform_repo(tmp_path / "platform")
    state = tmp_path / "state"
    reconciler, store, _ = _controller(repo, state, cluster)
    assert reconciler.step(ENV, reasons=["interval"]).outcome == "applied"
    # what KServe wrote on a first create (recorded from a real cluster): 100% to the only revision
    body = {
        "status": {
            "url": f"http://iris.{NS}.example.com",
            "components": {
                "predictor": {
                    "traffic": [{"revisionName": "iris-predictor-00002", "percent": 100, "latestRevision": True}]
                }
            },
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "PredictorReady", "status": "True"}],
        }
    }
    answer = httpx.patch(
        f"{cluster.api.url}/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices/iris/status",
        json=body,
        headers={"Content-Type": "application/merge-patch+json", "Authorization": f"Bearer {cluster.api.admin_token}"},
    )
    assert answer.status_code == 200, answer.text
    assert reconciler.step(ENV, reasons=["interval"]).outcome == "synced"
    store.close()

    res = CliRunner().invoke(cli, ["status", ENV, "--state-dir", str(state)], catch_exceptions=False)
    lines = res.output.splitlines()
    iris = next(line for line in lines if line.startswith("iris "))
    assert re.search(r"v1: 90%, v2: 10%\s+v2: 100%\s+DIFFERS", iris), res.output
    cancer = next(line for line in lines if line.startswith("breast-cancer "))
    assert "DIFFERS" not in cancer  # KServe has not reported on it: nothing observed, nothing claimed
    assert "iris: observed traffic differs from declared" in res.output
    assert f"http://iris.{NS}.example.com" in res.output


def test_pipeline_stages_are_called_only_by_the_engine() -> None:
    """The grep property: render, plan and execute are called in mlp/engine only (none in the CLI,
    webhooks or controller), and the import contract holds with no exemptions."""
    stage_calls = re.compile(r"(?<![\w.])(make_plan|execute|render|resolve_deployments)\(|\.list_owned\(")
    found = []
    for folder in ("cli", "webhooks", "controller"):
        for path in sorted((ROOT / "mlp" / folder).rglob("*.py")):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if stage_calls.search(line) and not line.lstrip().startswith(("def ", "#")):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert found == []
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "ignore_imports" not in pyproject
    lint = shutil.which("lint-imports") or str(Path(os.sys.executable).parent / "lint-imports")
    if Path(lint).exists():
        out = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr


# --- the in-memory target and the engine without a cluster ---------------------------------------


def _obj(name: str, kind: str = "ConfigMap", env: str = ENV, data: str = "a") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {"app.kubernetes.io/managed-by": "mlp", "mlp.dev/environment": env},
        },
        "data": {"k": data},
    }


def test_memory_target_behaves_like_an_api_server() -> None:
    from mlp.testing import MemoryTarget

    target = MemoryTarget()
    created = target.apply(_obj("a"))
    assert created.action == "created"
    rv = created.live["metadata"]["resourceVersion"]
    again = target.apply(_obj("a"))
    assert again.action == "unchanged" and again.live["metadata"]["resourceVersion"] == rv
    ref = ObjectRef.of(created.live)
    target.set_status(ref, {"phase": "Ready"})
    changed = target.apply(_obj("a", data="b"))
    assert changed.action == "configured" and changed.live["status"] == {"phase": "Ready"}  # status survives apply
    assert int(changed.live["metadata"]["resourceVersion"]) > int(rv)
    target.apply(_obj("other-env", env="prod"))
    target.put({**_obj("unlabelled"), "metadata": {"name": "unlabelled", "namespace": NS}})
    assert [o["metadata"]["name"] for o in target.list_owned(ENV)] == ["a"]
    assert target.list_owned(ENV, [("v1", "Secret")]) == []
    assert target.apply(_obj("b"), dry_run=True).action == "created"
    assert target.get(ObjectRef("v1", "ConfigMap", NS, "b")) is None
    target.delete(ref)
    assert target.get(ref) is None and [v for v, _ in target.log] == ["apply", "apply", "apply", "delete"]


def test_engine_owns_and_prunes_an_added_kind_by_inventory_without_a_cluster(tmp_path: Path) -> None:
    """The same property as the stand-in test above, through the engine and the in-memory target."""
    from mlp.engine import Policy, reconcile
    from mlp.sources.directory import read_directory
    from mlp.testing import MemoryTarget

    repo = make_platform_repo(tmp_path / "platform")
    root = Path(repo.working_tree_dir or ".")
    override = root / "templates" / "kubernetes" / "inferenceservice.yaml.j2"
    override.parent.mkdir(parents=True, exist_ok=True)
    override.write_text(PACKAGE_ISVC.read_text() + PDB)
    target = MemoryTarget(namespace=NS)
    policy = Policy(prune=True)
    first = reconcile(read_directory(root), ENV, target, policy)
    assert first.changes is not None and first.changes.ok and first.adopted
    pdbs = {r.name for r in target.objects if r.kind == "PodDisruptionBudget"}
    assert len(pdbs) >= 2
    writes, inventories = target.writes, target.inventory_writes
    for _ in range(10):
        idle = reconcile(read_directory(root), ENV, target, policy)
        assert not idle.plan.has_changes and idle.changes is None
    assert (target.writes, target.inventory_writes) == (writes, inventories)
    override.unlink()
    gone = reconcile(read_directory(root), ENV, target, policy)
    assert gone.changes is not None
    assert sorted(str(c.ref) for c in gone.changes.done) == sorted(f"PodDisruptionBudget/{NS}/{n}" for n in pdbs)
    assert not [r for r in target.objects if r.kind == "PodDisruptionBudget"]
    assert not [r for r in target.inventories[ENV] if r.kind == "PodDisruptionBudget"]


def test_local_runtime_reports_its_live_split_as_observed(tmp_path: Path) -> None:
    from mlp.engine import observe_deployments
    from mlp.objects import ResolvedDeployment, Route
    from mlp.serving.runtime import Runtime
    from mlp.serving.testing import deployment, route, train_iris
    from mlp.targets.local import LocalTarget

    p1, d1 = train_iris(tmp_path / "1")
    p2, d2 = train_iris(tmp_path / "2", 0.1)
    runtime = Runtime(tmp_path / "state", payload_log=False)
    target = LocalTarget(runtime)
    target.apply(deployment("iris", [route(1, p1, d1, "stable", 70), route(2, p2, d2, "canary", 30)]))
    declared = ResolvedDeployment("iris", (Route("1", "stable", 90), Route("2", "canary", 10)))
    (seen,) = observe_deployments({"iris": declared}, target.list_owned("dev"))
    assert seen.observed is not None and seen.observed.traffic == {"1": 70, "2": 30}
    assert seen.declared == {"1": 90, "2": 10} and seen.differs
    same = ResolvedDeployment("iris", (Route("1", "stable", 70), Route("2", "canary", 30)))
    assert not observe_deployments({"iris": same}, target.list_owned("dev"))[0].differs
    # the inventory lives in the runtime's state folder: a new process finds it
    target.write_inventory("dev", [ObjectRef("mlp.dev/v1", "ModelDeployment", "local", "iris")])
    assert LocalTarget(Runtime(tmp_path / "state", payload_log=False)).read_inventory("dev") == [
        ObjectRef("mlp.dev/v1", "ModelDeployment", "local", "iris")
    ]
    runtime.close()


def test_a_kind_plugin_resolves_renders_and_owns_its_objects(tmp_path: Path) -> None:
    """The registration API the monitors / rollouts / feature-store kinds plug into."""
    from mlp.engine import KindPlugin, Policy, reconcile, register
    from mlp.engine.plugins import unregister
    from mlp.sources.directory import read_directory
    from mlp.testing import MemoryTarget

    repo = make_platform_repo(tmp_path / "platform")
    root = Path(repo.working_tree_dir or ".")
    template = root / "templates" / "kubernetes" / "model-card.yaml.j2"
    template.parent.mkdir(parents=True, exist_ok=True)
    template.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: '{{ card.name }}-card'}\ndata: {stable: '{{ card.stable }}'}\n"
    )
    seen: dict[str, Any] = {}

    def resolve(specs: Any, env: str) -> dict[str, str]:
        return {name: str(dep.version) for name, dep in specs.environments[env].spec.deployments.items()}

    def render(specs: Any, env: str, resolved: Any, emit: Any) -> None:
        seen.update(resolved)
        for name, stable in sorted(resolved.items()):
            emit("kubernetes/model-card.yaml.j2", f"Model.{name}", {"card": {"name": name, "stable": stable}})

    register(
        KindPlugin("model-cards", owned_kinds={"kubernetes": [("v1", "ConfigMap")]}, resolve=resolve, render=render)
    )
    try:
        target = MemoryTarget(namespace=NS)
        result = reconcile(read_directory(root), ENV, target, Policy(prune=True))
        assert result.resolved["model-cards"] == seen and seen
        cards = {r.name: o for r, o in target.objects.items() if r.name.endswith("-card")}
        assert sorted(cards) == sorted(f"{n}-card" for n in seen)
        card = next(iter(cards.values()))
        assert card["metadata"]["namespace"] == NS  # placed, stamped and owned like the package's own
        assert card["metadata"]["labels"]["mlp.dev/environment"] == ENV
        assert {r.name for r in target.inventories[ENV]} >= set(cards)
    finally:
        unregister("model-cards")
