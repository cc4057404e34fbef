"""Plan: normalization, projection, field diffs, ordering, pruning safety, execute, formats."""

from __future__ import annotations

import contextlib
import copy
import json
import threading
from typing import Any

import pytest

from mlp.plan import (
    MISSING,
    Action,
    PlanRefused,
    execute,
    make_plan,
    plan_to_dict,
    plan_to_json,
    plan_to_markdown,
    plan_to_text,
)
from mlp.plan.normalize import normalize, parse_quantity, project
from mlp.plan.target import ApplyResult
from mlp.render.stamp import content_hash, stamp
from mlp.targets.base import (
    ENV_LABEL,
    HASH_ANNOTATION,
    MANAGED_BY,
    REVISION_ANNOTATION,
    Manifest,
)
from mlp.testing import MemoryTarget

ENV = "staging"


def isvc(name: str, uri: str = "s3://m/1", min_replicas: int = 1, rev: str = "r1") -> Manifest:
    obj = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": "ml-staging"},
        "spec": {
            "predictor": {
                "minReplicas": min_replicas,
                "model": {
                    "modelFormat": {"name": "sklearn"},
                    "storageUri": uri,
                    "resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
                },
            }
        },
    }
    return stamp(obj, environment=ENV, spec=f"Model.{name}", revision=rev)


def sa(name: str = "mlp-models", rev: str = "r1") -> Manifest:
    obj = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": "ml-staging"},
        "secrets": [{"name": "storage"}],
    }
    return stamp(obj, environment=ENV, spec="Environment.staging", revision=rev)


def as_live(obj: Manifest, rv: str = "100") -> Manifest:
    """What an API server returns: server metadata, status, defaults and foreign labels added."""
    live = copy.deepcopy(obj)
    meta = live["metadata"]
    meta.update(
        uid="u-1",
        resourceVersion=rv,
        generation=1,
        creationTimestamp="2026-01-01T00:00:00Z",
        managedFields=[{"manager": "mlp", "operation": "Apply"}],
    )
    meta["labels"]["other.tool/label"] = "x"
    meta.setdefault("annotations", {})["kubectl.kubernetes.io/last-applied-configuration"] = "{}"
    if live["kind"] == "InferenceService":
        live["spec"]["predictor"]["model"]["protocolVersion"] = "v1"  # webhook default
        live["spec"]["predictor"]["model"]["resources"]["requests"]["cpu"] = "1000m"  # same quantity
        live["status"] = {"conditions": [{"type": "Ready", "status": "True"}]}
    return live


def test_live_projected_onto_desired_is_unchanged() -> None:
    desired = [sa(), isvc("iris"), isvc("breast-cancer")]
    live = [as_live(o) for o in desired]
    plan = make_plan(desired, live, environment=ENV)
    assert not plan.has_changes
    assert plan.counts() == {"create": 0, "update": 0, "delete": 0, "unchanged": 3}


def test_new_revision_with_same_content_is_unchanged() -> None:
    live = [as_live(isvc("iris", rev="old"))]
    plan = make_plan([isvc("iris", rev="new")], live, environment=ENV)
    assert plan.items[0].action is Action.UNCHANGED


def test_field_level_diff_of_a_changed_spec() -> None:
    live = [as_live(isvc("iris", uri="s3://m/1"))]
    plan = make_plan([isvc("iris", uri="s3://m/2")], live, environment=ENV)
    (item,) = plan.items
    assert item.action is Action.UPDATE and item.reason == "changed"
    paths = {d.path: (d.old, d.new) for d in item.diffs}
    assert paths.pop("spec.predictor.model.storageUri") == ("s3://m/1", "s3://m/2")
    # the content hash is compared too: it is what reveals a field the repository stopped setting
    assert list(paths) == [f'metadata.annotations["{HASH_ANNOTATION}"]']


def test_hand_edit_is_drift() -> None:
    live = as_live(isvc("iris"))
    live["spec"]["predictor"]["minReplicas"] = 5
    plan = make_plan([isvc("iris")], [live], environment=ENV)
    (item,) = plan.items
    assert item.action is Action.UPDATE and item.reason == "drift"
    assert [(d.path, d.old, d.new) for d in item.diffs] == [("spec.predictor.minReplicas", 5, 1)]


