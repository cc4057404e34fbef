"""HTTP/1.1 limits every mlp server applies before a request reaches the application.

uvicorn's httptools protocol reads request headers without bound (a 200 MB header is
buffered, and concatenated chunk by chunk: quadratic CPU), keeps a connection that never
sends a request open for ever, and accepts connections until file descriptors run out.
`BoundedHttpToolsProtocol` adds, per server (`mlp up`, `mlp webhooks`):

- header size: request line plus headers at most `max_header_bytes` (default 64 KiB, as
  nginx's `large_client_header_buffers` order of magnitude): `431` and the connection closed;
- header count: at most `max_headers` (100, as Go's and Node's defaults order): `431`;
- header-read timeout: a connection must deliver a complete request head within
  `header_timeout` seconds of connecting or of starting a request (10 s), else it is
  closed; between requests the keep-alive timeout (5 s) applies;
- connection cap: at most `max_connections` open connections (1,024, and never more than
  the process's file-descriptor limit allows). A new connection past the cap first evicts
  the oldest connection that has not yet sent a complete request; if every connection is
  busy with a request, the new one gets `503` and is closed.

`bounded_config(app, ...)` is the `uvicorn.Config` to serve with.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import resource
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import uvicorn


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0
    keep_alive_timeout: float = 5.0
    max_connections: int = 1024

    @classmethod
    def from_environment(cls, **defaults: Any) -> HttpLimits:
        """Limits with `defaults`, overridden by `MLP_HTTP_HEADER_TIMEOUT` / `MLP_HTTP_MAX_CONNECTIONS`."""
        values = dict(defaults)
        for name, field, kind in (
            ("MLP_HTTP_HEADER_TIMEOUT", "header_timeout", float),
            ("MLP_HTTP_MAX_CONNECTIONS", "max_connections", int),
            ("MLP_HTTP_MAX_HEADER_BYTES", "max_header_bytes", int),
        ):
            raw = os.environ.get(name)
            if raw:
                with contextlib.suppress(ValueError):
                    values[field] = kind(raw)
        return cls(**values)


def _fd_headroom(wanted: int) -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    # leave descriptors for the state database, models, logs and outgoing HTTP
    return max(16, min(wanted, soft - 128))


def _response(status: int, reason: str, message: str) -> bytes:
    body = message.encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


def _protocol_class(limits: HttpLimits) -> type[asyncio.Protocol]:
    import httptools
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    cap = _fd_headroom(limits.max_connections)

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol with header, time and connection limits."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._mlp_head_bytes = 0
            self._mlp_head_count = 0
            self._mlp_head_error: str | None = None
            self._mlp_timer: asyncio.TimerHandle | None = None
            waiting = self._mlp_waiting()
            if len(self.connections) > cap:
                if waiting:
                    _, oldest = waiting.popitem(last=False)
                    oldest._mlp_close()
                else:
                    transport.write(_response(503, "Service Unavailable", "too many connections"))
                    transport.close()
                    return
            self._mlp_wait_for_head()

        # --- header phase bookkeeping ---------------------------------------------------

        def _mlp_waiting(self) -> OrderedDict[int, Any]:
            # connections that have not delivered a complete request head, oldest first
            waiting: OrderedDict[int, Any] | None = getattr(self.server_state, "_mlp_waiting", None)
            if waiting is None:
                waiting = OrderedDict()
                self.server_state._mlp_waiting = waiting  # type: ignore[attr-defined]
            return waiting

        def _mlp_wait_for_head(self) -> None:
            self._mlp_head_bytes = 0
            self._mlp_head_count = 0
            self._mlp_waiting()[id(self)] = self
            if self._mlp_timer is None:
                self._mlp_timer = self.loop.call_later(limits.header_timeout, self._mlp_close)

        def _mlp_head_done(self) -> None:
            self._mlp_waiting().pop(id(self), None)
            if self._mlp_timer is not None:
                self._mlp_timer.cancel()
                self._mlp_timer = None

        def _mlp_close(self) -> None:
            self._mlp_head_done()
            if not self.transport.is_closing():
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._mlp_head_done()
            super().connection_lost(exc)

        def _mlp_refuse(self, status: int, reason: str, message: str) -> None:
            self._mlp_head_done()
            self.transport.write(_response(status, reason, message))
            self.transport.close()

        # --- parser callbacks -------------------------------------------------------------

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._mlp_wait_for_head()

        def on_header(self, name: bytes, value: bytes) -> None:
            self._mlp_head_count += 1
            if self._mlp_head_count > limits.max_headers:
                self._mlp_head_error = f"more than {limits.max_headers} request headers"
                raise ValueError(self._mlp_head_error)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._mlp_head_done()
            super().on_headers_complete()

        def data_received(self, data: bytes) -> None:
            reading_head = id(self) in self._mlp_waiting()
            if reading_head:
                # Bounded before the parser sees it: the parser buffers a partial header in memory.
                self._mlp_head_bytes += len(data)
                if self._mlp_head_bytes > limits.max_header_bytes + 256 * 1024:
                    self._mlp_refuse(431, "Request Header Fields Too Large", "request headers too large")
                    return
            self._unset_keepalive_if_required()
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
                return
            except httptools.HttpParserError:
                if self._mlp_head_error:
                    self._mlp_refuse(431, "Request Header Fields Too Large", self._mlp_head_error)
                else:
                    self.send_400_response("Invalid HTTP request received.")
                return
            if id(self) in self._mlp_waiting() and self._mlp_head_bytes > limits.max_header_bytes:
                self._mlp_refuse(
                    431, "Request Header Fields Too Large", f"request headers over {limits.max_header_bytes} bytes"
                )

    return BoundedHttpToolsProtocol


def bounded_config(app: Any, *, limits: HttpLimits | None = None, **options: Any) -> uvicorn.Config:
    """A uvicorn config serving `app` with `limits` (plus any other uvicorn option)."""
    limits = limits or HttpLimits.from_environment()
    options.setdefault("timeout_keep_alive", limits.keep_alive_timeout)
    if importlib.util.find_spec("httptools"):
        options["http"] = _protocol_class(limits)
    else:  # pragma: no cover - uvicorn[standard] brings httptools
        options["http"] = "h11"
        options["h11_max_incomplete_event_size"] = limits.max_header_bytes
    return uvicorn.Config(app, **options)
