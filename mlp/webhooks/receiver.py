"""The webhook receiver: a FastAPI app that authenticates, deduplicates and queues deliveries.

The request path does only cheap, bounded work: check headers, refuse a body over the
limit from its `Content-Length` before reading it (or stop reading a chunked body at
the limit), verify the signature over the raw bytes, record the delivery in the
`DeliveryStore` (which deduplicates), and answer `202`. Parsing and all real work
(Git checkouts, rendering, API calls) happen on worker threads, so the host's
10-second delivery timeout is never at risk and a slow PR never delays a push.

Mount `WebhookReceiver(...).app` in another ASGI app (the controller) or serve it
alone with `mlp webhooks`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from mlp.webhooks.events import Event, parse_github, parse_gitlab
from mlp.webhooks.signatures import verify_gitlab
from mlp.webhooks.store import DeliveryStore, StoredDelivery

log = logging.getLogger("mlp.webhooks")

# GitHub caps webhook payloads at 25 MB and drops larger ones, so nothing legitimate is bigger.
DEFAULT_MAX_BODY = 25 * 1024 * 1024
# Body bytes of not-yet-authenticated GitHub deliveries held at once, across all requests:
# past it a delivery gets 503 (and the host's redelivery) instead of the receiver's memory.
DEFAULT_MAX_UNVERIFIED_BYTES = 64 * 1024 * 1024

EventHandler = Callable[[Event], None]


@dataclass
class ReceiverConfig:
    github_secret: bytes | None = None
    gitlab_token: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY
    dedupe_window_seconds: float = 14 * 24 * 3600
    max_unverified_bytes: int = DEFAULT_MAX_UNVERIFIED_BYTES


@dataclass
class ReceiverStats:
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    processed: int = 0
    failed: int = 0
    by_event: dict[str, int] = field(default_factory=dict)


class BodyTooLarge(Exception):
    pass


class Busy(Exception):
    """Too many unauthenticated body bytes in flight."""


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


def decode_body(body: bytes) -> dict[str, Any]:
    """JSON payload of a delivery; GitHub's form encoding (`payload=<json>`) is accepted too."""
    if body[:8] == b"payload=":
        form = urllib.parse.parse_qs(body.decode("utf-8"))
        body = form.get("payload", ["{}"])[0].encode()
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("payload is not a JSON object")
    return data


