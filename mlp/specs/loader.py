"""Load a snapshot into a `SpecSet`, collecting every problem with its location.

Pure: takes a `Snapshot` (bytes already read) and returns data. Nothing stops at the
first problem: every file is parsed, every document validated, then cross-references
and policy are checked across the whole set, so one `mlp validate` run shows it all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from mlp.specs.diagnostics import Diagnostic, Loc, Problem
from mlp.specs.models import (
    API_VERSION,
    DIGEST_PATTERN,
    DNS1123_LABEL,
    KINDS,
    Entity,
    Environment,
    Experiment,
    FeatureView,
    Model,
    Monitor,
    Strict,
    Team,
)
from mlp.specs.snapshot import MAX_DOCUMENTS, MAX_REPOSITORY_BYTES, MAX_SPEC_BYTES, Snapshot
from mlp.specs.yamlio import Locator, ParseError, parse


@dataclass(frozen=True)
class SourceRef:
    path: str
    doc: int


@dataclass
class SpecSet:
    """Every valid document of a snapshot, by kind and name."""

    revision: str = ""
    models: dict[str, Model] = field(default_factory=dict)
    entities: dict[str, Entity] = field(default_factory=dict)
    feature_views: dict[str, FeatureView] = field(default_factory=dict)
    experiments: dict[str, Experiment] = field(default_factory=dict)
    monitors: dict[str, Monitor] = field(default_factory=dict)
    teams: dict[str, Team] = field(default_factory=dict)
    environments: dict[str, Environment] = field(default_factory=dict)
    sources: dict[tuple[str, str], SourceRef] = field(default_factory=dict)
    raw: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    # (kind, name) of documents that are declared but invalid (already reported), so that
    # references to them are not reported a second time as "does not exist"
    invalid: set[tuple[str, str]] = field(default_factory=set)

    def declared(self, kind: str, name: str) -> bool:
        """True when a document of `kind` named `name` exists, valid or not."""
        return name in self.by_kind(kind) or (kind, name) in self.invalid

    def by_kind(self, kind: str) -> dict[str, Any]:
        table: dict[str, dict[str, Any]] = {
            "Model": self.models,
            "Entity": self.entities,
            "FeatureView": self.feature_views,
            "Experiment": self.experiments,
            "Monitor": self.monitors,
            "Team": self.teams,
            "Environment": self.environments,
        }
        return table[kind]

    def __len__(self) -> int:
        return len(self.sources)


@dataclass
class LoadResult:
    specs: SpecSet
    diagnostics: list[Diagnostic]

    @property
    def ok(self) -> bool:
        return not any(d.severity == "error" for d in self.diagnostics)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]


def load(snapshot: Snapshot, *, checks: bool = True) -> LoadResult:
    """Parse and validate every spec file of `snapshot`; with `checks`, cross-references and policy too."""
    from mlp.specs import checks as checks_module

    specs = SpecSet(revision=snapshot.revision)
    problems: list[Problem] = []
    documents: list[tuple[SourceRef, dict[str, Any]]] = []
    files = dict(snapshot.files)
    for path, reason in snapshot.refused_files():
        problems.append(Problem(path, -1, (1, 1), reason, rule="syntax"))
    # The whole repository's work is bounded too: past these, files are listed, not parsed.
    budget_bytes, budget_docs = MAX_REPOSITORY_BYTES, MAX_DOCUMENTS

    for path in snapshot.spec_files():
        if path not in snapshot.oversized and (len(files[path]) > budget_bytes or budget_docs <= 0):
            what = f"{MAX_REPOSITORY_BYTES:,} bytes" if budget_docs > 0 else f"{MAX_DOCUMENTS:,} documents"
            problems.append(
                Problem(
                    path, -1, (1, 1), f"not read: the repository's spec files exceed {what} in total", rule="syntax"
                )
            )
            specs.invalid.update(_declared_names(files[path]))
            continue
        if path in snapshot.oversized or len(files[path]) > MAX_SPEC_BYTES:
            # sources list oversized files unread; a snapshot built any other way is bounded here
            size = snapshot.oversized.get(path) or len(files[path])
            problems.append(
                Problem(
                    path,
                    0,
                    (),
                    f"file too large ({size:,} bytes; the limit is {MAX_SPEC_BYTES:,}): not read",
                    rule="syntax",
                )
            )
            continue
        budget_bytes -= len(files[path])
        try:
            docs = parse(files[path])
        except ParseError as exc:
            problems.append(_located(path, exc))
            specs.invalid.update(_declared_names(files[path]))
            continue
        budget_docs -= len(docs)
        if budget_docs < 0:
            problems.append(
                Problem(
                    path, -1, (1, 1), f"not read: the repository holds over {MAX_DOCUMENTS:,} documents", rule="syntax"
                )
            )
            specs.invalid.update(_declared_names(files[path]))
            continue
        for index, doc in enumerate(docs):
            if doc is None:
                continue
            ref = SourceRef(path, index)
            if not isinstance(doc, dict):
                problems.append(
                    Problem(path, index, (), f"expected a mapping with apiVersion and kind, got {_type(doc)}")
                )
                continue
            documents.append((ref, doc))

    for ref, doc in documents:
        _validate_document(ref, doc, specs, problems)
        if checks:
            problems.extend(checks_module.document_policy(ref.path, ref.doc, doc))

    if checks:
        problems.extend(checks_module.check(specs))

    locator = Locator(files)
    diagnostics = sorted({_resolve(p, locator) for p in problems}, key=_order)
    return LoadResult(specs=specs, diagnostics=diagnostics)


_KIND_LINE = re.compile(rb"^kind:[ \t]*[\"']?([A-Za-z]+)", re.MULTILINE)
_NAME = re.compile(rb"\bname:[ \t]*[\"']?([a-z0-9][-a-z0-9]*)")
_DOC_SEPARATOR = re.compile(rb"^---", re.MULTILINE)


def _declared_names(data: bytes) -> set[tuple[str, str]]:
    """Best-effort (kind, name) pairs of a file that does not parse, read with regexes.

    Only used to keep a syntax error in one file from turning every reference to it into
    a second, misleading "does not exist" error elsewhere.
    """
    found: set[tuple[str, str]] = set()
    data = data[:MAX_SPEC_BYTES]
    for bom, codec in (
        (b"\xff\xfe\0\0", "utf-32-le"),
        (b"\0\0\xfe\xff", "utf-32-be"),
        (b"\xff\xfe", "utf-16-le"),
        (b"\xfe\xff", "utf-16-be"),
    ):
        if data.startswith(bom):
            # A UTF-16 file is refused, but what it declares still exists for the other files.
            data = data[len(bom) :].decode(codec, errors="replace").encode("utf-8")
            break
    for chunk in _DOC_SEPARATOR.split(data):
        kind, name = _KIND_LINE.search(chunk), _NAME.search(chunk)
        if kind and name and kind.group(1).decode() in KINDS:
            found.add((kind.group(1).decode(), name.group(1).decode()))
    return found


def _located(path: str, exc: ParseError) -> Problem:
    # Parse errors carry their own position; encode it in a Problem the resolver keeps as is.
    return Problem(path, -1, (exc.line, exc.col), exc.message, rule="syntax")


def _type(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _validate_document(ref: SourceRef, doc: dict[str, Any], specs: SpecSet, problems: list[Problem]) -> None:
    kind = doc.get("kind")
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) and isinstance(meta.get("name"), str) else None
    api_version = doc.get("apiVersion")
    if api_version != API_VERSION:
        shown = "missing" if api_version is None else f"{api_version!r}"
        problems.append(
            Problem(
                ref.path,
                ref.doc,
                ("apiVersion",),
                f"apiVersion is {shown}; expected {API_VERSION!r}",
                kind if isinstance(kind, str) else None,
                name,
            )
        )
        if isinstance(kind, str) and kind in KINDS and name is not None:
            specs.invalid.add((kind, name))
        return
    model_cls = KINDS.get(kind) if isinstance(kind, str) else None
    if model_cls is None:
        known = ", ".join(sorted(KINDS))
        problems.append(
            Problem(ref.path, ref.doc, ("kind",), f"unknown kind {kind!r}; expected one of {known}", None, name)
        )
        return
    try:
        obj: Strict = model_cls.model_validate(doc)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            problems.append(Problem(ref.path, ref.doc, _clean_loc(err["loc"], doc), _message(err), kind, name))
        if name is not None and isinstance(kind, str):
            specs.invalid.add((kind, name))
        return
    assert name is not None and isinstance(kind, str)
    registry = specs.by_kind(kind)
    key = (kind, name)
    if name in registry:
        first = specs.sources[key]
        problems.append(
            Problem(
                ref.path,
                ref.doc,
                ("metadata", "name"),
                f"duplicate {kind} name {name!r} (first defined in {first.path})",
                kind,
                name,
                rule="duplicate",
            )
        )
        return
    registry[name] = obj
    specs.sources[key] = ref
    specs.raw[key] = doc


def _clean_loc(loc: tuple[Any, ...], doc: Any) -> Loc:
    """Keep only the parts of a pydantic error location that exist in the data (drops union tags)."""
    out: list[str | int] = []
    node = doc
    for part in loc:
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        ):
            out.append(part)
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and part.endswith("_") and part[:-1] in node:
            out.append(part[:-1])
            node = node[part[:-1]]
        elif isinstance(part, str) and part not in ("[key]",) and isinstance(node, dict):
            # a missing field or an unknown one: point at the mapping that should (not) have it
            if part in node:
                out.append(part)
            break
        else:
            continue
    return tuple(out)


def _dotted(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif isinstance(part, str) and ("[" in part or "(" in part):
            continue  # union/function tags from pydantic
        else:
            part = part[:-1] if isinstance(part, str) and part.endswith("_") and part != "_" else part
            text += f".{part}" if text else str(part)
    return text


def _message(err: Any) -> str:
    loc = err["loc"]
    where = _dotted(loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        parent, _, field_name = where.rpartition(".")
        return f"unknown field {field_name!r}" + (f" in {parent}" if parent else "")
    if kind == "missing":
        parent, _, field_name = where.rpartition(".")
        return f"missing required field {field_name!r}" + (f" in {parent}" if parent else "")
    msg = err["msg"]
    pattern = (err.get("ctx") or {}).get("pattern")
    if kind == "string_pattern_mismatch" and pattern == DNS1123_LABEL:
        msg = (
            f"{err['input']!r} is not a valid name: use lowercase letters, digits and '-', "
            "starting and ending with a letter or digit (a DNS-1123 label)"
        )
    elif kind == "string_pattern_mismatch" and pattern == DIGEST_PATTERN:
        msg = f"{err['input']!r} is not a digest: expected 'sha256:' and 64 lowercase hex digits"
    elif kind == "string_pattern_mismatch":
        msg = f"{err['input']!r} does not match the pattern {pattern}"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if kind == "literal_error" and err.get("input") is not None:
        msg = f"{msg}, got {err['input']!r}"
    return f"{where}: {msg}" if where else msg


def _resolve(problem: Problem, locator: Locator) -> Diagnostic:
    if problem.doc == -1:
        line, col = int(problem.loc[0]), int(problem.loc[1])
    else:
        line, col = locator.locate(problem.path, problem.doc, problem.loc)
    return Diagnostic(
        problem.path, line, col, problem.kind, problem.name, problem.message, problem.rule, problem.severity
    )


def _order(d: Diagnostic) -> tuple[str, int, int, str]:
    return (d.path, d.line, d.col, d.message)
