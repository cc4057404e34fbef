"""Files of a new platform repository, as `mlp init` writes them (package data under files/).

Dot-files are stored without their dot where packaging tools would drop them
(`gitignore`, `gitlab-ci.yml`, `github/`) and renamed on the way out.
"""

from __future__ import annotations

from importlib import resources

from mlp import __version__

RENAMES = {
    "gitignore": ".gitignore",
    "gitlab-ci.yml": ".gitlab-ci.yml",
    "gitlab/mlp.gitlab-ci.yml": ".gitlab/mlp.gitlab-ci.yml",
    "github/workflows/mlp.yml": ".github/workflows/mlp.yml",
}
# The generated CI installs exactly the mlp that generated it.
VERSION_MARK = "@MLP_VERSION@"


def files() -> dict[str, str]:
    """Relative path -> text of every scaffold file."""
    root = resources.files("mlp.scaffold") / "files"
    out: dict[str, str] = {}

    def walk(node: resources.abc.Traversable, prefix: str) -> None:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            rel = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, rel + "/")
            else:
                out[RENAMES.get(rel, rel)] = child.read_text(encoding="utf-8").replace(VERSION_MARK, __version__)

    walk(root, "")
    return out
