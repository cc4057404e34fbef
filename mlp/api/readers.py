"""What the API reads: the repository's specs at a ref, and the controller's state.

`RepoView` serves the specs of one ref (default: the repository's current branch) of a
local folder, a local Git repository or a remote one (mirrored into the state folder),
re-reading it at most every `refresh` seconds and only when the commit moved; a
revision that does not load keeps the last one that did (as the controller does).

`RolloutReader` and `MonitorReader` are the ports for state other parts own: the
rollout engine and the monitors fill them in; the defaults here expose what the
specs declare, what the controller's state database records and the reports
the monitor runners write.
"""

from __future__ import annotations

import gc
import re
import threading
import time
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson
from pydantic import BaseModel, Field, ValidationError

from mlp.controller.store import StateStore, connect
from mlp.sources.directory import read_directory
from mlp.specs import SpecSet, load
from mlp.specs.models import DNS1123_LABEL, Model
from mlp.webhooks.prcheck import Workspace, WorkspaceError

_NAME = re.compile(DNS1123_LABEL)


@dataclass
class Catalog:
    """One loaded revision, with what the list routes need precomputed."""

    revision: str
    specs: SpecSet
    errors: list[str]
    models: list[dict[str, Any]] = field(default_factory=list)  # sorted by name
    model_names: list[str] = field(default_factory=list)
    # each summary serialised once per revision: a page is joined from these bytes
    model_json: list[bytes] = field(default_factory=list)
    # grants depend on the caller and the Team specs only: computed once per caller per revision
    grants: dict[tuple[Any, ...], Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in sorted(self.specs.models):
            self.models.append(model_summary(self.specs.models[name]))
        self.model_names = [m["name"] for m in self.models]
        self.model_json = [orjson.dumps(m) for m in self.models]

    def models_after(self, cursor: str | None, prefix: str | None = None) -> int:
        start = bisect_right(self.model_names, cursor) if cursor else 0
        return max(start, bisect_left(self.model_names, prefix)) if prefix else start


def model_summary(model: Model) -> dict[str, Any]:
    versions = [v.version for v in model.spec.versions]
    return {
        "name": model.metadata.name,
        "team": model.metadata.team,
        "description": model.metadata.description,
        "framework": model.spec.framework.value,
        "versions": versions,
        "latestVersion": max(versions) if versions else None,
    }


class RepoView:
    def __init__(self, repo: str, state_dir: Path, ref: str | None = None, refresh: float = 2.0) -> None:
        self.repo = repo
        self.refresh = refresh
        self._lock = threading.Lock()
        self._checked = 0.0
        self._catalog: Catalog | None = None
        self._key: str | None = None
        self._refreshing = False
        self.workspace: Workspace | None = None
        local = Path(repo)
        if "://" in repo or not local.exists() or (local / ".git").exists() or _inside_git(local):
            self.workspace = Workspace(repo, cache_dir=state_dir / "api-git")
            self.ref = ref or self._default_ref()
        else:
            self.ref = ref or ""
            self.folder = local

    def _default_ref(self) -> str:
        assert self.workspace is not None
        if self.workspace.remote:
            self.workspace.fetch()
            for name in ("main", "master"):
                try:
                    self.workspace.resolve(name)
                    return name
                except WorkspaceError:
                    continue
            return "main"
        try:
            return self.workspace.repo.active_branch.name
        except TypeError:  # detached HEAD
            return "HEAD"

    def loaded(self) -> Catalog | None:
        """The current catalog when one is loaded (never waits), else None."""
        return self.catalog() if self._catalog is not None else None

    def catalog(self) -> Catalog:
        """The current catalog. Only the first call waits for a load; later ones never wait for Git:
        a stale catalog is served while one background thread checks the ref and loads a new commit."""
        with self._lock:
            if self._catalog is None:
                self._refresh()
                assert self._catalog is not None
                return self._catalog
            now = time.monotonic()
            if now - self._checked >= self.refresh and not self._refreshing:
                self._checked = now
                self._refreshing = True
                threading.Thread(target=self._background_refresh, name="mlp-api-repo", daemon=True).start()
            return self._catalog

    def _background_refresh(self) -> None:
        try:
            with self._lock:
                pass  # wait for a first load in progress
            self._refresh()
        except Exception:
            pass
        finally:
            self._refreshing = False

    def _refresh(self) -> None:
        try:
            key = self._current_key()
        except WorkspaceError:
            if self._catalog is not None:
                return
            raise
        if key == self._key and self._catalog is not None:
            return
        catalog = self._load(key)
        # keep the last revision that loaded when the new one does not (as the controller does)
        if catalog.errors and self._catalog is not None and not self._catalog.errors:
            self._catalog.errors = catalog.errors
        else:
            self._catalog = catalog
        self._key = key
        # A catalog lives until the next commit: keep its (many) objects out of the cyclic
        # collector's full passes, which would otherwise walk all of them mid-request.
        gc.collect()
        gc.freeze()

    def _current_key(self) -> str:
        if self.workspace is not None:
            if self.workspace.remote:
                self.workspace.fetch()
            return self.workspace.resolve(self.ref)
        stamps = [p.stat().st_mtime_ns for d in ("specs", "environments") for p in (self.folder / d).rglob("*")]
        return f"{len(stamps)}:{max(stamps, default=0)}"

    def _load(self, key: str) -> Catalog:
        if self.workspace is not None:
            result, _ = self.workspace.load(key)
            revision = key
        else:
            result = load(read_directory(self.folder))
            revision = ""
        return Catalog(revision, result.specs, [str(d) for d in result.errors])


def _inside_git(path: Path) -> bool:
    return any((p / ".git").exists() for p in path.resolve().parents)


class RolloutReader(Protocol):
    def state(self, env: str, model: str) -> dict[str, Any] | None:
        """Live rollout state (phase, step, weight, analysis) or None when nothing is known."""
        ...


class MonitorReader(Protocol):
    def latest(self, monitor: str) -> list[dict[str, Any]]:
        """Latest results of a monitor (per environment), newest first."""
        ...


class StateRollouts:
    """Default rollout reader: observed traffic from the controller's status, and pause requests."""

    def __init__(self, state_dir: Path) -> None:
        self.store = StateStore(state_dir)
        self.controls = RolloutControls(state_dir)

    def state(self, env: str, model: str) -> dict[str, Any] | None:
        status = self.store.load(env)
        observed = None
        if status is not None:
            observed = next((m for m in status.models if m.model == model), None)
        paused = self.controls.paused(env, model)
        if observed is None and not paused:
            return None
        return {
            "observedTraffic": observed.traffic if observed is not None else {},
            "servedVersion": observed.served_version if observed is not None else None,
            "paused": paused,
        }


class MonitorWindow(BaseModel):
    """One window a monitor runner tested, as the API shows it (camelCase, times as ISO-8601)."""

    window: int
    start: str
    end: str
    rows: int
    status: str  # ok | skipped | error
    message: str
    driftDetected: bool | None = None
    driftedFeatures: list[str] = Field(default_factory=list)
    pValues: dict[str, float | None] | None = None
    predictionDrift: bool | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    activeAlerts: list[str] = Field(default_factory=list)


class _Drift(BaseModel):
    is_drift: bool
    p_values: dict[str, float | None] = Field(default_factory=dict)
    drifted: list[str] = Field(default_factory=list)


class _Report(BaseModel):
    """A report the runner committed (`mlp.monitors.runner.WindowReport`), as far as the API reads it."""

    index: int
    start_ms: int
    end_ms: int
    rows: int
    status: str
    message: str
    drift: _Drift | None = None
    prediction: _Drift | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    active: list[str] = Field(default_factory=list)

    def window(self) -> dict[str, Any]:
        def iso(ms: int) -> str:
            return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")

        return MonitorWindow(
            window=self.index,
            start=iso(self.start_ms),
            end=iso(self.end_ms),
            rows=self.rows,
            status=self.status,
            message=self.message,
            driftDetected=self.drift.is_drift if self.drift is not None else None,
            driftedFeatures=self.drift.drifted if self.drift is not None else [],
            pValues=self.drift.p_values if self.drift is not None else None,
            predictionDrift=self.prediction.is_drift if self.prediction is not None else None,
            metrics=self.metrics,
            activeAlerts=self.active,
        ).model_dump()


class ReportMonitors:
    """Default monitor reader: the windows the monitor runners tested, from their state databases.

    `mlp up` runs an environment's monitors with its state folder (`mlp monitor local
    --state-dir`), and each runner commits one report per window to `monitors/NAME/state.db`
    there (`mlp.monitors.store`); the API serves the newest `last` of them, newest first. A
    report that does not have a report's shape is skipped (as `mlp monitor report` skips it)."""

    def __init__(self, state_dir: Path, last: int = 5) -> None:
        self.root = state_dir / "monitors"
        self.last = last

    def latest(self, monitor: str) -> list[dict[str, Any]]:
        from mlp.monitors.store import read_reports

        if not _NAME.fullmatch(monitor):  # a spec name; never a path
            return []
        results = []
        # a few recent rows from a read-only connection: cheaper than keeping a cache coherent
        # with another process's write-ahead log
        for body in reversed(read_reports(self.root / monitor, self.last)):
            try:
                results.append(_Report.model_validate(body).window())
            except ValidationError:
                continue
        return results


_CONTROLS_SCHEMA = """
CREATE TABLE IF NOT EXISTS rollout_controls (
    env TEXT NOT NULL,
    model TEXT NOT NULL,
    paused INTEGER NOT NULL,
    by TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (env, model)
);
"""


class RolloutControls:
    """Pause / resume requests for a rollout, kept in the state database for the rollout engine to honour."""

    def __init__(self, state_dir: Path) -> None:
        self._conn = connect(state_dir)
        self._conn.executescript(_CONTROLS_SCHEMA)
        self._lock = threading.Lock()

    def set_paused(self, env: str, model: str, paused: bool, by: str) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO rollout_controls (env, model, paused, by, at) VALUES (?,?,?,?,?)",
                (env, model, int(paused), by, time.time()),
            )

    def paused(self, env: str, model: str) -> bool:
        with self._lock:
            row = self._conn.execute(
                "SELECT paused FROM rollout_controls WHERE env = ? AND model = ?", (env, model)
            ).fetchone()
        return bool(row and row[0])
