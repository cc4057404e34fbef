"""Hostile clients against the real `mlp webhooks` and `mlp up` processes (issue 11).

Each test starts the server as a process, attacks it (huge or many headers, silent
connections past the connection cap, unauthenticated bodies, booleans as numbers,
hostile templates in pull requests, kill -9 mid-delivery), checks the answer and the
server's own peak memory (`VmHWM`), and then that a normal request is still served.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import git
import httpx
import pytest
from standins.github_api import GitHubStandIn, serve
from test_pr_flow import REPO, TOKENS, commit_all, make_origin

from mlp.webhooks.signatures import github_signature

pytestmark = pytest.mark.timeout(180)
MLP = [sys.executable, "-m", "mlp.cli.main"]
SECRET = "webhook-secret"
HOSTILE = (
    '{% extends "package:kubernetes/inferenceservice.yaml.j2" %}\n{% block predictor_extra %}\n'
    "{% for x in range(100000) %}{% for y in range(100000) %}{% endfor %}{% endfor %}\n{% endblock %}\n"
)


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


class Webhooks:
    """`mlp webhooks` as a process, on a free port, reading its address from stderr."""

    def __init__(self, tmp: Path, api: str | None, env: dict[str, str] | None = None) -> None:
        secret = tmp / "secret"
        secret.write_text(SECRET)
        self.state = tmp / "state"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("MLP_GIT", "GITHUB_", "GITLAB_"))}
        base.update({"GITHUB_TOKEN": "t-mlp", "MLP_RENDER_CPU_SECONDS": "3", **(env or {})})
        args = [*MLP, "webhooks", "--repo", str(tmp / "origin"), "--port", "0", "--state-dir", str(self.state)]
        args += ["--github-secret-file", str(secret)]
        if api:
            args += ["--github-url", api]
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=base)
        assert self.proc.stderr is not None
        self.url = ""
        self.log: list[str] = []
        deadline = time.monotonic() + 30
        while not self.url and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line)
            m = re.search(r"listening on (http://\S+)", line)
            self.url = m.group(1) if m else ""
        assert self.url, "".join(self.log)
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        return host, int(port)

    def healthy(self) -> bool:
        return httpx.get(f"{self.url}/healthz", timeout=10).status_code == 200

    def deliveries(self) -> dict[str, int]:
        counts: dict[str, int] = httpx.get(f"{self.url}/healthz", timeout=10).json()["deliveries"]
        return counts

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[GitHubStandIn, str, git.Repo]]:
    origin = make_origin(tmp_path / "origin")
    standin = GitHubStandIn(TOKENS, webhook_secret=SECRET.encode())
    standin.add_repo(REPO, tmp_path / "origin")
    with serve(standin.app) as api:
        yield standin, api, origin
    origin.close()


@pytest.fixture
def webhooks(tmp_path: Path) -> Iterator[Webhooks]:
    make_origin(tmp_path / "origin").close()
    server = Webhooks(tmp_path, None, {"MLP_HTTP_HEADER_TIMEOUT": "1", "MLP_HTTP_MAX_CONNECTIONS": "64"})
    yield server
    server.stop()


# --- HTTP bounds -----------------------------------------------------------------------------


def send_head_until_closed(addr: tuple[str, int], head: bytes, filler: bytes, total: int) -> tuple[int, bytes]:
    """Send a request head of up to `total` bytes; (bytes sent when the server stopped us, its answer)."""
    sent = 0
    with socket.create_connection(addr, timeout=10) as s:
        try:
            s.sendall(head)
            sent = len(head)
            while sent < total:
                s.sendall(filler)
                sent += len(filler)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            answer = s.recv(4096)
        except (ConnectionResetError, TimeoutError):
            answer = b""
    return sent, answer


def check_header_bounds(addr: tuple[str, int], pid: int, normal: Any) -> None:
    before = peak_rss_kib(pid)
    start = time.monotonic()
    # one header growing towards 200 MB: cut off after the limit, not buffered
    sent, answer = send_head_until_closed(
        addr, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ", b"a" * 65536, 200 * 1024 * 1024
    )
    assert sent < 32 * 1024 * 1024, f"the server read {sent} bytes of one header"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer
    # many small headers
    many = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(500)) + b"\r\n"
    _, answer = send_head_until_closed(addr, many, b"", 0)
    assert answer.startswith(b"HTTP/1.1 431"), answer
    assert time.monotonic() - start < 30
    assert peak_rss_kib(pid) - before < 64 * 1024, f"peak RSS grew by {(peak_rss_kib(pid) - before) // 1024} MiB"
    normal()


def check_silent_connections(addr: tuple[str, int], normal: Any, cap: int = 64) -> None:
    # Past the connection cap, silent connections are evicted oldest first: a real client still gets in.
    silent = [socket.create_connection(addr, timeout=10) for _ in range(cap * 3)]
    try:
        normal()
        # and a connection that never sends a request is closed after the header timeout (1 s here)
        lone = silent[-1]
        lone.settimeout(10)
        start = time.monotonic()
        assert lone.recv(1) == b""
        assert time.monotonic() - start < 8
    finally:
        for s in silent:
            s.close()
    normal()


def test_webhooks_bounds_headers_and_connections(webhooks: Webhooks) -> None:
    def normal() -> None:
        assert webhooks.healthy()

    check_header_bounds(webhooks.host_port, webhooks.proc.pid, normal)
    check_silent_connections(webhooks.host_port, normal)
    assert webhooks.proc.poll() is None


def test_unauthenticated_bodies_are_bounded_in_memory(webhooks: Webhooks) -> None:
    """40 concurrent bad-signature deliveries of 8 MiB that stall before their last byte: the
    receiver holds at most its unverified-bytes budget (64 MiB), refusing the rest with 503."""
    before = peak_rss_kib(webhooks.proc.pid)
    size = 8 * 1024 * 1024
    head = (
        "POST /webhooks/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\n"
        f"X-GitHub-Delivery: {uuid.uuid4()}\r\nX-Hub-Signature-256: sha256={'0' * 64}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
    ).encode()
    chunk = b" " * (size - 1024)
    answers: list[bytes] = []
    held: list[socket.socket] = []
    lock = threading.Lock()

    def stall() -> None:
        s = socket.create_connection(webhooks.host_port, timeout=20)
        with lock:
            held.append(s)
        answer = b""
        try:
            s.sendall(head + chunk)  # everything but the last KiB: the server must hold it or refuse
            s.settimeout(3)
            answer = s.recv(64)
        except (OSError, TimeoutError):
            pass
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=stall) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        grown = (peak_rss_kib(webhooks.proc.pid) - before) // 1024
        # a refused sender usually sees a reset (the server closed with its body unread), not the 503
        assert all(a == b"" or a.startswith((b"HTTP/1.1 503", b"HTTP/1.1 401")) for a in answers), answers
        assert grown < 160, f"peak RSS grew by {grown} MiB"
        print(f"peak RSS growth {grown} MiB")
    finally:
        for s in held:
            s.close()
    assert webhooks.healthy()


def test_second_receiver_on_the_same_state_folder_is_refused(webhooks: Webhooks, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    res = subprocess.run(
        [*MLP, "webhooks", "--repo", str(tmp_path / "origin"), "--port", "0", "--state-dir", str(webhooks.state)]
        + ["--github-secret-file", str(secret)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "state folder in use by another mlp webhooks" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert webhooks.healthy()


# --- PR flow with a hostile template ---------------------------------------------------------


def branch_with(origin: git.Repo, branch: str, files: dict[str, str], when: str) -> str:
    origin.git.checkout("-b", branch)
    root = Path(origin.working_tree_dir or ".")
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    sha = commit_all(origin, branch, when=when)
    origin.git.checkout("main")
    return sha


def open_pr(api: str, branch: str) -> None:
    r = httpx.post(
        f"{api}/repos/{REPO}/pulls",
        headers={"Authorization": "Bearer t-dave"},
        json={"title": branch, "head": branch, "base": "main"},
        timeout=30,
    )
    assert r.status_code == 201, r.text


def status(standin: GitHubStandIn, sha: str, context: str) -> dict[str, Any] | None:
    return standin.latest_status(REPO, sha, context)


def wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_hostile_template_pr_fails_benign_pr_is_checked_and_queue_drains_after_kill(
    hub: tuple[GitHubStandIn, str, git.Repo], tmp_path: Path
) -> None:
    standin, api, origin = hub
    prod = (Path(origin.working_tree_dir or ".") / "environments/prod.yaml").read_text()
    hostile = branch_with(
        origin, "hostile", {"templates/kubernetes/inferenceservice.yaml.j2": HOSTILE}, "2026-11-21T10:00:00+0000"
    )
    benign = branch_with(
        origin,
        "benign",
        {"environments/prod.yaml": prod.replace("maxReplicas: 6", "maxReplicas: 7")},
        "2026-11-21T11:00:00+0000",
    )
    server = Webhooks(tmp_path, api)
    standin.webhook_url = f"{server.url}/webhooks/github"
    try:
        start = time.monotonic()
        open_pr(api, "hostile")
        open_pr(api, "benign")

        def settled(sha: str) -> bool:
            s = status(standin, sha, "mlp/validate")
            return s is not None and s["state"] != "pending"

        assert wait_for(lambda: settled(benign), 30), "the benign PR got no validate status within 30 s"
        assert time.monotonic() - start < 30
        assert status(standin, benign, "mlp/validate")["state"] == "success"  # type: ignore[index]
        assert wait_for(lambda: settled(hostile), 90), "".join(server.log)
        failed = status(standin, hostile, "mlp/validate")
        assert failed is not None and failed["state"] == "failure", failed
        assert "templates/kubernetes/inferenceservice.yaml.j2" in failed["description"], failed
        assert "render budget" in failed["description"], failed
        assert wait_for(lambda: (status(standin, hostile, "mlp/governance") or {}).get("state") == "failure", 30)
        assert "Traceback" not in "".join(server.log)

        # A new hostile push, killed -9 while its check runs: after a restart the queue drains.
        root = Path(origin.working_tree_dir or ".")
        origin.git.checkout("hostile")
        (root / "templates/kubernetes/inferenceservice.yaml.j2").write_text(HOSTILE + "{# again #}\n")
        again = commit_all(origin, "again", when="2026-11-22T10:00:00+0000")
        origin.git.checkout("main")
        standin.push(REPO, "hostile")
        assert wait_for(lambda: server.deliveries().get("queued", 0) >= 1, 10)
        time.sleep(1.0)  # the worker is inside the budgeted render now
        server.kill9()
        server = Webhooks(tmp_path, api)
        standin.webhook_url = f"{server.url}/webhooks/github"
        assert wait_for(lambda: server.deliveries().get("queued", 0) == 0, 90), server.deliveries()
        assert wait_for(lambda: settled(again), 30)
        assert status(standin, again, "mlp/validate")["state"] == "failure"  # type: ignore[index]
        assert server.healthy()
        # No work folders left behind by the killed process.
        assert not list(Path("/tmp").glob(f"mlp-rev-*/{again[:12]}"))
    finally:
        server.stop()


def test_failed_delivery_is_retried_by_redelivery_and_done_one_is_deduplicated(
    hub: tuple[GitHubStandIn, str, git.Repo], tmp_path: Path
) -> None:
    standin, api, origin = hub
    branch_with(origin, "bump", {"specs/x.txt": "x"}, "2026-11-21T10:00:00+0000")
    # The hosting API is "down": no token for it, so every status call fails with 401.
    server = Webhooks(tmp_path, api, {"GITHUB_TOKEN": "t-nobody"})
    try:
        standin.webhook_url = f"{server.url}/webhooks/github"
        open_pr(api, "bump")
        assert wait_for(lambda: server.deliveries().get("failed", 0) == 1, 60), server.deliveries()
        delivery = json.loads(json.dumps(standin.deliveries[-1]))
    finally:
        server.stop()
    # The API is back; GitHub's "Redeliver" sends the same delivery again, same id.
    server = Webhooks(tmp_path, api)
    try:
        pr = standin.repos[REPO].pulls[1]
        payload = standin._pr_payload(standin.repos[REPO], pr, "opened")
        body = json.dumps(payload).encode()
        headers = {
            "X-GitHub-Event": "pull_request",
            "X-GitHub-Delivery": delivery[1],
            "X-Hub-Signature-256": github_signature(SECRET.encode(), body),
        }
        r = httpx.post(f"{server.url}/webhooks/github", content=body, headers=headers, timeout=10)
        assert r.status_code == 202, r.text
        assert wait_for(lambda: server.deliveries() == {"done": 1}, 60), server.deliveries()
        assert status(standin, pr["head"]["sha"], "mlp/validate") is not None
        r = httpx.post(f"{server.url}/webhooks/github", content=body, headers=headers, timeout=10)
        assert r.status_code == 200 and r.json()["status"] == "duplicate"
    finally:
        server.stop()


def test_leftover_work_folders_are_cleaned_on_start(tmp_path: Path) -> None:
    """Work folders (`mlp-rev-*`) a killed receiver left registered on the repository go on the next start."""
    origin = make_origin(tmp_path / "origin")
    leftover = Path(tempfile.mkdtemp(prefix="mlp-rev-")) / origin.head.commit.hexsha[:12]
    origin.git.worktree("add", "--detach", str(leftover), "HEAD")
    assert leftover.is_dir()
    server = Webhooks(tmp_path, None)
    try:
        assert server.healthy()
        assert not leftover.parent.exists()
        assert str(leftover) not in origin.git.worktree("list")
    finally:
        server.stop()
        origin.close()
