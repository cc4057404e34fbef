"""Compatibility names: `Snapshot` is the port the specs consume (`mlp.specs.snapshot`); sources produce it."""

from mlp.specs.snapshot import (
    MAX_DOCUMENTS,
    MAX_REPOSITORY_BYTES,
    MAX_SPEC_BYTES,
    OVER_BUDGET,
    SPEC_DIRS,
    TEMPLATE_DIR,
    YAML_SUFFIXES,
    Snapshot,
    display_name,
)

__all__ = [
    "MAX_DOCUMENTS",
    "MAX_REPOSITORY_BYTES",
    "MAX_SPEC_BYTES",
    "OVER_BUDGET",
    "SPEC_DIRS",
    "TEMPLATE_DIR",
    "YAML_SUFFIXES",
    "Snapshot",
    "display_name",
]