def test_removed_field_and_label_shown() -> None:
    desired = isvc("iris")
    live = as_live(desired)
    del live["spec"]["predictor"]["minReplicas"]
    live["metadata"]["labels"][ENV_LABEL] = ENV
    plan = make_plan([desired], [live], environment=ENV)
    (d,) = plan.items[0].diffs
    assert d.op == "add" and d.old is MISSING and d.new == 1


def test_create_order_and_deletes_last_in_reverse() -> None:
    live = [as_live(isvc("old")), as_live(sa("old-sa"))]
    desired = [isvc("iris"), sa()]
    desired.append(
        stamp(
            {
                "apiVersion": "monitoring.coreos.com/v1",
                "kind": "PrometheusRule",
                "metadata": {"name": "r", "namespace": "ml-staging"},
                "spec": {"groups": []},
            },
            environment=ENV,
            spec="Monitor.m",
            revision="r1",
        )
    )
    desired.append(
        stamp(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "c", "namespace": "ml-staging"},
                "data": {"a": "b"},
            },
            environment=ENV,
            spec="Monitor.m",
            revision="r1",
        )
    )
    plan = make_plan(desired, live, environment=ENV, prune=True, allow_empty=True)
    order = [(i.action.value, i.ref.kind) for i in plan.items]
    assert order == [
        ("create", "ServiceAccount"),
        ("create", "ConfigMap"),
        ("create", "InferenceService"),
        ("create", "PrometheusRule"),
        ("delete", "InferenceService"),
        ("delete", "ServiceAccount"),
    ]


def test_without_prune_orphans_are_listed_not_deleted() -> None:
    live = [as_live(isvc("iris")), as_live(isvc("old"))]
    plan = make_plan([isvc("iris")], live, environment=ENV)
    assert [i.action for i in plan.items] == [Action.UNCHANGED]
    assert [r.name for r in plan.orphans] == ["old"]
    assert not plan.has_changes


def test_prune_only_touches_owned_objects_of_this_environment() -> None:
    unowned = as_live(isvc("hand-made"))
    del unowned["metadata"]["labels"][MANAGED_BY]
    other_env = as_live(isvc("prod-one"))
    other_env["metadata"]["labels"][ENV_LABEL] = "prod"
    live = [as_live(isvc("iris")), as_live(isvc("old")), unowned, other_env]
    plan = make_plan([isvc("iris")], live, environment=ENV, prune=True)
    deleted = [i.ref.name for i in plan.items if i.action is Action.DELETE]
    assert deleted == ["old"]


def test_refuses_to_delete_everything() -> None:
    live = [as_live(isvc("iris")), as_live(sa())]
    with pytest.raises(PlanRefused, match="--allow-empty"):
        make_plan([], live, environment=ENV, prune=True)
    with pytest.raises(PlanRefused):  # renaming everything also deletes everything that runs
        make_plan([isvc("other")], live, environment=ENV, prune=True)
    plan = make_plan([], live, environment=ENV, prune=True, allow_empty=True)
    assert plan.counts()["delete"] == 2
    assert not make_plan([], live, environment=ENV, prune=False).has_changes  # no prune: nothing deleted
    assert not make_plan([], [], environment=ENV, prune=True).items  # empty and empty is fine


