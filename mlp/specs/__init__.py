"""The spec language: kinds, loading with locations, cross-reference and policy checks."""

from mlp.specs.diagnostics import Diagnostic
from mlp.specs.loader import LoadResult, SourceRef, SpecSet, load

__all__ = ["Diagnostic", "LoadResult", "SourceRef", "SpecSet", "load"]
