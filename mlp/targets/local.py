"""The local target: the `Target` protocol over the embedded runtime (`mlp.serving`).

It stores `mlp.dev/v1 ModelDeployment` objects (the contract in
`mlp.objects.MODEL_DEPLOYMENT_EXAMPLE`). `apply` loads every routed version and swaps
traffic with no failed request; `delete` unloads; `list_owned` returns what is live,
with a `status` the health assessment understands (a `Ready` condition plus which
version serves which share). A refused apply (digest mismatch, unloadable artifact)
raises `TargetError` and leaves the previous deployment serving, and the live object
reports the refusal in its `Ready` condition's message while staying Ready.
"""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any

from mlp.engine.inventory import decode, encode
from mlp.objects import InvalidObject, ModelDeployment
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

    def read_inventory(self, environment: str) -> list[ObjectRef] | None:
        """The inventory file in the runtime's state folder (see `mlp.engine.inventory`)."""
        path = self._inventory_path(environment)
        try:
            return decode(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # unreadable: adopt the labelled deployments again

    def write_inventory(self, environment: str, refs: list[ObjectRef]) -> None:
        path = self._inventory_path(environment)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(encode(refs))
        tmp.replace(path)

    def _inventory_path(self, environment: str) -> Path:
        return self.runtime.state_dir / "inventory" / f"{environment}.json"

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
            # the live router's split (observed status), as percent per version
            "traffic": dep.router.percentages(),
        }


def _routes(dep: Deployed) -> list[Route]:
    return [
        Route(str(r.get("version")), str(r.get("role")), int(r.get("weight") or 0))
        for r in (dep.obj.get("spec") or {}).get("routes") or []
    ]


def _check(obj: Manifest) -> ObjectRef:
    """Refuse what the local runtime cannot hold, with one clear line (the contract: `ModelDeployment.parse`)."""
    if not isinstance(obj, dict) or (obj.get("apiVersion"), obj.get("kind")) != (API_VERSION, KIND):
        what = f"{obj.get('apiVersion')}/{obj.get('kind')}" if isinstance(obj, dict) else type(obj).__name__
        raise TargetError(f"the local target holds {API_VERSION} {KIND} objects only, not {what}")
    try:
        ref = ObjectRef.of(obj)
    except (KeyError, TypeError):
        raise TargetError(f"{KIND} without metadata.name") from None
    labels = (obj.get("metadata") or {}).get("labels") or {}
    if labels.get(MANAGED_BY) != MANAGED_BY_VALUE:
        raise TargetError(f"{ref}: missing label {MANAGED_BY}={MANAGED_BY_VALUE}", ref=ref)
    try:
        ModelDeployment.parse(obj)
    except InvalidObject as exc:
        raise TargetError(str(exc), ref=ref) from None
    return ref
