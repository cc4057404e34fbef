"""A FeatureView's source as a DuckDB relation, with its schema checked and its snapshot hashed.

`resolve(view, repo)` lists the files a source names (a repository file, folder or glob, or
an `s3://bucket/prefix` copied into a local cache keyed by ETag), and gives the SQL table
expression DuckDB reads them with. Avro has no DuckDB reader without a downloaded extension,
so each Avro file is converted once to Parquet in the cache (keyed by its content hash);
every file of an Avro folder must share one schema. `check_schema` compares the columns
DuckDB sees with what the view declares and names the file, column and view on a mismatch.

A `sql` source is one read-only SELECT: anything else (COPY, ATTACH, PRAGMA, several
statements) is refused before DuckDB runs it, since the query comes from a pull request.
A `postgresql` source's schema comes from the server, its rows from a Parquet snapshot of
the query (`mlp.features.postgres`), so everything after `resolve` reads files.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlp.features import FeatureError
from mlp.specs.models import DataType, Entity, FeatureView

EXTENSIONS = {
    "parquet": (".parquet", ".pq"),
    "csv": (".csv", ".csv.gz"),
    "jsonl": (".jsonl", ".ndjson", ".json", ".jsonl.gz"),
    "avro": (".avro",),
}
INTEGER = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER", "HUGEINT", "UBIGINT"}
SMALL_INTEGER = {"TINYINT", "SMALLINT", "INTEGER", "UTINYINT", "USMALLINT"}
# Which DuckDB column types satisfy a declared type: a widening read is fine, a narrowing one is not.
ACCEPTS: dict[DataType, set[str]] = {
    DataType.float: {"FLOAT", "DOUBLE", "DECIMAL"} | INTEGER,
    DataType.double: {"FLOAT", "DOUBLE", "DECIMAL"} | INTEGER,
    DataType.int: SMALL_INTEGER,
    DataType.long: INTEGER,
    DataType.bool: {"BOOLEAN"},
    DataType.string: {"VARCHAR"},
    DataType.bytes: {"BLOB"},
}


@dataclass
class Source:
    """One feature view's source, ready to read."""

    view: FeatureView
    keys: list[str]
    key_types: list[DataType]
    table: str  # a DuckDB table expression
    files: list[Path] = field(default_factory=list)
    snapshot: str = ""  # sha256 over the files' contents (or the query and its files)
    display: str = ""
    cache: Path | None = None  # where S3 objects and converted Avro files live (read access needed)
    ts_types: set[str] = field(default_factory=set)  # the timestamp column's types seen by check_schema
    columns: dict[str, str] | None = None  # column types known without DuckDB (a postgresql query's)
    # computes `snapshot` when it is still to be taken: reading every byte of a large source
    # is slow, so `historical` takes it on a thread while DuckDB joins (`take_snapshot`)
    hasher: Callable[[], str] | None = None

    @property
    def name(self) -> str:
        return self.view.metadata.name

    @property
    def ts(self) -> str:
        return self.view.spec.source.timestampField

    @property
    def addressable(self) -> bool:
        """Read from Parquet files, whose rows have stable addresses (file index, row number)."""
        return self.table.startswith("read_parquet(")

    @property
    def features(self) -> list[str]:
        return [f.name for f in self.view.spec.features]

    def take_snapshot(self) -> str:
        """The source's snapshot hash, computed now if it was deferred."""
        if self.hasher is not None:
            self.snapshot, self.hasher = self.hasher(), None
        return self.snapshot

    def version(self) -> str:
        """The view's definition hash: a changed spec is a new version."""
        spec = self.view.spec.model_dump(mode="json")
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    def lineage(self) -> dict[str, Any]:
        src = self.view.spec.source
        return {
            "version": self.version(),
            "source": {"kind": src.kind, "location": src.uri or src.path or src.query, "files": len(self.files)},
            **({"connectionEnv": src.connectionEnv} if src.connectionEnv else {}),
            "snapshot": f"sha256:{self.take_snapshot()}",
        }


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def join_keys(view: FeatureView, entities: dict[str, Entity]) -> tuple[list[str], list[DataType]]:
    keys: list[str] = []
    types: list[DataType] = []
    for name in view.spec.entities:
        ent = entities.get(name)
        if ent is None:
            raise FeatureError(f"FeatureView/{view.metadata.name}: entity {name!r} does not exist")
        for k in ent.spec.joinKeys:
            keys.append(k)
            types.append(ent.spec.valueType)
    return keys, types


