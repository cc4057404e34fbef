"""The controller's persistent state: status, audit log, apply intents and sync requests in SQLite.

Everything lives in one SQLite file in the controller's state folder (`state.db`), in
WAL mode so `mlp status` / `mlp audit` read while the controller writes, and other
processes (`mlp sync`, the webhook receiver) can ask for a reconcile by inserting a row.

- `StateStore`: per environment and per object: sync status (Synced / OutOfSync /
  Unknown), health, last synced revision, last error (located diagnostics), and per
  model the served version and traffic split. A restart does not forget it.
- `AuditLog`: append-only events (apply, prune, self-heal, refused, rollback, merge, ...).
- Intents: before the controller writes to a target it records what it is about to
  apply; the event that closes the intent is written in the same transaction as the
  audit row, so a crash in the middle of an apply is resumed on restart, and the audit
  log holds that apply exactly once.
- Sync requests: `request_sync(state_dir, env, reason)` from any process; the running
  controller polls and consumes them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DB_NAME = "state.db"

SYNCED, OUT_OF_SYNC, UNKNOWN = "Synced", "OutOfSync", "Unknown"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS environments (
    env TEXT PRIMARY KEY,
    sync_status TEXT NOT NULL,
    health TEXT NOT NULL,
    revision TEXT,             -- newest revision seen
    synced_revision TEXT,      -- last revision applied successfully (last known good)
    synced_at REAL,
    author TEXT,
    message TEXT,              -- one line: what the last step did or why it stopped
    errors TEXT NOT NULL DEFAULT '[]',  -- JSON list of located diagnostics
    refused_revision TEXT,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS objects (
    env TEXT NOT NULL,
    ref TEXT NOT NULL,
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    sync_status TEXT NOT NULL,
    health TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (env, ref)
);
CREATE TABLE IF NOT EXISTS models (
    env TEXT NOT NULL,
    model TEXT NOT NULL,
    served_version INTEGER,
    traffic TEXT NOT NULL DEFAULT '{}',  -- JSON {version: percent}, declared
    observed TEXT,                       -- JSON {version: percent} the runtime reports, or NULL
    observed_message TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (env, model)
);
CREATE TABLE IF NOT EXISTS inventory (  -- mirror of the inventory stored in the target
    env TEXT NOT NULL,
    ref TEXT NOT NULL,
    PRIMARY KEY (env, ref)
);
CREATE TABLE IF NOT EXISTS intents (
    env TEXT PRIMARY KEY,
    revision TEXT NOT NULL,
    action TEXT NOT NULL,
    objects TEXT NOT NULL,
    started_at REAL NOT NULL,
    pid INTEGER NOT NULL,
    run TEXT NOT NULL DEFAULT ''  -- id of the controller run that wrote it (a PID repeats across containers)
);
CREATE TABLE IF NOT EXISTS sync_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    env TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    environment TEXT NOT NULL,
    action TEXT NOT NULL,
    revision TEXT,
    author TEXT,
    objects TEXT NOT NULL DEFAULT '[]',
    outcome TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    pr TEXT,
    approvers TEXT,
    merge_commit TEXT
);
CREATE INDEX IF NOT EXISTS audit_env_time ON audit (environment, time);
"""


def connect(state_dir: str | Path) -> sqlite3.Connection:
    """Open (and create) the state database; safe to call from any process."""
    path = Path(state_dir)
    path.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path / DB_NAME, timeout=30.0, check_same_thread=False, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.executescript(_SCHEMA)
    # state folders from before observed status: add its columns
    columns = {r[1] for r in conn.execute("PRAGMA table_info(models)")}
    if "observed" not in columns:
        conn.execute("ALTER TABLE models ADD COLUMN observed TEXT")
        conn.execute("ALTER TABLE models ADD COLUMN observed_message TEXT NOT NULL DEFAULT ''")
    return conn


class _Db:
    """One connection shared by the controller's threads, serialized by a lock."""

    def __init__(self, state_dir: str | Path) -> None:
        self.state_dir = Path(state_dir)
        self._conn = connect(state_dir)
        self._lock = threading.RLock()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._conn.execute(sql, params))

    def close(self) -> None:
        with self._lock:
            self._conn.close()


# --- audit ---------------------------------------------------------------------------------


@dataclass
class AuditEvent:
    """One line of the audit log.

    `action`: apply, prune, self-heal, refused, rollback, failed, resumed, merge (webhooks), ...
    `outcome`: succeeded, failed, refused, skipped.
    """

    environment: str
    action: str
    outcome: str
    revision: str | None = None
    author: str | None = None
    objects: list[str] = field(default_factory=list)  # "CREATE InferenceService/ml-prod/iris", ...
    message: str = ""
    time: float = field(default_factory=time.time)
    pr: str | None = None
    approvers: list[str] | None = None
    merge_commit: str | None = None
    id: int | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["time"] = datetime.fromtimestamp(self.time, UTC).isoformat(timespec="milliseconds")
        return data


