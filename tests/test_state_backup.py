"""`mlp state export|import`: back up a running controller's state under load, lose it, restore it.

After the restore and a restart nothing recorded before the backup is missing, nothing is
corrupted, and no object is written again: the restored status and the live objects agree.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_controller import commit_all, edit, make_platform_repo, set_staging_iris
from test_controller_process import SlowApi, _start, _status, _stop, _wait

from mlp.cli.main import cli
from mlp.controller.backup import BackupError, export_state, import_state, read_backup
from mlp.controller.store import AuditLog

pytestmark = [pytest.mark.timeout(240)]
kube = pytest.importorskip("standins.kube_apiserver", reason="the API server stand-in is not in this checkout")
WRITES = ("PATCH", "POST", "PUT", "DELETE")


def _writes(api: SlowApi) -> int:
    with api.api.lock:
        return sum(
            1
            for r in api.api.requests
            if r.method in WRITES and "dryRun" not in r.query and "/namespaces/ml-" in r.path
        )


@pytest.fixture()
def slow_api() -> SlowApi:
    s = SlowApi()
    yield s
    s.api.stop()


@pytest.mark.slow
def test_export_under_load_wipe_import_restart_loses_nothing_and_writes_nothing_twice(
    slow_api: SlowApi, tmp_path: Path
) -> None:
    repo = make_platform_repo(tmp_path / "platform")
    root = Path(repo.working_tree_dir or ".")
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig", slow_api.api.url)
    state = tmp_path / "state"
    proc = _start(root, state, kubeconfig)
    backups: list[Path] = []
    try:
        _wait(lambda: (s := _status(state)) is not None and s.sync_status == "Synced", 60, "first sync", proc)
        stop = threading.Event()

        def exporter() -> None:  # backups taken while the controller applies the pushes below
            while not stop.is_set():
                out = tmp_path / f"backup-{len(backups)}.json.gz"
                res = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "mlp.cli.main",
                        "state",
                        "export",
                        "--state-dir",
                        str(state),
                        "--out",
                        str(out),
                    ],
                    capture_output=True,
                    text=True,
                )
                assert res.returncode == 0, res.stderr
                backups.append(out)
                time.sleep(0.2)

        thread = threading.Thread(target=exporter)
        thread.start()
        try:
            for version in (1, 2, 1, 2):
                edit(repo, "environments/staging.yaml", set_staging_iris(version))
                head = commit_all(repo, f"staging: iris v{version}")
                _wait(
                    lambda h=head: (s := _status(state)) is not None and s.synced_revision == h,
                    60,
                    f"sync of {head[:8]}",
                    proc,
                )
        finally:
            stop.set()
            thread.join()
    finally:
        err = _stop(proc)
    assert proc.returncode == 0, err
    assert len(backups) >= 2
    backup = backups[-1]
    saved = read_backup(backup)["databases"]["state.db"]["tables"]["audit"]
    saved_ids = {row[saved["columns"].index("id")] for row in saved["rows"]}
    assert saved_ids, "the backup holds no audit records"

    # Lose the state folder; restore the backup taken under load into a fresh one.
    for path in sorted(state.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    res = CliRunner().invoke(cli, ["state", "import", str(backup), "--state-dir", str(state), "-o", "json"])
    assert res.exit_code == 0, res.output
    restored = {e.id for e in AuditLog(state).events()}
    assert saved_ids <= restored

    before = _writes(slow_api)
    restarted = time.time()
    proc = _start(root, state, kubeconfig)
    try:
        _wait(
            lambda: (
                (s := _status(state)) is not None
                and s.updated_at > restarted  # a step of the restarted controller, not the restored row
                and s.sync_status == "Synced"
                and s.synced_revision == repo.head.commit.hexsha
            ),
            60,
            "convergence after the restore",
            proc,
        )
        time.sleep(2)  # a couple of intervals more: still nothing to write
    finally:
        err = _stop(proc)
    assert proc.returncode == 0, err
    assert _writes(slow_api) == before, "objects were written again after the restore"
    after = {e.id for e in AuditLog(state).events()}
    assert saved_ids <= after


def _state_with_audit(tmp_path: Path) -> Path:
    from mlp.controller.store import AuditEvent

    state = tmp_path / "state"
    log = AuditLog(state)
    for i in range(3):
        log.append(
            AuditEvent(time=1000.0 + i, environment="prod", action="apply", outcome="succeeded", message=f"e{i}")
        )
    log.close()
    return state


def test_a_backup_edited_or_truncated_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    state = _state_with_audit(tmp_path)
    out = tmp_path / "b.json"
    export_state(state, out)
    doc = json.loads(out.read_text())
    doc["databases"]["state.db"]["tables"]["audit"]["rows"][0][1] = 9999.0  # one edited value
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(doc))
    target = tmp_path / "restore"
    with pytest.raises(BackupError, match="checksum does not match"):
        import_state(edited, target)
    assert not target.exists() or not any(target.iterdir())
    truncated = tmp_path / "truncated.json"
    truncated.write_bytes(out.read_bytes()[:-50])
    with pytest.raises(BackupError, match="not an mlp state backup"):
        import_state(truncated, target)


def test_import_refuses_a_folder_with_state_unless_forced_and_round_trips(tmp_path: Path) -> None:
    state = _state_with_audit(tmp_path)
    out = tmp_path / "b.json.gz"
    summary = export_state(state, out)
    assert summary["state.db"]["audit"] == 3
    with pytest.raises(BackupError, match=r"already holds state\.db"):
        import_state(out, state)
    other = tmp_path / "other"
    import_state(out, other)
    rows = sqlite3.connect(other / "state.db").execute("SELECT message FROM audit ORDER BY id").fetchall()
    assert [r[0] for r in rows] == ["e0", "e1", "e2"]
    import_state(out, state, force=True)


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["state", "import", str(tmp_path / "missing.json"), "--state-dir", str(tmp_path)])
    assert res.exit_code == 2 and "cannot read" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["state", "export", "--state-dir", str(tmp_path / "none"), "--out", "x.json"])
    assert res.exit_code == 2 and "no such state folder" in res.output
