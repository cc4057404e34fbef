"""`mlp init` scaffolds a repository that validates clean, as an installed user would run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_mlp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlp.cli.main", *args], capture_output=True, text=True, timeout=60)


def test_init_then_validate_is_clean(tmp_path: Path) -> None:
    target = tmp_path / "platform"
    created = run_mlp("init", str(target))
    assert created.returncode == 0, created.stderr
    for rel in (
        "specs/models/example.yaml",
        "environments/dev.yaml",
        "environments/staging.yaml",
        "environments/prod.yaml",
        "schemas/model.json",
        ".github/workflows/mlp.yml",
        ".gitlab-ci.yml",
        ".gitlab/mlp.gitlab-ci.yml",
        "templates/README.md",
    ):
        assert (target / rel).is_file(), rel
    assert "mlp validate . --format github" in (target / ".github/workflows/mlp.yml").read_text()
    assert "codequality" in (target / ".gitlab/mlp.gitlab-ci.yml").read_text()
    checked = run_mlp("validate", str(target))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "valid" in checked.stdout


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    assert run_mlp("init", str(tmp_path)).returncode == 0
    again = run_mlp("init", str(tmp_path))
    assert again.returncode == 2
    assert "already exists" in again.stderr
    assert "Traceback" not in again.stderr


def test_scaffold_schemas_match_export(tmp_path: Path) -> None:
    from mlp.specs.schema import exported

    assert run_mlp("init", str(tmp_path)).returncode == 0
    for name, text in exported().items():
        assert (tmp_path / "schemas" / name).read_text() == text
