"""Point-in-time correct training sets: entity rows joined with feature values as of their time.

For each entity row (join keys + a timestamp) and each view, the value taken is the one from
the view's latest row with the same keys whose event timestamp is at or before the entity
row's (`ASOF LEFT JOIN ... ON keys AND entity_ts >= feature_ts`): nothing from after the
label's time can leak in. A view with a TTL gives nulls when that latest row is older than
`entity_ts - ttl`. Rows without a match get nulls. Output row order is not the input's.

DuckDB runs the whole join and writes the output file itself (`COPY ... TO`), under a memory
limit with spilling to a temporary folder, so entity files larger than memory stream through;
Parquet-backed views are joined on keys and time first and their feature columns fetched
after (`build_query`), so the sort never carries the features.
Lineage (each view's definition hash and source snapshot hash, the entity file's hash) goes
into the Parquet file's key-value metadata under `mlp.lineage`, and beside a CSV as
`OUT.lineage.json`; its hashes are taken on a thread while DuckDB matches.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlp import __version__
from mlp.features import FeatureError
from mlp.features.sources import Source, check_schema, connect, describe, file_hash, ident, literal
from mlp.specs.units import parse_duration

# DuckDB's memory limit unless told otherwise. Past it the hash join's pages and the output
# writer's buffers are evicted and refilled (at 1GB, 10M rows x 20 features took ~2.6 CPU-s
# more, mostly page faults); 1.5GB (1.4 GiB) still keeps the process under 2 GiB.
MEMORY_LIMIT = "1.5GB"

# Parquet output: a column with up to 1,024 distinct values in a row group (flags, categories,
# counts) is still dictionary-encoded. DuckDB's default budget (24,576 values, a fifth of a row
# group) has the writer hash a continuous feature column, most of a training set, that long
# before giving up on it: ~1 CPU-s of ~13 for 10M rows x 20 doubles, for the same file.
PARQUET_OPTIONS = "FORMAT parquet, DICTIONARY_SIZE_LIMIT 1024"


def ttl_seconds(ttl: str) -> int:
    """A TTL (`30d`, `2h30m`: the specs' one duration syntax) in whole seconds."""
    return int(parse_duration(ttl).total_seconds())


def ttl_interval(ttl: str) -> str:
    return f"INTERVAL {ttl_seconds(ttl)} SECONDS"


def entity_table(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        return f"read_parquet({literal(str(path))})"
    if name.endswith((".csv", ".csv.gz")):
        return f"read_csv({literal(str(path))}, header=true)"
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return f"read_json({literal(str(path))}, format='newline_delimited')"
    raise FeatureError(f"{path}: entity file must be .parquet, .csv or .jsonl")


@dataclass
class Result:
    out: Path
    rows: int
    lineage: dict[str, Any]
    seconds: float


def _rowid(i: int) -> str:
    """A Parquet row's address: file index and row number, stable across scans of one file list."""
    return f"(file_index::BIGINT << 40) + file_row_number AS __mlp_row_{i}"


def build_query(
    sources: list[Source],
    entities: str,
    ts_col: str,
    entity_ts_type: str = "",
    *,
    entity_columns: list[str] | None = None,
    staged: str | None = None,
) -> tuple[str, str | None]:
    """The point-in-time join of `entities` (a table expression with column `ts_col`) with each
    source: `(query, None)` for one statement, or `(match, fetch)` for two.

    A Parquet-backed source is joined in two steps when `staged` (a table name for the
    intermediate result) and `entity_columns` are given. The ASOF JOIN sorts its right side,
    payload and all, so joining wide views directly sorts (and past the memory limit, spills)
    every feature value. Instead, `match` ASOF-joins only the keys, the time and each row's
    address (file index, row number) and writes the entity rows with the address they matched
    (or null: no row, or too old for the TTL) as `staged`; `fetch` then reads the features once,
    streaming, through a hash join on the address, built on the (narrow) matched rows. Sources
    without stable row addresses (CSV, JSON, SQL) are joined directly in `match`.

    Timestamps are compared as UTC `TIMESTAMP`s; a column that already is one is used as is
    (no cast, no extra column), the common case and the cheaper plan."""
    plain = entity_ts_type.upper() == "TIMESTAMP"
    e_ts = ident(ts_col) if plain else "__mlp_entity_ts"
    two_step = staged is not None and entity_columns is not None and any(s.addressable for s in sources)
    selects = ["e.*" if plain else "e.* EXCLUDE (" + e_ts + ")"]
    joins = []
    for i, src in enumerate(sources):
        late = two_step and src.addressable
        alias = f"v{i}"
        f_ts = f"__mlp_ts_{i}"
        keys = ", ".join(ident(k) for k in src.keys)
        payload = _rowid(i) if late else ", ".join(ident(f) for f in src.features)
        ts = ident(src.ts) if src.ts_types == {"TIMESTAMP"} else f"CAST({ident(src.ts)} AS TIMESTAMP)"
        joins.append(
            f"ASOF LEFT JOIN (SELECT {keys}, {ts} AS {f_ts}, {payload} FROM {src.table}) "
            f"{alias} ON "
            + " AND ".join(f"e.{ident(k)} = {alias}.{ident(k)}" for k in src.keys)
            + f" AND e.{e_ts} >= {alias}.{f_ts}"
        )
        ttl = src.view.spec.ttl
        for col, name in (
            [(f"{alias}.__mlp_row_{i}", f"__mlp_row_{i}")]
            if late
            else [(f"{alias}.{ident(f)}", ident(f)) for f in src.features]
        ):
            if ttl:
                col = f"CASE WHEN {alias}.{f_ts} >= e.{e_ts} - {ttl_interval(ttl)} THEN {col} END"
            selects.append(f"{col} AS {name}")
    frame = entities if plain else f"(SELECT *, CAST({ident(ts_col)} AS TIMESTAMP) AS {e_ts} FROM {entities})"
    match = f"SELECT {', '.join(selects)} FROM {frame} e " + " ".join(joins)
    if not two_step:
        return match, None
    assert staged is not None and entity_columns is not None
    outs = [f"m.{ident(c)}" for c in entity_columns]
    fetches = []
    for i, src in enumerate(sources):
        if not src.addressable:
            outs += [f"m.{ident(f)}" for f in src.features]
            continue
        feats = ", ".join(ident(f) for f in src.features)
        outs += [f"l{i}.{ident(f)}" for f in src.features]
        fetches.append(
            f"LEFT JOIN (SELECT {_rowid(i)}, {feats} FROM {src.table}) l{i} ON m.__mlp_row_{i} = l{i}.__mlp_row_{i}"
        )
    fetch = f"SELECT {', '.join(outs)} FROM {staged} m " + " ".join(fetches)
    return match, fetch


def historical(
    sources: list[Source],
    entities_path: Path,
    out: Path,
    *,
    repo: Path,
    fmt: str = "parquet",
    ts_col: str = "event_timestamp",
    memory_limit: str | None = MEMORY_LIMIT,
    temp_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
    check: bool = True,
) -> Result:
    import duckdb

    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    if not entities_path.is_file():
        raise FeatureError(f"{entities_path}: entity file does not exist")
    out.parent.mkdir(parents=True, exist_ok=True)
    with connect(
        repo,
        memory_limit=memory_limit,
        temp_dir=temp_dir or repo / ".mlp" / "features" / "spill",
        allow=(entities_path.parent, out.parent, *(s.cache for s in sources if s.cache)),
    ) as con:  # closed on errors too: a failed run leaves no temporary table in memory
        table = entity_table(entities_path.resolve())
        try:
            cols = describe(con, table)
        except duckdb.Error as exc:
            raise FeatureError(f"{entities_path}: cannot read the entity file: {str(exc).splitlines()[0]}") from None
        if ts_col not in cols:
            raise FeatureError(
                f"{entities_path}: no timestamp column {ts_col!r} (the time of each entity row; "
                f"--timestamp-column names another); columns: {', '.join(cols)}"
            )
        if not re.match(r"(TIMESTAMP|DATE)", cols[ts_col].upper()):
            raise FeatureError(f"{entities_path}: column {ts_col!r} is {cols[ts_col]}, not a timestamp")
        seen: dict[str, str] = {}
        for src in sources:
            if check:
                say(f"checking FeatureView/{src.name} ({src.display}, {len(src.files)} file(s))")
                check_schema(con, src)
            for k in src.keys:
                if k not in cols:
                    raise FeatureError(
                        f"{entities_path}: no column {k!r}, the join key of FeatureView/{src.name}; columns: {', '.join(cols)}"
                    )
            for f in src.features:
                if f in cols:
                    raise FeatureError(f"{entities_path}: column {f!r} is also a feature of FeatureView/{src.name}")
                if f in seen:
                    raise FeatureError(f"feature {f!r} is in both FeatureView/{seen[f]} and FeatureView/{src.name}")
                seen[f] = src.name
        match, fetch = build_query(
            sources, table, ts_col, cols[ts_col], entity_columns=list(cols), staged="__mlp_matched"
        )
        tmp = out.with_name(out.name + ".part")
        if fmt not in ("parquet", "csv"):
            raise FeatureError(f"unknown output format {fmt!r} (parquet or csv)")
        say(f"joining {len(sources)} view(s) point-in-time into {out}")
        stop = threading.Event()
        watcher = threading.Thread(target=_progress, args=(con, stop, say), daemon=True)
        watcher.start()
        # the lineage hashes every input byte (~1 s per 2 GB): on a thread (hashlib and DuckDB
        # both release the GIL) while DuckDB matches, needed only once the output is written
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlp-lineage") as pool:
            hashed = pool.submit(_lineage, sources, entities_path, ts_col)
            try:
                if fetch is not None:
                    # a temporary table keeps every column's type (a Parquet file would not: HUGEINT);
                    # DuckDB spills it to the temp directory past the memory limit
                    con.execute(f"CREATE TEMP TABLE __mlp_matched AS {match}")
                    say("fetching the matched feature rows")
                lineage = hashed.result()
                con.execute(f"COPY ({fetch or match}) TO {literal(str(tmp))} ({_options(fmt, lineage)})")
            except duckdb.Error as exc:
                tmp.unlink(missing_ok=True)
                raise FeatureError(f"historical retrieval failed: {str(exc).splitlines()[0]}") from None
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            finally:
                stop.set()
                watcher.join()
        rows = _count(con, tmp, fmt)
        tmp.replace(out)
        if fmt == "csv":
            out.with_name(out.name + ".lineage.json").write_text(json.dumps(lineage, indent=1, sort_keys=True) + "\n")
    seconds = time.perf_counter() - t0
    say(f"wrote {rows} rows to {out} in {seconds:.1f}s")
    return Result(out, rows, lineage, seconds)


def _lineage(sources: list[Source], entities_path: Path, ts_col: str) -> dict[str, Any]:
    """What the output was built from: each view's definition and source snapshot, the entity file's hash."""
    try:
        entities = file_hash(entities_path)
        views = {src.name: src.lineage() for src in sources}
    except OSError as exc:
        raise FeatureError(
            f"{exc.filename or entities_path}: cannot read it for the lineage hash: {exc.strerror or exc}"
        ) from None
    return {
        "mlp": __version__,
        "createdAt": datetime.now(UTC).isoformat(timespec="seconds"),
        "entities": {"file": entities_path.name, "snapshot": f"sha256:{entities}", "timestampColumn": ts_col},
        "views": views,
    }


def _options(fmt: str, lineage: dict[str, Any]) -> str:
    if fmt == "csv":
        return "FORMAT csv, HEADER true"
    meta = literal(json.dumps(lineage, sort_keys=True))
    return f"{PARQUET_OPTIONS}, KV_METADATA {{'mlp.lineage': {meta}}}"


def _count(con: Any, path: Path, fmt: str) -> int:
    if fmt == "parquet":
        row = con.execute(f"SELECT sum(num_rows) FROM parquet_file_metadata({literal(str(path))})").fetchone()
    else:
        row = con.execute(f"SELECT count(*) FROM read_csv({literal(str(path))}, header=true)").fetchone()
    return int(row[0] or 0) if row else 0


def _progress(con: Any, stop: threading.Event, say: Callable[[str], None]) -> None:
    last = -1
    while not stop.wait(1.0):
        try:
            pct = float(con.query_progress())
        except Exception:
            return
        if pct >= 0 and int(pct) // 10 != last:
            last = int(pct) // 10
            say(f"progress {pct:.0f}%")


def read_lineage(path: Path) -> dict[str, Any] | None:
    """The lineage recorded in a historical output (Parquet metadata or the CSV's sidecar)."""
    if path.name.endswith(".csv"):
        side = path.with_name(path.name + ".lineage.json")
        return json.loads(side.read_text()) if side.exists() else None
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(b"mlp.lineage")
    return json.loads(raw) if raw else None
