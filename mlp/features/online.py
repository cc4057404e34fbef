"""Online stores (SQLite, Redis), materialization into them, and lookups.

A store holds, per view and entity key, the latest materialized row: its event time and its
feature values. Writes are *newer-wins* (a row replaces the stored one only when its event
time is at or after the stored one's), so loading the same rows twice changes nothing and a
rerun after an interruption converges to the same store.

`materialize` loads, per view, the latest row per entity key with an event time in
`[since, until)`; `since` defaults to the view's watermark (the previous run's `until`),
`until` to now. Rows go in batches, each batch one transaction; the watermark moves only when
the whole window is in, so a run killed half way is simply rerun. A changed view definition
(a new version) starts again from the beginning.

Entity keys are encoded as compact JSON arrays of the typed join-key values (`[1001]`,
`["a",2]`): the same value always gives the same key, from a source or from a request.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import orjson

from mlp.features import FeatureError
from mlp.features.sources import Source, check_schema, connect, ident, literal
from mlp.specs.models import DataType

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def encode_key(values: Sequence[Any]) -> str:
    return json.dumps(list(values), separators=(",", ":"), ensure_ascii=False)


def typed_key(raw: Sequence[str], types: Sequence[DataType], view: str) -> str:
    """An entity key from request text (query string) in the store's encoding."""
    if len(raw) != len(types):
        raise ValueError(f"FeatureView/{view} takes {len(types)} join key value(s), got {len(raw)}")
    out: list[Any] = []
    for text, t in zip(raw, types, strict=True):
        if t in (DataType.int, DataType.long):
            try:
                out.append(int(text))
            except ValueError:
                raise ValueError(f"entity key {text!r} is not an integer (FeatureView/{view})") from None
        elif t in (DataType.float, DataType.double):
            out.append(float(text))
        elif t is DataType.bool:
            out.append(text.lower() in ("1", "true"))
        else:
            out.append(text)
    return encode_key(out)


def check_key(values: Sequence[Any], types: Sequence[DataType], view: str) -> str:
    """An entity key from JSON values, type-checked."""
    if len(values) != len(types):
        raise ValueError(f"FeatureView/{view} takes {len(types)} join key value(s), got {len(values)}")
    for v, t in zip(values, types, strict=True):
        ok = (
            (t in (DataType.int, DataType.long) and isinstance(v, int) and not isinstance(v, bool))
            or (t in (DataType.float, DataType.double) and isinstance(v, int | float) and not isinstance(v, bool))
            or (t is DataType.bool and isinstance(v, bool))
            or (t in (DataType.string, DataType.bytes) and isinstance(v, str))
        )
        if not ok:
            raise ValueError(f"entity key {v!r} is not a {t.value} (FeatureView/{view})")
    return encode_key(values)


def micros(ts: datetime) -> int:
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return (ts - EPOCH) // _US


_US = datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC) - EPOCH


def from_micros(us: int) -> datetime:
    return EPOCH + us * _US


@dataclass
class ViewState:
    view: str
    version: str
    watermark: int | None  # micros: everything before it is loaded
    max_event: int | None  # micros: newest event time loaded
    materialized_at: float | None  # unix seconds
    rows: int = 0


class OnlineStore(Protocol):
    def write(self, view: str, rows: Iterable[tuple[str, int, bytes]]) -> int: ...

    def read(self, view: str, keys: Sequence[str]) -> list[tuple[int, bytes] | None]: ...

    async def aread(self, view: str, keys: Sequence[str]) -> list[tuple[int, bytes] | None]:
        """`read` without blocking the running event loop."""
        ...

    def state(self, view: str) -> ViewState | None: ...

    def set_state(self, st: ViewState) -> None: ...

    def dump(self, view: str) -> dict[str, tuple[int, bytes]]: ...

    def close(self) -> None: ...


