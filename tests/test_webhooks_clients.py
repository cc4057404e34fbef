"""GitHub and GitLab REST clients against the stand-ins: auth, rate limits, pagination, payloads."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import git
import httpx
import pytest
from standins.github_api import GitHubStandIn, serve
from standins.gitlab_api import GitLabStandIn

from mlp.webhooks.github import GitHubClient
from mlp.webhooks.gitlab import GitLabClient
from mlp.webhooks.hosting import HostError, upsert_comment

pytestmark = pytest.mark.timeout(60)
TOKENS = {"t-bot": "mlp-bot", "t-dave": "dave", "t-alice": "alice"}


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    repo = git.Repo.init(tmp_path / "r", initial_branch="main")
    (tmp_path / "r" / "README.md").write_text("x\n")
    repo.git.add("-A")
    repo.index.commit("init")
    repo.git.checkout("-b", "feature")
    (tmp_path / "r" / "README.md").write_text("y\n")
    repo.git.add("-A")
    repo.index.commit("change")
    repo.git.checkout("main")
    return tmp_path / "r"


@pytest.fixture
def gh(repo_dir: Path) -> Iterator[tuple[GitHubStandIn, str]]:
    standin = GitHubStandIn(TOKENS)
    standin.add_repo("acme/p", repo_dir)
    with serve(standin.app) as url:
        yield standin, url


@pytest.fixture
def gl(repo_dir: Path) -> Iterator[tuple[GitLabStandIn, str]]:
    standin = GitLabStandIn(TOKENS)
    standin.add_project("acme/p", repo_dir)
    with serve(standin.app) as url:
        yield standin, f"{url}/api/v4"


class SleepRecorder:
    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        time.sleep(seconds)


def test_link_header_parsing() -> None:
    """The pagination reads httpx's parse of the Link header (`Response.links`)."""

    def next_link(header: str | None) -> str | None:
        response = httpx.Response(200, headers={"link": header} if header else {})
        return response.links.get("next", {}).get("url")

    header = '<https://api.github.com/x?page=2>; rel="next", <https://api.github.com/x?page=5>; rel="last"'
    assert next_link(header) == "https://api.github.com/x?page=2"
    assert next_link('<https://a/x?page=5>; rel="last"') is None
    assert next_link(None) is None


def test_github_client_round_trip(gh: tuple[GitHubStandIn, str]) -> None:
    standin, url = gh
    dave = GitHubClient("t-dave", url)
    pr = dave.open_change_request("acme/p", "feature", "main", "a change", "body")
    assert (pr.number, pr.author, pr.head_ref, pr.base_ref) == (1, "dave", "feature", "main")
    assert pr.head_sha == git.Repo(standin.repos["acme/p"].git_dir).commit("feature").hexsha
    sent = standin.calls("POST", "/repos/acme/p/pulls")[0]
    assert sent.body == {"title": "a change", "head": "feature", "base": "main", "body": "body"}

    bot = GitHubClient("t-bot", url)
    bot.set_status("acme/p", pr.head_sha, "mlp/validate", "pending", "x" * 300, "https://mlp.example/run/1")
    status = standin.calls("POST", f"/statuses/{pr.head_sha}")[0]
    assert status.user == "mlp-bot"
    assert status.body == {
        "state": "pending",
        "context": "mlp/validate",
        "description": "x" * 140,
        "target_url": "https://mlp.example/run/1",
    }
    assert bot.statuses("acme/p", pr.head_sha)[0]["state"] == "pending"

    first = upsert_comment(bot, "acme/p", 1, "hello")
    again = upsert_comment(bot, "acme/p", 1, "hello again")
    assert first.id == again.id and len(standin.repos["acme/p"].comments[1]) == 1
    assert standin.repos["acme/p"].comments[1][0]["body"] == "<!-- mlp:plan -->\nhello again"
    assert bot.changed_files("acme/p", 1) == ["README.md"]

    alice = GitHubClient("t-alice", url)
    alice.rest.json("POST", "/repos/acme/p/pulls/1/reviews", json={"event": "APPROVE"})
    (review,) = bot.reviews("acme/p", bot.change_request("acme/p", 1))
    assert (review.user, review.state, review.commit_sha) == ("alice", "approved", pr.head_sha)


def test_github_bad_token_is_a_clear_error(gh: tuple[GitHubStandIn, str]) -> None:
    _, url = gh
    with pytest.raises(HostError, match=r"HTTP 401: Bad credentials") as info:
        GitHubClient("wrong", url).change_request("acme/p", 1)
    assert info.value.status == 401


def test_github_pagination_follows_link(gh: tuple[GitHubStandIn, str]) -> None:
    standin, url = gh
    bot = GitHubClient("t-bot", url)
    for i in range(45):
        bot.create_comment("acme/p", 7, f"c{i}")
    bodies = [c["body"] for c in bot.rest.paginate("/repos/acme/p/issues/7/comments", per_page=10)]
    assert bodies == [f"c{i}" for i in range(45)]
    pages = [r.query.get("page") for r in standin.calls("GET", "/issues/7/comments")]
    assert pages == [None, "2", "3", "4", "5"]
    assert len(bot.comments("acme/p", 7)) == 45


@pytest.mark.parametrize("mode", ["primary", "secondary"])
def test_github_rate_limit_waits_for_reset(gh: tuple[GitHubStandIn, str], mode: str) -> None:
    standin, url = gh
    sleep = SleepRecorder()
    bot = GitHubClient("t-bot", url)
    bot.rest.retry.sleep = sleep
    standin.rate_limit(1, mode=mode, seconds=1)
    started = time.monotonic()
    bot.create_comment("acme/p", 3, "after the limit")
    assert time.monotonic() - started >= 0.9
    assert len(sleep.waits) == 1 and 0.9 <= sleep.waits[0] <= 2.1
    statuses = [r.status for r in standin.calls("POST", "/issues/3/comments")]
    assert statuses == [403 if mode == "primary" else 429, 201]


