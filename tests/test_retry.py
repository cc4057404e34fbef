"""mlp's one retry policy (mlp/retry.py) and its callers, against real HTTP servers on 127.0.0.1.

Each server answers from a script (429, 503, a dropped connection, then 200); the tests count the
requests it received and record the waits through the injected sleep, so nothing here depends on
how fast the machine is.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from mlp.monitors.alerts import Alerter, Condition
from mlp.retry import Retry, RetryPolicy, parse_retry_after, status_verdict
from mlp.webhooks.github import GitHubClient
from mlp.webhooks.hosting import HostError, RestClient

DROP = "drop"  # read the request, then close the connection without an answer


class Scripted:
    """Answers each request with the next scripted (status, headers) or DROP; 200 when the script is done."""

    def __init__(self, *script: tuple[int, dict[str, str]] | str) -> None:
        self.script = list(script)
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                if n:
                    self.rfile.read(n)
                with owner.lock:
                    owner.requests.append((self.command, self.path))
                    step = owner.script.pop(0) if owner.script else (200, {})
                if step == DROP:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                assert not isinstance(step, str)
                status, headers = step
                body = json.dumps({"id": 1, "body": "ok", "message": f"answer {status}"}).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted() -> Iterator[Any]:
    servers: list[Scripted] = []

    def make(*script: tuple[int, dict[str, str]] | str) -> Scripted:
        servers.append(Scripted(*script))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(policy: RetryPolicy, method: str, url: str, *, idempotent: bool = True) -> Any:
    with httpx.Client(timeout=5) as http:
        return policy.run(
            lambda: http.request(method, url),
            verdict=lambda r: status_verdict(r.status_code, r.headers, policy.now),
            idempotent=idempotent,
        )


# ---- the policy --------------------------------------------------------------------------------


def test_429_then_503_then_200_honours_retry_after_then_backs_off(scripted: Any) -> None:
    server = scripted((429, {"Retry-After": "3"}), (503, {}))
    slept: list[float] = []
    outcome = _run(RetryPolicy(base=0.2, jitter=0.2, sleep=slept.append), "GET", server.url + "/x")
    assert outcome.answer.status_code == 200 and outcome.retries == 2 and outcome.verdict is None
    assert server.requests == [("GET", "/x")] * 3
    assert slept[0] == 3.0  # the server's Retry-After, exactly
    assert 0.4 <= slept[1] <= 0.6  # second retry: 0.2 * 2 plus up to 0.2 of jitter


def test_retry_after_as_an_http_date(scripted: Any) -> None:
    now = 1_800_000_000.0
    when = format_datetime(datetime.fromtimestamp(now + 7, UTC), usegmt=True)
    server = scripted((503, {"Retry-After": when}))
    slept: list[float] = []
    outcome = _run(RetryPolicy(sleep=slept.append, now=lambda: now), "GET", server.url)
    assert outcome.answer.status_code == 200 and len(server.requests) == 2
    assert slept == [7.0]


def test_attempts_are_bounded_and_the_backoff_grows(scripted: Any) -> None:
    server = scripted(*[(503, {})] * 10)
    slept: list[float] = []
    policy = RetryPolicy(attempts=5, base=0.1, cap=0.5, jitter=0.05, sleep=slept.append)
    outcome = _run(policy, "GET", server.url)
    assert len(server.requests) == 5 and outcome.retries == 4
    assert outcome.answer.status_code == 503 and outcome.verdict == Retry()  # still retryable: the caller's error
    for wait, expected in zip(slept, [0.1, 0.2, 0.4, 0.5], strict=True):  # capped at 0.5
        assert expected <= wait <= expected + 0.05


def test_a_retry_after_beyond_the_budget_ends_the_retries_at_once(scripted: Any) -> None:
    server = scripted((429, {"Retry-After": "3600"}))
    slept: list[float] = []
    outcome = _run(RetryPolicy(budget=60, sleep=slept.append), "GET", server.url)
    assert len(server.requests) == 1 and slept == []
    assert outcome.answer.status_code == 429 and outcome.verdict.after == 3600


def test_the_budget_bounds_the_total_wait(scripted: Any) -> None:
    server = scripted(*[(503, {"Retry-After": "4"})] * 10)
    slept: list[float] = []
    _run(RetryPolicy(attempts=10, budget=10, sleep=slept.append), "GET", server.url)
    assert slept == [4.0, 4.0] and len(server.requests) == 3


def test_a_post_is_sent_again_only_when_the_server_did_not_act_on_it(scripted: Any) -> None:
    slept: list[float] = []
    policy = RetryPolicy(sleep=slept.append)
    unavailable = scripted((503, {}))
    assert _run(policy, "POST", unavailable.url, idempotent=False).answer.status_code == 503
    assert len(unavailable.requests) == 1  # the 503 may have come after the work was done

    dropped = scripted(DROP)
    with pytest.raises(httpx.RemoteProtocolError):
        _run(policy, "POST", dropped.url, idempotent=False)
    assert len(dropped.requests) == 1  # sent, no answer: it may have been done

    limited = scripted((429, {"Retry-After": "1"}))
    assert _run(policy, "POST", limited.url, idempotent=False).answer.status_code == 200
    assert len(limited.requests) == 2  # a 429 is refused unprocessed
    assert slept == [1.0]


def test_a_dropped_connection_is_retried_for_an_idempotent_request(scripted: Any) -> None:
    server = scripted(DROP)
    outcome = _run(RetryPolicy(sleep=lambda s: None), "GET", server.url)
    assert outcome.answer.status_code == 200 and len(server.requests) == 2


def test_connection_refused_is_retried_even_for_a_post() -> None:
    slept: list[float] = []
    with pytest.raises(httpx.ConnectError):
        _run(RetryPolicy(attempts=3, sleep=slept.append), "POST", f"http://127.0.0.1:{_free_port()}", idempotent=False)
    assert len(slept) == 2  # the request never left: three tries


def test_parse_retry_after() -> None:
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=lambda: 1445412470.0) == 10.0


# ---- its callers -------------------------------------------------------------------------------


def test_rest_client_retries_a_503_and_a_rate_limit_on_a_get(scripted: Any) -> None:
    server = scripted((503, {}), (403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1000000010"}))
    slept: list[float] = []
    rest = RestClient(server.url, {}, sleep=slept.append)
    rest.retry.now = lambda: 1_000_000_000.0
    assert rest.json("GET", "/repos/a/b/pulls/1")["id"] == 1
    assert len(server.requests) == 3 and rest.retries == 2
    assert slept[1] == pytest.approx(10.05)  # the rate limit's reset time, plus a margin


def test_an_unavailable_host_asking_for_a_long_wait_is_its_own_error_not_a_rate_limit(scripted: Any) -> None:
    server = scripted((503, {"Retry-After": "3600"}), (429, {"Retry-After": "3600"}))
    slept: list[float] = []
    rest = RestClient(server.url, {}, sleep=slept.append)
    with pytest.raises(HostError, match="HTTP 503") as err:
        rest.json("GET", "/repos/a/b")
    assert "rate limited" not in str(err.value)
    with pytest.raises(HostError, match="rate limited for 3600s"):
        rest.json("GET", "/repos/a/b")
    assert len(server.requests) == 2 and slept == []  # neither waited an hour


def test_github_client_never_creates_twice_on_a_doubt(scripted: Any) -> None:
    slept: list[float] = []
    server = scripted((502, {}), DROP)
    gh = GitHubClient("t", server.url)
    gh.rest.retry.sleep = slept.append
    with pytest.raises(HostError, match="HTTP 502"):
        gh.create_comment("a/b", 1, "hello")
    with pytest.raises(HostError, match="RemoteProtocolError"):
        gh.open_change_request("a/b", "feature", "main", "title")
    assert [m for m, _ in server.requests] == ["POST", "POST"] and slept == []


def test_github_client_retries_what_is_safe_to_repeat(scripted: Any) -> None:
    slept: list[float] = []
    # one transient failure for each call, then its answer
    server = scripted((503, {}), (200, {}), (504, {}), (200, {}), (429, {"retry-after": "2"}))
    gh = GitHubClient("t", server.url)
    gh.rest.retry.sleep = slept.append
    gh.set_status("a/b", "abc", "mlp/plan", "success", "ok")  # the newest status per context wins
    gh.update_comment("a/b", 1, 1, "body")  # replaces the body
    gh.create_comment("a/b", 1, "hello")  # refused unprocessed (429): safe
    assert server.requests == [
        ("POST", "/repos/a/b/statuses/abc"),
        ("POST", "/repos/a/b/statuses/abc"),
        ("PATCH", "/repos/a/b/issues/comments/1"),
        ("PATCH", "/repos/a/b/issues/comments/1"),
        ("POST", "/repos/a/b/issues/1/comments"),
        ("POST", "/repos/a/b/issues/1/comments"),
    ]
    assert len(slept) == 3 and slept[2] == 2.0


def test_alert_delivery_is_retried(scripted: Any) -> None:
    server = scripted((503, {"Retry-After": "1"}), (502, {}))
    slept: list[float] = []
    events: list[dict[str, Any]] = []
    alerter = Alerter([{"type": "webhook", "url": server.url + "/hook"}], audit=events.append, sleep=slept.append)
    alerter.update([Condition("data-drift", True, "drift", {})], now=1000.0)
    assert len(server.requests) == 3 and slept[0] == 1.0
    assert events[0]["delivered"] == ["webhook"]