class WebhookReceiver:
    """Receives, authenticates and queues deliveries; workers hand parsed events to `handler`."""

    def __init__(
        self,
        config: ReceiverConfig,
        handler: EventHandler,
        store: DeliveryStore | None = None,
        *,
        workers: int = 1,
    ) -> None:
        self.config = config
        self.handler = handler
        self.store = store or DeliveryStore()
        self.stats = ReceiverStats()
        self._queue: queue.Queue[StoredDelivery | None] = queue.Queue()
        self._workers = workers
        self._threads: list[threading.Thread] = []
        self._busy = 0
        self._idle = threading.Condition()
        self._stats_lock = threading.Lock()
        self._unverified = 0  # body bytes reserved by GitHub deliveries not yet authenticated
        self.app = self._build_app()

    # --- HTTP -------------------------------------------------------------------------

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="mlp webhooks", docs_url=None, redoc_url=None, openapi_url=None)

        @app.get("/healthz")
        def healthz() -> dict[str, Any]:
            return {"status": "ok", "queued": self._queue.qsize(), "deliveries": self.store.counts()}

        @app.post("/webhooks/github")
        async def github(request: Request) -> JSONResponse:
            secret = self.config.github_secret
            if secret is None:
                return self._reject(503, "GitHub webhooks are not configured: no secret (MLP_GITHUB_WEBHOOK_SECRET)")
            event = request.headers.get("x-github-event")
            signature = request.headers.get("x-hub-signature-256")
            if not event:
                return self._reject(400, "missing X-GitHub-Event header")
            if not signature:
                return self._reject(401, "missing X-Hub-Signature-256 header: unsigned deliveries are refused")
            if not signature.startswith("sha256="):
                return self._reject(401, "X-Hub-Signature-256 is not a sha256= signature")
            # The signature covers the whole body, so the body must be read before it is known to
            # be genuine: the HMAC is computed as it streams in, and the bytes held for
            # unauthenticated requests, all together, are bounded.
            mac = hmac.new(secret, digestmod=hashlib.sha256)
            try:
                body = await self._read_body(request, mac=mac, reserve=True)
            except BodyTooLarge as exc:
                return self._reject(413, str(exc), Connection="close")
            except Busy as exc:
                return self._reject(503, str(exc), Connection="close", **{"Retry-After": "5"})
            expected = "sha256=" + mac.hexdigest()
            if not hmac.compare_digest(expected.encode(), signature.strip().encode()):
                return self._reject(401, "X-Hub-Signature-256 does not match the body")
            delivery = request.headers.get("x-github-delivery") or "sha256-" + hashlib.sha256(body).hexdigest()
            return self._accept("github", event, delivery, body)

        @app.post("/webhooks/gitlab")
        async def gitlab(request: Request) -> JSONResponse:
            token = self.config.gitlab_token
            if token is None:
                return self._reject(503, "GitLab webhooks are not configured: no token (MLP_GITLAB_WEBHOOK_TOKEN)")
            event = request.headers.get("x-gitlab-event")
            if not event:
                return self._reject(400, "missing X-Gitlab-Event header")
            if not request.headers.get("x-gitlab-token"):
                return self._reject(401, "missing X-Gitlab-Token header: unauthenticated deliveries are refused")
            if not verify_gitlab(token, request.headers.get("x-gitlab-token")):
                return self._reject(401, "X-Gitlab-Token does not match the configured secret token")
            try:
                body = await self._read_body(request)
            except BodyTooLarge as exc:
                return self._reject(413, str(exc), Connection="close")
            # Idempotency-Key stays the same across retries of one delivery (GitLab 17.4+);
            # older GitLab sends only X-Gitlab-Event-UUID.
            delivery = (
                request.headers.get("idempotency-key")
                or request.headers.get("x-gitlab-event-uuid")
                or "sha256-" + hashlib.sha256(body).hexdigest()
            )
            return self._accept("gitlab", event, delivery, body)

        return app

    async def _read_body(self, request: Request, *, mac: Any = None, reserve: bool = False) -> bytes:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        size: int | None = None
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise BodyTooLarge("invalid Content-Length") from None
            if size > limit or size < 0:
                # Refused from the header alone: not one byte of the body is read.
                raise BodyTooLarge(f"body of {size} bytes exceeds the limit of {limit} bytes")
        reserved = 0
        if reserve:
            # A chunked body may grow to the limit: reserve that much up front.
            reserved = size if size is not None else limit
            if self._unverified + reserved > self.config.max_unverified_bytes:
                raise Busy("too many unauthenticated deliveries in flight; retry shortly")
            self._unverified += reserved
        try:
            chunks: list[bytes] = []
            total = 0
            async for chunk in request.stream():
                total += len(chunk)
                if total > limit or (size is not None and total > size):
                    raise BodyTooLarge(f"body exceeds the limit of {limit} bytes")
                if mac is not None:
                    mac.update(chunk)
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            self._unverified -= reserved

    def _reject(self, status: int, message: str, **headers: str) -> JSONResponse:
        self.stats.rejected += 1
        return _error(status, message, **headers)

    def _accept(self, provider: str, event: str, delivery: str, body: bytes) -> JSONResponse:
        if not self.store.add(delivery, provider, event, body):
            self.stats.duplicates += 1
            return JSONResponse({"status": "duplicate", "delivery": delivery}, status_code=200)
        self.stats.accepted += 1
        key = f"{provider}:{event}"
        self.stats.by_event[key] = self.stats.by_event.get(key, 0) + 1
        self._queue.put(StoredDelivery(delivery, provider, event, body, time.time()))
        return JSONResponse({"status": "queued", "delivery": delivery}, status_code=202)

    # --- workers ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers and re-queue deliveries a previous run accepted but did not finish."""
        if self._threads:
            return
        # Hosts redeliver within days; ids older than that need not be remembered.
        self.store.prune(self.config.dedupe_window_seconds)
        for stored in self.store.pending():
            self._queue.put(stored)
        for i in range(self._workers):
            t = threading.Thread(target=self._work, name=f"mlp-webhooks-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 10.0) -> None:
        """Finish queued work, then stop the workers."""
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until every queued delivery is processed; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._queue.unfinished_tasks or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(min(remaining, 0.05))
        return True

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            with self._idle:
                self._busy += 1
            try:
                self.process(item)
            finally:
                with self._idle:
                    self._busy -= 1
                    self._queue.task_done()
                    self._idle.notify_all()

    def process(self, item: StoredDelivery) -> None:
        """Parse one stored delivery and hand its event to the handler; record the outcome."""
        error: str | None = None
        self.store.started(item.id, item.provider)
        try:
            payload = decode_body(item.body)
            parse = parse_github if item.provider == "github" else parse_gitlab
            event = parse(item.event, payload)
            if event is not None:
                self.handler(event)
        except Exception as exc:  # a bad delivery must never kill the worker
            error = f"{type(exc).__name__}: {exc}"
            log.exception("webhook %s %s (%s) failed", item.provider, item.event, item.id)
        with self._stats_lock:
            if error:
                self.stats.failed += 1
            else:
                self.stats.processed += 1
        self.store.finish(item.id, item.provider, error)
