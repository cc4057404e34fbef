"""`mlp validate` against a corpus of broken repositories, one defect each.

Every case copies the minimal valid repository in `tests/broken/base/` to a temporary
folder, applies one defect from the table below and runs the real CLI. Each must exit 1,
name the right file and the exact line, say what is wrong, and never print a traceback.
The expected line is the line of a marker text in the *broken* file, so the table says
in words where the problem is ("the line holding `version: 9`"), not a number that was
copied from the output.

The hostile inputs (alias bomb, 50 MB file, deep nesting, binary, non-UTF-8) also run as
real `mlp` processes under a 1 GiB address-space limit and must finish in under 2 s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlp.cli.validate import validate

pytestmark = pytest.mark.timeout(120)

BASE = Path(__file__).resolve().parent / "broken" / "base"
# the installed console script, as CI runs it; `python -m` when the venv has none
_SCRIPT = Path(sys.executable).parent / "mlp"
MLP = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "mlp.cli.main"]
Files = dict[str, bytes]


# --- defects -----------------------------------------------------------------------------


def replace(path: str, old: str, new: str) -> Callable[[Files], None]:
    """A defect that changes one exact text (present exactly once) in one file."""

    def apply(files: Files) -> None:
        text = files[path].decode()
        assert text.count(old) == 1, f"{old!r} must occur once in {path}"
        files[path] = text.replace(old, new).encode()

    return apply


def replace_bytes(path: str, old: bytes, new: bytes) -> Callable[[Files], None]:
    def apply(files: Files) -> None:
        assert files[path].count(old) == 1
        files[path] = files[path].replace(old, new)

    return apply


def crlf(path: str) -> Callable[[Files], None]:
    def apply(files: Files) -> None:
        files[path] = files[path].replace(b"\n", b"\r\n")

    return apply


def add(path: str, data: str | bytes) -> Callable[[Files], None]:
    def apply(files: Files) -> None:
        files[path] = data if isinstance(data, bytes) else data.encode()

    return apply


def both(*defects: Callable[[Files], None]) -> Callable[[Files], None]:
    def apply(files: Files) -> None:
        for defect in defects:
            defect(files)

    return apply


def billion_laughs() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Case:
    id: str
    defect: Callable[[Files], None]
    path: str  # file the diagnostic must name
    marker: str | None  # the diagnostic's line is the first line of `path` containing this; None: `line`
    message: str  # text the diagnostic's message must contain
    line: int = 1
    errors: int | None = 1  # exact number of errors expected; None: at least one
    hostile: bool = False  # also run as a real process under time and memory limits
    extra: dict[str, str] = field(default_factory=dict)


MODEL, DEV, STAGING, PROD = (
    "specs/model.yaml",
    "environments/dev.yaml",
    "environments/staging.yaml",
    "environments/prod.yaml",
)
V1_URI = "s3://models/iris/1/model.joblib"

CASES: list[Case] = [
    # YAML
    Case(
        "syntax-error",
        replace(MODEL, "framework: sklearn", "framework: sklearn: x"),
        MODEL,
        "framework: sklearn: x",
        "YAML syntax error",
    ),
    Case(
        "tab-indentation",
        replace(MODEL, "  framework: sklearn", "\tframework: sklearn"),
        MODEL,
        "\tframework",
        "tabs are not allowed",
    ),
    Case(
        "duplicate-key", replace(MODEL, "  team: ds\n", "  team: ds\n  team: ml\n"), MODEL, "team: ml", "duplicate key"
    ),
    Case("empty-file", add("specs/empty.yaml", ""), "specs/empty.yaml", None, "empty file"),
    Case("only-comments", add("specs/comment.yaml", "# nothing here\n---\n"), "specs/comment.yaml", None, "empty file"),
    Case(
        "binary-file",
        add("specs/blob.yaml", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"),
        "specs/blob.yaml",
        None,
        "binary file",
        line=3,
        hostile=True,
    ),
    Case(
        "non-utf8",
        replace_bytes(MODEL, b"name: iris\n", b"name: iris\n  description: caf\xe9 au lait\n"),
        MODEL,
        "description: caf",
        "not UTF-8",
        hostile=True,
    ),
    Case(
        "crlf-line-endings",
        both(replace(MODEL, "  framework: sklearn\n", "  framework: sklearn\n  owner: bob\n"), crlf(MODEL)),
        MODEL,
        "owner: bob",
        "unknown field 'owner'",
    ),
    Case(
        "utf16-file",
        add("specs/utf16.yaml", "apiVersion: mlp.dev/v1\n".encode("utf-16")),
        "specs/utf16.yaml",
        None,
        "UTF-16 text",
    ),
    Case(
        "alias-bomb", add("specs/bomb.yaml", billion_laughs()), "specs/bomb.yaml", "f: &f", "alias bomb", hostile=True
    ),
    Case(
        "deep-flow-nesting",
        add("specs/deep.yaml", "a: " + "[" * 100_000 + "]" * 100_000 + "\n"),
        "specs/deep.yaml",
        None,
        "nesting deeper than",
        hostile=True,
    ),
    Case(
        "deep-block-nesting",
        add("specs/deep.yaml", "".join(f"{'  ' * i}k{i}:\n" for i in range(200)) + " " * 400 + "v\n"),
        "specs/deep.yaml",
        "k64:",
        "nesting deeper than",
        hostile=True,
    ),
    Case(
        "not-a-mapping",
        add("specs/list.yaml", "- apiVersion: mlp.dev/v1\n- kind: Model\n"),
        "specs/list.yaml",
        None,
        "expected a mapping",
    ),
    # schema
    Case("wrong-type", replace(MODEL, "- version: 2", "- version: two"), MODEL, "version: two", "valid integer"),
    Case(
        "unknown-field",
        replace(MODEL, "  framework: sklearn\n", "  framework: sklearn\n  owner: bob\n"),
        MODEL,
        "owner: bob",
        "unknown field 'owner'",
    ),
    Case(
        "missing-field",
        replace(MODEL, "  framework: sklearn\n", ""),
        MODEL,
        "spec:",
        "missing required field 'framework'",
    ),
    Case(
        "bad-name", replace(MODEL, "name: iris", "name: Iris_Model"), MODEL, "name: Iris_Model", "DNS-1123", errors=None
    ),
    Case(
        "wrong-api-version",
        replace(MODEL, "apiVersion: mlp.dev/v1", "apiVersion: mlp.dev/v2"),
        MODEL,
        "apiVersion",
        "expected 'mlp.dev/v1'",
        errors=None,
    ),
    Case(
        "unknown-kind",
        replace("specs/experiment.yaml", "kind: Experiment", "kind: Experimant"),
        "specs/experiment.yaml",
        "kind: Experimant",
        "unknown kind",
    ),
    Case(
        "duplicate-name",
        add("specs/zz-model-copy.yaml", (BASE / MODEL).read_text()),
        "specs/zz-model-copy.yaml",
        "name: iris",
        "duplicate Model name 'iris'",
    ),
    # references
    Case(
        "model->featureview",
        replace(MODEL, "features: iris-measurements", "features: iris-measure"),
        MODEL,
        "features: iris-measure",
        "feature view 'iris-measure' does not exist",
    ),
    Case(
        "featureview->entity",
        replace("specs/features.yaml", "entities: [flower]", "entities: [tree]"),
        "specs/features.yaml",
        "entities: [tree]",
        "entity 'tree' does not exist",
    ),
    Case(
        "experiment->model",
        replace("specs/experiment.yaml", "model: iris", "model: irsi"),
        "specs/experiment.yaml",
        "model: irsi",
        "model 'irsi' does not exist",
    ),
    Case(
        "experiment-run->version",
        replace("specs/experiment.yaml", "modelVersion: 2", "modelVersion: 7"),
        "specs/experiment.yaml",
        "modelVersion: 7",
        "has no version 7",
    ),
    Case(
        "monitor->model",
        replace("specs/monitor.yaml", "model: iris", "model: rose"),
        "specs/monitor.yaml",
        "model: rose",
        "model 'rose' does not exist",
    ),
    Case(
        "monitor->environment",
        replace("specs/monitor.yaml", "[staging]", "[stagign]"),
        "specs/monitor.yaml",
        "[stagign]",
        "environment 'stagign' does not exist",
    ),
    Case(
        "monitor-not-deployed-in-env",
        replace(
            STAGING,
            "  deployments:\n    iris:\n      version: 1\n      canary: {version: 2, steps: [10, 50, 100]}\n",
            "  deployments: {}\n",
        ),
        "specs/monitor.yaml",
        "[staging]",
        "not deployed in environment 'staging'",
    ),
    Case(
        "monitor-not-deployed-anywhere",
        both(
            replace("specs/monitor.yaml", "  environments: [staging]\n", ""),
            replace(
                DEV,
                "  deployments:\n    iris:\n      version: 1\n      abTest: {version: 2, share: 20}\n"
                "      shadow: {version: 2, percent: 10}\n",
                "  deployments: {}\n",
            ),
            replace(
                STAGING,
                "  deployments:\n    iris:\n      version: 1\n      canary: {version: 2, steps: [10, 50, 100]}\n",
                "  deployments: {}\n",
            ),
            replace(
                PROD,
                "  deployments:\n    iris:\n      version: 1\n",
                "  deployments: {}\n",
            ),
        ),
        "specs/monitor.yaml",
        "model: iris",
        "not deployed in any environment",
    ),
    Case(
        "monitor-drift-feature-not-input",
        replace("specs/monitor.yaml", "features: [sepal_length]", "features: [sepal_length, colour]"),
        "specs/monitor.yaml",
        "colour",
        "'colour' is not an input of model 'iris'",
    ),
    Case(
        "monitor-reference-digest-malformed",
        replace("specs/monitor.yaml", "digest: sha256:aaaa", "digest: md5:aaaa"),
        "specs/monitor.yaml",
        "md5:aaaa",
        "is not a digest",
    ),
    Case(
        "monitor-kubernetes-without-payload-log",
        replace("specs/monitor.yaml", "  payloadLog: s3://payloads/staging\n", ""),
        "specs/monitor.yaml",
        "spec:",
        "kubernetes target: set payloadLog",
    ),
    Case(
        "monitor-tolerance-without-recorded-metric",
        replace("specs/monitor.yaml", "  drift:\n", "  performance: [{metric: f1, tolerance: 0.05}]\n  drift:\n"),
        "specs/monitor.yaml",
        "tolerance: 0.05",
        "to record metrics.f1",
    ),
    Case(
        "monitor-schedule-not-cron",
        replace("specs/monitor.yaml", "  model: iris\n", "  model: iris\n  schedule: every five minutes\n"),
        "specs/monitor.yaml",
        "every five minutes",
        "Wrong number of fields",
    ),
    Case(
        "duplicate-model-version",
        replace(MODEL, "- version: 2", "- version: 1"),
        MODEL,
        None,
        "duplicate version 1",
        line=20,
        errors=None,
    ),  # line 20: the second `- version:` (v2's now gone too)
    Case(
        "canary-traffic-not-a-step",
        replace(STAGING, "steps: [10, 50, 100]}", "steps: [10, 50, 100], traffic: 30}"),
        STAGING,
        "canary:",
        "canary traffic 30 is not one of the steps",
    ),
    Case(
        "environment->model",
        replace(DEV, "    iris:", "    irsi:"),
        DEV,
        "irsi:",
        "deploys model 'irsi', which does not exist",
    ),
    Case(
        "environment->version",
        replace(PROD, "      version: 1\n", "      version: 5\n"),
        PROD,
        "version: 5",
        "version 5 of model 'iris' does not exist",
    ),
    Case(
        "canary-version-missing",
        replace(STAGING, "canary: {version: 2", "canary: {version: 9"),
        STAGING,
        "canary:",
        "canary version 9 of model 'iris' does not exist",
    ),
    Case(
        "canary-equals-stable",
        replace(STAGING, "canary: {version: 2", "canary: {version: 1"),
        STAGING,
        "canary:",
        "same as the stable version",
    ),
    Case(
        "canary-steps-decrease",
        replace(STAGING, "steps: [10, 50, 100]", "steps: [50, 10, 100]"),
        STAGING,
        "steps:",
        "canary steps must increase and end at 100",
    ),
    Case(
        "canary-steps-not-100",
        replace(STAGING, "steps: [10, 50, 100]", "steps: [10, 50]"),
        STAGING,
        "steps:",
        "canary steps must increase and end at 100",
    ),
    Case(
        "abtest-version-missing",
        replace(DEV, "abTest: {version: 2", "abTest: {version: 8"),
        DEV,
        "abTest:",
        "abTest version 8 of model 'iris' does not exist",
    ),
    Case(
        "shadow-version-missing",
        replace(DEV, "shadow: {version: 2", "shadow: {version: 8"),
        DEV,
        "shadow:",
        "shadow version 8 of model 'iris' does not exist",
    ),
    Case(
        "promotesfrom-missing",
        replace(STAGING, "promotesFrom: dev", "promotesFrom: qa"),
        STAGING,
        "promotesFrom: qa",
        "environment 'qa' does not exist",
    ),
    Case(
        "approvals-team-missing",
        replace(PROD, "team:leads", "team:leeds"),
        PROD,
        "team:leeds",
        "team 'leeds' does not exist",
    ),
    Case(
        "metadata-team-missing", replace(MODEL, "team: ds", "team: dz"), MODEL, "team: dz", "team 'dz' does not exist"
    ),
    Case(
        "signature-type-vs-featureview",
        replace(MODEL, "{name: petal_length, type: float}", "{name: petal_length, type: int}"),
        MODEL,
        "petal_length, type: int",
        "declares it float",
    ),
    Case(
        "signature-name-vs-featureview",
        replace(MODEL, "{name: petal_length, type: float}", "{name: petal_len, type: float}"),
        MODEL,
        "petal_len,",
        "'petal_len' is not a feature of feature view 'iris-measurements'",
    ),
    Case(
        "promotion-cycle-2",
        replace(DEV, "  target: {kind: local}\n", "  target: {kind: local}\n  promotesFrom: staging\n"),
        DEV,
        "promotesFrom: staging",
        "promotion cycle: dev -> staging -> dev",
    ),
    Case(
        "promotion-cycle-3",
        replace(DEV, "  target: {kind: local}\n", "  target: {kind: local}\n  promotesFrom: prod\n"),
        DEV,
        "promotesFrom: prod",
        "promotion cycle: dev -> prod -> staging -> dev",
    ),
    # policy
    Case(
        "secret-password",
        replace(MODEL, "  team: ds\n", "  team: ds\n  annotations: {db_password: hunter2}\n"),
        MODEL,
        "db_password",
        "plaintext secret in 'db_password'",
    ),
    Case(
        "secret-token",
        replace(DEV, "  team: ds\n", "  team: ds\n  labels:\n    slack_token: xoxb-1234\n"),
        DEV,
        "slack_token",
        "plaintext secret in 'slack_token'",
    ),
    Case(
        "secret-aws-key-id",
        replace(MODEL, "  team: ds\n", "  team: ds\n  description: uses AKIAIOSFODNN7EXAMPLE\n"),
        MODEL,
        "AKIAIOSFODNN7EXAMPLE",
        "AWS access key id",
    ),
    Case(
        "uri-dotdot",
        replace(MODEL, V1_URI, "s3://models/iris/../../secrets/model.joblib"),
        MODEL,
        "secrets/model.joblib",
        "path traversal",
    ),
    Case(
        "uri-dotdot-encoded",
        replace(MODEL, V1_URI, "s3://models/iris/%2e%2e/%2E%2E/secrets/model.joblib"),
        MODEL,
        "secrets/model.joblib",
        "path traversal",
    ),
    Case(
        "uri-double-encoded",
        replace(MODEL, V1_URI, "s3://models/iris/%252e%252e/x/model.joblib"),
        MODEL,
        "x/model.joblib",
        "path traversal",
    ),
    Case("uri-scheme", replace(MODEL, V1_URI, "ftp://models/iris/1/model.joblib"), MODEL, "ftp://", "uses ftp://"),
    Case(
        "uri-local-for-kubernetes",
        replace(MODEL, V1_URI, "file:///models/iris/1/model.joblib"),
        PROD,
        "      version: 1",
        "has a local artifact URI",
        errors=2,
    ),  # prod and staging deploy v1 on kubernetes
    Case(
        "uri-credentials",
        replace(MODEL, V1_URI, "https://user:pw@models.example/iris/1/model.joblib"),
        MODEL,
        "user:pw@",
        "embeds credentials",
    ),
    Case(
        "production-without-approvals",
        replace(PROD, '  approvals: {required: 1, from: ["team:leads"]}\n', ""),
        PROD,
        "tier: production",
        "must require at least one approval",
    ),
]


@dataclass
class Broken:
    root: Path
    files: Files


def make_repo(tmp: Path, defect: Callable[[Files], None]) -> Broken:
    root = tmp / "repo"
    shutil.copytree(BASE, root)
    files = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    before = dict(files)
    defect(files)
    for rel, data in files.items():
        if before.get(rel) != data:
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    return Broken(root, files)


def expected_line(case: Case, broken: Broken) -> int:
    if case.marker is None:
        return case.line
    data = (broken.root / case.path).read_bytes()
    for number, line in enumerate(data.split(b"\n"), start=1):
        if case.marker.encode() in line:
            return number
    raise AssertionError(f"marker {case.marker!r} not in {case.path}")


def test_base_repository_is_valid() -> None:
    result = CliRunner().invoke(validate, [str(BASE)])
    assert result.exit_code == 0, result.output
    assert "ok: 10 documents in 8 files valid" in result.output


def test_corpus_has_at_least_30_cases() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


# deep-flow-nesting runs only as a separate process: a regression there is a segfault of the
# C composer, which in-process would take the whole pytest run down with it
@pytest.mark.parametrize("case", [c for c in CASES if not c.id.startswith("deep-flow")], ids=lambda c: c.id)
def test_broken_repository(case: Case, tmp_path: Path) -> None:
    broken = make_repo(tmp_path, case.defect)
    result = CliRunner().invoke(validate, [str(broken.root), "--format", "json"])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    errors = [d for d in report["diagnostics"] if d["severity"] == "error"]
    line = expected_line(case, broken)
    shown = "\n".join(f"{d['path']}:{d['line']}:{d['col']}: {d['message']}" for d in errors)
    assert any(d["path"] == case.path and d["line"] == line and case.message in d["message"] for d in errors), (
        f"expected {case.path}:{line}: ...{case.message}...; got:\n{shown}"
    )
    if case.errors is not None:
        assert len(errors) == case.errors, shown


@dataclass
class Run:
    stdout: str
    stderr: str
    code: int
    wall: float  # seconds
    cpu: float  # user + system seconds of that very process (wait4: other tests' children do not count)
    rss: int  # peak resident KiB of that very process

    def check_fast_and_small(self) -> None:
        # CPU time is the process's own cost; wall time also counts whatever else the (2-core)
        # machine runs at the same time, so its bound is looser to keep the suite stable under load
        assert self.cpu < FAST_CPU_S, f"used {self.cpu:.2f}s of CPU"
        assert self.wall < FAST_WALL_S, f"took {self.wall:.2f}s"
        assert self.rss < MAX_RSS_KIB, f"peak RSS {self.rss // 1024} MiB"


FAST_CPU_S = 2.0
FAST_WALL_S = 2.0 * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
# Peak resident memory allowed for refusing hostile input (the whole CLI process).
MAX_RSS_KIB = 200 * 1024


# A small launcher forks the command under the address-space limit and reports that child's
# own CPU time and peak RSS. Measured from pytest directly, the child's peak RSS would be
# pytest's: a fork copies the parent's resident size and Linux keeps the peak across exec.
_LAUNCH = """
import json, os, resource, sys
limit, report, cmd = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
pid = os.fork()
if pid == 0:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    os.execv(cmd[0], cmd)
_, status, usage = os.wait4(pid, 0)
with open(report, "w") as f:
    json.dump([usage.ru_utime + usage.ru_stime, usage.ru_maxrss], f)
