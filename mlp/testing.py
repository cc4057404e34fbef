"""Test doubles that behave like the real thing, for the project's and users' tests.

`MemoryTarget` is a complete in-memory `Target` (kinds, namespaces, the ownership label
selector, resourceVersions, status kept across applies, inventory, injectable failures).
"""

from mlp.engine.memory import MemoryTarget

__all__ = ["MemoryTarget"]
