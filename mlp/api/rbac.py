"""Role-based access per team, from the `Team` specs in Git.

Roles, weakest first: viewer < developer < approver < admin. A Team member's `role`
gives it in that team (`owner` = admin, `maintainer` = approver, `member` = developer,
for Team specs written before the API). A member is matched to a caller by Kratos
identity id, then the `email` trait, then the `username` trait against `user`. An API
token carries one team and one role. Members of a team with `spec.platform: true`
hold their role in every team.

Every resource (environment, model, experiment, monitor, feature view, and what hangs
off them: deployments, rollouts, plans, audit events) belongs to the team in its
`metadata.team`; a resource without a team belongs to the platform team only. A caller
sees and acts only within their teams.

Each route declares one permission (`PERMISSIONS`); `MATRIX` is the documented
allow/deny table that tests/test_api_rbac.py checks every route against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from mlp.api.identity import Principal
from mlp.specs import SpecSet


class Role(str, Enum):
    viewer = "viewer"
    developer = "developer"
    approver = "approver"
    admin = "admin"


RANK = {Role.viewer: 1, Role.developer: 2, Role.approver: 3, Role.admin: 4}
LEGACY = {"owner": Role.admin, "maintainer": Role.approver, "member": Role.developer}


class Permission(str, Enum):
    """What a route needs. `public` and `authenticated` do not depend on a team."""

    public = "public"  # health checks: no identity at all
    authenticated = "authenticated"  # any valid identity (whoami, the caller's own teams)
    read = "read"  # see a team's resources
    propose = "propose"  # open a pull request against a team's specs
    audit = "audit"  # read the audit trail of a team's environments
    operate = "operate"  # act on the controller's state: request a sync, pause or resume a rollout


# The documented matrix: the weakest role in the resource's team that holds each permission.
MATRIX: dict[Permission, Role | None] = {
    Permission.public: None,
    Permission.authenticated: None,
    Permission.read: Role.viewer,
    Permission.propose: Role.developer,
    Permission.audit: Role.approver,
    Permission.operate: Role.approver,
}


def allowed(role: Role | None, permission: Permission) -> bool:
    needed = MATRIX[permission]
    if needed is None:
        return True
    return role is not None and RANK[role] >= RANK[needed]


@dataclass
class Grants:
    """A caller's role per team; `everywhere` is the role a platform team gives in every team."""

    teams: dict[str, Role] = field(default_factory=dict)
    everywhere: Role | None = None

    def role_in(self, team: str | None) -> Role | None:
        own = self.teams.get(team) if team else None
        candidates = [r for r in (own, self.everywhere) if r is not None]
        return max(candidates, key=lambda r: RANK[r]) if candidates else None

    def can(self, permission: Permission, team: str | None) -> bool:
        return allowed(self.role_in(team), permission)

    def any(self, permission: Permission) -> bool:
        return (self.everywhere is not None and allowed(self.everywhere, permission)) or any(
            allowed(r, permission) for r in self.teams.values()
        )

    def to_json(self) -> dict[str, object]:
        return {"teams": {t: r.value for t, r in sorted(self.teams.items())}, "platform": self.everywhere}


def _role(value: str) -> Role:
    return LEGACY.get(value) or Role(value)


def grants_for(principal: Principal, specs: SpecSet) -> Grants:
    grants = Grants()
    if principal.kind == "token":
        team = specs.teams.get(principal.token_team or "")
        if team is not None and principal.token_role:
            role = Role(principal.token_role)
            grants.teams[team.metadata.name] = role
            if team.spec.platform:
                grants.everywhere = role
        return grants
    for name, team in specs.teams.items():
        for member in team.spec.members:
            if member.identity is not None:
                matched = member.identity == principal.id
            elif member.email is not None and principal.email is not None:
                matched = member.email.lower() == principal.email.lower()
            else:
                matched = principal.username is not None and member.user == principal.username
            if not matched:
                continue
            role = _role(member.role)
            current = grants.teams.get(name)
            if current is None or RANK[role] > RANK[current]:
                grants.teams[name] = role
            if team.spec.platform and (grants.everywhere is None or RANK[role] > RANK[grants.everywhere]):
                grants.everywhere = role
    return grants
