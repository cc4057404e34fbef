"""Diagnostics: located problems found while loading and checking specs."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Severity = Literal["error", "warning"]
Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """A problem found in a document, located by a path inside it; resolved to line:col later."""

    path: str
    doc: int  # index of the document in its file
    loc: Loc  # keys and indices from the document root
    message: str
    kind: str | None = None
    name: str | None = None
    rule: str = "schema"
    severity: Severity = "error"


@dataclass(frozen=True, order=True)
class Diagnostic:
    path: str
    line: int  # 1-based
    col: int  # 1-based
    kind: str | None
    name: str | None
    message: str
    rule: str = "schema"
    severity: Severity = "error"

    @property
    def subject(self) -> str:
        if self.kind and self.name:
            return f"{self.kind}/{self.name}"
        return self.kind or self.name or "-"

    def __str__(self) -> str:
        if self.kind or self.name:
            return f"{self.path}:{self.line}:{self.col}: {self.subject}: {self.message}"
        return f"{self.path}:{self.line}:{self.col}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
