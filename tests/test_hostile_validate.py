"""Hostile and misleading repositories against the real `mlp validate` (issue 11).

What validate accepts must be what the runtime accepts (integer bounds, derived names,
quantities, cron, time zones, durations), human output must not carry control characters,
and odd files (named pipes, non-UTF-8 names, dangling symbolic links, UTF-16) must give
one located error, never a hang or a traceback. Each runs the installed `mlp` as a process
under an address-space limit and checks its CPU time and peak memory.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import git
import pytest
from test_validate_corpus import BASE, MLP, run_limited

from mlp.controller.windows import sync_allowed
from mlp.sources.directory import read_directory
from mlp.sources.git import GitSource
from mlp.specs import load
from mlp.specs.models import SyncWindow

pytestmark = pytest.mark.timeout(120)

LONG = "m" + "x" * 62  # 63 characters: the longest DNS label


def repo(tmp_path: Path, edit: Callable[[Path], None] | None = None) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(BASE, root)
    if edit is not None:
        edit(root)
    return root


def sub(path: str, old: str, new: str, count: int = 1) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        text = (root / path).read_text()
        assert text.count(old) == count, (path, old)
        (root / path).write_text(text.replace(old, new))

    return edit


def both(*edits: Callable[[Path], None]) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        for e in edits:
            e(root)

    return edit


def rename_model(new: str) -> Callable[[Path], None]:
    """Rename the model `iris` everywhere it is referenced (not `iris-drift` or `iris-measurements`)."""

    def edit(root: Path) -> None:
        for path in root.rglob("*.yaml"):
            path.write_text(re.sub(r"\biris\b(?!-)", new, path.read_text()))

    return edit


def validate(root: Path) -> tuple[int, list[str], str]:
    run = run_limited([*MLP, "validate", str(root)])
    assert "Traceback" not in run.stdout + run.stderr, run.stdout + run.stderr
    run.check_fast_and_small()
    return run.code, run.stdout.splitlines(), run.stderr


def assert_located(lines: list[str], path: str, text: str) -> None:
    assert any(re.match(rf"{re.escape(path)}:\d+:\d+: ", ln) and text in ln for ln in lines), "\n".join(lines)


@pytest.mark.parametrize(
    ("edit", "path", "message"),
    [
        (
            sub("specs/model.yaml", "- version: 2\n", "- version: 99999999999999999999\n"),
            "specs/model.yaml",
            "less than or equal to 9223372036854775807",
        ),
        (
            sub(
                "environments/prod.yaml",
                "version: 1\n",
                "version: 1\n      autoscaling: {maxReplicas: 99999999999999999999}\n",
            ),
            "environments/prod.yaml",
            "less than or equal to 2147483647",
        ),
        (
            sub("specs/monitor.yaml", "name: iris-drift", f"name: {LONG[:60]}"),
            "specs/monitor.yaml",
            "it becomes the Service",
        ),
        (
            both(
                rename_model(LONG),
                sub("environments/staging.yaml", "  serving: {", "  serving: {mode: Standard, gateway: {name: gw}, "),
            ),
            "environments/staging.yaml",
            "-canary",
        ),
        (rename_model("9iris"), "specs/model.yaml", "must start with a letter"),
        (
            sub("environments/prod.yaml", "version: 1\n", 'version: 1\n      resources: {requests: {cpu: "1x"}}\n'),
            "environments/prod.yaml",
            "not a Kubernetes quantity",
        ),
        (
            sub("environments/prod.yaml", "version: 1\n", "version: 1\n      resources: {requests: {cpu: banana}}\n"),
            "environments/prod.yaml",
            "not a Kubernetes quantity",
        ),
        (
            sub("environments/prod.yaml", "version: 1\n", "version: 1\n      resources: {limits: {memory: 512MB}}\n"),
            "environments/prod.yaml",
            "use Mi/Gi",
        ),
        (
            sub(
                "environments/prod.yaml",
                "  deployments:",
                "  sync: {windows: [{kind: deny, schedule: '0 18 * * FRI-MON', duration: 2h}]}\n  deployments:",
            ),
            "environments/prod.yaml",
            "Bad day-of-week",
        ),
        (
            sub(
                "environments/prod.yaml",
                "  deployments:",
                "  sync: {windows: [{kind: deny, schedule: '0 18 * * 5', duration: 2h, timezone: Mars/Olympus}]}\n"
                "  deployments:",
            ),
            "environments/prod.yaml",
            "not an IANA time zone",
        ),
        (
            sub("specs/monitor.yaml", "  drift:", "  schedule: every 15 minutes\n  drift:"),
            "specs/monitor.yaml",
            "cron expression",
        ),
    ],
    ids=[
        "huge-version",
        "huge-maxReplicas",
        "monitor-service-name",
        "shadow-name",
        "leading-digit",
        "cpu-1x",
        "cpu-banana",
        "memory-MB",
        "cron-wraparound",
        "timezone",
        "monitor-schedule",
    ],
)
def test_validate_refuses_what_the_runtime_refuses(
    tmp_path: Path, edit: Callable[[Path], None], path: str, message: str
) -> None:
    code, lines, _ = validate(repo(tmp_path, edit))
    assert code == 1, lines
    assert_located(lines, path, message)


def test_what_validate_accepts_the_window_parser_evaluates(tmp_path: Path) -> None:
    """`@weekly`, `2h30m` and an IANA zone validate, and the runtime evaluates them (never fails closed)."""
    window = "  sync: {windows: [{kind: deny, schedule: '@weekly', duration: 2h30m, timezone: Europe/Paris}]}\n"
    root = repo(tmp_path, sub("environments/prod.yaml", "  deployments:", window + "  deployments:"))
    code, lines, _ = validate(root)
    assert code == 0, lines
    env = load(read_directory(root)).specs.environments["prod"]
    # Sunday 00:00 in Paris is Saturday 23:00 UTC: open for two and a half hours, then closed
    allowed, reason = sync_allowed(env.spec.sync.windows, datetime(2026, 11, 28, 23, 30, tzinfo=UTC))
    assert not allowed and "open since 2026-11-29 00:00" in reason, reason
    assert sync_allowed(env.spec.sync.windows, datetime(2026, 11, 29, 1, 31, tzinfo=UTC)) == (True, "")
    # and what validate refuses, the runtime refuses too (fails closed, saying why)
    bad = SyncWindow.model_construct(kind="deny", schedule="0 18 * * FRI-MON", duration="2h", timezone="UTC")
    allowed, reason = sync_allowed([bad], datetime(2026, 11, 28, 23, 30, tzinfo=UTC))
    assert not allowed and "Bad day-of-week" in reason


def test_yaml_12_flow_scalar_with_colon_is_valid(tmp_path: Path) -> None:
    code, lines, _ = validate(repo(tmp_path, sub("environments/prod.yaml", '["team:leads"]', "[team:leads]")))
    assert code == 0, lines


def test_control_characters_never_reach_the_text_output(tmp_path: Path) -> None:
    injected = 'name: "x\\n::error file=README.md::pwned\\u001b[2J"'
    code, lines, _ = validate(repo(tmp_path, sub("specs/teams.yaml", "name: ds", injected)))
    assert code == 1
    assert not any(ln.startswith("::") for ln in lines), lines
    assert not any("\x1b" in ln for ln in lines), lines
    assert any("x\\n::error file=README.md::pwned\\x1b[2J" in ln for ln in lines), lines


def test_named_pipe_is_refused_without_blocking(tmp_path: Path) -> None:
    root = repo(tmp_path)
    os.mkfifo(root / "specs" / "x.yaml")
    code, lines, _ = validate(root)
    assert code == 1
    assert_located(lines, "specs/x.yaml", "named pipe")


def test_file_name_that_is_not_utf8(tmp_path: Path) -> None:
    root = repo(tmp_path)
    with open(os.path.join(os.fsencode(root / "specs"), b"bad-\xff.yaml"), "wb") as f:
        f.write(b"apiVersion: mlp.dev/v1\n")
    code, lines, _ = validate(root)
    assert code == 1
    assert_located(lines, "specs/bad-\\xff.yaml", "not valid UTF-8")


def test_dangling_symlink_is_one_located_error(tmp_path: Path) -> None:
    root = repo(tmp_path)
    (root / "specs" / "gone.yaml").symlink_to(root / "specs" / "nowhere.yaml")
    code, lines, _ = validate(root)
    assert code == 1, lines
    assert_located(lines, "specs/gone.yaml", "dangling symbolic link")
    assert lines[-1].startswith("1 error"), lines


def test_utf16_file_is_one_error_not_many(tmp_path: Path) -> None:
    def edit(root: Path) -> None:
        path = root / "specs" / "model.yaml"
        path.write_bytes(path.read_text().encode("utf-16"))

    code, lines, _ = validate(repo(tmp_path, edit))
    assert code == 1
    assert_located(lines, "specs/model.yaml", "UTF-16")
    assert lines[-1].startswith("1 error"), lines


def test_duplicate_documents_are_bounded(tmp_path: Path) -> None:
    """21 files of 1 MiB of small documents: the repository's work budget stops it early."""
    doc = b"---\napiVersion: mlp.dev/v1\nkind: Team\nmetadata: {name: ds}\nspec: {members: [{user: a}]}\n"
    root = repo(tmp_path)
    for i in range(21):
        (root / "specs" / f"dup{i:02}.yaml").write_bytes(doc * ((1 << 20) // len(doc) - 1))
    run = run_limited([*MLP, "validate", str(root)], timeout=60)
    assert "Traceback" not in run.stdout + run.stderr
    assert run.code == 1
    assert any("documents" in ln and "not read" in ln for ln in run.stdout.splitlines()), run.stdout[-2000:]
    assert run.cpu < 30, f"used {run.cpu:.1f}s of CPU"
    assert run.rss < 700 * 1024, f"peak RSS {run.rss // 1024} MiB"


def test_folder_and_git_sources_follow_the_same_symlink_rule(tmp_path: Path) -> None:
    outside = tmp_path / "outside.yaml"
    outside.write_text((BASE / "specs" / "teams.yaml").read_text())
    root = repo(tmp_path)
    shutil.move(root / "specs" / "model.yaml", root / "model-real.yaml.txt")
    (root / "specs" / "model.yaml").symlink_to("../model-real.yaml.txt")  # inside: read
    (root / "specs" / "escape.yaml").symlink_to(outside)  # outside: refused
    (root / "specs" / "gone.yaml").symlink_to("nowhere.yaml")  # dangling: refused
    r = git.Repo.init(root)
    r.git.add("-A")
    r.git.commit(
        "-m", "init", author="t <t@example.com>", env={"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e"}
    )
    src = GitSource(str(root), tmp_path / "cache")
    assert src.refresh([r.active_branch.name]).error is None
    from_git = src.snapshot(r.head.commit.hexsha)
    from_dir = read_directory(root)
    assert from_git.files == from_dir.files
    assert from_git.refused == from_dir.refused
    assert set(from_dir.refused) == {"specs/escape.yaml", "specs/gone.yaml"}
    assert "specs/model.yaml" in from_dir.files
    assert [str(d) for d in load(from_git).errors] == [str(d) for d in load(from_dir).errors]


def test_platform_files_have_a_total_size_budget(tmp_path: Path) -> None:
    """Many large files (templates here: not parsed, only read) stop at the repository budget, unread."""
    root = repo(tmp_path)
    (root / "templates" / "kubernetes").mkdir(parents=True)
    for i in range(12):
        (root / "templates" / "kubernetes" / f"t{i:02}.yaml.j2").write_bytes(b"# x\n" * (900 * 1024 // 4))
    code, lines, _ = validate(root)
    assert code == 1
    assert_located(lines, "templates/kubernetes/t11.yaml.j2", "bytes in total")
    r = git.Repo.init(root)
    r.git.add("-A")
    r.git.commit("-m", "big", author="t <t@example.com>", env={"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e"})
    from mlp.sources.git import read_tree

    files, _, refused = read_tree(r.head.commit)
    assert sum(map(len, files.values())) <= 8 << 20
    assert refused == read_directory(root).refused and "templates/kubernetes/t11.yaml.j2" in refused
