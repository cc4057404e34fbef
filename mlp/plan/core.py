"""The plan: what must change so that a target holds exactly the desired objects.

`make_plan(desired, live, ...)` is pure. It normalizes both sides (`mlp.plan.normalize`),
matches objects by identity, and classifies each as CREATE, UPDATE, DELETE or UNCHANGED
with a field-level diff. A `Plan` is plain data: `mlp diff` prints it, `mlp apply`
executes that same plan (`mlp.plan.execute`), a pull-request comment renders it as
markdown (`mlp.plan.format.plan_to_markdown`).

Safety rules enforced here, not by callers:
- only objects carrying mlp's ownership labels for *this* environment are ever deleted;
- owned objects no longer declared are deleted only with `prune=True`; without it they
  are listed in `Plan.orphans` and left alone;
- a plan that would delete every object mlp owns in the environment raises `PlanRefused`
  unless `allow_empty=True` (an empty or broken source must never wipe an environment);
- an object that is being deleted (it has `deletionTimestamp`, e.g. waiting on a
  foreground-deletion finalizer) is never deleted again and, if still declared, is planned
  as CREATE: the next apply after the garbage collector finishes re-creates it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from mlp.objects import (
    FIELD_MANAGER,
    HASH_ANNOTATION,
    Manifest,
    ObjectRef,
    content_hash,
    is_owned,
    kind_rank,
)
from mlp.plan.normalize import is_associative, normalize, project, values_equal


class Action(str, Enum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    UNCHANGED = "unchanged"


class PlanRefused(Exception):
    """The plan would be unsafe to execute; the message says why and what to pass to override."""


class Missing:
    """Marker for "no value": a field absent on one side of a diff."""

    _instance: Missing | None = None

    def __new__(cls) -> Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "<absent>"

    def __bool__(self) -> bool:
        return False


MISSING = Missing()


@dataclass(frozen=True)
class FieldDiff:
    """One field that differs: `old` is the live value, `new` the desired one (MISSING = absent)."""

    path: str
    old: Any
    new: Any
    # where a removed field sat: keys, and {key: value} matches for list items (for display)
    steps: tuple[Any, ...] = field(default=(), compare=False, repr=False)

    @property
    def op(self) -> str:
        if self.old is MISSING:
            return "add"
        if self.new is MISSING:
            return "remove"
        return "change"


@dataclass
class PlanItem:
    """One object in a plan. `reason`: "" | "changed" (the repository changed it) |
    "drift" (the cluster changed it; the repository did not) | "terminating" | "prune"."""

    action: Action
    ref: ObjectRef
    desired: Manifest | None = None
    live: Manifest | None = None
    diffs: list[FieldDiff] = field(default_factory=list)
    reason: str = ""

    @property
    def changed(self) -> bool:
        return self.action is not Action.UNCHANGED


@dataclass
class Plan:
    """Ordered items: creates and updates in dependency order, then deletions in reverse order."""

    environment: str
    revision: str
    items: list[PlanItem]
    prune: bool = False
    orphans: list[ObjectRef] = field(default_factory=list)  # owned, undeclared, kept (no prune)

    @property
    def changes(self) -> list[PlanItem]:
        return [i for i in self.items if i.changed]

    @property
    def has_changes(self) -> bool:
        return any(i.changed for i in self.items)

    def counts(self) -> dict[str, int]:
        out = {a.value: 0 for a in Action}
        for item in self.items:
            out[item.action.value] += 1
        return out

    def item(self, ref: ObjectRef) -> PlanItem | None:
        return next((i for i in self.items if i.ref == ref), None)


# --- ordering ------------------------------------------------------------------------------

# Apply order by kind comes from render (`KIND_RANK`): config before workloads, monitoring last.


def _order_key(item: PlanItem) -> tuple[int, int, str, str, str]:
    rank = kind_rank(item.ref.kind)
    if item.action is Action.DELETE:
        return (1, -rank, item.ref.kind, item.ref.namespace, item.ref.name)
    return (0, rank, item.ref.kind, item.ref.namespace, item.ref.name)


# --- identity --------------------------------------------------------------------------------


def _identity(obj: Manifest) -> tuple[str, str, str, str]:
    """(group, kind, namespace, name): the API version within a group does not change identity."""
    group = obj.get("apiVersion", "").rpartition("/")[0]
    meta = obj.get("metadata") or {}
    return (group, obj.get("kind", ""), meta.get("namespace") or "", meta.get("name", ""))


def is_terminating(obj: Manifest) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


# --- field diff ------------------------------------------------------------------------------


def _key_path(path: str, key: str) -> str:
    if key.replace("_", "a").replace("-", "a").isalnum():
        return f"{path}.{key}" if path else key
    return f'{path}["{key}"]'


def diff_fields(live: Any, desired: Any, path: str = "", keys: tuple[str, ...] = ()) -> list[FieldDiff]:
    """Differences between a projected live value and the desired value, leaf by leaf."""
    if isinstance(desired, dict) and isinstance(live, dict):
        out: list[FieldDiff] = []
        for key in sorted(desired):
            sub = _key_path(path, key)
            if key not in live:
                out.append(FieldDiff(sub, MISSING, desired[key]))
            else:
                out.extend(diff_fields(live[key], desired[key], sub, (*keys, key)))
        for key in sorted(set(live) - set(desired)):
            out.append(FieldDiff(_key_path(path, key), live[key], MISSING))
        return out
    if isinstance(desired, list) and isinstance(live, list):
        out = []
        if is_associative(desired):
            live_by_name = {i["name"]: i for i in live if isinstance(i, dict) and "name" in i}
            for item in desired:
                sub = f"{path}[name={item['name']}]"
                if item["name"] not in live_by_name:
                    out.append(FieldDiff(sub, MISSING, item))
                else:
                    out.extend(diff_fields(live_by_name[item["name"]], item, sub, keys))
            return out
        for i in range(max(len(live), len(desired))):
            sub = f"{path}[{i}]"
            if i >= len(live):
                out.append(FieldDiff(sub, MISSING, desired[i]))
            elif i >= len(desired):
                out.append(FieldDiff(sub, live[i], MISSING))
            else:
                out.extend(diff_fields(live[i], desired[i], sub, keys))
        return out
    if values_equal(live, desired, keys):
        return []
    return [FieldDiff(path, live, desired)]


def _removals(node: Any, live: Any, desired: Any, path: str, out: list[FieldDiff], steps: tuple[Any, ...] = ()) -> None:
    """Walk a `fieldsV1` tree; report owned fields present live but absent from desired."""
    if not isinstance(node, dict):
        return
    for key in sorted(node):
        child = node[key]
        if key.startswith("f:"):
            name = key[2:]
            if not isinstance(live, dict) or name not in live:
                continue  # already gone (or dropped by normalization)
            sub = _key_path(path, name)
            wanted = desired.get(name) if isinstance(desired, dict) else None
            if wanted is None and not (isinstance(child, dict) and set(child) - {"."}):
                out.append(FieldDiff(sub, live[name], MISSING, (*steps, name)))  # owned leaf, no longer set
            else:
                # descend: mlp may own only some keys or items under it (others own the rest)
                _removals(child, live[name], wanted, sub, out, (*steps, name))
        elif key.startswith("k:") and isinstance(live, list):
            try:
                match = json.loads(key[2:])
            except ValueError:
                continue
            if not isinstance(match, dict):
                continue

            def find(items: Any, match: dict[str, Any] = match) -> Any:
                if not isinstance(items, list):
                    return None
                return next(
                    (i for i in items if isinstance(i, dict) and all(i.get(a) == b for a, b in match.items())), None
                )

            item = find(live)
            if item is None:
                continue
            sub = f"{path}[{','.join(f'{a}={b}' for a, b in sorted(match.items()))}]"
            wanted = find(desired)
            if wanted is None:
                out.append(FieldDiff(sub, item, MISSING, (*steps, match)))
            else:
                _removals(child, item, wanted, sub, out, (*steps, match))
        elif key.startswith("v:") and isinstance(live, list):
            try:
                value = json.loads(key[2:])
            except ValueError:
                continue
            if value in live and not (isinstance(desired, list) and value in desired):
                out.append(FieldDiff(f"{path}[{json.dumps(value)}]", value, MISSING))


def removed_fields(
    desired: Manifest,
    live: Manifest,
    manager: str = FIELD_MANAGER,
    *,
    normalized: tuple[Manifest, Manifest] | None = None,
) -> list[FieldDiff]:
    """Fields `manager` owns on the live object (server-side apply `managedFields`) that the
    desired object no longer sets: applying it will remove them."""
    entries = [
        e
        for e in (live.get("metadata") or {}).get("managedFields") or []
        if isinstance(e, dict) and e.get("manager") == manager and e.get("operation") == "Apply"
    ]
    if not entries:
        return []
    want, have = normalized or (normalize(desired), normalize(live))
    out: list[FieldDiff] = []
    for entry in entries:
        _removals(entry.get("fieldsV1") or {}, have, want, "", out)
    return out


def compare(desired: Manifest, live: Manifest) -> tuple[Manifest, Manifest, list[FieldDiff]]:
    """(normalized desired, live projected onto it, field diffs including removals)."""
    want = normalize(desired)
    full = normalize(live)
    have = project(full, want)
    return want, have, diff_fields(have, want) + removed_fields(desired, live, normalized=(want, full))


# --- the plan --------------------------------------------------------------------------------


def make_plan(
    desired: Iterable[Manifest],
    live: Iterable[Manifest],
    *,
    environment: str,
    revision: str = "",
    prune: bool = False,
    allow_empty: bool = False,
) -> Plan:
    """Plan the change from `live` (objects listed from the target) to `desired` (rendered).

    Raises `PlanRefused` for a plan that deletes everything mlp owns in the environment
    (unless `allow_empty`) and `ValueError` for two desired objects with one identity.
    """
    wanted: dict[tuple[str, str, str, str], Manifest] = {}
    for obj in desired:
        ident = _identity(obj)
        if ident in wanted:
            raise ValueError(f"rendered two objects named {ObjectRef.of(obj)}")
        wanted[ident] = obj
    owned = {_identity(o): o for o in live if is_owned(o, environment)}

    items: list[PlanItem] = []
    for ident, obj in wanted.items():
        ref = ObjectRef.of(obj)
        current = owned.get(ident)
        if current is None:
            items.append(PlanItem(Action.CREATE, ref, desired=obj, reason="changed"))
            continue
        if is_terminating(current):
            items.append(PlanItem(Action.CREATE, ref, desired=obj, live=current, reason="terminating"))
            continue
        _, _, diffs = compare(obj, current)
        if not diffs:
            items.append(PlanItem(Action.UNCHANGED, ref, desired=obj, live=current))
            continue
        # The content hash is compared like any annotation: equal hashes mean the repository
        # did not change the object since it was applied, so the differences are drift.
        live_hash = ((current.get("metadata") or {}).get("annotations") or {}).get(HASH_ANNOTATION)
        reason = "drift" if live_hash is not None and live_hash == content_hash(obj) else "changed"
        items.append(PlanItem(Action.UPDATE, ref, desired=obj, live=current, diffs=diffs, reason=reason))

    orphans: list[ObjectRef] = []
    deletable = 0
    for ident, obj in owned.items():
        if ident in wanted or is_terminating(obj):
            continue
        deletable += 1
        if prune:
            items.append(PlanItem(Action.DELETE, ObjectRef.of(obj), live=obj, reason="prune"))
        else:
            orphans.append(ObjectRef.of(obj))

    live_count = sum(1 for o in owned.values() if not is_terminating(o))
    if prune and not allow_empty and live_count > 0 and deletable == live_count:
        raise PlanRefused(
            f"refusing to delete all {live_count} objects mlp owns in environment {environment!r} "
            "(nothing it declares is already running); pass --allow-empty if that is intended"
        )

    items.sort(key=_order_key)
    orphans.sort(key=lambda r: (kind_rank(r.kind), r.kind, r.namespace, r.name))
    return Plan(environment=environment, revision=revision, items=items, prune=prune, orphans=orphans)
