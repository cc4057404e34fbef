"""The local target: the `Target` protocol over the embedded runtime (`mlp.serving`).

It stores `mlp.dev/v1 ModelDeployment` objects (the contract in
`mlp.targets.base.MODEL_DEPLOYMENT_EXAMPLE`). `apply` loads every routed version and swaps
traffic with no failed request; `delete` unloads; `list_owned` returns what is live,
with a `status` the health assessment understands (a `Ready` condition plus which
version serves which share). A refused apply (digest mismatch, unloadable artifact)
raises `TargetError` and leaves the previous deployment serving, and the live object
reports the refusal in its `Ready` condition's message while staying Ready.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

from mlp.serving.router import SPLIT_ROLES, Route
from mlp.serving.runtime import Deployed, DeploymentError, Runtime
from mlp.targets.base import (
    ENV_LABEL,
    MANAGED_BY,
    MANAGED_BY_VALUE,
    ApplyResult,
    Manifest,
    ObjectRef,
    TargetError,
)

API_VERSION = "mlp.dev/v1"
KIND = "ModelDeployment"
ROLES = {"stable", "canary", "ab", "shadow"}


class LocalTarget:
    """Where a `local` environment's objects live: in this process's runtime."""

    name = "local"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.errors: dict[str, str] = {}  # name -> last refused apply, cleared on success
        self._lock = threading.Lock()

    def list_owned(self, environment: str, kinds: list[tuple[str, str]] | None = None) -> list[Manifest]:
        if kinds is not None and (API_VERSION, KIND) not in kinds:
            return []
        out = []
        for dep in list(self.runtime.models.values()):
            labels = (dep.obj.get("metadata") or {}).get("labels") or {}
            if labels.get(MANAGED_BY) != MANAGED_BY_VALUE or labels.get(ENV_LABEL) != environment:
                continue
            live = copy.deepcopy(dep.obj)
            live["status"] = self._status(dep)
            out.append(live)
        return sorted(out, key=lambda o: o["metadata"]["name"])

    def apply(self, obj: Manifest, *, dry_run: bool = False, force_conflicts: bool = False) -> ApplyResult:
        ref = _check(obj)
        name = ref.name
        if dry_run:
            exists = name in self.runtime.models
            return ApplyResult(ref, "configured" if exists else "created", obj)
        with self._lock:
            try:
                action = self.runtime.apply(obj)
            except DeploymentError as exc:
                self.errors[name] = str(exc)
                raise TargetError(str(exc), ref=ref) from None
            self.errors.pop(name, None)
        dep = self.runtime.models[name]
        live = copy.deepcopy(dep.obj)
        live["status"] = self._status(dep)
        return ApplyResult(ref, action, live)

    def delete(self, ref: ObjectRef, *, dry_run: bool = False) -> None:
        if ref.kind != KIND or dry_run:
            return
        with self._lock:
            self.runtime.delete(ref.name)
            self.errors.pop(ref.name, None)

    def _status(self, dep: Deployed) -> dict[str, Any]:
        refused = self.errors.get(dep.name)
        message = "serving " + ", ".join(
            f"v{r.version} {r.role}" + (f" {r.weight}%" if r.role in SPLIT_ROLES or r.role == "shadow" else "")
            for r in _routes(dep)
        )
        if refused:
            message += f"; last change refused: {refused}"
        return {
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "Refused" if refused else "Serving", "message": message}
            ],
            "versions": sorted(dep.versions),
            "stable": dep.router.stable,
        }


def _routes(dep: Deployed) -> list[Route]:
    return [
        Route(str(r.get("version")), str(r.get("role")), int(r.get("weight") or 0))
        for r in (dep.obj.get("spec") or {}).get("routes") or []
    ]


def _check(obj: Manifest) -> ObjectRef:
    """Refuse what the local runtime cannot hold, with one clear line."""
    if not isinstance(obj, dict) or obj.get("apiVersion") != API_VERSION or obj.get("kind") != KIND:
        what = f"{obj.get('apiVersion')}/{obj.get('kind')}" if isinstance(obj, dict) else type(obj).__name__
        raise TargetError(f"the local target holds {API_VERSION} {KIND} objects only, not {what}")
    try:
        ref = ObjectRef.of(obj)
    except (KeyError, TypeError):
        raise TargetError(f"{KIND} without metadata.name") from None
    labels = (obj.get("metadata") or {}).get("labels") or {}
    if labels.get(MANAGED_BY) != MANAGED_BY_VALUE:
        raise TargetError(f"{ref}: missing label {MANAGED_BY}={MANAGED_BY_VALUE}", ref=ref)
    routes = (obj.get("spec") or {}).get("routes")
    if not isinstance(routes, list) or not routes:
        raise TargetError(f"{ref}: spec.routes must list at least the stable version", ref=ref)
    roles = [r.get("role") for r in routes if isinstance(r, dict)]
    if len(roles) != len(routes) or any(role not in ROLES for role in roles):
        raise TargetError(f"{ref}: every route needs a role among {', '.join(sorted(ROLES))}", ref=ref)
    if roles.count("stable") != 1:
        raise TargetError(f"{ref}: exactly one route must have role stable", ref=ref)
    split = sum(int(r.get("weight") or 0) for r in routes if r.get("role") in SPLIT_ROLES)
    if split != 100:
        raise TargetError(f"{ref}: stable+canary+ab weights must sum to 100, not {split}", ref=ref)
    return ref
