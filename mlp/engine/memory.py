"""`MemoryTarget`: a complete `Target` held in memory (like httpx's `MockTransport`).

It behaves like a small API server, not like a mock: objects are keyed by apiVersion,
kind, namespace and name; `list_owned` honours the ownership label selector; every write
that changes an object bumps its `resourceVersion` (and `metadata.generation` when the
spec changes) and a write that changes nothing is `unchanged` and bumps nothing; `status`
is kept across applies (it belongs to the runtime, as a status subresource); dry runs
change nothing; the inventory is stored like any other target's.

Uses: the PR check plans a head revision against the base's rendered objects held here;
tests and benchmarks use it instead of hand-rolled fakes (`mlp.testing` re-exports it).
Knobs: `fail(kind=..., name=..., status=..., message=...)` makes matching writes fail with a
`TargetError` (partial applies); `fail_on = NAME` is the short form for one object's applies
(an admission webhook's denial); `down = True` makes every call fail as an unreachable
cluster does. `log` keeps every persisted object write in order; `writes` counts them.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from mlp.objects import ENV_LABEL, MANAGED_BY, MANAGED_BY_VALUE, Manifest, ObjectRef
from mlp.plan.target import ApplyResult, TargetError

_SERVER_FIELDS = ("resourceVersion", "generation", "uid", "creationTimestamp", "managedFields")


@dataclass
class _Failure:
    kind: str | None
    name: str | None
    status: int
    message: str
    verbs: tuple[str, ...]


class MemoryTarget:
    """An in-memory target; thread-safe."""

    def __init__(self, objects: Iterable[Manifest] = (), *, name: str = "memory", namespace: str = "default") -> None:
        self.name = name
        self.namespace = namespace
        self.objects: dict[ObjectRef, Manifest] = {}
        self.inventories: dict[str, list[ObjectRef]] = {}
        self.log: list[tuple[str, ObjectRef]] = []  # (verb, ref) of every persisted object write, in order
        self.inventory_writes = 0
        self.lists = 0
        self.fail_on: str | None = None
        self.down = False
        self._version = 0
        self._failures: list[_Failure] = []
        self._lock = threading.Lock()
        for obj in objects:
            self.put(obj)

    # --- test helpers ---------------------------------------------------------------------------

    def put(self, obj: Manifest) -> Manifest:
        """Store `obj` as is (as if someone else had created it), with a fresh resourceVersion."""
        with self._lock:
            stored = copy.deepcopy(obj)
            self._bump(stored, spec_changed=True)
            self.objects[ObjectRef.of(stored)] = stored
            return copy.deepcopy(stored)

    def set_status(self, ref: ObjectRef, status: Manifest) -> None:
        """What a runtime (KServe, the kubelet) would write to the status subresource."""
        with self._lock:
            obj = self.objects[ref]
            obj["status"] = copy.deepcopy(status)
            self._bump(obj, spec_changed=False)

    def fail(
        self,
        *,
        kind: str | None = None,
        name: str | None = None,
        status: int = 403,
        message: str = "forbidden",
        verbs: tuple[str, ...] = ("apply", "delete"),
    ) -> None:
        self._failures.append(_Failure(kind, name, status, message, verbs))

    @property
    def writes(self) -> int:
        """Persisted object writes (the inventory is counted apart, in `inventory_writes`)."""
        return len(self.log)

    def named(self, kind: str, name: str) -> Manifest | None:
        with self._lock:
            obj = next((o for r, o in self.objects.items() if r.kind == kind and r.name == name), None)
            return copy.deepcopy(obj) if obj is not None else None

    # --- the Target protocol --------------------------------------------------------------------

    def list_owned(self, environment: str, kinds: list[tuple[str, str]] | None = None) -> list[Manifest]:
        with self._lock:
            self.lists += 1
            self._check("list", None)
            wanted = set(kinds) if kinds is not None else None
            out = []
            for ref, obj in sorted(self.objects.items()):
                if wanted is not None and ref.kind_key not in wanted:
                    continue
                labels = (obj.get("metadata") or {}).get("labels") or {}
                if labels.get(MANAGED_BY) == MANAGED_BY_VALUE and labels.get(ENV_LABEL) == environment:
                    out.append(copy.deepcopy(obj))
            return out

    def owned_versions(self, environment: str, kinds: list[tuple[str, str]] | None = None) -> dict[ObjectRef, str]:
        return {ObjectRef.of(o): o["metadata"]["resourceVersion"] for o in self.list_owned(environment, kinds)}

    def get(self, ref: ObjectRef) -> Manifest | None:
        with self._lock:
            obj = self.objects.get(self._key(ref))
            return copy.deepcopy(obj) if obj is not None else None

    def apply(self, obj: Manifest, *, dry_run: bool = False, force_conflicts: bool = False) -> ApplyResult:
        try:
            ref = self._key(ObjectRef.of(obj))
        except (KeyError, TypeError):
            raise TargetError("object without apiVersion, kind or metadata.name") from None
        with self._lock:
            self._check("apply", ref)
            current = self.objects.get(ref)
            merged = copy.deepcopy(obj)
            merged.setdefault("metadata", {})["namespace"] = ref.namespace or None
            if not ref.namespace:
                merged["metadata"].pop("namespace")
            if current is not None:
                for key in _SERVER_FIELDS:
                    if key in current["metadata"]:
                        merged["metadata"][key] = current["metadata"][key]
                if "status" in current:
                    merged["status"] = copy.deepcopy(current["status"])
                if _content(merged) == _content(current):
                    return ApplyResult(ref, "unchanged", copy.deepcopy(current))
            if dry_run:
                return ApplyResult(ref, "configured" if current else "created", merged)
            self._bump(merged, spec_changed=current is None or merged.get("spec") != current.get("spec"))
            self.objects[ref] = merged
            self.log.append(("apply", ref))
            return ApplyResult(ref, "configured" if current else "created", copy.deepcopy(merged))

    def delete(self, ref: ObjectRef, *, dry_run: bool = False) -> None:
        ref = self._key(ref)
        with self._lock:
            self._check("delete", ref)
            if dry_run or ref not in self.objects:
                return
            del self.objects[ref]
            self.log.append(("delete", ref))

    def read_inventory(self, environment: str) -> list[ObjectRef] | None:
        with self._lock:
            self._check("list", None)
            refs = self.inventories.get(environment)
            return list(refs) if refs is not None else None

    def write_inventory(self, environment: str, refs: list[ObjectRef]) -> None:
        with self._lock:
            self._check("inventory", None)
            self.inventories[environment] = sorted(refs)
            self.inventory_writes += 1

    # --- internals --------------------------------------------------------------------------------

    def _key(self, ref: ObjectRef) -> ObjectRef:
        return ref

    def _bump(self, obj: Manifest, *, spec_changed: bool) -> None:
        self._version += 1
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(self._version)
        if spec_changed:
            meta["generation"] = int(meta.get("generation") or 0) + 1

    def _check(self, verb: str, ref: ObjectRef | None) -> None:
        if self.down:
            raise TargetError("cannot reach the target: connection refused")
        if verb == "apply" and ref is not None and self.fail_on is not None and ref.name == self.fail_on:
            raise TargetError(f"admission webhook denied {ref}", ref=ref)
        for f in self._failures:
            if verb not in f.verbs:
                continue
            if ref is not None and ((f.kind and f.kind != ref.kind) or (f.name and f.name != ref.name)):
                continue
            if ref is None and (f.kind or f.name):
                continue
            raise TargetError(f.message, ref=ref, status=f.status)


def _content(obj: Manifest) -> Manifest:
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in _SERVER_FIELDS}
    return {**{k: v for k, v in obj.items() if k != "status"}, "metadata": meta}
