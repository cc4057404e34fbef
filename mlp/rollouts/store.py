"""Rollout state in the state database (`<state>/state.db`, tables `rollouts` and `rollout_history`).

Every change is read-modify-write inside one `BEGIN IMMEDIATE` transaction, so the loop
that drives rollouts and `mlp rollout pause|resume|abort|promote` (another process) never
overwrite each other; the audit event of a transition is written in the same transaction.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from mlp.controller.store import AuditEvent, _Db, _insert_audit
from mlp.rollouts.machine import TERMINAL, Rollout, Transition

Change = Callable[[Rollout], tuple[Rollout, Transition | None]]


class RolloutStore(_Db):
    def __init__(self, state_dir: str | Path) -> None:
        super().__init__(state_dir)

    def get(self, env: str, model: str) -> Rollout | None:
        rows = self.query("SELECT state FROM rollouts WHERE env = ? AND model = ?", (env, model))
        return Rollout.from_json(json.loads(rows[0]["state"])) if rows else None

    def all(self, env: str | None = None) -> list[Rollout]:
        sql, params = "SELECT state FROM rollouts", ()  # type: tuple[str, tuple[str, ...]]
        if env is not None:
            sql, params = sql + " WHERE env = ?", (env,)
        return [Rollout.from_json(json.loads(r["state"])) for r in self.query(sql + " ORDER BY env, model", params)]

    def ended(self, env: str, model: str, key: str) -> Rollout | None:
        """A rollout of this very declaration that already ended (promoted or rolled back)."""
        rows = self.query(
            "SELECT state FROM rollout_history WHERE env = ? AND model = ? AND key = ?", (env, model, key)
        )
        return Rollout.from_json(json.loads(rows[0]["state"])) if rows else None

    def update(self, env: str, model: str, change: Change, *, create: Rollout | None = None) -> Rollout | None:
        """Apply `change` to the stored rollout (or to `create` when none is stored) atomically."""
        with self.tx() as conn:
            row = conn.execute("SELECT state FROM rollouts WHERE env = ? AND model = ?", (env, model)).fetchone()
            current = Rollout.from_json(json.loads(row["state"])) if row else create
            if current is None:
                return None
            new, transition = change(current)
            if row is None or new != current:
                _write(conn, new)
            if transition is not None:
                _audit(conn, new, transition)
            return new

    def replace(self, rollout: Rollout, transition: Transition | None = None) -> None:
        with self.tx() as conn:
            _write(conn, rollout)
            if transition is not None:
                _audit(conn, rollout, transition)

    def remove(self, env: str, model: str) -> None:
        with self.tx() as conn:
            conn.execute("DELETE FROM rollouts WHERE env = ? AND model = ?", (env, model))


def _write(conn: sqlite3.Connection, r: Rollout) -> None:
    r.updated_at = time.time()
    state = json.dumps(r.to_json(), sort_keys=True)
    conn.execute(
        "INSERT INTO rollouts (env, model, key, phase, state, updated_at) VALUES (?,?,?,?,?,?)"
        " ON CONFLICT (env, model) DO UPDATE SET key=excluded.key, phase=excluded.phase, state=excluded.state,"
        " updated_at=excluded.updated_at",
        (r.env, r.model, r.key, r.phase, state, r.updated_at),
    )
    if r.phase in TERMINAL:
        conn.execute(
            "INSERT OR REPLACE INTO rollout_history (env, model, key, phase, state) VALUES (?,?,?,?,?)",
            (r.env, r.model, r.key, r.phase, state),
        )


def _audit(conn: sqlite3.Connection, r: Rollout, t: Transition) -> None:
    _insert_audit(
        conn,
        AuditEvent(
            environment=r.env,
            action="rollout",
            outcome="failed" if t.after == "RolledBack" else "succeeded",
            revision=r.revision,
            objects=[f"{t.before} -> {t.after} ModelDeployment/{r.model} canary v{r.canary}"],
            message=t.message,
        ),
    )
