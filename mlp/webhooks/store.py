"""Delivery log: deduplication and a durable work queue for webhook deliveries (SQLite).

Every accepted delivery is written here before the receiver answers, keyed by the
host's delivery id (GitHub `X-GitHub-Delivery`, GitLab `Idempotency-Key` or
`X-Gitlab-Event-UUID`) and by the SHA-256 of the body, both unique. A redelivery
with the same id, or a captured request replayed under a new id, hits a constraint
and is reported as a duplicate instead of being processed twice. Deliveries stay
`queued` until a worker marks them `done` or `failed`, so a receiver killed with
work in flight picks it up again on start.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    event TEXT NOT NULL,
    body_sha256 TEXT NOT NULL UNIQUE,
    received_at REAL NOT NULL,
    state TEXT NOT NULL,
    finished_at REAL,
    error TEXT,
    body BLOB
);
CREATE INDEX IF NOT EXISTS deliveries_state ON deliveries(state);
"""


@dataclass(frozen=True)
class StoredDelivery:
    id: str
    provider: str
    event: str
    body: bytes
    received_at: float


class DeliveryStore:
    """Thread-safe SQLite log of deliveries; `path=None` keeps it in memory (tests, one-shot use)."""

    def __init__(self, path: str | Path | None = None) -> None:
        target = ":memory:" if path is None else str(path)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            if path is not None:
                self._db.execute("PRAGMA journal_mode=WAL")
                # NORMAL in WAL mode is durable against process crashes, which is what a
                # receiver needs; it keeps each insert well under a millisecond.
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    def add(self, delivery_id: str, provider: str, event: str, body: bytes) -> bool:
        """Record a delivery; False when its id or its exact body was seen before."""
        digest = hashlib.sha256(body).hexdigest()
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO deliveries (id, provider, event, body_sha256, received_at, state, body)"
                    " VALUES (?, ?, ?, ?, ?, 'queued', ?)",
                    (f"{provider}:{delivery_id}", provider, event, digest, time.time(), body),
                )
            except sqlite3.IntegrityError:
                return False
        return True

    def finish(self, delivery_id: str, provider: str, error: str | None = None) -> None:
        """Mark a delivery processed; its body is dropped, the id stays for deduplication."""
        with self._lock:
            self._db.execute(
                "UPDATE deliveries SET state = ?, finished_at = ?, error = ?, body = NULL WHERE id = ?",
                ("failed" if error else "done", time.time(), error, f"{provider}:{delivery_id}"),
            )

    def pending(self) -> list[StoredDelivery]:
        """Deliveries accepted but not finished (to resume after a restart), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, provider, event, body, received_at FROM deliveries"
                " WHERE state = 'queued' ORDER BY received_at"
            ).fetchall()
        return [StoredDelivery(r[0].split(":", 1)[1], r[1], r[2], r[3] or b"", r[4]) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state").fetchall()
        return {state: n for state, n in rows}

    def prune(self, older_than_seconds: float) -> int:
        """Forget finished deliveries older than the window (redeliveries come within days)."""
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM deliveries WHERE state != 'queued' AND received_at < ?",
                (time.time() - older_than_seconds,),
            )
        return cur.rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()
