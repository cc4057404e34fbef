"""`mlp apply` (the real process) on an object that a prune is still deleting (issue 11).

Applying to an object with a `deletionTimestamp` "succeeds" and then the object vanishes.
The kubernetes target waits (bounded) until the deletion finishes and creates the object
afresh, or fails saying the object is still terminating. Runs against the API server
stand-in with its garbage collector stepped by hand (a finalizer that holds the deletion).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from standins.kube_apiserver import KubeApiServer, write_kubeconfig
from test_cli_apply import ISVC_PATH, REPO, Cluster

pytestmark = pytest.mark.timeout(120)
MLP = [sys.executable, "-m", "mlp.cli.main"]


def run(*args: str, timeout_s: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLP_TERMINATING_TIMEOUT": timeout_s}
    return subprocess.run([*MLP, *args], capture_output=True, text=True, timeout=90, env=env)


def test_apply_waits_for_a_terminating_object_or_says_so(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for top in ("specs", "environments", "templates"):
        shutil.copytree(REPO / top, repo / top)
    env_file = repo / "environments" / "staging.yaml"
    full = env_file.read_text()
    with KubeApiServer(prometheus_operator=True, auto_gc=False) as api:
        kc = str(write_kubeconfig(tmp_path / "kc", api.url))
        common = ["--env", "staging", "--repo", str(repo), "--yes", "--kubeconfig", kc]
        assert run("apply", *common, timeout_s="5").returncode == 0
        env_file.write_text(full[: full.index("    breast-cancer:")])
        assert run("apply", *common, "--prune", timeout_s="5").returncode == 0
        env_file.write_text(full)  # breast-cancer is back, but its InferenceService is still terminating

        refused = run("apply", *common, timeout_s="1")
        assert refused.returncode != 0, refused.stdout + refused.stderr
        assert "Traceback" not in refused.stdout + refused.stderr
        assert "breast-cancer" in refused.stderr and "still terminating" in refused.stderr, refused.stderr

        # the deletion finishes while apply waits: the object is created afresh
        timer = threading.Timer(2.0, api.collect_garbage)
        timer.start()
        done = run("apply", *common, timeout_s="60")
        timer.join()
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Traceback" not in done.stdout + done.stderr
        live = Cluster(Path(kc), api).get(f"{ISVC_PATH}/breast-cancer")
        assert not live["metadata"].get("deletionTimestamp"), live["metadata"]
        diff = run("diff", "--env", "staging", "--repo", str(repo), "--kubeconfig", kc, timeout_s="5")
        assert diff.returncode == 0, diff.stdout + diff.stderr
