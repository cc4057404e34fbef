"""Who is calling: Ory Kratos sessions and mlp's own API tokens.

- `KratosSessions` asks Kratos' public API (`FrontendApi.to_session`, i.e. `GET
  /sessions/whoami`) with the browser's session cookie or the `X-Session-Token` header,
  and caches the answer briefly: at most `ttl` seconds, never past the session's own
  `expires_at`, at most `max_entries` sessions (least recently used out first). Only
  valid sessions are cached, under a SHA-256 of the credential, so a flood of invalid
  credentials costs Kratos round trips but no memory. Kratos unreachable → `Unavailable`
  (the API answers 503): never an open door.
- `TokenStore`: machine identities. `mlp token create --team T --role R --expires 30d`
  prints a token once (`mlp_<id>_<secret>`); only the SHA-256 of the secret is stored,
  compared with `hmac.compare_digest`. Tokens are revocable and listed without secrets.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from mlp.controller.store import connect

SESSION_COOKIE = "ory_kratos_session"
TOKEN_PREFIX = "mlp_"
_TOKEN = re.compile(r"^mlp_([a-z0-9]{12})_([A-Za-z0-9_-]{43})$")


class Unauthenticated(Exception):
    """No credentials, or credentials that are invalid, expired or revoked (401)."""


class Unavailable(Exception):
    """The identity provider cannot be asked (503)."""


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    kind: str  # "session" | "token"
    id: str  # Kratos identity id, or the token id
    email: str | None = None
    username: str | None = None
    traits: dict[str, Any] = field(default_factory=dict)
    # API tokens carry their grant; session users get theirs from the Team specs
    token_team: str | None = None
    token_role: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "email": self.email, "username": self.username, "traits": self.traits}


# --- Kratos ---------------------------------------------------------------------------------


class KratosSessions:
    def __init__(self, url: str, *, ttl: float = 30.0, max_entries: int = 10_000, timeout: float = 3.0) -> None:
        import ory_kratos_client

        configuration = ory_kratos_client.Configuration(host=url.rstrip("/"))
        configuration.retries = 0  # type: ignore[assignment]  # one attempt: the caller's request is waiting
        self._client = ory_kratos_client.ApiClient(configuration)
        self._api = ory_kratos_client.FrontendApi(self._client)
        self.url = url
        self.ttl = ttl
        self.max_entries = max_entries
        self.timeout = timeout
        self._cache: OrderedDict[str, tuple[float, Principal]] = OrderedDict()
        self._lock = threading.Lock()
        self.calls = 0  # round trips to Kratos (observable in tests)

    def close(self) -> None:
        self._client.rest_client.pool_manager.clear()

    def __len__(self) -> int:
        return len(self._cache)

    def authenticate(self, *, cookie: str | None = None, token: str | None = None) -> Principal:
        if not cookie and not token:
            raise Unauthenticated("no session: send the ory_kratos_session cookie or an X-Session-Token header")
        hit = self.cached(cookie=cookie, token=token)
        if hit is not None:
            return hit
        key = _cache_key(cookie, token)
        now = time.time()
        principal, expires = self._ask(cookie, token)
        with self._lock:
            self._cache[key] = (min(now + self.ttl, expires), principal)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return principal

    def cached(self, *, cookie: str | None = None, token: str | None = None) -> Principal | None:
        """The principal of a session validated less than `ttl` ago (and not past its expiry), or None:
        no round trip, so an async caller can answer without leaving the event loop."""
        if not cookie and not token:
            return None
        key = _cache_key(cookie, token)
        now = time.time()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                if hit[0] > now:
                    self._cache.move_to_end(key)
                    return hit[1]
                del self._cache[key]
        return None

    def _ask(self, cookie: str | None, token: str | None) -> tuple[Principal, float]:
        from ory_kratos_client.exceptions import ApiException, OpenApiException
        from urllib3.exceptions import HTTPError as TransportError

        self.calls += 1
        try:
            session = self._api.to_session(x_session_token=token, cookie=cookie, _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status in (401, 403):  # 403: the session needs a second factor (aal2)
                raise Unauthenticated("the session is not valid (expired, revoked or unknown)") from None
            if exc.status and 400 <= exc.status < 500:
                raise Unauthenticated(f"Kratos refused the session: HTTP {exc.status}") from None
            raise Unavailable(f"Kratos answered HTTP {exc.status}") from None
        except (TransportError, OSError) as exc:
            raise Unavailable(f"Kratos is unreachable: {type(exc).__name__}") from None
        except (OpenApiException, ValueError) as exc:
            raise Unavailable(f"Kratos sent an answer mlp cannot read: {type(exc).__name__}") from None
        now = time.time()
        expires_at: datetime | None = session.expires_at
        expires = expires_at.timestamp() if expires_at is not None else now + self.ttl
        if session.active is False or expires <= now or session.identity is None:
            raise Unauthenticated("the session is not active")
        identity = session.identity
        traits = identity.traits if isinstance(identity.traits, dict) else {}
        email = traits.get("email") if isinstance(traits.get("email"), str) else None
        username = traits.get("username") if isinstance(traits.get("username"), str) else None
        return Principal("session", identity.id, email=email, username=username, traits=traits), expires


def _cache_key(cookie: str | None, token: str | None) -> str:
    return hashlib.sha256(f"{cookie or ''}\0{token or ''}".encode()).hexdigest()


# --- API tokens -----------------------------------------------------------------------------

_TOKENS_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_tokens (
    id TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL,
    team TEXT NOT NULL,
    role TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL
);
"""


