"""Authenticity of webhook deliveries: GitHub's HMAC signature and GitLab's secret token.

GitHub signs the raw request body: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`.
GitLab sends the configured secret token in plain text in `X-Gitlab-Token`. Both are
compared in constant time so a timing side channel reveals nothing about the secret.
"""

from __future__ import annotations

import hashlib
import hmac


def github_signature(secret: bytes, body: bytes) -> str:
    """The `X-Hub-Signature-256` value GitHub sends for `body`."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_github(secret: bytes, body: bytes, header: str | None) -> bool:
    """True when `header` is the HMAC-SHA256 signature of `body` under `secret`."""
    if not header or not header.startswith("sha256="):
        return False
    return hmac.compare_digest(github_signature(secret, body).encode(), header.strip().encode())


def verify_gitlab(token: str, header: str | None) -> bool:
    """True when the `X-Gitlab-Token` header equals the configured secret token."""
    if not header:
        return False
    return hmac.compare_digest(token.encode(), header.encode())
