"""Online features over HTTP, request enrichment, and the local materialization schedule.

`FeatureService` knows a repository's feature views (re-read when the repository changes)
and one online store. It answers

  GET  /v1/features/VIEW?entity=K[&entity=K2...]   one or a few entities (a single join key;
                                                   several join keys: one query parameter each)
  POST /v1/features/VIEW  {"entities": [K, ...]}   the batch form (K a value, or a list of values
                                                   in join-key order); at most MAX_BATCH entities
  GET  /v1/features                                views served here and their freshness

with `{"view", "features", "results": [{"entity", "eventTimestamp", "values"} | {"entity", "values": null}]}`.
A value older than the view's TTL is absent (null), as in the offline join.

`mlp up`'s data plane routes `/v1/features/` here (`ahandle`), and `router()` is a FastAPI
`APIRouter` with the same routes for `mlp server`. `aenrich` fills a v1 request's rows that
carry only entity keys with the features a model reads (when its spec says
`enrichFromFeatures: true`). `run_schedule` materializes an environment's views on its cron
schedule for `mlp up` (on Kubernetes the schedule renders as a CronJob instead).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson

from mlp.features import FeatureError
from mlp.features.historical import ttl_seconds
from mlp.features.online import OnlineStore, alookup, check_key, from_micros, lookup, materialize, open_store, typed_key
from mlp.features.sources import join_keys, resolve
from mlp.specs.models import DataType, FeatureView

MAX_BATCH = 1000


class LookupError_(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Wanted:
    """A parsed lookup: the view, the store keys, and what to show for each (or row indexes)."""

    info: ViewInfo
    keys: list[str]
    shown: list[Any]


@dataclass(frozen=True)
class ViewInfo:
    name: str
    features: tuple[str, ...]
    keys: tuple[str, ...]
    key_types: tuple[DataType, ...]
    ttl: int | None
    view: FeatureView


def store_for(repo: Path, env: str, specs: Any | None) -> str:
    """The online store an environment declares (default: SQLite under .mlp/features/)."""
    cfg = None
    if specs is not None and env in specs.environments and specs.environments[env].spec.features:
        cfg = specs.environments[env].spec.features.onlineStore
    if cfg is not None and cfg.kind == "redis":
        assert cfg.url is not None
        return cfg.url
    rel = cfg.path if cfg is not None and cfg.path else f".mlp/features/{env}.db"
    return str(repo / rel)


class FeatureService:
    def __init__(
        self, repo: Path, store: OnlineStore, *, env: str = "dev", now: Callable[[], float] = time.time
    ) -> None:
        self.repo = repo
        self.env = env
        self.store = store
        self.views: dict[str, ViewInfo] = {}
        self.entities: dict[str, Any] = {}
        self.now = now
        self._stop = threading.Event()
        self._last_minute: datetime | None = None
        self.revision: str | None = None

    @classmethod
    def for_environment(cls, repo: Path, env: str) -> FeatureService:
        specs = _load(repo)
        svc = cls(repo, open_store(store_for(repo, env, specs)), env=env)
        if specs is not None:
            svc.update(specs)
        return svc

    def update(self, specs: Any) -> None:
        views: dict[str, ViewInfo] = {}
        for name, view in specs.feature_views.items():
            if not view.spec.online:
                continue
            try:
                keys, types = join_keys(view, specs.entities)
            except FeatureError:
                continue
            ttl = ttl_seconds(view.spec.ttl) if view.spec.ttl else None
            views[name] = ViewInfo(
                name, tuple(f.name for f in view.spec.features), tuple(keys), tuple(types), ttl, view
            )
        self.views = views
        self.entities = dict(specs.entities)
        self.revision = specs.revision

    # --- lookups ----------------------------------------------------------------------------

    def _info(self, view: str) -> ViewInfo:
        info = self.views.get(view)
        if info is None:
            raise LookupError_(f"no online feature view {view!r} (online views: {', '.join(sorted(self.views))})", 404)
        return info

    def _answer(self, info: ViewInfo, shown: list[Any], hits: list[Any]) -> dict[str, Any]:
        results = []
        for ent, hit in zip(shown, hits, strict=True):
            if hit is None:
                results.append({"entity": ent, "values": None})
            else:
                results.append({"entity": ent, "eventTimestamp": hit[0].isoformat(), "values": hit[1]})
        return {"view": info.name, "features": list(info.features), "results": results}

    def get(self, view: str, query: dict[str, list[str]]) -> dict[str, Any]:
        want = self._parse_get(view, query)
        return self._answer(
            want.info, want.shown, lookup(self.store, want.info.name, want.keys, want.info.ttl, self.now())
        )

    def _parse_get(self, view: str, query: dict[str, list[str]]) -> _Wanted:
        info = self._info(view)
        try:
            if len(info.keys) == 1:
                raw = query.get("entity") or query.get(info.keys[0]) or []
                if not raw:
                    raise LookupError_(f"give ?entity=VALUE ({info.keys[0]}) for FeatureView/{view}")
                if len(raw) > MAX_BATCH:
                    raise LookupError_(f"at most {MAX_BATCH} entities per request")
                keys = [typed_key([r], info.key_types, view) for r in raw]
                return _Wanted(info, keys, list(raw))
            values = [query.get(k, []) for k in info.keys]
            if any(len(v) != 1 for v in values):
                raise LookupError_(f"give one value for each join key of FeatureView/{view}: {', '.join(info.keys)}")
            key = typed_key([v[0] for v in values], info.key_types, view)
            return _Wanted(info, [key], [[v[0] for v in values]])
        except ValueError as exc:
            raise LookupError_(str(exc)) from None

    def _parse_batch(self, view: str, body: Any) -> _Wanted:
        info = self._info(view)
        ents = body.get("entities") if isinstance(body, dict) else None
        if not isinstance(ents, list):
            raise LookupError_('batch body must be {"entities": [KEY, ...]}')
        if len(ents) > MAX_BATCH:
            raise LookupError_(f"at most {MAX_BATCH} entities per request, got {len(ents)}")
        try:
            keys = [check_key(e if isinstance(e, list) else [e], info.key_types, view) for e in ents]
        except ValueError as exc:
            raise LookupError_(str(exc)) from None
        return _Wanted(info, keys, ents)

    def summary(self) -> dict[str, Any]:
        out = {}
        for name, info in sorted(self.views.items()):
            st = self.store.state(name)
            out[name] = {
                "features": list(info.features),
                "entityKeys": list(info.keys),
                "ttlSeconds": info.ttl,
                "newestEvent": from_micros(st.max_event).isoformat() if st and st.max_event is not None else None,
                "materializedAt": datetime.fromtimestamp(st.materialized_at, UTC).isoformat()
                if st and st.materialized_at
                else None,
            }
        return {"views": out}

    async def ahandle(self, method: str, path: str, query_string: bytes, body: bytes | None) -> tuple[int, bytes]:
        """One `/v1/features[/VIEW]` request: (status, JSON body). Never raises for client mistakes.
        The store read runs off the event loop (`OnlineStore.aread`)."""
        routed = self._route(method, path, query_string, body)
        if isinstance(routed, _Wanted):
            hits = await alookup(self.store, routed.info.name, routed.keys, routed.info.ttl, self.now())
            return 200, orjson.dumps(self._answer(routed.info, routed.shown, hits))
        return routed

    def _route(self, method: str, path: str, query_string: bytes, body: bytes | None) -> tuple[int, bytes] | _Wanted:
        try:
            view = path[len("/v1/features") :].strip("/")
            if not view:
                if method != "GET":
                    raise LookupError_("/v1/features takes GET", 405)
                return 200, orjson.dumps(self.summary())
            if "/" in view:
                raise LookupError_(f"no route for {path}", 404)
            if method == "GET":
                query = parse_qs(query_string.decode("latin-1"), keep_blank_values=True)
                return self._parse_get(view, query)
            if method == "POST":
                try:
                    parsed = orjson.loads(body or b"")
                except orjson.JSONDecodeError as exc:
                    raise LookupError_(f"malformed JSON body: {exc}") from None
                return self._parse_batch(view, parsed)
            raise LookupError_(f"{path} takes GET or POST", 405)
        except LookupError_ as exc:
            return exc.status, orjson.dumps({"error": str(exc)})

    # --- enrichment ---------------------------------------------------------------------------

    async def aenrich(self, spec: dict[str, Any], inputs: tuple[str, ...], body: Any) -> Any:
        """A v1 body whose object rows lack model inputs, completed from the online store.

        `spec` is the ModelDeployment's `features` block ({view}). Rows that already carry every
        input are left alone. Raises LookupError_ (400 bad key, 404 unknown entity). The store
        read runs off the event loop."""
        plan = self._enrich_plan(spec, inputs, body)
        if plan is None:
            return body
        hits = await alookup(self.store, plan.info.name, plan.keys, plan.info.ttl, self.now())
        return self._enriched(body, plan, hits)

    def _enrich_plan(self, spec: dict[str, Any], inputs: tuple[str, ...], body: Any) -> _Wanted | None:
        if not isinstance(body, dict):
            return None
        rows = body.get("instances", body.get("inputs"))
        if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
            return None
        need = [i for i, r in enumerate(rows) if any(name not in r for name in inputs)]
        if not need:
            return None
        info = self._info(str(spec.get("view")))
        keys = []
        for i in need:
            missing = [k for k in info.keys if k not in rows[i]]
            if missing:
                raise LookupError_(
                    f"instances[{i}]: missing input(s) and no entity key {', '.join(missing)} to look them up"
                )
            try:
                keys.append(check_key([rows[i][k] for k in info.keys], info.key_types, info.name))
            except ValueError as exc:
                raise LookupError_(f"instances[{i}]: {exc}") from None
        return _Wanted(info, keys, need)

    def _enriched(self, body: dict[str, Any], plan: _Wanted, hits: list[Any]) -> dict[str, Any]:
        info, rows = plan.info, body.get("instances", body.get("inputs"))
        assert isinstance(rows, list)
        out = list(rows)
        for i, hit in zip(plan.shown, hits, strict=True):
            if hit is None:
                ent = {k: rows[i][k] for k in info.keys}
                raise LookupError_(f"instances[{i}]: no fresh features for {ent} in FeatureView/{info.name}", 404)
            out[i] = {**hit[1], **rows[i]}
        return {**body, "instances": out}

    # --- metrics ------------------------------------------------------------------------------

    def collect(self) -> Iterator[Any]:
        """A prometheus_client collector: freshness per view (register it on a registry)."""
        from prometheus_client.core import GaugeMetricFamily

        fresh = GaugeMetricFamily(
            "mlp_feature_freshness_seconds", "Age of the newest event materialized, per view", labels=["view"]
        )
        last = GaugeMetricFamily(
            "mlp_feature_materialized_timestamp_seconds", "When the view was last materialized", labels=["view"]
        )
        now = self.now()
        for name in sorted(self.views):
            try:
                st = self.store.state(name)
            except Exception:
                continue
            if st is not None and st.max_event is not None:
                fresh.add_metric([name], max(0.0, now - st.max_event / 1e6))
            if st is not None and st.materialized_at:
                last.add_metric([name], st.materialized_at)
        yield fresh
        yield last

    def describe(self) -> list[Any]:
        return []

    # --- local schedule -----------------------------------------------------------------------

    def run_schedule(self, interval: float = 2.0, echo: Callable[[str], None] | None = None) -> None:
        """Re-read the repository when it changes; materialize on the environment's cron schedule."""
        while not self._stop.wait(interval):
            self.tick(datetime.now(UTC), echo)

    def tick(self, now: datetime, echo: Callable[[str], None] | None = None) -> list[str]:
        """One check of the schedule at `now`; returns the views materialized (at most once a minute)."""
        from mlp.governance.cron import Cron, CronError

        say = echo or (lambda _m: None)
        done: list[str] = []
        try:
            specs = _load(self.repo)
            if specs is None:
                return done
            if specs.revision != self.revision:
                self.update(specs)
            env = specs.environments.get(self.env)
            mat = env.spec.features.materialize if env and env.spec.features else None
            minute = now.astimezone(UTC).replace(second=0, microsecond=0)
            if mat is None or minute == self._last_minute:
                return done
            self._last_minute = minute
            try:
                due = Cron.parse(mat.schedule).matches(minute)
            except CronError as exc:
                say(f"features: schedule {mat.schedule!r}: {exc}")
                return done
            if not due:
                return done
            for name in mat.views or sorted(self.views):
                info = self.views.get(name)
                if info is None:
                    continue
                src = resolve(info.view, specs.entities, self.repo)
                result = materialize(src, self.store, repo=self.repo, now=now)
                say(f"features: materialized FeatureView/{name}: {result.rows} rows")
                done.append(name)
        except FeatureError as exc:
            say(f"features: {exc}")
        except Exception as exc:  # the schedule must survive anything one run throws
            say(f"features: materialization failed: {type(exc).__name__}: {exc}")
        return done

    def stop(self) -> None:
        self._stop.set()


def _load(repo: Path) -> Any:
    from mlp.sources.directory import read_directory
    from mlp.specs import load

    result = load(read_directory(repo))
    return result.specs if result.ok else None


def router(service: FeatureService) -> Any:
    """A FastAPI APIRouter serving the same `/v1/features` routes (for `mlp server`)."""
    from mlp.features.api import make_router

    return make_router(service)
