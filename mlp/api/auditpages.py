"""Audit pages for `GET /api/v1/audit`: one indexed read per page, rendered by SQLite, kept per database version.

A page (the newest events matching a query, newest first, up to 1,000) is read in one
read transaction over the `(environment, id)` index and rendered to JSON by SQLite's JSON
functions (no Python object per row). The rendered body and its ETag are kept and served
again, 304s included, for as long as SQLite's `data_version` says that no other connection
committed anything since: an appended event, an edited or a deleted record all make the
next request render the page again from what the database now holds.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections import OrderedDict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

Page = tuple[bytes, str, str | None]  # body, ETag, next cursor

_CACHE_BYTES = 32 << 20
_CACHE_ENTRIES = 256


class AuditPages:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "state.db"
        self._read: sqlite3.Connection | None = None  # renders, in worker threads
        self._read_lock = threading.Lock()
        # the version check runs on the event loop: its own connection, never behind a render
        self._version: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._pages: OrderedDict[tuple[Any, ...], Page] = OrderedDict()
        self._pages_version: int | None = None
        self._bytes = 0

    def _current(self) -> int:
        """The database's version (call with `_lock` held)."""
        if self._version is None:
            self._version = sqlite3.connect(self.path, check_same_thread=False)
        return int(self._version.execute("PRAGMA data_version").fetchone()[0])

    def cached(self, sql: str, params: list[Any], limit: int) -> Page | None:
        """The page rendered from the database as it is now, or None."""
        key = (sql, *params, limit)
        with self._lock:
            version = self._current()
            if version != self._pages_version:
                self._pages.clear()
                self._pages_version, self._bytes = version, 0
                return None
            hit = self._pages.get(key)
            if hit is not None:
                self._pages.move_to_end(key)
            return hit

    def render(self, sql: str, params: list[Any], limit: int) -> Page:
        """Read and render one page (`sql` selects `*` from audit, ordered), then keep it."""
        key = (sql, *params, limit)
        with self._read_lock:
            # requests that missed together wait here for one render: the later ones find it kept
            hit = self.cached(sql, params, limit)
            if hit is not None:
                return hit
            with self._lock:
                version = self._current()  # read before the data: the page is at least this new
            if self._read is None:
                self._read = sqlite3.connect(self.path, check_same_thread=False)
                # newest-first pages per environment walk this index instead of sorting the environment's rows
                self._read.execute("CREATE INDEX IF NOT EXISTS audit_env_id ON audit (environment, id)")
            conn = self._read
            conn.execute("BEGIN")  # one snapshot for the page and its cursor
            try:
                # the id that ends this page and whether another follows: two index lookups
                edge = conn.execute(
                    f"SELECT id FROM ({sql.replace('*', 'id', 1)}) LIMIT 2 OFFSET ?", [*params, limit - 1]
                ).fetchall()
                next_key = str(edge[0][0]) if len(edge) == 2 else None
                try:
                    (items,) = conn.execute(
                        f"SELECT json_group_array({_AUDIT_JSON}) FROM ({sql} LIMIT ?)", [*params, limit]
                    ).fetchone()
                    body = page_body(items.encode(), next_key)
                except sqlite3.Error:  # a row whose stored JSON was damaged: render it in Python, as it is
                    select = sql.replace("SELECT *", f"SELECT {_AUDIT_COLUMNS}", 1) + " LIMIT ?"
                    rows = conn.execute(select, [*params, limit]).fetchall()
                    body = page_body(orjson.dumps([_audit_json(r) for r in rows]), next_key)
            finally:
                conn.execute("COMMIT")
            page = (body, etag_of(body), next_key)
            with self._lock:
                if version == self._pages_version:  # else the database changed meanwhile: not kept
                    self._pages[key] = page
                    self._bytes += len(body)
                    while self._bytes > _CACHE_BYTES or len(self._pages) > _CACHE_ENTRIES:
                        _, (dropped, _, _) = self._pages.popitem(last=False)
                        self._bytes -= len(dropped)
        return page


def etag_of(body: bytes) -> str:
    """A strong ETag: the body's SHA-256 (128 bits of it)."""
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def page_body(items: bytes, next_key: str | None) -> bytes:
    """`{"items": [...], "nextCursor": ...}` around items already serialised as a JSON array."""
    return b'{"items":' + items + b',"nextCursor":' + orjson.dumps(next_key) + b"}"


def iso(t: float | None) -> str | None:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds") if t else None


_AUDIT_COLUMNS = (
    "id, time, environment, action, outcome, revision, author, objects, message, pr, approvers, merge_commit,"
    " hash, prev_hash"
)


_AUDIT_JSON = (
    "json_object('id', id, 'time', strftime('%Y-%m-%dT%H:%M:%f+00:00', time, 'unixepoch'),"
    " 'environment', environment, 'action', action, 'outcome', outcome, 'revision', revision, 'author', author,"
    " 'objects', json(objects), 'message', message, 'pr', pr, 'approvers', json(approvers),"
    " 'mergeCommit', merge_commit, 'hash', hash, 'prevHash', prev_hash)"
)


def _audit_json(r: tuple[Any, ...]) -> dict[str, Any]:
    # objects / approvers are stored as JSON text written by the store: passed through, not re-parsed
    return {
        "id": r[0],
        "time": iso(r[1]) or "",
        "environment": r[2],
        "action": r[3],
        "outcome": r[4],
        "revision": r[5],
        "author": r[6],
        "objects": orjson.Fragment(r[7] or "[]"),
        "message": r[8] or "",
        "pr": r[9],
        "approvers": orjson.Fragment(r[10]) if r[10] else None,
        "mergeCommit": r[11],
        "hash": r[12],
        "prevHash": r[13],
    }
