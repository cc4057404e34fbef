"""A monitor's state folder as one SQLite database (`state.db`): everything a check changes, in one commit.

A check reads new payload-log files, tests the windows they complete and keeps the rows left
over. What it changes (the files read, the left-over rows, the window reports, the last tested
window for the HTML report, the active alerts, the window counter) is written in a single
transaction at the end of the check. A monitor killed at any point therefore restarts from the
last committed check: no window is skipped and none is counted twice (an alert whose delivery
happened just before the kill may be delivered again: at least once, as Alertmanager expects).

WAL with `synchronous=NORMAL`: a commit is an append to the write-ahead log, durable against a
killed process (not against power loss, where the last commits may roll back, still atomically).
Row tables travel as Arrow IPC streams: a memory copy, unlike a Parquet encode.

The last tested window (only the HTML report's histograms read it) is the one large thing a check
writes: pushed through the database it was copied, checksummed and checkpointed several times
over, which cost more than everything else a check persists. It is overwritten in place in a side
file (`last-window.arrow`) before the commit, and the commit records its window index, size and
CRC-32: a reader that finds the file torn, half rewritten or ahead of the database gets "no last
window" instead of mixed rows.
"""

from __future__ import annotations

import json
import os
import sqlite3
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

DB = "state.db"
LAST_WINDOW = "last-window.arrow"


def _to_ipc(table: pa.Table | None) -> pa.Buffer | None:
    """The table as an Arrow IPC stream (a buffer SQLite and `os.write` take without a copy)."""
    if table is None or table.num_rows == 0:
        return None
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _from_ipc(blob: bytes | None) -> pa.Table | None:
    if blob is None:
        return None
    try:
        return pa.ipc.open_stream(blob).read_all()
    except pa.ArrowException:
        return None


def _overwrite(path: Path, data: pa.Buffer) -> None:
    """Rewrite a file in place: no new file, no rename, no page-cache churn from a truncate to 0."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.ftruncate(fd, data.size)
    finally:
        os.close(fd)


@dataclass
class Saved:
    """What the last committed check left."""

    files: set[str] = field(default_factory=set)
    pending: pa.Table | None = None
    index: int = 0
    alerts: dict[str, Any] = field(default_factory=dict)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


class MonitorStore:
    """The writer: one per running monitor (the runner's thread)."""

    def __init__(self, state_dir: Path, keep_reports: int) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.last_window_path = state_dir / LAST_WINDOW
        self.keep_reports = keep_reports
        self.conn = _connect(state_dir / DB)
        self.conn.executescript(
            """
            CREATE TABLE IF NOT EXISTS files (name TEXT PRIMARY KEY) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS reports (idx INTEGER PRIMARY KEY, body TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value BLOB);
            """
        )

    def load(self) -> Saved:
        c = self.conn
        state = dict(c.execute("SELECT key, value FROM state").fetchall())
        return Saved(
            files={r[0] for r in c.execute("SELECT name FROM files")},
            pending=_from_ipc(state.get("pending")),
            index=int(state.get("index") or 0),
            alerts=json.loads(state.get("alerts") or "{}"),
        )

    def commit(
        self,
        *,
        added: Iterable[str],
        removed: Iterable[str],
        pending: pa.Table | None,
        index: int,
        reports: list[tuple[int, str]],
        last_window: tuple[int, pa.Table] | None,
        alerts: dict[str, Any] | None,
    ) -> None:
        """One check's changes, all or nothing. `last_window` (index, rows) / `alerts` None: unchanged."""
        values: list[tuple[str, Any]] = [("pending", _to_ipc(pending)), ("index", index)]
        if last_window is not None:
            data = _to_ipc(last_window[1])
            if data is not None:
                _overwrite(self.last_window_path, data)
                meta = {"index": last_window[0], "size": data.size, "crc32": zlib.crc32(data)}
                values.append(("last_window", json.dumps(meta)))
        if alerts is not None:
            values.append(("alerts", json.dumps(alerts, sort_keys=True)))
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            c.executemany("INSERT OR IGNORE INTO files VALUES (?)", ((n,) for n in added))
            c.executemany("DELETE FROM files WHERE name = ?", ((n,) for n in removed))
            c.executemany("INSERT OR REPLACE INTO reports VALUES (?, ?)", reports)
            if reports:
                c.execute("DELETE FROM reports WHERE idx <= ?", (index - self.keep_reports,))
            c.executemany("INSERT OR REPLACE INTO state VALUES (?, ?)", values)
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


def _read_only(state_dir: Path) -> sqlite3.Connection | None:
    path = state_dir / DB
    if not path.is_file():
        return None
    try:
        conn = _connect(path)
        conn.execute("SELECT 1 FROM reports LIMIT 1")
    except sqlite3.Error:
        return None
    return conn


def read_reports(state_dir: Path, last: int) -> list[dict[str, Any]]:
    """The last `last` window reports, oldest first (for `mlp monitor report`, another process)."""
    conn = _read_only(state_dir)
    if conn is None:
        return []
    try:
        rows = conn.execute("SELECT body FROM reports ORDER BY idx DESC LIMIT ?", (last,)).fetchall()
    finally:
        conn.close()
    reports = []
    for (body,) in reversed(rows):
        try:
            reports.append(json.loads(body))
        except (TypeError, ValueError):  # a damaged row is skipped by every reader, not fatal to it
            continue
    return reports


def read_last_window(state_dir: Path) -> pa.Table | None:
    """The last tested window's watched columns, or None (none yet, or the file does not match)."""
    conn = _read_only(state_dir)
    if conn is None:
        return None
    try:
        for _attempt in range(3):  # a running monitor may be rewriting the file right now
            row = conn.execute("SELECT value FROM state WHERE key = 'last_window'").fetchone()
            try:
                meta = json.loads(row[0]) if row else None
                data = (state_dir / LAST_WINDOW).read_bytes() if meta else None
            except (ValueError, TypeError, OSError):
                return None
            if meta is None or data is None:
                return None
            if len(data) == meta.get("size") and zlib.crc32(data) == meta.get("crc32"):
                return _from_ipc(data)
    finally:
        conn.close()
    return None
