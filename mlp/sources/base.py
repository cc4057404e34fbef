"""Compatibility names: `Snapshot` is the port the specs consume (`mlp.specs.snapshot`); sources produce it."""

from mlp.specs.snapshot import MAX_SPEC_BYTES, SPEC_DIRS, TEMPLATE_DIR, YAML_SUFFIXES, Snapshot

__all__ = ["MAX_SPEC_BYTES", "SPEC_DIRS", "TEMPLATE_DIR", "YAML_SUFFIXES", "Snapshot"]