def _insert_audit(conn: sqlite3.Connection, e: AuditEvent) -> int:
    cur = conn.execute(
        "INSERT INTO audit (time, environment, action, revision, author, objects, outcome, message, pr,"
        " approvers, merge_commit) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (
            e.time,
            e.environment,
            e.action,
            e.revision,
            e.author,
            json.dumps(e.objects),
            e.outcome,
            e.message,
            e.pr,
            json.dumps(e.approvers) if e.approvers is not None else None,
            e.merge_commit,
        ),
    )
    return int(cur.lastrowid or 0)


def _row_to_event(row: sqlite3.Row) -> AuditEvent:
    return AuditEvent(
        id=row["id"],
        time=row["time"],
        environment=row["environment"],
        action=row["action"],
        revision=row["revision"],
        author=row["author"],
        objects=json.loads(row["objects"]),
        outcome=row["outcome"],
        message=row["message"],
        pr=row["pr"],
        approvers=json.loads(row["approvers"]) if row["approvers"] else None,
        merge_commit=row["merge_commit"],
    )


class AuditLog(_Db):
    """Append-only audit log. `append()` is the one call other parts (webhooks, rollouts) need."""

    def append(self, event: AuditEvent) -> int:
        with self.tx() as conn:
            event.id = _insert_audit(conn, event)
        return event.id

    def events(
        self, *, env: str | None = None, since: float | None = None, action: str | None = None, limit: int | None = None
    ) -> list[AuditEvent]:
        sql, params = "SELECT * FROM audit WHERE 1=1", []  # type: tuple[str, list[Any]]
        if env:
            sql += " AND environment = ?"
            params.append(env)
        if since is not None:
            sql += " AND time >= ?"
            params.append(since)
        if action:
            sql += " AND action = ?"
            params.append(action)
        if limit:  # the newest `limit` events, still printed oldest first
            sql = f"SELECT * FROM ({sql} ORDER BY id DESC LIMIT {int(limit)})"
        sql += " ORDER BY id"
        return [_row_to_event(r) for r in self.query(sql, params)]


# --- status --------------------------------------------------------------------------------


@dataclass
class ObjectStatus:
    ref: str
    kind: str
    namespace: str
    name: str
    sync_status: str
    health: str
    message: str = ""


@dataclass
class ModelStatus:
    model: str
    served_version: int | None
    traffic: dict[str, int] = field(default_factory=dict)  # version -> percent, as declared
    observed: dict[str, int] | None = None  # version -> percent, as the runtime reports it
    observed_message: str = ""  # says so when observed differs from declared; conditions; URL

    @property
    def differs(self) -> bool:
        declared = {k: v for k, v in self.traffic.items() if "(shadow)" not in k}
        return bool(self.observed) and declared != self.observed


@dataclass
class EnvStatus:
    env: str
    sync_status: str = UNKNOWN
    health: str = "Unknown"
    revision: str | None = None
    synced_revision: str | None = None
    synced_at: float | None = None
    author: str | None = None
    message: str = ""
    errors: list[str] = field(default_factory=list)
    refused_revision: str | None = None
    updated_at: float = 0.0
    objects: list[ObjectStatus] = field(default_factory=list)
    models: list[ModelStatus] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("synced_at", "updated_at"):
            if data[key]:
                data[key] = datetime.fromtimestamp(data[key], UTC).isoformat(timespec="seconds")
        return data


@dataclass
class Intent:
    env: str
    revision: str
    action: str
    objects: list[str]
    started_at: float
    pid: int
    run: str = ""


