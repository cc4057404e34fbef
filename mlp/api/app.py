"""The platform REST API (`mlp server`): every function over HTTP, behind identity and RBAC.

Reads come from the repository's specs (`RepoView`) and the controller's state database;
writes either act on the controller's state (request a sync, pause a rollout: recorded
in the audit trail) or open a pull request (`Proposals`), never around Git.

Conventions, as Kubernetes and GitHub users expect them:
- `/api/v1/...`, JSON; list routes take `limit` (1..1000) and `cursor` and answer
  `{"items": [...], "nextCursor": ...}` plus an RFC 8288 `Link: <...>; rel="next"`;
  filters are query parameters;
- reads carry a strong `ETag` and honour `If-None-Match` (304);
- every error is RFC 9457 `application/problem+json` (`type`, `title`, `status`, `detail`);
- every route declares the permission it needs (`x-mlp-permission` in the OpenAPI
  document, `rbac.MATRIX`); tests/test_api_rbac.py fails for a route without one.

Other parts mount their routers with `create_app(..., routers=[...])` (the tracking
server, feature lookups): they get the same limits, errors and identity dependency
(`Api.need(permission)`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlp import __version__
from mlp.api.auditpages import AuditPages, etag_of, iso, page_body
from mlp.api.identity import (
    SESSION_COOKIE,
    TOKEN_PREFIX,
    KratosSessions,
    Principal,
    TokenStore,
    Unauthenticated,
    Unavailable,
)
from mlp.api.rbac import Grants, Permission, grants_for
from mlp.api.readers import (
    Catalog,
    MonitorReader,
    MonitorWindow,
    ReportMonitors,
    RepoView,
    RolloutControls,
    RolloutReader,
)
from mlp.controller import auditchain
from mlp.controller.store import AuditEvent, AuditLog, StateStore, connect, request_sync
from mlp.specs.models import DNS1123_LABEL, ModelVersion

log = logging.getLogger("mlp.api")

NAME = Annotated[str, PathParam(pattern=DNS1123_LABEL, min_length=1, max_length=63)]
LIMIT = Annotated[int, Query(ge=1, le=1000, description="Page size")]
CURSOR = Annotated[
    str | None, Query(pattern=r"^[a-z0-9][-a-z0-9/]{0,127}$", description="`nextCursor` of the previous page")
]
NUM_CURSOR = Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$", description="`nextCursor` of the previous page")]
PROBLEM_JSON = "application/problem+json"


# --- errors: RFC 9457 ------------------------------------------------------------------------


class Problem(BaseModel):
    type: str = "about:blank"
    title: str
    status: int
    detail: str = ""
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None


class ApiProblem(Exception):
    def __init__(self, status: int, detail: str, title: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.title, self.headers = status, detail, title, headers


_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def problem_response(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    instance: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title or _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if errors is not None:
        body["errors"] = errors
    return Response(json.dumps(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    ref = {"$ref": "#/components/schemas/Problem"}
    return {c: {"description": _TITLES.get(c, "Error"), "content": {PROBLEM_JSON: {"schema": ref}}} for c in codes}


# --- bounded bodies ---------------------------------------------------------------------------


class BodyLimit:
    """Refuse request heads over `header_limit` bytes or 100 fields (431), and bodies over `limit` bytes (413).

    uvicorn's h11 bound only applies to a head that arrives in pieces; this one holds for any.
    """

    def __init__(self, app: ASGIApp, limit: int, header_limit: int = 16 * 1024) -> None:
        self.app, self.limit, self.header_limit = app, limit, header_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        size += sum(len(n) + len(v) + 4 for n, v in headers)
        if size > self.header_limit or len(headers) > 100:
            await _send_problem(send, 431, f"request head over {self.header_limit} bytes or 100 fields")
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = True
                if too_big:
                    await _send_problem(send, 413, f"request body over {self.limit} bytes")
                    return
        # Read the whole body first (it is bounded), so an oversized stream is refused before
        # any handler runs, whatever the handler would have done with a read error.
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                await _send_problem(send, 413, f"request body over {self.limit} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _send_problem(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"type": "about:blank", "title": _TITLES[status], "status": status, "detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


# --- response shapes (the OpenAPI document; schemathesis checks responses against them) -------


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Page(BaseModel):
    items: list[Any]
    nextCursor: str | None = None


class Health(BaseModel):
    status: str
    version: str


class WhoAmI(BaseModel):
    identity: dict[str, Any]
    teams: dict[str, str]
    platformRole: str | None = None


class EnvironmentOut(BaseModel):
    name: str
    team: str | None = None
    tier: str
    target: dict[str, Any]
    branch: str
    promotesFrom: str | None = None
    approvals: dict[str, Any]
    status: dict[str, Any] | None = None


class EnvironmentPage(Page):
    items: list[EnvironmentOut]


class DeploymentOut(BaseModel):
    environment: str
    model: str
    declared: dict[str, Any]
    observed: dict[str, Any] | None = None


class DeploymentPage(Page):
    items: list[DeploymentOut]


class ModelOut(BaseModel):
    name: str
    team: str | None = None
    description: str | None = None
    framework: str
    versions: list[int]
    latestVersion: int | None = None


class ModelPage(Page):
    items: list[ModelOut]


class ModelDetail(ModelOut):
    signature: dict[str, Any]
    features: str | None = None
    deployments: list[dict[str, Any]]


class VersionOut(BaseModel):
    model: str
    version: int
    uri: str
    digest: str
    format: str | None = None
    stage: str | None = None
    metrics: dict[str, float]
    lineage: dict[str, Any] | None = None


class VersionPage(Page):
    items: list[VersionOut]


class ExperimentOut(BaseModel):
    name: str
    team: str | None = None
    model: str
    objective: dict[str, Any]
    dataset: str | None = None
    runs: list[dict[str, Any]]


class ExperimentPage(Page):
    items: list[ExperimentOut]


class MonitorOut(BaseModel):
    name: str
    team: str | None = None
    model: str
    environments: list[str]
    spec: dict[str, Any]
    latest: list[MonitorWindow] = Field(description="The newest tested windows, newest first")


class MonitorPage(Page):
    items: list[MonitorOut]


class RolloutOut(BaseModel):
    environment: str
    model: str
    team: str | None = None
    stableVersion: int
    canary: dict[str, Any]
    state: dict[str, Any] | None = None


class RolloutPage(Page):
    items: list[RolloutOut]


class AuditOut(BaseModel):
    id: int
    time: str
    environment: str
    action: str
    outcome: str
    revision: str | None = None
    author: str | None = None
    objects: list[str]
    message: str
    pr: str | None = None
    approvers: list[str] | None = None
    mergeCommit: str | None = None
    hash: str | None = None
    prevHash: str | None = None


class AuditPage(Page):
    items: list[AuditOut]


class ServedAt(BaseModel):
    environment: str
    time: str
    revision: str | None = None
    appliedAt: str | None = None
    appliedBy: str | None = None
    pr: str | None = None
    approvers: list[str]
    mergeCommit: str | None = None
    objects: list[str]


class PlanOut(BaseModel):
    environment: str
    base: str
    head: str
    valid: bool
    affected: bool
    diagnostics: list[str]
    renderError: str | None = None
    markdown: str
    plan: dict[str, Any] | None = None


class Accepted(BaseModel):
    environment: str
    action: str
    requestedBy: str
    auditRecord: int


class PullRequestOut(BaseModel):
    number: int
    url: str
    branch: str
    title: str


class NewVersion(ModelVersion):
    """A model version to register (the spec's ModelVersion; unknown fields are errors)."""

    model_config = ConfigDict(extra="forbid", strict=False)
    version: Annotated[int, Field(ge=1, le=2**31 - 1)]


class SyncRequest(Strict):
    reason: str = Field(default="", max_length=200)


# --- settings and the caller ------------------------------------------------------------------


@dataclass
class ApiSettings:
    repo: str
    state_dir: Path
    kratos_url: str | None = None
    ref: str | None = None
    max_body: int = 1 << 20
    max_header_bytes: int = 16 * 1024
    session_ttl: float = 30.0
    session_cache: int = 10_000
    refresh: float = 2.0
    proposals: Any = None  # mlp.api.proposals.Proposals, when a Git host is configured
    rollouts: RolloutReader | None = None
    monitors: MonitorReader | None = None
    routers: Sequence[APIRouter] = field(default_factory=tuple)


@dataclass
class Caller:
    principal: Principal
    grants: Grants
    permission: Permission
    catalog: Catalog

    @property
    def name(self) -> str:
        p = self.principal
        return p.email or p.username or f"{p.kind}:{p.id}"

    def sees(self, team: str | None) -> bool:
        return self.grants.can(self.permission, team)

    def require(self, team: str | None, what: str) -> None:
        if not self.sees(team):
            raise ApiProblem(403, f"{self.permission.value} on {what} needs a role in team {team or '(platform)'}")


# --- the application --------------------------------------------------------------------------


class Api:
    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.view = RepoView(settings.repo, settings.state_dir, settings.ref, refresh=settings.refresh)
        self.sessions = (
            KratosSessions(settings.kratos_url, ttl=settings.session_ttl, max_entries=settings.session_cache)
            if settings.kratos_url
            else None
        )
        self.tokens = TokenStore(settings.state_dir)
        self.state = StateStore(settings.state_dir)
        self.audit = AuditLog(settings.state_dir)
        self.controls = RolloutControls(settings.state_dir)
        self.rollouts: RolloutReader = settings.rollouts or _default_rollouts(settings.state_dir)
        self.monitors: MonitorReader = settings.monitors or ReportMonitors(settings.state_dir)
        self.plans: dict[tuple[str, str], Any] = {}  # (base sha, head sha) -> RevisionCheck, newest 16
        self.audit_pages = AuditPages(settings.state_dir)

    async def authenticate(self, request: Request) -> Principal:
        """API tokens (one indexed read) and sessions Kratos confirmed less than `session_ttl` ago
        are answered on the event loop; only a round trip to Kratos goes to a worker thread."""
        auth = request.headers.get("authorization", "")
        bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        if bearer and bearer.startswith(TOKEN_PREFIX):
            return self.tokens.authenticate(bearer)
        cookie = request.cookies.get(SESSION_COOKIE)
        token = request.headers.get("x-session-token") or bearer
        if not (token or cookie):
            raise Unauthenticated("no credentials: send an API token, an X-Session-Token or the session cookie")
        if self.sessions is None:
            raise Unauthenticated("this server has no Kratos configured: use an API token")
        session = {"cookie": f"{SESSION_COOKIE}={cookie}" if cookie else None, "token": token}
        hit = self.sessions.cached(**session)
        return hit if hit is not None else await run_in_threadpool(partial(self.sessions.authenticate, **session))

    def grants(self, principal: Principal, catalog: Catalog) -> Grants:
        p = principal
        key = (p.kind, p.id, p.email, p.username, p.token_team, p.token_role)
        grants = catalog.grants.get(key)
        if grants is None:
            if len(catalog.grants) >= 10_000:  # bounded: a flood of identities costs recomputation, not memory
                catalog.grants.clear()
            grants = catalog.grants[key] = grants_for(principal, catalog.specs)
        return grants

    def need(self, permission: Permission) -> Callable[[Request], Awaitable[Caller]]:
        """The dependency a route declares: authenticate, then require the permission in some team."""

        async def dependency(request: Request) -> Caller:
            try:
                principal = await self.authenticate(request)
            except Unauthenticated as exc:
                raise ApiProblem(401, str(exc), headers={"WWW-Authenticate": 'Bearer realm="mlp"'}) from None
            except Unavailable as exc:
                log.warning("identity provider unavailable: %s", exc)
                raise ApiProblem(503, "the identity provider is unavailable; try again later") from None
            # only the very first load of the repository waits (in a worker thread); later ones run behind
            catalog = self.view.loaded()
            if catalog is None:
                catalog = await run_in_threadpool(self.view.catalog)
            grants = self.grants(principal, catalog)
            if permission not in (Permission.public, Permission.authenticated) and not grants.any(permission):
                raise ApiProblem(403, f"{permission.value}: you hold no role that grants it in any team")
            return Caller(principal, grants, permission, catalog)

        dependency.permission = permission  # type: ignore[attr-defined]
        return dependency


def _default_rollouts(state_dir: Path) -> RolloutReader:
    from mlp.api.readers import StateRollouts

    return StateRollouts(state_dir)


def respond(
    request: Request,
    body: bytes,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
    etag: str | None = None,
) -> Response:
    """A JSON body with a strong ETag (given, or the body's hash); 304 when the client already has it."""
    etag = etag or etag_of(body)
    extra = {"ETag": etag, "Cache-Control": "private, no-cache", "X-Content-Type-Options": "nosniff", **(headers or {})}
    if request.url.scheme == "https":
        extra["Strict-Transport-Security"] = "max-age=31536000"
    if status == 200:
        match = request.headers.get("if-none-match", "")
        if match and (match.strip() == "*" or etag in [m.strip().removeprefix("W/") for m in match.split(",")]):
            return Response(status_code=304, headers=extra)
    return Response(body, status_code=status, media_type="application/json", headers=extra)


def json_response(request: Request, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return respond(request, orjson.dumps(payload, default=str), status=status, headers=headers)


def page_response(request: Request, items: list[Any] | bytes, next_key: str | None) -> Response:
    """A page of a list route: `items` as values, or as the bytes of a JSON array; `Link` to the next one."""
    body = items if isinstance(items, bytes) else orjson.dumps(items, default=str)
    return respond(request, page_body(body, next_key), headers=next_link(request, next_key))


def next_link(request: Request, next_key: str | None) -> dict[str, str]:
    """The RFC 8288 `Link` header to the next page, when there is one."""
    if not next_key:
        return {}
    url = request.url.include_query_params(cursor=next_key)
    return {"Link": f'<{url.path}?{url.query}>; rel="next"'}


@dataclass
class Paging:
    """`limit` and the key of the previous page's last item (`cursor`), as every list route takes them."""

    limit: int
    after: Any


async def _paging(limit: LIMIT = 100, cursor: CURSOR = None) -> Paging:
    return Paging(limit, cursor or None)


async def _numbered_paging(limit: LIMIT = 100, cursor: NUM_CURSOR = None) -> Paging:
    return Paging(limit, int(cursor) if cursor else None)


PAGING = Annotated[Paging, Depends(_paging)]
NUMBERED_PAGING = Annotated[Paging, Depends(_numbered_paging)]
MODEL_FILTER = Annotated[str | None, Query(max_length=63)]


def paginate(request: Request, rows: Iterable[tuple[Any, Any]], paging: Paging, out: Callable[[Any], Any]) -> Response:
    """The page after `paging.after` of (key, item) rows in ascending key order, each rendered by `out`."""
    page: list[tuple[Any, Any]] = []
    more = False
    for key, item in rows:
        if paging.after is not None and key <= paging.after:
            continue
        if len(page) == paging.limit:
            more = True
            break
        page.append((key, item))
    return page_response(request, [out(item) for _, item in page], str(page[-1][0]) if more else None)


def scoped(c: Caller, table: dict[str, Any], keep: Callable[[Any], bool] = lambda _: True) -> Iterable[tuple[str, Any]]:
    """(name, spec) of `table` in name order that the caller's teams see and `keep` accepts."""
    return ((n, e) for n, e in sorted(table.items()) if c.sees(e.metadata.team) and keep(e))


def one(c: Caller, table: dict[str, Any], kind: str, name: str) -> Any:
    """One declared spec the caller may see: 404 when it is not declared, 403 when it is another team's."""
    item = table.get(name)
    if item is None:
        raise ApiProblem(404, f"{kind} {name!r} is not declared")
    c.require(item.metadata.team, f"{kind} {name!r}")
    return item


def create_app(settings: ApiSettings) -> FastAPI:
    api = Api(settings)
    app = FastAPI(
        title="mlp platform API",
        version=__version__,
        description="Every function of mlp over REST. Authenticate with an Ory Kratos session "
        "(cookie `ory_kratos_session` or `X-Session-Token`) or an API token (`Authorization: Bearer mlp_...`).",
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/v1/openapi.json",
    )
    app.state.api = api
    app.add_middleware(BodyLimit, limit=settings.max_body, header_limit=settings.max_header_bytes)

    @app.exception_handler(ApiProblem)
    async def _problem(request: Request, exc: ApiProblem) -> Response:
        return problem_response(exc.status, exc.detail, title=exc.title, instance=request.url.path, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        return problem_response(exc.status_code, str(exc.detail), instance=request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = [
            {"location": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")}
            for e in exc.errors()[:50]
        ]
        first = errors[0] if errors else {"location": "", "message": "invalid request"}
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            return problem_response(400, f"malformed JSON: {first['message']}", instance=request.url.path)
        return problem_response(
            422, f"{first['location']}: {first['message']}", instance=request.url.path, errors=errors
        )

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> Response:  # never a traceback to the caller
        log.error("internal error on %s %s: %s", request.method, request.url.path, type(exc).__name__)
        return problem_response(500, "internal error", instance=request.url.path)

    errors = _problem_responses(400, 401, 403, 404, 422, 503)

    def route(method: str, path: str, permission: Permission, model: Any = None, status: int = 200, **kw: Any) -> Any:
        """Register a handler: its permission (`x-mlp-permission`), its documented shape and problem answers.

        Handlers return a built `Response` (the shape is the documented one by construction, so
        FastAPI does not validate it again); an `async def` handler runs on the event loop and
        must not block, a plain `def` one (Git, SQLite writes) runs in a worker thread."""

        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            app.add_api_route(
                path,
                fn,
                methods=[method],
                responses={**errors, **kw.pop("responses", {})},
                response_model=model,
                status_code=status,
                openapi_extra={"x-mlp-permission": permission.value},
                **kw,
            )
            return fn

        return deco

    def caller(permission: Permission) -> Any:
        return Depends(api.need(permission))

    # --- health and identity -------------------------------------------------------------

    @route("GET", "/healthz", Permission.public, Health, responses=_problem_responses(503))
    async def healthz(request: Request) -> Response:
        return json_response(request, {"status": "ok", "version": __version__})

    @route("GET", "/api/v1/whoami", Permission.authenticated, WhoAmI)
    async def whoami(request: Request, c: Caller = caller(Permission.authenticated)) -> Response:
        everywhere = c.grants.everywhere.value if c.grants.everywhere else None
        teams = {t: r.value for t, r in sorted(c.grants.teams.items())}
        return json_response(request, {"identity": c.principal.to_json(), "teams": teams, "platformRole": everywhere})

    # --- environments --------------------------------------------------------------------

    def env_out(env: Any) -> dict[str, Any]:
        spec = env.spec
        name = env.metadata.name
        status = api.state.load(name, details=False)
        return {
            "name": name,
            "team": env.metadata.team,
            "tier": spec.tier,
            "target": spec.target.model_dump(exclude_none=True),
            "branch": spec.branch,
            "promotesFrom": spec.promotesFrom,
            "approvals": spec.approvals.model_dump(by_alias=True),
            "status": _status_json(status) if status is not None else None,
        }

    def env_of(c: Caller, name: str) -> Any:
        return one(c, c.catalog.specs.environments, "environment", name)

    @route("GET", "/api/v1/environments", Permission.read, EnvironmentPage)
    def list_environments(
        request: Request,
        paging: PAGING,
        c: Caller = caller(Permission.read),
        team: Annotated[str | None, Query(max_length=63)] = None,
        tier: Annotated[str | None, Query(max_length=20)] = None,
    ) -> Response:
        def keep(e: Any) -> bool:
            return (team is None or e.metadata.team == team) and (tier is None or e.spec.tier == tier)

        return paginate(request, scoped(c, c.catalog.specs.environments, keep), paging, env_out)

    @route("GET", "/api/v1/environments/{env}", Permission.read, EnvironmentOut, responses=_problem_responses(404))
    def get_environment(request: Request, env: NAME, c: Caller = caller(Permission.read)) -> Response:
        out = env_out(env_of(c, env))
        status = api.state.load(env)
        if status is not None:
            out["status"] = _status_json(status, details=True)
        return json_response(request, out)

    @route("GET", "/api/v1/environments/{env}/deployments", Permission.read, DeploymentPage)
    def list_deployments(
        request: Request,
        env: NAME,
        paging: PAGING,
        c: Caller = caller(Permission.read),
        model: MODEL_FILTER = None,
    ) -> Response:
        spec = env_of(c, env).spec
        status = api.state.load(env)
        observed = {m.model: m for m in status.models} if status is not None else {}

        def out(name: str) -> dict[str, Any]:
            o = observed.get(name)
            return {
                "environment": env,
                "model": name,
                "declared": spec.deployments[name].model_dump(exclude_none=True, by_alias=True),
                "observed": {"servedVersion": o.served_version, "traffic": o.traffic} if o is not None else None,
            }

        names = ((n, n) for n in sorted(spec.deployments) if model is None or n == model)
        return paginate(request, names, paging, out)

    @route("GET", "/api/v1/environments/{env}/plan", Permission.read, PlanOut, responses=_problem_responses(409))
    def get_plan(
        request: Request,
        env: NAME,
        ref: Annotated[str, Query(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._/-]+$")],
        c: Caller = caller(Permission.read),
    ) -> Response:
        from mlp.plan import plan_to_dict
        from mlp.webhooks.prcheck import WorkspaceError, check_revisions
        from mlp.webhooks.report import report_markdown

        spec = env_of(c, env).spec
        if api.view.workspace is None or ".." in ref or ref.startswith("-"):
            raise ApiProblem(409, "plans need the repository to be a Git repository and a plain ref")
        workspace = api.view.workspace
        try:
            key = (workspace.resolve(spec.branch), workspace.resolve(ref))
            # two commits always plan the same: rendering every environment twice is the expensive part
            check = api.plans.get(key)
            if check is None:
                check = check_revisions(workspace, key[0], key[1])
                api.plans[key] = check
                while len(api.plans) > 16:
                    api.plans.pop(next(iter(api.plans)))
        except WorkspaceError as exc:
            raise ApiProblem(404, str(exc)) from None
        report = next((e for e in check.environments if e.name == env), None)
        markdown = report_markdown(
            check.base_sha,
            check.head_sha,
            [report] if report is not None else [],
            [env] if report is None else [],
            check.diagnostics,
            [str(d) for d in check.base.errors],
        )
        return json_response(
            request,
            {
                "environment": env,
                "base": check.base_sha,
                "head": check.head_sha,
                "valid": check.valid,
                "affected": report is not None,
                "diagnostics": check.diagnostics,
                "renderError": report.render_error if report is not None else None,
                "markdown": markdown,
                "plan": plan_to_dict(report.plan) if report is not None and report.plan is not None else None,
            },
        )

    @route(
        "POST",
        "/api/v1/environments/{env}/sync",
        Permission.operate,
        Accepted,
        status=202,
        responses=_problem_responses(413, 415),
    )
    def sync_environment(
        request: Request,
        env: NAME,
        body: Annotated[SyncRequest | None, Body()] = None,
        c: Caller = caller(Permission.operate),
    ) -> Response:
        env_of(c, env)
        reason = f"api: {c.name}" + (f": {body.reason}" if body and body.reason else "")
        request_sync(settings.state_dir, env, reason)
        record = api.audit.append(
            AuditEvent(env, "sync-request", "succeeded", author=c.name, message=reason, revision=c.catalog.revision)
        )
        return json_response(
            request,
            {"environment": env, "action": "sync-request", "requestedBy": c.name, "auditRecord": record},
            status=202,
        )

    # --- models --------------------------------------------------------------------------

    def model_of(c: Caller, name: str) -> Any:
        return one(c, c.catalog.specs.models, "model", name)

    @route("GET", "/api/v1/models", Permission.read, ModelPage)
    async def list_models(
        request: Request,
        paging: PAGING,
        c: Caller = caller(Permission.read),
        team: Annotated[str | None, Query(max_length=63)] = None,
        framework: Annotated[str | None, Query(max_length=20)] = None,
        prefix: Annotated[str | None, Query(max_length=63, description="Names starting with this")] = None,
    ) -> Response:
        # the catalog keeps the summaries sorted and serialised: a page is a bisection and a join
        catalog = c.catalog
        start = catalog.models_after(paging.after, prefix)
        page: list[bytes] = []
        last = newest = None
        visible: dict[str | None, bool] = {}
        for i in range(start, len(catalog.models)):
            summary = catalog.models[i]
            if prefix is not None and not summary["name"].startswith(prefix):
                break  # sorted by name: past the prefix's range
            t = summary["team"]
            if t not in visible:
                visible[t] = c.sees(t)
            if not visible[t] or (team is not None and t != team):
                continue
            if framework is not None and summary["framework"] != framework:
                continue
            if len(page) == paging.limit:
                last = newest
                break
            page.append(catalog.model_json[i])
            newest = summary["name"]
        return page_response(request, b"[" + b",".join(page) + b"]", last)

    @route("GET", "/api/v1/models/{model}", Permission.read, ModelDetail)
    async def get_model(request: Request, model: NAME, c: Caller = caller(Permission.read)) -> Response:
        from mlp.api.readers import model_summary

        m = model_of(c, model)
        deployments = [
            {"environment": n, "version": e.spec.deployments[model].version}
            for n, e in scoped(c, c.catalog.specs.environments, lambda e: model in e.spec.deployments)
        ]
        out = {
            **model_summary(m),
            "signature": m.spec.signature.model_dump(exclude_none=True),
            "features": m.spec.features,
            "deployments": deployments,
        }
        return json_response(request, out)

    def version_out(model: str, v: Any) -> dict[str, Any]:
        return {
            "model": model,
            "version": v.version,
            "uri": v.uri,
            "digest": v.digest,
            "format": v.format,
            "stage": v.stage,
            "metrics": dict(v.metrics),
            "lineage": v.lineage.model_dump(exclude_none=True) if v.lineage is not None else None,
        }

    @route("GET", "/api/v1/models/{model}/versions", Permission.read, VersionPage)
    async def list_versions(
        request: Request,
        model: NAME,
        paging: NUMBERED_PAGING,
        c: Caller = caller(Permission.read),
        stage: Annotated[str | None, Query(max_length=20)] = None,
    ) -> Response:
        versions = sorted(model_of(c, model).spec.versions, key=lambda v: v.version)
        rows = ((v.version, v) for v in versions if stage is None or v.stage == stage)
        return paginate(request, rows, paging, lambda v: version_out(model, v))

    @route("GET", "/api/v1/models/{model}/versions/{version}", Permission.read, VersionOut)
    async def get_version(
        request: Request,
        model: NAME,
        version: Annotated[int, PathParam(ge=1, le=2**31)],
        c: Caller = caller(Permission.read),
    ) -> Response:
        v = model_of(c, model).spec.version(version)
        if v is None:
            raise ApiProblem(404, f"model {model!r} has no version {version}")
        return json_response(request, version_out(model, v))

    @route(
        "POST",
        "/api/v1/models/{model}/versions",
        Permission.propose,
        PullRequestOut,
        status=201,
        responses=_problem_responses(409, 413, 415, 501, 502),
        description="Open a pull request that adds this version to the model's spec.",
    )
    def register_version(
        request: Request, model: NAME, version: NewVersion, c: Caller = caller(Permission.propose)
    ) -> Response:
        from mlp.api.proposals import ProposalError
        from mlp.webhooks.hosting import HostError

        model_of(c, model)
        if settings.proposals is None:
            raise ApiProblem(501, "this server has no Git host configured to open pull requests on")
        try:
            cr = settings.proposals.add_model_version(
                model, version.model_dump(mode="json", exclude_none=True, by_alias=True), c.name
            )
        except ProposalError as exc:
            raise ApiProblem(exc.status, str(exc)) from None
        except HostError as exc:
            raise ApiProblem(502, f"the Git host refused the pull request: {exc}") from None
        return json_response(
            request,
            {"number": cr.number, "url": cr.url, "branch": cr.head_ref, "title": cr.title},
            status=201,
        )

    # --- experiments and monitors ---------------------------------------------------------

    def experiment_out(e: Any) -> dict[str, Any]:
        return {
            "name": e.metadata.name,
            "team": e.metadata.team,
            "model": e.spec.model,
            "objective": e.spec.objective.model_dump(),
            "dataset": e.spec.dataset,
            "runs": [r.model_dump(exclude_none=True) for r in e.spec.runs],
        }

    def monitor_out(m: Any) -> dict[str, Any]:
        return {
            "name": m.metadata.name,
            "team": m.metadata.team,
            "model": m.spec.model,
            "environments": list(m.spec.environments),
            "spec": m.spec.model_dump(exclude_none=True, by_alias=True),
            "latest": api.monitors.latest(m.metadata.name),
        }

    def spec_routes(kind: str, out: Callable[[Any], dict[str, Any]], page: Any, item: Any) -> None:
        """`GET /api/v1/{kind}s` (filterable by model) and `GET /api/v1/{kind}s/{name}`."""

        def listing(
            request: Request, paging: PAGING, c: Caller = caller(Permission.read), model: MODEL_FILTER = None
        ) -> Response:
            table = getattr(c.catalog.specs, f"{kind}s")
            return paginate(request, scoped(c, table, lambda e: model is None or e.spec.model == model), paging, out)

        def detail(request: Request, name: NAME, c: Caller = caller(Permission.read)) -> Response:
            return json_response(request, out(one(c, getattr(c.catalog.specs, f"{kind}s"), kind, name)))

        listing.__name__, detail.__name__ = f"list_{kind}s", f"get_{kind}"  # the OpenAPI operation ids
        route("GET", f"/api/v1/{kind}s", Permission.read, page)(listing)
        route("GET", f"/api/v1/{kind}s/{{name}}", Permission.read, item)(detail)

    spec_routes("experiment", experiment_out, ExperimentPage, ExperimentOut)
    spec_routes("monitor", monitor_out, MonitorPage, MonitorOut)

    # --- rollouts ------------------------------------------------------------------------

    def rollout_out(key: tuple[Any, str]) -> dict[str, Any]:
        e, model = key
        env = e.metadata.name
        d = e.spec.deployments[model]
        return {
            "environment": env,
            "model": model,
            "team": e.metadata.team,
            "stableVersion": d.version,
            "canary": d.canary.model_dump(exclude_none=True) if d.canary is not None else {},
            "state": api.rollouts.state(env, model),
        }

    @route("GET", "/api/v1/rollouts", Permission.read, RolloutPage)
    def list_rollouts(
        request: Request,
        paging: PAGING,
        c: Caller = caller(Permission.read),
        environment: Annotated[str | None, Query(max_length=63)] = None,
    ) -> Response:
        rows = [
            (f"{n}/{m}", (e, m))
            for n, e in scoped(c, c.catalog.specs.environments, lambda e: environment in (None, e.metadata.name))
            for m, d in e.spec.deployments.items()
            if d.canary is not None
        ]
        # in the order of the cursor's comparison ("dev-2/..." before "dev/...")
        return paginate(request, sorted(rows, key=lambda row: row[0]), paging, rollout_out)

    def rollout_of(c: Caller, env: str, model: str) -> Any:
        e = env_of(c, env)
        d = e.spec.deployments.get(model)
        if d is None or d.canary is None:
            raise ApiProblem(404, f"environment {env!r} has no rollout of {model!r}")
        return e

    @route("GET", "/api/v1/environments/{env}/rollouts/{model}", Permission.read, RolloutOut)
    def get_rollout(request: Request, env: NAME, model: NAME, c: Caller = caller(Permission.read)) -> Response:
        return json_response(request, rollout_out((rollout_of(c, env, model), model)))

    def control(request: Request, c: Caller, env: str, model: str, paused: bool) -> Response:
        rollout_of(c, env, model)
        action = "rollout-pause" if paused else "rollout-resume"
        api.controls.set_paused(env, model, paused, c.name)
        record = api.audit.append(
            AuditEvent(env, action, "succeeded", author=c.name, objects=[f"Rollout/{env}/{model}"], message=action)
        )
        return json_response(
            request, {"environment": env, "action": action, "requestedBy": c.name, "auditRecord": record}, status=202
        )

    @route("POST", "/api/v1/environments/{env}/rollouts/{model}/pause", Permission.operate, Accepted, status=202)
    def pause_rollout(request: Request, env: NAME, model: NAME, c: Caller = caller(Permission.operate)) -> Response:
        return control(request, c, env, model, True)

    @route("POST", "/api/v1/environments/{env}/rollouts/{model}/resume", Permission.operate, Accepted, status=202)
    def resume_rollout(request: Request, env: NAME, model: NAME, c: Caller = caller(Permission.operate)) -> Response:
        return control(request, c, env, model, False)

    # --- audit ---------------------------------------------------------------------------

    @route("GET", "/api/v1/audit", Permission.audit, AuditPage)
    async def list_audit(
        request: Request,
        paging: NUMBERED_PAGING,
        c: Caller = caller(Permission.audit),
        environment: Annotated[str | None, Query(max_length=63)] = None,
        action: Annotated[str | None, Query(max_length=40)] = None,
        since: Annotated[datetime | None, Query(description="ISO-8601 time")] = None,
    ) -> Response:
        envs = visible_envs(c) if c.grants.everywhere is None else None
        if environment is not None:
            if envs is not None and environment not in envs:
                raise ApiProblem(403, f"audit of environment {environment!r} needs a role in its team")
            envs = [environment]
        sql, params = "SELECT * FROM audit WHERE 1=1", []  # type: tuple[str, list[Any]]
        if envs is not None:
            sql += f" AND environment IN ({','.join('?' for _ in envs)})"
            params += envs
        if action:
            sql += " AND action = ?"
            params.append(action)
        if since is not None:
            sql += " AND time >= ?"
            params.append(since.timestamp() if since.tzinfo else since.replace(tzinfo=UTC).timestamp())
        if paging.after is not None:
            sql += " AND id < ?"
            params.append(paging.after)
        sql += " ORDER BY id DESC"
        # a page is rendered once per database version (and per query): repeated reads of an
        # unchanged trail, and their 304s, cost a version check
        page = api.audit_pages.cached(sql, params, paging.limit)
        if page is None:
            page = await run_in_threadpool(api.audit_pages.render, sql, params, paging.limit)
        body, etag, next_key = page
        return respond(request, body, etag=etag, headers=next_link(request, next_key))

    def visible_envs(c: Caller) -> list[str]:
        return [n for n, e in c.catalog.specs.environments.items() if c.sees(e.metadata.team)]

    @route("GET", "/api/v1/audit/served", Permission.audit, ServedAt)
    def served(
        request: Request,
        environment: Annotated[str, Query(pattern=DNS1123_LABEL, max_length=63)],
        time_: Annotated[datetime, Query(alias="time", description="ISO-8601 time")],
        c: Caller = caller(Permission.audit),
    ) -> Response:
        """What served ENVIRONMENT at TIME, from which commit, approved by whom."""
        env = c.catalog.specs.environments.get(environment)
        c.require(env.metadata.team if env is not None else None, f"environment {environment!r}")
        at = time_.timestamp() if time_.tzinfo else time_.replace(tzinfo=UTC).timestamp()
        conn = connect(settings.state_dir)
        try:
            found = auditchain.served_at(conn, environment, at)
        finally:
            conn.close()
        out = {
            "environment": environment,
            "time": iso(at),
            "revision": found["revision"] if found else None,
            "appliedAt": iso(found["appliedAt"]) if found else None,
            "appliedBy": found["appliedBy"] if found else None,
            "pr": found["pr"] if found else None,
            "approvers": found["approvers"] if found else [],
            "mergeCommit": found["mergeCommit"] if found else None,
            "objects": found["objects"] if found else [],
        }
        return json_response(request, out)

    for extra in settings.routers:  # the tracking server, feature lookups, ...
        app.include_router(extra)
    _install_openapi(app)
    return app


def _status_json(status: Any, details: bool = False) -> dict[str, Any]:
    out = {
        "syncStatus": status.sync_status,
        "health": status.health,
        "revision": status.revision,
        "syncedRevision": status.synced_revision,
        "syncedAt": iso(status.synced_at),
        "message": status.message,
        "errors": list(status.errors),
        "updatedAt": iso(status.updated_at),
    }
    if details:
        out["models"] = [
            {"model": m.model, "servedVersion": m.served_version, "traffic": m.traffic} for m in status.models
        ]
        out["objects"] = [
            {"ref": o.ref, "syncStatus": o.sync_status, "health": o.health, "message": o.message}
            for o in status.objects
        ]
    return out


def _install_openapi(app: FastAPI) -> None:
    """Add the Problem schema and the security schemes to the generated document."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = original()
        components = doc.setdefault("components", {})
        components.setdefault("schemas", {})["Problem"] = Problem.model_json_schema()
        components["securitySchemes"] = {
            "apiToken": {"type": "http", "scheme": "bearer", "description": "mlp API token (mlp token create)"},
            "sessionToken": {"type": "apiKey", "in": "header", "name": "X-Session-Token"},
            "sessionCookie": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE},
        }
        doc["security"] = [{"apiToken": []}, {"sessionToken": []}, {"sessionCookie": []}]
        for path in doc.get("paths", {}).values():
            for operation in path.values():
                # FastAPI documents its own 422 shape; ours is a Problem
                if "422" in operation.get("responses", {}):
                    operation["responses"]["422"] = {
                        "description": "Unprocessable Content",
                        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
                    }
                if operation.get("x-mlp-permission") == Permission.public.value:
                    operation["security"] = []
        for unused in ("HTTPValidationError", "ValidationError"):
            components["schemas"].pop(unused, None)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def openapi_document(app: FastAPI) -> str:
    return json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"
