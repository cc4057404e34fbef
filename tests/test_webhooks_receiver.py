"""The webhook receiver over real HTTP: signatures, tokens, replay, size limit, background work."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from standins.github_api import serve

from mlp.webhooks.events import ChangeRequestEvent, Event, PingEvent, PushEvent, parse_github, parse_gitlab
from mlp.webhooks.receiver import ReceiverConfig, WebhookReceiver
from mlp.webhooks.signatures import github_signature, verify_github
from mlp.webhooks.store import DeliveryStore

pytestmark = pytest.mark.timeout(60)

SECRET = b"It's a Secret to Everybody"
TOKEN = "gitlab-secret-token"


class Recorder:
    """The receiver's event handler seam: records what reached the background worker."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.threads: set[str] = set()

    def __call__(self, event: Event) -> None:
        self.threads.add(threading.current_thread().name)
        self.events.append(event)


@pytest.fixture
def receiver(tmp_path: Path):
    recorder = Recorder()
    rx = WebhookReceiver(
        ReceiverConfig(github_secret=SECRET, gitlab_token=TOKEN, max_body_bytes=1024 * 1024),
        recorder,
        DeliveryStore(tmp_path / "deliveries.db"),
    )
    rx.start()
    with serve(rx.app) as url:
        yield rx, recorder, url
    rx.stop()


def gh_headers(body: bytes, event: str, delivery: str | None = None, secret: bytes = SECRET) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": github_signature(secret, body),
    }


def test_documented_test_vector() -> None:
    expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert github_signature(SECRET, b"Hello, World!") == expected
    assert verify_github(SECRET, b"Hello, World!", expected)
    assert not verify_github(SECRET, b"Hello, World!", expected.replace("7", "8"))
    assert not verify_github(SECRET, b"Hello, World!", expected.removeprefix("sha256="))


def test_github_signature_cases(receiver, fixtures_dir: Path) -> None:
    rx, recorder, url = receiver
    body = (fixtures_dir / "github" / "push.json").read_bytes()
    endpoint = f"{url}/webhooks/github"

    ok = httpx.post(endpoint, content=body, headers=gh_headers(body, "push", "d-1"))
    assert ok.status_code == 202, ok.text
    assert ok.json() == {"status": "queued", "delivery": "d-1"}

    wrong = httpx.post(endpoint, content=body, headers=gh_headers(body, "push", "d-2", secret=b"not the secret"))
    assert wrong.status_code == 401
    assert "does not match" in wrong.json()["error"]

    missing = gh_headers(body, "push", "d-3")
    del missing["X-Hub-Signature-256"]
    unsigned = httpx.post(endpoint, content=body, headers=missing)
    assert unsigned.status_code == 401
    assert "missing X-Hub-Signature-256" in unsigned.json()["error"]

    tampered = body.replace(b"refs/heads/master", b"refs/heads/mister")
    modified = httpx.post(endpoint, content=tampered, headers=gh_headers(body, "push", "d-4"))
    assert modified.status_code == 401

    replay = httpx.post(endpoint, content=body, headers=gh_headers(body, "push", "d-1"))
    assert replay.status_code == 200 and replay.json()["status"] == "duplicate"
    # The same signed body replayed under a fresh delivery id is a replay too.
    replay2 = httpx.post(endpoint, content=body, headers=gh_headers(body, "push", "d-5"))
    assert replay2.json()["status"] == "duplicate"

    assert rx.drain(10)
    assert len(recorder.events) == 1, "only the one valid, first delivery reaches the handler"
    push = recorder.events[0]
    assert isinstance(push, PushEvent) and push.branch == "master"
    assert push.after == "fd489864e7642b48eaad6e3f155c10e46810ec72"
    assert all(name.startswith("mlp-webhooks-") for name in recorder.threads), "work runs on a worker thread"
    assert rx.stats.rejected == 3 and rx.stats.duplicates == 2
    assert rx.store.counts() == {"done": 1}


