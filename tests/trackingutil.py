"""Helpers for the tracking tests: an `mlp tracking serve` process on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
# the mlflow client must not phone home from tests (telemetry goes to a non-loopback address)
CLIENT_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    state: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def rss_peak_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]


def start_server(state: Path, *extra: str, port: int = 0) -> Server:
    state.mkdir(parents=True, exist_ok=True)
    log = state.parent / f"{state.name}-server.log"
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlp.cli.main",
                "tracking",
                "serve",
                "--port",
                str(port),
                "--state-dir",
                str(state),
                *extra,
            ],
            stdout=fh,
            stderr=fh,
            cwd=REPO_ROOT,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tracking server exited: {log.read_text()[-2000:]}")
        m = re.findall(r"listening on (http://127\.0\.0\.1:\d+)", log.read_text())
        if m:
            url = m[-1]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    return Server(url, proc, state)
            except httpx.HTTPError:
                pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"tracking server did not start: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def tracking_server(state: Path, *extra: str) -> Iterator[Server]:
    server = start_server(state, *extra)
    try:
        yield server
    finally:
        server.stop()


def client_env(url: str) -> dict[str, str]:
    return {**os.environ, **CLIENT_ENV, "MLFLOW_TRACKING_URI": url}
