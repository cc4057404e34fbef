"""A local stand-in for Ory Kratos' public API, as far as mlp uses it.

It follows the documented endpoint and shapes (Kratos v1 public API; the `Session` and
`Identity` models of `ory-kratos-client`):

- `GET /sessions/whoami`: the session for the `ory_kratos_session` cookie, the
  `X-Session-Token` header or `Authorization: Bearer <session token>`; 200 with the
  Session JSON and the `X-Kratos-Authenticated-Identity-Id` header; 401 with Kratos'
  error envelope (`{"error": {"id": "session_inactive", "code": 401, ...}}`) when
  there are no credentials or the session is unknown, inactive or expired;
- `GET /health/alive`, `GET /health/ready`.

Tests create identities and sessions with `add_session(...)` (Kratos' admin API would do
this on a real server: see `tests/test_api_identity.py` for how tests get a session
there). `calls` counts whoami requests.
"""

from __future__ import annotations

import secrets
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class StoredSession:
    token: str
    body: dict[str, Any]
    expires_at: datetime
    active: bool = True


class KratosStandIn:
    def __init__(self) -> None:
        self.sessions: dict[str, StoredSession] = {}
        self.calls = 0
        self._lock = threading.Lock()
        self.app = self._build()

    def add_session(
        self,
        email: str,
        *,
        username: str | None = None,
        expires_in: timedelta = timedelta(hours=1),
        active: bool = True,
    ) -> tuple[str, dict[str, Any]]:
        """A new identity with a session; returns (session token, identity)."""
        now = datetime.now(UTC)
        identity_id = str(uuid.uuid4())
        traits: dict[str, Any] = {"email": email}
        if username:
            traits["username"] = username
        identity = {
            "id": identity_id,
            "schema_id": "default",
            "schema_url": "http://127.0.0.1/schemas/ZGVmYXVsdA",
            "state": "active",
            "state_changed_at": _iso(now),
            "traits": traits,
            "verifiable_addresses": [
                {
                    "id": str(uuid.uuid4()),
                    "value": email,
                    "verified": False,
                    "via": "email",
                    "status": "sent",
                    "created_at": _iso(now),
                    "updated_at": _iso(now),
                }
            ],
            "recovery_addresses": [
                {
                    "id": str(uuid.uuid4()),
                    "value": email,
                    "via": "email",
                    "created_at": _iso(now),
                    "updated_at": _iso(now),
                }
            ],
            "metadata_public": None,
            "created_at": _iso(now),
            "updated_at": _iso(now),
            "organization_id": None,
        }
        token = "ory_st_" + secrets.token_urlsafe(24)
        expires = now + expires_in
        body = {
            "id": str(uuid.uuid4()),
            "active": active,
            "expires_at": _iso(expires),
            "authenticated_at": _iso(now),
            "authenticator_assurance_level": "aal1",
            "authentication_methods": [{"method": "password", "aal": "aal1", "completed_at": _iso(now)}],
            "issued_at": _iso(now),
            "identity": identity,
            "devices": [{"id": str(uuid.uuid4()), "ip_address": "127.0.0.1", "user_agent": "test", "location": ""}],
        }
        with self._lock:
            self.sessions[token] = StoredSession(token, body, expires, active)
        return token, identity

    def expire(self, token: str) -> None:
        with self._lock:
            self.sessions[token].expires_at = datetime.now(UTC) - timedelta(seconds=1)

    def revoke(self, token: str) -> None:
        with self._lock:
            self.sessions[token].active = False

    def _build(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        standin = self

        def unauthorized() -> JSONResponse:
            return JSONResponse(
                {
                    "error": {
                        "id": "session_inactive",
                        "code": 401,
                        "status": "Unauthorized",
                        "reason": "No active session was found in this request.",
                        "message": "request does not have a valid authentication session",
                    }
                },
                status_code=401,
            )

        @app.get("/sessions/whoami")
        def whoami(request: Request) -> JSONResponse:
            standin.calls += 1
            token = request.headers.get("x-session-token") or request.cookies.get("ory_kratos_session")
            auth = request.headers.get("authorization", "")
            if not token and auth.lower().startswith("bearer "):
                token = auth[7:].strip()
            with standin._lock:
                session = standin.sessions.get(token or "")
            if session is None or not session.active or session.expires_at <= datetime.now(UTC):
                return unauthorized()
            return JSONResponse(
                session.body, headers={"X-Kratos-Authenticated-Identity-Id": session.body["identity"]["id"]}
            )

        @app.get("/health/alive")
        def alive() -> dict[str, str]:
            return {"status": "ok"}

        @app.get("/health/ready")
        def ready() -> dict[str, str]:
            return {"status": "ok"}

        return app