code = os.waitstatus_to_exitcode(status)
if code < 0:
    os.kill(os.getpid(), -code)
sys.exit(code)
"""


def run_limited(args: list[str], *, memory: int = 1 << 30, timeout: float = 30) -> Run:
    """Run a process under an address-space limit of `memory` bytes (RLIMIT_AS)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "usage.json"
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", _LAUNCH, str(memory), str(report), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        elapsed = time.perf_counter() - start
        cpu, rss = json.loads(report.read_text()) if report.exists() else (0.0, 0)
        return Run(proc.stdout, proc.stderr, proc.returncode, elapsed, cpu, rss)


@pytest.mark.parametrize("case", [c for c in CASES if c.hostile], ids=lambda c: c.id)
def test_hostile_input_as_real_process(case: Case, tmp_path: Path) -> None:
    broken = make_repo(tmp_path, case.defect)
    run = run_limited([*MLP, "validate", str(broken.root)])
    assert "Traceback" not in run.stdout + run.stderr
    assert run.code == 1, run.stdout + run.stderr
    line = expected_line(case, broken)
    assert any(ln.startswith(f"{case.path}:{line}:") and case.message in ln for ln in run.stdout.splitlines()), (
        run.stdout
    )
    run.check_fast_and_small()


@pytest.fixture(scope="module")
def huge_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The valid base plus one 50 MB spec file, written once for the module."""
    root = tmp_path_factory.mktemp("huge") / "repo"
    shutil.copytree(BASE, root)
    chunk = (
        b"apiVersion: mlp.dev/v1\nkind: Team\nmetadata: {name: t}\nspec:\n  members:\n"
        + b"    - {user: someone}\n" * 4096
    )
    with (root / "specs" / "huge.yaml").open("wb") as f:
        written = 0
        while written < 50 * 1024 * 1024:
            written += f.write(chunk)
    return root


def test_huge_file_is_refused_fast_in_bounded_memory(huge_repo: Path) -> None:
    run = run_limited([*MLP, "validate", str(huge_repo)])
    assert "Traceback" not in run.stdout + run.stderr
    assert run.code == 1, run.stdout + run.stderr
    assert any(ln.startswith("specs/huge.yaml:1:1:") and "file too large" in ln for ln in run.stdout.splitlines()), (
        run.stdout
    )
    run.check_fast_and_small()


def test_sample_of_corpus_as_real_processes(tmp_path: Path) -> None:
    """A sample of the ordinary cases through the installed entry point, text output."""
    for case in CASES[::6]:
        broken = make_repo(tmp_path / case.id, case.defect)
        proc = subprocess.run([*MLP, "validate", str(broken.root)], capture_output=True, text=True, timeout=30)
        assert "Traceback" not in proc.stdout + proc.stderr
        assert proc.returncode == 1, (case.id, proc.stdout, proc.stderr)
        line = expected_line(case, broken)
        assert any(ln.startswith(f"{case.path}:{line}:") for ln in proc.stdout.splitlines()), (case.id, proc.stdout)
        assert re.fullmatch(r"\d+ errors? in \d+ files?", proc.stdout.rstrip().splitlines()[-1]), proc.stdout


@pytest.mark.parametrize("case", [c for c in CASES if not c.id.startswith("deep-flow")], ids=lambda c: c.id)
def test_ci_formats_are_well_formed_for_every_case(case: Case, tmp_path: Path) -> None:
    """Every corpus diagnostic survives the github and gitlab encodings (messages hold %, :, ', ...)."""
    from test_validate_cli import GITHUB_LINE, GITLAB_SEVERITIES, _unescape

    broken = make_repo(tmp_path, case.defect)
    runner = CliRunner()
    diagnostics = json.loads(runner.invoke(validate, [str(broken.root), "--format", "json"]).output)["diagnostics"]
    github = runner.invoke(validate, [str(broken.root), "--format", "github"])
    assert github.exit_code == 1
    lines = github.output.splitlines()
    assert len(lines) == len(diagnostics)
    for line, d in zip(lines, diagnostics, strict=True):
        m = GITHUB_LINE.match(line)
        assert m, line
        assert (_unescape(m["file"]), int(m["line"]), int(m["col"]), _unescape(m["message"])) == (
            d["path"],
            d["line"],
            d["col"],
            d["message"],
        )
    issues = json.loads(runner.invoke(validate, [str(broken.root), "--format", "gitlab"]).output)
    assert [(i["location"]["path"], i["location"]["lines"]["begin"]) for i in issues] == [
        (d["path"], d["line"]) for d in diagnostics
    ]
    assert all(i["severity"] in GITLAB_SEVERITIES and i["check_name"] and i["description"] for i in issues)
    assert len({i["fingerprint"] for i in issues}) == len(issues)
