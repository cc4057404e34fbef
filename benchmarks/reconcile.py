"""Benchmark: render + plan for 1,000 deployed models against 1,000 live objects (100 changed).

What one reconcile of a large environment costs in mlp's pure core, and how many API calls a
no-op reconcile makes against the Kubernetes API server stand-in.

Rows (same process, same machine, same run):
- `floor`: the cheapest conceivable comparison — canonical JSON of both sides, string
  equality — over the same objects. Any plan must at least look at every object once; the
  ratio says what normalization, projection and field diffs cost on top.
- `render`: specs -> 1,000 stamped manifests (Jinja2, YAML parse, hashing).
- `plan`: normalize, project, diff, order: 1,000 desired vs 1,000 live (100 changed).
- `render+plan`: the goal metric (< 5 s, < 200 MiB peak).
The anchor is Flux's published MTTP benchmark (github.com/fluxcd/flux-benchmark, RESULTS.md,
Flux v2.6.0): kustomize-controller reconciles 1,000 Kustomizations (4 objects each) in 4m16s
= 256 s with 175 MiB max memory, on a 16-core GitHub runner with a kind cluster. That figure
includes fetching artifacts and cluster round-trips, which the pure rows here do not, so the
ratio is an order-of-magnitude anchor, not a like-for-like race; the API-call count of a
no-op reconcile is reported separately.

    .venv/bin/python benchmarks/reconcile.py [--models 1000] [--changed 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlp.plan import Action, make_plan
from mlp.render import render
from mlp.sources.base import Snapshot
from mlp.specs import load

FRAMEWORKS = ["sklearn", "xgboost", "lightgbm", "onnx"]
DIGEST = "sha256:" + "0" * 64
FLUX_ANCHOR_S = 256.0  # kustomize-controller, 1,000 apps


def snapshot(models: int, bump: int = 0) -> Snapshot:
    """A repository with `models` models deployed in one kubernetes environment; the first
    `bump` deployments move to version 2."""
    files: dict[str, bytes] = {}
    deployments = []
    for i in range(models):
        name = f"m{i:05d}"
        files[f"specs/models/{name}.yaml"] = f"""apiVersion: mlp.dev/v1
kind: Model
metadata: {{name: {name}}}
spec:
  framework: {FRAMEWORKS[i % len(FRAMEWORKS)]}
  signature:
    inputs: [{{name: x, type: float}}]
    outputs: [{{name: y, type: float}}]
  versions:
    - {{version: 1, uri: "s3://models/{name}/1/model", digest: "{DIGEST}"}}
    - {{version: 2, uri: "s3://models/{name}/2/model", digest: "{DIGEST}"}}
""".encode()
        version = 2 if i < bump else 1
        deployments.append(
            f"    {name}: {{version: {version}, autoscaling: {{minReplicas: 1, maxReplicas: 3}}, "
            f"resources: {{requests: {{cpu: 100m, memory: 256Mi}}}}}}"
        )
    files["environments/bench.yaml"] = (
        """apiVersion: mlp.dev/v1
kind: Environment
metadata: {name: bench}
spec:
  target: {kind: kubernetes, namespace: ml-bench}
  storageSecret: s3
  deployments:
