"""End to end: a pull request on the GitHub / GitLab stand-ins, the receiver, the PR flow.

The platform repository is a real Git repository (a frozen copy of the example
repository in tests/golden/plan_markdown_repo); the hosts are the stand-ins in
tests/standins talking real HTTP; deliveries are signed and go through the receiver;
the flow checks revisions out into isolated work folders from a cached clone. The
reconcile trigger and the audit log are the controller's real SQLite state folder.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import git
import httpx
import pytest
from standins.github_api import GitHubStandIn, serve
from standins.gitlab_api import GitLabStandIn

from mlp.controller.store import AuditLog, StateStore
from mlp.webhooks.flow import ControllerAudit, PullRequestFlow, request_sync_trigger
from mlp.webhooks.github import GitHubClient
from mlp.webhooks.gitlab import GitLabClient
from mlp.webhooks.hosting import COMMENT_MARKER
from mlp.webhooks.prcheck import Workspace
from mlp.webhooks.receiver import ReceiverConfig, WebhookReceiver
from mlp.webhooks.store import DeliveryStore

pytestmark = pytest.mark.timeout(120)

PLATFORM = Path(__file__).resolve().parent / "golden" / "plan_markdown_repo"
# A Wednesday: outside prod's weekend deny window (Friday 18:00 for 62h).
WEDNESDAY = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
SECRET = b"webhook-secret"
TOKENS = {"t-mlp": "mlp-bot", "t-dave": "dave", "t-erin": "erin", "t-alice": "alice", "t-bob": "bob"}
REPO = "acme/platform"


def commit_all(repo: git.Repo, message: str, author: str = "dave", when: str = "2026-11-20T10:00:00+0000") -> str:
    """Commit everything with fixed author and dates, so identical trees give identical SHAs."""
    repo.git.add("-A")
    actor = git.Actor(author, f"{author}@example.com")
    commit = repo.index.commit(message, author=actor, committer=actor, author_date=when, commit_date=when)
    return commit.hexsha


def make_origin(path: Path) -> git.Repo:
    shutil.copytree(PLATFORM, path)
    repo = git.Repo.init(path, initial_branch="main")
    commit_all(repo, "platform", author="alice")
    return repo


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def bump_prod_iris(origin: git.Repo, branch: str = "bump-iris") -> str:
    origin.git.checkout("-b", branch)
    edit(Path(origin.working_tree_dir) / "environments/prod.yaml", "iris:\n      version: 1", "iris:\n      version: 2")
    sha = commit_all(origin, "prod: iris v2", when="2026-11-21T10:00:00+0000")
    origin.git.checkout("main")
    return sha


def second_push(origin: git.Repo, branch: str = "bump-iris") -> str:
    origin.git.checkout(branch)
    edit(Path(origin.working_tree_dir) / "environments/prod.yaml", "maxReplicas: 6", "maxReplicas: 8")
    sha = commit_all(origin, "prod: iris up to 8 replicas", when="2026-11-22T10:00:00+0000")
    origin.git.checkout("main")
    return sha


@dataclass
class Env:
    standin: Any
    api: str
    receiver: WebhookReceiver
    origin: git.Repo
    state: Path

    def call(self, token: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if "/api/v4" not in self.api else {"PRIVATE-TOKEN": token}
        return httpx.request(method, self.api + path, headers=headers, timeout=30, **kwargs)

    def settle(self) -> None:
        assert self.receiver.drain(60), "webhook work did not finish"
        assert self.receiver.stats.failed == 0, self.receiver.store.counts()

    def sync_requests(self) -> list[tuple[str, str]]:
        store = StateStore(self.state)
        try:
            return store.take_sync_requests()
        finally:
            store.close()


def _flow(client: Any, provider: str, tmp_path: Path, origin: git.Repo, state: Path) -> PullRequestFlow:
    workspace = Workspace(Path(origin.working_tree_dir).as_uri(), tmp_path / "cache")
    return PullRequestFlow(
        workspace,
        {provider: client},
        trigger=request_sync_trigger(str(state)),
        audit=ControllerAudit(str(state)),
        clock=lambda: WEDNESDAY,
    )


@pytest.fixture
def github(tmp_path: Path) -> Iterator[Env]:
    origin = make_origin(tmp_path / "origin")
    standin = GitHubStandIn(TOKENS, webhook_secret=SECRET)
    standin.add_repo(REPO, Path(origin.working_tree_dir))
    state = tmp_path / "state"
    with serve(standin.app) as api:
        flow = _flow(GitHubClient("t-mlp", api), "github", tmp_path, origin, state)
        rx = WebhookReceiver(ReceiverConfig(github_secret=SECRET), flow.handle, DeliveryStore(state / "hooks.db"))
        rx.start()
        with serve(rx.app) as url:
            standin.webhook_url = f"{url}/webhooks/github"
            yield Env(standin, api, rx, origin, state)
        rx.stop()


@pytest.fixture
def gitlab(tmp_path: Path) -> Iterator[Env]:
    origin = make_origin(tmp_path / "origin")
    standin = GitLabStandIn(TOKENS, webhook_token="gl-token")
    standin.add_project(REPO, Path(origin.working_tree_dir))
    state = tmp_path / "state"
    with serve(standin.app) as url_api:
        api = f"{url_api}/api/v4"
        flow = _flow(GitLabClient("t-mlp", api), "gitlab", tmp_path, origin, state)
        rx = WebhookReceiver(ReceiverConfig(gitlab_token="gl-token"), flow.handle, DeliveryStore(state / "hooks.db"))
        rx.start()
        with serve(rx.app) as url:
            standin.webhook_url = f"{url}/webhooks/gitlab"
            yield Env(standin, api, rx, origin, state)
        rx.stop()


def gh_statuses(env: Env, sha: str, context: str) -> list[dict[str, Any]]:
    """Statuses of one context on a commit, oldest first."""
    return [s for s in reversed(env.standin.repos[REPO].statuses.get(sha, [])) if s["context"] == context]


def gl_statuses(env: Env, sha: str, name: str) -> list[dict[str, Any]]:
    return [s for s in reversed(env.standin.projects[REPO].statuses.get(sha, [])) if s["name"] == name]


def assert_report(body: str, head: str) -> None:
    assert body.startswith(COMMENT_MARKER)
    assert f"→ `{head[:12]}`" in body
    assert "### `prod` (production, kubernetes `ml-prod`)" in body
    assert "| update | `InferenceService/ml-prod/iris` |" in body
    assert "<details><summary>Diff of 1 object</summary>" in body
    assert "+      storageUri: s3://mlp-models/iris/2/model.joblib" in body
    assert "| accuracy | 0.973 | 0.953 | +0.02 | >= 0.9, regression <= 0.01 | ✅ |" in body
    assert "Unchanged: `dev`, `staging`" in body


def test_github_pull_request_flow(github: Env) -> None:
    env = github
    head = bump_prod_iris(env.origin)
    env.standin.push(REPO, "bump-iris")
    env.settle()
    assert env.sync_requests() == [], "a push to a branch no environment tracks is ignored"

    r = env.call(
        "t-dave", "POST", f"/repos/{REPO}/pulls", json={"title": "iris v2 to prod", "head": "bump-iris", "base": "main"}
    )
    assert r.status_code == 201
    number = r.json()["number"]
    env.settle()

    validate = gh_statuses(env, head, "mlp/validate")
    governance = gh_statuses(env, head, "mlp/governance")
    assert [s["state"] for s in validate] == ["pending", "success"]
    assert [s["state"] for s in governance] == ["pending", "pending"]
    assert governance[-1]["description"].startswith("prod: 0/2 approvals from team:ml-leads")
    comments = env.standin.repos[REPO].comments[number]
    assert len(comments) == 1
    assert_report(comments[0]["body"], head)
    assert "⏳ `prod` approvals: 0/2 approvals from team:ml-leads" in comments[0]["body"]

    # The author cannot approve (GitHub refuses it), a reviewer from the wrong team does not count.
    assert (
        env.call("t-dave", "POST", f"/repos/{REPO}/pulls/{number}/reviews", json={"event": "APPROVE"}).status_code
        == 422
    )
    env.call("t-erin", "POST", f"/repos/{REPO}/pulls/{number}/reviews", json={"event": "APPROVE"})
    env.settle()
    latest = gh_statuses(env, head, "mlp/governance")[-1]
    assert latest["state"] == "pending"
    assert "0/2 approvals" in latest["description"] and "erin is not in team:ml-leads" in latest["description"]

    env.call("t-alice", "POST", f"/repos/{REPO}/pulls/{number}/reviews", json={"event": "APPROVE"})
    env.settle()
    assert gh_statuses(env, head, "mlp/governance")[-1]["state"] == "pending"
    assert "1/2 approvals" in gh_statuses(env, head, "mlp/governance")[-1]["description"]
    env.call("t-bob", "POST", f"/repos/{REPO}/pulls/{number}/reviews", json={"event": "APPROVE"})
    env.settle()
    green = gh_statuses(env, head, "mlp/governance")[-1]
    assert green["state"] == "success", green
    assert len(env.standin.repos[REPO].comments[number]) == 1
    assert "Governance: ✅ success" in env.standin.repos[REPO].comments[number][0]["body"]

    # A new push makes the approvals stale; the one comment is updated in place.
    comment_id = comments[0]["id"]
    head2 = second_push(env.origin)
    env.standin.push(REPO, "bump-iris", before=head)
    env.settle()
    stale = gh_statuses(env, head2, "mlp/governance")
    assert [s["state"] for s in stale] == ["pending", "pending"]
    assert "alice's approval is stale" in stale[-1]["description"] or "stale" in stale[-1]["description"]
    comments = env.standin.repos[REPO].comments[number]
    assert [c["id"] for c in comments] == [comment_id]
    assert f"→ `{head2[:12]}`" in comments[0]["body"] and "bob's approval is stale" in comments[0]["body"]
    assert env.standin.calls("PATCH", f"/issues/comments/{comment_id}")
    assert env.sync_requests() == []

    for token in ("t-alice", "t-bob"):
        env.call(token, "POST", f"/repos/{REPO}/pulls/{number}/reviews", json={"event": "APPROVE"})
    env.settle()
    assert gh_statuses(env, head2, "mlp/governance")[-1]["state"] == "success"

    merged = env.call("t-alice", "PUT", f"/repos/{REPO}/pulls/{number}/merge", json={})
    merge_sha = merged.json()["sha"]
    env.settle()
    audit = AuditLog(env.state).events(action="merge")
    assert [(e.environment, e.pr, e.approvers, e.merge_commit, e.author) for e in audit] == [
        ("prod", f"github:{REPO}#{number}", ["alice", "bob"], merge_sha, "dave")
    ]
    # The merge is a push to main, which every example environment tracks: reconcile each now.
    requests = env.sync_requests()
    assert sorted(e for e, _ in requests) == ["dev", "prod", "staging"]
    assert {reason for _, reason in requests} == {"webhook"}

    # The client recorded nothing but documented endpoints, authenticated as the bot.
    bot_calls = {
        (r.method, r.path.split("/")[4] if len(r.path.split("/")) > 4 else r.path)
        for r in env.standin.requests
        if r.user == "mlp-bot"
    }
    assert bot_calls <= {
        ("GET", "pulls"),
        ("POST", "statuses"),
        ("GET", "issues"),
        ("POST", "issues"),
        ("PATCH", "issues"),
    }


def test_gitlab_merge_request_flow(gitlab: Env) -> None:
    env = gitlab
    head = bump_prod_iris(env.origin)
    env.standin.push(REPO, "bump-iris")
    env.settle()
    assert env.sync_requests() == []
    project = env.standin.projects[REPO]

    r = env.call(
        "t-dave",
        "POST",
        f"/projects/{REPO.replace('/', '%2F')}/merge_requests",
        json={"source_branch": "bump-iris", "target_branch": "main", "title": "iris v2 to prod"},
    )
    assert r.status_code == 201
    iid = r.json()["iid"]
    env.settle()
    assert [s["status"] for s in gl_statuses(env, head, "mlp/validate")] == ["pending", "success"]
    governance = gl_statuses(env, head, "mlp/governance")
    assert [s["status"] for s in governance] == ["pending", "pending"]
    assert governance[-1]["description"].startswith("prod: 0/2 approvals from team:ml-leads")
    assert len(project.notes[iid]) == 1
    assert_report(project.notes[iid][0]["body"], head)

    mr_path = f"/projects/{project.id}/merge_requests/{iid}"
    assert env.call("t-dave", "POST", f"{mr_path}/approve").status_code == 401  # no self-approval
    env.call("t-erin", "POST", f"{mr_path}/approve")
    env.settle()
    latest = gl_statuses(env, head, "mlp/governance")[-1]
    assert latest["status"] == "pending" and "erin is not in team:ml-leads" in latest["description"]
    env.call("t-alice", "POST", f"{mr_path}/approve")
    env.settle()
    assert "1/2 approvals" in gl_statuses(env, head, "mlp/governance")[-1]["description"]
    env.call("t-bob", "POST", f"{mr_path}/approve")
    env.settle()
    assert gl_statuses(env, head, "mlp/governance")[-1]["status"] == "success"

    note_id = project.notes[iid][0]["id"]
    head2 = second_push(env.origin)
    env.standin.push(REPO, "bump-iris", before=head)
    env.settle()
    stale = gl_statuses(env, head2, "mlp/governance")
    assert [s["status"] for s in stale] == ["pending", "pending"]
    assert "stale" in stale[-1]["description"]
    assert [n["id"] for n in project.notes[iid]] == [note_id]
    assert f"→ `{head2[:12]}`" in project.notes[iid][0]["body"]
    assert env.standin.calls("PUT", f"/notes/{note_id}")

    # GitLab keeps an approval across pushes (unless the project resets them); re-approving
    # means unapprove + approve, and only then do they count again.
    for token in ("t-alice", "t-bob"):
        env.call(token, "POST", f"{mr_path}/unapprove")
        env.call(token, "POST", f"{mr_path}/approve")
    env.settle()
    assert gl_statuses(env, head2, "mlp/governance")[-1]["status"] == "success"

    merged = env.call("t-alice", "PUT", f"{mr_path}/merge")
    merge_sha = merged.json()["merge_commit_sha"]
    env.settle()
    audit = AuditLog(env.state).events(action="merge")
    assert [(e.environment, e.pr, e.approvers, e.merge_commit) for e in audit] == [
        ("prod", f"gitlab:{REPO}#{iid}", ["alice", "bob"], merge_sha)
    ]
    assert sorted(e for e, _ in env.sync_requests()) == ["dev", "prod", "staging"]
