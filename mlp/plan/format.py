"""Ways to show a plan: a coloured unified diff per object, JSON, and markdown.

All three are pure functions of a `Plan`. The text form is what `mlp diff` prints (like
`kubectl diff`, but comparing only the fields mlp sets); JSON is for scripts; markdown is
for pull-request comments.

`plan_to_markdown` output format (stable; PR tooling may parse the first two lines):

    ### mlp plan: `<environment>` at `<revision[:12]>`
    **<n> to create, <n> to update, <n> to delete, <n> unchanged**   (or **No changes.**)

    | Action | Object | Detail |
    |---|---|---|
    | create | `Kind/namespace/name` | new object |
    | update | `Kind/namespace/name` | the model-level change first (`iris`: v1 → v2; canary v2; split 10% → 50%;
    |        |                       | minReplicas 1 → 2), then other fields `field.path`: old → new (up to 3 in all,
    |        |                       | then "and N more"); label/annotation bookkeeping folded into "(+N bookkeeping fields)" |
    | delete | `Kind/namespace/name` | no longer declared |

    <details><summary>Diff of <n> object(s)</summary>   (a ```diff block per object)

followed, when pruning is off and owned objects are no longer declared, by a line
"N owned objects are no longer declared and would be deleted with --prune". The diff block
is cut at `max_chars` (GitHub comments hold 65,536 characters) with a note saying so.
"""

from __future__ import annotations

import difflib
import json
import re
from typing import Any

from mlp.objects import ObjectRef
from mlp.plan.core import MISSING, Action, FieldDiff, Plan, PlanItem, compare
from mlp.plan.normalize import normalize
from mlp.render.yamlio import dump

_RESET, _BOLD, _RED, _GREEN, _CYAN = "\x1b[0m", "\x1b[1m", "\x1b[31m", "\x1b[32m", "\x1b[36m"


def _sides(item: PlanItem) -> tuple[str, str]:
    """(live YAML, desired YAML) restricted to the fields mlp sets."""
    if item.action is Action.DELETE:
        assert item.live is not None
        return dump(normalize(item.live)), ""
    assert item.desired is not None
    if item.live is None or item.action is Action.CREATE:
        return "", dump(normalize(item.desired))
    want, have, diffs = compare(item.desired, item.live)
    for d in diffs:  # projection drops fields the repository stopped setting: show them going
        if d.op == "remove" and d.steps:
            _put(have, d.steps, d.old)
    return dump(have), dump(want)


def _put(node: Any, steps: tuple[Any, ...], value: Any) -> None:
    """Set `value` at `steps` (keys, or {key: value} matches naming list items) inside `node`."""
    *parents, last = steps
    for i, step in enumerate(parents):
        nxt_is_item = isinstance(steps[i + 1], dict)
        if isinstance(step, dict):
            if not isinstance(node, list):
                return
            found = next((x for x in node if isinstance(x, dict) and all(x.get(k) == v for k, v in step.items())), None)
            if found is None:
                found = dict(step)
                node.append(found)
            node = found
        else:
            if not isinstance(node, dict):
                return
            node = node.setdefault(step, [] if nxt_is_item else {})
    if isinstance(last, dict):
        if isinstance(node, list):
            node.append(value)
    elif isinstance(node, dict):
        node[last] = value


def _path(ref: ObjectRef) -> str:
    return "/".join(p for p in (ref.kind, ref.namespace, ref.name) if p)


def item_diff_lines(item: PlanItem) -> list[str]:
    """Unified diff lines (no colour) of one item; empty for UNCHANGED."""
    if not item.changed:
        return []
    old, new = _sides(item)
    name = _path(item.ref)
    return list(
        difflib.unified_diff(
            old.splitlines(),
            new.splitlines(),
            fromfile=f"live/{name}" if old else "/dev/null",
            tofile=f"desired/{name}" if new else "/dev/null",
            lineterm="",
            n=3,
        )
    )