def resolve(
    view: FeatureView,
    entities: dict[str, Entity],
    repo: Path,
    *,
    cache: Path | None = None,
    s3_endpoint_url: str | None = None,
    hash_files: bool = True,
) -> Source:
    """The source of `view`; raises FeatureError (located) when it is missing or unreadable."""
    name = view.metadata.name
    src = view.spec.source
    keys, key_types = join_keys(view, entities)
    cache = cache or repo / ".mlp" / "features" / "cache"
    if src.kind == "postgresql":
        return _postgresql(view, keys, key_types, cache, snapshot=hash_files)
    if src.kind == "sql":
        assert src.query is not None
        _check_query(name, src.query)
        files = [p for p in _query_files(src.query, repo)]
        # relative file names become absolute: the sandboxed connection allows only these folders
        root = str(repo.resolve())
        query = _FILE_ARG.sub(lambda m: m.group(1) + literal(f"{root}/{m.group(2)}"), src.query)
        out = Source(view, keys, key_types, f"({query})", files, "", "sql query", cache)
        _snapshot(out, hash_files, src.query.encode())
        return out
    if src.uri is not None:
        files = _s3_files(name, src.uri, src.kind, cache, s3_endpoint_url)
    else:
        assert src.path is not None
        files = _local_files(name, src.path, src.kind, repo)
    if src.kind == "avro":
        # converted files are cached by content hash: this one is needed now
        hashes = {p: file_hash(p) for p in files}
        read = _avro_to_parquet(name, files, hashes, cache)
        out = Source(view, keys, key_types, f"read_parquet([{', '.join(literal(str(p)) for p in read)}])", files)
        out.snapshot = _digest(files, hashes.__getitem__)
    else:
        if src.kind == "parquet":
            table = f"read_parquet([{', '.join(literal(str(p)) for p in files)}])"
        elif src.kind == "csv":
            table = f"read_csv([{', '.join(literal(str(p)) for p in files)}], header=true)"
        else:
            table = f"read_json([{', '.join(literal(str(p)) for p in files)}], format='newline_delimited')"
        out = Source(view, keys, key_types, table, files)
        _snapshot(out, hash_files)
    out.display, out.cache = src.uri or src.path or "", cache
    return out


def _digest(files: list[Path], hash_of: Callable[[Path], str], head: bytes | None = None) -> str:
    if head is not None:  # a sql source: its query, then its files' hashes
        digest = hashlib.sha256(head)
        for p in files:
            digest.update(hash_of(p).encode())
        return digest.hexdigest()
    digest = hashlib.sha256()
    for p in files:
        digest.update(f"{p.name}:{hash_of(p)}\n".encode())
    return digest.hexdigest()


def _snapshot(source: Source, hash_files: bool, head: bytes | None = None) -> None:
    """With `hash_files`, a deferred sha256 of the contents; without, a cheap stand-in from size and mtime."""
    files = list(source.files)
    if hash_files:
        source.hasher = lambda: _digest(files, file_hash, head)
    elif head is not None:
        source.snapshot = _digest(files, lambda p: str(p.stat().st_mtime_ns), head)
    else:
        source.snapshot = _digest(files, lambda p: f"{p.stat().st_size}:{p.stat().st_mtime_ns}")


def _postgresql(
    view: FeatureView, keys: list[str], key_types: list[DataType], cache: Path, *, snapshot: bool
) -> Source:
    """The schema from the server; with `snapshot`, the declared columns' rows as a Parquet file."""
    from mlp.features import postgres

    src = view.spec.source
    assert src.query is not None and src.connectionEnv is not None
    display = f"postgresql query (${src.connectionEnv})"
    cols = postgres.columns(view.metadata.name, src.connectionEnv, src.query)
    out = Source(view, keys, key_types, "", display=display, cache=cache, columns=cols)
    _check_columns(display, cols, out)
    if snapshot:
        names = list(dict.fromkeys([out.ts, *keys, *out.features]))
        path, digest = postgres.snapshot(view.metadata.name, src.connectionEnv, src.query, names, cache)
        out.table, out.files, out.snapshot = f"read_parquet([{literal(str(path))}])", [path], digest
    return out


def _local_files(view: str, uri: str, kind: str, repo: Path) -> list[Path]:
    root = repo.resolve()
    if any(c in uri for c in "*?["):
        found = sorted(p for p in root.glob(uri) if p.is_file())
    else:
        path = root / uri
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(EXTENSIONS[kind]))
        elif path.is_file():
            found = [path]
        else:
            raise FeatureError(f"FeatureView/{view}: source {uri!r} does not exist (looked for {path})")
    for p in found:
        try:
            p.resolve().relative_to(root)
        except ValueError:
            raise FeatureError(f"FeatureView/{view}: source file {p} leaves the repository") from None
    if not found:
        raise FeatureError(f"FeatureView/{view}: source {uri!r} has no {kind} files")
    return found


