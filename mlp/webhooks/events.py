"""Webhook payloads from GitHub and GitLab, turned into a few host-neutral events.

Only identifiers are taken from payloads (which pull request, which branch, which
commit); the PR flow re-reads the current state through the host's API, so a late
or out-of-order delivery can never make mlp act on stale data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

ZERO_SHA = "0" * 40
COMMAND_PREFIX = "/mlp"

Provider = Literal["github", "gitlab"]
ChangeKind = Literal["check", "review", "merged", "closed", "command"]


@dataclass(frozen=True)
class PingEvent:
    provider: Provider
    repo: str
    zen: str = ""


@dataclass(frozen=True)
class PushEvent:
    provider: Provider
    repo: str
    ref: str
    after: str
    deleted: bool = False
    pusher: str = ""

    @property
    def branch(self) -> str | None:
        return self.ref[len("refs/heads/") :] if self.ref.startswith("refs/heads/") else None


@dataclass(frozen=True)
class ChangeRequestEvent:
    """Something happened to a pull request (GitHub) or merge request (GitLab).

    `kind`: `check` (opened / new commits: plan and evaluate), `review` (re-evaluate
    governance only), `merged`, `closed`, `command` (a `/mlp ...` comment).
    """

    provider: Provider
    repo: str
    number: int
    kind: ChangeKind
    action: str
    head_sha: str = ""
    base_ref: str = ""
    head_ref: str = ""
    sender: str = ""
    merge_commit_sha: str | None = None
    command: str = ""


Event = PingEvent | PushEvent | ChangeRequestEvent


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def parse_github(event: str, payload: dict[str, Any]) -> Event | None:
    """The event a GitHub delivery carries, or None for events mlp does not act on."""
    repo = _str((payload.get("repository") or {}).get("full_name"))
    sender = _str((payload.get("sender") or {}).get("login"))
    if event == "ping":
        return PingEvent("github", repo, _str(payload.get("zen")))
    if event == "push":
        return PushEvent(
            "github",
            repo,
            _str(payload.get("ref")),
            _str(payload.get("after")),
            bool(payload.get("deleted")) or payload.get("after") == ZERO_SHA,
            _str((payload.get("pusher") or {}).get("name")),
        )
    action = _str(payload.get("action"))
    if event in ("pull_request", "pull_request_review"):
        pr = payload.get("pull_request") or {}
        number = int(pr.get("number") or payload.get("number") or 0)
        kind: ChangeKind | None
        if event == "pull_request_review":
            kind = "review" if action in ("submitted", "dismissed", "edited") else None
        elif action in ("opened", "synchronize", "reopened", "ready_for_review"):
            kind = "check"
        elif action == "edited" and "base" in (payload.get("changes") or {}):
            kind = "check"  # retargeted to another base branch
        elif action == "closed":
            kind = "merged" if pr.get("merged") else "closed"
        else:
            kind = None
        if kind is None or not number:
            return None
        return ChangeRequestEvent(
            "github",
            repo,
            number,
            kind,
            action,
            head_sha=_str((pr.get("head") or {}).get("sha")),
            base_ref=_str((pr.get("base") or {}).get("ref")),
            head_ref=_str((pr.get("head") or {}).get("ref")),
            sender=sender,
            merge_commit_sha=pr.get("merge_commit_sha") if pr.get("merged") else None,
        )
    if event == "issue_comment":
        issue = payload.get("issue") or {}
        body = _str((payload.get("comment") or {}).get("body")).strip()
        if action != "created" or "pull_request" not in issue or not body.startswith(COMMAND_PREFIX):
            return None
        return ChangeRequestEvent(
            "github",
            repo,
            int(issue.get("number") or 0),
            "command",
            action,
            sender=sender,
            command=body.splitlines()[0][len(COMMAND_PREFIX) :].strip(),
        )
    return None


def parse_gitlab(event: str, payload: dict[str, Any]) -> Event | None:
    """The event a GitLab delivery carries (by `X-Gitlab-Event`), or None."""
    project = payload.get("project") or {}
    repo = _str(project.get("path_with_namespace")) or str(project.get("id") or payload.get("project_id") or "")
    sender = _str((payload.get("user") or {}).get("username")) or _str(payload.get("user_username"))
    if event in ("Push Hook", "Tag Push Hook"):
        after = _str(payload.get("after"))
        return PushEvent("gitlab", repo, _str(payload.get("ref")), after, after == ZERO_SHA, sender)
    if event == "Merge Request Hook":
        attrs = payload.get("object_attributes") or {}
        action = _str(attrs.get("action"))
        kind: ChangeKind | None
        if action in ("open", "reopen"):
            kind = "check"
        elif action == "update":
            # `oldrev` is present only when the update pushed new commits.
            kind = "check" if attrs.get("oldrev") else "review"
        elif action in ("approved", "unapproved", "approval", "unapproval"):
            kind = "review"
        elif action == "merge":
            kind = "merged"
        elif action == "close":
            kind = "closed"
        else:
            kind = None
        iid = int(attrs.get("iid") or 0)
        if kind is None or not iid:
            return None
        return ChangeRequestEvent(
            "gitlab",
            repo,
            iid,
            kind,
            action,
            head_sha=_str((attrs.get("last_commit") or {}).get("id")),
            base_ref=_str(attrs.get("target_branch")),
            head_ref=_str(attrs.get("source_branch")),
            sender=sender,
            merge_commit_sha=attrs.get("merge_commit_sha") if action == "merge" else None,
        )
    if event == "Note Hook":
        attrs = payload.get("object_attributes") or {}
        mr = payload.get("merge_request") or {}
        body = _str(attrs.get("note")).strip()
        if attrs.get("noteable_type") != "MergeRequest" or not body.startswith(COMMAND_PREFIX):
            return None
        return ChangeRequestEvent(
            "gitlab",
            repo,
            int(mr.get("iid") or 0),
            "command",
            _str(attrs.get("action")) or "create",
            sender=sender,
            command=body.splitlines()[0][len(COMMAND_PREFIX) :].strip(),
        )
    return None
