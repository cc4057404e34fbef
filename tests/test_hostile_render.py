"""Hostile repository templates against the real `mlp render` (issue 11).

A nested loop that never ends in practice, a string of 10 GB, unbounded macro recursion and
a loop that prints without end: each must stop as one located template error (exit 2, no
traceback) within the render budget, in bounded memory, under an address-space limit.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_validate_corpus import BASE, MLP, run_limited

pytestmark = pytest.mark.timeout(120)

TEMPLATE = "templates/kubernetes/inferenceservice.yaml.j2"
CPU_BUDGET = 2


def repo_with(tmp_path: Path, body: str) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(BASE, root)
    (root / TEMPLATE).parent.mkdir(parents=True)
    (root / TEMPLATE).write_text(
        '{% extends "package:kubernetes/inferenceservice.yaml.j2" %}\n'
        "{% block predictor_extra %}\n" + body + "\n{% endblock %}\n"
    )
    return root


@pytest.mark.parametrize(
    ("body", "message", "line"),
    [
        (
            "{% for x in range(100000) %}{% for y in range(100000) %}{% endfor %}{% endfor %}",
            # on a machine too busy to give the child its CPU seconds, the wall-clock guard stops it first
            f"used more than {CPU_BUDGET}s of CPU|rendering took longer than",
            None,
        ),
        ("{{ 'a' * 10**10 }}", "exceeds the output budget", 3),
        ("{% macro r(n) %}{{ r(n+1) }}{% endmacro %}{{ r(0) }}", "recursion too deep", 3),
        ("{% for x in range(100000) %}{{ 'abcdefghij' * 1000 }}{% endfor %}", "rendered output exceeds", None),
        ("{{ 'a'.ljust(10**9 * 5) }}", "out of memory", 3),
    ],
    ids=["nested-loop", "huge-string", "recursion", "endless-output", "huge-allocation"],
)
def test_hostile_template_is_one_located_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str, message: str, line: int | None
) -> None:
    monkeypatch.setenv("MLP_RENDER_CPU_SECONDS", str(CPU_BUDGET))
    root = repo_with(tmp_path, body)
    run = run_limited([*MLP, "render", "--env", "prod", "--repo", str(root)], timeout=60)
    assert "Traceback" not in run.stdout + run.stderr, run.stderr
    assert run.code == 2, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    where = f"{TEMPLATE}:{line}:" if line else f"{TEMPLATE}:"
    assert lines[0].startswith(f"error: {where}") and "over the render budget" in lines[0], lines
    assert any(m in lines[0] for m in message.split("|")), lines
    assert run.cpu < CPU_BUDGET + 4, f"used {run.cpu:.1f}s of CPU"
    assert run.rss < 600 * 1024, f"peak RSS {run.rss // 1024} MiB"


def test_an_honest_override_still_renders(tmp_path: Path) -> None:
    root = repo_with(tmp_path, "    nodeSelector:\n      pool: ml")
    run = run_limited([*MLP, "render", "--env", "prod", "--repo", str(root)], timeout=60)
    assert run.code == 0, run.stderr
    assert "nodeSelector" in run.stdout and "pool: ml" in run.stdout
