"""Start mlp's tracking server and MLflow's own (`mlflow server`) on loopback for the benchmarks.

Both get a fresh state folder, SQLite as their backend store and a local artifact folder
served through the `mlflow-artifacts` proxy: the same configuration, so the comparison is
about the servers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

QUIET_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 400.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering at {url}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server at {url} did not answer within {timeout:.0f}s")


@contextlib.contextmanager
def running(cmd: list[str], url: str, log: Path) -> Iterator[str]:
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **QUIET_ENV}, start_new_session=True
        )
    try:
        wait_ready(url, proc)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def mlp_server(state: Path) -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, "-m", "mlp.cli.main", "tracking", "serve", "--port", str(port), "--state-dir", str(state)]
    with running(cmd, f"http://127.0.0.1:{port}", state.parent / f"{state.name}.log") as url:
        yield url


@contextlib.contextmanager
def mlflow_server(mlflow_exe: Path, state: Path) -> Iterator[str]:
    port = free_port()
    state.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(mlflow_exe),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{state / 'mlflow.db'}",
        "--artifacts-destination",
        str(state / "artifacts"),
    ]
    with running(cmd, f"http://127.0.0.1:{port}", state.parent / f"{state.name}.log") as url:
        yield url
