"""A local stand-in for the parts of the GitHub REST API and webhooks mlp uses.

It follows the documented endpoints and shapes (docs.github.com/rest, API version
2022-11-28) closely enough that `mlp.webhooks.github.GitHubClient` cannot tell it from
GitHub, and it behaves like GitHub where the PR flow depends on it:

- token auth (`Authorization: Bearer|token`), 401 "Bad credentials" otherwise;
- pull requests backed by a real local Git repository: the head SHA is the branch's
  commit, `push()` moves it (and sends `push` + `pull_request` `synchronize`), merging
  makes a real merge commit;
- reviews carry the `commit_id` they were given on; GitHub refuses (422) an approval
  by the pull request's author;
- commit statuses, issue comments (create / list / edit), `Link` pagination with
  `per_page` / `page`;
- rate limits on demand: the next N calls get 403 with `x-ratelimit-remaining: 0` and
  `x-ratelimit-reset`, or 429 with `retry-after`;
- webhooks: deliveries signed with `X-Hub-Signature-256`, bodies built from the real
  payloads in tests/fixtures/github (patched with this repository's numbers).

Everything received is recorded in `requests` so tests assert on what was sent.
`serve(app)` runs any ASGI app on 127.0.0.1 with a free port for a test.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import hmac
import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import git
import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@contextlib.contextmanager
def serve(app: Any, host: str = "127.0.0.1") -> Iterator[str]:
    """Run an ASGI app with uvicorn in a thread on a free port; yields its base URL."""
    config = uvicorn.Config(app, host=host, port=0, log_level="warning", lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    user: str | None
    status: int = 0


@dataclass
class Repo:
    full_name: str
    git_dir: Path
    pulls: dict[int, dict[str, Any]] = field(default_factory=dict)
    statuses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    comments: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    reviews: dict[int, list[dict[str, Any]]] = field(default_factory=dict)

    @functools.cached_property
    def git(self) -> git.Repo:  # one Repo object: each one keeps its own git cat-file processes
        return git.Repo(self.git_dir)

    def sha(self, ref: str) -> str:
        return self.git.commit(ref).hexsha


def _fixture(name: str) -> dict[str, Any] | None:
    # A missing file raises: the vendored fixtures are part of the repository.
    return json.loads((FIXTURES / "github" / name).read_text())


class GitHubStandIn:
    def __init__(
        self,
        tokens: dict[str, str],
        *,
        webhook_url: str | None = None,
        webhook_secret: bytes | None = None,
    ) -> None:
        self.tokens = tokens  # token -> login
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.repos: dict[str, Repo] = {}
        self.requests: list[Recorded] = []
        self.deliveries: list[tuple[str, str, int]] = []  # (event, delivery id, receiver status)
        self._ids = itertools.count(1000)
        self._numbers = itertools.count(1)
        self._lock = threading.RLock()
        self._rate_limits: list[tuple[str, float]] = []
        self.app = self._build()
        self.base_url = ""

    # --- test controls ----------------------------------------------------------------

    def add_repo(self, full_name: str, git_dir: Path) -> Repo:
        self.repos[full_name] = Repo(full_name, git_dir)
        return self.repos[full_name]

    def rate_limit(self, count: int = 1, mode: str = "primary", seconds: float = 1.0) -> None:
        """The next `count` API calls are refused as rate limited for `seconds`."""
        self._rate_limits.extend([(mode, seconds)] * count)

    def calls(self, method: str | None = None, contains: str = "") -> list[Recorded]:
        return [r for r in self.requests if (method is None or r.method == method) and contains in r.path]

    def push(self, full_name: str, branch: str, before: str | None = None) -> str:
        """Tell the stand-in a branch moved (after committing to its Git repo), like a git push."""
        repo = self.repos[full_name]
        after = repo.sha(branch)
        self._deliver("push", self._push_payload(repo, branch, before or "0" * 40, after))
        for pr in repo.pulls.values():
            if pr["state"] == "open" and pr["head"]["ref"] == branch and pr["head"]["sha"] != after:
                previous = pr["head"]["sha"]
                pr["head"]["sha"] = after
                repo.git.git.update_ref(f"refs/pull/{pr['number']}/head", after)
                pr["updated_at"] = now_iso()
                payload = self._pr_payload(repo, pr, "synchronize")
                payload["before"], payload["after"] = previous, after
                self._deliver("pull_request", payload)
        return after

    # --- webhooks -----------------------------------------------------------------------

    def _deliver(self, event: str, payload: dict[str, Any]) -> None:
        if not self.webhook_url:
            return
        body = json.dumps(payload).encode()
        delivery = str(uuid.uuid4())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/standin",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery,
            "X-GitHub-Hook-ID": "1",
        }
        if self.webhook_secret is not None:
            digest = hmac.new(self.webhook_secret, body, hashlib.sha256).hexdigest()
            headers["X-Hub-Signature-256"] = "sha256=" + digest
        response = httpx.post(self.webhook_url, content=body, headers=headers, timeout=10)
        self.deliveries.append((event, delivery, response.status_code))

    def _repository(self, repo: Repo) -> dict[str, Any]:
        owner, name = repo.full_name.split("/", 1)
        return {"id": 1, "name": name, "full_name": repo.full_name, "owner": {"login": owner}, "private": True}

    def _pr_payload(self, repo: Repo, pr: dict[str, Any], action: str) -> dict[str, Any]:
        payload = copy.deepcopy(_fixture("pull_request.opened.json") or {})
        payload.update(
            {
                "action": action,
                "number": pr["number"],
                "pull_request": copy.deepcopy(pr),
                "repository": self._repository(repo),
                "sender": {"login": pr["user"]["login"]},
            }
        )
        return payload

    def _push_payload(self, repo: Repo, branch: str, before: str, after: str) -> dict[str, Any]:
        payload = copy.deepcopy(_fixture("push.json") or {})
        payload.update(
            {
                "ref": f"refs/heads/{branch}",
                "before": before,
                "after": after,
                "created": False,
                "deleted": False,
                "forced": False,
                "repository": self._repository(repo),
                "head_commit": {"id": after},
                "commits": [{"id": after}],
            }
        )
        return payload

    # --- API ----------------------------------------------------------------------------

    def _build(self) -> FastAPI:
        app = FastAPI()
        standin = self

        @app.middleware("http")
        async def record(request: Request, call_next: Any) -> Response:
            raw = await request.body()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            auth = request.headers.get("authorization", "")
            token = auth.split(" ", 1)[1] if " " in auth else ""
            user = standin.tokens.get(token)
            entry = Recorded(request.method, request.url.path, dict(request.query_params), body, user)
            standin.requests.append(entry)
            if user is None:
                entry.status = 401
                return JSONResponse({"message": "Bad credentials"}, status_code=401)
            if standin._rate_limits:
                mode, seconds = standin._rate_limits.pop(0)
                entry.status = 403 if mode == "primary" else 429
                if mode == "primary":
                    reset = int(time.time() + seconds + 0.999)
                    headers = {
                        "x-ratelimit-limit": "5000",
                        "x-ratelimit-remaining": "0",
                        "x-ratelimit-reset": str(reset),
                    }
                    return JSONResponse({"message": "API rate limit exceeded"}, status_code=403, headers=headers)
                return JSONResponse(
                    {"message": "You have exceeded a secondary rate limit"},
                    status_code=429,
                    headers={"retry-after": str(int(seconds))},
                )
            request.state.user = user
            response: Response = await call_next(request)
            entry.status = response.status_code
            return response

        def repo_of(owner: str, name: str) -> Repo:
            return standin.repos[f"{owner}/{name}"]

        def page(request: Request, items: list[Any]) -> JSONResponse:
            per_page = min(int(request.query_params.get("per_page", 30)), 100)
            number = int(request.query_params.get("page", 1))
            chunk = items[(number - 1) * per_page : number * per_page]
            last = max(1, -(-len(items) // per_page))
            links = []
            if number < last:
                nxt = request.url.include_query_params(page=number + 1, per_page=per_page)
                links.append(f'<{nxt}>; rel="next"')
                links.append(f'<{request.url.include_query_params(page=last, per_page=per_page)}>; rel="last"')
            return JSONResponse(chunk, headers={"link": ", ".join(links)} if links else None)

        def not_found() -> JSONResponse:
            return JSONResponse({"message": "Not Found"}, status_code=404)

        @app.get("/repos/{owner}/{name}/pulls/{number}")
        def get_pull(owner: str, name: str, number: int) -> JSONResponse:
            pr = repo_of(owner, name).pulls.get(number)
            return JSONResponse(pr) if pr else not_found()

        @app.post("/repos/{owner}/{name}/pulls")
        async def create_pull(owner: str, name: str, request: Request) -> JSONResponse:
            repo = repo_of(owner, name)
            data = await request.json()
            with standin._lock:
                number = next(standin._numbers)
                pr = {
                    "number": number,
                    "id": next(standin._ids),
                    "state": "open",
                    "title": data["title"],
                    "body": data.get("body") or "",
                    "user": {"login": request.state.user},
                    "head": {"ref": data["head"], "sha": repo.sha(data["head"])},
                    "base": {"ref": data["base"], "sha": repo.sha(data["base"])},
                    "merged": False,
                    "merged_at": None,
                    "merge_commit_sha": None,
                    "merged_by": None,
                    "html_url": f"https://github.example/{repo.full_name}/pull/{number}",
                    "created_at": now_iso(),
                    "updated_at": now_iso(),
                }
                repo.pulls[number] = pr
                repo.git.git.update_ref(f"refs/pull/{number}/head", pr["head"]["sha"])
            standin._deliver("pull_request", standin._pr_payload(repo, pr, "opened"))
            return JSONResponse(pr, status_code=201)

        @app.get("/repos/{owner}/{name}/pulls/{number}/files")
        def pull_files(owner: str, name: str, number: int, request: Request) -> JSONResponse:
            repo = repo_of(owner, name)
            pr = repo.pulls[number]
            diff = repo.git.commit(pr["base"]["sha"]).diff(pr["head"]["sha"])
            files = [{"filename": d.b_path or d.a_path, "status": d.change_type} for d in diff]
            return page(request, files)

        @app.get("/repos/{owner}/{name}/pulls/{number}/reviews")
        def list_reviews(owner: str, name: str, number: int, request: Request) -> JSONResponse:
            return page(request, repo_of(owner, name).reviews.get(number, []))

        @app.post("/repos/{owner}/{name}/pulls/{number}/reviews")
        async def create_review(owner: str, name: str, number: int, request: Request) -> JSONResponse:
            repo = repo_of(owner, name)
            pr = repo.pulls[number]
            data = await request.json()
            event = data.get("event", "COMMENT")
            user = request.state.user
            if event == "APPROVE" and user == pr["user"]["login"]:
                return JSONResponse(
                    {"message": "Unprocessable Entity", "errors": ["Can not approve your own pull request"]},
                    status_code=422,
                )
            state = {"APPROVE": "APPROVED", "REQUEST_CHANGES": "CHANGES_REQUESTED"}.get(event, "COMMENTED")
            review = {
                "id": next(standin._ids),
                "user": {"login": user},
                "body": data.get("body") or "",
                "state": state,
                "commit_id": data.get("commit_id") or pr["head"]["sha"],
                "submitted_at": now_iso(),
            }
            repo.reviews.setdefault(number, []).append(review)
            payload = copy.deepcopy(_fixture("pull_request_review.submitted.approved.json") or {})
            payload.update(
                {
                    "action": "submitted",
                    "review": {**review, "state": state.lower()},
                    "pull_request": copy.deepcopy(pr),
                    "repository": standin._repository(repo),
                    "sender": {"login": user},
                }
            )
            standin._deliver("pull_request_review", payload)
            return JSONResponse(review)

        @app.put("/repos/{owner}/{name}/pulls/{number}/merge")
        async def merge(owner: str, name: str, number: int, request: Request) -> JSONResponse:
            repo = repo_of(owner, name)
            pr = repo.pulls[number]
            g = repo.git
            base, head = pr["base"]["ref"], pr["head"]["ref"]
            g.git.checkout(base)
            g.git.merge("--no-ff", head, "-m", f"Merge pull request #{number} from {head}")
            sha = g.head.commit.hexsha
            before = pr["base"]["sha"]
            pr.update(
                {
                    "state": "closed",
                    "merged": True,
                    "merged_at": now_iso(),
                    "merge_commit_sha": sha,
                    "merged_by": {"login": request.state.user},
                }
            )
            standin._deliver("pull_request", standin._pr_payload(repo, pr, "closed"))
            standin._deliver("push", standin._push_payload(repo, base, before, sha))
            return JSONResponse({"sha": sha, "merged": True, "message": "Pull Request successfully merged"})

        @app.post("/repos/{owner}/{name}/statuses/{sha}")
        async def create_status(owner: str, name: str, sha: str, request: Request) -> JSONResponse:
            data = await request.json()
            if data.get("state") not in ("error", "failure", "pending", "success"):
                return JSONResponse({"message": "Validation Failed"}, status_code=422)
            status = {
                "id": next(standin._ids),
                "state": data["state"],
                "context": data.get("context") or "default",
                "description": data.get("description"),
                "target_url": data.get("target_url"),
                "created_at": now_iso(),
                "creator": {"login": request.state.user},
            }
            # GitHub lists a commit's statuses newest first.
            repo_of(owner, name).statuses.setdefault(sha, []).insert(0, status)
            return JSONResponse(status, status_code=201)

        @app.get("/repos/{owner}/{name}/commits/{ref}/statuses")
        def list_statuses(owner: str, name: str, ref: str, request: Request) -> JSONResponse:
            repo = repo_of(owner, name)
            sha = ref if ref in repo.statuses else repo.sha(ref)
            return page(request, repo.statuses.get(sha, []))

        @app.get("/repos/{owner}/{name}/issues/{number}/comments")
        def list_comments(owner: str, name: str, number: int, request: Request) -> JSONResponse:
            return page(request, repo_of(owner, name).comments.get(number, []))

        @app.post("/repos/{owner}/{name}/issues/{number}/comments")
        async def create_comment(owner: str, name: str, number: int, request: Request) -> JSONResponse:
            data = await request.json()
            comment = {
                "id": next(standin._ids),
                "body": data["body"],
                "user": {"login": request.state.user},
                "created_at": now_iso(),
                "updated_at": now_iso(),
            }
            repo_of(owner, name).comments.setdefault(number, []).append(comment)
            return JSONResponse(comment, status_code=201)

        @app.patch("/repos/{owner}/{name}/issues/comments/{comment_id}")
        async def edit_comment(owner: str, name: str, comment_id: int, request: Request) -> JSONResponse:
            data = await request.json()
            for comments in repo_of(owner, name).comments.values():
                for comment in comments:
                    if comment["id"] == comment_id:
                        comment["body"] = data["body"]
                        comment["updated_at"] = now_iso()
                        return JSONResponse(comment)
            return not_found()

        return app

    # --- convenience for tests ----------------------------------------------------------

    def latest_status(self, full_name: str, sha: str, context: str) -> dict[str, Any] | None:
        return next((s for s in self.repos[full_name].statuses.get(sha, []) if s["context"] == context), None)
