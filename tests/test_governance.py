"""The pure governance policy: approvals, staleness, metric gates, promotion, sync windows, cron."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mlp.governance import PullRequestFacts, Review, affected_by_specs, check_gate, evaluate
from mlp.governance.cron import Cron, CronError, window_open_since
from mlp.specs.models import Environment, MetricGate, Model, Shadow, SyncWindow, Team

HEAD, OLD = "h" * 40, "o" * 40
WED = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)  # a Wednesday
FRI_EVENING = datetime(2026, 11, 27, 19, 30, tzinfo=UTC)


def model(name: str, metrics: dict[int, dict[str, float]]) -> Model:
    return Model.model_validate(
        {
            "apiVersion": "mlp.dev/v1",
            "kind": "Model",
            "metadata": {"name": name},
            "spec": {
                "framework": "sklearn",
                "signature": {"inputs": [{"name": "x", "type": "float"}], "outputs": [{"name": "y", "type": "int"}]},
                "versions": [
                    {"version": v, "uri": f"s3://m/{name}/{v}", "digest": "sha256:" + f"{v:064d}", "metrics": m}
                    for v, m in metrics.items()
                ],
            },
        }
    )


def environment(name: str, deployments: dict[str, Any], **spec: Any) -> Environment:
    return Environment.model_validate(
        {
            "apiVersion": "mlp.dev/v1",
            "kind": "Environment",
            "metadata": {"name": name},
            "spec": {"target": {"kind": "kubernetes", "namespace": f"ml-{name}"}, "deployments": deployments, **spec},
        }
    )


def team(name: str, *users: str) -> Team:
    return Team.model_validate(
        {
            "apiVersion": "mlp.dev/v1",
            "kind": "Team",
            "metadata": {"name": name},
            "spec": {"members": [{"user": u} for u in users]},
        }
    )


@dataclass
class Specs:
    environments: dict[str, Environment] = field(default_factory=dict)
    teams: dict[str, Team] = field(default_factory=dict)
    models: dict[str, Model] = field(default_factory=dict)


PROD_POLICY = {
    "tier": "production",
    "promotesFrom": "staging",
    "approvals": {"required": 2, "from": ["team:ml-leads"]},
    "gates": [{"metric": "accuracy", "min": 0.9, "maxRegression": 0.01}],
    "sync": {"windows": [{"kind": "deny", "schedule": "0 18 * * 5", "duration": "62h"}]},
}


def world(prod_version: int = 1, staging: dict[str, Any] | None = None, v2_accuracy: float = 0.97) -> Specs:
    return Specs(
        environments={
            "staging": environment(
                "staging", staging or {"iris": {"version": 1, "canary": {"version": 2, "steps": [50, 100]}}}
            ),
            "prod": environment("prod", {"iris": {"version": prod_version}}, **copy.deepcopy(PROD_POLICY)),
        },
        teams={
            "ml-leads": team("ml-leads", "alice", "bob", "carol"),
            "data-science": team("data-science", "dave", "erin"),
        },
        models={
            "iris": model(
                "iris",
                {1: {"accuracy": 0.95, "f1": 0.94}, 2: {"accuracy": v2_accuracy, "f1": 0.96}, 3: {"accuracy": 0.80}},
            )
        },
    )


def facts(*reviews: Review, author: str = "dave", pushed: datetime | None = None) -> PullRequestFacts:
    return PullRequestFacts(number=1, author=author, head_sha=HEAD, reviews=reviews, head_pushed_at=pushed)


def approve(user: str, sha: str = HEAD, at: datetime | None = None, state: str = "approved") -> Review:
    return Review(user, state, commit_sha=sha, submitted_at=at)


def test_two_valid_approvals_from_the_team_make_it_green() -> None:
    base, head = world(), world(prod_version=2)
    pending = evaluate(base, head, ["prod"], facts(approve("alice")), WED)
    assert pending.state == "pending"
    assert pending.missing == ["prod: 1/2 approvals from team:ml-leads (approved: alice)"]
    green = evaluate(base, head, ["prod"], facts(approve("alice"), approve("bob")), WED)
    assert green.state == "success" and green.missing == [] and green.approvers == ["alice", "bob"]
    assert green.description() == "policy satisfied for prod"


def test_a_teams_viewers_do_not_count_as_approvers() -> None:
    base, head = world(), world(prod_version=2)
    leads = Team.model_validate(
        {
            "apiVersion": "mlp.dev/v1",
            "kind": "Team",
            "metadata": {"name": "ml-leads"},
            "spec": {"members": [{"user": "alice"}, {"user": "bob", "role": "viewer"}, {"user": "carol"}]},
        }
    )
    base.teams["ml-leads"] = leads
    result = evaluate(base, head, ["prod"], facts(approve("alice"), approve("bob")), WED)
    assert result.state == "pending"
    assert result.missing == [
        "prod: 1/2 approvals from team:ml-leads (approved: alice); bob is a viewer of team:ml-leads"
    ]
    green = evaluate(base, head, ["prod"], facts(approve("alice"), approve("carol")), WED)
    assert green.state == "success"


def test_author_wrong_team_stale_and_withdrawn_approvals_do_not_count() -> None:
    base, head = world(), world(prod_version=2)
    reviews = (
        approve("dave"),  # the author
        approve("erin"),  # not in ml-leads
        approve("alice", sha=OLD),  # given on an earlier head
        approve("bob"),
        Review("bob", "changes_requested", HEAD, WED),  # withdrawn later
        approve("carol", at=WED - timedelta(hours=1)),
        Review("carol", "commented", HEAD, WED),  # comment keeps it
    )
    result = evaluate(base, head, ["prod"], facts(*reviews), WED)
    assert result.state == "pending"
    (message,) = result.missing
    assert message.startswith("prod: 1/2 approvals from team:ml-leads (approved: carol)")
    for note in (
        "dave is the author",
        "erin is not in team:ml-leads",
        "alice's approval is stale",
        "bob changes requested",
    ):
        assert note in message


def test_staleness_by_time_when_the_host_gives_no_commit() -> None:
    base, head = world(), world(prod_version=2)
    pushed = WED - timedelta(minutes=5)
    before = Review("alice", "approved", None, pushed - timedelta(seconds=1))
    after = Review("bob", "approved", None, pushed + timedelta(seconds=1))
    result = evaluate(base, head, ["prod"], facts(before, after, pushed=pushed), WED)
    assert "alice's approval is stale" in result.missing[0] and "(approved: bob)" in result.missing[0]


def test_policy_and_teams_come_from_the_base() -> None:
    base = world()
    head = world(prod_version=2)
    head.teams["ml-leads"] = team("ml-leads", "alice", "bob", "carol", "erin")  # the PR adds a friend
    head.environments["prod"].spec.approvals.required = 0  # and lowers the bar
    result = evaluate(base, head, ["prod"], facts(approve("erin"), approve("alice")), WED)
    assert result.state == "pending" and "erin is not in team:ml-leads" in result.missing[0]


def test_user_principals_and_unknown_teams() -> None:
    base = world()
    base.environments["prod"].spec.approvals.from_ = ["user:zoe", "team:ghosts"]
    result = evaluate(base, world(prod_version=2), ["prod"], facts(approve("zoe"), approve("alice")), WED)
    assert result.state == "pending"
    assert (
        "team ghosts is not defined" in result.missing[0]
        and "alice is not in user:zoe, team:ghosts" in result.missing[0]
    )


def test_metric_gates_fail_hard() -> None:
    two = (approve("alice"), approve("bob"))
    low = evaluate(world(), world(prod_version=3, staging={"iris": {"version": 3}}), ["prod"], facts(*two), WED)
    assert low.state == "failure"
    assert "prod: iris v3 (stable): accuracy 0.8 < min 0.9" in low.missing
    regress = evaluate(world(), world(prod_version=2, v2_accuracy=0.935), ["prod"], facts(*two), WED)
    assert regress.state == "failure"
    assert any("regresses by 0.015 (> 0.01) versus 0.95" in m for m in regress.missing)
    change = regress.environments[0].changes[0]
    assert (change.model, change.version, change.incumbent, change.role) == ("iris", 2, 1, "stable")


def test_check_gate_directions_and_missing_metrics() -> None:
    latency = MetricGate(metric="p99_ms", max=50, maxRegression=5)
    assert check_gate(latency, {"p99_ms": 44}, {"p99_ms": 40}).passed
    slower = check_gate(latency, {"p99_ms": 47}, {"p99_ms": 40})
    assert not slower.passed and "regresses by 7" in slower.reason
    assert not check_gate(latency, {"p99_ms": 51}, {}).passed
    missing = check_gate(MetricGate(metric="auc", min=0.5), {}, {"auc": 0.9})
    assert not missing.passed and missing.reason == "metric auc is not reported"
    # Float noise at the bound is not a regression.
    assert check_gate(MetricGate(metric="a", maxRegression=0.01), {"a": 0.94}, {"a": 0.95}).passed


def test_promotion_follows_promotes_from() -> None:
    two = (approve("alice"), approve("bob"))
    skipped = world(prod_version=2, staging={"iris": {"version": 1}})
    base = world(staging={"iris": {"version": 1}})
    result = evaluate(base, skipped, ["prod"], facts(*two), WED)
    assert result.state == "failure"
    assert "prod: iris v2 (stable) has not been deployed in staging (promotesFrom)" in result.missing
    # Deployed in staging by the same change (head revision) counts.
    both = world(prod_version=2, staging={"iris": {"version": 2}})
    assert evaluate(base, both, ["prod", "staging"], facts(*two), WED).state == "success"


def test_freeze_window_keeps_it_pending() -> None:
    two = (approve("alice"), approve("bob"))
    frozen = evaluate(world(), world(prod_version=2), ["prod"], facts(*two), FRI_EVENING)
    assert frozen.state == "pending"
    assert frozen.missing == ["prod: freeze: deny window '0 18 * * 5' (62h, UTC) open since 2026-11-27 18:00"]
    monday_morning = FRI_EVENING + timedelta(days=2, hours=12)  # Monday 07:30; the 62h window ends at 08:00
    assert evaluate(world(), world(prod_version=2), ["prod"], facts(*two), monday_morning).state == "pending"
    assert (
        evaluate(world(), world(prod_version=2), ["prod"], facts(*two), monday_morning + timedelta(hours=1)).state
        == "success"
    )


def test_allow_windows_and_time_zones() -> None:
    base = world()
    base.environments["prod"].spec.sync.windows = []
    base.environments["prod"].spec.sync.windows.append(
        SyncWindow(kind="allow", schedule="0 9 * * 1-5", duration="8h", timezone="Europe/Berlin")
    )
    two = (approve("alice"), approve("bob"))
    # 12:00 UTC is 13:00 in Berlin: inside 09:00-17:00 on a Wednesday.
    assert evaluate(base, world(prod_version=2), ["prod"], facts(*two), WED).state == "success"
    late = evaluate(base, world(prod_version=2), ["prod"], facts(*two), WED + timedelta(hours=5))
    assert late.state == "pending" and late.missing == ["prod: outside every allow window"]


def test_unaffected_environments_need_nothing() -> None:
    result = evaluate(world(), world(), [], facts(), WED)
    assert result.state == "success" and result.environments == []


def test_affected_by_specs() -> None:
    base = world()
    head = world()
    assert affected_by_specs(base, head) == set()
    head.models["iris"].spec.versions[0].metrics["accuracy"] = 0.5
    assert affected_by_specs(base, head) == {"prod", "staging"}
    head = world()
    head.teams["ml-leads"] = team("ml-leads", "alice")
    assert affected_by_specs(base, head) == {"prod"}
    assert affected_by_specs(None, head) == {"prod", "staging"}


@pytest.mark.parametrize(
    ("expr", "when", "match"),
    [
        ("*/15 * * * *", datetime(2026, 1, 1, 10, 45), True),
        ("*/15 * * * *", datetime(2026, 1, 1, 10, 46), False),
        ("0 18 * * FRI", datetime(2026, 11, 27, 18, 0), True),
        ("0 18 * * 5", datetime(2026, 11, 26, 18, 0), False),
        ("0 0 * * 7", datetime(2026, 11, 29, 0, 0), True),  # 7 is Sunday too
        ("30 9-17/2 * JAN-MAR *", datetime(2026, 2, 3, 11, 30), True),
        ("30 9-17/2 * JAN-MAR *", datetime(2026, 2, 3, 10, 30), False),
        ("0 0 1 * MON", datetime(2026, 6, 1, 0, 0), True),  # day-of-month OR day-of-week
        ("0 0 1 * MON", datetime(2026, 6, 8, 0, 0), True),
        ("0 0 1 * MON", datetime(2026, 6, 9, 0, 0), False),
        # Debian cron's macros (any case) and cronsim's L and # (what the hand-written parser lacked)
        ("@daily", datetime(2026, 3, 4, 0, 0), True),
        ("@Daily", datetime(2026, 3, 4, 0, 1), False),
        ("@hourly", datetime(2026, 3, 4, 7, 0), True),
        ("@weekly", datetime(2026, 11, 29, 0, 0), True),  # a Sunday
        ("@weekly", datetime(2026, 11, 30, 0, 0), False),
        ("@monthly", datetime(2026, 2, 1, 0, 0), True),
        ("@yearly", datetime(2027, 1, 1, 0, 0), True),
        ("0 0 L * *", datetime(2026, 2, 28, 0, 0), True),  # the last day of the month
        ("0 0 L * *", datetime(2026, 2, 27, 0, 0), False),
        ("0 0 * * 5#2", datetime(2026, 1, 9, 0, 0), True),  # the second Friday
        ("0 0 * * 5#2", datetime(2026, 1, 16, 0, 0), False),
        ("0 0 * * 5L", datetime(2026, 1, 30, 0, 0), True),  # the last Friday
        ("0-10/5,50-59 * * * *", datetime(2026, 1, 1, 3, 55), True),
        ("0-10/5,50-59 * * * *", datetime(2026, 1, 1, 3, 7), False),
    ],
)
def test_cron_matching(expr: str, when: datetime, match: bool) -> None:
    assert Cron.parse(expr).matches(when) is match


@pytest.mark.parametrize(
    "expr", ["* * * *", "61 * * * *", "a * * * *", "5-1 * * * *", "*/0 * * * *", "@reboot", "@sometimes"]
)
def test_cron_errors(expr: str) -> None:
    with pytest.raises(CronError):
        Cron.parse(expr)


def test_window_open_since() -> None:
    assert window_open_since("0 22 * * *", "2h", datetime(2026, 1, 1, 23, 59, tzinfo=UTC)) == datetime(
        2026, 1, 1, 22, 0, tzinfo=UTC
    )
    assert window_open_since("0 22 * * *", "2h", datetime(2026, 1, 2, 0, 0, tzinfo=UTC)) is None


def test_promoting_a_canary_to_stable_is_gated() -> None:
    base = world()
    base.environments["prod"].spec.deployments["iris"].canary = None
    base.environments["prod"].spec.deployments["iris"].shadow = Shadow(version=3)
    head = world(prod_version=3, staging={"iris": {"version": 3}})
    result = evaluate(base, head, ["prod"], facts(approve("alice"), approve("bob")), WED)
    (change,) = result.environments[0].changes
    assert (change.version, change.role, change.incumbent) == (3, "stable", 1)
    assert result.state == "failure" and "accuracy 0.8 < min 0.9" in result.missing[0]
