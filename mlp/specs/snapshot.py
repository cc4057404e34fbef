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
# Work bound for a whole repository: spec bytes parsed and documents validated. A generated
# repository of 1,000 models, their experiments, monitors and environments is about 2 MB.
MAX_REPOSITORY_BYTES = 8 << 20
MAX_DOCUMENTS = 20_000
OVER_BUDGET = f"not read: the repository's platform files exceed {MAX_REPOSITORY_BYTES:,} bytes in total"


def display_name(name: str) -> str:
    """A file name from the file system as printable text (undecodable bytes as \\xNN escapes)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class Snapshot:
    """Spec and template files at one revision, keyed by POSIX path relative to the repository root."""

    revision: str
    files: Mapping[str, bytes]
    oversized: Mapping[str, int] = field(default_factory=dict)  # path -> size, refused unread
    # path -> why it was not read: not a regular file (a named pipe), a dangling symbolic link
    # or one leaving the repository, a file name that is not UTF-8
    refused: Mapping[str, str] = field(default_factory=dict)
    root: Path | None = None
    author: str | None = None
    message: str | None = None

    def spec_files(self) -> list[str]:
        paths = set(self.files) | set(self.oversized)
        return sorted(p for p in paths if p.split("/", 1)[0] in SPEC_DIRS and p.endswith(YAML_SUFFIXES))

    def refused_files(self) -> list[tuple[str, str]]:
        """(path, reason) of files that were found but not read, in path order."""
        return sorted(self.refused.items())

    def templates(self) -> dict[str, str]:
        """Template overrides under templates/, keyed by path relative to that folder."""
        prefix = TEMPLATE_DIR + "/"
        return {
            p[len(prefix) :]: data.decode("utf-8", errors="replace")
            for p, data in self.files.items()
            if p.startswith(prefix) and p.endswith(".j2")
        }
