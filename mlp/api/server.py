"""Run the API under uvicorn with bounded headers, connections and idle time, and optional TLS.

Bounds (every server mlp runs has them, `mlp.serving.httpbounds`): request heads at most
`max_header_bytes` and 100 fields (431, connection closed), a complete head within the
header timeout, at most `max_connections` open connections, idle keep-alive connections
closed after `idle_timeout` seconds; bodies are bounded in the app (`BodyLimit`). With `tls_cert` and `tls_key` the listener speaks only TLS
(TLS 1.2 at least).
"""

from __future__ import annotations

import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn


@dataclass
class Listener:
    host: str = "127.0.0.1"
    port: int = 8080
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_header_bytes: int = 16 * 1024
    max_connections: int = 1000
    idle_timeout: int = 15

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"


def check_tls(cert: Path | None, key: Path | None) -> str | None:
    """A one-line problem with the certificate pair, or None (also None when neither is given)."""
    if (cert is None) != (key is None):
        return "--tls-cert and --tls-key go together"
    if cert is None or key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        return f"cannot load the TLS certificate {cert} and key: {getattr(exc, 'strerror', None) or exc}"
    return None


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context for listeners that do not go through uvicorn (the controller's metrics)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    return context


def uvicorn_config(app: Any, listener: Listener, **extra: Any) -> uvicorn.Config:
    from mlp.serving.httpbounds import HttpLimits, bounded_config

    tls: dict[str, Any] = {}
    if listener.tls_cert and listener.tls_key:
        tls = {"ssl_certfile": str(listener.tls_cert), "ssl_keyfile": str(listener.tls_key)}
    limits = HttpLimits.from_environment(
        max_header_bytes=listener.max_header_bytes,
        max_connections=listener.max_connections,
        keep_alive_timeout=float(listener.idle_timeout),
    )
    return bounded_config(
        app,
        limits=limits,
        host=listener.host,
        port=listener.port,
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
        **tls,
        **extra,
    )


class ApiThread:
    """The API on a free port in a daemon thread (tests and benchmarks)."""

    def __init__(self, app: Any, listener: Listener | None = None) -> None:
        listener = listener or Listener(port=0)
        self.listener = listener
        self.server = uvicorn.Server(uvicorn_config(app, listener))
        self.thread = threading.Thread(target=self.server.run, name="mlp-api", daemon=True)

    @property
    def url(self) -> str:
        sock = self.server.servers[0].sockets[0]
        return f"{self.listener.scheme}://127.0.0.1:{sock.getsockname()[1]}"

    def start(self) -> ApiThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the API server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> ApiThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
