"""The MLflow REST protocol over HTTP: the routes the unmodified `mlflow` client calls.

`tracking_router(service)` is a FastAPI APIRouter (mount it in `mlp server`);
`create_app(state_dir)` is the standalone app `mlp tracking serve` runs. Routes answer under
`/api/2.0/mlflow/...` (and `/ajax-api/2.0/mlflow/...`, which MLflow's UI uses) with MLflow's
JSON shapes; errors are `{"error_code": ..., "message": ...}` with MLflow's HTTP status.
The `mlflow-artifacts` proxy streams uploads and downloads; request bodies other than
artifacts are bounded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from mlp.tracking.artifacts import ArtifactBackend, backend_for, safe_path
from mlp.tracking.errors import TrackingError
from mlp.tracking.store import Batch, TrackingStore

log = logging.getLogger(__name__)
MAX_JSON_BODY = 16 * 1024 * 1024
DEFAULT_MAX_ARTIFACT = 10 * 1024**3
PREFIXES = ("/api/2.0/mlflow", "/ajax-api/2.0/mlflow")
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"


@dataclass
class TrackingService:
    """A store and an artifact backend: what every route needs."""

    store: TrackingStore
    artifacts: ArtifactBackend
    max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT

    def close(self) -> None:
        self.store.close()


def open_service(
    state_dir: Path,
    database_url: str | None = None,
    artifacts: str | None = None,
    s3_endpoint_url: str | None = None,
    max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT,
) -> TrackingService:
    """SQLite at <state>/tracking.db and artifacts under <state>/artifacts unless told otherwise."""
    state_dir.mkdir(parents=True, exist_ok=True)
    url = database_url or f"sqlite:///{state_dir / 'tracking.db'}"
    backend = backend_for(artifacts or str(state_dir / "artifacts"), state_dir / "spool", s3_endpoint_url)
    return TrackingService(TrackingStore(url), backend, max_artifact_bytes)


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _error(exc: TrackingError) -> Response:
    return _json(exc.body(), exc.status)


async def _body(request: Request) -> dict[str, Any]:
    if request.method == "GET":
        params: dict[str, Any] = {}
        for key, value in request.query_params.multi_items():
            if key in params:
                prev = params[key]
                params[key] = [*prev, value] if isinstance(prev, list) else [prev, value]
            else:
                params[key] = value
        return params
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_JSON_BODY:
        raise TrackingError(f"Request body of {declared} bytes exceeds the limit of {MAX_JSON_BODY}", "BAD_REQUEST")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_JSON_BODY:
            raise TrackingError(f"Request body exceeds the limit of {MAX_JSON_BODY} bytes", "BAD_REQUEST")
    if not raw.strip():
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:  # NaN / Infinity literals, which Python's json writes and orjson refuses
            data = json.loads(raw)
        except ValueError as exc:
            raise TrackingError(f"Malformed JSON request body: {exc}", "MALFORMED_REQUEST") from None
    if not isinstance(data, dict):
        raise TrackingError("Malformed request body: expected a JSON object", "MALFORMED_REQUEST")
    return data


def _float(value: Any, name: str = "value") -> float:
    if isinstance(value, bool):
        raise TrackingError(f"Invalid value {value!r} for parameter '{name}' supplied: expected a number")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)  # "NaN", "Infinity", "-Infinity" as protobuf's JSON writes them
        except ValueError:
            pass
    raise TrackingError(f"Invalid value {value!r} for parameter '{name}' supplied: expected a number")


def _int(value: Any, name: str, default: int | None = None) -> int | None:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise TrackingError(f"Invalid value {value!r} for parameter '{name}' supplied: expected an integer")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise TrackingError(f"Invalid value {value!r} for parameter '{name}' supplied: expected an integer") from None


def _str(body: dict[str, Any], name: str, *, required: bool = True) -> str:
    value = body.get(name)
    if value is None or value == "":
        if required:
            raise TrackingError(
                f"Missing value for required parameter '{name}'. See the API docs for more information about request parameters."
            )
        return ""
    if not isinstance(value, str):
        raise TrackingError(f"Invalid value {value!r} for parameter '{name}' supplied: expected a string")
    return value


def _run_id(body: dict[str, Any]) -> str:
    value = body.get("run_id") or body.get("run_uuid")
    if not value:
        raise TrackingError(
            "Missing value for required parameter 'run_id'. See the API docs for more information about request parameters."
        )
    if not isinstance(value, str):
        raise TrackingError(f"Invalid value {value!r} for parameter 'run_id' supplied: expected a string")
    return value


def _pairs(items: Any, name: str) -> list[tuple[str, str]]:
    if items is None:
        return []
    if not isinstance(items, list):
        raise TrackingError(f"Invalid value for parameter '{name}': expected a list")
    out = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            raise TrackingError(f"Invalid entry in '{name}': {str(item)[:80]}")
        value = item.get("value", "")
        out.append((item["key"], "" if value is None else str(value)))
    return out


def _metrics(items: Any, default_ts: int) -> list[tuple[str, float, int, int]]:
    if items is None:
        return []
    if not isinstance(items, list):
        raise TrackingError("Invalid value for parameter 'metrics': expected a list")
    out = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            raise TrackingError(f"Invalid metric: {str(item)[:80]}")
        if "value" not in item:
            raise TrackingError(f"Missing value for required parameter 'metrics[{item['key']}].value'")
        ts = _int(item.get("timestamp"), "timestamp", default_ts)
        step = _int(item.get("step"), "step", 0)
        out.append((item["key"], _float(item["value"]), ts or 0, step or 0))
    return out


Handler = Callable[[TrackingService, dict[str, Any]], Any]


def _handlers() -> dict[tuple[str, str], Handler]:
    from mlp.tracking.store import now_ms

    def create_experiment(s: TrackingService, b: dict[str, Any]) -> Any:
        name = _str(b, "name")
        return {
            "experiment_id": s.store.create_experiment(
                name, b.get("artifact_location") or None, _pairs(b.get("tags"), "tags")
            )
        }

    def get_experiment(s: TrackingService, b: dict[str, Any]) -> Any:
        return {"experiment": s.store.get_experiment(_str(b, "experiment_id"))}

    def get_experiment_by_name(s: TrackingService, b: dict[str, Any]) -> Any:
        return {"experiment": s.store.get_experiment_by_name(_str(b, "experiment_name"))}

    def search_experiments(s: TrackingService, b: dict[str, Any]) -> Any:
        flt = b.get("filter") or ""
        name_like = None
        if flt:
            # the client's common filters: name = 'x' / name LIKE 'x%'
            import re

            m = re.fullmatch(r"\s*(?:attribute\.)?name\s*(=|LIKE|ILIKE)\s*'([^']*)'\s*", flt, re.IGNORECASE)
            if not m:
                raise TrackingError(
                    f"Unsupported experiment filter {flt!r}: mlp supports name = '...' and name LIKE '...'"
                )
            name_like = m.group(2)
        exps, token = s.store.search_experiments(
            str(b.get("view_type") or "ACTIVE_ONLY"),
            _int(b.get("max_results"), "max_results", 1000) or 1000,
            b.get("page_token"),
            name_like,
        )
        out: dict[str, Any] = {"experiments": exps}
        if token:
            out["next_page_token"] = token
        return out

    def set_experiment_tag(s: TrackingService, b: dict[str, Any]) -> Any:
        s.store.set_experiment_tag(_str(b, "experiment_id"), _str(b, "key"), str(b.get("value", "")))
        return {}

    def create_run(s: TrackingService, b: dict[str, Any]) -> Any:
        run = s.store.create_run(
            b.get("experiment_id") or "0",
            b.get("user_id") or None,
            _int(b.get("start_time"), "start_time"),
            _pairs(b.get("tags"), "tags"),
            b.get("run_name") or None,
        )
        return {"run": run}

    def get_run(s: TrackingService, b: dict[str, Any]) -> Any:
        return {"run": s.store.get_run(_run_id(b))}

    def update_run(s: TrackingService, b: dict[str, Any]) -> Any:
        info = s.store.update_run(
            _run_id(b), b.get("status") or None, _int(b.get("end_time"), "end_time"), b.get("run_name") or None
        )
        return {"run_info": info}

    def delete_run(s: TrackingService, b: dict[str, Any]) -> Any:
        s.store.delete_run(_run_id(b))
        return {}

    def restore_run(s: TrackingService, b: dict[str, Any]) -> Any:
        s.store.restore_run(_run_id(b))
        return {}

    def log_metric(s: TrackingService, b: dict[str, Any]) -> Any:
        key = _str(b, "key")
        if "value" not in b:
            raise TrackingError(
                "Missing value for required parameter 'value'. See the API docs for more information about request parameters."
            )
        ts = _int(b.get("timestamp"), "timestamp", now_ms()) or 0
        s.store.log_batch(
            _run_id(b), Batch(metrics=[(key, _float(b["value"]), ts, _int(b.get("step"), "step", 0) or 0)])
        )
        return {}

    def log_param(s: TrackingService, b: dict[str, Any]) -> Any:
        s.store.log_batch(_run_id(b), Batch(params=[(_str(b, "key"), str(b.get("value", "")))]))
        return {}

    def set_tag(s: TrackingService, b: dict[str, Any]) -> Any:
        s.store.log_batch(_run_id(b), Batch(tags=[(_str(b, "key"), str(b.get("value", "")))]))
        return {}

    def delete_tag(s: TrackingService, b: dict[str, Any]) -> Any:
        s.store.delete_tag(_run_id(b), _str(b, "key"))
        return {}

    def log_batch(s: TrackingService, b: dict[str, Any]) -> Any:
        batch = Batch(
            _metrics(b.get("metrics"), now_ms()), _pairs(b.get("params"), "params"), _pairs(b.get("tags"), "tags")
        )
        s.store.log_batch(_run_id(b), batch)
        return {}

    def log_model(s: TrackingService, b: dict[str, Any]) -> Any:
        run_id = _run_id(b)
        model_json = _str(b, "model_json")
        try:
            model = json.loads(model_json)
        except ValueError:
            raise TrackingError("Malformed model info. \n model_json is not valid JSON") from None
        run = s.store.get_run(run_id)
        history = next(
            (t["value"] for t in run["data"].get("tags", []) if t["key"] == "mlflow.log-model.history"), "[]"
        )
        models = [*json.loads(history), model]
        s.store.log_batch(run_id, Batch(tags=[("mlflow.log-model.history", json.dumps(models))]))
        return {}

    def log_inputs(s: TrackingService, b: dict[str, Any]) -> Any:
        s.store.log_inputs(_run_id(b), b.get("datasets") or [], b.get("models") or [])
        return {}

    def log_outputs(s: TrackingService, b: dict[str, Any]) -> Any:
        s.store.log_outputs(_run_id(b), b.get("models") or [])
        return {}

    def search_runs(s: TrackingService, b: dict[str, Any]) -> Any:
        exp_ids = b.get("experiment_ids") or []
        if isinstance(exp_ids, str):
            exp_ids = [exp_ids]
        order_by = b.get("order_by") or []
        if isinstance(order_by, str):
            order_by = [order_by]
        found, token = s.store.search_runs(
            exp_ids,
            b.get("filter") or None,
            str(b.get("run_view_type") or "ACTIVE_ONLY"),
            _int(b.get("max_results"), "max_results", 1000) or 1000,
            order_by,
            b.get("page_token") or None,
        )
        out: dict[str, Any] = {}
        if found:
            out["runs"] = found
        if token:
            out["next_page_token"] = token
        return out

    def metric_history(s: TrackingService, b: dict[str, Any]) -> Any:
        points, token = s.store.get_metric_history(
            _run_id(b), _str(b, "metric_key"), _int(b.get("max_results"), "max_results"), b.get("page_token") or None
        )
        out: dict[str, Any] = {"metrics": points}
        if token:
            out["next_page_token"] = token
        return out

    def list_run_artifacts(s: TrackingService, b: dict[str, Any]) -> Any:
        run = s.store.get_run(_run_id(b))
        rel = _artifact_rel(run["info"]["artifact_uri"], b.get("path") or "")
        files = [f.json() for f in s.artifacts.list(rel)]
        prefix = rel.split("/artifacts", 1)[0] + "/artifacts"
        for f in files:
            f["path"] = f["path"][len(prefix) + 1 :]
        return {"root_uri": run["info"]["artifact_uri"], "files": files}

    def create_logged_model(s: TrackingService, b: dict[str, Any]) -> Any:
        doc = {k: b[k] for k in ("name", "model_type", "source_run_id", "params", "tags") if b.get(k)}
        return {"model": _logged_model_json(s.store.create_logged_model(_str(b, "experiment_id"), doc))}

    def search_logged_models(s: TrackingService, b: dict[str, Any]) -> Any:
        return {"models": [_logged_model_json(d) for d in s.store.search_logged_models(b.get("experiment_ids") or [])]}

    return {
        ("POST", "experiments/create"): create_experiment,
        ("GET", "experiments/get"): get_experiment,
        ("GET", "experiments/get-by-name"): get_experiment_by_name,
        ("POST", "experiments/search"): search_experiments,
        ("GET", "experiments/search"): search_experiments,
        ("POST", "experiments/set-experiment-tag"): set_experiment_tag,
        ("POST", "runs/create"): create_run,
        ("GET", "runs/get"): get_run,
        ("POST", "runs/update"): update_run,
        ("POST", "runs/delete"): delete_run,
        ("POST", "runs/restore"): restore_run,
        ("POST", "runs/log-metric"): log_metric,
        ("POST", "runs/log-parameter"): log_param,
        ("POST", "runs/set-tag"): set_tag,
        ("POST", "runs/delete-tag"): delete_tag,
        ("POST", "runs/log-batch"): log_batch,
        ("POST", "runs/log-model"): log_model,
        ("POST", "runs/log-inputs"): log_inputs,
        ("POST", "runs/outputs"): log_outputs,
        ("POST", "runs/search"): search_runs,
        ("GET", "metrics/get-history"): metric_history,
        ("GET", "artifacts/list"): list_run_artifacts,
        ("POST", "logged-models"): create_logged_model,
        ("POST", "logged-models/search"): search_logged_models,
    }


def _logged_model_json(doc: dict[str, Any]) -> dict[str, Any]:
    info = {k: v for k, v in doc.items() if k not in ("params", "metrics")}
    data: dict[str, Any] = {}
    if doc.get("params"):
        data["params"] = doc["params"]
    if doc.get("metrics"):
        data["metrics"] = doc["metrics"]
    return {"info": info, "data": data}


async def _answer(service: TrackingService, handler: Handler, request: Request) -> Response:
    try:
        body = await _body(request)
        # the event loop's own executor: a lighter hop to a thread than anyio's for these short calls
        return _json(await asyncio.get_running_loop().run_in_executor(None, handler, service, body))
    except TrackingError as exc:
        return _error(exc)
    except Exception:  # a bug or a database failure: MLflow's error shape, the traceback in the log
        log.exception("tracking request %s %s failed", request.method, request.url.path)
        return _json({"error_code": "INTERNAL_ERROR", "message": "Internal error; see the server log"}, 500)


class JsonRoutes:
    """MLflow's fixed-path JSON routes answered straight from the ASGI scope, in front of `app`.

    Every tracking call of a training script is one of these small requests; looking the path up
    in a dict and answering skips FastAPI's route scan, dependency solving and middleware stack,
    which cost more per request than the database work. Anything else (artifacts, logged models
    by id, unknown paths) goes to `app`.
    """

    def __init__(self, service: TrackingService, app: ASGIApp) -> None:
        self.service = service
        self.app = app
        self.routes = {
            (method, f"{prefix}/{path}"): handler
            for prefix in PREFIXES
            for (method, path), handler in _handlers().items()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            handler = self.routes.get((scope["method"], scope["path"]))
            if handler is not None:
                response = await _answer(self.service, handler, Request(scope, receive))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _artifact_rel(artifact_uri: str, path: str) -> str:
    """The artifact store path of `path` under a run's `mlflow-artifacts:/...` URI."""
    base = artifact_uri.split(":", 1)[1].lstrip("/") if artifact_uri.startswith("mlflow-artifacts:") else artifact_uri
    rel = safe_path(path)
    return f"{base}/{rel}" if rel else base


