"""Benchmark: `mlp validate` on 1,000 generated spec files versus `check-jsonschema`.

Both run as whole processes (start-up included), as CI runs them, on the same files in
the same run. mlp does schema + cross-references + policy over the whole repository in
one process; check-jsonschema does schema only, one invocation per kind (its
`--schemafile` takes one schema), and its times are summed per repetition.

Also measured: `mlp validate --help` (the import cost of the CLI).

    .venv/bin/python benchmarks/validate.py               # 1,000 files, 5 repetitions
    .venv/bin/python benchmarks/validate.py --files 1000 --repeat 7 --keep /tmp/bench-repo
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DIGEST = "sha256:" + "ab" * 32

# Share of each kind among the generated files (sums to 1).
MIX = {
    "Team": 0.02,
    "Entity": 0.03,
    "FeatureView": 0.05,
    "Model": 0.55,
    "Experiment": 0.15,
    "Monitor": 0.10,
    "Environment": 0.10,
}


def _fields(prefix: str, n: int, rng: random.Random) -> list[tuple[str, str]]:
    return [(f"{prefix}_{i}", rng.choice(["float", "double", "int", "string"])) for i in range(n)]


def generate(root: Path, files: int, seed: int = 7) -> dict[str, list[Path]]:
    """Write a valid repository of `files` spec files, one document each; returns paths by kind."""
    rng = random.Random(seed)
    counts = {kind: max(1, round(files * share)) for kind, share in MIX.items()}
    counts["Model"] += files - sum(counts.values())
    out: dict[str, list[Path]] = {kind: [] for kind in MIX}

    def write(kind: str, rel: str, text: str) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        out[kind].append(path)

    teams = [f"team-{i}" for i in range(counts["Team"])]
    for team in teams:
        members = "".join(f"    - {{user: {team}-u{j}, role: {'owner' if j == 0 else 'member'}}}\n" for j in range(6))
        write(
            "Team",
            f"specs/teams/{team}.yaml",
            f"apiVersion: mlp.dev/v1\nkind: Team\nmetadata:\n  name: {team}\n  description: Team {team}\n"
            f"spec:\n  members:\n{members}",
        )
    entities = [f"entity-{i}" for i in range(counts["Entity"])]
    for i, name in enumerate(entities):
        write(
            "Entity",
            f"specs/entities/{name}.yaml",
            f"apiVersion: mlp.dev/v1\nkind: Entity\nmetadata:\n  name: {name}\n  team: {teams[i % len(teams)]}\n"
            f"spec:\n  joinKeys: [{name.replace('-', '_')}_id]\n  valueType: int\n",
        )
    views: dict[str, list[tuple[str, str]]] = {}
    for i in range(counts["FeatureView"]):
        name = f"view-{i}"
        feats = _fields(f"f{i}", rng.randint(4, 24), rng)
        views[name] = feats
        lines = "".join(f"    - {{name: {n}, type: {t}}}\n" for n, t in feats)
        write(
            "FeatureView",
            f"specs/features/{name}.yaml",
            f"apiVersion: mlp.dev/v1\nkind: FeatureView\nmetadata:\n  name: {name}\n  team: {teams[i % len(teams)]}\n"
            f"spec:\n  entities: [{entities[i % len(entities)]}]\n  source:\n    kind: parquet\n"
            f"    uri: s3://features/{name}/data.parquet\n    timestampField: ts\n  ttl: 7d\n  features:\n{lines}",
        )
    models: dict[str, tuple[int, list[tuple[str, str]]]] = {}
    view_names = list(views)
    for i in range(counts["Model"]):
        name = f"model-{i}"
        team = teams[i % len(teams)]
        if i % 2 == 0:  # half read a feature view: their inputs are (a subset of) its features
            view = view_names[i % len(view_names)]
            inputs = views[view][: rng.randint(2, len(views[view]))]
            features = f"  features: {view}\n"
        else:
            inputs, features = _fields("x", rng.randint(4, 30), rng), ""
        n_versions = rng.randint(2, 6)
        models[name] = (n_versions, inputs)
        sig = "".join(f"      - {{name: {n}, type: {t}}}\n" for n, t in inputs)
        versions = "".join(
            f"    - version: {v}\n      uri: s3://models/{name}/{v}/model.joblib\n      digest: {DIGEST}\n"
            f"      metrics: {{accuracy: {0.8 + v / 100:.3f}, f1: {0.7 + v / 100:.3f}, auc: 0.9}}\n"
            f"      lineage: {{run: run-{i}-{v}, dataset: 's3://data/{name}/train.parquet', commit: {'c0ffee' * 6}}}\n"
            for v in range(1, n_versions + 1)
        )
        write(
            "Model",
            f"specs/models/{team}/{name}.yaml",
            f"# yaml-language-server: $schema=../../../schemas/model.json\n"
            f"apiVersion: mlp.dev/v1\nkind: Model\nmetadata:\n  name: {name}\n  team: {team}\n"
            f"  description: Generated model {i} for the validate benchmark.\n  labels: {{tier: gold, domain: d{i % 9}}}\n"
            f"spec:\n  framework: {rng.choice(['sklearn', 'xgboost', 'lightgbm', 'onnx'])}\n{features}"
            f"  signature:\n    inputs:\n{sig}    outputs:\n      - {{name: score, type: float}}\n"
            f"  versions:\n{versions}",
        )
    model_names = list(models)
    for i in range(counts["Experiment"]):
        model = model_names[i % len(model_names)]
        n_versions = models[model][0]
        runs = "".join(
            f"    - {{id: exp{i}-r{r}, params: {{C: {r}.0, max_iter: 500, penalty: l2}}, metrics: {{accuracy: 0.9}}"
            + (f", modelVersion: {r}" if r <= n_versions else "")
            + "}\n"
            for r in range(1, 6)
        )
        write(
            "Experiment",
            f"specs/experiments/exp-{i}.yaml",
            f"apiVersion: mlp.dev/v1\nkind: Experiment\nmetadata:\n  name: exp-{i}\n  team: {teams[i % len(teams)]}\n"
            f"spec:\n  model: {model}\n  objective: {{metric: accuracy, goal: maximize}}\n"
            f"  dataset: s3://data/{model}/train.parquet\n  runs:\n{runs}",
        )
    # environments: tiers in a promotion chain per group of three; each deploys a slice of the models
    n_env = counts["Environment"]
    env_names = [f"env-{i}" for i in range(n_env)]
    deployed: dict[str, list[str]] = {}
    per_env = max(1, len(model_names) * 3 // max(1, n_env))
    for i, env in enumerate(env_names):
        tier = ("development", "staging", "production")[i % 3]
        start = (i // 3) * per_env % len(model_names)
        chosen = [model_names[(start + k) % len(model_names)] for k in range(per_env)]
        deployed[env] = chosen
        deps = ""
        for k, model in enumerate(chosen):
            top = models[model][0]
            deps += f"    {model}:\n      version: {top - 1}\n"
            if k % 4 == 0:
                deps += f"      canary: {{version: {top}, steps: [10, 25, 50, 100], analysis: {{metric: error-rate, max: 0.01}}}}\n"
            elif k % 4 == 1:
                deps += f"      shadow: {{version: {top}, percent: 20}}\n"
            deps += (
                "      autoscaling: {minReplicas: 1, maxReplicas: 4, metric: concurrency, target: 10}\n"
                "      resources:\n        requests: {cpu: 100m, memory: 256Mi}\n        limits: {cpu: '1', memory: 1Gi}\n"
            )
        promotes = f"  promotesFrom: {env_names[i - 1]}\n" if i % 3 else ""
        target = "{kind: local}" if tier == "development" else f"{{kind: kubernetes, namespace: ml-{env}}}"
        approvals = (
            f"  approvals: {{required: 2, from: ['team:{teams[i % len(teams)]}']}}\n" if tier == "production" else ""
        )
        write(
            "Environment",
            f"environments/{env}.yaml",
            f"apiVersion: mlp.dev/v1\nkind: Environment\nmetadata:\n  name: {env}\n  team: {teams[i % len(teams)]}\n"
            f"spec:\n  target: {target}\n  tier: {tier}\n{promotes}{approvals}"
            f"  sync: {{automated: true, prune: true, selfHeal: true}}\n  deployments:\n{deps}",
        )
    for i in range(counts["Monitor"]):
        env = env_names[i % n_env]
        model = deployed[env][i % len(deployed[env])]
        watched = [n for n, _ in models[model][1][:3]]
        write(
            "Monitor",
            f"specs/monitors/mon-{i}.yaml",
            f"apiVersion: mlp.dev/v1\nkind: Monitor\nmetadata:\n  name: mon-{i}\n  team: {teams[i % len(teams)]}\n"
            f"spec:\n  model: {model}\n  environments: [{env}]\n  schedule: '*/15 * * * *'\n"
            f"  drift: {{detector: ks, features: [{', '.join(watched)}], threshold: 0.05, window: 500}}\n"
            f"  performance:\n    - {{metric: accuracy, min: 0.8}}\n  alerts:\n    - {{severity: warning, for: 10m}}\n",
        )
    return out


def timed(run: Callable[[], None], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="generate into this folder and keep it")
    args = parser.parse_args()

    mlp = BIN / "mlp"
    checker = BIN / "check-jsonschema"
    if not checker.exists():
        print("check-jsonschema not installed: pip install -e '.[dev]'", file=sys.stderr)
        return 2
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="mlp-bench-"))
    if workdir.exists():
        shutil.rmtree(workdir)
    try:
        by_kind = generate(workdir, args.files)
        total = sum(len(v) for v in by_kind.values())
        size = sum(p.stat().st_size for v in by_kind.values() for p in v)
        print(
            f"generated {total} spec files ({size / 1e6:.1f} MB) in {workdir}: "
            + ", ".join(f"{len(v)} {k}" for k, v in by_kind.items()),
            file=sys.stderr,
        )
        schemas = ROOT / "schemas"

        def run_mlp() -> None:
            proc = subprocess.run([str(mlp), "validate", str(workdir)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(
                    f"mlp validate failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
                )

        per_kind: dict[str, list[float]] = {kind: [] for kind in by_kind}

        def run_checker() -> None:
            for kind, paths in by_kind.items():
                start = time.perf_counter()
                proc = subprocess.run(
                    [str(checker), "--schemafile", str(schemas / f"{kind.lower()}.json"), *map(str, paths)],
                    capture_output=True,
                    text=True,
                )
                per_kind[kind].append(time.perf_counter() - start)
                if proc.returncode != 0:
                    raise SystemExit(f"check-jsonschema failed on {kind}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")

        def run_help() -> None:
            subprocess.run([str(mlp), "validate", "--help"], capture_output=True, check=True)

        # the same repository with an error in every Model file: line numbers are computed
        # only for files with a problem, so this is the cost of locating 1,100 errors
        broken = workdir.parent / (workdir.name + "-broken")
        shutil.copytree(workdir, broken)
        for path in by_kind["Model"]:
            target = broken / path.relative_to(workdir)
            target.write_text(
                target.read_text(encoding="utf-8").replace("  framework:", "  framwork:"), encoding="utf-8"
            )

        def run_mlp_broken() -> None:
            proc = subprocess.run([str(mlp), "validate", str(broken)], capture_output=True, text=True)
            if proc.returncode != 1:
                raise SystemExit(f"mlp validate on the broken copy exited {proc.returncode}")

        run_mlp()  # warm the page cache and .pyc files for both, once, untimed
        run_checker()
        mlp_t, check_t, help_t, broken_t = [], [], [], []
        for i in range(args.repeat):  # interleaved, so drift on the machine hits both alike
            mlp_t += timed(run_mlp, 1)
            check_t += timed(run_checker, 1)
            help_t += timed(run_help, 1)
            broken_t += timed(run_mlp_broken, 1)
            print(
                f"  repetition {i + 1}/{args.repeat}: mlp {mlp_t[-1]:.3f}s, check-jsonschema {check_t[-1]:.3f}s",
                file=sys.stderr,
            )
        m, c, h = statistics.median(mlp_t), statistics.median(check_t), statistics.median(help_t)
        print(f"\n{total} spec files, {args.repeat} repetitions, median wall time of whole processes\n")
        print("| command | checks | median (s) | min (s) | max (s) |")
        print("|---|---|---:|---:|---:|")
        print(
            f"| `mlp validate DIR` (1 process) | schema + cross-references + policy | {m:.3f} | {min(mlp_t):.3f} | {max(mlp_t):.3f} |"
        )
        print(
            f"| `check-jsonschema --schemafile KIND.json FILES...` ({len(by_kind)} processes, summed) | schema only | "
            f"{c:.3f} | {min(check_t):.3f} | {max(check_t):.3f} |"
        )
        biggest = max(by_kind, key=lambda k: len(by_kind[k]))
        one = per_kind[biggest][1:]  # without the warm-up run
        print(
            f"| `check-jsonschema` on the {len(by_kind[biggest])} {biggest} files only (1 process) | schema only | "
            f"{statistics.median(one):.3f} | {min(one):.3f} | {max(one):.3f} |"
        )
        n_broken = len(by_kind["Model"])
        print(
            f"| `mlp validate DIR`, an error in each of the {n_broken} Model files | all + locating "
            f"{2 * n_broken} errors | {statistics.median(broken_t):.3f} | {min(broken_t):.3f} | {max(broken_t):.3f} |"
        )
        print(f"| `mlp validate --help` | import cost | {h:.3f} | {min(help_t):.3f} | {max(help_t):.3f} |")
        print(f"\nmlp is {c / m:.1f}x faster than check-jsonschema (goal: >= 3x); --help {h:.3f}s (goal: < 0.3 s)")
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(workdir.parent / (workdir.name + "-broken"), ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
