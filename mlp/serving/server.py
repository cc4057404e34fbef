"""Run the data plane under uvicorn (httptools parser, uvloop loop when installed).

`serve()` blocks in the calling (main) thread and handles Ctrl-C; `ServerThread` runs
the same server in a background thread on an ephemeral port, for tests and benchmarks.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import socket
import sys
import threading
import time
from typing import Any

import uvicorn

from mlp.serving.httpbounds import HttpLimits, bounded_config


def _uvicorn_config(app: Any, host: str, port: int) -> uvicorn.Config:
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    # header size and count, header-read and keep-alive timeouts, connection cap
    return bounded_config(
        app,
        limits=HttpLimits.from_environment(keep_alive_timeout=30),
        loop=loop,
        lifespan="off",
        access_log=False,
        log_level="warning",
        log_config=None,  # keep the logging `mlp up --log-format` set up
        backlog=4096,
        host=host,
        port=port,
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; port 0 picks a free one (read it back with getsockname)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


def serve(app: Any, sock: socket.socket) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn's handlers), on an already-bound socket."""
    # The payload-log writer and batch jobs run in threads beside the event loop; with the
    # default 5 ms GIL switch interval a busy thread can hold requests for 5 ms at a time.
    sys.setswitchinterval(0.001)
    if os.environ.get("MLP_GC_FREEZE", "1") != "0":
        # Everything loaded so far (libraries, models) is long-lived: move it out of the
        # collector's reach so a full collection does not walk it while requests wait.
        gc.collect()
        gc.freeze()
    # Hand uvicorn the socket object, not its fd: uvicorn treats a bare fd as a UNIX socket,
    # and then the TCP connections lose TCP_NODELAY (40 ms Nagle/delayed-ACK stalls).
    server = uvicorn.Server(_uvicorn_config(app, "127.0.0.1", 0))
    server.run(sockets=[sock])


class ServerThread:
    """The data plane on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = bind(host, port)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(_uvicorn_config(app, host, 0))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="mlp-dataplane", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("data plane did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