class StateStore(_Db):
    """Status per environment, object and model; intents; sync requests."""

    def save(self, status: EnvStatus) -> None:
        """Replace everything known about one environment in one transaction."""
        status.updated_at = time.time()
        with self.tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO environments (env, sync_status, health, revision, synced_revision, synced_at,"
                " author, message, errors, refused_revision, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    status.env,
                    status.sync_status,
                    status.health,
                    status.revision,
                    status.synced_revision,
                    status.synced_at,
                    status.author,
                    status.message,
                    json.dumps(status.errors),
                    status.refused_revision,
                    status.updated_at,
                ),
            )
            conn.execute("DELETE FROM objects WHERE env = ?", (status.env,))
            conn.executemany(
                "INSERT INTO objects (env, ref, kind, namespace, name, sync_status, health, message)"
                " VALUES (?,?,?,?,?,?,?,?)",
                [
                    (status.env, o.ref, o.kind, o.namespace, o.name, o.sync_status, o.health, o.message)
                    for o in status.objects
                ],
            )
            conn.execute("DELETE FROM models WHERE env = ?", (status.env,))
            conn.executemany(
                "INSERT INTO models (env, model, served_version, traffic, observed, observed_message)"
                " VALUES (?,?,?,?,?,?)",
                [
                    (
                        status.env,
                        m.model,
                        m.served_version,
                        json.dumps(m.traffic),
                        json.dumps(m.observed) if m.observed is not None else None,
                        m.observed_message,
                    )
                    for m in status.models
                ],
            )

    def save_inventory(self, env: str, refs: list[str]) -> None:
        """Mirror the inventory the engine recorded in the target (`mlp.engine.inventory`)."""
        with self.tx() as conn:
            conn.execute("DELETE FROM inventory WHERE env = ?", (env,))
            conn.executemany("INSERT INTO inventory (env, ref) VALUES (?,?)", [(env, r) for r in refs])

    def inventory(self, env: str) -> list[str]:
        return [r["ref"] for r in self.query("SELECT ref FROM inventory WHERE env = ? ORDER BY ref", (env,))]

    def touch(self, env: str) -> None:
        """Mark an environment's status as checked now without rewriting it."""
        with self.tx() as conn:
            conn.execute("UPDATE environments SET updated_at = ? WHERE env = ?", (time.time(), env))

    def environments(self) -> list[str]:
        return [r["env"] for r in self.query("SELECT env FROM environments ORDER BY env")]

    def load(self, env: str, *, details: bool = True) -> EnvStatus | None:
        rows = self.query("SELECT * FROM environments WHERE env = ?", (env,))
        if not rows:
            return None
        r = rows[0]
        status = EnvStatus(
            env=r["env"],
            sync_status=r["sync_status"],
            health=r["health"],
            revision=r["revision"],
            synced_revision=r["synced_revision"],
            synced_at=r["synced_at"],
            author=r["author"],
            message=r["message"] or "",
            errors=json.loads(r["errors"]),
            refused_revision=r["refused_revision"],
            updated_at=r["updated_at"],
        )
        if details:
            status.objects = [
                ObjectStatus(
                    o["ref"], o["kind"], o["namespace"], o["name"], o["sync_status"], o["health"], o["message"]
                )
                for o in self.query("SELECT * FROM objects WHERE env = ? ORDER BY kind, namespace, name", (env,))
            ]
            status.models = [
                ModelStatus(
                    m["model"],
                    m["served_version"],
                    json.loads(m["traffic"]),
                    json.loads(m["observed"]) if m["observed"] else None,
                    m["observed_message"] or "",
                )
                for m in self.query("SELECT * FROM models WHERE env = ? ORDER BY model", (env,))
            ]
        return status

    def all(self, *, details: bool = True) -> list[EnvStatus]:
        return [s for e in self.environments() if (s := self.load(e, details=details)) is not None]

    def append_audit(self, event: AuditEvent) -> int:
        with self.tx() as conn:
            event.id = _insert_audit(conn, event)
        return event.id

    # --- intents: write-ahead record of an apply in progress ----------------------------------

    def begin_intent(self, intent: Intent) -> None:
        with self.tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO intents (env, revision, action, objects, started_at, pid, run)"
                " VALUES (?,?,?,?,?,?,?)",
                (
                    intent.env,
                    intent.revision,
                    intent.action,
                    json.dumps(intent.objects),
                    intent.started_at,
                    intent.pid,
                    intent.run,
                ),
            )

    def intent(self, env: str) -> Intent | None:
        rows = self.query("SELECT * FROM intents WHERE env = ?", (env,))
        if not rows:
            return None
        r = rows[0]
        return Intent(
            r["env"], r["revision"], r["action"], json.loads(r["objects"]), r["started_at"], r["pid"], r["run"]
        )

    def intents(self) -> list[Intent]:
        return [i for r in self.query("SELECT env FROM intents") if (i := self.intent(r["env"])) is not None]

    def finish_intent(self, env: str, events: Sequence[AuditEvent]) -> None:
        """Close the intent and append its audit events atomically: an apply is logged exactly once."""
        with self.tx() as conn:
            for event in events:
                event.id = _insert_audit(conn, event)
            conn.execute("DELETE FROM intents WHERE env = ?", (env,))

    # --- sync requests ------------------------------------------------------------------------

    def take_sync_requests(self) -> list[tuple[str, str]]:
        """Consume pending requests from other processes: [(env, reason)]."""
        # Polled every second: a plain read first, so an idle controller never takes the write lock.
        if not self.query("SELECT 1 FROM sync_requests LIMIT 1"):
            return []
        with self.tx() as conn:
            rows = list(conn.execute("SELECT id, env, reason FROM sync_requests ORDER BY id"))
            if rows:
                conn.execute("DELETE FROM sync_requests WHERE id <= ?", (rows[-1]["id"],))
        return [(r["env"], r["reason"]) for r in rows]


def request_sync(state_dir: str | Path, env: str, reason: str = "manual") -> None:
    """Ask the controller that owns `state_dir` to reconcile `env` now (from any process)."""
    conn = connect(state_dir)
    try:
        conn.execute("INSERT INTO sync_requests (env, reason, created_at) VALUES (?,?,?)", (env, reason, time.time()))
    finally:
        conn.close()
