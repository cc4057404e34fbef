"""Shared test helpers: where the repository and the vendored fixtures are."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Real-world data copied into the repository (sources and licences in tests/fixtures/README.md).
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture
def fixtures_dir() -> Path:
    # A missing fixture folder is a broken checkout: fail, never skip.
    if not FIXTURES.is_dir():
        pytest.fail(f"fixtures not found at {FIXTURES}: tests/fixtures is part of the repository")
    return FIXTURES


@pytest.fixture
def example_repo() -> Path:
    """The example platform repository at the top of this project."""
    return REPO_ROOT
