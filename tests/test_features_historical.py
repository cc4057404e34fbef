"""Point-in-time training sets: equal to a naive reference, no leakage, TTL, lineage, bad input."""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from featurerepo import run_mlp, write_repo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlp.features import FeatureError
from mlp.features.historical import historical, read_lineage
from mlp.features.sources import resolve
from mlp.sources.directory import read_directory
from mlp.specs import load

T0 = datetime(2024, 1, 1)


def _sources(repo: Path, names: list[str]) -> list:
    specs = load(read_directory(repo)).specs
    return [resolve(specs.feature_views[n], specs.entities, repo) for n in names]


def _run(repo: Path, names: list[str], entities: pd.DataFrame, **kw: object) -> pd.DataFrame:
    ent = repo / "entities.parquet"
    entities.to_parquet(ent)
    out = repo / "out.parquet"
    historical(_sources(repo, names), ent, out, repo=repo, **kw)  # type: ignore[arg-type]
    return pd.read_parquet(out)


def reference(
    features: pd.DataFrame, entities: pd.DataFrame, ttl: timedelta | None, col: str = "x"
) -> list[float | None]:
    """The obvious O(n*m) definition: latest row at or before the entity time, within the TTL."""
    out: list[float | None] = []
    for _, e in entities.iterrows():
        rows = features[(features.customer_id == e.customer_id) & (features.ts <= e.event_timestamp)]
        if rows.empty:
            out.append(None)
            continue
        best = rows.loc[rows.ts.idxmax()]
        out.append(None if ttl is not None and best.ts < e.event_timestamp - ttl else float(best[col]))
    return out


@st.composite
def feature_rows(draw: st.DrawFn, col: str) -> pd.DataFrame:
    rows = []
    for key in range(1, draw(st.integers(1, 4)) + 1):
        seconds = draw(st.lists(st.integers(0, 500), min_size=0, max_size=12, unique=True))
        rows += [(key, T0 + timedelta(seconds=s), float(draw(st.integers(-50, 50)))) for s in seconds]
    return pd.DataFrame(rows or [(99, T0, 0.0)], columns=["customer_id", "ts", col])


@st.composite
def worlds(draw: st.DrawFn) -> tuple[list[tuple[str, pd.DataFrame, int | None]], pd.DataFrame]:
    """Two views (x and z), each a Parquet file, Parquet files in a folder or a CSV file (the
    two plans of `build_query`), each with or without a TTL; entity rows with a label."""
    views = [
        (draw(st.sampled_from(["parquet", "parquet-folder", "csv"])), draw(feature_rows(col)), draw(
            st.one_of(st.none(), st.integers(1, 200))
        ))
        for col in ("x", "z")
    ]  # fmt: skip
    entity_rows = draw(
        st.lists(st.tuples(st.integers(1, 5), st.integers(-20, 520), st.integers(0, 1)), min_size=1, max_size=25)
    )
    entities = pd.DataFrame(
        [(k, T0 + timedelta(seconds=s), y) for k, s, y in entity_rows], columns=["customer_id", "event_timestamp", "y"]
    )
    return views, entities


def _write_source(repo: Path, name: str, kind: str, rows: pd.DataFrame) -> dict[str, object]:
    if kind == "csv":
        rows.to_csv(repo / f"{name}.csv", index=False)
        return {"kind": "csv", "path": f"{name}.csv"}
    if kind == "parquet":
        rows.to_parquet(repo / f"{name}.parquet")
        return {"path": f"{name}.parquet"}
    (repo / name).mkdir()  # rows spread over three files: row addresses span files
    for i in range(3):
        rows.iloc[i::3].to_parquet(repo / name / f"part-{i}.parquet")
    return {"path": name}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(world=worlds())