def test_github_unconfigured_secret_refuses_everything(tmp_path: Path, fixtures_dir: Path) -> None:
    rx = WebhookReceiver(ReceiverConfig(github_secret=None, gitlab_token=None), Recorder())
    with serve(rx.app) as url:
        body = (fixtures_dir / "github" / "ping.json").read_bytes()
        r = httpx.post(f"{url}/webhooks/github", content=body, headers=gh_headers(body, "ping"))
        assert r.status_code == 503
        r = httpx.post(
            f"{url}/webhooks/gitlab", content=b"{}", headers={"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "x"}
        )
        assert r.status_code == 503


def test_gitlab_token_cases(receiver, fixtures_dir: Path) -> None:
    rx, recorder, url = receiver
    body = (fixtures_dir / "gitlab" / "merge_request.open.json").read_bytes()
    endpoint = f"{url}/webhooks/gitlab"
    base = {"Content-Type": "application/json", "X-Gitlab-Event": "Merge Request Hook"}

    ok = httpx.post(endpoint, content=body, headers={**base, "X-Gitlab-Token": TOKEN, "Idempotency-Key": "k-1"})
    assert ok.status_code == 202
    wrong = httpx.post(endpoint, content=body, headers={**base, "X-Gitlab-Token": "guess", "Idempotency-Key": "k-2"})
    assert wrong.status_code == 401
    missing = httpx.post(endpoint, content=body, headers={**base, "Idempotency-Key": "k-3"})
    assert missing.status_code == 401
    retry = httpx.post(endpoint, content=body, headers={**base, "X-Gitlab-Token": TOKEN, "Idempotency-Key": "k-1"})
    assert retry.json()["status"] == "duplicate"
    # Older GitLab: no Idempotency-Key, the event UUID identifies the delivery.
    note = (fixtures_dir / "gitlab" / "note.json").read_bytes()
    first = httpx.post(
        endpoint,
        content=note,
        headers={**base, "X-Gitlab-Event": "Note Hook", "X-Gitlab-Token": TOKEN, "X-Gitlab-Event-UUID": "u-1"},
    )
    assert first.status_code == 202
    assert rx.drain(10)
    assert len(recorder.events) == 1  # the note is not a /mlp command, so it is parsed and ignored
    mr = recorder.events[0]
    assert isinstance(mr, ChangeRequestEvent) and (mr.kind, mr.number, mr.base_ref) == ("check", 1, "master")
    assert rx.store.counts() == {"done": 2}


def test_thirty_megabyte_body_refused_before_it_is_sent(receiver) -> None:
    """The server answers 413 from Content-Length while the client has sent only 64 KiB of 30 MB."""
    rx, recorder, url = receiver
    host, port = url.removeprefix("http://").split(":")
    total = 30 * 1024 * 1024
    head = (
        f"POST /webhooks/github HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"X-GitHub-Event: push\r\nX-GitHub-Delivery: big-1\r\nX-Hub-Signature-256: sha256={'0' * 64}\r\n"
        f"Content-Length: {total}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(head + b"x" * 65536)
        sent = 65536
        sock.settimeout(5)
        response = sock.recv(65536).decode(errors="replace")
    assert response.startswith("HTTP/1.1 413"), response[:200]
    assert sent < total // 100
    assert "exceeds the limit" in response
    assert recorder.events == [] and rx.store.counts() == {}


def test_chunked_body_over_limit_stops_reading(receiver) -> None:
    """Without Content-Length the receiver stops at the limit (1 MiB here) instead of buffering 30 MB."""
    rx, _, url = receiver
    produced = 0
    total = 30 * 1024 * 1024

    def chunks():
        nonlocal produced
        while produced < total:
            produced += 65536
            yield b"y" * 65536

    try:
        status: int | None = httpx.post(
            f"{url}/webhooks/github",
            content=chunks(),
            headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + "0" * 64},
            timeout=10,
        ).status_code
    except httpx.HTTPError:
        status = None  # the server answered 413 and closed the connection while we were still sending
    assert status in (413, None)
    assert produced < total, f"client was able to send all {produced} bytes"
    assert rx.store.counts() == {}


def test_answers_fast_while_work_is_slow(tmp_path: Path, fixtures_dir: Path) -> None:
    done = threading.Event()

    def slow(event: Event) -> None:
        time.sleep(1.5)
        done.set()

    rx = WebhookReceiver(ReceiverConfig(github_secret=SECRET), slow, DeliveryStore(tmp_path / "d.db"))
    rx.start()
    try:
        with serve(rx.app) as url:
            body = (fixtures_dir / "github" / "ping.json").read_bytes()
            started = time.perf_counter()
            r = httpx.post(f"{url}/webhooks/github", content=body, headers=gh_headers(body, "ping"))
            elapsed = time.perf_counter() - started
            assert r.status_code == 202 and elapsed < 1.0
            assert not done.is_set()
            assert rx.drain(10) and done.is_set()
    finally:
        rx.stop()


def test_unfinished_deliveries_resume_after_restart(tmp_path: Path, fixtures_dir: Path) -> None:
    body = (fixtures_dir / "github" / "push.json").read_bytes()
    store = DeliveryStore(tmp_path / "d.db")
    assert store.add("pending-1", "github", "push", body)  # accepted, then the process died
    store.close()
    recorder = Recorder()
    rx = WebhookReceiver(ReceiverConfig(github_secret=SECRET), recorder, DeliveryStore(tmp_path / "d.db"))
    rx.start()
    assert rx.drain(10)
    rx.stop()
    assert [type(e) for e in recorder.events] == [PushEvent]
    assert rx.store.counts() == {"done": 1}


def test_every_fixture_parses(fixtures_dir: Path) -> None:
    kinds = {}
    for path in sorted((fixtures_dir / "github").glob("*.json")):
        event = path.name.split(".")[0]
        kinds[path.name] = parse_github(event, json.loads(path.read_text()))
    assert isinstance(kinds["ping.json"], PingEvent)
    assert kinds["pull_request.opened.json"].kind == "check"  # type: ignore[union-attr]
    assert kinds["pull_request.synchronize.json"].kind == "check"  # type: ignore[union-attr]
    assert kinds["pull_request.closed.json"].kind == "closed"  # type: ignore[union-attr]
    assert kinds["pull_request.labeled.json"] is None
    assert kinds["pull_request_review.submitted.approved.json"].kind == "review"  # type: ignore[union-attr]
    assert kinds["push.branch_deleted.json"].deleted  # type: ignore[union-attr]
    assert kinds["push.tag_deleted.json"].branch is None  # type: ignore[union-attr]
    assert kinds["issue_comment.created.json"] is None  # not a /mlp command
    merged = json.loads((fixtures_dir / "github" / "pull_request.closed.json").read_text())
    merged["pull_request"].update(merged=True, merge_commit_sha="a" * 40)
    event = parse_github("pull_request", merged)
    assert isinstance(event, ChangeRequestEvent) and event.kind == "merged" and event.merge_commit_sha == "a" * 40

    gl = {p.name: json.loads(p.read_text()) for p in (fixtures_dir / "gitlab").glob("*.json")}
    assert parse_gitlab("Push Hook", gl["push.json"]).branch == "master"  # type: ignore[union-attr]
    assert parse_gitlab("Merge Request Hook", gl["merge_request.approved.json"]).kind == "review"  # type: ignore[union-attr]
    merge = parse_gitlab("Merge Request Hook", gl["merge_request.merge.json"])
    assert isinstance(merge, ChangeRequestEvent) and merge.kind == "merged"
    assert merge.merge_commit_sha == "78a76ee6b4992a6baf64c59fc4c44c7323d60438"
    note = dict(gl["note.json"])
    note["object_attributes"] = {**note["object_attributes"], "note": "/mlp recheck"}
    command = parse_gitlab("Note Hook", note)
    assert isinstance(command, ChangeRequestEvent) and command.kind == "command" and command.command == "recheck"
    assert parse_gitlab("Pipeline Hook", gl["pipeline.json"]) is None


def test_a_delivery_started_three_times_without_finishing_is_quarantined(tmp_path: Path) -> None:
    from mlp.webhooks.store import DeliveryStore

    store = DeliveryStore(tmp_path / "d.db")
    assert store.add("a", "github", "push", b"{}")
    assert store.add("b", "github", "push", b"{ }")
    for _ in range(3):
        store.started("a", "github")  # e.g. the process was killed while working on it, three times
    store.started("b", "github")
    assert [d.id for d in store.pending()] == ["b"]
    assert store.counts() == {"queued": 1, "quarantined": 1}
    # a redelivery of the quarantined one (same id) queues it again, with its attempts reset
    assert store.add("a", "github", "push", b"{}")
    assert [d.id for d in store.pending()] == ["a", "b"]
    store.finish("a", "github")
    assert not store.add("a", "github", "push", b"{}")  # done: deduplicated
