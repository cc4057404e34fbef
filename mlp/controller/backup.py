"""Backup and restore of the state folder: every SQLite database in it, as one JSON document.

Git is the source of truth for specs; the state folder is not: it holds status, rollouts,
the audit chain, webhook deliveries, the inventory mirror and apply intents. `export_state`
takes each database's consistent snapshot with SQLite's online backup API (safe while the
controller writes, in WAL mode) and writes tables as schema plus rows; `import_state`
rebuilds the databases in an empty state folder, each written beside its final name and
renamed into place only when complete, so an interrupted restore leaves nothing half-made.

The document carries a sha256 of its payload: an edited or truncated backup is refused
before anything is written. An apply intent that was open at export is restored too, so a
controller started on the restored folder resumes that apply instead of repeating it.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

FORMAT = "mlp-state/v1"


class BackupError(Exception):
    """A backup cannot be written or restored; the message is one line."""


def databases(state_dir: Path) -> list[Path]:
    """The SQLite databases of a state folder (relative paths), caches and Git clones aside."""
    found = []
    for path in sorted(state_dir.rglob("*.db")):
        rel = path.relative_to(state_dir)
        if rel.parts[0] in ("git-cache", "cache", "worktrees"):
            continue
        found.append(rel)
    return found


def _encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$b64": base64.b64encode(value).decode()}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"$b64"}:
        return base64.b64decode(value["$b64"])
    return value


def _snapshot(path: Path) -> dict[str, Any]:
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
    memory = sqlite3.connect(":memory:")
    try:
        source.backup(memory)  # one consistent snapshot, whatever writers do meanwhile
    finally:
        source.close()
    try:
        schema = memory.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' "
            "ORDER BY type DESC, name"
        ).fetchall()
        tables: dict[str, Any] = {}
        indexes: list[str] = []
        for kind, name, sql in schema:
            if kind == "table":
                cursor = memory.execute(f'SELECT * FROM "{name}"')
                columns = [c[0] for c in cursor.description]
                rows = [[_encode(v) for v in row] for row in cursor]
                tables[name] = {"sql": sql, "columns": columns, "rows": rows}
            elif kind in ("index", "trigger", "view"):
                indexes.append(sql)
        return {"tables": tables, "other": indexes}
    finally:
        memory.close()


def export_state(state_dir: Path, out: Path, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write a backup of every database in `state_dir` to `out` (gzip when it ends in .gz); returns a summary."""
    if not state_dir.is_dir():
        raise BackupError(f"{state_dir}: no such state folder")
    payload: dict[str, Any] = {}
    for rel in databases(state_dir):
        if progress:
            progress(f"snapshot {rel}")
        try:
            payload[rel.as_posix()] = _snapshot(state_dir / rel)
        except sqlite3.Error as exc:
            raise BackupError(f"{state_dir / rel}: {exc}") from None
    if not payload:
        raise BackupError(f"{state_dir}: no state databases to export")
    body = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    doc = {
        "format": FORMAT,
        "createdAt": time.time(),
        "sha256": hashlib.sha256(body.encode()).hexdigest(),
        "databases": payload,
    }
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    if out.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    tmp = out.with_name(f".{out.name}.partial")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BackupError(f"{out}: cannot write: {exc.strerror or exc}") from None
    return _summary(payload)


def _summary(payload: dict[str, Any]) -> dict[str, Any]:
    return {db: {name: len(t["rows"]) for name, t in d["tables"].items()} for db, d in payload.items()}


def read_backup(path: Path) -> dict[str, Any]:
    """Load and check a backup document; raise BackupError naming what is wrong."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BackupError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        doc = json.loads(raw)
    except (OSError, EOFError, ValueError) as exc:
        raise BackupError(f"{path}: not an mlp state backup ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BackupError(f"{path}: not an mlp state backup (format {FORMAT} expected)")
    payload = doc.get("databases")
    if not isinstance(payload, dict):
        raise BackupError(f"{path}: not an mlp state backup (no databases)")
    body = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    if hashlib.sha256(body.encode()).hexdigest() != doc.get("sha256"):
        raise BackupError(f"{path}: the backup's checksum does not match its content (edited or truncated)")
    for rel in payload:
        parts = Path(rel).parts
        if Path(rel).is_absolute() or ".." in parts or not rel.endswith(".db"):
            raise BackupError(f"{path}: database path {rel!r} escapes the state folder")
    return dict(doc)


def import_state(
    path: Path,
    state_dir: Path,
    *,
    force: bool = False,
    verify: Callable[[Path], None] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Restore a backup into `state_dir`; refuses a folder that already holds state unless `force`.

    `verify(db_path)` runs on each restored database before it is moved into place (the
    audit chain check), and may raise BackupError to stop the restore.
    """
    doc = read_backup(path)
    payload: dict[str, Any] = doc["databases"]
    existing = [rel for rel in payload if (state_dir / rel).exists()]
    if existing and not force:
        raise BackupError(f"{state_dir} already holds {', '.join(existing)}: restore into an empty folder, or --force")
    staged: list[tuple[Path, Path]] = []
    tmp: Path | None = None
    try:
        for rel, db in payload.items():
            final = state_dir / rel
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.with_name(f".{final.name}.restore")
            tmp.unlink(missing_ok=True)
            if progress:
                progress(f"restore {rel}")
            conn = sqlite3.connect(tmp)
            try:
                with conn:
                    for name, table in db["tables"].items():
                        conn.execute(table["sql"])
                        if table["rows"]:
                            marks = ",".join("?" for _ in table["columns"])
                            cols = ",".join(f'"{c}"' for c in table["columns"])
                            conn.executemany(
                                f'INSERT INTO "{name}" ({cols}) VALUES ({marks})',
                                ([_decode(v) for v in row] for row in table["rows"]),
                            )
                    for sql in db["other"]:
                        conn.execute(sql)
            finally:
                conn.close()
            if verify is not None:
                verify(tmp)
            staged.append((tmp, final))
        for tmp, final in staged:
            for suffix in ("-wal", "-shm"):
                Path(str(final) + suffix).unlink(missing_ok=True)
            os.replace(tmp, final)
    except sqlite3.Error as exc:
        raise BackupError(f"{path}: cannot restore: {exc}") from None
    finally:
        for leftover in [t for t, _ in staged] + ([tmp] if tmp is not None else []):
            leftover.unlink(missing_ok=True)
    return _summary(payload)
