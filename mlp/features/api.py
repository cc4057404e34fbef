"""The `/v1/features` routes as a FastAPI `APIRouter`, to mount in `mlp server`.

No `from __future__ import annotations` here: FastAPI reads the handlers' annotations at
runtime to recognise `Request`. The handlers delegate to `FeatureService.ahandle`, so both
servers answer the same bytes; the hosting app bounds bodies and connections.
"""

from typing import Any

from fastapi import APIRouter, Request, Response


def make_router(service: Any) -> APIRouter:
    r = APIRouter(tags=["features"])

    async def summary(request: Request) -> Response:
        status, out = await service.ahandle("GET", "/v1/features", b"", None)
        return Response(out, status_code=status, media_type="application/json")

    async def view(request: Request, view: str) -> Response:
        body = await request.body() if request.method == "POST" else None
        status, out = await service.ahandle(request.method, f"/v1/features/{view}", request.url.query.encode(), body)
        return Response(out, status_code=status, media_type="application/json")

    r.add_api_route("/v1/features", summary, methods=["GET"])
    r.add_api_route("/v1/features/{view}", view, methods=["GET", "POST"])
    return r
