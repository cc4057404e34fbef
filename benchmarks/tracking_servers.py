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
from typing import NamedTuple

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


class Running(NamedTuple):
    url: str
    pid: int

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server and all its worker processes so far (Linux /proc)."""
        stats: dict[int, list[str]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    # the fields after the parenthesised command name: state, ppid, ... utime (12), stime (13)
                    stats[int(entry.name)] = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        tree, frontier = {self.pid}, [self.pid]
        while frontier:
            parent = frontier.pop()
            for pid, fields in stats.items():
                if int(fields[1]) == parent and pid not in tree:
                    tree.add(pid)
                    frontier.append(pid)
        ticks = sum(int(stats[pid][11]) + int(stats[pid][12]) for pid in tree if pid in stats)
        return ticks / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def running(cmd: list[str], url: str, log: Path) -> Iterator[Running]:
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **QUIET_ENV}, start_new_session=True
        )
    try:
        wait_ready(url, proc)
        yield Running(url, proc.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def mlp_server(state: Path) -> Iterator[Running]:
    port = free_port()
    cmd = [sys.executable, "-m", "mlp.cli.main", "tracking", "serve", "--port", str(port), "--state-dir", str(state)]
    with running(cmd, f"http://127.0.0.1:{port}", state.parent / f"{state.name}.log") as server:
        yield server


@contextlib.contextmanager
def mlflow_server(mlflow_exe: Path, state: Path) -> Iterator[Running]:
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
    with running(cmd, f"http://127.0.0.1:{port}", state.parent / f"{state.name}.log") as server:
        yield server
