"""A small GitHub REST client (httpx): pull requests, commit statuses, comments, reviews.

Endpoints as documented at docs.github.com/rest (API version 2022-11-28):
`GET /repos/{owner}/{repo}/pulls/{n}`, `POST /repos/{owner}/{repo}/pulls`,
`GET /repos/{owner}/{repo}/pulls/{n}/reviews`, `GET /repos/{owner}/{repo}/pulls/{n}/files`,
`POST /repos/{owner}/{repo}/statuses/{sha}`, `GET|POST /repos/{owner}/{repo}/issues/{n}/comments`,
`PATCH /repos/{owner}/{repo}/issues/comments/{id}`. Token auth (`Authorization: Bearer`),
retry after the primary (`x-ratelimit-reset`) or secondary (`retry-after`) rate limit,
`Link` pagination.
"""

from __future__ import annotations

from typing import Any

import httpx

from mlp.governance import Review
from mlp.webhooks.hosting import ChangeRequest, Comment, RestClient, StatusState, parse_time

DEFAULT_API = "https://api.github.com"


class GitHubClient:
    provider = "github"

    def __init__(
        self,
        token: str,
        api_url: str = DEFAULT_API,
        *,
        max_retries: int = 3,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.rest = RestClient(
            api_url,
            {
                "Authorization": f"Bearer {token}",
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28",
                "User-Agent": "mlp",
            },
            max_retries=max_retries,
            transport=transport,
        )

    def close(self) -> None:
        self.rest.close()

    @staticmethod
    def _pull(data: dict[str, Any]) -> ChangeRequest:
        merged = bool(data.get("merged")) or bool(data.get("merged_at"))
        return ChangeRequest(
            number=int(data["number"]),
            author=(data.get("user") or {}).get("login", ""),
            head_sha=data["head"]["sha"],
            base_ref=data["base"]["ref"],
            head_ref=data["head"]["ref"],
            base_sha=data["base"].get("sha", ""),
            state="merged" if merged else data.get("state", "open"),
            merged=merged,
            merge_commit_sha=data.get("merge_commit_sha") if merged else None,
            title=data.get("title") or "",
            url=data.get("html_url") or "",
        )

    def change_request(self, repo: str, number: int) -> ChangeRequest:
        return self._pull(self.rest.json("GET", f"/repos/{repo}/pulls/{number}"))

    def reviews(self, repo: str, cr: ChangeRequest) -> list[Review]:
        out = []
        for r in self.rest.paginate(f"/repos/{repo}/pulls/{cr.number}/reviews"):
            out.append(
                Review(
                    user=(r.get("user") or {}).get("login", ""),
                    state=str(r.get("state", "")).lower(),
                    commit_sha=r.get("commit_id"),
                    submitted_at=parse_time(r.get("submitted_at")),
                )
            )
        return out

    def changed_files(self, repo: str, number: int) -> list[str]:
        return [f["filename"] for f in self.rest.paginate(f"/repos/{repo}/pulls/{number}/files")]

    def set_status(
        self, repo: str, sha: str, context: str, state: StatusState, description: str, target_url: str | None = None
    ) -> None:
        body: dict[str, Any] = {"state": state, "context": context, "description": description[:140]}
        if target_url:
            body["target_url"] = target_url
        # the newest status per context wins: sending the same one twice changes nothing
        self.rest.json("POST", f"/repos/{repo}/statuses/{sha}", json=body, idempotent=True)

    def statuses(self, repo: str, ref: str) -> list[dict[str, Any]]:
        return list(self.rest.paginate(f"/repos/{repo}/commits/{ref}/statuses"))

    def comments(self, repo: str, number: int) -> list[Comment]:
        return [
            Comment(int(c["id"]), c.get("body") or "", (c.get("user") or {}).get("login", ""))
            for c in self.rest.paginate(f"/repos/{repo}/issues/{number}/comments")
        ]

    def create_comment(self, repo: str, number: int, body: str) -> Comment:
        c = self.rest.json("POST", f"/repos/{repo}/issues/{number}/comments", json={"body": body})
        return Comment(int(c["id"]), c.get("body") or "")

    def update_comment(self, repo: str, number: int, comment_id: int, body: str) -> Comment:
        c = self.rest.json(
            "PATCH", f"/repos/{repo}/issues/comments/{comment_id}", json={"body": body}, idempotent=True
        )  # replaces the body
        return Comment(int(c["id"]), c.get("body") or "")

    def open_change_request(self, repo: str, head: str, base: str, title: str, body: str = "") -> ChangeRequest:
        data = self.rest.json(
            "POST", f"/repos/{repo}/pulls", json={"title": title, "head": head, "base": base, "body": body}
        )
        return self._pull(data)
