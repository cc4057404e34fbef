"""Approval policy for a change: who must approve, which gates must pass (pure, no I/O).

Input is what the specs declare at the PR's base and head (`SpecSet`s), the set of
environments the change affects, and facts about the pull request (author, head
commit, reviews). Output is a `GovernanceResult`: `success`, `pending` (something can
still be done: approvals, wait for a window) or `failure` (a metric gate or the
promotion rule is violated; only a new commit fixes it), with one line per requirement.

Rules, per affected environment:
- approvals: `approvals.required` distinct approvals from the principals in
  `approvals.from` (`team:NAME` = the team's members, `user:LOGIN`); an empty `from`
  accepts any reviewer. The author never counts. A review counts only when it is the
  reviewer's latest decision and was given on the current head commit (or, where the
  host gives no commit, after the head was pushed): approvals given before the last
  push are stale. Policy and team membership come from the BASE revision when the
  environment exists there, so a PR cannot approve itself by editing a team.
- metric gates: every model version the change newly deploys (stable, canary, A/B or
  shadow) is checked against `gates` (min, max, maxRegression versus the incumbent
  stable version of that model in that environment at the base).
- promotion: with `promotesFrom: S`, a newly deployed version must be deployed in S
  at the base or at the head revision.
- sync windows: a `deny` window open now, or `allow` windows none of which is open
  now, keeps the change pending (a freeze).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from mlp.governance.cron import CronError, window_open_since
from mlp.specs.models import Deployment, Environment, MetricGate, Model, Team

State = Literal["pending", "success", "failure"]
APPROVED = "approved"


@dataclass(frozen=True)
class Review:
    """One review decision on a pull request, as the Git host reports it."""

    user: str
    state: str  # approved | changes_requested | commented | dismissed (lower case)
    commit_sha: str | None = None
    submitted_at: datetime | None = None


@dataclass(frozen=True)
class PullRequestFacts:
    number: int
    author: str
    head_sha: str
    reviews: tuple[Review, ...] = ()
    head_pushed_at: datetime | None = None
    changed_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class GateCheck:
    """One gate applied to one candidate version."""

    metric: str
    candidate: float | None
    incumbent: float | None
    passed: bool
    rule: str  # e.g. ">= 0.9", "regression <= 0.01"
    reason: str = ""


@dataclass(frozen=True)
class VersionChange:
    """A model version the change would deploy in an environment, beside its incumbent."""

    environment: str
    model: str
    version: int
    role: str  # stable | canary | ab | shadow
    incumbent: int | None
    metrics: Mapping[str, float]
    incumbent_metrics: Mapping[str, float]
    gates: tuple[GateCheck, ...] = ()

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)


@dataclass(frozen=True)
class Requirement:
    environment: str
    kind: Literal["approvals", "gate", "promotion", "window", "validation"]
    satisfied: bool
    message: str
    # An unsatisfied hard requirement makes the result `failure` instead of `pending`.
    hard: bool = False


@dataclass
class EnvironmentVerdict:
    environment: str
    requirements: list[Requirement] = field(default_factory=list)
    changes: list[VersionChange] = field(default_factory=list)
    approvers: list[str] = field(default_factory=list)


@dataclass
class GovernanceResult:
    environments: list[EnvironmentVerdict]

    @property
    def requirements(self) -> list[Requirement]:
        return [r for v in self.environments for r in v.requirements]

    @property
    def missing(self) -> list[str]:
        return [f"{r.environment}: {r.message}" for r in self.requirements if not r.satisfied]

    @property
    def state(self) -> State:
        open_ = [r for r in self.requirements if not r.satisfied]
        if any(r.hard for r in open_):
            return "failure"
        return "pending" if open_ else "success"

    @property
    def approvers(self) -> list[str]:
        return sorted({a for v in self.environments for a in v.approvers})

    def description(self, limit: int = 140) -> str:
        """One line for a commit status (GitHub caps descriptions at 140 characters)."""
        if self.state == "success":
            envs = ", ".join(v.environment for v in self.environments) or "no environment"
            text = f"policy satisfied for {envs}"
        else:
            missing = self.missing
            text = missing[0] + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")
        return text if len(text) <= limit else text[: limit - 1] + "…"

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "missing": self.missing,
            "approvers": self.approvers,
            "environments": [
                {
                    "environment": v.environment,
                    "approvers": v.approvers,
                    "requirements": [
                        {"kind": r.kind, "satisfied": r.satisfied, "hard": r.hard, "message": r.message}
                        for r in v.requirements
                    ],
                    "changes": [
                        {
                            "model": c.model,
                            "version": c.version,
                            "role": c.role,
                            "incumbent": c.incumbent,
                            "passed": c.passed,
                            "gates": [
                                {
                                    "metric": g.metric,
                                    "candidate": g.candidate,
                                    "incumbent": g.incumbent,
                                    "rule": g.rule,
                                    "passed": g.passed,
                                    "reason": g.reason,
                                }
                                for g in c.gates
                            ],
                        }
                        for c in v.changes
                    ],
                }
                for v in self.environments
            ],
        }


class SpecsView(Protocol):
    """The few fields of a `SpecSet` policy reads; any object with these attributes works."""

    @property
    def environments(self) -> Mapping[str, Environment]: ...

    @property
    def teams(self) -> Mapping[str, Team]: ...

    @property
    def models(self) -> Mapping[str, Model]: ...


# --- deployed versions --------------------------------------------------------------------


def deployed_versions(deployment: Deployment) -> dict[int, str]:
    """version -> role for every version a deployment routes to (stable wins a tie)."""
    roles: dict[int, str] = {}
    if deployment.shadow is not None:
        roles[deployment.shadow.version] = "shadow"
    if deployment.abTest is not None:
        roles[deployment.abTest.version] = "ab"
    if deployment.canary is not None:
        roles[deployment.canary.version] = "canary"
    roles[deployment.version] = "stable"
    return roles


def _env_versions(specs: SpecsView | None, env: str, model: str) -> dict[int, str]:
    if specs is None or env not in specs.environments:
        return {}
    dep = specs.environments[env].spec.deployments.get(model)
    return deployed_versions(dep) if dep is not None else {}


def _metrics(specs: SpecsView | None, model: str, version: int | None) -> dict[str, float]:
    if specs is None or version is None or model not in specs.models:
        return {}
    v = specs.models[model].spec.version(version)
    return dict(v.metrics) if v is not None else {}


def version_changes(base: SpecsView | None, head: SpecsView, env: str) -> list[VersionChange]:
    """Model versions deployed in `env` at head that were not deployed there, in that role, at base."""
    if env not in head.environments:
        return []
    env_spec = head.environments[env].spec
    gates = base.environments[env].spec.gates if base is not None and env in base.environments else env_spec.gates
    out: list[VersionChange] = []
    for model in sorted(env_spec.deployments):
        before = _env_versions(base, env, model)
        incumbent = next((v for v, role in before.items() if role == "stable"), None)
        for version, role in sorted(deployed_versions(env_spec.deployments[model]).items()):
            # New, or taking a new role (a shadow or canary promoted to stable serves real
            # traffic for the first time): either way the gates apply.
            if before.get(version) == role:
                continue
            metrics = _metrics(head, model, version)
            inc_metrics = _metrics(base, model, incumbent) or _metrics(head, model, incumbent)
            checks = tuple(check_gate(g, metrics, inc_metrics) for g in gates)
            out.append(VersionChange(env, model, version, role, incumbent, metrics, inc_metrics, checks))
    return out


# --- metric gates -------------------------------------------------------------------------


def lower_is_better(gate: MetricGate) -> bool:
    """A gate with only a `max` bound (latency, error rate) treats smaller values as better."""
    return gate.max is not None and gate.min is None


def check_gate(gate: MetricGate, metrics: Mapping[str, float], incumbent: Mapping[str, float]) -> GateCheck:
    value = metrics.get(gate.metric)
    inc = incumbent.get(gate.metric)
    rules: list[str] = []
    if gate.min is not None:
        rules.append(f">= {gate.min:g}")
    if gate.max is not None:
        rules.append(f"<= {gate.max:g}")
    if gate.maxRegression is not None:
        rules.append(f"regression <= {gate.maxRegression:g}")
    rule = ", ".join(rules) or "reported"
    if value is None:
        return GateCheck(gate.metric, None, inc, False, rule, f"metric {gate.metric} is not reported")
    if gate.min is not None and value < gate.min:
        return GateCheck(gate.metric, value, inc, False, rule, f"{gate.metric} {value:g} < min {gate.min:g}")
    if gate.max is not None and value > gate.max:
        return GateCheck(gate.metric, value, inc, False, rule, f"{gate.metric} {value:g} > max {gate.max:g}")
    if gate.maxRegression is not None and inc is not None:
        regression = (value - inc) if lower_is_better(gate) else (inc - value)
        # A tolerance for float noise: 0.95 - 0.94 is 0.010000000000000009.
        if regression > gate.maxRegression + 1e-9:
            return GateCheck(
                gate.metric,
                value,
                inc,
                False,
                rule,
                f"{gate.metric} regresses by {regression:.4g} (> {gate.maxRegression:g}) versus {inc:g}",
            )
    return GateCheck(gate.metric, value, inc, True, rule)


# --- approvals ----------------------------------------------------------------------------


def eligible_approvers(principals: Iterable[str], teams: Mapping[str, Team]) -> tuple[set[str], list[str]]:
    """Logins named by `team:NAME` / `user:LOGIN`, plus problems (unknown teams).

    A team's `viewer` members are left out: the role is read-only everywhere else (the API
    refuses them every write), so their review cannot be what lets a change reach a cluster.
    """
    logins: set[str] = set()
    problems: list[str] = []
    for p in principals:
        kind, _, name = p.partition(":")
        if kind == "user":
            logins.add(name.lower())
        elif kind == "team":
            team = teams.get(name)
            if team is None:
                problems.append(f"team {name} is not defined")
            else:
                logins.update(m.user.lower() for m in team.spec.members if m.role != "viewer")
    return logins, problems


def latest_reviews(reviews: Iterable[Review]) -> dict[str, Review]:
    """Each reviewer's latest decision; comments do not override an approval (as on GitHub).

    Hosts list reviews oldest first; when every review carries a time they are ordered by
    it (ties keep the host's order).
    """
    ordered = list(reviews)
    if all(r.submitted_at is not None for r in ordered):
        ordered = [r for _, r in sorted(enumerate(ordered), key=lambda ir: (ir[1].submitted_at, ir[0]))]
    latest: dict[str, Review] = {}
    for review in ordered:
        if review.state in ("commented", "pending"):  # a comment or an unsubmitted draft decides nothing
            continue
        latest[review.user.lower()] = review
    return latest


def is_stale(review: Review, pr: PullRequestFacts) -> bool:
    if review.commit_sha:
        return review.commit_sha != pr.head_sha
    if review.submitted_at is not None and pr.head_pushed_at is not None:
        return review.submitted_at < pr.head_pushed_at
    return False


def _viewer_of(login: str, principals: Iterable[str], teams: Mapping[str, Team]) -> str | None:
    for p in principals:
        kind, _, name = p.partition(":")
        team = teams.get(name) if kind == "team" else None
        if team is not None and any(m.user.lower() == login and m.role == "viewer" for m in team.spec.members):
            return p
    return None


def _approvals(
    env: str, policy_env: Environment, teams: Mapping[str, Team], pr: PullRequestFacts
) -> tuple[Requirement, list[str]]:
    approvals = policy_env.spec.approvals
    required = approvals.required
    principals = list(approvals.from_)
    who = ", ".join(principals) if principals else "any reviewer"
    eligible, problems = eligible_approvers(principals, teams)
    valid: list[str] = []
    notes: list[str] = []
    author = pr.author.lower()
    for login, review in sorted(latest_reviews(pr.reviews).items()):
        if review.state != APPROVED:
            notes.append(f"{review.user} {review.state.replace('_', ' ')}")
            continue
        if login == author:
            notes.append(f"{review.user} is the author")
        elif principals and login not in eligible:
            viewer_of = _viewer_of(login, principals, teams)
            notes.append(f"{review.user} is a viewer of {viewer_of}" if viewer_of else f"{review.user} is not in {who}")
        elif is_stale(review, pr):
            notes.append(f"{review.user}'s approval is stale")
        else:
            valid.append(review.user)
    satisfied = len(valid) >= required and not problems
    message = f"{len(valid)}/{required} approvals from {who}"
    if valid:
        message += f" (approved: {', '.join(valid)})"
    if notes and not satisfied:
        message += "; " + "; ".join(notes)
    if problems:
        message += "; " + "; ".join(problems)
    return Requirement(env, "approvals", satisfied, message), valid if required else []


def evaluate(
    base: SpecsView | None,
    head: SpecsView,
    affected: Iterable[str],
    pr: PullRequestFacts,
    now: datetime,
) -> GovernanceResult:
    """Evaluate the policy of every affected environment for this pull request."""
    verdicts: list[EnvironmentVerdict] = []
    for env in sorted(set(affected)):
        in_base = base is not None and env in base.environments
        if not in_base and env not in head.environments:
            continue
        policy_specs: SpecsView = base if in_base and base is not None else head
        policy_env = policy_specs.environments[env]
        verdict = EnvironmentVerdict(env)
        # approvals
        if policy_env.spec.approvals.required > 0:
            req, approvers = _approvals(env, policy_env, policy_specs.teams, pr)
            verdict.requirements.append(req)
            verdict.approvers = approvers
        # gates and promotion
        verdict.changes = version_changes(base, head, env)
        promotes_from = policy_env.spec.promotesFrom
        for change in verdict.changes:
            label = f"{change.model} v{change.version} ({change.role})"
            for g in change.gates:
                if not g.passed:
                    verdict.requirements.append(Requirement(env, "gate", False, f"{label}: {g.reason}", hard=True))
            if change.gates and change.passed:
                verdict.requirements.append(Requirement(env, "gate", True, f"{label}: all metric gates pass"))
            if promotes_from:
                ran = change.version in _env_versions(base, promotes_from, change.model) or (
                    change.version in _env_versions(head, promotes_from, change.model)
                )
                msg = (
                    f"{label} is deployed in {promotes_from}"
                    if ran
                    else f"{label} has not been deployed in {promotes_from} (promotesFrom)"
                )
                verdict.requirements.append(Requirement(env, "promotion", ran, msg, hard=not ran))
        # sync windows
        verdict.requirements.extend(_windows(env, policy_env, now))
        verdicts.append(verdict)
    return GovernanceResult(verdicts)


def _windows(env: str, policy_env: Environment, now: datetime) -> list[Requirement]:
    windows = policy_env.spec.sync.windows
    if not windows:
        return []
    out: list[Requirement] = []
    allow_open = False
    has_allow = False
    for w in windows:
        try:
            since = window_open_since(w.schedule, w.duration, now, w.timezone)
        except (CronError, KeyError, ValueError) as exc:
            out.append(Requirement(env, "window", False, f"sync window {w.schedule!r}: {exc}", hard=True))
            continue
        if w.kind == "deny" and since is not None:
            out.append(
                Requirement(
                    env,
                    "window",
                    False,
                    f"freeze: deny window '{w.schedule}' ({w.duration}, {w.timezone})"
                    f" open since {since:%Y-%m-%d %H:%M}",
                )
            )
        if w.kind == "allow":
            has_allow = True
            allow_open = allow_open or since is not None
    if has_allow and not allow_open:
        out.append(Requirement(env, "window", False, "outside every allow window"))
    if not out:
        out.append(Requirement(env, "window", True, "inside sync windows"))
    return out


def affected_by_specs(base: SpecsView | None, head: SpecsView) -> set[str]:
    """Environments a change touches judged from the specs alone.

    An environment is affected when its own document changed, when a model it deploys
    changed, or when a team named in its approval policy changed. The PR flow adds the
    environments whose rendered plan changes (template edits).
    """
    if base is None:
        return set(head.environments)

    def dump(obj: Any) -> Any:
        return obj.model_dump(mode="json", by_alias=True) if obj is not None else None

    changed_models = {
        m for m in set(base.models) | set(head.models) if dump(base.models.get(m)) != dump(head.models.get(m))
    }
    changed_teams = {t for t in set(base.teams) | set(head.teams) if dump(base.teams.get(t)) != dump(head.teams.get(t))}
    out: set[str] = set()
    for env in set(base.environments) | set(head.environments):
        before, after = base.environments.get(env), head.environments.get(env)
        if dump(before) != dump(after):
            out.add(env)
            continue
        spec = (after or before).spec  # type: ignore[union-attr]
        if changed_models & set(spec.deployments):
            out.add(env)
        if any(p.startswith("team:") and p[5:] in changed_teams for p in spec.approvals.from_):
            out.add(env)
    return out
