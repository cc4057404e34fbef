"""Materialization into the online stores: idempotent, incremental, resumable after a kill; Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from featurerepo import redis_url, write_repo

from mlp.features.online import SQLiteStore, lookup, materialize, open_store
from mlp.features.sources import resolve
from mlp.sources.directory import read_directory
from mlp.specs import load

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _data(n_rows: int, n_keys: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "customer_id": rng.integers(0, n_keys, n_rows),
            "ts": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.permutation(n_rows), unit="s"),
            "x": rng.normal(size=n_rows).round(6),
        }
    )


def _latest(df: pd.DataFrame, until: datetime | None = None) -> dict[str, float]:
    if until is not None:
        df = df[df.ts < until.replace(tzinfo=None)]
    last = df.sort_values("ts").groupby("customer_id").tail(1)
    return {f"[{k}]": x for k, x in zip(last.customer_id, last.x, strict=True)}


def _source(repo: Path, name: str = "stats"):  # type: ignore[no-untyped-def]
    specs = load(read_directory(repo)).specs
    return resolve(specs.feature_views[name], specs.entities, repo)


def _values(store, view: str = "stats") -> dict[str, float]:  # type: ignore[no-untyped-def]
    import json

    return {k: json.loads(v)["x"] for k, (_, v) in store.dump(view).items()}


def test_materialize_twice_gives_no_duplicates_and_is_incremental(tmp_path: Path) -> None:
    write_repo(tmp_path, [{"name": "stats", "path": "stats.parquet"}])
    df = _data(5000, 300)
    df.to_parquet(tmp_path / "stats.parquet")
    store = SQLiteStore(tmp_path / "online.db")
    until = T0 + timedelta(seconds=2500)
    first = materialize(_source(tmp_path), store, repo=tmp_path, until=until, batch_rows=97)
    assert first.rows == len(_latest(df, until))
    assert _values(store) == _latest(df, until)
    # the same window again: nothing to do (watermark), and forcing it changes nothing
    again = materialize(_source(tmp_path), store, repo=tmp_path, until=until)
    assert again.rows == 0
    materialize(_source(tmp_path), store, repo=tmp_path, since=T0 - timedelta(days=1), until=until)
    count = store._con().execute("SELECT count(*), count(DISTINCT key) FROM feature_rows").fetchone()
    assert count[0] == count[1] == len(_latest(df, until))
    # the next run starts at the watermark and brings the store to the latest values
    rest = materialize(_source(tmp_path), store, repo=tmp_path, until=T0 + timedelta(days=1))
    assert rest.since == until
    assert _values(store) == _latest(df)
    st = store.state("stats")
    assert st is not None and st.max_event == int(
        (df.ts.max() - pd.Timestamp("2024-01-01")).total_seconds() * 1e6
    ) + int(T0.timestamp() * 1e6)


def test_an_older_row_never_replaces_a_newer_one(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    store.write("v", [("[1]", 200, b'{"x":2}')])
    store.write("v", [("[1]", 100, b'{"x":1}')])
    assert store.dump("v") == {"[1]": (200, b'{"x":2}')}
    hits = lookup(store, "v", ["[1]", "[2]"], ttl=10, now=200 / 1e6 + 5)
    assert hits[0] is not None and hits[0][1] == {"x": 2} and hits[1] is None
    assert lookup(store, "v", ["[1]"], ttl=10, now=200 / 1e6 + 11) == [None]  # past the TTL


def test_a_run_killed_half_way_and_rerun_gives_the_same_store(tmp_path: Path) -> None:
    write_repo(tmp_path, [{"name": "stats", "path": "stats.parquet"}])
    df = _data(400_000, 150_000, seed=3)
    df.to_parquet(tmp_path / "stats.parquet")
    killed = tmp_path / "killed.db"
    cmd = [
        sys.executable, "-m", "mlp.cli.main", "features", "materialize", "--repo", str(tmp_path),
        "--store", str(killed), "--batch-rows", "500", "--until", "2025-01-01T00:00:00Z",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.rstrip().endswith("rows") and " 500 rows" not in line:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    partial = SQLiteStore(killed)
    got = len(partial.dump("stats"))
    assert 0 < got < len(_latest(df)), got
    assert partial.state("stats") is None  # the watermark did not move
    partial.close()
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    clean = tmp_path / "clean.db"
    one_go = subprocess.run(
        [str(clean) if c == str(killed) else c for c in cmd], capture_output=True, text=True, timeout=300
    )
    assert one_go.returncode == 0, one_go.stderr
    a, b = SQLiteStore(killed), SQLiteStore(clean)
    assert a.dump("stats") == b.dump("stats")
    assert len(a.dump("stats")) == len(_latest(df))


__all__ = ["redis_url"]


def test_redis_store_materializes_idempotently_and_matches_sqlite(tmp_path: Path, redis_url: str) -> None:
    write_repo(tmp_path, [{"name": "stats", "path": "stats.parquet"}])
    df = _data(3000, 200, seed=5)
    df.to_parquet(tmp_path / "stats.parquet")
    r = open_store(redis_url)
    until = T0 + timedelta(seconds=1500)
    materialize(_source(tmp_path), r, repo=tmp_path, until=until, batch_rows=50)
    materialize(_source(tmp_path), r, repo=tmp_path, since=T0 - timedelta(days=1), until=until)  # again, forced
    assert _values(r) == _latest(df, until)
    materialize(_source(tmp_path), r, repo=tmp_path, until=T0 + timedelta(days=1))
    sq = SQLiteStore(tmp_path / "s.db")
    materialize(_source(tmp_path), sq, repo=tmp_path, until=T0 + timedelta(days=1))
    assert r.dump("stats") == sq.dump("stats")
    keys = list(sq.dump("stats"))[:10] + ["[123456789]"]
    assert r.read("stats", keys) == sq.read("stats", keys)
    st = r.state("stats")
    assert st is not None and st.watermark is not None
    # the event-loop reads (what `mlp up` and `mlp server` use) give the same answers
    assert asyncio.run(r.aread("stats", keys)) == sq.read("stats", keys)
    assert asyncio.run(r.aread("stats", keys[:1])) == sq.read("stats", keys[:1])
    assert asyncio.run(sq.aread("stats", keys)) == sq.read("stats", keys)


def test_a_stalled_redis_does_not_stall_the_event_loop(tmp_path: Path, redis_url: str) -> None:
    import redis

    store = open_store(redis_url)
    store.write("v", [("[1]", 5, b'{"x":1.0}')])
    admin = redis.Redis.from_url(redis_url)

    async def scenario() -> tuple[int, list[tuple[int, bytes] | None]]:
        ticks = 0
        admin.execute_command("CLIENT", "PAUSE", "1500", "ALL")  # the server answers no one for 1.5 s
        read = asyncio.ensure_future(store.aread("v", ["[1]"]))
        while not read.done():  # other requests' work goes on meanwhile
            ticks += 1
            await asyncio.sleep(0.01)
        return ticks, await read

    ticks, got = asyncio.run(scenario())
    assert got == [(5, b'{"x":1.0}')]
    assert ticks > 10  # a blocking read would have held the loop: no tick until it returned
    admin.close()
    store.close()


@pytest.mark.timeout(20)  # a lookup waiting on the loop would hold it for SQLite's 30 s busy timeout
def test_a_locked_sqlite_file_does_not_stall_the_event_loop(tmp_path: Path) -> None:
    """One-key lookups run on the event loop; one that meets a lock must not wait there."""
    import sqlite3

    path = tmp_path / "online.db"
    store = SQLiteStore(path)
    store.write("v", [("[1]", 5, b'{"x":1.0}')])
    store.close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")  # held from the next write until closed
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("COMMIT")

    async def scenario() -> tuple[int, list[tuple[int, bytes] | None]]:
        ticks = 0

        async def release() -> None:
            # the lock goes only when this coroutine has run 20 times, so only if the loop
            # kept running while the lookup waited
            nonlocal ticks
            while ticks < 20:
                ticks += 1
                await asyncio.sleep(0.01)
            holder.close()

        task = asyncio.ensure_future(release())
        got = await store.aread("v", ["[1]"])
        await task
        return ticks, got

    ticks, got = asyncio.run(scenario())
    assert got == [(5, b'{"x":1.0}')] and ticks == 20
    store.close()


def test_mlp_up_materializes_on_the_environment_schedule(tmp_path: Path) -> None:
    from mlp.features.service import FeatureService

    write_repo(
        tmp_path,
        [{"name": "stats", "path": "stats.parquet"}],
        env_extra="  features:\n    materialize: {schedule: '*/5 * * * *'}\n",
    )
    df = _data(500, 40)
    df.to_parquet(tmp_path / "stats.parquet")
    svc = FeatureService.for_environment(tmp_path, "dev")
    seen: list[str] = []
    assert svc.tick(datetime(2026, 1, 1, 10, 4, 30, tzinfo=UTC), seen.append) == []  # not due
    assert svc.tick(datetime(2026, 1, 1, 10, 5, 1, tzinfo=UTC), seen.append) == ["stats"]
    assert svc.tick(datetime(2026, 1, 1, 10, 5, 40, tzinfo=UTC), seen.append) == []  # once per minute
    assert _values(svc.store) == _latest(df)
    assert (tmp_path / ".mlp" / "features" / "dev.db").is_file()  # the default store
    assert any("materialized FeatureView/stats" in m for m in seen)
