"""Request ids and feedback: outcomes that arrive after an answer (the contract in FEEDBACK_CONTRACT.md).

`RequestLedger` remembers which model version answered each recent request id (bounded:
the oldest ids expire first, and an id older than `ttl_seconds` has expired). `FeedbackStore`
accepts outcomes only for ids in the ledger, all or nothing, writes them as Parquet beside
the payload log and keeps running sums per version that canary analysis and A/B reports
read without touching the files:

    <payload_log_dir>/<model>/_feedback/<unix_ms>-<seq>.parquet   (".<name>" while being written)

columns `ts` (timestamp ms UTC), `request_id`, `version` (strings), `outcome` (float64).
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FEEDBACK_DIR = "_feedback"
MAX_BATCH = 10_000


class FeedbackError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class VersionOutcomes:
    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0


class RequestLedger:
    """request id -> (model, version, time answered); bounded and expiring."""

    def __init__(self, max_ids: int = 200_000, ttl_seconds: float = 7 * 86400) -> None:
        self.max_ids = max_ids
        self.ttl = ttl_seconds
        self._ids: collections.OrderedDict[str, tuple[str, str, float]] = collections.OrderedDict()

    def add(self, request_id: str, model: str, version: str) -> None:
        # called from the event loop only; OrderedDict ops are atomic enough under the GIL here
        ids = self._ids
        ids[request_id] = (model, version, time.time())
        if len(ids) > self.max_ids:
            ids.popitem(last=False)

    def get(self, request_id: str) -> tuple[str, str] | None:
        hit = self._ids.get(request_id)
        if hit is None or time.time() - hit[2] > self.ttl:
            return None
        return hit[0], hit[1]


class FeedbackStore:
    def __init__(self, log_dir: str | Path, ledger: RequestLedger | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.ledger = ledger or RequestLedger()
        self.outcomes: dict[tuple[str, str], VersionOutcomes] = {}
        self._seq = itertools.count()
        self._lock = threading.Lock()

    def record(self, model: str, items: Sequence[Any]) -> int:
        """Validate every item, then store all of them; raise FeedbackError and store nothing otherwise."""
        if not items:
            raise FeedbackError("no feedback given")
        if len(items) > MAX_BATCH:
            raise FeedbackError(f"at most {MAX_BATCH} feedback items per request", 413)
        rows: list[tuple[str, str, float]] = []
        for i, item in enumerate(items):
            where = f"feedback[{i}]" if len(items) > 1 else "feedback"
            if not isinstance(item, dict) or set(item) - {"id", "outcome"}:
                raise FeedbackError(f'{where}: expected {{"id": "...", "outcome": number}}')
            rid, outcome = item.get("id"), item.get("outcome")
            if not isinstance(rid, str) or not rid or len(rid) > 256:
                raise FeedbackError(f"{where}.id: a request id string is required")
            if isinstance(outcome, bool) or (
                isinstance(outcome, int | float) and outcome == outcome and abs(outcome) != float("inf")
            ):
                value = float(outcome)
            else:
                raise FeedbackError(f"{where}.outcome: a finite number or a boolean is required")
            hit = self.ledger.get(rid)
            if hit is None or hit[0] != model:
                raise FeedbackError(f"{where}.id: unknown or expired request id {rid!r} for model {model!r}", 404)
            rows.append((rid, hit[1], value))
        self._write(model, rows)
        with self._lock:
            for _, version, value in rows:
                acc = self.outcomes.setdefault((model, version), VersionOutcomes())
                acc.count += 1
                acc.total += value
                acc.total_sq += value * value
        return len(rows)

    def _write(self, model: str, rows: list[tuple[str, str, float]]) -> None:
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        folder = self.log_dir / model / FEEDBACK_DIR
        folder.mkdir(parents=True, exist_ok=True)
        now = int(time.time() * 1000)
        table = pa.table(
            {
                "ts": pa.array(np.full(len(rows), now, dtype="datetime64[ms]")),
                "request_id": pa.array([r[0] for r in rows], pa.string()),
                "version": pa.array([r[1] for r in rows], pa.string()),
                "outcome": pa.array([r[2] for r in rows], pa.float64()),
            }
        )
        name = f"{now}-{next(self._seq):06d}.parquet"
        tmp = folder / f".{name}"
        pq.write_table(table, tmp)
        tmp.rename(folder / name)


def read_feedback(log_dir: Path, model: str) -> Any:
    """Every closed feedback file of `model` as one pyarrow Table (empty, same columns, when none)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [("ts", pa.timestamp("ms")), ("request_id", pa.string()), ("version", pa.string()), ("outcome", pa.float64())]
    )
    folder = Path(log_dir) / model / FEEDBACK_DIR
    files = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith(".")) if folder.is_dir() else []
    if not files:
        return schema.empty_table()
    return pa.concat_tables([pq.read_table(f).cast(schema) for f in files])