class SQLiteStore:
    """One file; WAL so lookups never wait for a materialization's write.

    A connection per thread. `aread` answers a one-key lookup on the event loop itself: a point
    read is microseconds from the page cache, less than the hop to another thread, whose GIL
    handoff (up to the 5 ms switch interval while the loop is busy) was most of a lookup's
    tail latency under load. That read never waits for a lock (busy timeout 0): a lookup that
    would goes, like every batch, to a small pool of reader threads (sqlite3 releases the GIL
    while it works, so the loop keeps serving)."""

    READERS = 4

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        con = self._con()
        con.executescript(
            """
            CREATE TABLE IF NOT EXISTS feature_rows (
              view TEXT NOT NULL, key TEXT NOT NULL, ts INTEGER NOT NULL, value BLOB NOT NULL,
              PRIMARY KEY (view, key)) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS feature_state (
              view TEXT PRIMARY KEY, version TEXT NOT NULL, watermark INTEGER, max_event INTEGER,
              materialized_at REAL, rows INTEGER NOT NULL DEFAULT 0);
            """
        )

    def _con(self, *, wait: bool = True) -> sqlite3.Connection:
        name = "con" if wait else "nowait"
        con: sqlite3.Connection | None = getattr(self._local, name, None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=30 if wait else 0, isolation_level=None, check_same_thread=False)
            try:
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("PRAGMA synchronous=NORMAL")
            except BaseException:
                con.close()
                raise
            setattr(self._local, name, con)
        return con

    def write(self, view: str, rows: Iterable[tuple[str, int, bytes]]) -> int:
        con = self._con()
        batch = [(view, k, ts, v) for k, ts, v in rows]
        con.execute("BEGIN IMMEDIATE")
        try:
            con.executemany(
                "INSERT INTO feature_rows (view, key, ts, value) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (view, key) DO UPDATE SET ts = excluded.ts, value = excluded.value "
                "WHERE excluded.ts >= feature_rows.ts",
                batch,
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return len(batch)

    def read(self, view: str, keys: Sequence[str], *, wait: bool = True) -> list[tuple[int, bytes] | None]:
        con = self._con(wait=wait)
        if len(keys) == 1:
            row = con.execute(
                "SELECT ts, value FROM feature_rows WHERE view = ? AND key = ?", (view, keys[0])
            ).fetchone()
            return [(row[0], row[1]) if row else None]
        found: dict[str, tuple[int, bytes]] = {}
        for i in range(0, len(keys), 500):
            chunk = list(keys[i : i + 500])
            marks = ",".join("?" * len(chunk))
            for k, ts, v in con.execute(
                f"SELECT key, ts, value FROM feature_rows WHERE view = ? AND key IN ({marks})", (view, *chunk)
            ):
                found[k] = (ts, v)
        return [found.get(k) for k in keys]

    async def aread(self, view: str, keys: Sequence[str]) -> list[tuple[int, bytes] | None]:
        if len(keys) == 1:
            try:
                return self.read(view, keys, wait=False)
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.READERS, thread_name_prefix="mlp-features-read")
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.read, view, keys)

    def state(self, view: str) -> ViewState | None:
        row = (
            self._con()
            .execute(
                "SELECT view, version, watermark, max_event, materialized_at, rows FROM feature_state WHERE view = ?",
                (view,),
            )
            .fetchone()
        )
        return ViewState(*row) if row else None

    def set_state(self, st: ViewState) -> None:
        self._con().execute(
            "INSERT OR REPLACE INTO feature_state VALUES (?, ?, ?, ?, ?, ?)",
            (st.view, st.version, st.watermark, st.max_event, st.materialized_at, st.rows),
        )

    def dump(self, view: str) -> dict[str, tuple[int, bytes]]:
        rows = self._con().execute("SELECT key, ts, value FROM feature_rows WHERE view = ?", (view,))
        return {k: (ts, v) for k, ts, v in rows}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
        for name in ("con", "nowait"):
            con = getattr(self._local, name, None)
            if con is not None:
                con.close()
                setattr(self._local, name, None)


# Newer-wins in one round trip: HSET only when the stored event time is not newer.
_REDIS_PUT = """
local n = 0
for i = 1, #KEYS do
  local ts = ARGV[2 * i - 1]
  local cur = redis.call('HGET', KEYS[i], 't')
  if (not cur) or tonumber(cur) <= tonumber(ts) then
    redis.call('HSET', KEYS[i], 't', ts, 'v', ARGV[2 * i])
    n = n + 1
  end
end
return n
"""


