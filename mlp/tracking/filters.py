"""MLflow's run search language: filter strings and order_by clauses, parsed into plain data.

The grammar is MLflow's `search_runs` one: comparisons joined by AND (there is no OR),
each `<entity>.<key> <op> <value>`, where the entity is metrics, params, tags or attributes
(with MLflow's aliases), a key may be quoted with backticks or double quotes, and a value is a
number (metrics, numeric attributes), a quoted string, or a parenthesised list for IN / NOT IN.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from mlp.tracking.errors import TrackingError

Entity = Literal["metric", "param", "tag", "attribute"]

_ENTITY_ALIASES: dict[str, Entity] = {
    "metric": "metric",
    "metrics": "metric",
    "param": "param",
    "params": "param",
    "parameter": "param",
    "parameters": "param",
    "tag": "tag",
    "tags": "tag",
    "attribute": "attribute",
    "attributes": "attribute",
    "attr": "attribute",
    "run": "attribute",
}
STRING_ATTRIBUTES = {"run_id", "run_name", "status", "artifact_uri", "user_id", "lifecycle_stage"}
NUMERIC_ATTRIBUTES = {"start_time", "end_time", "created"}
_ATTRIBUTE_ALIASES = {"run_uuid": "run_id", "created": "start_time", "Created": "start_time"}
NUMERIC_OPS = {"=", "!=", ">", ">=", "<", "<="}
STRING_OPS = {"=", "!=", "LIKE", "ILIKE"}

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<lparen>\()|(?P<rparen>\))|(?P<comma>,)
      | (?P<op>!=|>=|<=|=|>|<)
      | (?P<sq>'(?:[^'\\]|\\.|'')*')
      | (?P<dq>"(?:[^"\\]|\\.)*")
      | (?P<bq>`[^`]*`)
      | (?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.]))
      | (?P<word>[A-Za-z_][\w.\-/:]*)
      | (?P<dot>\.)
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Clause:
    entity: Entity
    key: str
    op: str  # =, !=, >, >=, <, <=, LIKE, ILIKE, IN, NOT IN
    value: float | str | tuple[str, ...]


@dataclass(frozen=True)
class OrderBy:
    entity: Entity
    key: str
    ascending: bool


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise TrackingError(
                f"Invalid filter string {text!r}: unexpected text at character {pos}: {text[pos : pos + 20]!r}"
            )
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _unquote(kind: str, raw: str) -> str:
    body = raw[1:-1]
    if kind == "sq":
        return body.replace("''", "'").replace("\\'", "'")
    if kind == "dq":
        return body.replace('\\"', '"')
    return body


def _identifier(tokens: list[tuple[str, str]], i: int) -> tuple[Entity, str, int]:
    """`<entity>.<key>` where the key may be quoted, or a bare attribute name; returns the next index."""
    kind, raw = tokens[i]
    if kind == "word" and "." in raw:
        head, _, rest = raw.partition(".")
        entity = _ENTITY_ALIASES.get(head.lower())
        if entity is None:
            raise TrackingError(
                f"Invalid entity type '{head}'. Valid values are ['metric', 'parameter', 'tag', 'attribute']"
            )
        if rest:
            return entity, rest, i + 1
        if i + 1 < len(tokens) and tokens[i + 1][0] in ("bq", "dq", "sq"):
            return entity, _unquote(*tokens[i + 1]), i + 2
        raise TrackingError(f"Invalid identifier {raw!r}: missing key")
    if kind == "word":
        entity = _ENTITY_ALIASES.get(raw.lower())
        if entity and i + 2 < len(tokens) and tokens[i + 1][0] == "dot":
            return (
                entity,
                _unquote(*tokens[i + 2]) if tokens[i + 2][0] in ("bq", "dq", "sq") else tokens[i + 2][1],
                i + 3,
            )
        return "attribute", raw, i + 1
    if kind in ("bq", "dq"):
        return "attribute", _unquote(kind, raw), i + 1
    raise TrackingError(f"Invalid identifier {raw!r}")


def _attribute_key(key: str) -> str:
    key = _ATTRIBUTE_ALIASES.get(key, key)
    if key not in STRING_ATTRIBUTES | NUMERIC_ATTRIBUTES:
        valid = sorted(STRING_ATTRIBUTES | NUMERIC_ATTRIBUTES)
        raise TrackingError(f"Invalid attribute key '{key}' specified. Valid keys are '{valid}'")
    return key


def parse_filter(text: str | None) -> list[Clause]:
    """The AND-joined comparisons of an MLflow run filter string (empty for None or blank)."""
    if not text or not text.strip():
        return []
    tokens = _tokens(text)
    clauses: list[Clause] = []
    i = 0
    while i < len(tokens):
        entity, key, i = _identifier(tokens, i)
        if entity == "attribute":
            key = _attribute_key(key)
        if i >= len(tokens):
            raise TrackingError(f"Invalid filter {text!r}: missing comparator after '{key}'")
        kind, raw = tokens[i]
        if kind == "op":
            op = raw
            i += 1
        elif kind == "word" and raw.upper() in ("LIKE", "ILIKE", "IN"):
            op = raw.upper()
            i += 1
        elif kind == "word" and raw.upper() == "NOT" and i + 1 < len(tokens) and tokens[i + 1][1].upper() == "IN":
            op = "NOT IN"
            i += 2
        else:
            raise TrackingError(f"Invalid comparator '{raw}' in filter {text!r}")
        numeric = entity == "metric" or (entity == "attribute" and key in NUMERIC_ATTRIBUTES)
        if op in ("IN", "NOT IN"):
            if entity == "metric" or (entity == "attribute" and key != "run_id"):
                raise TrackingError(
                    "Only ['run_id'] attributes support comparison with a list of quoted string values."
                )
            if i >= len(tokens) or tokens[i][0] != "lparen":
                raise TrackingError(f"Invalid filter {text!r}: '{op}' needs a parenthesised list")
            i += 1
            values: list[str] = []
            while i < len(tokens) and tokens[i][0] != "rparen":
                vk, vr = tokens[i]
                if vk in ("sq", "dq"):
                    values.append(_unquote(vk, vr))
                elif vk != "comma":
                    raise TrackingError(f"Invalid value {vr!r} in '{op}' list: strings must be quoted")
                i += 1
            if i >= len(tokens):
                raise TrackingError(f"Invalid filter {text!r}: unclosed '('")
            i += 1
            clauses.append(Clause(entity, key, op, tuple(values)))
        else:
            if i >= len(tokens):
                raise TrackingError(f"Invalid filter {text!r}: missing value after '{op}'")
            vk, vr = tokens[i]
            i += 1
            if numeric:
                if op not in NUMERIC_OPS:
                    raise TrackingError(f"Invalid comparator '{op}' not one of '{sorted(NUMERIC_OPS)}'")
                if vk != "num":
                    raise TrackingError(f"Expected numeric value type for metric. Found {vr}")
                clauses.append(Clause(entity, key, op, float(vr)))
            else:
                if op not in STRING_OPS:
                    raise TrackingError(f"Invalid comparator '{op}' not one of '{sorted(STRING_OPS)}'")
                if vk not in ("sq", "dq"):
                    raise TrackingError(f"Value {vr} must be a string: use quotes ('{vr}')")
                clauses.append(Clause(entity, key, op, _unquote(vk, vr)))
        if i < len(tokens):
            kind, raw = tokens[i]
            if kind != "word" or raw.upper() != "AND":
                raise TrackingError(f"Invalid filter {text!r}: expected AND, found {raw!r} (MLflow has no OR)")
            i += 1
            if i >= len(tokens):
                raise TrackingError(f"Invalid filter {text!r}: nothing after AND")
    return clauses


def parse_order_by(items: list[str] | None) -> list[OrderBy]:
    """`metrics.rmse DESC`, `params.lr`, `attributes.start_time ASC`, `start_time`: ascending unless DESC."""
    out: list[OrderBy] = []
    for item in items or []:
        tokens = _tokens(item)
        if not tokens:
            continue
        entity, key, i = _identifier(tokens, 0)
        if entity == "attribute":
            key = _attribute_key(key)
        ascending = True
        if i < len(tokens):
            word = tokens[i][1].upper()
            if word not in ("ASC", "DESC") or i + 1 != len(tokens):
                raise TrackingError(f"Invalid order_by clause '{item}'. Could not be parsed.")
            ascending = word == "ASC"
        out.append(OrderBy(entity, key, ascending))
    return out
