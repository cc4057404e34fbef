"""A local stand-in for the parts of the GitLab REST API (v4) and webhooks mlp uses.

Follows docs.gitlab.com/api: projects addressed by numeric id or URL-encoded path,
`PRIVATE-TOKEN` (or `Authorization: Bearer`) auth, merge requests backed by a real local
Git repository (`refs/merge-requests/IID/head` kept current, diff `versions` recorded
per push, a real merge commit on merge), commit statuses, MR notes (create / list /
update), approvals with `approved_at` (approve / unapprove; GitLab refuses the
author's own approval by default), pagination with `X-Next-Page` / `X-Total-Pages`
and `Link`, and rate limits on demand (429 with `Retry-After` and `RateLimit-Reset`).

Webhooks carry `X-Gitlab-Token`, `X-Gitlab-Event`, `X-Gitlab-Event-UUID` and
`Idempotency-Key`; bodies are built from the real payloads in tests/fixtures/gitlab.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import git
import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from standins.github_api import FIXTURES, Recorded, now_iso


def _fixture(name: str) -> dict[str, Any] | None:
    # A missing file raises: the vendored fixtures are part of the repository.
    return json.loads((FIXTURES / "gitlab" / name).read_text())


@dataclass
class Project:
    id: int
    path: str
    git_dir: Path
    mrs: dict[int, dict[str, Any]] = field(default_factory=dict)
    versions: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    approvals: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    notes: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    statuses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @functools.cached_property
    def git(self) -> git.Repo:  # one Repo object: each one keeps its own git cat-file processes
        return git.Repo(self.git_dir)

    def sha(self, ref: str) -> str:
        return self.git.commit(ref).hexsha


class GitLabStandIn:
    def __init__(self, tokens: dict[str, str], *, webhook_url: str | None = None, webhook_token: str | None = None):
        self.tokens = tokens  # token -> username
        self.webhook_url = webhook_url
        self.webhook_token = webhook_token
        self.projects: dict[str, Project] = {}
        self.requests: list[Recorded] = []
        self.deliveries: list[tuple[str, str, int]] = []
        self._ids = itertools.count(500)
        self._lock = threading.RLock()
        self._rate_limits: list[float] = []
        self.app = self._build()

    def add_project(self, path: str, git_dir: Path) -> Project:
        project = Project(len(self.projects) + 1, path, git_dir)
        self.projects[path] = project
        return project

    def rate_limit(self, count: int = 1, seconds: float = 1.0) -> None:
        self._rate_limits.extend([seconds] * count)

    def calls(self, method: str | None = None, contains: str = "") -> list[Recorded]:
        return [r for r in self.requests if (method is None or r.method == method) and contains in r.path]

    def project(self, ident: str) -> Project:
        ident = urllib.parse.unquote(ident)
        for p in self.projects.values():
            if ident in (p.path, str(p.id)):
                return p
        raise KeyError(ident)

    def latest_status(self, path: str, sha: str, name: str) -> dict[str, Any] | None:
        return next((s for s in self.projects[path].statuses.get(sha, []) if s["name"] == name), None)

    # --- repository events --------------------------------------------------------------

    def push(self, path: str, branch: str, before: str | None = None) -> str:
        project = self.projects[path]
        after = project.sha(branch)
        payload = copy.deepcopy(_fixture("push.json") or {})
        payload.update(
            {
                "ref": f"refs/heads/{branch}",
                "before": before or "0" * 40,
                "after": after,
                "checkout_sha": after,
                "project": self._project_json(project),
                "project_id": project.id,
                "commits": [{"id": after}],
            }
        )
        self._deliver("Push Hook", payload)
        for mr in project.mrs.values():
            if mr["state"] == "opened" and mr["source_branch"] == branch and mr["sha"] != after:
                old = mr["sha"]
                self._new_version(project, mr, after)
                self._deliver("Merge Request Hook", self._mr_payload(project, mr, "update", oldrev=old))
        return after

    def _new_version(self, project: Project, mr: dict[str, Any], sha: str) -> None:
        mr["sha"] = sha
        mr["diff_refs"]["head_sha"] = sha
        mr["updated_at"] = now_iso()
        project.git.git.update_ref(f"refs/merge-requests/{mr['iid']}/head", sha)
        # GitLab lists diff versions newest first; each records when that head arrived.
        project.versions.setdefault(mr["iid"], []).insert(
            0,
            {
                "id": next(self._ids),
                "head_commit_sha": sha,
                "base_commit_sha": mr["diff_refs"]["base_sha"],
                "start_commit_sha": mr["diff_refs"]["start_sha"],
                "created_at": _now_precise(),
                "merge_request_id": mr["id"],
                "state": "collected",
                "real_size": "1",
            },
        )

    def _project_json(self, project: Project) -> dict[str, Any]:
        return {
            "id": project.id,
            "name": project.path.split("/")[-1],
            "path_with_namespace": project.path,
            "default_branch": "main",
            "web_url": f"https://gitlab.example/{project.path}",
        }

    def _mr_payload(
        self, project: Project, mr: dict[str, Any], action: str, oldrev: str | None = None, user: str | None = None
    ) -> dict[str, Any]:
        payload = copy.deepcopy(_fixture("merge_request.open.json") or {})
        attrs = dict(payload.get("object_attributes") or {})
        attrs.update(
            {
                "id": mr["id"],
                "iid": mr["iid"],
                "title": mr["title"],
                "state": mr["state"],
                "action": action,
                "source_branch": mr["source_branch"],
                "target_branch": mr["target_branch"],
                "last_commit": {"id": mr["sha"]},
                "merge_commit_sha": mr.get("merge_commit_sha"),
                "url": mr["web_url"],
            }
        )
        if oldrev:
            attrs["oldrev"] = oldrev
        payload.update(
            {
                "object_kind": "merge_request",
                "event_type": "merge_request",
                "object_attributes": attrs,
                "project": self._project_json(project),
                "user": {"username": user or mr["author"]["username"], "name": user or mr["author"]["username"]},
            }
        )
        return payload

    def _deliver(self, event: str, payload: dict[str, Any]) -> None:
        if not self.webhook_url:
            return
        delivery = str(uuid.uuid4())
        headers = {
            "Content-Type": "application/json",
            "X-Gitlab-Event": event,
            "X-Gitlab-Event-UUID": delivery,
            "Idempotency-Key": delivery,
            "User-Agent": "GitLab/standin",
            "X-Gitlab-Instance": "https://gitlab.example",
        }
        if self.webhook_token is not None:
            headers["X-Gitlab-Token"] = self.webhook_token
        response = httpx.post(self.webhook_url, content=json.dumps(payload).encode(), headers=headers, timeout=10)
        self.deliveries.append((event, delivery, response.status_code))

    # --- API ----------------------------------------------------------------------------

    def _build(self) -> FastAPI:
        app = FastAPI()
        standin = self
        prefix = "/api/v4/projects/{project:path}"

        @app.middleware("http")
        async def record(request: Request, call_next: Any) -> Response:
            raw = await request.body()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            token = request.headers.get("private-token") or request.headers.get("authorization", "").removeprefix(
                "Bearer "
            )
            user = standin.tokens.get(token)
            entry = Recorded(request.method, request.url.path, dict(request.query_params), body, user)
            standin.requests.append(entry)
            if user is None:
                entry.status = 401
                return JSONResponse({"message": "401 Unauthorized"}, status_code=401)
            if standin._rate_limits:
                seconds = standin._rate_limits.pop(0)
                entry.status = 429
                return JSONResponse(
                    {"message": "Retry later"},
                    status_code=429,
                    headers={
                        "Retry-After": str(int(seconds)),
                        "RateLimit-Remaining": "0",
                        "RateLimit-Reset": str(int(time.time() + seconds)),
                    },
                )
            request.state.user = user
            response: Response = await call_next(request)
            entry.status = response.status_code
            return response

        def page(request: Request, items: list[Any]) -> JSONResponse:
            per_page = min(int(request.query_params.get("per_page", 20)), 100)
            number = int(request.query_params.get("page", 1))
            total_pages = max(1, -(-len(items) // per_page))
            headers = {
                "X-Page": str(number),
                "X-Per-Page": str(per_page),
                "X-Total": str(len(items)),
                "X-Total-Pages": str(total_pages),
                "X-Next-Page": str(number + 1) if number < total_pages else "",
            }
            return JSONResponse(items[(number - 1) * per_page : number * per_page], headers=headers)

        def not_found(what: str = "404 Not found") -> JSONResponse:
            return JSONResponse({"message": what}, status_code=404)

        @app.get(prefix + "/merge_requests/{iid}")
        def get_mr(project: str, iid: int) -> JSONResponse:
            mr = standin.project(project).mrs.get(iid)
            return JSONResponse(mr) if mr else not_found()

        @app.post(prefix + "/merge_requests")
        async def create_mr(project: str, request: Request) -> JSONResponse:
            p = standin.project(project)
            data = await request.json()
            with standin._lock:
                iid = len(p.mrs) + 1
                base = p.sha(data["target_branch"])
                mr = {
                    "id": next(standin._ids),
                    "iid": iid,
                    "project_id": p.id,
                    "title": data["title"],
                    "description": data.get("description") or "",
                    "state": "opened",
                    "source_branch": data["source_branch"],
                    "target_branch": data["target_branch"],
                    "author": {"username": request.state.user},
                    "sha": "",
                    "diff_refs": {"base_sha": base, "head_sha": "", "start_sha": base},
                    "merge_commit_sha": None,
                    "web_url": f"https://gitlab.example/{p.path}/-/merge_requests/{iid}",
                    "created_at": now_iso(),
                    "updated_at": now_iso(),
                }
                p.mrs[iid] = mr
                standin._new_version(p, mr, p.sha(data["source_branch"]))
            standin._deliver("Merge Request Hook", standin._mr_payload(p, mr, "open"))
            return JSONResponse(mr, status_code=201)

        @app.get(prefix + "/merge_requests/{iid}/versions")
        def versions(project: str, iid: int, request: Request) -> JSONResponse:
            return page(request, standin.project(project).versions.get(iid, []))

        @app.get(prefix + "/merge_requests/{iid}/approvals")
        def approvals(project: str, iid: int) -> JSONResponse:
            p = standin.project(project)
            mr = p.mrs[iid]
            approved = p.approvals.get(iid, [])
            return JSONResponse(
                {
                    "id": mr["id"],
                    "iid": iid,
                    "project_id": p.id,
                    "state": mr["state"],
                    "approved": bool(approved),
                    "approved_by": [
                        {"user": {"username": a["username"], "name": a["username"]}, "approved_at": a["approved_at"]}
                        for a in approved
                    ],
                }
            )

        @app.post(prefix + "/merge_requests/{iid}/approve")
        async def approve(project: str, iid: int, request: Request) -> JSONResponse:
            p = standin.project(project)
            mr = p.mrs[iid]
            user = request.state.user
            data = (await request.json()) if (await request.body()) else {}
            if data.get("sha") and data["sha"] != mr["sha"]:
                return JSONResponse({"message": "SHA does not match HEAD of source branch"}, status_code=409)
            if user == mr["author"]["username"]:
                return JSONResponse({"message": "401 Unauthorized"}, status_code=401)
            entries = p.approvals.setdefault(iid, [])
            if any(a["username"] == user for a in entries):
                return JSONResponse({"message": "already approved"}, status_code=401)
            entries.append({"username": user, "approved_at": _now_precise()})
            standin._deliver("Merge Request Hook", standin._mr_payload(p, mr, "approved", user=user))
            return JSONResponse({"iid": iid, "approved": True}, status_code=201)

        @app.post(prefix + "/merge_requests/{iid}/unapprove")
        def unapprove(project: str, iid: int, request: Request) -> JSONResponse:
            p = standin.project(project)
            p.approvals[iid] = [a for a in p.approvals.get(iid, []) if a["username"] != request.state.user]
            standin._deliver("Merge Request Hook", standin._mr_payload(p, p.mrs[iid], "unapproved"))
            return JSONResponse({"iid": iid}, status_code=201)

        @app.put(prefix + "/merge_requests/{iid}/merge")
        def merge(project: str, iid: int, request: Request) -> JSONResponse:
            p = standin.project(project)
            mr = p.mrs[iid]
            g = p.git
            before = p.sha(mr["target_branch"])
            g.git.checkout(mr["target_branch"])
            g.git.merge(
                "--no-ff",
                mr["source_branch"],
                "-m",
                f"Merge branch '{mr['source_branch']}' into '{mr['target_branch']}'\n\nSee merge request !{iid}",
            )
            sha = g.head.commit.hexsha
            mr.update(
                {
                    "state": "merged",
                    "merge_commit_sha": sha,
                    "merged_at": now_iso(),
                    "merged_by": {"username": request.state.user},
                }
            )
            standin._deliver("Merge Request Hook", standin._mr_payload(p, mr, "merge", user=request.state.user))
            payload = copy.deepcopy(_fixture("push.json") or {})
            payload.update(
                {
                    "ref": f"refs/heads/{mr['target_branch']}",
                    "before": before,
                    "after": sha,
                    "checkout_sha": sha,
                    "project": standin._project_json(p),
                    "commits": [{"id": sha}],
                }
            )
            standin._deliver("Push Hook", payload)
            return JSONResponse(mr)

        @app.post(prefix + "/statuses/{sha}")
        async def create_status(project: str, sha: str, request: Request) -> JSONResponse:
            data = await request.json()
            if data.get("state") not in ("pending", "running", "success", "failed", "canceled", "skipped"):
                return JSONResponse({"message": "state is invalid"}, status_code=400)
            status = {
                "id": next(standin._ids),
                "sha": sha,
                "status": data["state"],
                "name": data.get("name") or data.get("context") or "default",
                "description": data.get("description"),
                "target_url": data.get("target_url"),
                "created_at": now_iso(),
                "author": {"username": request.state.user},
            }
            standin.project(project).statuses.setdefault(sha, []).insert(0, status)
            return JSONResponse(status, status_code=201)

        @app.get(prefix + "/repository/commits/{sha}/statuses")
        def list_statuses(project: str, sha: str, request: Request) -> JSONResponse:
            return page(request, standin.project(project).statuses.get(sha, []))

        @app.get(prefix + "/merge_requests/{iid}/notes")
        def list_notes(project: str, iid: int, request: Request) -> JSONResponse:
            notes = list(standin.project(project).notes.get(iid, []))
            if request.query_params.get("sort", "desc") == "desc":
                notes.reverse()
            return page(request, notes)

        @app.post(prefix + "/merge_requests/{iid}/notes")
        async def create_note(project: str, iid: int, request: Request) -> JSONResponse:
            data = await request.json()
            note = {
                "id": next(standin._ids),
                "body": data["body"],
                "author": {"username": request.state.user},
                "system": False,
                "noteable_type": "MergeRequest",
                "noteable_iid": iid,
                "created_at": now_iso(),
                "updated_at": now_iso(),
            }
            standin.project(project).notes.setdefault(iid, []).append(note)
            return JSONResponse(note, status_code=201)

        @app.put(prefix + "/merge_requests/{iid}/notes/{note_id}")
        async def update_note(project: str, iid: int, note_id: int, request: Request) -> JSONResponse:
            data = await request.json()
            for note in standin.project(project).notes.get(iid, []):
                if note["id"] == note_id:
                    note["body"] = data["body"]
                    note["updated_at"] = now_iso()
                    return JSONResponse(note)
            return not_found("404 Note Not Found")

        return app


def _now_precise() -> str:
    # Millisecond timestamps as GitLab sends them ("2016-06-09T01:45:21.720Z"): an approval
    # and a push in the same second must still be ordered.
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
