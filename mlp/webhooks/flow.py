"""What mlp does with webhook events: reconcile on push, check and govern pull requests, audit merges.

`PullRequestFlow.handle` is the receiver's event handler:

- push to a branch (or tag) an environment tracks (`spec.branch`) -> `trigger(env, reason)`
  at once; other branches are ignored;
- pull/merge request opened or updated -> statuses `mlp/validate` and `mlp/governance`
  go `pending`, the head is validated, rendered and planned against the merge base in
  isolated work folders, then ONE comment (found by its hidden marker) is created or
  updated in place with the report, and both statuses are set;
- a review / approval -> governance is evaluated again against the current reviews;
- merge -> one audit event per affected environment with the PR, its approvers and the
  merge commit.

The trigger and the audit sink are small seams the controller provides
(`Controller.trigger`, `mlp.controller.store.AuditLog`); `mlp webhooks` run on its own
uses `request_sync` on the controller's state folder.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from git.exc import GitCommandError

from mlp.governance import GovernanceResult, PullRequestFacts, Requirement, evaluate
from mlp.governance.policy import EnvironmentVerdict
from mlp.webhooks.events import ChangeRequestEvent, Event, PingEvent, PushEvent
from mlp.webhooks.hosting import COMMENT_MARKER, ChangeRequest, GitHost, upsert_comment
from mlp.webhooks.prcheck import RevisionCheck, Workspace, WorkspaceError, check_revisions
from mlp.webhooks.report import governance_markdown

log = logging.getLogger("mlp.webhooks")

VALIDATE_CONTEXT = "mlp/validate"
GOVERNANCE_CONTEXT = "mlp/governance"
GOVERNANCE_MARKER = "<!-- mlp:governance -->"
WEBHOOK_REASON = "webhook"

ReconcileTrigger = Callable[[str, str], None]  # (environment, reason), e.g. Controller.trigger


class AuditSink(Protocol):
    def record_merge(
        self, environment: str, *, pr: str, approvers: list[str], merge_commit: str, author: str, title: str
    ) -> None: ...


class ControllerAudit:
    """`AuditSink` over the controller's SQLite audit log in a state folder."""

    def __init__(self, state_dir: str) -> None:
        from mlp.controller.store import AuditLog

        self.log = AuditLog(state_dir)

    def record_merge(
        self, environment: str, *, pr: str, approvers: list[str], merge_commit: str, author: str, title: str
    ) -> None:
        from mlp.controller.store import AuditEvent

        self.log.append(
            AuditEvent(
                environment=environment,
                action="merge",
                outcome="succeeded",
                revision=merge_commit,
                author=author,
                message=f"merged {pr}: {title}".strip(),
                pr=pr,
                approvers=approvers,
                merge_commit=merge_commit,
            )
        )


def request_sync_trigger(state_dir: str) -> ReconcileTrigger:
    """A trigger that asks the controller owning `state_dir` to reconcile now (cross-process)."""
    from mlp.controller.store import request_sync

    def trigger(environment: str, reason: str) -> None:
        request_sync(state_dir, environment, reason)

    return trigger


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class CheckOutcome:
    change: ChangeRequest
    check: RevisionCheck | None
    governance: GovernanceResult
    comment: str


