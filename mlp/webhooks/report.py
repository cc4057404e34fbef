"""The pull-request report as markdown: a section per affected environment (pure).

One function, `report_markdown`, builds the text that both the PR comment and
`mlp plan --base REF --head REF --format markdown` show, so a CI system without
webhooks posts exactly what the webhook flow would. Per affected environment: the
change set and a collapsible object diff (`mlp.plan.plan_to_markdown`), then for each
model version the change would deploy its evaluation metrics beside the incumbent's
with pass/fail against the environment's gates, and the policy that applies.

The governance part (who approved, what is missing) depends on the reviews of one
pull request, so it is a separate block (`governance_markdown`) the flow appends
after the report, below its own marker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mlp.governance import GovernanceResult, VersionChange
from mlp.plan import Plan, plan_to_markdown
from mlp.specs.models import Environment

PASS, FAIL = "✅", "❌"
COMMENT_BUDGET = 60000


@dataclass
class EnvironmentReport:
    name: str
    spec: Environment | None  # head spec; None when the PR deletes the environment
    plan: Plan | None
    changes: list[VersionChange] = field(default_factory=list)
    render_error: str | None = None


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _delta(candidate: float | None, incumbent: float | None) -> str:
    if candidate is None or incumbent is None:
        return "-"
    d = candidate - incumbent
    return "0" if abs(d) < 1e-12 else f"{d:+.4g}"


def metrics_table(change: VersionChange) -> list[str]:
    """A markdown table: every metric of candidate and incumbent, gates marked pass/fail."""
    gates = {g.metric: g for g in change.gates}
    names = sorted(set(change.metrics) | set(change.incumbent_metrics) | set(gates))
    inc = f"v{change.incumbent} (incumbent)" if change.incumbent is not None else "incumbent"
    verdict = f"{PASS} gates pass" if change.passed else f"{FAIL} gates fail"
    if not change.gates:
        verdict = "no gates declared"
    replaces = f"replaces v{change.incumbent}" if change.incumbent is not None else "new deployment"
    if change.role != "stable":
        replaces = f"beside stable v{change.incumbent}" if change.incumbent is not None else "new deployment"
    lines = [
        f"**`{change.model}` v{change.version}** ({change.role}, {replaces}): {verdict}",
        "",
        f"| Metric | v{change.version} | {inc} | Δ | Gate | Result |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        gate = gates.get(name)
        result = "" if gate is None else (PASS if gate.passed else f"{FAIL} {gate.reason}")
        lines.append(
            f"| {name} | {_num(change.metrics.get(name))} | {_num(change.incumbent_metrics.get(name))} | "
            f"{_delta(change.metrics.get(name), change.incumbent_metrics.get(name))} | "
            f"{gate.rule if gate else ''} | {result} |"
        )
    return lines


def _policy_line(env: Environment) -> str:
    spec = env.spec
    parts = []
    if spec.approvals.required:
        who = ", ".join(f"`{p}`" for p in spec.approvals.from_) or "any reviewer"
        parts.append(f"{spec.approvals.required} approval(s) from {who}")
    if spec.promotesFrom:
        parts.append(f"promotes from `{spec.promotesFrom}`")
    if spec.sync.windows:
        parts.append(
            "sync windows: " + ", ".join(f"{w.kind} `{w.schedule}` for {w.duration}" for w in spec.sync.windows)
        )
    return "Policy: " + ("; ".join(parts) if parts else "none")


def report_markdown(
    base_revision: str,
    head_revision: str,
    environments: Sequence[EnvironmentReport],
    unaffected: Sequence[str],
    diagnostics: Sequence[str] = (),
    base_diagnostics: Sequence[str] = (),
) -> str:
    """The plan report for a change from `base_revision` to `head_revision`."""
    lines = [f"## mlp plan: `{base_revision[:12]}` → `{head_revision[:12]}`", ""]
    if diagnostics:
        lines.append(f"{FAIL} **Validation failed** at `{head_revision[:12]}`: nothing can be planned.")
        lines += ["", "```", *diagnostics[:50], "```"]
        if len(diagnostics) > 50:
            lines.append(f"_and {len(diagnostics) - 50} more_")
        return "\n".join(lines) + "\n"
    lines.append(f"{PASS} Specs validate.")
    if base_diagnostics:
        lines.append(f"_The base `{base_revision[:12]}` did not validate; planned against nothing._")
    lines.append("")
    if not environments:
        lines.append("No environment changes.")
    else:
        lines.append("Affected environments: " + ", ".join(f"`{e.name}`" for e in environments))
    if unaffected:
        lines.append("Unchanged: " + ", ".join(f"`{n}`" for n in unaffected))
    # A GitHub comment holds 65,536 characters: the object diffs share what is left after the rest.
    budget = COMMENT_BUDGET // max(1, len(environments))
    for env in environments:
        lines += ["", "---", ""]
        if env.spec is None:
            title = f"### `{env.name}`: environment removed"
        else:
            target = env.spec.spec.target
            where = f"{target.kind} `{target.namespace}`" if target.namespace else target.kind
            title = f"### `{env.name}` ({env.spec.spec.tier}, {where})"
        if env.render_error:
            lines += [title, "", f"{FAIL} Render failed: `{env.render_error}`"]
        elif env.plan is not None:
            lines.append(plan_to_markdown(env.plan, title=title, max_chars=budget).rstrip("\n"))
        else:
            lines.append(title)
        if env.changes:
            lines += ["", "#### Model versions"]
            for change in env.changes:
                lines += ["", *metrics_table(change)]
        if env.spec is not None:
            lines += ["", _policy_line(env.spec)]
    return "\n".join(lines) + "\n"


def governance_markdown(result: GovernanceResult, head_sha: str) -> str:
    """The governance block of the PR comment: state and each requirement."""
    icon = {"success": PASS, "failure": FAIL, "pending": "⏳"}[result.state]
    lines = [f"### Governance: {icon} {result.state} at `{head_sha[:12]}`", ""]
    if not result.environments:
        lines.append("No environment is affected; nothing to approve.")
    for verdict in result.environments:
        for req in verdict.requirements:
            mark = PASS if req.satisfied else (FAIL if req.hard else "⏳")
            lines.append(f"- {mark} `{verdict.environment}` {req.kind}: {req.message}")
    return "\n".join(lines) + "\n"


def unaffected_names(all_envs: Mapping[str, object], affected: Sequence[str]) -> list[str]:
    return sorted(set(all_envs) - set(affected))