def tracking_router(service: TrackingService) -> APIRouter:
    """The MLflow REST routes and the `mlflow-artifacts` proxy over one service."""
    router = APIRouter()
    handlers = _handlers()

    def make(handler: Handler) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        async def endpoint(request: Request) -> Response:
            return await _answer(service, handler, request)

        return endpoint

    for prefix in PREFIXES:
        for (method, path), handler in handlers.items():
            router.add_api_route(f"{prefix}/{path}", make(handler), methods=[method], include_in_schema=False)

        async def logged_model(request: Request, model_id: str) -> Response:
            try:
                if request.method == "GET":
                    doc = await run_in_threadpool(service.store.get_logged_model, model_id)
                else:
                    body = await _body(request)
                    changes: dict[str, Any] = {}
                    if body.get("status"):
                        changes["status"] = body["status"]
                    doc = await run_in_threadpool(service.store.update_logged_model, model_id, changes)
                return _json({"model": _logged_model_json(doc)})
            except TrackingError as exc:
                return _error(exc)

        async def logged_model_part(request: Request, model_id: str, part: str) -> Response:
            try:
                body = await _body(request)
                if part == "tags":
                    doc = await run_in_threadpool(
                        service.store.update_logged_model, model_id, {"tags": body.get("tags") or []}
                    )
                elif part == "params":
                    doc = await run_in_threadpool(
                        service.store.update_logged_model, model_id, {"params": body.get("params") or []}
                    )
                else:
                    raise TrackingError(f"Unsupported logged-model operation {part!r}", "ENDPOINT_NOT_FOUND")
                return _json({"model": _logged_model_json(doc)})
            except TrackingError as exc:
                return _error(exc)

        router.add_api_route(
            f"{prefix}/logged-models/{{model_id}}", logged_model, methods=["GET", "PATCH"], include_in_schema=False
        )
        router.add_api_route(
            f"{prefix}/logged-models/{{model_id}}/{{part}}",
            logged_model_part,
            methods=["PATCH", "POST"],
            include_in_schema=False,
        )

    async def list_artifacts(request: Request) -> Response:
        try:
            path = request.query_params.get("path", "")
            files = await run_in_threadpool(service.artifacts.list, path)
            out: dict[str, Any] = {}
            if files:
                out["files"] = [
                    {**f.json(), "path": f.path.rsplit("/", 1)[-1] if "/" in f.path else f.path} for f in files
                ]
            return _json(out)
        except TrackingError as exc:
            return _error(exc)

    async def artifact(request: Request, path: str) -> Response:
        try:
            if request.method == "PUT":

                async def chunks() -> AsyncIterator[bytes]:
                    async for chunk in request.stream():
                        if chunk:
                            yield chunk

                await service.artifacts.upload(path, chunks(), service.max_artifact_bytes)
                return _json({})
            if request.method == "DELETE":
                await run_in_threadpool(service.artifacts.delete, path)
                return _json({})
            stream, size = await run_in_threadpool(service.artifacts.open, path)
            headers = {
                "Content-Length": str(size),
                "Content-Disposition": f'attachment; filename="{os.path.basename(path)}"',
            }
            return StreamingResponse(stream, media_type="application/octet-stream", headers=headers)
        except TrackingError as exc:
            return _error(exc)

    router.add_api_route(ARTIFACTS, list_artifacts, methods=["GET"], include_in_schema=False)
    router.add_api_route(
        f"{ARTIFACTS}/{{path:path}}", artifact, methods=["GET", "PUT", "DELETE"], include_in_schema=False
    )

    async def health() -> Response:
        return Response("OK", media_type="text/plain")

    router.add_api_route("/health", health, methods=["GET"], include_in_schema=False)
    router.add_api_route(
        "/version", lambda: Response("mlp", media_type="text/plain"), methods=["GET"], include_in_schema=False
    )
    return router


def create_app(service: TrackingService) -> JsonRoutes:
    """A standalone app: the router, and MLflow's error shape for paths it does not serve."""
    app = FastAPI(title="mlp tracking", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(tracking_router(service))

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> Response:
        return _json(
            {"error_code": "ENDPOINT_NOT_FOUND", "message": f"No endpoint {request.method} {request.url.path}"}, 404
        )

    @app.exception_handler(405)
    async def bad_method(request: Request, exc: Exception) -> Response:
        return _json(
            {
                "error_code": "ENDPOINT_NOT_FOUND",
                "message": f"Method {request.method} not allowed on {request.url.path}",
            },
            405,
        )

    return JsonRoutes(service, app)
