"""Diagnostics: located problems found while loading and checking specs."""

from __future__ import annotations

import re
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
        # Names, paths and messages quote the repository: printed raw, a newline in a name would
        # start a line of its own (which GitHub Actions runs as a workflow command).
        if self.kind or self.name:
            return printable(f"{self.path}:{self.line}:{self.col}: {self.subject}: {self.message}")
        return printable(f"{self.path}:{self.line}:{self.col}: {self.message}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` on one line: control, line-separator and bidi-override characters as escapes (`\\n`, `\\x1b`)."""

    def escape(m: re.Match[str]) -> str:
        c = m.group()
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c) or (
            f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"
        )

    return _CONTROL.sub(escape, text)
