"""Read a model's payload log (local folder or S3 prefix) and cut it into windows.

The serving payload log writes `<root>/<model>/<version>/<unix_ms>-<seq>.parquet` and names a
file with a leading "." while it is open; only closed files are read. Each file is read once
(the cursor remembers which); rows not yet making a whole window wait in `pending`. A file
that is not valid Parquet is reported once and skipped: it never stops the monitor.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
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
        columns: Iterable[str] | None = None,
    ) -> None:
        self.root = root
        self.model = model
        self.s3_endpoint_url = s3_endpoint_url
        self.on_problem = on_problem or (lambda _msg: None)
        # only the columns the monitor uses are decoded (None: all); absent ones are simply not read
        self.columns = list(dict.fromkeys(columns)) if columns is not None else None
        self.seen: set[str] = set()
        # changes to `seen` since `take_changes`: what the next commit of the cursor must write
        self.added: list[str] = []
        self.removed: set[str] = set()
        self._s3: Any = None
        if root.startswith("s3://"):
            bucket, _, prefix = root[len("s3://") :].partition("/")
            self.bucket, self.prefix = bucket, "/".join(p for p in (prefix.strip("/"), model) if p) + "/"
        else:
            self.folder = Path(root[len("file://") :] if root.startswith("file://") else root) / model

    def _list(self) -> list[str]:
        """`<version>/<file>` names under the model's folder or prefix (`read_new` keeps the closed files)."""
        if self.root.startswith("s3://"):
            if self._s3 is None:
                import boto3

                self._s3 = boto3.client("s3", endpoint_url=self.s3_endpoint_url)
            keys: list[str] = []
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
                keys.extend(o["Key"] for o in page.get("Contents", []))
            names = [k[len(self.prefix) :] for k in keys]
        else:
            names = []
            try:
                with os.scandir(self.folder) as entries:
                    versions = [e.name for e in entries if e.is_dir() and not e.name.startswith(("_", "."))]
            except (FileNotFoundError, NotADirectoryError):
                return []
            for v in versions:
                try:
                    names.extend(f"{v}/{n}" for n in os.listdir(self.folder / v) if n.endswith(".parquet"))
                except (FileNotFoundError, NotADirectoryError):  # a version folder removed meanwhile
                    continue
        return names

    def _read(self, name: str) -> pa.Table:
        if self.root.startswith("s3://"):
            body = self._s3.get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"].read()
            f = pq.ParquetFile(pa.BufferReader(body))
        else:
            # ParquetFile, not read_table: no dataset discovery per file (a third of the cost here);
            # no pre-buffering: it coalesces reads for high-latency stores, a local file gains nothing
            f = pq.ParquetFile(self.folder / name, pre_buffer=False)
        # one thread: a payload-log file is small, and handing its few columns to Arrow's pool
        # costs more CPU than it saves (the monitor is a background job, not latency-bound)
        with f:
            if self.columns is None:
                return f.read(use_threads=False)
            present = set(f.schema_arrow.names)
            return f.read(columns=[c for c in self.columns if c in present], use_threads=False)

    def read_new(self) -> list[pa.Table]:
        """Tables of files not read before (corrupt ones reported through `on_problem`)."""
        tables = []
        try:
            names = self._list()
        except Exception as exc:  # botocore's errors, an unreachable endpoint: report, retry next check
            self.on_problem(f"cannot list {self.root}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
            return []
        # only the new names are checked and sorted (the folder holds every retained file); names
        # start with the unix ms the file was opened: this is arrival order across versions
        new = sorted(
            (n for n in names if n not in self.seen and _closed_file(n)), key=lambda n: (n.split("/", 1)[1], n)
        )
        for name in new:
            self.seen.add(name)
            self.added.append(name)
            self.removed.discard(name)
            try:
                tables.append(self._read(name))
            except Exception as exc:  # corrupt Parquet, a vanished key: skip this file, keep going
                self.on_problem(
                    f"skipped {self.model}/{name}: not a readable Parquet file ({str(exc).splitlines()[0]})"
                )
        gone = self.seen.difference(names)  # forget files rotation deleted
        if gone:
            self.seen -= gone
            self.removed |= gone
        return tables

    def take_changes(self) -> tuple[list[str], set[str]]:
        """Names read and names forgotten since the last call (for the cursor's commit)."""
        added, removed = self.added, self.removed  # a name in both was read, then rotated away
        self.added, self.removed = [], set()
        return added, removed


def _closed_file(name: str) -> bool:
    """`<version>/<file>.parquet`, not in progress ("." prefix), not a side folder ("_feedback")."""
    version, _, base = name.partition("/")
    return not ("/" in base or version.startswith(("_", ".")) or base.startswith(".") or not base.endswith(".parquet"))


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
        if not tables:
            return
        parts = ([self.pending] if self.pending is not None and self.pending.num_rows else []) + tables
        merged = parts[0] if len(parts) == 1 else _concat(parts)
        if merged is not None and "ts" in merged.schema.names:
            ts = merged.column("ts").cast(pa.int64()).to_numpy(zero_copy_only=False)
            if ts.size > 1 and bool((ts[1:] < ts[:-1]).any()):  # files overlap in time (several versions)
                merged = merged.sort_by("ts")
        self.pending = merged

    def cut(self, now_ms: int, grace_ms: int = 15_000) -> list[Window]:
        """Every complete window; time windows close once `now` passed their end plus `grace`."""
        t = self.pending
        if t is None or t.num_rows == 0:
            return []
        ts = t.column("ts").cast(pa.int64()).to_numpy() if "ts" in t.schema.names else np.zeros(t.num_rows, np.int64)
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
