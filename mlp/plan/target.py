"""The `Target` port: what the plan and the engine need from the place objects run.

Owned by its consumer (plan/engine); the kubernetes and local targets (`mlp.targets`)
implement it. A target stores Kubernetes-shaped objects (plain dicts with apiVersion,
kind, metadata, spec).

Ownership: every object mlp writes carries the labels in `mlp.objects.OWNERSHIP_LABELS`;
`list_owned` returns only objects carrying `app.kubernetes.io/managed-by=mlp` and the
environment label, so prune can never touch what mlp did not create.

Optional methods a caller uses when a target has them (`getattr`):
- `owned_versions(environment, kinds) -> {ObjectRef: resourceVersion}`: the cheap way for
  the controller to see that nothing changed;
- `forget(environment)`: drop whatever the target cached of an environment after a step;
- `read_inventory(environment) -> list[ObjectRef] | None` and
  `write_inventory(environment, refs)`: the inventory of what mlp applied, stored in the
  target itself (`None`: never written, adopt labelled objects);
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from mlp.objects import Manifest, ObjectRef


@dataclass
class ApplyResult:
    """What a target did with one object: `created`, `configured` or `unchanged`."""

    ref: ObjectRef
    action: str
    live: Manifest = field(default_factory=dict)


class TargetError(Exception):
    """A target refused or could not do what was asked; the message is one clear line."""

    def __init__(self, message: str, *, ref: ObjectRef | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.ref = ref
        self.status = status


@runtime_checkable
class Target(Protocol):
    """Where an environment's objects live."""

    name: str

    def list_owned(self, environment: str, kinds: list[tuple[str, str]] | None = None) -> list[Manifest]:
        """Objects labelled as owned by mlp for `environment`; `kinds` is (apiVersion, kind) pairs."""
        ...

    def apply(self, obj: Manifest, *, dry_run: bool = False, force_conflicts: bool = False) -> ApplyResult:
        """Create or update `obj` (server-side apply semantics, field manager `mlp`)."""
        ...

    def delete(self, ref: ObjectRef, *, dry_run: bool = False) -> None:
        """Delete one object; deleting a missing object is not an error."""
        ...
