"""The data plane: a lean ASGI application for KServe v1 and Open Inference Protocol v2.

No framework: routing is a few string tests, bodies are parsed with orjson and answers
are written as bytes, because at tens of thousands of requests per second per core the
framework is the cost. Served by uvicorn (httptools + uvloop) in `mlp.serving.server`.

Endpoints
  GET  /v2/health/live | /v2/health/ready | /v2
  GET  /v2/models/NAME[/versions/V]           metadata
  GET  /v2/models/NAME[/versions/V]/ready     readiness
  POST /v2/models/NAME[/versions/V]/infer     inference
  GET  /v1/models | /v1/models/NAME            list, readiness
  POST /v1/models/NAME:predict                 inference
  POST /v2/models/NAME/feedback                outcomes for answered request ids (FEEDBACK_CONTRACT.md)
  POST /v1/batch/jobs, GET /v1/batch/jobs/ID   batch jobs over files in the batch folder
  GET  /metrics                                Prometheus

Every inference answer carries `x-request-id` (v2 echoes the request's `id`, else one is
generated; the v2 body carries it too), `x-mlp-model-version` (the version that answered) and
`x-mlp-route` (stable, canary, ab). Client mistakes are 4xx with `{"error": "..."}` and
never reach the model: 400 malformed or mis-shaped input, 404 unknown model or version,
405 wrong method, 413 body over the limit (refused from Content-Length before reading),
503 + Retry-After when the server or a version's queue is full.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import time
from typing import Any

import numpy as np

from mlp.serving import codec
from mlp.serving.batch import BatchError, BatchJobs
from mlp.serving.batching import Overloaded
from mlp.serving.codec import BadRequest
from mlp.serving.feedback import FeedbackError
from mlp.serving.loaders import CustomModel
from mlp.serving.runtime import Deployed, Runtime, VersionState

log = logging.getLogger("mlp.serving")

JSON_HEADERS = [(b"content-type", b"application/json")]
MAX_BODY = 4 << 20


class _Disconnected(Exception):
    pass


class DataPlane:
    def __init__(
        self,
        runtime: Runtime,
        *,
        max_body_bytes: int = MAX_BODY,
        max_inflight: int = 2048,
        batch_jobs: BatchJobs | None = None,
        features: Any = None,
    ) -> None:
        self.runtime = runtime
        # mlp.features.service.FeatureService (duck-typed: serving does not import the feature store)
        self.features = features
        self.max_body = max_body_bytes
        self.max_inflight = max_inflight
        self.inflight = 0
        self.jobs = batch_jobs or BatchJobs(runtime.state_dir / "batch")
        self._rand = random.random
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        # request ids: a random per-process prefix and a counter, unique across restarts and cheap
        self._id_prefix = os.urandom(6).hex() + "-"
        self._ids = itertools.count(1)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan":
                await _lifespan(receive, send)
            return
        path: str = scope["path"]
        method: str = scope["method"]
        try:
            if path.startswith("/v2/models/") or path.startswith("/v1/models/"):
                await self._model_route(scope, receive, send, path, method)
            elif path == "/v2/health/live" or path == "/":
                await _send(send, 200, b'{"live":true}')  # the process answers: live, loaded or not
            elif path == "/v2/health/ready":
                # ready: every declared model loaded (and none refused its first load)
                ready = self.runtime.ready()
                await _send(send, 200 if ready else 503, b'{"ready":true}' if ready else b'{"ready":false}')
            elif path == "/metrics":
                await _send(
                    send,
                    200,
                    self.runtime.metrics.render(),
                    [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")],
                )
            elif path in ("/v2", "/v2/"):
                await _send(send, 200, codec.dumps({"name": "mlp", "version": "1", "extensions": []}))
            elif path == "/v1/models":
                await _send(send, 200, codec.dumps({"models": sorted(self.runtime.models)}))
            elif path.startswith("/v1/batch/jobs"):
                await self._batch(scope, receive, send, path, method)
            elif self.features is not None and (path == "/v1/features" or path.startswith("/v1/features/")):
                raw = await self._read_body(receive) if method == "POST" else None
                status, out = await self.features.ahandle(method, path, scope.get("query_string", b""), raw)
                await _send(send, status, out)
            else:
                await _error(send, 404, f"no route for {method} {path}")
        except BadRequest as exc:
            self.runtime.metrics.rejected.labels(str(exc.status)).inc()
            # 413 keeps the connection: uvicorn discards the unread rest of the body under flow
            # control (bounded memory), and the client, still writing, then reads the answer.
            await _error(send, exc.status, str(exc))
        except _Disconnected:
            return

    # --- models ---------------------------------------------------------------------------

    async def _model_route(self, scope: dict[str, Any], receive: Any, send: Any, path: str, method: str) -> None:
        v2 = path[2] == "2"
        rest = path[11:]
        action = ""
        if v2:
            name, _, tail = rest.partition("/")
            version: str | None = None
            if tail.startswith("versions/"):
                version, _, tail = tail[9:].partition("/")
            action = tail
        else:
            name, sep, verb = rest.partition(":")
            action = verb if sep else ""
            version = None
        dep = self.runtime.models.get(name)
        if dep is None:
            failed = self.runtime.failed.get(name)
            if failed is not None and action in ("ready", ""):
                await _send(send, 503, codec.dumps({"name": name, "ready": False, "error": failed}))
                return
            raise BadRequest(f"model {name!r} is not deployed here (see GET /v1/models)", 404)
        if version is not None and version not in dep.versions:
            raise BadRequest(
                f"model {name!r} has no loaded version {version!r} (loaded: {', '.join(dep.versions)})", 404
            )
        if action == "feedback" and v2 and version is None:
            if method != "POST":
                raise BadRequest(f"{path} takes POST", 405)
            await self._feedback(scope, receive, send, dep)
            return
        if action not in ("infer", "predict", "ready", ""):
            raise BadRequest(f"no route for {method} {path} (explain and generate are not served)", 404)
        if action in ("infer", "predict"):
            if method != "POST":
                raise BadRequest(f"{path} takes POST", 405)
            await self._infer(scope, receive, send, dep, version, v2)
        elif method != "GET":
            raise BadRequest(f"{path} takes GET", 405)
        elif action == "ready" or (not v2 and action == ""):
            body = {"name": name, "ready": True}
            await _send(send, 200, codec.dumps(body))
        else:
            await _send(send, 200, codec.dumps(self.runtime.metadata(dep, version)))

    async def _infer(
        self, scope: dict[str, Any], receive: Any, send: Any, dep: Deployed, pinned: str | None, v2: bool
    ) -> None:
        t0 = time.perf_counter()
        headers = scope["headers"]
        length = -1
        key = None
        sticky = dep.router.sticky_header
        for hname, hval in headers:
            if hname == b"content-length":
                try:
                    length = int(hval)
                except ValueError:
                    raise BadRequest("Content-Length is not a number") from None
            elif sticky is not None and hname.decode("latin-1") == sticky:
                key = hval.decode("latin-1")
        if length > self.max_body:
            raise BadRequest(f"request body of {length} bytes exceeds the {self.max_body} byte limit", 413)
        if self.inflight >= self.max_inflight:
            self.runtime.metrics.rejected.labels("503").inc()
            await _send(send, 503, b'{"error":"server busy, retry shortly"}', [*JSON_HEADERS, (b"retry-after", b"1")])
            return
        self.inflight += 1
        try:
            raw = await self._read_body(receive)
            body = codec.loads(raw)
            enrich = dep.obj.get("spec", {}).get("features")
            if enrich and self.features is not None and not v2:
                try:
                    body = await self.features.aenrich(enrich, dep.signature.inputs, body)
                except Exception as exc:  # lookup errors carry their status; anything else is the store's fault
                    status = getattr(exc, "status", None)
                    if status is None:
                        log.warning("feature lookup for %s failed: %s", dep.name, exc)
                    raise BadRequest(str(exc) if status else f"feature lookup failed: {exc}", status or 503) from None
            version = pinned if pinned is not None else dep.router.choose(key)
            vs = dep.versions[version]
            given = body.get("id") if v2 and isinstance(body, dict) else None
            rid = given if isinstance(given, str) and 0 < len(given) <= 256 else f"{self._id_prefix}{next(self._ids)}"
            if isinstance(vs.loaded, CustomModel):
                await self._infer_custom(send, dep, vs, body, raw, scope, v2, t0)
                return
            try:
                x = codec.decode_v2(dep.signature, body, raw) if v2 else codec.decode_v1(dep.signature, body, raw)
            except BadRequest:
                vs.metrics.bad.inc()
                vs.metrics.input_errors.inc()
                raise
            assert vs.batcher is not None
            vs.inflight += 1
            try:
                pred = await vs.batcher.submit(x)
            except Overloaded as exc:
                self.runtime.metrics.rejected.labels("503").inc()
                await _send(
                    send,
                    503,
                    codec.dumps({"error": f"model {dep.name} v{version} overloaded: {exc}"}),
                    [*JSON_HEADERS, (b"retry-after", b"1")],
                )
                return
            except Exception as exc:
                vs.metrics.failed.inc()
                vs.metrics.model_errors.inc()
                log.warning("model %s v%s failed: %s", dep.name, version, exc)
                await _error(
                    send, 500, f"model {dep.name} v{version} failed: {type(exc).__name__}: {exc}", version=version
                )
                return
            finally:
                vs.inflight -= 1
            out = codec.encode_v2(dep.signature, dep.name, version, pred, rid) if v2 else codec.encode_v1(pred)
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(out)).encode()),
                        (b"x-mlp-model-version", version.encode()),
                        (b"x-mlp-route", vs.role.encode()),
                        (b"x-request-id", rid.encode("latin-1", "replace")),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": out})
            vs.metrics.ok.inc()
            vs.metrics.observe(pred, time.perf_counter() - t0)
            self.runtime.feedback.ledger.add(rid, dep.name, version)
            if (
                dep.payload_rate > 0
                and self.runtime.payloads is not None
                and (dep.payload_rate >= 1.0 or self._rand() < dep.payload_rate)
            ):
                self.runtime.payloads.put(
                    dep.name,
                    version,
                    x,
                    pred,
                    dep.signature.inputs,
                    dep.signature.outputs,
                    dep.payload_rate,
                    request_id=rid,
                )
            if pinned is None and dep.router.shadow is not None:
                shadow = dep.router.mirror()
                if shadow is not None and shadow in dep.versions:
                    task = asyncio.get_running_loop().create_task(self._shadow(dep, dep.versions[shadow], x, pred, rid))
                    self._shadow_tasks.add(task)
                    task.add_done_callback(self._shadow_tasks.discard)
        finally:
            self.inflight -= 1

    async def _shadow(self, dep: Deployed, vs: VersionState, x: np.ndarray, served: np.ndarray, rid: str) -> None:
        # Mirrored after the main response is sent; the answer is only logged, counted and
        # compared with what the served version answered.
        if vs.batcher is None:
            return
        vs.metrics.shadow.inc()
        vs.inflight += 1
        t0 = time.perf_counter()
        try:
            pred = await vs.batcher.submit(x)
            vs.metrics.ok.inc()
            vs.metrics.observe(pred, time.perf_counter() - t0)
            vs.metrics.shadow_compared += 1
            if np.array_equal(pred, served):
                vs.metrics.shadow_agreed += 1
            if dep.payload_rate > 0 and self.runtime.payloads is not None and self._rand() < dep.payload_rate:
                self.runtime.payloads.put(
                    dep.name,
                    vs.version,
                    x,
                    pred,
                    dep.signature.inputs,
                    dep.signature.outputs,
                    dep.payload_rate,
                    request_id=rid,
                )
        except Exception:
            vs.metrics.model_errors.inc()
        finally:
            vs.inflight -= 1

    async def _infer_custom(
        self,
        send: Any,
        dep: Deployed,
        vs: VersionState,
        body: Any,
        raw: bytes,
        scope: dict[str, Any],
        v2: bool,
        t0: float,
    ) -> None:
        assert isinstance(vs.loaded, CustomModel)
        hdrs = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if v2:
            from kserve.protocol.infer_type import InferRequest

            try:
                payload: Any = InferRequest.from_bytes(raw, len(raw), dep.name)
            except Exception as exc:
                raise BadRequest(f"invalid v2 request: {exc}") from None
        else:
            if not isinstance(body, dict):
                raise BadRequest("v1 body must be a JSON object")
            payload = body
        vs.inflight += 1
        try:
            result = await vs.loaded.infer(payload, hdrs)
        except Exception as exc:
            status = 400 if type(exc).__name__ in ("InvalidInput", "ValueError", "KeyError", "TypeError") else 500
            (vs.metrics.bad if status == 400 else vs.metrics.failed).inc()
            if status == 500:
                vs.metrics.model_errors.inc()
            await _error(
                send, status, f"model {dep.name} v{vs.version}: {type(exc).__name__}: {exc}", version=vs.version
            )
            return
        finally:
            vs.inflight -= 1
        if hasattr(result, "to_rest"):
            rest, _ = result.to_rest()
            result = rest
        if v2 and isinstance(result, dict):
            result = {**result, "model_name": dep.name, "model_version": vs.version}
            if not result.get("id") and isinstance(body, dict) and body.get("id"):
                result["id"] = body["id"]
        rid = result.get("id") if isinstance(result, dict) and isinstance(result.get("id"), str) else None
        rid = rid or f"{self._id_prefix}{next(self._ids)}"
        out = codec.dumps(result)
        await _send(
            send,
            200,
            out,
            [
                *JSON_HEADERS,
                (b"x-mlp-model-version", vs.version.encode()),
                (b"x-mlp-route", vs.role.encode()),
                (b"x-request-id", rid.encode("latin-1", "replace")),
            ],
        )
        self.runtime.feedback.ledger.add(rid, dep.name, vs.version)
        vs.metrics.ok.inc()
        vs.metrics.latency.observe(time.perf_counter() - t0)

    async def _read_body(self, receive: Any) -> bytes:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise _Disconnected
        body: bytes = msg.get("body", b"")
        if not msg.get("more_body"):
            return body
        parts = [body]
        size = len(body)
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise _Disconnected
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise BadRequest(f"request body exceeds the {self.max_body} byte limit", 413)
            parts.append(chunk)
            if not msg.get("more_body"):
                return b"".join(parts)

    async def _feedback(self, scope: dict[str, Any], receive: Any, send: Any, dep: Deployed) -> None:
        length = next((v for k, v in scope["headers"] if k == b"content-length"), b"-1")
        if length.isdigit() and int(length) > self.max_body:
            raise BadRequest(f"request body of {int(length)} bytes exceeds the {self.max_body} byte limit", 413)
        body = codec.loads(await self._read_body(receive))
        if isinstance(body, dict) and "feedback" in body and set(body) == {"feedback"}:
            items = body["feedback"]
            if not isinstance(items, list):
                raise BadRequest('"feedback" must be a list of {"id", "outcome"}')
        else:
            items = [body]
        try:
            # a Parquet write: off the event loop
            n = await asyncio.get_running_loop().run_in_executor(None, self.runtime.feedback.record, dep.name, items)
        except FeedbackError as exc:
            await _problem(send, exc.status, str(exc))
            return
        await _send(send, 200, codec.dumps({"stored": n}))

    # --- batch jobs -----------------------------------------------------------------------

    async def _batch(self, scope: dict[str, Any], receive: Any, send: Any, path: str, method: str) -> None:
        if path.rstrip("/") == "/v1/batch/jobs":
            if method == "GET":
                await _send(send, 200, codec.dumps({"jobs": [j.to_dict() for j in self.jobs.jobs.values()]}))
                return
            if method != "POST":
                raise BadRequest("/v1/batch/jobs takes POST or GET", 405)
            body = codec.loads(await self._read_body(receive))
            if not isinstance(body, dict):
                raise BadRequest('batch job body must be {"model", "input", "output"[, "version"]}')
            dep = self.runtime.models.get(str(body.get("model")))
            if dep is None:
                raise BadRequest(f"model {body.get('model')!r} is not deployed here", 404)
            version = str(body["version"]) if body.get("version") is not None else dep.router.stable
            vs = dep.versions.get(version)
            if vs is None or isinstance(vs.loaded, CustomModel):
                raise BadRequest(f"model {dep.name} has no loaded native version {version!r}", 404)
            try:
                job = self.jobs.submit(
                    dep.name, version, vs.loaded.predict, dep.signature, body.get("input"), body.get("output")
                )
            except BatchError as exc:
                raise BadRequest(str(exc)) from None
            await _send(send, 202, codec.dumps(job.to_dict()))
            return
        job_id = path.rstrip("/").rsplit("/", 1)[-1]
        found = self.jobs.jobs.get(job_id)
        if found is None:
            raise BadRequest(f"no batch job {job_id!r}", 404)
        await _send(send, 200, codec.dumps(found.to_dict()))


async def _send(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*(headers or JSON_HEADERS), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _error(send: Any, status: int, message: str, *, version: str | None = None) -> None:
    headers = list(JSON_HEADERS)
    if version is not None:
        headers.append((b"x-mlp-model-version", version.encode()))
    await _send(send, status, codec.dumps({"error": message}), headers)


async def _problem(send: Any, status: int, detail: str) -> None:
    """RFC 9457 problem JSON (`error` too, like every other answer of the data plane)."""
    titles = {400: "Bad Request", 404: "Not Found", 413: "Content Too Large"}
    body = codec.dumps(
        {
            "type": "about:blank",
            "title": titles.get(status, "Error"),
            "status": status,
            "detail": detail,
            "error": detail,
        }
    )
    await _send(send, status, body, [(b"content-type", b"application/problem+json")])


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
