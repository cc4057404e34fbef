"""Shared test helpers: where the repository and the shared fixtures are."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"


@pytest.fixture
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"shared fixtures not found at {FIXTURES} (they sit beside the repository in ../shared)")
    return FIXTURES


@pytest.fixture
def example_repo() -> Path:
    """The example platform repository at the top of this project."""
    return REPO_ROOT
