"""The tamper-evident audit log: `mlp audit verify` names the first edited, deleted or reordered record."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mlp.controller.store import AuditEvent, AuditLog, StateStore, connect


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlp.cli.main", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    log = AuditLog(tmp_path)
    for i in range(1, 11):
        log.append(AuditEvent("prod", "apply", "succeeded", revision=f"{i:040x}", author="ctl", time=1000.0 + i,
                              objects=[f"UPDATE InferenceService/ml-prod/m{i}"], message=f"event {i}"))  # fmt: skip
    log.close()
    return tmp_path


def _db(state: Path) -> sqlite3.Connection:
    return sqlite3.connect(state / "state.db", isolation_level=None)


def test_an_intact_chain_verifies_and_prints_its_head(state: Path) -> None:
    r = _run("audit", "verify", "--state-dir", str(state))
    assert r.returncode == 0, r.stderr
    assert "10 records, chain intact" in r.stdout
    head = r.stdout.strip().split()[-1]
    assert _run("audit", "verify", "--state-dir", str(state), "--expect-head", head).returncode == 0


def test_editing_one_byte_of_a_record_names_that_record(state: Path) -> None:
    with _db(state) as db:
        (message,) = db.execute("SELECT message FROM audit WHERE id = 6").fetchone()
        db.execute("UPDATE audit SET message = ? WHERE id = 6", (message[:-1] + "X",))
    r = _run("audit", "verify", "--state-dir", str(state))
    assert r.returncode == 1
    assert "record 6: edited" in r.stderr
    out = json.loads(_run("audit", "verify", "--state-dir", str(state), "-o", "json").stdout)
    assert out["firstBadRecord"] == 6 and out["ok"] is False


def test_editing_a_timestamp_or_the_approvers_is_seen_too(state: Path) -> None:
    with _db(state) as db:
        db.execute("UPDATE audit SET time = time + 0.001 WHERE id = 3")
    assert "record 3: edited" in _run("audit", "verify", "--state-dir", str(state)).stderr


def test_deleting_a_record_names_the_gap(state: Path) -> None:
    with _db(state) as db:
        db.execute("DELETE FROM audit WHERE id = 4")
    r = _run("audit", "verify", "--state-dir", str(state))
    assert r.returncode == 1
    assert "record 5: record(s) 4 before it were deleted" in r.stderr


def test_deleting_the_first_record_names_the_gap(state: Path) -> None:
    with _db(state) as db:
        db.execute("DELETE FROM audit WHERE id IN (1, 2)")
    assert (
        "record 3: record(s) 1..2 before it were deleted" in _run("audit", "verify", "--state-dir", str(state)).stderr
    )


def test_reordering_two_records_names_the_first_of_them(state: Path) -> None:
    columns = "time, environment, action, revision, author, objects, outcome, message, pr, approvers, merge_commit, prev_hash, hash"
    with _db(state) as db:
        a = db.execute(f"SELECT {columns} FROM audit WHERE id = 7").fetchone()
        b = db.execute(f"SELECT {columns} FROM audit WHERE id = 8").fetchone()
        sets = ", ".join(f"{c.strip()} = ?" for c in columns.split(","))
        db.execute(f"UPDATE audit SET {sets} WHERE id = 7", b)
        db.execute(f"UPDATE audit SET {sets} WHERE id = 8", a)
    r = _run("audit", "verify", "--state-dir", str(state))
    assert r.returncode == 1 and "record 7: does not follow record 6" in r.stderr


def test_removing_the_newest_records_is_caught_against_a_kept_head(state: Path) -> None:
    head = _run("audit", "verify", "--state-dir", str(state)).stdout.strip().split()[-1]
    with _db(state) as db:
        db.execute("DELETE FROM audit WHERE id = 10")
    assert _run("audit", "verify", "--state-dir", str(state)).returncode == 0  # invisible from inside
    r = _run("audit", "verify", "--state-dir", str(state), "--expect-head", head)
    assert r.returncode == 1 and "removed from the end" in r.stderr


def test_every_writer_chains_controller_transactions_included(tmp_path: Path) -> None:
    from mlp.controller.auditchain import verify
    from mlp.controller.store import Intent

    store = StateStore(tmp_path)
    store.append_audit(AuditEvent("dev", "refused", "refused", message="bad"))
    store.begin_intent(Intent("dev", "r1", "apply", ["CREATE a"], 1.0, 1))
    store.finish_intent("dev", [AuditEvent("dev", "apply", "succeeded"), AuditEvent("dev", "prune", "succeeded")])
    AuditLog(tmp_path).append(AuditEvent("dev", "merge", "succeeded", pr="github:a/b#1", approvers=["alice"]))
    result = verify(connect(tmp_path))
    assert result.ok and result.records == 4 and result.unchained == 0


def test_a_state_folder_from_before_the_chain_is_migrated(tmp_path: Path) -> None:
    from mlp.controller.auditchain import verify

    db = sqlite3.connect(tmp_path / "state.db")
    db.execute(
        "CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, environment TEXT NOT NULL,"
        " action TEXT NOT NULL, revision TEXT, author TEXT, objects TEXT NOT NULL DEFAULT '[]', outcome TEXT NOT NULL,"
        " message TEXT NOT NULL DEFAULT '', pr TEXT, approvers TEXT, merge_commit TEXT)"
    )
    db.execute("INSERT INTO audit (time, environment, action, outcome) VALUES (1, 'dev', 'apply', 'succeeded')")
    db.commit()
    db.close()
    AuditLog(tmp_path).append(AuditEvent("dev", "apply", "succeeded"))
    result = verify(connect(tmp_path))
    assert result.ok and result.unchained == 1 and result.records == 2


def test_export_is_json_lines_with_the_chain(state: Path, tmp_path: Path) -> None:
    out = tmp_path / "audit.jsonl"
    assert _run("audit", "export", "--state-dir", str(state), "--out", str(out)).returncode == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in lines] == list(range(1, 11))
    assert all(lines[i]["prev_hash"] == lines[i - 1]["hash"] for i in range(1, 10))
    assert lines[0]["objects"] == ["UPDATE InferenceService/ml-prod/m1"] and lines[0]["timestamp"].endswith("+00:00")


def test_audit_at_answers_what_served_when_and_who_approved(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    log.append(AuditEvent("prod", "merge", "succeeded", time=100.0, pr="github:acme/p#7", approvers=["alice", "bob"],
                          merge_commit="a" * 40))  # fmt: skip
    log.append(AuditEvent("prod", "apply", "succeeded", time=110.0, revision="a" * 40, objects=["UPDATE x/y/iris"]))
    log.append(AuditEvent("prod", "apply", "succeeded", time=200.0, revision="b" * 40))
    log.close()
    r = _run("audit", "at", "prod", "--time", "1970-01-01T00:02:30Z", "--state-dir", str(tmp_path), "-o", "json")
    assert r.returncode == 0, r.stderr
    served = json.loads(r.stdout)["served"]
    assert served["revision"] == "a" * 40
    assert served["pr"] == "github:acme/p#7" and served["approvers"] == ["alice", "bob"]
    text = _run("audit", "at", "prod", "--time", "1970-01-01T00:02:30Z", "--state-dir", str(tmp_path)).stdout
    assert "approved by alice, bob" in text
    later = json.loads(_run("audit", "at", "prod", "--time", "1970-01-01T00:05:00Z", "--state-dir", str(tmp_path),
                            "-o", "json").stdout)["served"]  # fmt: skip
    assert later["revision"] == "b" * 40
    assert _run("audit", "at", "prod", "--time", "1970-01-01T00:01:00Z", "--state-dir", str(tmp_path)).returncode == 1


def test_plain_audit_listing_still_works(state: Path) -> None:
    r = _run("audit", "--env", "prod", "--format", "json", "--state-dir", str(state))
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)) == 10
