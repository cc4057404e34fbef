"""Check that the installed environment satisfies every requirement pyproject.toml declares.

`make venv` installs exact versions from requirements.lock; when someone adds or changes a
dependency in pyproject.toml without running `make lock`, this says so (exit 2) instead of
leaving a venv that fails later with an ImportError.

Usage: python scripts/check_lock.py [EXTRA ...]   (default: all dev)
"""

from __future__ import annotations

import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def missing(extras: list[str]) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    name = project["name"]
    todo = list(project.get("dependencies", []))
    groups = project.get("optional-dependencies", {})
    seen: set[str] = set()
    wanted = list(extras)
    while wanted:
        extra = wanted.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for spec in groups.get(extra, []):
            req = Requirement(spec)
            if req.name == name:  # a self-reference such as all = ["mlp-gitops[a,b]"]
                wanted.extend(req.extras)
            else:
                todo.append(spec)
    problems = []
    for spec in todo:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{req} is not installed")
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req} but the lock installed {req.name}=={version}")
    return problems


def main(argv: list[str]) -> int:
    problems = missing(argv or ["all", "dev"])
    for p in problems:
        print(f"error: pyproject.toml needs {p}", file=sys.stderr)
    if problems:
        print("error: requirements.lock is out of date with pyproject.toml: run `make lock`", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
