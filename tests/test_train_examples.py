"""scripts/train_examples.py trains the committed bytes and never edits a tracked spec unasked."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))

import train_examples


def _copy(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    for folder in ("specs", "environments"):
        shutil.copytree(REPO_ROOT / folder, repo / folder)
    return repo


def test_locked_libraries_train_the_committed_digests(tmp_path: Path) -> None:
    repo = _copy(tmp_path)
    before = (repo / "specs" / "models" / "iris.yaml").read_bytes()
    assert train_examples.main([str(repo)]) == 0
    assert (repo / "specs" / "models" / "iris.yaml").read_bytes() == before


def test_a_differing_digest_is_an_error_not_a_silent_edit(tmp_path: Path, capsys) -> None:
    repo = _copy(tmp_path)
    spec = repo / "specs" / "models" / "iris.yaml"
    text = spec.read_text()
    committed = text.split("digest: ")[1].split()[0]
    spec.write_text(text.replace(committed, "sha256:" + "0" * 64, 1))
    edited = spec.read_bytes()
    assert train_examples.main([str(repo)]) == 1
    assert spec.read_bytes() == edited
    assert "--update-digests" in capsys.readouterr().err
    assert train_examples.main([str(repo), "--update-digests"]) == 0
    assert spec.read_text() == text
