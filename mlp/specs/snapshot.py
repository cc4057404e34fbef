"""A snapshot: the files of a platform repository at one revision, read once (the port sources fill).

Sources (a directory, a Git checkout) produce snapshots; the pure core only ever sees
a `Snapshot`, never the file system, so the same snapshot validates, renders and plans
identically wherever it came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

SPEC_DIRS = ("specs", "environments")
TEMPLATE_DIR = "templates"
YAML_SUFFIXES = (".yaml", ".yml")
# A spec file larger than this is refused without being read: specs are small, and a
# 50 MB "spec" is a mistake or an attack on the parser.
MAX_SPEC_BYTES = 1 << 20


@dataclass(frozen=True)
class Snapshot:
    """Spec and template files at one revision, keyed by POSIX path relative to the repository root."""

    revision: str
    files: Mapping[str, bytes]
    oversized: Mapping[str, int] = field(default_factory=dict)  # path -> size, refused unread
    root: Path | None = None
    author: str | None = None
    message: str | None = None

    def spec_files(self) -> list[str]:
        paths = set(self.files) | set(self.oversized)
        return sorted(p for p in paths if p.split("/", 1)[0] in SPEC_DIRS and p.endswith(YAML_SUFFIXES))

    def templates(self) -> dict[str, str]:
        """Template overrides under templates/, keyed by path relative to that folder."""
        prefix = TEMPLATE_DIR + "/"
        return {
            p[len(prefix) :]: data.decode("utf-8", errors="replace")
            for p, data in self.files.items()
            if p.startswith(prefix) and p.endswith(".j2")
        }