"""
        + "\n".join(deployments)
        + "\n"
    ).encode()
    return Snapshot(revision="bench", files=files)


def fields_v1(value: Any) -> dict[str, Any]:
    """The `fieldsV1` tree server-side apply records for a manager that applied `value`."""
    if isinstance(value, dict):
        return {f"f:{k}": fields_v1(v) for k, v in value.items()}
    if isinstance(value, list) and value and all(isinstance(i, dict) and "name" in i for i in value):
        return {f'k:{{"name":{json.dumps(i["name"])}}}': {".": {}, **fields_v1(i)} for i in value}
    return {}


def as_live(obj: dict[str, Any], i: int) -> dict[str, Any]:
    """What the API server returns for an applied object: bookkeeping, defaults, status."""
    live = copy.deepcopy(obj)
    meta = live["metadata"]
    meta.update(
        uid=f"uid-{i}",
        resourceVersion=str(1000 + i),
        generation=1,
        creationTimestamp="2026-01-01T00:00:00Z",
        managedFields=[
            {
                "manager": "mlp",
                "operation": "Apply",
                "apiVersion": obj["apiVersion"],
                "fieldsType": "FieldsV1",
                "fieldsV1": fields_v1({k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}),
            }
        ],
    )
    if live["kind"] == "InferenceService":
        live["spec"]["predictor"]["model"].setdefault("name", "kserve-container")
        live["status"] = {
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "PredictorReady", "status": "True"}],
            "url": f"http://{meta['name']}.ml-bench.example",
        }
    return live


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def peak_mib(fn: Callable[[], Any]) -> float:
    gc.collect()
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def floor_compare(desired: list[dict[str, Any]], live: list[dict[str, Any]]) -> int:
    index = {(o["kind"], o["metadata"]["name"]): json.dumps(o, sort_keys=True) for o in live}
    return sum(1 for o in desired if index.get((o["kind"], o["metadata"]["name"])) != json.dumps(o, sort_keys=True))


def api_calls_noop(models: int) -> dict[str, Any] | str:
    """Apply a rendered environment through KubernetesTarget to the API server stand-in with the
    engine, then count the HTTP requests a second, no-op reconcile (inventory, list, plan, execute) makes."""
    import importlib
    import tempfile

    from mlp.engine import Policy, reconcile

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    try:
        standin = importlib.import_module("standins.kube_apiserver")
        KubernetesTarget = importlib.import_module("mlp.targets.kubernetes").KubernetesTarget
    except ImportError as exc:
        return f"skipped: {exc}"
    KubeApiServer, write_kubeconfig = standin.KubeApiServer, standin.write_kubeconfig

    snap = snapshot(models)
    result = load(snap)
    with (
        KubeApiServer(namespaces=("default", "ml-bench"), prometheus_operator=True) as api,
        tempfile.TemporaryDirectory() as tmp,
    ):
        target = KubernetesTarget.from_kubeconfig(str(write_kubeconfig(Path(tmp) / "kubeconfig", api.url)))
        first = reconcile(snap, "bench", target, Policy(), loaded=result)
        assert first.changes is not None and first.changes.ok, first.changes
        api.requests.clear()
        t0 = time.perf_counter()
        again = reconcile(snap, "bench", target, Policy(), loaded=result)
        elapsed = time.perf_counter() - t0
        calls = [(r.method, r.path) for r in api.requests]
    return {
        "calls": len(calls),
        "lists": sum(1 for m, _ in calls if m == "GET"),
        "writes": sum(1 for m, _ in calls if m != "GET"),
        "kinds": len(again.kinds),
        "planned_changes": len(again.plan.changes),
        "executed": again.changes.writes if again.changes is not None else 0,
        "seconds": elapsed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--changed", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--api-models", type=int, default=200, help="models for the API-call count (stand-in)")
    args = ap.parse_args()
    n, changed = args.models, args.changed

    # Live state: the environment as applied at the old revision. Desired: half the changes
    # come from the repository (a new model version), half from hand edits on the cluster.
    old = load(snapshot(n))
    assert old.ok, old.diagnostics[:3]
    live_src = render(old.specs, "bench", revision="old")
    live = [as_live(o, i) for i, o in enumerate(live_src)]
    isvc_idx = [i for i, o in enumerate(live) if o["kind"] == "InferenceService"]
    for i in isvc_idx[n - changed // 2 :]:
        live[i]["spec"]["predictor"]["minReplicas"] = 4  # hand edit (drift)
    new_snap = snapshot(n, bump=changed - changed // 2)
    t_load, new = timed(lambda: load(new_snap), 1)

    def do_render() -> list[dict[str, Any]]:
        return render(new.specs, "bench", revision="new")

    t_render, desired = timed(do_render, args.repeat)
    t_plan, plan = timed(lambda: make_plan(desired, live, environment="bench", revision="new", prune=True), args.repeat)
    t_both, _ = timed(
        lambda: make_plan(do_render(), live, environment="bench", revision="new", prune=True), args.repeat
    )
    t_floor, floor_changed = timed(lambda: floor_compare(desired, live), args.repeat)
    mem_both = peak_mib(lambda: make_plan(do_render(), live, environment="bench", revision="new", prune=True))
    counts = plan.counts()
    assert counts[Action.UPDATE.value] == changed, counts
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    rows = [
        ("floor (JSON equality only)", t_floor, f"{floor_changed} differ (server fields make all differ)"),
        ("load specs (not in goal)", t_load, f"{n} models + 1 environment"),
        ("render", t_render, f"{len(desired)} objects"),
        ("plan", t_plan, f"{counts}"),
        ("render+plan", t_both, f"goal < 5 s; peak {mem_both:.0f} MiB traced (goal < 200), max RSS {rss:.0f} MiB"),
    ]
    print(f"reconcile benchmark: {n} models, {len(live)} live objects, {changed} changed; best of {args.repeat}")
    print(f"{'step':<28} {'seconds':>9}  notes")
    for name, secs, note in rows:
        print(f"{name:<28} {secs:>9.3f}  {note}")
    print(f"{'plan / floor':<28} {t_plan / t_floor:>9.1f}x")
    print(
        f"{'Flux anchor / render+plan':<28} {FLUX_ANCHOR_S / t_both:>9.0f}x  "
        f"(Flux kustomize-controller: 1,000 apps in {FLUX_ANCHOR_S:.0f} s, includes cluster I/O)"
    )
    api = api_calls_noop(args.api_models)
    if isinstance(api, str):
        print(f"no-op reconcile API calls: {api}")
    else:
        print(
            f"no-op reconcile against the stand-in ({args.api_models} models, {api['kinds']} kinds): "
            f"{api['calls']} HTTP calls, {api['lists']} GET (list), {api['writes']} writes, "
            f"{api['seconds']:.3f} s (goal: list calls only, zero writes)"
        )


if __name__ == "__main__":
    main()
