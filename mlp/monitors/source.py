"""Read a model's payload log (local folder or S3 prefix) and cut it into windows.

The serving payload log writes `<root>/<model>/<version>/<unix_ms>-<seq>.parquet` and names a
file with a leading "." while it is open; only closed files are read. Each file is read once
(the cursor remembers which); rows not yet making a whole window wait in `pending`. A file
that is not valid Parquet is reported once and skipped: it never stops the monitor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


@dataclass
class Window:
    table: pa.Table
    start_ms: int
    end_ms: int

    @property
    def rows(self) -> int:
        return int(self.table.num_rows)


class PayloadSource:
    """Closed payload-log files of one model, oldest first, each read once."""

    def __init__(
        self,
        root: str,
        model: str,
        *,
        s3_endpoint_url: str | None = None,
        on_problem: Callable[[str], None] | None = None,
    ) -> None:
        self.root = root
        self.model = model
        self.s3_endpoint_url = s3_endpoint_url
        self.on_problem = on_problem or (lambda _msg: None)
        self.seen: set[str] = set()
        self._s3: Any = None
        if root.startswith("s3://"):
            bucket, _, prefix = root[len("s3://") :].partition("/")
            self.bucket, self.prefix = bucket, "/".join(p for p in (prefix.strip("/"), model) if p) + "/"
        else:
            self.folder = Path(root[len("file://") :] if root.startswith("file://") else root) / model

    def _list(self) -> list[str]:
        if self.root.startswith("s3://"):
            if self._s3 is None:
                import boto3

                self._s3 = boto3.client("s3", endpoint_url=self.s3_endpoint_url)
            keys: list[str] = []
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
                keys.extend(o["Key"] for o in page.get("Contents", []))
            names = [k[len(self.prefix) :] for k in keys]
        else:
            if not self.folder.is_dir():
                return []
            names = [str(p.relative_to(self.folder)) for p in self.folder.glob("*/*.parquet")]
        out = []
        for n in names:
            version, _, base = n.partition("/")
            if "/" in base or version.startswith(("_", ".")) or base.startswith(".") or not base.endswith(".parquet"):
                continue
            out.append(n)
        # names start with the unix ms the file was opened: this is arrival order across versions
        return sorted(out, key=lambda n: (n.split("/", 1)[1], n))

    def _read(self, name: str) -> pa.Table:
        if self.root.startswith("s3://"):
            body = self._s3.get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"].read()
            return pq.ParquetFile(pa.BufferReader(body)).read()
        # ParquetFile, not read_table: no dataset discovery per file (a third of the cost here)
        with pq.ParquetFile(self.folder / name) as f:
            return f.read()

    def read_new(self) -> list[pa.Table]:
        """Tables of files not read before (corrupt ones reported through `on_problem`)."""
        tables = []
        try:
            names = self._list()
        except Exception as exc:  # botocore's errors, an unreachable endpoint: report, retry next check
            self.on_problem(f"cannot list {self.root}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
            return []
        for name in names:
            if name in self.seen:
                continue
            self.seen.add(name)
            try:
                tables.append(self._read(name))
            except Exception as exc:  # corrupt Parquet, a vanished key: skip this file, keep going
                self.on_problem(
                    f"skipped {self.model}/{name}: not a readable Parquet file ({str(exc).splitlines()[0]})"
                )
        self.seen &= set(names)  # forget files rotation deleted
        return tables


def _concat(tables: list[pa.Table]) -> pa.Table | None:
    if not tables:
        return None
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowException, TypeError):
        return pa.concat_tables(tables)


class Windower:
    """Rows in, windows out: by row count, or by time (`duration_ms`) with `min_rows`."""

    def __init__(self, size: int, duration_ms: int | None = None) -> None:
        self.size = size
        self.duration_ms = duration_ms
        self.pending: pa.Table | None = None

    def add(self, tables: list[pa.Table]) -> None:
        merged = _concat(([self.pending] if self.pending is not None else []) + tables)
        if merged is not None and "ts" in merged.column_names:
            merged = merged.sort_by("ts")
        self.pending = merged

    def cut(self, now_ms: int, grace_ms: int = 15_000) -> list[Window]:
        """Every complete window; time windows close once `now` passed their end plus `grace`."""
        t = self.pending
        if t is None or t.num_rows == 0:
            return []
        ts = t.column("ts").cast(pa.int64()).to_numpy() if "ts" in t.column_names else np.zeros(t.num_rows, np.int64)
        out: list[Window] = []
        if self.duration_ms is None:
            n = t.num_rows // self.size
            for i in range(n):
                part = t.slice(i * self.size, self.size)
                pts = ts[i * self.size : (i + 1) * self.size]
                out.append(Window(part, int(pts[0]), int(pts[-1])))
            self.pending = t.slice(n * self.size)
            return out
        d = self.duration_ms
        start = int(ts[0]) // d * d
        offset = 0
        while start + d + grace_ms <= now_ms or (offset < t.num_rows and start + d <= int(ts[-1]) - grace_ms):
            end = int(np.searchsorted(ts, start + d, side="left"))
            out.append(Window(t.slice(offset, end - offset), start, start + d))
            offset = end
            if offset >= t.num_rows:
                break
            start = int(ts[offset]) // d * d
        self.pending = t.slice(offset)
        return out

    def state_table(self) -> pa.Table | None:
        return self.pending


def dump_state(path: Path, source: PayloadSource, windower: Windower) -> None:
    """Persist the cursor: an append-only list of files read (a rename per check costs more than
    the check on some file systems), compacted when it holds many names no longer listed."""
    path.mkdir(parents=True, exist_ok=True)
    log = path / "cursor.log"
    written: set[str] = getattr(source, "_persisted", set())
    new = sorted(source.seen - written)
    if len(written) > 2 * len(source.seen) + 1000:
        tmp = path / ".cursor.log"
        tmp.write_text("".join(n + "\n" for n in sorted(source.seen)))
        tmp.replace(log)
        written = set(source.seen)
    elif new:
        with log.open("a") as fh:
            fh.write("".join(n + "\n" for n in new))
        written |= set(new)
    source._persisted = written  # type: ignore[attr-defined]
    pending = path / "pending.parquet"
    if windower.pending is not None and windower.pending.num_rows:
        pq.write_table(windower.pending, path / ".pending.parquet")
        (path / ".pending.parquet").replace(pending)
    elif pending.exists():
        pending.unlink()


def load_state(path: Path, source: PayloadSource, windower: Windower) -> None:
    log = path / "cursor.log"
    if log.is_file():
        # a torn last line (crash mid-append) names no real file: harmless
        names = {line for line in log.read_text().splitlines() if line}
        source.seen = set(names)
        source._persisted = set(names)  # type: ignore[attr-defined]
    pending = path / "pending.parquet"
    if pending.is_file():
        try:
            windower.pending = pq.read_table(pending)
        except (pa.ArrowException, OSError):
            windower.pending = None