class RedisStore:
    """Hashes `mlp:fv:VIEW:KEY` with fields t (event micros) and v (values); state in `mlp:fv-state:VIEW`.

    `aread` uses redis.asyncio on the caller's event loop (its connections belong to that loop)."""

    def __init__(self, url: str) -> None:
        import redis

        self.url = url
        self.r: Any = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        self._put = self.r.register_script(_REDIS_PUT)
        self._aio: tuple[Any, Any] | None = None  # (loop, redis.asyncio.Redis)

    def _k(self, view: str, key: str) -> str:
        return f"mlp:fv:{view}:{key}"

    def write(self, view: str, rows: Iterable[tuple[str, int, bytes]]) -> int:
        keys: list[str] = []
        args: list[Any] = []
        for k, ts, v in rows:
            keys.append(self._k(view, k))
            args.extend((ts, v))
        if keys:
            self._put(keys=keys, args=args)
        return len(keys)

    def read(self, view: str, keys: Sequence[str]) -> list[tuple[int, bytes] | None]:
        pipe = self.r.pipeline(transaction=False)
        for k in keys:
            pipe.hmget(self._k(view, k), ["t", "v"])
        out: list[tuple[int, bytes] | None] = []
        for t, v in pipe.execute():
            out.append((int(t), v) if t is not None else None)
        return out

    async def aread(self, view: str, keys: Sequence[str]) -> list[tuple[int, bytes] | None]:
        loop = asyncio.get_running_loop()
        if self._aio is None or self._aio[0] is not loop:
            import redis.asyncio

            self._aio = (loop, redis.asyncio.Redis.from_url(self.url, socket_timeout=10, socket_connect_timeout=5))
        r: Any = self._aio[1]  # redis' stubs type commands as sync-or-async
        if len(keys) == 1:
            t, v = await r.hmget(self._k(view, keys[0]), ["t", "v"])
            return [(int(t), v) if t is not None else None]
        pipe = r.pipeline(transaction=False)
        for k in keys:
            pipe.hmget(self._k(view, k), ["t", "v"])
        return [(int(t), v) if t is not None else None for t, v in await pipe.execute()]

    def state(self, view: str) -> ViewState | None:
        raw: Any = self.r.get(f"mlp:fv-state:{view}")
        return ViewState(**json.loads(raw)) if raw else None

    def set_state(self, st: ViewState) -> None:
        self.r.set(f"mlp:fv-state:{st.view}", json.dumps(st.__dict__))

    def dump(self, view: str) -> dict[str, tuple[int, bytes]]:
        prefix = f"mlp:fv:{view}:"
        out = {}
        for name in self.r.scan_iter(match=prefix + "*", count=1000):
            got: Any = self.r.hmget(name, ["t", "v"])
            t, v = got
            out[name.decode()[len(prefix) :]] = (int(t), v)
        return out

    def close(self) -> None:
        self.r.close()
        self._aio = None  # its connections die with their event loop


def open_store(spec: str) -> OnlineStore:
    """`redis://...` or a SQLite file path."""
    if spec.startswith(("redis://", "rediss://")):
        return RedisStore(spec)
    return SQLiteStore(Path(spec.removeprefix("sqlite://")))


# --- materialization ------------------------------------------------------------------------


@dataclass
class Materialized:
    view: str
    rows: int
    since: datetime | None
    until: datetime
    freshness_seconds: float | None


