"""What the PR flow needs from a Git host, independent of GitHub or GitLab.

`GitHost` is the protocol the flow is written against; `mlp.webhooks.github` and
`mlp.webhooks.gitlab` implement it over their REST APIs. `RestClient` is the shared
HTTP layer: token auth, mlp's retry policy (a rate limit's `Retry-After`, or the reset time
in `X-RateLimit-Reset` / `RateLimit-Reset`; transient 5xx for idempotent calls) and pagination.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

import httpx

from mlp.governance import Review
from mlp.retry import Retry, RetryPolicy, parse_retry_after, status_verdict

StatusState = Literal["pending", "success", "failure", "error"]
COMMENT_MARKER = "<!-- mlp:plan -->"


class HostError(Exception):
    """The Git host refused or failed a request; the message names the call and the reason."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ChangeRequest:
    """A pull request (GitHub) or merge request (GitLab) as the flow needs it."""

    number: int
    author: str
    head_sha: str
    base_ref: str
    head_ref: str
    base_sha: str = ""
    state: str = "open"  # open | closed | merged
    merged: bool = False
    merge_commit_sha: str | None = None
    head_pushed_at: datetime | None = None
    title: str = ""
    url: str = ""


@dataclass(frozen=True)
class Comment:
    id: int
    body: str
    author: str = ""


class GitHost(Protocol):
    provider: str

    def change_request(self, repo: str, number: int) -> ChangeRequest: ...

    def reviews(self, repo: str, cr: ChangeRequest) -> list[Review]: ...

    def set_status(
        self, repo: str, sha: str, context: str, state: StatusState, description: str, target_url: str | None = None
    ) -> None: ...

    def comments(self, repo: str, number: int) -> list[Comment]: ...

    def create_comment(self, repo: str, number: int, body: str) -> Comment: ...

    def update_comment(self, repo: str, number: int, comment_id: int, body: str) -> Comment: ...

    def open_change_request(self, repo: str, head: str, base: str, title: str, body: str = "") -> ChangeRequest: ...


def upsert_comment(host: GitHost, repo: str, number: int, body: str, marker: str = COMMENT_MARKER) -> Comment:
    """Update the one comment carrying `marker` in place, or create it; the body gets the marker."""
    if marker not in body:
        body = f"{marker}\n{body}"
    for comment in host.comments(repo, number):
        if marker in comment.body:
            if comment.body == body:
                return comment
            return host.update_comment(repo, number, comment.id, body)
    return host.create_comment(repo, number, body)


def parse_time(value: Any) -> datetime | None:
    """ISO-8601 timestamps as both hosts send them (`Z` or an offset)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


class RestClient:
    """httpx with auth headers, mlp's retry policy (`mlp.retry`) and pagination.

    Rate limits are honoured for any method (the host refused the request unprocessed); a 502,
    503 or 504 and a dropped connection are retried only for idempotent requests: GET, PUT,
    DELETE, and the calls a caller marks `idempotent=True` (setting a commit status, replacing a
    comment's body). Creating a comment or a pull request is never sent twice on a doubt.
    """

    IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
        max_wait: float = 120.0,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)
        self.retry = RetryPolicy(attempts=max_retries + 1, budget=max_wait, sleep=sleep)
        self.retries = 0  # how many times a request was sent again (observable in tests and logs)

    def close(self) -> None:
        self.http.close()

    def verdict(self, response: httpx.Response) -> Retry | None:
        """Whether to send the request again: a rate limit (`Retry-After`, or the reset time once the
        remaining count is 0; GitHub's secondary limit may say neither: a minute), or a 502/503/504."""
        h = response.headers
        now = self.retry.now
        if response.status_code not in (403, 429):
            return status_verdict(response.status_code, h, now)
        if h.get("retry-after"):
            return Retry(after=parse_retry_after(h["retry-after"], now) or 60.0, unprocessed=True)
        remaining = h.get("x-ratelimit-remaining") or h.get("ratelimit-remaining")
        reset = h.get("x-ratelimit-reset") or h.get("ratelimit-reset")
        if remaining == "0" and reset:
            try:
                return Retry(after=max(0.0, float(reset) - now()) + 0.05, unprocessed=True)
            except ValueError:
                return Retry(after=60.0, unprocessed=True)
        return Retry(after=60.0, unprocessed=True) if response.status_code == 429 else None

    def request(self, method: str, url: str, *, idempotent: bool | None = None, **kwargs: Any) -> httpx.Response:
        def counted(*_: Any) -> None:
            self.retries += 1

        try:
            outcome = self.retry.run(
                lambda: self.http.request(method, url, **kwargs),
                verdict=self.verdict,
                idempotent=method in self.IDEMPOTENT if idempotent is None else idempotent,
                on_retry=counted,
            )
        except httpx.HTTPError as exc:
            raise HostError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        response = outcome.answer
        after = outcome.verdict.after if outcome.verdict is not None else None
        if after is not None and response.status_code in (403, 429) and outcome.retries < self.retry.attempts - 1:
            # given up early: waiting as long as the host asks would overrun the policy's budget
            raise HostError(f"{method} {url}: rate limited for {after:.0f}s (more than {self.retry.budget:.0f}s)", 429)
        if response.status_code >= 400:
            try:
                detail = response.json()
                message = detail.get("message") or detail.get("error") or detail
            except ValueError:
                message = response.text[:200]
            raise HostError(f"{method} {url}: HTTP {response.status_code}: {message}", response.status_code)
        return response

    def json(self, method: str, url: str, **kwargs: Any) -> Any:
        response = self.request(method, url, **kwargs)
        return response.json() if response.content else None

    def paginate(self, url: str, params: dict[str, Any] | None = None, per_page: int = 100) -> Iterator[Any]:
        """Items of every page: follows `Link: rel="next"` (GitHub, GitLab) or `X-Next-Page` (GitLab)."""
        query: dict[str, Any] | None = {**(params or {}), "per_page": per_page}
        next_url: str | None = url
        while next_url:
            response = self.request("GET", next_url, params=query)
            page = response.json()
            if not isinstance(page, list):
                raise HostError(f"GET {next_url}: expected a list, got {type(page).__name__}")
            yield from page
            link = response.links.get("next", {}).get("url")  # httpx parses the RFC 8288 Link header
            if link:
                next_url, query = link, None  # the link carries every query parameter
            elif response.headers.get("x-next-page"):
                next_url = url
                query = {**(params or {}), "per_page": per_page, "page": response.headers["x-next-page"]}
            else:
                next_url = None
