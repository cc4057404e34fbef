"""`mlp validate` as CI uses it: every problem at once, exit codes, and the four output formats.

Output shapes are checked against the platforms' documentation:

* GitHub Actions workflow commands
  (https://docs.github.com/en/actions/reference/workflow-commands-for-github-actions):
  `::error file={name},line={line},col={col},title={title}::{message}`; in the message
  `%`, CR and LF are escaped as `%25`, `%0D`, `%0A`; property values also escape
  `:` as `%3A` and `,` as `%2C` (commas separate properties, `::` ends them).
* GitLab Code Quality report
  (https://docs.gitlab.com/ci/testing/code_quality/#code-quality-report-format):
  a JSON array of objects with `description`, `check_name`, `fingerprint` (unique: GitLab
  shows only the first issue of a fingerprint), `severity` (one of info, minor, major,
  critical, blocker) and `location.path` (relative to the repository) with
  `location.lines.begin`.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mlp.cli.validate import validate
from mlp.specs import Diagnostic
from mlp.specs import report as report_module

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "tests" / "broken" / "base"
_SCRIPT = Path(sys.executable).parent / "mlp"
MLP = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "mlp.cli.main"]

GITHUB_LINE = re.compile(
    r"^::(?P<level>error|warning|notice) "
    r"file=(?P<file>[^,:]+),line=(?P<line>[1-9]\d*),col=(?P<col>[1-9]\d*),title=(?P<title>[^,:]*)"
    r"::(?P<message>[^\r\n]*)$"
)
GITLAB_SEVERITIES = {"info", "minor", "major", "critical", "blocker"}


def edit(root: Path, rel: str, old: str, new: str) -> None:
    path = root / rel
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, (rel, old)
    path.write_text(text.replace(old, new), encoding="utf-8")


@pytest.fixture()
def many_defects(tmp_path: Path) -> tuple[Path, set[tuple[str, str]]]:
    """The base repository with eight defects in six files; returns it and (path, message part) pairs."""
    root = tmp_path / "repo"
    shutil.copytree(BASE, root)
    edit(root, "specs/teams.yaml", "user: bob", "user: bob, rol: owner")  # unknown field
    edit(root, "specs/experiment.yaml", "modelVersion: 2", "modelVersion: 7")  # dangling run -> version
    edit(root, "specs/monitor.yaml", "[staging]", "[stagign]")  # dangling monitor -> env
    edit(
        root, "environments/dev.yaml", "  target: {kind: local}\n", "  target: {kind: local}\n  promotesFrom: staging\n"
    )  # cycle dev <-> staging
    edit(root, "environments/staging.yaml", "steps: [10, 50, 100]", "steps: [10, 50]")  # canary not to 100
    edit(root, "environments/prod.yaml", "team:leads", "team:leeds")  # dangling approvals team
    edit(
        root,
        "environments/prod.yaml",
        "  team: leads\n",
        "  team: leads\n  annotations: {pager_token: abc123, note: 'has a, comma: and 100%'}\n",
    )  # secret
    (root / "specs" / "broken.yaml").write_text("apiVersion: mlp.dev/v1\nkind: Team\nmetadata: {name: x\n")  # syntax
    expected = {
        ("specs/teams.yaml", "unknown field 'rol'"),
        ("specs/experiment.yaml", "has no version 7"),
        ("specs/monitor.yaml", "environment 'stagign' does not exist"),
        ("environments/dev.yaml", "promotion cycle: dev -> staging -> dev"),
        ("environments/staging.yaml", "canary steps must increase and end at 100"),
        ("environments/prod.yaml", "team 'leeds' does not exist"),
        ("environments/prod.yaml", "plaintext secret in 'pager_token'"),
        ("specs/broken.yaml", "YAML syntax error"),
    }
    return root, expected


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MLP, *args], capture_output=True, text=True, timeout=30)


# --- the example repository and exit codes --------------------------------------------------


def test_example_repository_validates_clean() -> None:
    proc = run("validate", str(ROOT))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("ok: ") and "valid" in proc.stdout
    assert proc.stderr == ""


def test_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(validate, [str(BASE)]).exit_code == 0
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "x.yaml").write_text("kind: Model\n")
    assert runner.invoke(validate, [str(tmp_path)]).exit_code == 1
    # usage errors: as a real process, exit 2 and a one-line message, never a traceback
    for args, says in (
        (["validate", str(tmp_path / "missing")], "not a directory"),
        (["validate", str(tmp_path / "specs" / "x.yaml")], "is a file"),
        (["validate", str(tmp_path / "specs")], "no spec files"),
        (["validate", str(BASE), "--format", "xml"], "'xml' is not one of"),
        (["validate", str(BASE), "--no-such-option"], "No such option"),
    ):
        proc = run(*args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert says in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stdout + proc.stderr


def test_internal_error_exits_2_without_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    import mlp.specs

    def broken_load(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(mlp.specs, "load", broken_load)
    result = CliRunner().invoke(validate, [str(BASE)])
    assert result.exit_code == 2
    assert "internal error" in result.output and "boom" in result.output
    assert "Traceback" not in result.output


def test_help_has_an_example() -> None:
    proc = run("validate", "--help")
    assert proc.returncode == 0
    assert "mlp validate platform/ -o github" in proc.stdout


# --- every problem, not just the first ---------------------------------------------------------


def test_every_problem_is_reported(many_defects: tuple[Path, set[tuple[str, str]]]) -> None:
    root, expected = many_defects
    proc = run("validate", str(root))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for path, part in expected:
        assert any(ln.startswith(f"{path}:") and part in ln for ln in lines), (path, part, proc.stdout)
    diagnostics = [ln for ln in lines if re.match(r"^[\w./-]+\.yaml:\d+:\d+: ", ln)]
    assert len(diagnostics) == len(expected), proc.stdout
    assert lines[-1] == f"{len(expected)} errors in 9 files"


# --- formats ---------------------------------------------------------------------------------


def json_report(root: Path) -> dict[str, Any]:
    result = CliRunner().invoke(validate, [str(root), "--format", "json"])
    return dict(json.loads(result.output))


def test_json_format(many_defects: tuple[Path, set[tuple[str, str]]]) -> None:
    root, expected = many_defects
    report = json_report(root)
    assert report["valid"] is False and report["files"] == 9
    assert isinstance(report["documents"], int)
    assert len(report["diagnostics"]) == len(expected)
    for d in report["diagnostics"]:
        assert set(d) == {"path", "line", "col", "kind", "name", "message", "rule", "severity"}
        assert isinstance(d["line"], int) and d["line"] >= 1 and isinstance(d["col"], int) and d["col"] >= 1
        assert d["severity"] in ("error", "warning")
    clean = json_report(BASE)
    assert clean == {"valid": True, "files": 8, "documents": 10, "diagnostics": []}


def _unescape(text: str) -> str:
    return text.replace("%2C", ",").replace("%3A", ":").replace("%0A", "\n").replace("%0D", "\r").replace("%25", "%")


def test_github_format(many_defects: tuple[Path, set[tuple[str, str]]]) -> None:
    root, _ = many_defects
    proc = run("validate", str(root), "--format", "github")
    assert proc.returncode == 1
    report = json_report(root)
    lines = proc.stdout.splitlines()
    assert len(lines) == len(report["diagnostics"])
    for line, d in zip(lines, report["diagnostics"], strict=True):
        m = GITHUB_LINE.match(line)
        assert m, line
        assert m["level"] == d["severity"]
        assert _unescape(m["file"]) == d["path"]  # repository-relative, as GitHub resolves it
        assert (int(m["line"]), int(m["col"])) == (d["line"], d["col"])
        assert _unescape(m["message"]) == d["message"]
        assert _unescape(m["title"]).startswith("mlp ")
    assert not any(
        line.startswith("::error") for line in run("validate", str(BASE), "--format", "github").stdout.splitlines()
    )


def test_github_escaping() -> None:
    d = Diagnostic("specs/a,b:c%.yaml", 3, 7, "Model", "iris", "bad: 100%, really\r\nsecond line")
    out = report_module.as_github([d])
    assert out == (
        "::error file=specs/a%2Cb%3Ac%25.yaml,line=3,col=7,title=mlp schema%3A Model/iris"
        "::bad: 100%25, really%0D%0Asecond line"
    )
    assert GITHUB_LINE.match(out)


def test_gitlab_format(many_defects: tuple[Path, set[tuple[str, str]]], tmp_path: Path) -> None:
    root, _ = many_defects
    out = tmp_path / "gl-code-quality-report.json"
    proc = run("validate", str(root), "--format", "gitlab", "--output-file", str(out))
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "errors in 9 files" in proc.stderr  # a summary for the job log
    issues = json.loads(out.read_text())
    report = json_report(root)
    assert isinstance(issues, list) and len(issues) == len(report["diagnostics"])
    for issue, d in zip(issues, report["diagnostics"], strict=True):
        assert {"description", "check_name", "fingerprint", "severity", "location"} <= set(issue)
        assert isinstance(issue["description"], str) and d["message"] in issue["description"]
        assert isinstance(issue["check_name"], str) and issue["check_name"]
        assert issue["severity"] in GITLAB_SEVERITIES
        assert issue["location"]["path"] == d["path"] and not issue["location"]["path"].startswith("/")
        assert issue["location"]["lines"]["begin"] == d["line"]
    fingerprints = [i["fingerprint"] for i in issues]
    assert len(set(fingerprints)) == len(fingerprints)
    assert json.loads(run("validate", str(BASE), "--format", "gitlab").stdout) == []


def test_gitlab_fingerprints_unique_and_stable() -> None:
    """Identical messages at two places still get distinct fingerprints; moving lines keeps them."""
    same = [
        Diagnostic("specs/m.yaml", 5, 3, "Model", "m", "plaintext secret in 'token': x", "policy"),
        Diagnostic("specs/m.yaml", 9, 3, "Model", "m", "plaintext secret in 'token': x", "policy"),
    ]
    first = [i["fingerprint"] for i in json.loads(report_module.as_gitlab(same))]
    assert len(set(first)) == 2
    moved = [Diagnostic(d.path, d.line + 10, d.col, d.kind, d.name, d.message, d.rule) for d in same]
    assert [i["fingerprint"] for i in json.loads(report_module.as_gitlab(moved))] == first


def test_ci_paths_are_relative_to_the_workspace(tmp_path: Path) -> None:
    """`mlp validate platform/` in a checkout: annotations must name platform/specs/..., not specs/..."""
    root = tmp_path / "platform"
    shutil.copytree(BASE, root)
    edit(root, "environments/prod.yaml", "team:leads", "team:leeds")
    github = subprocess.run(
        [*MLP, "validate", "platform", "--format", "github"], capture_output=True, text=True, cwd=tmp_path, timeout=30
    )
    assert github.stdout.startswith("::error file=platform/environments/prod.yaml,line=10,col=35,"), github.stdout
    gitlab = subprocess.run(
        [*MLP, "validate", "platform/", "--format", "gitlab"], capture_output=True, text=True, cwd=tmp_path, timeout=30
    )
    assert [i["location"]["path"] for i in json.loads(gitlab.stdout)] == ["platform/environments/prod.yaml"]
    inside = subprocess.run(
        [*MLP, "validate", "--format", "github"], capture_output=True, text=True, cwd=root, timeout=30
    )
    assert inside.stdout.startswith("::error file=environments/prod.yaml,line=10,"), inside.stdout


def test_imports_stay_light() -> None:
    """`--help` imports no pydantic or YAML; validating imports none of the extras' heavy libraries.

    The import cost is benchmarked in benchmarks/validate.py; this pins the reason it is low.
    """
    probe = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from mlp.cli.main import cli\n"
        "args = sys.argv[1:]\n"
        "result = CliRunner().invoke(cli, args)\n"
        "heavy = ('pydantic', 'ruamel', 'jsonschema', 'git', 'jinja2', 'kubernetes', 'fastapi', 'uvicorn', 'numpy',\n"
        "         'sklearn', 'xgboost', 'boto3', 'kserve', 'httpx')\n"
        "print(result.exit_code, sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    help_run = subprocess.run(
        [sys.executable, "-c", probe, "validate", "--help"], capture_output=True, text=True, timeout=30
    )
    assert help_run.stdout.strip() == "0 []", help_run.stdout + help_run.stderr
    full = subprocess.run(
        [sys.executable, "-c", probe, "validate", str(ROOT)], capture_output=True, text=True, timeout=30
    )
    code, _, loaded = full.stdout.strip().partition(" ")
    assert code == "0", full.stdout + full.stderr
    assert set(ast.literal_eval(loaded)) <= {"pydantic", "ruamel"}, loaded  # core dependencies only