def test_point_in_time_join_equals_the_naive_reference(tmp_path_factory: pytest.TempPathFactory, world: tuple) -> None:
    views, entities = world
    repo = tmp_path_factory.mktemp("pit")
    specs = []
    for (kind, rows, ttl), name, col in zip(views, ("a", "b"), ("x", "z"), strict=True):
        where = _write_source(repo, name, kind, rows)
        specs.append({"name": name, **where, "ttl": f"{ttl}s" if ttl else None, "features": {col: "double"}})
    write_repo(repo, specs)
    entities = entities.reset_index().rename(columns={"index": "row"})
    got = _run(repo, ["a", "b"], entities).sort_values("row")
    assert list(got.columns) == ["row", "customer_id", "event_timestamp", "y", "x", "z"]
    assert len(got) == len(entities) and list(got.y) == list(entities.y)
    for (_, rows, ttl), col in zip(views, ("x", "z"), strict=True):
        want = reference(rows, entities, timedelta(seconds=ttl) if ttl else None, col)
        assert [None if pd.isna(v) else v for v in got[col]] == want, col


def test_a_feature_updated_one_second_after_the_label_never_leaks(tmp_path: Path) -> None:
    write_repo(tmp_path, [{"name": "stats", "path": "stats.parquet"}])
    label_time = T0 + timedelta(days=3)
    # the trap: the "true" value arrives one second after the label (and later still)
    pd.DataFrame(
        {
            "customer_id": [7, 7, 7, 8],
            "ts": [
                T0,
                label_time + timedelta(seconds=1),
                label_time + timedelta(days=1),
                label_time + timedelta(seconds=1),
            ],
            "x": [1.0, 999.0, 998.0, 999.0],
        }
    ).to_parquet(tmp_path / "stats.parquet")
    ents = pd.DataFrame({"customer_id": [7, 8], "event_timestamp": [label_time, label_time], "label": [1, 1]})
    got = _run(tmp_path, ["stats"], ents).sort_values("customer_id")
    assert got.x.iloc[0] == 1.0  # the value known at label time
    assert pd.isna(got.x.iloc[1])  # nothing was known yet
    assert 999.0 not in set(got.x) and 998.0 not in set(got.x)
    # at the same instant the value counts (event time <= label time), as in Feast
    same = pd.DataFrame({"customer_id": [7], "event_timestamp": [label_time + timedelta(seconds=1)], "label": [1]})
    assert _run(tmp_path, ["stats"], same).x.iloc[0] == 999.0


