"""Directory source: read a platform repository folder into a `Snapshot`."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from mlp.sources.base import (
    MAX_REPOSITORY_BYTES,
    MAX_SPEC_BYTES,
    OVER_BUDGET,
    SPEC_DIRS,
    TEMPLATE_DIR,
    YAML_SUFFIXES,
    Snapshot,
    display_name,
)

_KINDS = {stat.S_IFIFO: "a named pipe", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device", stat.S_IFBLK: "a device"}


def read_directory(root: str | Path, *, revision: str | None = None, max_bytes: int = MAX_SPEC_BYTES) -> Snapshot:
    """Read `specs/`, `environments/` and `templates/` under `root`.

    Files over `max_bytes` are listed in `oversized` and never read. A symbolic link is read
    when it leads to a regular file inside the repository (the Git source follows the same
    rule); one that dangles or leaves the repository is listed in
    `refused`, as are named pipes, sockets and devices (never opened: a pipe would block)
    and files whose names are not UTF-8. The revision defaults to a hash of the file
    contents, stable for identical trees. Links to folders are not walked (as in Git).
    """
    root = Path(root)
    resolved_root = root.resolve()
    files: dict[str, bytes] = {}
    oversized: dict[str, int] = {}
    refused: dict[str, str] = {}
    budget = MAX_REPOSITORY_BYTES
    for top in (*SPEC_DIRS, TEMPLATE_DIR):
        base = root / top
        if not base.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                path = Path(dirpath) / filename
                if top != TEMPLATE_DIR and not filename.endswith(YAML_SUFFIXES):
                    continue
                if top == TEMPLATE_DIR and not filename.endswith(".j2"):
                    continue
                rel = path.relative_to(root).as_posix()
                shown = display_name(rel)
                if shown != rel:
                    refused[shown] = "file name is not valid UTF-8: not read (rename the file)"
                    continue
                reason = _unreadable(path, resolved_root)
                if reason:
                    refused[rel] = reason
                    continue
                size = path.stat().st_size
                if size > max_bytes:
                    oversized[rel] = size
                    continue
                if size > budget:
                    refused[rel] = OVER_BUDGET
                    continue
                budget -= size
                try:
                    files[rel] = path.read_bytes()
                except OSError as exc:
                    refused[rel] = f"cannot read: {exc.strerror}"
    if revision is None:
        digest = hashlib.sha256()
        for rel in sorted(files):
            digest.update(rel.encode() + b"\0" + files[rel] + b"\0")
        revision = "dir-" + digest.hexdigest()[:12]
    return Snapshot(revision=revision, files=files, oversized=oversized, refused=refused, root=root)


def _unreadable(path: Path, root: Path) -> str | None:
    """Why `path` must not be opened, or None for a regular file inside the repository."""
    link = path.is_symlink()
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return "dangling symbolic link: its target does not exist" if link else "cannot be read"
    try:
        real.relative_to(root)
    except ValueError:
        return "symbolic link leads outside the repository: not read"
    try:
        mode = os.stat(real).st_mode
    except OSError as exc:
        return f"cannot read: {exc.strerror}"
    if not stat.S_ISREG(mode):
        what = "a folder" if stat.S_ISDIR(mode) else _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        return f"{what}, not a regular file: not read"
    return None
