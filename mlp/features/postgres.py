"""PostgreSQL feature sources: a read-only SELECT, its schema, and a Parquet snapshot of its rows.

DuckDB's `postgres` extension is a download (not available offline, nor in a locked-down
pod), so the query runs through psycopg 3 instead: `columns` asks the server for the result's
column types without fetching rows (`LIMIT 0`), which is all `mlp validate --check-sources`
needs; `snapshot` streams the declared columns through a server-side cursor into a Parquet
file that the point-in-time join and materialization then read like any file source. The
snapshot's content hash is the lineage's source snapshot: a table that changes gives a new one.

The query comes from a pull request: it runs in a READ ONLY transaction with a statement
timeout, wrapped as a subquery (one SELECT; a data-modifying WITH is refused by the server
there), and the connection string comes from an environment variable, never from Git.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlp.features import FeatureError

# PostgreSQL type name -> (the DuckDB type name the schema check compares, the Arrow type name)
TYPES: dict[str, tuple[str, str]] = {
    "int2": ("SMALLINT", "int16"),
    "int4": ("INTEGER", "int32"),
    "int8": ("BIGINT", "int64"),
    "float4": ("FLOAT", "float32"),
    "float8": ("DOUBLE", "float64"),
    "numeric": ("DECIMAL", "float64"),
    "bool": ("BOOLEAN", "bool_"),
    "text": ("VARCHAR", "string"),
    "varchar": ("VARCHAR", "string"),
    "bpchar": ("VARCHAR", "string"),
    "name": ("VARCHAR", "string"),
    "bytea": ("BLOB", "binary"),
    "timestamp": ("TIMESTAMP", "timestamp"),
    "timestamptz": ("TIMESTAMP WITH TIME ZONE", "timestamptz"),
    "date": ("DATE", "date32"),
}
STATEMENT_TIMEOUT_MS = 15 * 60 * 1000
FETCH_ROWS = 50_000


def _where(view: str, env: str) -> str:
    return f"FeatureView/{view}: postgresql source (connection from ${env})"


@contextmanager
def _connect(view: str, env: str) -> Iterator[Any]:
    import psycopg

    dsn = os.environ.get(env)
    if not dsn:
        raise FeatureError(f"{_where(view, env)}: environment variable {env} is not set")
    try:
        password = str(psycopg.conninfo.conninfo_to_dict(dsn).get("password") or "")
    except psycopg.Error:  # libpq's message may quote the string, password and all: not shown
        raise FeatureError(f"{_where(view, env)}: ${env} is not a valid PostgreSQL connection string") from None
    try:
        con = psycopg.connect(dsn, connect_timeout=10, autocommit=False)
    except psycopg.Error as exc:
        message = _first_line(exc).replace(password, "***") if password else _first_line(exc)
        raise FeatureError(f"{_where(view, env)}: cannot connect: {message}") from None
    try:
        con.read_only = True
        con.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
        con.execute("SET TimeZone = 'UTC'")
        yield con
    finally:
        con.close()


def _body(query: str) -> str:
    body = query.strip().rstrip(";").strip()
    if ";" in re.sub(r"'(?:[^']|'')*'", "''", body):
        # several statements; the server refuses them too (extended protocol), less clearly
        raise ValueError("spec.source.query must be exactly one SELECT statement")
    return body


def columns(view: str, env: str, query: str) -> dict[str, str]:
    """The query's columns as DuckDB type names (unknown types keep their PostgreSQL name)."""
    import psycopg
    from psycopg.postgres import types as pg_types

    try:
        sql = f"SELECT * FROM ({_body(query)}) AS mlp_source LIMIT 0"
    except ValueError as exc:
        raise FeatureError(f"{_where(view, env)}: {exc}") from None
    with _connect(view, env) as con:
        try:
            cur = con.execute(sql)  # type: ignore[call-overload]  # a checked string, not a literal
        except psycopg.Error as exc:
            raise FeatureError(f"{_where(view, env)}: spec.source.query failed: {_first_line(exc)}") from None
        out: dict[str, str] = {}
        for col in cur.description or []:
            info = pg_types.get(col.type_code)
            name = info.name if info is not None else f"oid {col.type_code}"
            out[col.name] = TYPES.get(name, (name.upper(), ""))[0]
        return out


def snapshot(view: str, env: str, query: str, names: list[str], cache: Path) -> tuple[Path, str]:
    """The rows of `names` (checked columns) as a Parquet file in `cache`, and its sha256."""
    import psycopg
    import pyarrow as pa
    import pyarrow.parquet as pq
    from psycopg.postgres import types as pg_types

    projection = ", ".join('"' + n.replace('"', '""') + '"' for n in names)
    try:
        sql = f"SELECT {projection} FROM ({_body(query)}) AS mlp_source"
    except ValueError as exc:
        raise FeatureError(f"{_where(view, env)}: {exc}") from None
    folder = cache / "postgresql"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{view}.{os.getpid()}.{time.monotonic_ns()}.part"
    writer: Any = None
    try:
        with _connect(view, env) as con, con.cursor(name="mlp_snapshot") as cur:
            try:
                cur.execute(sql)  # type: ignore[call-overload]
                schema: Any = None
                while True:
                    rows = cur.fetchmany(FETCH_ROWS)
                    if schema is None:
                        fields, numeric = [], []
                        for col in cur.description or []:
                            info = pg_types.get(col.type_code)
                            arrow = TYPES.get(info.name if info else "", ("", ""))[1]
                            if not arrow:
                                raise FeatureError(
                                    f"{_where(view, env)}: column {col.name!r} has type "
                                    f"{info.name if info else col.type_code}, which mlp cannot read"
                                )
                            fields.append(pa.field(col.name, _arrow_type(pa, arrow)))
                            numeric.append(info is not None and info.name == "numeric")
                        schema = pa.schema(fields)
                        writer = pq.ParquetWriter(str(tmp), schema)
                    if rows:
                        cols = list(zip(*rows, strict=True))
                        arrays = [
                            pa.array([None if v is None else float(v) for v in c] if dec else c, type=f.type)
                            for c, f, dec in zip(cols, schema, numeric, strict=True)
                        ]
                        writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
                    if len(rows) < FETCH_ROWS:
                        break
            except psycopg.Error as exc:
                raise FeatureError(f"{_where(view, env)}: reading the query failed: {_first_line(exc)}") from None
        writer.close()
        writer = None
        with open(tmp, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        final = folder / f"{view}.{digest[:24]}.parquet"
        tmp.replace(final)
        _prune(folder, view, keep=final)
        return final, digest
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)


def _prune(folder: Path, view: str, keep: Path, age: float = 3600.0) -> None:
    """Older snapshots of the view (a concurrent run may still read a recent one: keep an hour)."""
    cutoff = time.time() - age
    for p in folder.glob(f"{view}.*.parquet"):
        if p != keep and p.stat().st_mtime < cutoff:
            p.unlink(missing_ok=True)


def _arrow_type(pa: Any, name: str) -> Any:
    if name == "timestamp":
        return pa.timestamp("us")
    if name == "timestamptz":
        return pa.timestamp("us", tz="UTC")
    return getattr(pa, name)()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