def test_ttl_expiry_gives_nulls_and_two_views_join_with_lineage(tmp_path: Path) -> None:
    write_repo(
        tmp_path,
        [
            {"name": "stats", "path": "stats.parquet", "ttl": "1h"},
            {"name": "profile", "kind": "csv", "path": "profile", "features": {"segment": "string", "age": "long"}},
        ],
    )
    pd.DataFrame({"customer_id": [1, 2], "ts": [T0, T0], "x": [1.5, 2.5]}).to_parquet(tmp_path / "stats.parquet")
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile" / "a.csv").write_text("customer_id,ts,segment,age\n1,2023-12-31 00:00:00,gold,40\n")
    (tmp_path / "profile" / "b.csv").write_text("customer_id,ts,segment,age\n2,2023-12-31 00:00:00,tin,30\n")
    ents = pd.DataFrame(
        {
            "customer_id": [1, 2],
            "event_timestamp": [T0 + timedelta(minutes=59, seconds=59), T0 + timedelta(hours=1, seconds=1)],
        }
    )
    got = _run(tmp_path, ["stats", "profile"], ents).sort_values("customer_id")
    assert got.x.iloc[0] == 1.5 and pd.isna(got.x.iloc[1])  # 1h01s old: expired
    assert list(got.segment) == ["gold", "tin"]  # no TTL on profile
    lineage = read_lineage(tmp_path / "out.parquet")
    assert lineage is not None
    assert set(lineage["views"]) == {"stats", "profile"}
    assert lineage["views"]["profile"]["source"]["files"] == 2
    assert lineage["views"]["stats"]["snapshot"].startswith("sha256:")
    before = lineage["views"]["stats"]["snapshot"]
    pd.DataFrame({"customer_id": [1], "ts": [T0], "x": [0.0]}).to_parquet(tmp_path / "stats.parquet")
    _run(tmp_path, ["stats"], ents)
    after = read_lineage(tmp_path / "out.parquet")
    assert after is not None and after["views"]["stats"]["snapshot"] != before


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", ["parquet-folder", "csv"])
def test_the_lineage_records_the_sha256_of_every_input(tmp_path: Path, kind: str) -> None:
    """Parquet views are hashed on a thread while DuckDB joins, CSV ones before: same record."""
    rows = pd.DataFrame(
        {"customer_id": [1, 1, 2, 2], "ts": [T0, T0 + timedelta(hours=1)] * 2, "x": [1.0, 2.0, 3.0, 4.0]}
    )
    write_repo(tmp_path, [{"name": "stats", **_write_source(tmp_path, "stats", kind, rows)}])
    ents = pd.DataFrame({"customer_id": [1, 2], "event_timestamp": [T0 + timedelta(minutes=30)] * 2, "y": [0, 1]})
    ents.to_parquet(tmp_path / "entities.parquet")
    out = tmp_path / "out.parquet"
    result = historical(_sources(tmp_path, ["stats"]), tmp_path / "entities.parquet", out, repo=tmp_path)
    assert sorted(pd.read_parquet(out).x) == [1.0, 3.0]
    files = sorted((tmp_path / "stats").glob("*.parquet")) if kind == "parquet-folder" else [tmp_path / "stats.csv"]
    listing = "".join(f"{p.name}:{_sha256(p)}\n" for p in files)
    lineage = read_lineage(out)
    assert lineage == result.lineage
    assert lineage["views"]["stats"]["snapshot"] == "sha256:" + hashlib.sha256(listing.encode()).hexdigest()
    assert lineage["entities"]["snapshot"] == "sha256:" + _sha256(tmp_path / "entities.parquet")
    # a normal Parquet file: low-cardinality columns keep their dictionary encoding
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(out).metadata
    y = meta.schema.names.index("y")
    assert any("DICTIONARY" in e for e in meta.row_group(0).column(y).encodings)


def test_a_failed_join_leaves_no_output_and_an_earlier_output_as_it_was(tmp_path: Path) -> None:
    write_repo(tmp_path, [{"name": "stats", "path": "stats"}])
    rows = pd.DataFrame({"customer_id": range(3000), "ts": [T0] * 3000, "x": [1.0] * 3000})
    _write_source(tmp_path, "stats", "parquet-folder", rows)
    ents = pd.DataFrame({"customer_id": range(3000), "event_timestamp": [T0 + timedelta(days=1)] * 3000})
    ents.to_parquet(tmp_path / "entities.parquet")
    out = tmp_path / "out.parquet"
    historical(_sources(tmp_path, ["stats"]), tmp_path / "entities.parquet", out, repo=tmp_path)
    before = out.read_bytes()
    # the join runs out of memory while the lineage is being hashed
    with pytest.raises(FeatureError, match="historical retrieval failed: Out of Memory"):
        historical(_sources(tmp_path, ["stats"]), tmp_path / "entities.parquet", out, repo=tmp_path, memory_limit="1MB")
    assert out.read_bytes() == before and not out.with_name("out.parquet.part").exists()
    # a source file gone between resolving the view and joining it (unchecked: the join meets it)
    sources = _sources(tmp_path, ["stats"])
    (tmp_path / "stats" / "part-1.parquet").unlink()
    fresh = tmp_path / "fresh.parquet"
    with pytest.raises(FeatureError, match=r"part-1\.parquet"):
        historical(sources, tmp_path / "entities.parquet", fresh, repo=tmp_path, check=False)
    assert not fresh.exists() and not fresh.with_name("fresh.parquet.part").exists()