class PullRequestFlow:
    def __init__(
        self,
        workspace: Workspace,
        hosts: Mapping[str, GitHost],
        *,
        trigger: ReconcileTrigger | None = None,
        audit: AuditSink | None = None,
        clock: Callable[[], datetime] = utcnow,
        details_url: str | None = None,
    ) -> None:
        self.workspace = workspace
        self.hosts = dict(hosts)
        self.trigger = trigger
        self.audit = audit
        self.clock = clock
        self.details_url = details_url
        self._checks: dict[tuple[str, str, int], RevisionCheck] = {}
        self._locks: dict[tuple[str, str, int], threading.Lock] = {}
        self._guard = threading.Lock()

    # --- dispatch -------------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        if isinstance(event, PingEvent):
            log.info("ping from %s %s: %s", event.provider, event.repo, event.zen)
        elif isinstance(event, PushEvent):
            self.on_push(event)
        elif isinstance(event, ChangeRequestEvent):
            host = self.hosts.get(event.provider)
            if host is None:
                log.warning("no %s client configured; ignoring %s #%s", event.provider, event.repo, event.number)
                return
            with self._lock_for(event.provider, event.repo, event.number):
                if event.kind in ("check", "command"):
                    self.check(host, event.repo, event.number)
                elif event.kind == "review":
                    self.reevaluate(host, event.repo, event.number)
                elif event.kind == "merged":
                    self.merged(host, event.repo, event.number)
                else:
                    self._checks.pop((event.provider, event.repo, event.number), None)

    def _lock_for(self, provider: str, repo: str, number: int) -> threading.Lock:
        # Events of one PR run one at a time, in order; different PRs may run in parallel.
        with self._guard:
            return self._locks.setdefault((provider, repo, number), threading.Lock())

    # --- push -----------------------------------------------------------------------------

    def environments_tracking(self, ref: str, sha: str) -> list[str]:
        """Environments whose `spec.branch` names the pushed branch or tag, read at the pushed commit."""
        name = ref.removeprefix("refs/heads/").removeprefix("refs/tags/")
        result, _ = self.workspace.load(sha)
        # Even when the pushed commit does not validate, the environments it names still
        # need a reconcile: the controller then refuses it and reports Degraded.
        return sorted(n for n, env in result.specs.environments.items() if env.spec.branch == name)

    def on_push(self, event: PushEvent) -> list[str]:
        if event.deleted or not event.after:
            return []
        self.workspace.fetch(f"+{event.ref}:{event.ref}")
        if not self.workspace.has(event.after):
            log.warning("push %s %s: commit %s not found", event.repo, event.ref, event.after[:12])
            return []
        envs = self.environments_tracking(event.ref, event.after)
        if not envs:
            log.info("push to %s tracks no environment; ignored", event.ref)
        for env in envs:
            log.info("push %s to %s: reconcile %s", event.after[:12], event.ref, env)
            if self.trigger is not None:
                # "webhook" is the controller's reason for this trigger (not "manual": the
                # environment's sync policy and windows still apply).
                self.trigger(env, WEBHOOK_REASON)
        return envs

    # --- pull requests --------------------------------------------------------------------

    def _fetch_change(self, host: GitHost, cr: ChangeRequest) -> None:
        # The hosts publish every PR/MR head under these refs, forks included.
        pattern = {"github": "refs/pull/{}/head", "gitlab": "refs/merge-requests/{}/head"}[host.provider]
        pr_ref = pattern.format(cr.number)
        self.workspace.fetch(f"+refs/heads/{cr.base_ref}:refs/heads/{cr.base_ref}", f"+{pr_ref}:{pr_ref}")

    def merge_base(self, cr: ChangeRequest) -> str:
        """The commit the PR branched from: the plan shows the PR's own changes, as the host's diff does."""
        base_tip = self.workspace.resolve(cr.base_ref)
        try:
            return str(self.workspace.repo.git.merge_base(base_tip, cr.head_sha)).strip() or base_tip
        except GitCommandError:  # unrelated histories: plan against the base tip
            return base_tip

    def _status(self, host: GitHost, repo: str, sha: str, context: str, state: str, text: str) -> None:
        host.set_status(repo, sha, context, state, text, self.details_url)  # type: ignore[arg-type]

    def check(self, host: GitHost, repo: str, number: int) -> CheckOutcome:
        cr = host.change_request(repo, number)
        if cr.state != "open":
            log.info("%s #%s is %s; not checked", repo, number, cr.state)
        self._status(host, repo, cr.head_sha, VALIDATE_CONTEXT, "pending", "validating, rendering and planning")
        self._status(host, repo, cr.head_sha, GOVERNANCE_CONTEXT, "pending", "waiting for the plan")
        try:
            self._fetch_change(host, cr)
            check = check_revisions(self.workspace, self.merge_base(cr), cr.head_sha)
        except WorkspaceError as exc:
            self._status(host, repo, cr.head_sha, VALIDATE_CONTEXT, "error", str(exc))
            self._status(host, repo, cr.head_sha, GOVERNANCE_CONTEXT, "error", "the change could not be checked out")
            raise
        except Exception as exc:
            # Never leave the statuses pending: say the check broke, then let the delivery fail.
            message = f"the check failed: {type(exc).__name__}: {exc}"
            self._status(host, repo, cr.head_sha, VALIDATE_CONTEXT, "error", message)
            self._status(host, repo, cr.head_sha, GOVERNANCE_CONTEXT, "error", "the change could not be checked")
            raise
        self._checks[(host.provider, repo, number)] = check
        if check.valid and not check.render_failed:
            n = len(check.affected)
            self._status(
                host,
                repo,
                cr.head_sha,
                VALIDATE_CONTEXT,
                "success",
                f"valid; {n} environment{'s' if n != 1 else ''} affected",
            )
        elif not check.valid:
            first = check.diagnostics[0] if check.diagnostics else "invalid"
            self._status(host, repo, cr.head_sha, VALIDATE_CONTEXT, "failure", first)
        else:
            first = next(e.render_error for e in check.environments if e.render_error)
            self._status(
                host,
                repo,
                cr.head_sha,
                VALIDATE_CONTEXT,
                "failure",
                f"render failed ({', '.join(check.render_failed)}): {first}",
            )
        return self._govern(host, repo, cr, check)

    def reevaluate(self, host: GitHost, repo: str, number: int) -> CheckOutcome:
        cr = host.change_request(repo, number)
        check = self._checks.get((host.provider, repo, number))
        if check is None or check.head_sha != cr.head_sha:
            return self.check(host, repo, number)  # e.g. after a restart: plan again
        return self._govern(host, repo, cr, check)

    def governance(self, host: GitHost, repo: str, cr: ChangeRequest, check: RevisionCheck) -> GovernanceResult:
        if not check.valid:
            verdict = EnvironmentVerdict(
                "*", [Requirement("*", "validation", False, "the head does not validate", hard=True)]
            )
            return GovernanceResult([verdict])
        if check.render_failed:
            failed = ", ".join(check.render_failed)
            verdict = EnvironmentVerdict(
                "*", [Requirement("*", "validation", False, f"the head does not render ({failed})", hard=True)]
            )
            return GovernanceResult([verdict])
        facts = PullRequestFacts(
            number=cr.number,
            author=cr.author,
            head_sha=cr.head_sha,
            reviews=tuple(host.reviews(repo, cr)),
            head_pushed_at=cr.head_pushed_at,
            changed_files=tuple(check.changed_files),
        )
        return evaluate(check.base_specs, check.head.specs, check.affected, facts, self.clock())

    def _govern(self, host: GitHost, repo: str, cr: ChangeRequest, check: RevisionCheck) -> CheckOutcome:
        result = self.governance(host, repo, cr, check)
        body = comment_body(check, result, cr.head_sha)
        upsert_comment(host, repo, cr.number, body)
        self._status(host, repo, cr.head_sha, GOVERNANCE_CONTEXT, result.state, result.description())
        return CheckOutcome(cr, check, result, body)

    def merged(self, host: GitHost, repo: str, number: int) -> list[str]:
        cr = host.change_request(repo, number)
        if not cr.merged:
            return []
        check = self._checks.pop((host.provider, repo, number), None)
        if check is None or check.head_sha != cr.head_sha:
            self._fetch_change(host, cr)
            base = cr.base_sha
            if cr.merge_commit_sha and self.workspace.has(cr.merge_commit_sha):
                base = self.workspace.resolve(f"{cr.merge_commit_sha}^1")
            check = check_revisions(self.workspace, base or self.merge_base(cr), cr.head_sha)
        result = self.governance(host, repo, cr, check)
        pr_id = f"{host.provider}:{repo}#{number}"
        if self.audit is not None:
            for verdict in result.environments:
                self.audit.record_merge(
                    verdict.environment,
                    pr=pr_id,
                    approvers=verdict.approvers,
                    merge_commit=cr.merge_commit_sha or "",
                    author=cr.author,
                    title=cr.title,
                )
        return [v.environment for v in result.environments]


def comment_body(check: RevisionCheck, result: GovernanceResult, head_sha: str) -> str:
    """The PR comment: marker, the plan report (as `mlp plan --format markdown` prints it), governance."""
    return f"{COMMENT_MARKER}\n{check.markdown()}\n{GOVERNANCE_MARKER}\n{governance_markdown(result, head_sha)}"


def report_part(comment: str) -> str:
    """The plan report inside a comment body (what `mlp plan --format markdown` prints)."""
    start = comment.index(COMMENT_MARKER) + len(COMMENT_MARKER) + 1
    end = comment.index(GOVERNANCE_MARKER)
    return comment[start:end].removesuffix("\n")