def _colour(line: str) -> str:
    if line.startswith(("+++", "---")):
        return f"{_BOLD}{line}{_RESET}"
    if line.startswith("+"):
        return f"{_GREEN}{line}{_RESET}"
    if line.startswith("-"):
        return f"{_RED}{line}{_RESET}"
    if line.startswith("@@"):
        return f"{_CYAN}{line}{_RESET}"
    return line


def summary_line(plan: Plan) -> str:
    c = plan.counts()
    if not plan.has_changes:
        text = f"No changes. {c['unchanged']} object{'' if c['unchanged'] == 1 else 's'} up to date."
    else:
        text = f"{c['create']} to create, {c['update']} to update, {c['delete']} to delete, {c['unchanged']} unchanged."
    if plan.orphans:
        text += f" {len(plan.orphans)} owned objects no longer declared (deleted with --prune)."
    return text


def plan_to_text(plan: Plan, *, color: bool = False) -> str:
    """Per changed object a header and a unified diff of the fields mlp sets, then a summary."""
    out: list[str] = []
    for item in plan.changes:
        reason = f" ({item.reason})" if item.reason and item.reason != "changed" else ""
        head = f"{item.action.value} {item.ref}{reason}"
        out.append(f"{_BOLD}{head}{_RESET}" if color else head)
        for line in item_diff_lines(item):
            out.append(_colour(line) if color else line)
        out.append("")
    for ref in plan.orphans:
        out.append(f"orphan {ref} (no longer declared; deleted with --prune)")
    if plan.orphans:
        out.append("")
    out.append(summary_line(plan))
    return "\n".join(out) + "\n"


def _jsonable(value: Any) -> Any:
    return None if value is MISSING else value


def _diff_dict(d: FieldDiff) -> dict[str, Any]:
    return {"path": d.path, "op": d.op, "old": _jsonable(d.old), "new": _jsonable(d.new)}


def _ref_dict(ref: ObjectRef) -> dict[str, str]:
    return {"apiVersion": ref.api_version, "kind": ref.kind, "namespace": ref.namespace, "name": ref.name}


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    """JSON-ready form: environment, revision, counts, items (with field diffs) and orphans."""
    items = []
    for item in plan.items:
        entry: dict[str, Any] = {
            "action": item.action.value,
            "ref": _ref_dict(item.ref),
            "reason": item.reason,
            "diffs": [_diff_dict(d) for d in item.diffs],
        }
        if item.action in (Action.CREATE, Action.UPDATE):
            entry["desired"] = item.desired
        items.append(entry)
    return {
        "environment": plan.environment,
        "revision": plan.revision,
        "prune": plan.prune,
        "hasChanges": plan.has_changes,
        "counts": plan.counts(),
        "items": items,
        "orphans": [_ref_dict(r) for r in plan.orphans],
    }


def plan_to_json(plan: Plan) -> str:
    return json.dumps(plan_to_dict(plan), indent=2, sort_keys=True, default=str) + "\n"


def _short(value: Any, limit: int = 40) -> str:
    if value is MISSING:
        return "(absent)"
    text = json.dumps(value, sort_keys=True, default=str)
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("|", "\\|").replace("`", "'")


_BOOKKEEPING = ("metadata.annotations", "metadata.labels")
_ANNOTATION = re.compile(r'^metadata\.annotations\["mlp\.dev/([a-z-]+)"\]$')


def _plain(value: Any) -> str:
    return "none" if value is MISSING or value is None else str(value).replace("|", "\\|")


