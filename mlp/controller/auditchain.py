"""The audit log's hash chain: each record carries the hash of the one before it.

A record's hash is SHA-256 over the previous record's hash and the record's stored
columns (id included), canonically encoded. Editing any byte of a record changes its
hash; deleting one breaks the next record's link and leaves a gap in the ids; swapping
two records breaks the link at the first of them. `verify` walks the table in id order
and names the first record where the chain does not hold.

Truncating the newest records cannot be seen from inside the database: `verify`
returns the head hash so it can be kept elsewhere (a SIEM that receives the JSON-lines
export has it) and checked later with `expect_head`.

Rows written before the chain existed (a state folder from an older version) have no
hash; they are reported as unchained and verification starts after them.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

GENESIS = "0" * 64
# The stored columns a record's hash covers, in this order.
COLUMNS = (
    "id",
    "time",
    "environment",
    "action",
    "revision",
    "author",
    "objects",
    "outcome",
    "message",
    "pr",
    "approvers",
    "merge_commit",
)


def record_hash(prev_hash: str, row: sqlite3.Row | dict[str, Any]) -> str:
    payload = json.dumps([prev_hash, *[row[c] for c in COLUMNS]], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def chain_record(conn: sqlite3.Connection, row_id: int) -> None:
    """Link the just-inserted record `row_id` to the one before it (inside the inserting transaction)."""
    prev = conn.execute("SELECT hash FROM audit WHERE id < ? ORDER BY id DESC LIMIT 1", (row_id,)).fetchone()
    prev_hash = (prev[0] if prev is not None else None) or GENESIS
    row = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM audit WHERE id = ?", (row_id,)).fetchone()
    values = dict(zip(COLUMNS, row, strict=True))
    conn.execute(
        "UPDATE audit SET prev_hash = ?, hash = ? WHERE id = ?", (prev_hash, record_hash(prev_hash, values), row_id)
    )


@dataclass
class Verification:
    ok: bool
    records: int = 0
    unchained: int = 0  # rows from before the chain existed
    head: str = GENESIS  # hash of the newest record
    first_bad: int | None = None  # id of the first record where the chain breaks
    problem: str = ""
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.records,
            "unchained": self.unchained,
            "head": self.head,
            "firstBadRecord": self.first_bad,
            "problem": self.problem,
        }


def _rows(conn: sqlite3.Connection) -> Iterator[dict[str, Any]]:
    cursor = conn.execute(f"SELECT {', '.join(COLUMNS)}, prev_hash, hash FROM audit ORDER BY id")
    names = [d[0] for d in cursor.description]
    while batch := cursor.fetchmany(1000):
        for row in batch:
            yield dict(zip(names, row, strict=True))


def verify(conn: sqlite3.Connection, expect_head: str | None = None) -> Verification:
    """Walk the chain in id order; stop at the first record that does not hold."""
    result = Verification(ok=True)
    prev: dict[str, Any] | None = None
    for row in _rows(conn):
        result.records += 1
        if row["hash"] is None and (prev is None or prev["hash"] is None):
            result.unchained += 1
            prev = row
            continue
        rid = row["id"]
        expected_prev = (prev["hash"] if prev is not None else None) or GENESIS
        problem = ""
        if row["hash"] is None:
            problem = f"record {rid}: its hash was removed"
        elif prev is not None and rid != prev["id"] + 1 and row["prev_hash"] != expected_prev:
            missing = f"{prev['id'] + 1}" if rid == prev["id"] + 2 else f"{prev['id'] + 1}..{rid - 1}"
            problem = f"record {rid}: record(s) {missing} before it were deleted (gap in the chain)"
        elif prev is None and rid != 1 and row["prev_hash"] != GENESIS:
            missing = "1" if rid == 2 else f"1..{rid - 1}"
            problem = f"record {rid}: record(s) {missing} before it were deleted (gap in the chain)"
        elif row["prev_hash"] != expected_prev:
            problem = (
                f"record {rid}: does not follow record {prev['id'] if prev else 0} (records reordered, or one replaced)"
            )
        elif record_hash(row["prev_hash"], row) != row["hash"]:
            problem = f"record {rid}: edited after it was written (its content no longer matches its hash)"
        if problem:
            result.ok, result.first_bad, result.problem = False, rid, problem
            return result
        prev = row
        result.head = row["hash"]
    if expect_head is not None and result.head != expect_head:
        result.ok = False
        result.problem = (
            f"the newest record's hash is {result.head[:16]}…, expected {expect_head[:16]}…: "
            "records were removed from the end, or the log was replaced"
        )
    return result


def export_rows(conn: sqlite3.Connection, *, env: str | None = None, since: float | None = None) -> Iterator[str]:
    """One JSON object per line, with the chain fields, oldest first (for a SIEM)."""
    from datetime import UTC, datetime

    for row in _rows(conn):
        if env and row["environment"] != env:
            continue
        if since is not None and row["time"] < since:
            continue
        record = dict(row)
        record["timestamp"] = datetime.fromtimestamp(row["time"], UTC).isoformat(timespec="milliseconds")
        record["objects"] = json.loads(row["objects"] or "[]")
        record["approvers"] = json.loads(row["approvers"]) if row["approvers"] else None
        yield json.dumps(record, sort_keys=True, separators=(",", ":"))


# actions after which the environment serves `revision`
_SERVING_ACTIONS = ("apply", "prune", "self-heal", "rollback", "resumed", "recovered")


def served_at(conn: sqlite3.Connection, env: str, at: float) -> dict[str, Any] | None:
    """What served `env` at time `at`: the revision of the last successful apply before it, and its approval.

    The approval is the `merge` event whose merge commit is that revision (the webhooks write it),
    else the newest merge into that environment before the apply.
    """
    marks = ",".join("?" for _ in _SERVING_ACTIONS)
    applied = conn.execute(
        f"SELECT * FROM audit WHERE environment = ? AND time <= ? AND action IN ({marks}) AND outcome = 'succeeded'"
        " AND revision IS NOT NULL ORDER BY time DESC, id DESC LIMIT 1",
        (env, at, *_SERVING_ACTIONS),
    ).fetchone()
    if applied is None:
        return None
    merge = conn.execute(
        "SELECT * FROM audit WHERE environment = ? AND action = 'merge' AND merge_commit = ? ORDER BY id DESC LIMIT 1",
        (env, applied["revision"]),
    ).fetchone()
    if merge is None:
        merge = conn.execute(
            "SELECT * FROM audit WHERE environment = ? AND action = 'merge' AND time <= ? ORDER BY time DESC LIMIT 1",
            (env, applied["time"]),
        ).fetchone()
    return {
        "environment": env,
        "revision": applied["revision"],
        "appliedAt": applied["time"],
        "appliedBy": applied["author"],
        "applyRecord": applied["id"],
        "objects": json.loads(applied["objects"] or "[]"),
        "pr": merge["pr"] if merge is not None else None,
        "approvers": json.loads(merge["approvers"]) if merge is not None and merge["approvers"] else [],
        "mergeRecord": merge["id"] if merge is not None else None,
        "mergeCommit": merge["merge_commit"] if merge is not None else None,
    }