def test_terminating_object_is_recreated_not_deleted_again() -> None:
    gone = as_live(isvc("iris"))
    gone["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    gone["metadata"]["finalizers"] = ["foregroundDeletion"]
    plan = make_plan([isvc("iris")], [gone], environment=ENV, prune=True)
    assert plan.items[0].action is Action.CREATE and plan.items[0].reason == "terminating"
    dying = copy.deepcopy(gone)
    dying["metadata"]["name"] = "old"
    plan = make_plan([isvc("iris")], [as_live(isvc("iris")), dying], environment=ENV, prune=True)
    assert not plan.has_changes


def test_duplicate_desired_is_an_error() -> None:
    with pytest.raises(ValueError, match="two objects"):
        make_plan([isvc("iris"), isvc("iris")], [], environment=ENV)


def test_associative_lists_ignore_foreign_items_atomic_lists_do_not() -> None:
    desired = {"spec": {"containers": [{"name": "main", "image": "a"}], "args": ["x"]}}
    live = {
        "spec": {
            "containers": [
                {"name": "istio-proxy", "image": "p"},
                {"name": "main", "image": "a", "terminationMessagePath": "/dev/t"},
            ],
            "args": ["x", "y"],
        }
    }
    assert project(live, desired) == {"spec": {"containers": [{"name": "main", "image": "a"}], "args": ["x", "y"]}}


def test_quantities_compare_by_value() -> None:
    assert parse_quantity("500m") == parse_quantity("0.5")
    assert parse_quantity("1Gi") == parse_quantity("1024Mi")
    assert parse_quantity(2) == parse_quantity("2000m")
    assert parse_quantity("1e3") == parse_quantity("1k")
    assert parse_quantity("abc") is None


def test_normalize_drops_server_fields_and_provenance() -> None:
    obj = as_live(isvc("iris"))
    n = normalize(obj)
    assert "status" not in n
    assert set(n["metadata"]) == {"name", "namespace", "labels", "annotations"}
    assert REVISION_ANNOTATION not in n["metadata"]["annotations"]
    assert HASH_ANNOTATION in n["metadata"]["annotations"]


def test_content_hash_ignores_provenance() -> None:
    a, b = isvc("iris", rev="a"), isvc("iris", rev="b")
    assert a["metadata"]["annotations"][HASH_ANNOTATION] == b["metadata"]["annotations"][HASH_ANNOTATION]
    assert content_hash(a) == a["metadata"]["annotations"][HASH_ANNOTATION]
    assert content_hash(isvc("iris", uri="s3://m/9")) != content_hash(a)


def failing_on(name: str) -> MemoryTarget:
    target = MemoryTarget()
    target.fail_on = name  # as an admission webhook denying that object
    return target


def test_execute_then_replan_makes_no_writes() -> None:
    target = MemoryTarget()
    desired = [sa(), isvc("iris")]
    changes = execute(make_plan(desired, target.list_owned(ENV), environment=ENV), target)
    assert changes.ok and [c.result for c in changes.done] == ["created", "created"]
    assert [(verb, ref.name) for verb, ref in target.log] == [("apply", "mlp-models"), ("apply", "iris")]
    again = make_plan(desired, target.list_owned(ENV), environment=ENV)
    assert not again.has_changes
    assert execute(again, target).writes == 0 and target.writes == 2


def test_execute_stops_at_first_error_and_reports_the_rest() -> None:
    target = failing_on("iris")
    desired = [sa(), isvc("breast-cancer"), isvc("iris"), isvc("zeta")]
    seen: list[str] = []
    changes = execute(
        make_plan(desired, [], environment=ENV),
        target,
        progress=lambda i, n, item, what: seen.append(f"{i}/{n} {item.ref.name} {what}"),
    )
    assert not changes.ok and changes.failed is not None and changes.failed.name == "iris"
    assert [c.ref.name for c in changes.done] == ["mlp-models", "breast-cancer"]
    assert [r.name for r in changes.not_attempted] == ["zeta"]
    assert "FAILED at InferenceService/ml-staging/iris" in changes.summary()
    assert "3/4 iris failed" in seen


def test_execute_keep_going_applies_the_rest_and_lists_every_failure() -> None:
    target = failing_on("iris")
    desired = [sa(), isvc("breast-cancer"), isvc("iris"), isvc("zeta")]
    changes = execute(make_plan(desired, [], environment=ENV), target, keep_going=True)
    assert not changes.ok and changes.failed is not None and changes.failed.name == "iris"
    assert [c.ref.name for c in changes.done] == ["mlp-models", "breast-cancer", "zeta"]
    assert [ref.name for ref, _ in changes.failures] == ["iris"]
    assert changes.not_attempted == []


class _Overlapping(MemoryTarget):
    """A MemoryTarget whose applies of InferenceServices wait (up to a second) until `width` are in
    flight at once, as requests to a real server overlap; it records what was in flight."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.gate = threading.Barrier(width, timeout=1.0)
        self.in_flight: set[str] = set()
        self.most = 0
        self.starts: list[tuple[str, set[str]]] = []  # (name, the objects in flight when it started)
        self.guard = threading.Lock()

    def apply(self, obj: Manifest, *, dry_run: bool = False, force_conflicts: bool = False) -> ApplyResult:
        name = obj["metadata"]["name"]
        with self.guard:
            self.starts.append((name, set(self.in_flight)))
            self.in_flight.add(name)
            self.most = max(self.most, len(self.in_flight))
        try:
            if obj["kind"] == "InferenceService":
                with contextlib.suppress(threading.BrokenBarrierError):
                    self.gate.wait()
            return super().apply(obj, dry_run=dry_run, force_conflicts=force_conflicts)
        finally:
            with self.guard:
                self.in_flight.discard(name)


def test_concurrent_execute_overlaps_a_run_of_one_kind_and_keeps_dependencies_and_order() -> None:
    target = _Overlapping(width=4)
    desired = [sa(), *(isvc(f"m{i}") for i in range(8))]
    seen: list[str] = []
    changes = execute(
        make_plan(desired, [], environment=ENV),
        target,
        concurrency=4,
        progress=lambda i, n, item, what: seen.append(f"{i}/{n} {item.ref.name}"),
    )
    assert changes.ok and len(changes.done) == 9
    assert target.most == 4  # four InferenceServices in flight at once, never more than the concurrency
    assert target.starts[0] == ("mlp-models", set())  # the ServiceAccount they name went first, alone
    assert all("mlp-models" not in others for _, others in target.starts[1:])
    # progress and the change set keep the plan's order whatever order the answers came in
    assert seen == [f"{i + 1}/9 {n}" for i, n in enumerate(["mlp-models", *(f"m{i}" for i in range(8))])]
    assert [c.ref.name for c in changes.done] == ["mlp-models", *(f"m{i}" for i in range(8))]


def test_concurrent_execute_stops_after_the_run_that_failed() -> None:
    target = failing_on("m1")
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",  # monitoring goes after the workloads: a later run
        "metadata": {"name": "after", "namespace": "ml-staging"},
        "spec": {"selector": {}, "endpoints": [{"port": "http"}]},
    }
    desired = [*(isvc(f"m{i}") for i in range(4)), stamp(monitor, environment=ENV, spec="Model.m0", revision="r1")]
    plan = make_plan(desired, [], environment=ENV)
    names = [i.ref.name for i in plan.changes]
    assert names == ["m0", "m1", "m2", "m3", "after"]
    changes = execute(plan, target, concurrency=4)
    assert changes.failed is not None and changes.failed.name == "m1"
    # the rest of its run went out (they were in flight together); the later run was not attempted
    ran = {c.ref.name for c in changes.done}
    assert ran == set(names[: names.index("m3") + 1]) - {"m1"}
    assert [r.name for r in changes.not_attempted] == names[names.index("m3") + 1 :]


def test_dry_run_writes_nothing() -> None:
    target = MemoryTarget()
    changes = execute(make_plan([isvc("iris")], [], environment=ENV), target, dry_run=True)
    assert changes.dry_run and not target.objects
    assert "would be created" in changes.summary()


def _drift_plan() -> Any:
    live = as_live(isvc("iris"))
    live["spec"]["predictor"]["minReplicas"] = 3
    return make_plan(
        [isvc("iris"), sa()], [live, as_live(isvc("old"))], environment=ENV, prune=True, revision="0123456789abcdef0123"
    )


def test_text_format_is_a_unified_diff() -> None:
    text = plan_to_text(_drift_plan())
    assert "update InferenceService/ml-staging/iris (drift)" in text
    assert "-    minReplicas: 3\n+    minReplicas: 1" in text
    assert "+++ desired/ServiceAccount/ml-staging/mlp-models" in text
    assert "1 to create, 1 to update, 1 to delete, 0 unchanged." in text
    coloured = plan_to_text(_drift_plan(), color=True)
    assert "\x1b[32m+    minReplicas: 1\x1b[0m" in coloured


def test_json_format() -> None:
    data = json.loads(plan_to_json(_drift_plan()))
    assert data["counts"] == {"create": 1, "update": 1, "delete": 1, "unchanged": 0}
    upd = next(i for i in data["items"] if i["action"] == "update")
    assert upd["diffs"] == [{"path": "spec.predictor.minReplicas", "op": "change", "old": 3, "new": 1}]
    assert plan_to_dict(_drift_plan())["hasChanges"] is True


def test_markdown_format_is_stable() -> None:
    md = plan_to_markdown(_drift_plan())
    lines = md.splitlines()
    assert lines[0] == "### mlp plan: `staging` at `0123456789ab`"
    assert lines[1] == "**1 to create, 1 to update, 1 to delete, 0 unchanged**"
    # the detail leads with the model-level change, not the field path
    assert "| update | `InferenceService/ml-staging/iris` | drift from the cluster: minReplicas 3 → 1 |" in lines
    assert "| delete | `InferenceService/ml-staging/old` | no longer declared |" in lines
    assert md.count("```diff") == 3
    cut = plan_to_markdown(_drift_plan(), max_chars=900)
    assert "diff cut to fit" in cut and cut.count("```") % 2 == 0
    assert plan_to_markdown(make_plan([], [], environment=ENV)).splitlines()[1].startswith("**No changes.**")


def test_engine_never_plans_from_a_failed_snapshot() -> None:
    from mlp.engine import Policy, kinds_stage, reconcile
    from mlp.sources.base import Snapshot
    from mlp.testing import MemoryTarget

    bad = Snapshot(
        revision="r",
        files={
            "environments/e.yaml": b"apiVersion: mlp.dev/v1\nkind: Environment\n"
            b"metadata: {name: e}\nspec: {target: {kind: nope}}\n"
        },
    )
    target = MemoryTarget([as_live(isvc("iris"))])
    with pytest.raises(PlanRefused, match="failed validation"):
        reconcile(bad, "e", target, Policy(prune=True))
    assert target.writes == 0
    good = Snapshot(
        revision="r",
        files={
            "environments/e.yaml": b"apiVersion: mlp.dev/v1\nkind: Environment\n"
            b"metadata: {name: e}\nspec: {target: {kind: local}}\n"
        },
    )
    plan = reconcile(good, "e", MemoryTarget(), Policy(prune=True, execute=False)).plan
    assert plan.items == [] and plan.revision == "r"
    # no inventory yet: the plug-ins' kinds (to adopt) plus what the render produced
    kinds, inventory = kinds_stage(
        MemoryTarget(), "e", "kubernetes", [{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy"}]
    )
    assert inventory is None
    assert ("serving.kserve.io/v1beta1", "InferenceService") in kinds
    assert ("networking.k8s.io/v1", "NetworkPolicy") in kinds


def test_a_field_the_repository_stopped_setting_is_an_update() -> None:
    before = isvc("iris")
    before["spec"]["predictor"]["scaleTarget"] = 10
    before = stamp(before, environment=ENV, spec="Model.iris", revision="r1")
    live = as_live(before)
    # what server-side apply records for manager mlp (fieldsV1), plus another manager's field
    live["metadata"]["managedFields"] = [
        {
            "manager": "mlp",
            "operation": "Apply",
            "fieldsType": "FieldsV1",
            "fieldsV1": {
                "f:metadata": {"f:labels": {f"f:{MANAGED_BY}": {}}},
                "f:spec": {
                    "f:predictor": {
                        "f:minReplicas": {},
                        "f:scaleTarget": {},
                        "f:containers": {'k:{"name":"old"}': {".": {}, "f:image": {}}},
                    }
                },
            },
        },
        {"manager": "kubectl-edit", "operation": "Update", "fieldsV1": {"f:spec": {"f:predictor": {"f:timeout": {}}}}},
    ]
    live["spec"]["predictor"]["containers"] = [{"name": "old", "image": "x"}, {"name": "sidecar", "image": "y"}]
    live["spec"]["predictor"]["timeout"] = 30
    (item,) = make_plan([isvc("iris")], [live], environment=ENV).items
    assert item.action is Action.UPDATE and item.reason == "changed"
    removed = {d.path: d.old for d in item.diffs if d.op == "remove"}
    assert removed == {
        "spec.predictor.scaleTarget": 10,
        "spec.predictor.containers[name=old]": {"name": "old", "image": "x"},
    }
    # without managedFields (the local target) the content hash still says it changed
    del live["metadata"]["managedFields"]
    (item,) = make_plan([isvc("iris")], [live], environment=ENV).items
    assert item.action is Action.UPDATE
    assert [d.path for d in item.diffs] == [f'metadata.annotations["{HASH_ANNOTATION}"]']


def test_text_diff_shows_removed_fields() -> None:
    before = isvc("iris")
    before["spec"]["predictor"]["scaleTarget"] = 10
    before["spec"]["predictor"]["containers"] = [{"name": "old", "image": "x"}]
    live = as_live(stamp(before, environment=ENV, spec="Model.iris", revision="r1"))
    live["metadata"]["managedFields"] = [
        {
            "manager": "mlp",
            "operation": "Apply",
            "fieldsV1": {
                "f:spec": {
                    "f:predictor": {
                        "f:scaleTarget": {},
                        "f:containers": {'k:{"name":"old"}': {".": {}, "f:image": {}, "f:name": {}}},
                    }
                }
            },
        }
    ]
    text = plan_to_text(make_plan([isvc("iris")], [live], environment=ENV))
    assert "-    scaleTarget: 10" in text
    assert "-    containers:\n-    - image: x\n-      name: old" in text