def _s3_files(view: str, uri: str, kind: str, cache: Path, endpoint: str | None) -> list[Path]:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, prefix = uri[5:].partition("/")
    s3 = boto3.client("s3", endpoint_url=endpoint)
    out: list[Path] = []
    try:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        objects = [o for page in pages for o in page.get("Contents", [])]
        for obj in sorted(objects, key=lambda o: o["Key"]):
            key: str = obj["Key"]
            if not key.lower().endswith(EXTENSIONS[kind]) or ".." in key.split("/"):
                continue
            etag = str(obj.get("ETag", "")).strip('"')
            local = cache / "s3" / bucket / (key + "." + re.sub(r"[^A-Za-z0-9]", "", etag)[:40])
            local = local.with_name(local.name + Path(key).suffix)
            if not local.exists():
                local.parent.mkdir(parents=True, exist_ok=True)
                tmp = local.with_name(local.name + ".part")
                s3.download_file(bucket, key, str(tmp))
                tmp.replace(local)
            out.append(local)
    except (BotoCoreError, ClientError) as exc:
        raise FeatureError(f"FeatureView/{view}: cannot read {uri}: {exc}") from None
    if not out:
        raise FeatureError(f"FeatureView/{view}: source {uri!r} has no {kind} objects")
    return out


def file_hash(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _avro_to_parquet(view: str, files: list[Path], hashes: dict[Path, str], cache: Path) -> list[Path]:
    import fastavro
    import pyarrow as pa
    import pyarrow.parquet as pq

    first: tuple[Path, list[tuple[str, str]]] | None = None
    out: list[Path] = []
    for path in files:
        target = cache / "avro" / f"{hashes[path]}.parquet"
        with open(path, "rb") as fh:
            try:
                reader = fastavro.reader(fh)
            except Exception as exc:
                raise FeatureError(f"{path}: not an Avro file ({exc}) (FeatureView/{view})") from None
            schema = reader.writer_schema
            fields = _avro_fields(schema)
            if first is None:
                first = (path, fields)
            elif fields != first[1]:
                raise FeatureError(
                    f"{path}: Avro schema differs from {first[0].name} in the same source "
                    f"(FeatureView/{view}): {_schema_diff(first[1], fields)}"
                )
            if target.exists():
                out.append(target)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + f".{os.getpid()}.part")
            writer: pq.ParquetWriter | None = None
            try:
                batch: list[dict[str, Any]] = []
                for rec in reader:
                    batch.append(rec)  # type: ignore[arg-type]
                    if len(batch) >= 65536:
                        writer = _write_rows(writer, tmp, batch, pa, pq)
                        batch = []
                if batch or writer is None:
                    writer = _write_rows(writer, tmp, batch, pa, pq, fields)
            finally:
                if writer is not None:
                    writer.close()
            tmp.replace(target)
        out.append(target)
    return out


def _write_rows(
    writer: Any, tmp: Path, rows: list[dict[str, Any]], pa: Any, pq: Any, fields: list[tuple[str, str]] | None = None
) -> Any:
    if rows:
        table = pa.Table.from_pylist(rows)
    else:  # an empty file still has its columns
        table = pa.table({name: pa.array([], type=pa.string()) for name, _ in fields or []})
    if writer is None:
        writer = pq.ParquetWriter(str(tmp), table.schema)
    writer.write_table(table.cast(writer.schema) if table.schema != writer.schema else table)
    return writer


def _avro_fields(schema: Any) -> list[tuple[str, str]]:
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return [("", json.dumps(schema, sort_keys=True))]
    return [(f["name"], json.dumps(f["type"], sort_keys=True)) for f in schema.get("fields", [])]


def _schema_diff(a: list[tuple[str, str]], b: list[tuple[str, str]]) -> str:
    da, db = dict(a), dict(b)
    parts = [f"field {n!r} is {db[n]} here, {da[n]} there" for n in da if n in db and da[n] != db[n]]
    parts += [f"field {n!r} is missing" for n in da if n not in db]
    parts += [f"field {n!r} is new" for n in db if n not in da]
    return "; ".join(parts) or "field order differs"


_FORBIDDEN = re.compile(
    r"\b(copy|attach|detach|install|load|pragma|export|import|call|set|reset|create|insert|update|delete|drop|alter)\b"
    r"|\b(read_text|read_blob|glob|getenv|sniff_csv|httpfs)\s*\(",
    re.IGNORECASE,
)
_FILE_ARG = re.compile(r"(read_(?:parquet|csv(?:_auto)?|json(?:_auto)?)\s*\(\s*)'([^']*)'", re.IGNORECASE)