def _parse_time(text: str | datetime | None) -> datetime | None:
    if text is None or isinstance(text, datetime):
        return text
    try:
        ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FeatureError(f"{text!r} is not an ISO 8601 time (e.g. 2026-01-31T00:00:00Z)") from None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def materialize(
    source: Source,
    store: OnlineStore,
    *,
    repo: Path,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    batch_rows: int = 10_000,
    progress: Callable[[str], None] | None = None,
    now: datetime | None = None,
) -> Materialized:
    import duckdb

    say = progress or (lambda _msg: None)
    name = source.name
    version = source.version()
    end = _parse_time(until) or (now or datetime.now(UTC))
    prior = store.state(name)
    start = _parse_time(since)
    if start is None and prior is not None and prior.version == version and prior.watermark is not None:
        start = from_micros(prior.watermark)
    if start is not None and start >= end:
        say(f"FeatureView/{name}: up to date (watermark {start.isoformat()})")
        return Materialized(name, 0, start, end, _freshness(prior))
    con = connect(repo, allow=(source.cache,) if source.cache else ())
    check_schema(con, source)
    keys = ", ".join(ident(k) for k in source.keys)
    ts = f"CAST({ident(source.ts)} AS TIMESTAMPTZ)"
    where = [f"{ts} < {literal(end.isoformat())}::TIMESTAMPTZ"]
    if start is not None:
        where.append(f"{ts} >= {literal(start.isoformat())}::TIMESTAMPTZ")
    feats = ", ".join(ident(f) for f in source.features)
    # Latest row per key in the window; ties broken by the values so reruns pick the same row.
    query = (
        f"SELECT {keys}, epoch_us({ts}) AS __ts, {feats} FROM {source.table} WHERE {' AND '.join(where)} "
        f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY {ts} DESC, {feats}) = 1"
    )
    say(f"FeatureView/{name}: materializing {start.isoformat() if start else 'the beginning'} .. {end.isoformat()}")
    nkeys = len(source.keys)
    total = 0
    newest = prior.max_event if prior is not None and prior.version == version else None
    try:
        reader = con.sql(query).to_arrow_reader(batch_rows)
        for batch in reader:
            cols = batch.to_pydict()
            names = list(cols)
            key_cols = [cols[n] for n in names[:nkeys]]
            ts_col = cols["__ts"]
            feat_cols = [(n, cols[n]) for n in names[nkeys + 1 :]]
            rows = []
            for i in range(batch.num_rows):
                t = int(ts_col[i])
                newest = t if newest is None or t > newest else newest
                value = orjson.dumps({n: c[i] for n, c in feat_cols}, default=_json_default)
                rows.append((encode_key([c[i] for c in key_cols]), t, value))
            total += store.write(name, rows)
            say(f"FeatureView/{name}: {total} rows")
    except duckdb.Error as exc:
        raise FeatureError(f"FeatureView/{name}: materialization failed: {str(exc).splitlines()[0]}") from None
    finally:
        con.close()
    st = ViewState(name, version, micros(end), newest, time.time(), (prior.rows if prior else 0) + total)
    store.set_state(st)
    return Materialized(name, total, start, end, _freshness(st))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        return float(obj)
    if isinstance(obj, bytes):
        return obj.decode("latin-1")
    raise TypeError(f"{type(obj).__name__} is not a feature value type")


def _freshness(st: ViewState | None) -> float | None:
    if st is None or st.max_event is None:
        return None
    return max(0.0, time.time() - st.max_event / 1e6)


def lookup(
    store: OnlineStore, source_view: str, keys: Sequence[str], ttl: int | None, now: float | None = None
) -> list[tuple[datetime, dict[str, Any]] | None]:
    """Values per key (None where absent or older than `ttl` seconds)."""
    return _fresh(store.read(source_view, keys), ttl, now)


async def alookup(
    store: OnlineStore, source_view: str, keys: Sequence[str], ttl: int | None, now: float | None = None
) -> list[tuple[datetime, dict[str, Any]] | None]:
    """`lookup` without blocking the running event loop."""
    return _fresh(await store.aread(source_view, keys), ttl, now)


def _fresh(
    hits: list[tuple[int, bytes] | None], ttl: int | None, now: float | None
) -> list[tuple[datetime, dict[str, Any]] | None]:
    cutoff = None if ttl is None else int(((now if now is not None else time.time()) - ttl) * 1e6)
    out: list[tuple[datetime, dict[str, Any]] | None] = []
    for hit in hits:
        if hit is None or (cutoff is not None and hit[0] < cutoff):
            out.append(None)
        else:
            out.append((from_micros(hit[0]), orjson.loads(hit[1])))
    return out
