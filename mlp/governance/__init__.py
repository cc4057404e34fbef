"""Governance: who must approve a change and which metric gates it must pass (pure)."""

from mlp.governance.policy import (
    GateCheck,
    GovernanceResult,
    PullRequestFacts,
    Requirement,
    Review,
    VersionChange,
    affected_by_specs,
    check_gate,
    evaluate,
    version_changes,
)

__all__ = [
    "GateCheck",
    "GovernanceResult",
    "PullRequestFacts",
    "Requirement",
    "Review",
    "VersionChange",
    "affected_by_specs",
    "check_gate",
    "evaluate",
    "version_changes",
]