def _check_query(view: str, query: str) -> None:
    import duckdb

    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise FeatureError(f"FeatureView/{view}: spec.source.query does not parse: {exc}") from None
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise FeatureError(f"FeatureView/{view}: spec.source.query must be exactly one SELECT statement")
    bad = _FORBIDDEN.search(re.sub(r"'(?:[^']|'')*'", "''", query))
    if bad:
        raise FeatureError(f"FeatureView/{view}: spec.source.query may not use {bad.group(0).strip()!r}")


def _query_files(query: str, repo: Path) -> Iterator[Path]:
    root = repo.resolve()
    for _, arg in _FILE_ARG.findall(query):
        if "://" in arg or arg.startswith("/") or ".." in arg.split("/"):
            raise FeatureError(f"sql source: {arg!r} must be a repository-relative path")
        for p in sorted(root.glob(arg)) if any(c in arg for c in "*?[") else [root / arg]:
            if not p.exists():
                raise FeatureError(f"sql source: {arg!r} does not exist (looked for {p})")
            yield p


def connect(
    repo: Path, *, memory_limit: str | None = None, temp_dir: Path | None = None, allow: tuple[Path, ...] = ()
) -> Any:
    """A sandboxed DuckDB connection for feature work: UTC, no extensions, and file access only
    under the repository, its feature cache and the `allow`ed folders (a sql source comes from
    a pull request: it must not read /etc or write anywhere)."""
    import duckdb

    con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    con.execute("SET TimeZone = 'UTC'")
    if memory_limit:
        con.execute(f"SET memory_limit = {literal(memory_limit)}")
    folders = [repo.resolve(), *(p.resolve() for p in allow)]
    if temp_dir is not None:
        temp_dir.mkdir(parents=True, exist_ok=True)
        con.execute(f"SET temp_directory = {literal(str(temp_dir))}")
        folders.append(temp_dir.resolve())
    con.execute(f"SET allowed_directories = [{', '.join(literal(str(f) + '/') for f in folders)}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET preserve_insertion_order = false")
    # tracked, not printed: `historical` reports query_progress() on stderr itself
    con.execute("SET enable_progress_bar = true")
    con.execute("SET enable_progress_bar_print = false")
    con.execute("SET lock_configuration = true")
    return con


def describe(con: Any, table: str) -> dict[str, str]:
    rows = con.execute(f"DESCRIBE SELECT * FROM {table}").fetchall()
    return {r[0]: str(r[1]) for r in rows}


def _base(t: str) -> str:
    return re.sub(r"\(.*\)$", "", t).strip().upper()


def check_schema(con: Any, source: Source) -> None:
    """Every declared column exists with a compatible type, in every file; FeatureError otherwise."""
    import duckdb

    view = f"FeatureView/{source.name}"
    if source.columns is not None:
        _check_columns(source.display, source.columns, source)
        return
    targets: list[tuple[str, str]]
    kind = source.view.spec.source.kind
    if kind in ("parquet", "csv", "jsonl"):
        targets = [(str(p), source.table.split("(")[0] + f"([{literal(str(p))}]" + _opts(kind)) for p in source.files]
    elif kind == "avro":
        targets = [(str(source.files[0]), source.table)]  # one schema across the folder is checked on conversion
    else:
        targets = [("sql query", source.table)]
    for where, table in targets:
        try:
            cols = describe(con, table)
        except duckdb.Error as exc:
            raise FeatureError(f"{where}: cannot read ({_first_line(exc)}) ({view})") from None
        _check_columns(where, cols, source)


def _check_columns(where: str, cols: dict[str, str], source: Source) -> None:
    view = f"FeatureView/{source.name}"
    want: list[tuple[str, DataType | None]] = [(source.ts, None)]
    want += list(zip(source.keys, source.key_types, strict=True))
    want += [(f.name, f.type) for f in source.view.spec.features]
    for col, declared in want:
        if col not in cols:
            raise FeatureError(f"{where}: no column {col!r} ({view} declares it; columns: {', '.join(cols)})")
        actual = _base(cols[col])
        if declared is None:
            source.ts_types.add(actual)
            if not actual.startswith(("TIMESTAMP", "DATE")):
                raise FeatureError(
                    f"{where}: column {col!r} is {cols[col]}, not a timestamp ({view} spec.source.timestampField)"
                )
        elif actual not in ACCEPTS[declared]:
            raise FeatureError(f"{where}: column {col!r} is {cols[col]} but {view} declares it {declared.value}")


def _opts(kind: str) -> str:
    return {"parquet": ")", "csv": ", header=true)", "jsonl": ", format='newline_delimited')"}[kind]


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def matches(name: str, patterns: list[str]) -> bool:
    return not patterns or any(fnmatch.fnmatch(name, p) for p in patterns)
