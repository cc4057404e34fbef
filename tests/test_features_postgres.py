"""PostgreSQL feature sources against a real server: the same answers as the file source, bad input.

The server is Debian's `postgresql` started per module in a temporary folder (tests/pgserver.py);
the connection string reaches mlp through the environment variable the view names.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from featurerepo import ENTITY, ENV, run_mlp
from pgserver import postgresql

from mlp.features import FeatureError
from mlp.features.historical import historical, read_lineage
from mlp.features.online import SQLiteStore, materialize
from mlp.features.sources import resolve
from mlp.sources.directory import read_directory
from mlp.specs import load

pytestmark = pytest.mark.timeout(180)
T0 = datetime(2024, 1, 1)
PG_ENV = "MLP_TEST_FEATURES_PG"

VIEW = """---
apiVersion: mlp.dev/v1
kind: FeatureView
metadata: {name: %(name)s}
spec:
  entities: [customer]
  source: %(source)s
  ttl: 2h
  features:
    - {name: x, type: double}
    - {name: n, type: long}
"""


@pytest.fixture(scope="module")
def pg_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with postgresql(tmp_path_factory.mktemp("pg")) as url:
        yield url.replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    rng = random.Random(18)
    data = [
        (
            rng.randrange(1, 30),
            T0 + timedelta(seconds=rng.randrange(0, 6 * 3600)),
            rng.uniform(-5, 5),
            rng.randrange(100),
        )
        for _ in range(400)
    ]
    df = pd.DataFrame(data, columns=["customer_id", "ts", "x", "n"])
    # one (key, time) per row: with ties an ASOF join may take either row, on any source
    return df.drop_duplicates(["customer_id", "ts"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def loaded(pg_dsn: str, rows: pd.DataFrame) -> str:
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as con:
        con.execute(
            "CREATE TABLE customer_stats (customer_id bigint, ts timestamp, x double precision, n integer, note text)"
        )
        with con.cursor() as cur:
            cur.executemany(
                "INSERT INTO customer_stats VALUES (%s, %s, %s, %s, 'n')",
                [(int(r.customer_id), r.ts.to_pydatetime(), float(r.x), int(r.n)) for r in rows.itertuples()],
            )
    return pg_dsn


def _repo(root: Path, source: str, name: str = "stats") -> Path:
    (root / "specs").mkdir(parents=True, exist_ok=True)
    (root / "environments").mkdir(exist_ok=True)
    (root / "specs" / "features.yaml").write_text(ENTITY + VIEW % {"name": name, "source": source})
    (root / "environments" / "dev.yaml").write_text(ENV % {"extra": ""})
    return root


def _pg_source(query: str) -> str:
    quoted = "'" + query.replace("'", "''") + "'"
    return f"{{kind: postgresql, connectionEnv: {PG_ENV}, timestampField: ts, query: {quoted}}}"


PG_SOURCE = _pg_source("SELECT customer_id, ts, x, n FROM customer_stats")


def _source(repo: Path, name: str = "stats"):  # type: ignore[no-untyped-def]
    specs = load(read_directory(repo)).specs
    return resolve(specs.feature_views[name], specs.entities, repo)


def test_postgresql_source_gives_the_same_training_set_and_store_as_the_file_source(
    tmp_path: Path, loaded: str, rows: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PG_ENV, loaded)
    files = _repo(tmp_path / "files", "{kind: parquet, path: stats.parquet, timestampField: ts}")
    rows.astype({"n": "int32"}).to_parquet(files / "stats.parquet")
    pg = _repo(tmp_path / "pg", PG_SOURCE)
    rng = random.Random(3)
    ents = pd.DataFrame(
        {
            "customer_id": [rng.randrange(0, 32) for _ in range(300)],
            "event_timestamp": [T0 + timedelta(seconds=rng.randrange(-600, 9 * 3600)) for _ in range(300)],
        }
    ).reset_index(names="row")
    ents.to_parquet(tmp_path / "ents.parquet")
    outs = []
    for repo in (files, pg):
        historical([_source(repo)], tmp_path / "ents.parquet", repo / "out.parquet", repo=repo)
        outs.append(pd.read_parquet(repo / "out.parquet").sort_values("row").reset_index(drop=True))
    pd.testing.assert_frame_equal(outs[0], outs[1])
    # the join is not vacuous: values found, and TTL (2h) nulls too
    assert outs[1].x.notna().sum() > 50 and outs[1].x.isna().sum() > 20
    lineage = read_lineage(pg / "out.parquet")
    assert lineage is not None
    view = lineage["views"]["stats"]
    assert view["source"]["kind"] == "postgresql" and view["connectionEnv"] == PG_ENV
    assert view["snapshot"].startswith("sha256:") and loaded not in str(lineage)

    stores = []
    for repo in (files, pg):
        store = SQLiteStore(repo / "online.db")
        materialize(_source(repo), store, repo=repo, until=T0 + timedelta(days=1))
        stores.append(store.dump("stats"))
        store.close()
    assert stores[0] == stores[1] and len(stores[1]) == rows.customer_id.nunique()

    val = run_mlp("validate", str(pg), "--check-sources")
    assert val.returncode == 0, val.stdout + val.stderr


def test_a_changed_table_gives_a_new_snapshot_hash(
    tmp_path: Path, loaded: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    monkeypatch.setenv(PG_ENV, loaded)
    pg = _repo(tmp_path, PG_SOURCE.replace("FROM customer_stats", "FROM snap"))
    with psycopg.connect(loaded, autocommit=True) as con:
        con.execute("CREATE TABLE snap AS SELECT * FROM customer_stats")
        before = _source(pg).snapshot
        assert _source(pg).snapshot == before  # same rows, same hash
        con.execute("UPDATE snap SET x = x + 1 WHERE customer_id = 1")
        assert _source(pg).snapshot != before


def test_a_numeric_column_declared_double_is_read_as_floats(
    tmp_path: Path, loaded: str, rows: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    # psycopg gives numeric values as Decimal, which Arrow will not put in a double column as is
    monkeypatch.setenv(PG_ENV, loaded)
    repo = _repo(tmp_path, _pg_source("SELECT customer_id, ts, round(x::numeric, 3) AS x, n FROM customer_stats"))
    # entity rows at the feature rows' own times: each must get its own row's value
    rows[["customer_id", "ts"]].rename(columns={"ts": "event_timestamp"}).to_parquet(tmp_path / "ents.parquet")
    historical([_source(repo)], tmp_path / "ents.parquet", tmp_path / "out.parquet", repo=repo)
    got = pd.read_parquet(tmp_path / "out.parquet").merge(
        rows, left_on=["customer_id", "event_timestamp"], right_on=["customer_id", "ts"], suffixes=("", "_pg")
    )
    assert len(got) == len(rows) and got.x.dtype == "float64"
    assert (got.x - got.x_pg.round(3)).abs().max() < 1e-9


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("SELECT customer_id, ts, x, n FROM no_such_table", 'relation "no_such_table" does not exist'),
        ("SELEC customer_id", "syntax error"),
        (
            "SELECT customer_id, ts, note AS x, n FROM customer_stats",
            "column 'x' is VARCHAR but FeatureView/stats declares it double",
        ),
        (
            "SELECT customer_id, ts, x, n::numeric AS n FROM customer_stats",
            "column 'n' is DECIMAL but FeatureView/stats declares it long",
        ),
        ("SELECT customer_id, x, n FROM customer_stats", "no column 'ts'"),
        ("SELECT 1; DELETE FROM customer_stats", "exactly one SELECT"),
        ("WITH d AS (DELETE FROM customer_stats RETURNING *) SELECT * FROM d", "WITH"),
    ],
)
def test_bad_queries_are_located_errors_and_change_nothing(
    tmp_path: Path, loaded: str, rows: pd.DataFrame, monkeypatch: pytest.MonkeyPatch, query: str, message: str
) -> None:
    import psycopg

    monkeypatch.setenv(PG_ENV, loaded)
    repo = _repo(tmp_path, _pg_source(query))
    with pytest.raises(FeatureError) as err:
        _source(repo)
    assert "FeatureView/stats" in str(err.value) and message in str(err.value), str(err.value)
    assert f"${PG_ENV}" in str(err.value)
    with psycopg.connect(loaded) as con:
        assert con.execute("SELECT count(*) FROM customer_stats").fetchone() == (len(rows),)
    # `mlp validate --check-sources`: one located diagnostic, exit 1
    val = run_mlp("validate", str(repo), "--check-sources")
    assert val.returncode == 1, val.stdout + val.stderr
    assert "specs/features.yaml:" in val.stdout and "FeatureView/stats" in val.stdout, val.stdout
    assert "Traceback" not in val.stdout + val.stderr


def test_server_down_and_missing_connection_are_located_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    repo = _repo(tmp_path, PG_SOURCE)
    monkeypatch.delenv(PG_ENV, raising=False)
    with pytest.raises(FeatureError, match=f"environment variable {PG_ENV} is not set"):
        _source(repo)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(PG_ENV, f"postgresql://mlp:secret-pw@127.0.0.1:{port}/postgres")
    with pytest.raises(FeatureError) as err:
        _source(repo)
    text = str(err.value)
    assert "FeatureView/stats" in text and "cannot connect" in text and "secret-pw" not in text, text
    monkeypatch.setenv(PG_ENV, "host=127.0.0.1 password=secret-pw bogus=1")  # malformed
    with pytest.raises(FeatureError) as err:
        _source(repo)
    assert "not a valid PostgreSQL connection string" in str(err.value) and "secret-pw" not in str(err.value)
    monkeypatch.setenv(PG_ENV, f"postgresql://mlp:secret-pw@127.0.0.1:{port}/postgres")
    res = run_mlp("features", "materialize", "--repo", str(repo))
    assert res.returncode == 2, res.stdout + res.stderr
    assert "cannot connect" in res.stderr and "Traceback" not in res.stderr and "secret-pw" not in res.stderr