@dataclass
class TokenInfo:
    id: str
    team: str
    role: str
    description: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    def to_json(self) -> dict[str, Any]:
        def iso(t: float | None) -> str | None:
            from datetime import UTC

            return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds") if t else None

        return {
            "id": self.id,
            "team": self.team,
            "role": self.role,
            "description": self.description,
            "createdAt": iso(self.created_at),
            "expiresAt": iso(self.expires_at),
            "revokedAt": iso(self.revoked_at),
        }


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenStore:
    """API tokens in the state database (`api_tokens`), secrets hashed."""

    def __init__(self, state_dir: str | Path) -> None:
        self._conn = connect(state_dir)
        self._conn.executescript(_TOKENS_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._conn.close()

    def create(self, team: str, role: str, *, expires_in: float | None, description: str = "") -> tuple[str, TokenInfo]:
        """A new token; the returned string is the only time the secret exists outside the caller."""
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        now = time.time()
        info = TokenInfo(token_id, team, role, description, now, now + expires_in if expires_in else None, None)
        with self._lock:
            self._conn.execute(
                "INSERT INTO api_tokens (id, secret_sha256, team, role, description, created_at, expires_at)"
                " VALUES (?,?,?,?,?,?,?)",
                (token_id, _digest(secret), team, role, description, now, info.expires_at),
            )
        return f"{TOKEN_PREFIX}{token_id}_{secret}", info

    def list(self) -> list[TokenInfo]:
        with self._lock:
            rows = list(self._conn.execute("SELECT * FROM api_tokens ORDER BY created_at"))
        return [self._info(r) for r in rows]

    @staticmethod
    def _info(r: Any) -> TokenInfo:
        return TokenInfo(
            r["id"], r["team"], r["role"], r["description"], r["created_at"], r["expires_at"], r["revoked_at"]
        )

    def revoke(self, token_id: str) -> bool:
        with self._lock:
            cur = self._conn.execute(
                "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (time.time(), token_id)
            )
        return cur.rowcount > 0

    def authenticate(self, token: str) -> Principal:
        match = _TOKEN.match(token)
        # The same work whether or not the id exists, so timing tells nothing about which ids are real.
        presented = _digest(match.group(2) if match else token)
        with self._lock:
            row = (
                self._conn.execute("SELECT * FROM api_tokens WHERE id = ?", (match.group(1),)).fetchone()
                if match
                else None
            )
        stored = row["secret_sha256"] if row is not None else _digest(secrets.token_urlsafe(32))
        if not hmac.compare_digest(presented, stored) or row is None:
            raise Unauthenticated("invalid API token")
        if row["revoked_at"] is not None:
            raise Unauthenticated("the API token was revoked")
        if row["expires_at"] is not None and row["expires_at"] <= time.time():
            raise Unauthenticated("the API token expired")
        return Principal(
            "token", row["id"], username=f"token:{row['id']}", token_team=row["team"], token_role=row["role"]
        )


def parse_duration(text: str) -> float:
    """`30d`, `12h`, `90m`, `3600s`, `2w` → seconds."""
    match = re.fullmatch(r"(\d+)([smhdw])", text.strip())
    if not match:
        raise ValueError(f"not a duration: {text!r} (use 30m, 12h, 30d, 2w)")
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]
