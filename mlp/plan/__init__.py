"""mlp.plan: compare desired objects with live ones and say what must change (pure).

`make_plan` builds a `Plan`; `execute` is the only code path that writes to a target;
`plan_to_text` / `plan_to_json` / `plan_to_markdown` show a plan; `health.assess` judges
live objects.
"""

from mlp.plan.core import (
    MISSING,
    Action,
    FieldDiff,
    Plan,
    PlanItem,
    PlanRefused,
    compare,
    diff_fields,
    is_owned,
    kind_rank,
    make_plan,
)
from mlp.plan.execute import Change, ChangeSet, execute
from mlp.plan.format import plan_to_dict, plan_to_json, plan_to_markdown, plan_to_text, summary_line

__all__ = [
    "MISSING",
    "Action",
    "Change",
    "ChangeSet",
    "FieldDiff",
    "Plan",
    "PlanItem",
    "PlanRefused",
    "compare",
    "diff_fields",
    "execute",
    "is_owned",
    "kind_rank",
    "make_plan",
    "plan_to_dict",
    "plan_to_json",
    "plan_to_markdown",
    "plan_to_text",
    "summary_line",
]
