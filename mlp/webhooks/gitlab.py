"""A small GitLab REST client (httpx, API v4): merge requests, commit statuses, notes, approvals.

Endpoints as documented at docs.gitlab.com/api: `GET|POST /projects/:id/merge_requests[/:iid]`,
`GET /projects/:id/merge_requests/:iid/approvals`, `GET /projects/:id/merge_requests/:iid/versions`,
`POST /projects/:id/statuses/:sha`, `GET|POST /projects/:id/merge_requests/:iid/notes`,
`PUT /projects/:id/merge_requests/:iid/notes/:note_id`. `:id` is the numeric id or the
URL-encoded path (`group%2Fproject`). Token auth (`PRIVATE-TOKEN`), retry after
`Retry-After` / `RateLimit-Reset`, pagination by `Link` or `X-Next-Page`.

Staleness: the approvals API gives `approved_at` per approver on current GitLab; the
head commit's push time comes from the merge request's diff versions.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import httpx

from mlp.governance import Review
from mlp.webhooks.hosting import ChangeRequest, Comment, RestClient, StatusState, parse_time

DEFAULT_API = "https://gitlab.com/api/v4"
# mlp's status states -> GitLab commit status states
_STATES = {"pending": "pending", "success": "success", "failure": "failed", "error": "failed"}


def project_id(repo: str) -> str:
    """`group/project` -> `group%2Fproject`; numeric ids pass through."""
    return urllib.parse.quote(repo, safe="")


class GitLabClient:
    provider = "gitlab"

    def __init__(
        self,
        token: str,
        api_url: str = DEFAULT_API,
        *,
        max_retries: int = 3,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.rest = RestClient(
            api_url, {"PRIVATE-TOKEN": token, "User-Agent": "mlp"}, max_retries=max_retries, transport=transport
        )

    def close(self) -> None:
        self.rest.close()

    def _mr_path(self, repo: str, iid: int) -> str:
        return f"/projects/{project_id(repo)}/merge_requests/{iid}"

    def _mr(self, repo: str, data: dict[str, Any]) -> ChangeRequest:
        iid = int(data["iid"])
        head_sha = data.get("sha") or (data.get("diff_refs") or {}).get("head_sha") or ""
        pushed_at = None
        if data.get("state") == "opened":
            pushed_at = self._head_pushed_at(repo, iid, head_sha)
        return ChangeRequest(
            number=iid,
            author=(data.get("author") or {}).get("username", ""),
            head_sha=head_sha,
            base_ref=data.get("target_branch", ""),
            head_ref=data.get("source_branch", ""),
            base_sha=(data.get("diff_refs") or {}).get("base_sha") or "",
            state={"opened": "open"}.get(data.get("state", ""), data.get("state", "")),
            merged=data.get("state") == "merged",
            merge_commit_sha=data.get("merge_commit_sha"),
            head_pushed_at=pushed_at,
            title=data.get("title") or "",
            url=data.get("web_url") or "",
        )

    def _head_pushed_at(self, repo: str, iid: int, head_sha: str) -> Any:
        versions = list(self.rest.paginate(self._mr_path(repo, iid) + "/versions"))
        times = [parse_time(v.get("created_at")) for v in versions if v.get("head_commit_sha") == head_sha]
        known = [t for t in times if t is not None]
        return min(known) if known else None

    def change_request(self, repo: str, number: int) -> ChangeRequest:
        return self._mr(repo, self.rest.json("GET", self._mr_path(repo, number)))

    def reviews(self, repo: str, cr: ChangeRequest) -> list[Review]:
        data = self.rest.json("GET", self._mr_path(repo, cr.number) + "/approvals") or {}
        return [
            Review(
                user=(a.get("user") or {}).get("username", ""),
                state="approved",
                submitted_at=parse_time(a.get("approved_at")),
            )
            for a in data.get("approved_by") or []
        ]

    def set_status(
        self, repo: str, sha: str, context: str, state: StatusState, description: str, target_url: str | None = None
    ) -> None:
        body: dict[str, Any] = {"state": _STATES[state], "name": context, "description": description[:255]}
        if target_url:
            body["target_url"] = target_url
        # sets the state of one named status of the commit: sending it twice changes nothing
        self.rest.json("POST", f"/projects/{project_id(repo)}/statuses/{sha}", json=body, idempotent=True)

    def statuses(self, repo: str, sha: str) -> list[dict[str, Any]]:
        return list(self.rest.paginate(f"/projects/{project_id(repo)}/repository/commits/{sha}/statuses"))

    def comments(self, repo: str, number: int) -> list[Comment]:
        return [
            Comment(int(n["id"]), n.get("body") or "", (n.get("author") or {}).get("username", ""))
            for n in self.rest.paginate(
                self._mr_path(repo, number) + "/notes", {"sort": "asc", "order_by": "created_at"}
            )
            if not n.get("system")
        ]

    def create_comment(self, repo: str, number: int, body: str) -> Comment:
        n = self.rest.json("POST", self._mr_path(repo, number) + "/notes", json={"body": body})
        return Comment(int(n["id"]), n.get("body") or "")

    def update_comment(self, repo: str, number: int, comment_id: int, body: str) -> Comment:
        n = self.rest.json("PUT", self._mr_path(repo, number) + f"/notes/{comment_id}", json={"body": body})
        return Comment(int(n["id"]), n.get("body") or "")

    def open_change_request(self, repo: str, head: str, base: str, title: str, body: str = "") -> ChangeRequest:
        data = self.rest.json(
            "POST",
            f"/projects/{project_id(repo)}/merge_requests",
            json={"source_branch": head, "target_branch": base, "title": title, "description": body},
        )
        return self._mr(repo, data)
