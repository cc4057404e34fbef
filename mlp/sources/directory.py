"""Directory source: read a platform repository folder into a `Snapshot`."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from mlp.sources.base import MAX_SPEC_BYTES, SPEC_DIRS, TEMPLATE_DIR, YAML_SUFFIXES, Snapshot


def read_directory(root: str | Path, *, revision: str | None = None, max_bytes: int = MAX_SPEC_BYTES) -> Snapshot:
    """Read `specs/`, `environments/` and `templates/` under `root`.

    Files over `max_bytes` are listed in `oversized` and never read. Symbolic links that
    leave the repository are ignored, so a spec folder cannot pull in files from elsewhere.
    The revision defaults to a hash of the file contents, stable for identical trees.
    """
    root = Path(root)
    resolved_root = root.resolve()
    files: dict[str, bytes] = {}
    oversized: dict[str, int] = {}
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
                try:
                    real = path.resolve()
                    real.relative_to(resolved_root)
                except (ValueError, OSError):
                    continue
                rel = path.relative_to(root).as_posix()
                size = path.stat().st_size
                if size > max_bytes:
                    oversized[rel] = size
                    continue
                files[rel] = path.read_bytes()
    if revision is None:
        digest = hashlib.sha256()
        for rel in sorted(files):
            digest.update(rel.encode() + b"\0" + files[rel] + b"\0")
        revision = "dir-" + digest.hexdigest()[:12]
    return Snapshot(revision=revision, files=files, oversized=oversized, root=root)
