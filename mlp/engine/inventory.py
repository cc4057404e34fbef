"""The inventory: the set of objects mlp applied for an environment, like Flux's.

Recorded after every successful apply *in the target itself* (so it survives losing the
controller's state folder): on Kubernetes a ConfigMap `mlp-inventory-<environment>` in the
environment's namespace, locally a file in the runtime's state folder; the controller mirrors
it in its state database. Listing and prune follow it: every kind in the inventory is listed,
so an object of a kind a template override added is owned, and pruned once no longer rendered.

An environment with no inventory yet (upgrading from label-only ownership) adopts the
labelled objects of the kinds the plug-ins' templates produce on its first run.

Entries are `apiVersion|kind|namespace|name`, one per object, sorted: a stable text that
diffs well when someone looks at the ConfigMap.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from mlp.objects import KindKey, ObjectRef, owned_kinds
from mlp.plan.target import Target, TargetError

INVENTORY_LABEL = "mlp.dev/inventory-for"  # on the ConfigMap; not the environment label, so never listed as owned
INVENTORY_KEY = "inventory"


def inventory_name(environment: str) -> str:
    return f"mlp-inventory-{environment}"


def encode(refs: Iterable[ObjectRef]) -> str:
    return json.dumps(
        sorted(f"{r.api_version}|{r.kind}|{r.namespace}|{r.name}" for r in refs), indent=0, ensure_ascii=True
    )


def decode(text: str) -> list[ObjectRef]:
    """Entries back to refs; a malformed inventory raises ValueError (callers treat it as missing)."""
    raw = json.loads(text)
    if not isinstance(raw, list):
        raise ValueError("inventory is not a list")
    out = []
    for entry in raw:
        parts = str(entry).split("|")
        if len(parts) != 4 or not parts[0] or not parts[1] or not parts[3]:
            raise ValueError(f"bad inventory entry {entry!r}")
        out.append(ObjectRef(*parts))
    return sorted(out)


def read_inventory(target: Target, environment: str) -> list[ObjectRef] | None:
    """The target's inventory of `environment`; None when it has none or may not read it (adopt by labels)."""
    reader = getattr(target, "read_inventory", None)
    if reader is None:
        return None
    try:
        refs: list[ObjectRef] | None = reader(environment)
    except TargetError as exc:
        if exc.status in (401, 403):
            return None
        raise
    return refs


def write_inventory(target: Target, environment: str, refs: list[ObjectRef]) -> None:
    writer = getattr(target, "write_inventory", None)
    if writer is not None:
        writer(environment, refs)


def adopted_kinds(target_kind: str) -> list[KindKey]:
    return owned_kinds(target_kind)


def inventory_kinds(refs: Iterable[ObjectRef]) -> list[KindKey]:
    return list(dict.fromkeys(r.kind_key for r in refs))
