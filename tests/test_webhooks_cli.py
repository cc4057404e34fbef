"""`mlp webhooks` as a process: secrets from a file, a signed push asks the controller to reconcile."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from test_pr_flow import make_origin

from mlp.controller.store import StateStore
from mlp.webhooks.signatures import github_signature

pytestmark = pytest.mark.timeout(60)
MLP = [sys.executable, "-m", "mlp.cli.main"]


def test_webhooks_process_push_triggers_reconcile(tmp_path: Path, fixtures_dir: Path) -> None:
    origin = make_origin(tmp_path / "origin")
    secret_file = tmp_path / "secret"
    secret_file.write_text("s3cret\n")
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLP_GIT", "GITHUB_", "GITLAB_"))}
    proc = subprocess.Popen(
        [
            *MLP,
            "webhooks",
            "--repo",
            str(tmp_path / "origin"),
            "--port",
            "0",
            "--state-dir",
            str(state),
            "--github-secret-file",
            str(secret_file),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stderr is not None
        url = None
        deadline = time.monotonic() + 30
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            match = re.search(r"listening on (http://\S+)", line)
            url = match.group(1) if match else None
        assert url, "the receiver did not report its address"
        payload = json.loads((fixtures_dir / "github" / "push.json").read_text())
        payload.update(ref="refs/heads/main", after=origin.head.commit.hexsha)
        body = json.dumps(payload).encode()
        headers = {
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": github_signature(b"s3cret", body),
            "Content-Type": "application/json",
        }
        assert httpx.post(f"{url}/webhooks/github", content=body, headers=headers).status_code == 202
        bad = dict(headers, **{"X-Hub-Signature-256": github_signature(b"other", body)})
        assert httpx.post(f"{url}/webhooks/github", content=body, headers=bad).status_code == 401
        requests: list[tuple[str, str]] = []
        while time.monotonic() < deadline and len(requests) < 3:
            store = StateStore(state)
            requests += store.take_sync_requests()
            store.close()
            time.sleep(0.05)
        assert sorted(env for env, _ in requests) == ["dev", "prod", "staging"]
        assert httpx.get(f"{url}/healthz").json()["deliveries"] == {"done": 1}
    finally:
        proc.terminate()
        proc.wait(10)


def test_webhooks_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLP_GIT")}
    out = subprocess.run(
        [*MLP, "webhooks", "--repo", str(tmp_path), "--state-dir", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert out.returncode == 2 and "no webhook secret" in out.stderr and "Traceback" not in out.stderr
    empty = tmp_path / "empty"
    empty.write_text("")
    out = subprocess.run(
        [*MLP, "webhooks", "--repo", str(tmp_path), "--github-secret-file", str(empty)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert out.returncode == 2 and "secret file is empty" in out.stderr
