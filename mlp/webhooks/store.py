"""Delivery log: deduplication and a durable work queue for webhook deliveries (SQLite).

Every accepted delivery is written here before the receiver answers, keyed by the
host's delivery id (GitHub `X-GitHub-Delivery`, GitLab `Idempotency-Key` or
`X-Gitlab-Event-UUID`) and by the SHA-256 of the body, both unique. A redelivery
with the same id, or a captured request replayed under a new id, hits a constraint
and is reported as a duplicate instead of being processed twice. Deliveries stay
`queued` until a worker marks them `done` or `failed`, so a receiver killed with
work in flight picks it up again on start.

A delivery that `failed` (the hosting API was down, say) is not a duplicate: the host's
"Redeliver" (same delivery id) queues it again. Each time a worker starts a delivery its
`attempts` count goes up before any work, so a delivery that kills the process (or is
killed with it) every time is noticed: on start, pending deliveries run fewest attempts
first, and one started `MAX_ATTEMPTS` times without finishing is `quarantined` (finished,
with the reason) instead of being retried at the head of the queue for ever.
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
    body BLOB,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS deliveries_state ON deliveries(state);
"""


MAX_ATTEMPTS = 3


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
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(deliveries)")}
            if "attempts" not in columns:  # a log written before attempts were counted
                self._db.execute("ALTER TABLE deliveries ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0")

    def add(self, delivery_id: str, provider: str, event: str, body: bytes) -> bool:
        """Record a delivery; False when its id or its exact body was seen before.

        A redelivery (same id) of a delivery that failed or was quarantined is queued again."""
        digest = hashlib.sha256(body).hexdigest()
        key = f"{provider}:{delivery_id}"
        with self._lock:
            try:
                retried = self._db.execute(
                    "UPDATE deliveries SET state = 'queued', body = ?, body_sha256 = ?, received_at = ?, attempts = 0,"
                    " finished_at = NULL, error = NULL WHERE id = ? AND state IN ('failed', 'quarantined')",
                    (body, digest, time.time(), key),
                )
            except sqlite3.IntegrityError:
                return False  # that body arrived under another id
            if retried.rowcount:
                return True
            try:
                self._db.execute(
                    "INSERT INTO deliveries (id, provider, event, body_sha256, received_at, state, body)"
                    " VALUES (?, ?, ?, ?, ?, 'queued', ?)",
                    (key, provider, event, digest, time.time(), body),
                )
            except sqlite3.IntegrityError:
                return False
        return True

    def started(self, delivery_id: str, provider: str) -> None:
        """Count an attempt, before any work, so a delivery that never finishes is noticed."""
        with self._lock:
            self._db.execute(
                "UPDATE deliveries SET attempts = attempts + 1 WHERE id = ?", (f"{provider}:{delivery_id}",)
            )

    def finish(self, delivery_id: str, provider: str, error: str | None = None) -> None:
        """Mark a delivery processed; a done one's body is dropped (the id stays for deduplication),
        a failed one's is kept until a redelivery or the dedupe window."""
        with self._lock:
            self._db.execute(
                "UPDATE deliveries SET state = ?, finished_at = ?, error = ?,"
                " body = CASE WHEN ? THEN body ELSE NULL END WHERE id = ?",
                ("failed" if error else "done", time.time(), error, bool(error), f"{provider}:{delivery_id}"),
            )

    def pending(self, max_attempts: int = MAX_ATTEMPTS) -> list[StoredDelivery]:
        """Deliveries accepted but not finished (to resume after a restart), fewest attempts then oldest
        first; those already started `max_attempts` times are quarantined instead."""
        with self._lock:
            self._db.execute(
                "UPDATE deliveries SET state = 'quarantined', finished_at = ?, body = body,"
                " error = 'quarantined: started ' || attempts || ' times without finishing'"
                " WHERE state = 'queued' AND attempts >= ?",
                (time.time(), max_attempts),
            )
            rows = self._db.execute(
                "SELECT id, provider, event, body, received_at FROM deliveries"
                " WHERE state = 'queued' ORDER BY attempts, received_at"
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
