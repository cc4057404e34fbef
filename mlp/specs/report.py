"""Diagnostics as text for people and for CI systems (pure formatting, no printing)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from mlp.specs.diagnostics import Diagnostic

FORMATS = ("text", "json", "github", "gitlab")


def as_text(diagnostics: Sequence[Diagnostic], files: int, documents: int) -> str:
    lines = [str(d) for d in diagnostics]
    errors = sum(d.severity == "error" for d in diagnostics)
    warnings = len(diagnostics) - errors
    if errors:
        lines.append(
            f"{errors} error{'s' if errors != 1 else ''}"
            + (f", {warnings} warning{'s' if warnings != 1 else ''}" if warnings else "")
            + f" in {files} file{'s' if files != 1 else ''}"
        )
    else:
        lines.append(
            f"ok: {documents} document{'s' if documents != 1 else ''} in {files} file"
            f"{'s' if files != 1 else ''} valid" + (f", {warnings} warnings" if warnings else "")
        )
    return "\n".join(lines)


def as_json(diagnostics: Sequence[Diagnostic], files: int, documents: int) -> str:
    return json.dumps(
        {
            "valid": not any(d.severity == "error" for d in diagnostics),
            "files": files,
            "documents": documents,
            "diagnostics": [d.to_dict() for d in diagnostics],
        },
        indent=2,
    )


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def as_github(diagnostics: Sequence[Diagnostic]) -> str:
    """GitHub Actions workflow commands: one `::error file=…,line=…,col=…,title=…::message` per problem."""
    out = []
    for d in diagnostics:
        props = ",".join(
            f"{k}={_escape_property(str(v))}"
            for k, v in (("file", d.path), ("line", d.line), ("col", d.col), ("title", f"mlp {d.rule}: {d.subject}"))
        )
        out.append(f"::{d.severity} {props}::{_escape_data(d.message)}")
    return "\n".join(out)


def as_gitlab(diagnostics: Sequence[Diagnostic]) -> str:
    """GitLab Code Quality report: a JSON array of issues with description, check_name,
    fingerprint, severity and location (path + lines.begin)."""
    issues = []
    seen: dict[str, int] = {}
    for d in diagnostics:
        # Stable across unrelated edits (no line number, so GitLab can match an issue between
        # the base and head of a merge request), unique within the report (GitLab shows only
        # the first issue of a fingerprint): identical messages are numbered in order.
        identity = f"{d.path}\0{d.subject}\0{d.rule}\0{d.message}"
        seen[identity] = seen.get(identity, -1) + 1
        fingerprint = hashlib.sha256(f"{identity}\0{seen[identity]}".encode()).hexdigest()
        issues.append(
            {
                "type": "issue",
                "description": f"{d.subject}: {d.message}",
                "check_name": f"mlp/{d.rule}",
                "fingerprint": fingerprint,
                "severity": "major" if d.severity == "error" else "minor",
                "categories": ["Bug Risk"] if d.rule != "policy" else ["Security"],
                "location": {"path": d.path, "lines": {"begin": d.line}},
            }
        )
    return json.dumps(issues, indent=2)
