"""The one retry policy of every HTTP client mlp runs, on tenacity.

Used by the Kubernetes target, the GitHub/GitLab REST client and the alert receivers. A caller
hands the policy one `send` (one attempt) and says how to read its answers; the policy decides
whether to try again and how long to wait:

- retried: a connection that failed, and answers that say "try again later": 429, 502, 503, 504,
  plus what a caller adds (the API server's 500 InternalError, a Git host's rate-limit 403);
- the wait is the server's `Retry-After` (seconds or an HTTP date) when it sends one, else
  exponential backoff with jitter (`base`·2ⁿ capped at `cap`, plus up to `jitter` seconds);
- bounded: at most `attempts` tries and `budget` seconds of waiting in all. A `Retry-After` that
  would overrun the budget ends the retries at once (the last answer is handed back, for the
  caller's error), rather than sleeping past what the caller can afford;
- a request that is not idempotent (a POST that creates a comment or a pull request) is retried
  only when the server cannot have acted on it: the connection never opened, or the server
  refused it unprocessed (429, a rate limit). A server-side apply (PATCH), a GET or a DELETE is
  idempotent and is retried on every transient failure.

Sleep and clock are injectable, so tests assert the waits without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Generic, TypeVar

import tenacity

R = TypeVar("R")

# Answers that say "not now" whatever the request: the server did not do the work.
RETRY_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class Retry:
    """The verdict "try again": after `after` seconds when the server said so (`Retry-After`).

    `unprocessed`: the server (or the network) certainly did not act on the request, so even a
    request that is not idempotent may be sent again.
    """

    after: float | None = None
    unprocessed: bool = False


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """`Retry-After` in seconds: delta-seconds or an HTTP date (RFC 9110 §10.2.3); None if absent or bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now())
    except (TypeError, ValueError, IndexError):
        return None


def status_verdict(status: int, headers: Any, now: Callable[[], float] = time.time) -> Retry | None:
    """The verdict for a status every HTTP API shares: 429 and 502/503/504 are retried."""
    if status not in RETRY_STATUSES:
        return None
    after = parse_retry_after(headers.get("Retry-After") if headers else None, now)
    return Retry(after=after, unprocessed=status == 429)


def connection_verdict(exc: BaseException) -> Retry | None:
    """Retry a failed connection; `unprocessed` when it failed before the request was sent.

    Knows httpx's and urllib3's exception types (imported only if already loaded: a caller that
    uses one has imported it) and plain OSErrors such as ConnectionRefusedError.
    """
    import sys

    httpx = sys.modules.get("httpx")
    if httpx is not None and isinstance(exc, httpx.TransportError):
        unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
        return Retry(unprocessed=unsent)
    urllib3 = sys.modules.get("urllib3")
    if urllib3 is not None and isinstance(exc, urllib3.exceptions.HTTPError):
        reason = getattr(exc, "reason", None)  # MaxRetryError wraps the failure
        cause = reason if isinstance(reason, BaseException) else exc
        unsent = isinstance(cause, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError)
        return Retry(unprocessed=unsent)
    if isinstance(exc, ConnectionRefusedError):
        return Retry(unprocessed=True)
    if isinstance(exc, OSError):
        return Retry()
    return None


@dataclass
class Outcome(Generic[R]):
    """The last answer and how many times the request was sent again before it."""

    answer: R
    retries: int
    verdict: Retry | None  # not None: still retryable, but the attempts or the budget ran out


@dataclass
class RetryPolicy:
    """How often and how long to retry (see the module docstring)."""

    attempts: int = 6  # tries in all, the first included
    base: float = 0.2
    cap: float = 10.0
    jitter: float = 0.2
    budget: float = 120.0  # seconds of waiting in all, Retry-After included
    sleep: Callable[[float], None] = time.sleep
    now: Callable[[], float] = field(default=time.time)  # wall clock, for Retry-After dates

    def run(
        self,
        send: Callable[[], R],
        *,
        verdict: Callable[[R], Retry | None],
        failure: Callable[[BaseException], Retry | None] = connection_verdict,
        idempotent: bool = True,
        on_retry: Callable[[R | None, BaseException | None, float], None] | None = None,
    ) -> Outcome[R]:
        """Send until an answer is final or the policy gives up.

        An exception that `failure` does not retry, or the last one when the policy gives up, is
        raised as it is; a retryable answer when the policy gives up is handed back (with its
        verdict) for the caller's own error.
        """
        verdicts: dict[int, Retry | None] = {}

        def judge(state: tenacity.RetryCallState) -> Retry | None:
            n = state.attempt_number
            if n not in verdicts:
                outcome = state.outcome
                assert outcome is not None
                exc = outcome.exception()
                v = failure(exc) if exc is not None else verdict(outcome.result().answer)
                if v is not None and not (idempotent or v.unprocessed):
                    v = None  # it may have had an effect: sending it again could do it twice
                verdicts[n] = v
            return verdicts[n]

        backoff = tenacity.wait_exponential(multiplier=self.base, max=self.cap) + tenacity.wait_random(0, self.jitter)

        def wait(state: tenacity.RetryCallState) -> float:
            v = judge(state)
            if v is not None and v.after is not None:
                return v.after
            return float(backoff(state))

        def stop(state: tenacity.RetryCallState) -> bool:
            return state.attempt_number >= self.attempts or state.idle_for + state.upcoming_sleep > self.budget

        def before_sleep(state: tenacity.RetryCallState) -> None:
            if on_retry is not None and state.outcome is not None:
                exc = state.outcome.exception()
                on_retry(None if exc is not None else state.outcome.result().answer, exc, state.upcoming_sleep)

        def give_up(state: tenacity.RetryCallState) -> Outcome[R]:
            assert state.outcome is not None
            last: Outcome[R] = state.outcome.result()  # the last exception is raised here
            last.verdict = verdicts.get(state.attempt_number)
            return last

        sent = 0

        def attempt() -> Outcome[R]:
            nonlocal sent
            sent += 1
            return Outcome(send(), sent - 1, None)

        retrying = tenacity.Retrying(
            retry=lambda state: judge(state) is not None,
            wait=wait,
            stop=stop,
            sleep=self.sleep,
            before_sleep=before_sleep,
            retry_error_callback=give_up,
            reraise=True,
        )
        result: Outcome[R] = retrying(attempt)
        return result
