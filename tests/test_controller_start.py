"""`mlp controller` refuses at start what could never work; `mlp sync --wait` needs a live controller;
the local `dev` environment is handled by `mlp up`, not counted as failed."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_controller import Rig, make_platform_repo

from mlp.cli.controller import HEARTBEAT_FILE, _heartbeat, controller_alive
from mlp.cli.main import cli
from mlp.controller.store import StateStore


def _controller(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    res = CliRunner().invoke(
        cli, ["controller", "--state-dir", str(tmp_path / "s"), "--metrics-port", "-1", *args], env=env
    )
    return res.exit_code, res.output


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--repo", "https://example.invalid/p.git", "--token-env", "MLP_TEST_UNSET_TOKEN"], "MLP_TEST_UNSET_TOKEN"),
        (["--repo", "git@example.invalid:p.git", "--ssh-key", "/nonexistent/key"], "--ssh-key /nonexistent/key"),
        (["--repo", "https://example.invalid/p.git", "--token-file", "/nonexistent/t"], "--token-file"),
        (["--repo", "/nonexistent/folder"], "neither a Git URL nor a folder"),
        (["--repo", "https://example.invalid/p.git", "--kubeconfig", "/nonexistent/kubeconfig"], "kubeconfig"),
    ],
)
def test_fails_fast_with_one_line(tmp_path: Path, args: list[str], says: str) -> None:
    code, out = _controller(tmp_path, *args, env={"MLP_TEST_UNSET_TOKEN": ""})
    assert code == 2, out
    assert says in out and out.count("\n") == 1 and "Traceback" not in out


def test_plain_folder_is_not_a_git_repository(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    code, out = _controller(tmp_path, "--repo", str(tmp_path / "plain"))
    assert code == 2 and "not a Git repository" in out


def test_unreachable_remote_that_was_never_fetched_exits_2(tmp_path: Path) -> None:
    code, out = _controller(tmp_path, "--repo", f"file://{tmp_path}/missing.git")
    assert code == 2, out
    assert "cannot fetch" in out and "keeping the last fetched revision" not in out


def test_sync_wait_fails_at_once_without_a_live_controller(tmp_path: Path) -> None:
    state = tmp_path / "state"
    StateStore(state).close()
    started = time.monotonic()
    res = CliRunner().invoke(cli, ["sync", "prod", "--state-dir", str(state), "--wait", "--timeout", "60"])
    assert res.exit_code == 2 and "no controller is running" in res.output
    assert time.monotonic() - started < 30  # not the 60 s timeout
    stop = threading.Event()
    beat = _heartbeat(state, stop, every=0.05)
    try:
        deadline = time.monotonic() + 5
        while not controller_alive(state) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert controller_alive(state)
    finally:
        stop.set()
        beat.join(timeout=5)
    assert not (state / HEARTBEAT_FILE).exists() and not controller_alive(state)


def test_state_dir_from_the_environment(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["status"], env={"MLP_STATE_DIR": str(tmp_path / "from-env")})
    assert res.exit_code == 2 and str(tmp_path / "from-env") in res.output


def test_local_environment_is_handled_elsewhere_not_failed(tmp_path: Path) -> None:
    rig = Rig(make_platform_repo(tmp_path / "platform"), tmp_path / "state")
    rig.reconciler.local_elsewhere = True  # as `mlp controller` builds it
    rig.source.refresh(["main"])
    envs = rig.reconciler.environments()
    assert "dev" not in envs and "staging" in envs
    assert rig.reconciler.handled_elsewhere == {"dev"}
