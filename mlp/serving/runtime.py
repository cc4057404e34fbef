"""The embedded runtime: which model versions are loaded and how traffic is split.

`Runtime.apply(obj)` takes one `mlp.dev/v1 ModelDeployment` (see
`mlp.objects.MODEL_DEPLOYMENT_EXAMPLE`) and makes it live with no failed request:

1. every routed version not already loaded is fetched (digest-verified) and loaded
   *beside* what is serving; any failure refuses the whole object and leaves the
   previous deployment serving untouched (all or nothing);
2. the new `Deployed` (versions + router) replaces the old one in a single reference
   assignment, which the event loop sees atomically;
3. versions no longer routed are drained: a background thread waits for their in-flight
   requests to finish, then drops them. A request that picked the old deployment holds
   a reference to it, so it completes on the old version even mid-swap.

Applied objects are persisted under `<state>/deployments/` so a restarted `mlp up`
serves the last applied state before it has read the repository again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlp.objects import InvalidObject, ModelDeployment, canonical_json
from mlp.serving.artifacts import ArtifactError, ArtifactStore
from mlp.serving.batching import Batcher
from mlp.serving.codec import Signature
from mlp.serving.loaders import CustomModel, LoadedModel, LoadError, load_model
from mlp.serving.metrics import Metrics, VersionMetrics
from mlp.serving.payload_log import PayloadLog
from mlp.serving.router import Route, Router

log = logging.getLogger("mlp.serving")

SIG_TO_V2 = {
    "float": "FP32",
    "double": "FP64",
    "int": "INT64",  # what infer answers: numpy's (and so scikit-learn's) default integer is 64-bit
    "long": "INT64",
    "bool": "BOOL",
    "string": "BYTES",
    "bytes": "BYTES",
}


class DeploymentError(Exception):
    """A ModelDeployment was refused; the message is one clear line."""


@dataclass
class VersionState:
    model: str
    version: str
    role: str
    digest: str | None
    uri: str | None
    loaded: LoadedModel
    batcher: Batcher | None
    metrics: VersionMetrics
    inflight: int = 0

    @property
    def key(self) -> tuple[str, str | None, str | None]:
        return (self.version, self.uri, self.digest)


@dataclass
class Deployed:
    name: str
    obj: dict[str, Any]
    framework: str
    signature: Signature
    spec_signature: dict[str, Any]
    versions: dict[str, VersionState]
    router: Router
    payload_rate: float
    content_hash: str
    loaded_at: float = field(default_factory=time.time)

    @property
    def custom(self) -> bool:
        return any(isinstance(v.loaded, CustomModel) for v in self.versions.values())


def spec_digest(obj: dict[str, Any]) -> str:
    """What decides whether versions must be reloaded: the spec alone (labels may change freely)."""
    return hashlib.sha256(canonical_json(obj.get("spec", {})).encode()).hexdigest()


class Runtime:
    def __init__(
        self,
        state_dir: str | Path,
        *,
        store: ArtifactStore | None = None,
        metrics: Metrics | None = None,
        payload_log: bool = True,
        drain_seconds: float = 30.0,
        max_queue_rows: int = 4096,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "deployments").mkdir(exist_ok=True)
        self.store = store or ArtifactStore(self.state_dir / "cache")
        self.metrics = metrics or Metrics()
        self.payloads: PayloadLog | None = (
            PayloadLog(self.state_dir / "payloads", on_drop=self.metrics.payload_dropped.inc) if payload_log else None
        )
        self.drain_seconds = drain_seconds
        self.max_queue_rows = max_queue_rows
        self.on_event = on_event or (lambda msg: log.info(msg))
        self.models: dict[str, Deployed] = {}
        # name -> why it is declared but not serving (its first load failed); readiness is 503 meanwhile
        self.failed: dict[str, str] = {}
        self._lock = threading.RLock()
        self._drainers: list[threading.Thread] = []

    # --- control plane (called from the controller thread) --------------------------------

    def apply(self, obj: dict[str, Any]) -> str:
        """Make `obj` live; return created | configured | unchanged; raise DeploymentError."""
        name = _name_of(obj)
        with self._lock:
            old = self.models.get(name)
            digest = spec_digest(obj)
            if old is not None and old.content_hash == digest:
                if old.obj.get("metadata") == obj.get("metadata"):
                    return "unchanged"
                # labels or annotations only: record them, keep every loaded version as is
                self.models = {**self.models, name: dataclasses.replace(old, obj=obj)}
                self._persist(name, obj)
                return "configured"
            try:
                deployed = self._build(name, obj, old, digest)
            except DeploymentError as exc:
                if old is None:  # nothing serves this model: not ready until a load succeeds
                    self.failed = {**self.failed, name: str(exc)}
                raise
            self.failed = {k: v for k, v in self.failed.items() if k != name}
            self.models = {**self.models, name: deployed}
            self._persist(name, obj)
            self._set_loaded_gauges(old, deployed)
            if old is not None:
                retired = [
                    v
                    for k, v in old.versions.items()
                    if k not in deployed.versions or deployed.versions[k].loaded is not v.loaded
                ]
                self._drain(retired)
            roles = ", ".join(f"v{v.version} {v.role} {w}%" for v, w in _weights(deployed))
            self.on_event(f"model {name}: serving {roles}")
            return "configured" if old is not None else "created"

    def ready(self) -> bool:
        """Every declared model serves (at least one, none failed to load): the server's readiness."""
        return bool(self.models) and not self.failed

    def delete(self, name: str) -> bool:
        with self._lock:
            self.failed = {k: v for k, v in self.failed.items() if k != name}
            old = self.models.get(name)
            if old is None:
                (self.state_dir / "deployments" / f"{name}.json").unlink(missing_ok=True)
                return False
            self.models = {k: v for k, v in self.models.items() if k != name}
            (self.state_dir / "deployments" / f"{name}.json").unlink(missing_ok=True)
            self._set_loaded_gauges(old, None)
            self._drain(list(old.versions.values()))
            self.on_event(f"model {name}: removed")
            return True

    def objects(self) -> list[dict[str, Any]]:
        return [d.obj for d in self.models.values()]

    def restore(self) -> list[str]:
        """Re-apply persisted deployments; return one error line per object that failed."""
        errors = []
        for path in sorted((self.state_dir / "deployments").glob("*.json")):
            try:
                self.apply(json.loads(path.read_text()))
            except (DeploymentError, ValueError, KeyError) as exc:
                errors.append(f"{path.name}: {exc}")
        return errors

    def wait_drained(self, timeout: float = 10.0) -> None:
        for t in list(self._drainers):
            t.join(timeout)

    def close(self) -> None:
        if self.payloads is not None:
            self.payloads.close()

    # --- internals ------------------------------------------------------------------------

    def _build(self, name: str, obj: dict[str, Any], old: Deployed | None, chash: str) -> Deployed:
        try:
            md = ModelDeployment.parse(obj)  # the contract, checked once; nothing below defaults a field
        except InvalidObject as exc:
            raise DeploymentError(str(exc)) from None
        spec = obj.get("spec") or {}
        framework = md.framework
        model_class = md.model_class
        sticky = md.sticky_header
        versions: dict[str, VersionState] = {}
        routes: list[Route] = []
        for r in md.routes:
            version, role = r.version, r.role
            routes.append(Route(version, role, r.weight))
            uri, digest = r.uri, r.digest
            reuse = old.versions.get(version) if old is not None else None
            if (
                reuse is not None
                and reuse.uri == uri
                and reuse.digest == digest
                and old is not None
                and old.framework == framework
                and old.obj.get("spec", {}).get("modelClass") == model_class
            ):
                vs = reuse if reuse.role == role else VersionState(**{**reuse.__dict__, "role": role, "inflight": 0})
                versions[version] = vs
                continue
            versions[version] = self._load_version(
                name, version, role, framework, model_class, uri, digest, _wants_proba(spec.get("signature"))
            )
        try:
            router = Router(routes, sticky)
        except ValueError as exc:
            raise DeploymentError(f"ModelDeployment/{name}: {exc}") from None
        first = next(iter(versions.values()))
        input_dtype = getattr(first.loaded, "input_dtype", None)
        sig = Signature.from_spec(spec.get("signature"), input_dtype if input_dtype is not None else float)
        for vs in versions.values():
            wants = getattr(vs.loaded, "n_features", None)
            if sig.width is not None and wants is not None and wants != sig.width:
                raise DeploymentError(
                    f"ModelDeployment/{name}: version {vs.version}: the signature declares {sig.width} input "
                    f"features ({', '.join(sig.inputs)}) but the artifact expects {wants}"
                )
        if md.max_batch_size is not None or md.max_latency_ms is not None:
            for vs in versions.values():
                if vs.batcher is not None:
                    vs.batcher.max_batch_size = max(1, int(md.max_batch_size or 32))
                    vs.batcher.max_latency = max(0.0, float(md.max_latency_ms or 1.0)) / 1000
        return Deployed(
            name=name,
            obj=obj,
            framework=framework,
            signature=sig,
            spec_signature=spec.get("signature") or {},
            versions=versions,
            router=router,
            payload_rate=md.payload_sample_rate,
            content_hash=chash,
        )

    def _load_version(
        self,
        name: str,
        version: str,
        role: str,
        framework: str,
        model_class: str | None,
        uri: str | None,
        digest: str | None,
        proba: bool = False,
    ) -> VersionState:
        path = None
        if uri:
            if not digest:
                raise DeploymentError(f"ModelDeployment/{name}: version {version} has a uri but no digest")
            try:
                path = self.store.fetch(uri, digest)
            except ArtifactError as exc:
                raise DeploymentError(f"ModelDeployment/{name}: version {version}: {exc}") from None
        elif not model_class:
            raise DeploymentError(f"ModelDeployment/{name}: version {version} has no uri")
        try:
            loaded = load_model(framework, path, name=name, model_class=model_class, proba=proba)
        except LoadError as exc:
            raise DeploymentError(f"ModelDeployment/{name}: version {version}: {exc}") from None
        vm = self.metrics.version(name, version)
        batcher = None
        if not isinstance(loaded, CustomModel):
            batcher = Batcher(
                loaded.predict,
                max_queue_rows=self.max_queue_rows,
                on_batch=vm.batch.observe,
            )
        self.on_event(f"model {name}: loaded version {version} ({framework}{', ' + uri if uri else ''})")
        return VersionState(name, version, role, digest, uri, loaded, batcher, vm)

    def _persist(self, name: str, obj: dict[str, Any]) -> None:
        path = self.state_dir / "deployments" / f"{name}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
        tmp.replace(path)

    def _set_loaded_gauges(self, old: Deployed | None, new: Deployed | None) -> None:
        if old is not None:
            for v in old.versions.values():
                with contextlib.suppress(KeyError):
                    self.metrics.loaded.remove(old.name, v.version, v.role)
        if new is not None:
            for v in new.versions.values():
                self.metrics.loaded.labels(new.name, v.version, v.role).set(1)

    def _drain(self, retired: list[VersionState]) -> None:
        if not retired:
            return

        def wait() -> None:
            deadline = time.monotonic() + self.drain_seconds
            while any(v.inflight for v in retired) and time.monotonic() < deadline:
                time.sleep(0.01)
            for v in retired:
                stop = getattr(getattr(v.loaded, "instance", None), "stop", None)
                if callable(stop):
                    with contextlib.suppress(Exception):
                        stop()
                self.on_event(f"model {v.model}: version {v.version} drained and unloaded")

        t = threading.Thread(target=wait, name="mlp-drain", daemon=True)
        t.start()
        self._drainers = [d for d in self._drainers if d.is_alive()] + [t]

    # --- metadata for the data plane ------------------------------------------------------

    def metadata(self, dep: Deployed, version: str | None = None) -> dict[str, Any]:
        sig = dep.spec_signature

        def tensors(fields: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [
                {
                    "name": f["name"],
                    "datatype": SIG_TO_V2.get(str(f.get("type")), "FP32"),
                    "shape": [-1, *(f.get("shape") or [])] if f.get("shape") else [-1],
                }
                for f in fields
            ]

        return {
            "name": dep.name,
            "versions": [version] if version else sorted(dep.versions, key=_vkey),
            "platform": dep.framework,
            "inputs": tensors(sig.get("inputs") or []),
            "outputs": tensors(sig.get("outputs") or []),
        }


def _name_of(obj: dict[str, Any]) -> str:
    if obj.get("kind") != "ModelDeployment":
        raise DeploymentError(f"the local runtime takes ModelDeployment objects, not {obj.get('kind')!r}")
    name = (obj.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not name:
        raise DeploymentError("ModelDeployment has no metadata.name")
    return name


def _wants_proba(sig: dict[str, Any] | None) -> bool:
    outputs = (sig or {}).get("outputs") or []
    return bool(outputs) and str(outputs[0].get("type")) in ("float", "double")


def _vkey(v: str) -> tuple[int, str]:
    return (int(v), v) if v.isdigit() else (1 << 30, v)


def _weights(dep: Deployed) -> list[tuple[VersionState, int]]:
    out = []
    for r in dep.obj.get("spec", {}).get("routes", []):
        vs = dep.versions.get(str(r.get("version")))
        if vs is not None:
            out.append((vs, int(r.get("weight") or 0)))
    return out