def test_rate_limit_longer_than_max_wait_fails_fast(gh: tuple[GitHubStandIn, str]) -> None:
    standin, url = gh
    bot = GitHubClient("t-bot", url)
    bot.rest.retry.budget = 5
    sleep = SleepRecorder()
    bot.rest.retry.sleep = sleep
    standin.rate_limit(1, mode="primary", seconds=3600)
    with pytest.raises(HostError, match="rate limited"):
        bot.comments("acme/p", 1)
    assert sleep.waits == []  # fails at once: no wait at all, let alone the hour
    assert len(standin.calls("GET", "/issues/1/comments")) == 1


def test_gitlab_client_round_trip(gl: tuple[GitLabStandIn, str]) -> None:
    standin, url = gl
    dave = GitLabClient("t-dave", url)
    mr = dave.open_change_request("acme/p", "feature", "main", "a change")
    assert (mr.number, mr.author, mr.state) == (1, "dave", "open")
    assert mr.head_pushed_at is not None
    created = standin.calls("POST", "/merge_requests")[0]
    assert created.path == "/api/v4/projects/acme/p/merge_requests"  # sent as acme%2Fp
    assert created.body == {"source_branch": "feature", "target_branch": "main", "title": "a change", "description": ""}

    bot = GitLabClient("t-bot", url)
    bot.set_status("acme/p", mr.head_sha, "mlp/governance", "failure", "gate failed")
    sent = standin.calls("POST", "/statuses/")[0]
    assert sent.body == {"state": "failed", "name": "mlp/governance", "description": "gate failed"}
    assert bot.statuses("acme/p", mr.head_sha)[0]["status"] == "failed"

    first = upsert_comment(bot, "acme/p", 1, "plan")
    second = upsert_comment(bot, "acme/p", 1, "plan 2")
    assert first.id == second.id and len(standin.projects["acme/p"].notes[1]) == 1
    assert standin.calls("PUT", f"/notes/{first.id}")[0].body == {"body": "<!-- mlp:plan -->\nplan 2"}

    GitLabClient("t-alice", url).rest.json("POST", "/projects/1/merge_requests/1/approve")
    (review,) = bot.reviews("acme/p", bot.change_request("acme/p", 1))
    assert review.user == "alice" and review.state == "approved" and review.submitted_at is not None
    assert review.submitted_at >= mr.head_pushed_at


def test_gitlab_pagination_and_rate_limit(gl: tuple[GitLabStandIn, str]) -> None:
    standin, url = gl
    bot = GitLabClient("t-bot", url)
    GitLabClient("t-dave", url).open_change_request("acme/p", "feature", "main", "x")
    for i in range(7):
        bot.create_comment("acme/p", 1, f"n{i}")
    notes = list(bot.rest.paginate("/projects/acme%2Fp/merge_requests/1/notes", {"sort": "asc"}, per_page=3))
    assert [n["body"] for n in notes] == [f"n{i}" for i in range(7)]
    assert [r.query.get("page") for r in standin.calls("GET", "/notes")] == [None, "2", "3"]

    sleep = SleepRecorder()
    bot.rest.retry.sleep = sleep
    standin.rate_limit(2, seconds=1)
    assert len(bot.comments("acme/p", 1)) == 7
    assert sleep.waits == [1.0, 1.0]


@pytest.mark.skipif(
    not (os.environ.get("MLP_TEST_GITHUB_TOKEN") and os.environ.get("MLP_TEST_GITHUB_PR")),
    reason="set MLP_TEST_GITHUB_TOKEN, MLP_TEST_GITHUB_PR=owner/name#N (and MLP_TEST_GITHUB_URL) for a real GitHub",
)
def test_real_github_read_only() -> None:
    """The same client calls against a real GitHub, read-only (nothing is written)."""
    repo, _, number = os.environ["MLP_TEST_GITHUB_PR"].partition("#")
    client = GitHubClient(
        os.environ["MLP_TEST_GITHUB_TOKEN"], os.environ.get("MLP_TEST_GITHUB_URL", "https://api.github.com")
    )
    cr = client.change_request(repo, int(number))
    assert cr.number == int(number) and len(cr.head_sha) == 40
    client.reviews(repo, cr)
    client.comments(repo, cr.number)
    client.statuses(repo, cr.head_sha)


@pytest.mark.skipif(
    not (os.environ.get("MLP_TEST_GITLAB_TOKEN") and os.environ.get("MLP_TEST_GITLAB_MR")),
    reason="set MLP_TEST_GITLAB_TOKEN, MLP_TEST_GITLAB_MR=group/project!N (and MLP_TEST_GITLAB_URL) for a real GitLab",
)
def test_real_gitlab_read_only() -> None:
    repo, _, number = os.environ["MLP_TEST_GITLAB_MR"].partition("!")
    client = GitLabClient(
        os.environ["MLP_TEST_GITLAB_TOKEN"], os.environ.get("MLP_TEST_GITLAB_URL", "https://gitlab.com/api/v4")
    )
    cr = client.change_request(repo, int(number))
    assert cr.number == int(number) and len(cr.head_sha) == 40
    client.reviews(repo, cr)
    client.comments(repo, cr.number)
    client.statuses(repo, cr.head_sha)