def _model_changes(item: PlanItem) -> tuple[list[str], set[str]]:
    """What a reviewer cares about, from mlp's own annotations and the serving fields:
    `iris: v1 → v2`, the canary, the traffic split, replicas. Returns (phrases, paths they cover)."""
    labels = ((item.desired or {}).get("metadata") or {}).get("labels") or {}
    model = labels.get("mlp.dev/model") or item.ref.name
    by_key = {m.group(1): d for d in item.diffs if (m := _ANNOTATION.match(d.path))}
    phrases: list[str] = []
    covered: set[str] = set()
    version = by_key.get("stable-version") or by_key.get("model-version")
    if version is not None:
        phrases.append(f"`{model}`: v{_plain(version.old)} → v{_plain(version.new)}")
    canary = by_key.get("canary-version")
    if canary is not None:
        phrases.append(
            f"canary v{_plain(canary.new)}" if canary.new is not MISSING else f"canary v{_plain(canary.old)} ended"
        )
    for d in item.diffs:
        leaf = d.path.rsplit(".", 1)[-1]
        if leaf == "canaryTrafficPercent":
            phrases.append(f"split {_plain(d.old)}% → {_plain(d.new)}%")
            covered.add(d.path)
        elif leaf in ("minReplicas", "maxReplicas", "replicas"):
            phrases.append(f"{leaf} {_plain(d.old)} → {_plain(d.new)}")
            covered.add(d.path)
        elif leaf == "storageUri" and version is not None:
            covered.add(d.path)  # the version change says it
    return phrases, covered


def _detail(item: PlanItem) -> str:
    if item.action is Action.CREATE:
        return "recreate (live object is terminating)" if item.reason == "terminating" else "new object"
    if item.action is Action.DELETE:
        return "no longer declared"
    if item.action is Action.UNCHANGED:
        return ""
    phrases, covered = _model_changes(item)
    rest = [d for d in item.diffs if d.path not in covered and not d.path.startswith(_BOOKKEEPING)]
    bookkeeping = sum(1 for d in item.diffs if d.path.startswith(_BOOKKEEPING))
    shown = phrases + [f"`{d.path}`: {_short(d.old)} → {_short(d.new)}" for d in rest[: max(0, 3 - len(phrases))]]
    if not shown:  # only labels or annotations changed: show those
        shown = [f"`{d.path}`: {_short(d.old)} → {_short(d.new)}" for d in item.diffs[:3]]
        bookkeeping = 0
    more = len(rest) - (len(shown) - len(phrases))
    text = "; ".join(shown) + (f"; and {more} more" if more > 0 else "")
    if bookkeeping:
        text += f" (+{bookkeeping} bookkeeping field{'' if bookkeeping == 1 else 's'})"
    return ("drift from the cluster: " if item.reason == "drift" else "") + text


def plan_to_markdown(
    plan: Plan, *, title: str | None = None, max_chars: int = 60000, show_unchanged: bool = False
) -> str:
    """The plan as a pull-request comment (format documented in the module docstring)."""
    rev = plan.revision[:12] if plan.revision else "working tree"
    lines = [title or f"### mlp plan: `{plan.environment}` at `{rev}`"]
    c = plan.counts()
    if plan.has_changes:
        lines.append(
            f"**{c['create']} to create, {c['update']} to update, {c['delete']} to delete, {c['unchanged']} unchanged**"
        )
    else:
        n = c["unchanged"]
        lines.append(f"**No changes.** {n} object{'' if n == 1 else 's'} up to date.")
    rows = [i for i in plan.items if i.changed or show_unchanged]
    if rows:
        lines += ["", "| Action | Object | Detail |", "|---|---|---|"]
        lines += [f"| {i.action.value} | `{i.ref}` | {_detail(i)} |" for i in rows]
    if plan.orphans:
        lines += [
            "",
            f"{len(plan.orphans)} owned objects are no longer declared and would be deleted "
            "with --prune: " + ", ".join(f"`{r}`" for r in plan.orphans),
        ]
    if plan.changes:
        body: list[str] = []
        for item in plan.changes:
            body += ["```diff", *item_diff_lines(item), "```"]
        text = "\n".join(body)
        budget = max(0, max_chars - sum(len(line) + 1 for line in lines) - 200)
        if len(text) > budget:
            text = text[:budget].rsplit("\n", 1)[0]
            if text.count("```") % 2:  # cut inside a block: close it
                text += "\n```"
            text += f"\n\n_(diff cut to fit the comment; run `mlp diff --env {plan.environment}` for all of it)_"
        n = len(plan.changes)
        lines += [
            "",
            f"<details><summary>Diff of {n} object{'' if n == 1 else 's'}</summary>",
            "",
            text,
            "",
            "</details>",
        ]
    return "\n".join(lines) + "\n"
