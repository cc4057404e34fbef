"""Train the example repository's models and put them where its `dev` environment reads them.

The example specs (`specs/models/*.yaml`) declare artifacts at
`s3://mlp-models/<model>/<version>/model.<ext>`; the `dev` environment's target names an
artifact mirror folder (`artifacts/`, gitignored), so `s3://bucket/key` is read from
`artifacts/bucket/key`. This script trains every declared version it has a recipe for,
on scikit-learn's bundled datasets (no download):

  iris           sklearn LogisticRegression, v1 C=1, v2 C=10            (joblib)
  breast-cancer  xgboost, v1 max_depth=3, v2 max_depth=4, P(malignant)  (JSON)

A different library version can produce different bytes, hence a different sha256. The
versions come from requirements.lock (`make venv`), so a fresh clone trains exactly the bytes
whose digests are committed. When a trained artifact's digest still differs from the spec's,
the script says so and exits 1; it never edits a tracked file unless asked to with
`--update-digests` (ruamel round-trip: comments and layout are kept).

Usage: python scripts/train_examples.py [REPO] [--force] [--check] [--update-digests]
  --force           retrain even when the artifact exists
  --check           train nothing; exit 1 if an artifact is missing or a digest differs
  --update-digests  write this machine's digests into the specs (after `make lock` moved a library)
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

BUCKET_PREFIX = "s3://"


def _iris(c: float) -> Callable[[Path], None]:
    def train(out: Path) -> None:
        import joblib
        from sklearn.datasets import load_iris
        from sklearn.linear_model import LogisticRegression

        x, y = load_iris(return_X_y=True)
        joblib.dump(LogisticRegression(C=c, max_iter=1000).fit(x, y), out)

    return train


def _breast_cancer(depth: int) -> Callable[[Path], None]:
    def train(out: Path) -> None:
        import xgboost as xgb
        from sklearn.datasets import load_breast_cancer

        x, y = load_breast_cancer(return_X_y=True)
        malignant = (y == 0).astype(int)  # sklearn's target 0 is malignant
        model = xgb.XGBClassifier(n_estimators=40, max_depth=depth, learning_rate=0.2, n_jobs=1, random_state=0)
        model.fit(x, malignant)
        model.save_model(str(out))

    return train


RECIPES: dict[tuple[str, int], Callable[[Path], None]] = {
    ("iris", 1): _iris(1.0),
    ("iris", 2): _iris(10.0),
    ("breast-cancer", 1): _breast_cancer(3),
    ("breast-cancer", 2): _breast_cancer(4),
}


def iris_reference_csv() -> str:
    """The iris training data as CSV (signature column names, the true species): the example
    monitor's reference sample. Plain text from the bundled dataset, so its digest is stable."""
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    lines = ["sepal_length,sepal_width,petal_length,petal_width,species"]
    lines += [",".join(repr(float(v)) for v in row) + f",{int(t)}" for row, t in zip(x, y, strict=True)]
    return "\n".join(lines) + "\n"


# Reference samples the example monitors declare (specs/monitors/*.yaml), by artifact URI.
REFERENCES: dict[str, Callable[[], str]] = {"s3://mlp-models/iris/reference/train.csv": iris_reference_csv}


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _yaml() -> YAML:
    y = YAML()
    y.preserve_quotes = True
    y.width = 4096
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def mirror_of(repo: Path) -> Path:
    env = repo / "environments" / "dev.yaml"
    folder = "artifacts"
    if env.is_file():
        doc: Any = _yaml().load(env.read_text())
        folder = (((doc or {}).get("spec") or {}).get("target") or {}).get("artifactMirror") or folder
    return repo / folder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("repo", nargs="?", default=str(Path(__file__).resolve().parents[1]))
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--update-digests", action="store_true")
    args = ap.parse_args(argv)
    repo = Path(args.repo)
    mirror = mirror_of(repo)
    yaml = _yaml()
    problems = 0
    for spec_path in sorted((repo / "specs" / "models").glob("*.y*ml")):
        text = spec_path.read_text()
        doc: Any = yaml.load(text)
        name = doc["metadata"]["name"]
        changed = False
        for v in doc["spec"]["versions"]:
            number, uri = int(v["version"]), str(v["uri"])
            recipe = RECIPES.get((name, number))
            if recipe is None or not uri.startswith(BUCKET_PREFIX):
                continue
            out = mirror / uri[len(BUCKET_PREFIX) :]
            if ".." in out.relative_to(mirror).parts:
                print(f"{spec_path}: {name} v{number}: uri escapes the mirror, skipped", file=sys.stderr)
                continue
            if not out.is_file() or args.force:
                if args.check:
                    print(f"{name} v{number}: missing {out}")
                    problems += 1
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                with tempfile.NamedTemporaryFile(dir=out.parent, suffix=out.suffix, delete=False) as tmp:
                    tmp_path = Path(tmp.name)
                try:
                    recipe(tmp_path)
                    tmp_path.replace(out)
                finally:
                    tmp_path.unlink(missing_ok=True)
                print(f"trained {name} v{number} -> {out.relative_to(repo)}", file=sys.stderr)
            digest = _sha256(out)
            if v["digest"] != digest:
                if not args.update_digests:
                    print(
                        f"error: {spec_path.relative_to(repo)}: {name} v{number}: the trained artifact's digest "
                        f"{digest[:19]}... differs from the spec's {str(v['digest'])[:19]}...; the installed "
                        "libraries differ from requirements.lock (run `make venv`), or run this script with "
                        "--update-digests to adopt the new bytes",
                        file=sys.stderr,
                    )
                    problems += 1
                    continue
                print(
                    f"{spec_path.relative_to(repo)}: {name} v{number} digest {str(v['digest'])[:19]}... -> "
                    f"{digest[:19]}... (written because of --update-digests)",
                    file=sys.stderr,
                )
                v["digest"] = digest
                changed = True
        if changed:
            with open(spec_path, "w") as fh:
                yaml.dump(doc, fh)
    for uri, make in REFERENCES.items():
        out = mirror / uri[len(BUCKET_PREFIX) :]
        if not out.is_file() or args.force:
            if args.check:
                print(f"reference {uri}: missing {out}")
                problems += 1
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(make())
            print(f"wrote reference -> {out.relative_to(repo)}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
