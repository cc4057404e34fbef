"""Plan a change between two Git revisions: validate, render and plan every environment.

`Workspace` is the repository the checks read: a local repository used in place, or a
remote mirrored into a cache folder (a bare clone; pull/merge request heads are
fetched by their `refs/pull/N/head` / `refs/merge-requests/N/head` refs). Each revision
is read straight from Git's object store, and only its `specs/`, `environments/` and
`templates/` folders, with the sources' size limits (`mlp.sources.git.read_tree`): a
pull request that adds a 2 GB file costs nothing to check, and nothing is written to
disk, so a killed process leaves no work folders behind. (Work folders earlier versions
left in the temporary folder are removed when the workspace opens.)

`check_revisions` is what both the webhook PR flow and `mlp plan --base --head` call:
for each environment, the head's rendered objects are planned against the base's
rendered objects as if those were live, which shows exactly what merging would change.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import git
from git.exc import BadName, GitCommandError

from mlp.engine import desired, preview
from mlp.governance import affected_by_specs, version_changes
from mlp.objects import Manifest
from mlp.plan import Plan
from mlp.render import RenderError
from mlp.sources.git import GitAuth, is_url, read_tree, remote_url
from mlp.specs import LoadResult, SpecSet, load
from mlp.specs.snapshot import Snapshot
from mlp.webhooks.report import EnvironmentReport, report_markdown


class WorkspaceError(Exception):
    """A revision cannot be found or checked out; one clear line."""


class Workspace:
    """A Git repository whose revisions can be checked out into isolated work folders."""

    def __init__(self, repo: str | Path, cache_dir: str | Path | None = None, auth: GitAuth | None = None) -> None:
        self.auth = auth or GitAuth()
        self._lock = threading.Lock()
        self.subdir = ""
        text = str(repo)
        local = Path(text)
        if "://" not in text and local.exists():
            try:
                self.repo = git.Repo(local, search_parent_directories=True)
            except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
                raise WorkspaceError(f"{local}: not a Git repository") from exc
            self.remote = False
            # The platform repository may be a folder inside a larger Git repository (a monorepo).
            top = Path(self.repo.working_tree_dir or local).resolve()
            self.subdir = local.resolve().relative_to(top).as_posix() if local.resolve() != top else ""
        elif not is_url(text):  # refused before anything is created in the cache folder
            raise WorkspaceError(f"{text}: no such folder, and not a Git URL")
        else:
            if cache_dir is None:
                raise WorkspaceError(f"{text}: a remote repository needs a cache folder (--state-dir)")
            target = Path(cache_dir) / "workspace.git"
            if (target / "HEAD").exists():
                self.repo = git.Repo(target)
            else:
                target.mkdir(parents=True, exist_ok=True)
                self.repo = git.Repo.init(target, bare=True)
                with self.repo.config_writer() as cw:
                    cw.set_value('remote "origin"', "url", remote_url(text))
            self.remote = True

    def fetch(self, *refspecs: str) -> None:
        """Fetch from the remote (a no-op for a local repository)."""
        if not self.remote:
            return
        specs = list(refspecs) or ["+refs/heads/*:refs/heads/*"]
        with self._lock:
            try:
                self.repo.git.execute(
                    ["git", "fetch", "--quiet", "--force", "origin", *specs], env=self.auth.environment()
                )
            except GitCommandError as exc:
                detail = (exc.stderr or "").strip().splitlines()
                raise WorkspaceError(f"git fetch failed: {detail[-1] if detail else exc.status}") from exc

    def resolve(self, ref: str) -> str:
        """The commit SHA of a branch, tag, ref or SHA."""
        # under the lock, as `load`: GitPython asks one long-lived `git cat-file` process, and two
        # threads asking at once read each other's answers (or wait for ever)
        with self._lock:
            for candidate in (ref, f"origin/{ref}", f"refs/heads/{ref}"):
                try:
                    return self.repo.commit(candidate).hexsha
                except (BadName, ValueError, GitCommandError):
                    continue
        raise WorkspaceError(f"{self.repo.working_tree_dir or self.repo.git_dir}: unknown revision {ref!r}")

    def has(self, sha: str) -> bool:
        try:
            self.repo.git.cat_file("-e", f"{sha}^{{commit}}")
            return True
        except GitCommandError:
            return False

    def changed_files(self, base: str, head: str) -> list[str]:
        """Files that differ between the merge base of `base` and `head`, and `head`."""
        try:
            merge_base = self.repo.git.merge_base(base, head).strip() or base
        except GitCommandError:
            merge_base = base
        out = self.repo.git.diff("--name-only", merge_base, head)
        return sorted(line for line in out.splitlines() if line)

    def load(self, sha: str) -> tuple[LoadResult, Snapshot]:
        """Specs and template overrides at `sha`, read from the object store (platform folders only)."""
        with self._lock:
            try:
                commit = self.repo.commit(sha)
            except (BadName, ValueError, GitCommandError) as exc:
                raise WorkspaceError(f"cannot read {sha[:12]}: not in the repository") from exc
            files, oversized, refused = read_tree(commit, self.subdir)
        snapshot = Snapshot(revision=sha, files=files, oversized=oversized, refused=refused)
        return load(snapshot), snapshot

    def clean_leftovers(self) -> int:
        """Remove work folders (`mlp-rev-*`) a killed process left registered on this repository."""
        removed = 0
        with self._lock:
            try:
                listing = self.repo.git.worktree("list", "--porcelain")
            except GitCommandError:
                return 0
            tmp = Path(tempfile.gettempdir()).resolve()
            for line in listing.splitlines():
                if not line.startswith("worktree "):
                    continue
                path = Path(line.removeprefix("worktree "))
                if path.parent.name.startswith("mlp-rev-") and path.parent.parent.resolve() == tmp:
                    with contextlib.suppress(GitCommandError):
                        self.repo.git.worktree("remove", "--force", str(path))
                    shutil.rmtree(path.parent, ignore_errors=True)
                    removed += 1
            with contextlib.suppress(GitCommandError):
                self.repo.git.worktree("prune")
        return removed


@dataclass
class RevisionCheck:
    """Everything known about a change from `base_sha` to `head_sha`."""

    base_sha: str
    head_sha: str
    head: LoadResult
    base: LoadResult
    environments: list[EnvironmentReport] = field(default_factory=list)
    unaffected: list[str] = field(default_factory=list)
    changed_files: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return self.head.ok

    @property
    def diagnostics(self) -> list[str]:
        return [str(d) for d in self.head.errors]

    @property
    def render_failed(self) -> list[str]:
        return [e.name for e in self.environments if e.render_error]

    @property
    def affected(self) -> list[str]:
        return [e.name for e in self.environments]

    @property
    def base_specs(self) -> SpecSet | None:
        return self.base.specs if self.base.ok else None

    def markdown(self) -> str:
        return report_markdown(
            self.base_sha,
            self.head_sha,
            self.environments,
            self.unaffected,
            self.diagnostics,
            [str(d) for d in self.base.errors],
        )

    def plans(self) -> dict[str, Plan]:
        return {e.name: e.plan for e in self.environments if e.plan is not None}


def check_revisions(workspace: Workspace, base_ref: str, head_ref: str) -> RevisionCheck:
    """Validate the head, render every environment at base and head, and plan head against base."""
    base_sha, head_sha = workspace.resolve(base_ref), workspace.resolve(head_ref)
    head, head_snapshot = workspace.load(head_sha)
    base, base_snapshot = workspace.load(base_sha)
    check = RevisionCheck(base_sha, head_sha, head, base, changed_files=workspace.changed_files(base_sha, head_sha))
    if not head.ok:
        return check
    base_specs = base.specs if base.ok else None
    names = sorted(set(head.specs.environments) | set(base_specs.environments if base_specs else ()))
    by_specs = affected_by_specs(base_specs, head.specs)
    over_budget: RenderError | None = None
    for name in names:
        report = EnvironmentReport(name, head.specs.environments.get(name), None)
        try:
            if over_budget is not None:
                # The same templates would burn the same budget again for every environment.
                raise over_budget
            before: list[Manifest] = []
            if base_specs is not None and name in base_specs.environments:
                with contextlib.suppress(RenderError):  # a base that did not render: everything is new
                    before = desired(base_snapshot, name, loaded=base_specs)
            report.plan = preview(head_snapshot, name, before, loaded=head.specs)
        except RenderError as exc:
            report.render_error = str(exc)
            if exc.budget and name in head.specs.environments:
                over_budget = exc
        report.changes = version_changes(base_specs, head.specs, name)
        if report.render_error or (report.plan is not None and report.plan.has_changes) or name in by_specs:
            check.environments.append(report)
        else:
            check.unaffected.append(name)
    return check
