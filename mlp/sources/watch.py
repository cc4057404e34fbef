"""Local-folder source with file watching, for `mlp controller --watch DIR` during development.

`FolderSource` reads a platform repository folder (through `read_directory`, same size
limit and symlink rules) and offers the interface the controller uses for Git: every ref
names the folder's current content, and the revision is a hash of that content, so an
edit is a new revision and saving a file twice with the same bytes is not.

`watch()` starts a watchdog observer and calls back (debounced: an editor's burst of
writes becomes one call) when anything under specs/, environments/ or templates/ changes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlp.sources.base import MAX_SPEC_BYTES, SPEC_DIRS, TEMPLATE_DIR, Snapshot
from mlp.sources.directory import read_directory


@dataclass
class FolderRefresh:
    revisions: dict[str, str] = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)
    error: str | None = None
    duration: float = 0.0


class FolderSource:
    """A folder as a source: one revision (content hash) for every ref."""

    def __init__(self, root: str | Path, *, max_bytes: int = MAX_SPEC_BYTES) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._recent: dict[str, Snapshot] = {}  # a few recent revisions, so a step racing an edit still reads
        self._known: dict[str, str] = {}  # ref -> revision last reported to that ref's caller

    def refresh(self, refs: Iterable[str]) -> FolderRefresh:
        start = time.monotonic()
        out = FolderRefresh()
        with self._lock:
            if not self.root.is_dir():
                self.last_error = out.error = f"{self.root}: not a folder; keeping the last revision read"
            else:
                try:
                    self._snapshot = read_directory(self.root, max_bytes=self.max_bytes)
                    self._recent[self._snapshot.revision] = self._snapshot
                    while len(self._recent) > 4:
                        del self._recent[next(iter(self._recent))]
                    self.last_error = None
                except OSError as exc:
                    self.last_error = out.error = f"{self.root}: {exc.strerror or exc}"
            if self._snapshot is not None:
                for ref in refs:
                    if self._known.get(ref) != self._snapshot.revision:
                        out.changed.append(ref)
                    self._known[ref] = self._snapshot.revision
                    out.revisions[ref] = self._snapshot.revision
        out.duration = time.monotonic() - start
        return out

    def revision(self, ref: str) -> str | None:
        with self._lock:
            return self._snapshot.revision if self._snapshot is not None else None

    def snapshot(self, rev: str) -> Snapshot:
        with self._lock:
            snap = self._recent.get(rev)
            if snap is None:
                raise KeyError(f"{self.root}: revision {rev} is no longer the folder's content")
            return snap


class Watcher:
    """Calls `on_change()` once per burst of file changes under the folder's platform subfolders."""

    def __init__(self, root: str | Path, on_change: Callable[[], None], *, debounce: float = 0.2) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        self.root = Path(root).resolve()
        self.on_change = on_change
        self.debounce = debounce
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        watched = (*SPEC_DIRS, TEMPLATE_DIR)
        outer = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return  # reads are not changes
                paths = [event.src_path, getattr(event, "dest_path", "")]
                for p in paths:
                    if not p:
                        continue
                    try:
                        rel = Path(str(p)).resolve().relative_to(outer.root)
                    except ValueError:
                        continue
                    if rel.parts and rel.parts[0] in watched:
                        outer._changed()
                        return

        self._observer: Any = Observer()
        self._observer.schedule(Handler(), str(self.root), recursive=True)

    def _changed(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(self.debounce, self.on_change)
            self._timer.daemon = True
            self._timer.start()

    def start(self) -> Watcher:
        self._observer.start()
        return self

    def stop(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
        self._observer.stop()
        self._observer.join(timeout=5)