def _cli(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_mlp("features", *args, "--repo", str(repo), timeout=120)


def test_cli_writes_csv_with_a_lineage_sidecar_and_progress_on_stderr(tmp_path: Path) -> None:
    write_repo(tmp_path, [{"name": "stats", "kind": "jsonl", "path": "stats.jsonl"}])
    (tmp_path / "stats.jsonl").write_text(
        '{"customer_id": 1, "ts": "2024-01-01T00:00:00", "x": 3.5}\n{"customer_id": 1, "ts": "2024-01-02T00:00:00", "x": 4.5}\n'
    )
    (tmp_path / "ents.csv").write_text("customer_id,when\n1,2024-01-01 12:00:00\n")
    res = _cli(
        tmp_path, "historical", "--view", "stats", "--entities", str(tmp_path / "ents.csv"),
        "--out", str(tmp_path / "train.csv"), "--file-format", "csv", "--timestamp-column", "when", "-o", "json",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "joining 1 view(s)" in res.stderr
    assert json.loads(res.stdout)["rows"] == 1
    assert (tmp_path / "train.csv").read_text().splitlines() == ["customer_id,when,x", "1,2024-01-01 12:00:00,3.5"]
    assert json.loads((tmp_path / "train.csv.lineage.json").read_text())["views"]["stats"]["version"]


# --- bad input: one located line, exit 2, no traceback, no output file --------------------------


def test_a_column_of_the_wrong_type_names_file_column_and_view(tmp_path: Path) -> None:
    write_repo(tmp_path, [{"name": "stats", "kind": "csv", "path": "data"}])
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "1.csv").write_text("customer_id,ts,x\n1,2024-01-01 00:00:00,1.5\n")
    (tmp_path / "data" / "2.csv").write_text("customer_id,ts,x\n1,2024-01-02 00:00:00,high\n")
    (tmp_path / "ents.csv").write_text("customer_id,event_timestamp\n1,2024-01-03 00:00:00\n")
    res = _cli(
        tmp_path,
        "historical",
        "--view",
        "stats",
        "--entities",
        str(tmp_path / "ents.csv"),
        "--out",
        str(tmp_path / "o.parquet"),
    )
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert "2.csv" in line and "'x'" in line and "FeatureView/stats" in line and "VARCHAR" in line, line
    assert not (tmp_path / "o.parquet").exists()
    # mlp validate --check-sources reports the same, located at the view's source
    val = run_mlp("validate", str(tmp_path), "--check-sources")
    assert val.returncode == 1, val.stdout + val.stderr
    assert "specs/features.yaml:" in val.stdout and "2.csv" in val.stdout and "'x'" in val.stdout, val.stdout
    ok = run_mlp("validate", str(tmp_path))
    assert ok.returncode == 0, ok.stdout  # without the flag no source is read


def test_a_missing_source_is_a_located_error(tmp_path: Path) -> None:
    write_repo(tmp_path, [{"name": "stats", "path": "nowhere/stats.parquet"}])
    (tmp_path / "ents.csv").write_text("customer_id,event_timestamp\n1,2024-01-03 00:00:00\n")
    res = _cli(
        tmp_path,
        "historical",
        "--view",
        "stats",
        "--entities",
        str(tmp_path / "ents.csv"),
        "--out",
        str(tmp_path / "o.parquet"),
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "FeatureView/stats: source 'nowhere/stats.parquet' does not exist" in res.stderr


def test_an_avro_folder_with_a_schema_change_mid_folder_is_refused(tmp_path: Path) -> None:
    import fastavro

    write_repo(tmp_path, [{"name": "stats", "kind": "avro", "path": "avro"}])
    (tmp_path / "avro").mkdir()
    good = {
        "type": "record",
        "name": "Row",
        "fields": [
            {"name": "customer_id", "type": "long"},
            {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-micros"}},
            {"name": "x", "type": "double"},
        ],
    }
    changed = {**good, "fields": [*good["fields"][:2], {"name": "x", "type": "string"}]}
    with open(tmp_path / "avro" / "part-0.avro", "wb") as fh:
        fastavro.writer(fh, good, [{"customer_id": 1, "ts": T0, "x": 1.0}])
    with open(tmp_path / "avro" / "part-1.avro", "wb") as fh:
        fastavro.writer(fh, changed, [{"customer_id": 1, "ts": T0 + timedelta(days=1), "x": "1.0"}])
    (tmp_path / "ents.csv").write_text("customer_id,event_timestamp\n1,2024-01-03 00:00:00\n")
    args = [
        "historical",
        "--view",
        "stats",
        "--entities",
        str(tmp_path / "ents.csv"),
        "--out",
        str(tmp_path / "o.parquet"),
    ]
    res = _cli(tmp_path, *args)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "part-1.avro: Avro schema differs from part-0.avro" in res.stderr and "'x'" in res.stderr, res.stderr
    # the same folder without the odd file reads fine
    (tmp_path / "avro" / "part-1.avro").unlink()
    res = _cli(tmp_path, *args)
    assert res.returncode == 0, res.stderr
    assert pd.read_parquet(tmp_path / "o.parquet").x.tolist() == [1.0]


def test_an_entity_file_without_the_timestamp_column_is_refused(tmp_path: Path) -> None:
    write_repo(tmp_path, [{"name": "stats", "path": "stats.parquet"}])
    pd.DataFrame({"customer_id": [1], "ts": [T0], "x": [1.0]}).to_parquet(tmp_path / "stats.parquet")
    (tmp_path / "ents.csv").write_text("customer_id,label_time\n1,2024-01-03 00:00:00\n")
    res = _cli(
        tmp_path,
        "historical",
        "--view",
        "stats",
        "--entities",
        str(tmp_path / "ents.csv"),
        "--out",
        str(tmp_path / "o.parquet"),
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "ents.csv: no timestamp column 'event_timestamp'" in res.stderr and "label_time" in res.stderr


def test_sql_sources_read_repository_files_and_refuse_anything_but_one_select(tmp_path: Path) -> None:
    pd.DataFrame({"customer_id": [1, 1], "ts": [T0, T0 + timedelta(hours=1)], "amount": [2.0, 5.0]}).to_parquet(
        tmp_path / "tx.parquet"
    )
    query = "SELECT customer_id, ts, sum(amount) OVER (PARTITION BY customer_id ORDER BY ts) AS x FROM read_parquet('tx.parquet')"
    write_repo(tmp_path, [{"name": "stats", "kind": "sql", "query": query}])
    ents = pd.DataFrame({"customer_id": [1], "event_timestamp": [T0 + timedelta(hours=2)]})
    assert _run(tmp_path, ["stats"], ents).x.tolist() == [7.0]
    ents.to_parquet(tmp_path / "e.parquet")
    specs = load(read_directory(tmp_path)).specs
    view = specs.feature_views["stats"]
    for bad in (
        "SELECT 1; SELECT 2",
        "COPY (SELECT 1) TO 'x.csv'",
        "SELECT * FROM read_parquet('/etc/passwd')",
        "SELECT * FROM read_parquet('../x.parquet')",
        "SELECT getenv('HOME') AS x",
    ):
        view.spec.source.query = bad
        with pytest.raises(FeatureError):
            resolve(view, specs.entities, tmp_path)
    # a file named as a bare string is not caught by the parser check, but the sandbox refuses it
    outside = tmp_path.parent / "outside.csv"
    outside.write_text("customer_id,ts,x\n1,2024-01-01 00:00:00,1.0\n")
    view.spec.source.query = f"SELECT * FROM '{outside}'"
    src = resolve(view, specs.entities, tmp_path)
    with pytest.raises(FeatureError, match=r"cannot read|disabled|does not exist"):
        historical([src], tmp_path / "e.parquet", tmp_path / "o.parquet", repo=tmp_path)
