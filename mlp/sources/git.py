"""Git source: fetch a platform repository's branches and tags and read snapshots from commits.

The remote (HTTPS, SSH or a local path) is mirrored into a bare repository in a cache
folder. `refresh()` asks the remote for the commit each tracked ref points at
(`git ls-remote`, one round trip) and fetches, shallowly, only refs whose commit
changed, so an idle controller costs one small request per interval. `snapshot()`
reads blobs straight from the commit's tree: no checkout, no work tree, and the same
size limit as the directory source (an oversized file is listed, never read).

Credentials never touch the disk or the command line: an HTTPS token (from an
environment variable or a file) goes in through `GIT_CONFIG_*` variables as an
`http.extraHeader`; an SSH key is passed with `GIT_SSH_COMMAND`.

When the remote is down, the last fetched commits stay available and `last_error`
says why the refresh failed; callers keep reconciling the revision they have.
"""

from __future__ import annotations

import base64
import os
import posixpath
import re
import shlex
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import git
from git.exc import BadName, GitCommandError

from mlp.sources.base import (
    MAX_REPOSITORY_BYTES,
    MAX_SPEC_BYTES,
    OVER_BUDGET,
    SPEC_DIRS,
    TEMPLATE_DIR,
    YAML_SUFFIXES,
    Snapshot,
)

_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_SYMLINK_MODE = 0o120000
# Local refs the cache keeps per tracked remote ref; never collide with anything git makes itself.
_LOCAL_PREFIX = "refs/mlp/"


class GitSourceError(Exception):
    """The remote could not be reached or a ref/commit does not exist; one clear line."""


@dataclass(frozen=True)
class GitAuth:
    """How to authenticate to the remote. All fields optional; nothing here is ever written to disk."""

    token_env: str | None = None  # name of an environment variable holding an HTTPS token
    token_file: Path | None = None  # file holding an HTTPS token
    username: str = "x-access-token"  # GitHub accepts any user with a token; GitLab wants oauth2
    ssh_key_file: Path | None = None
    ssh_known_hosts: Path | None = None  # without it, new host keys are accepted on first use

    def token(self) -> str | None:
        if self.token_env and os.environ.get(self.token_env):
            return os.environ[self.token_env].strip()
        if self.token_file is not None:
            try:
                return self.token_file.read_text().strip() or None
            except OSError as exc:
                raise GitSourceError(f"cannot read token file {self.token_file}: {exc.strerror}") from exc
        return None

    def environment(self) -> dict[str, str]:
        """Variables for each git subprocess: never prompt, and carry the credentials."""
        env = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "", "SSH_ASKPASS": ""}
        token = self.token()
        if token:
            basic = base64.b64encode(f"{self.username}:{token}".encode()).decode()
            env.update(
                GIT_CONFIG_COUNT="1",
                GIT_CONFIG_KEY_0="http.extraHeader",
                GIT_CONFIG_VALUE_0=f"Authorization: Basic {basic}",
            )
        if self.ssh_key_file is not None:
            opts = ["ssh", "-i", str(self.ssh_key_file), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"]
            if self.ssh_known_hosts is not None:
                opts += ["-o", f"UserKnownHostsFile={self.ssh_known_hosts}"]
                opts += ["-o", "StrictHostKeyChecking=yes"]
            else:
                opts += ["-o", "StrictHostKeyChecking=accept-new"]
            env["GIT_SSH_COMMAND"] = shlex.join(opts)
        return env


@dataclass
class RefreshResult:
    """Outcome of one `refresh()`: commits per ref, which refs moved, and the error if the remote failed."""

    revisions: dict[str, str] = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)
    error: str | None = None
    duration: float = 0.0


def is_url(repo: str) -> bool:
    """A URL (`scheme://...`) or scp-like remote (`git@host:path`), not a local path."""
    return "://" in repo or re.match(r"^[\w.-]+@[\w.-]+:", repo) is not None


def remote_url(repo: str) -> str:
    """A local path becomes a file:// URL (so shallow fetches work); URLs pass through."""
    if is_url(repo):
        return repo
    return Path(repo).resolve().as_uri()


def _redact(text: str) -> str:
    # A URL may carry user:password; never echo it back in an error or a log.
    return re.sub(r"://[^/@\s]+@", "://***@", text)


class GitSource:
    """A cached mirror of one remote repository; thread-safe."""

    def __init__(
        self,
        repo: str,
        cache_dir: str | Path,
        *,
        auth: GitAuth | None = None,
        depth: int | None = 1,
        timeout: float = 60.0,
        max_bytes: int = MAX_SPEC_BYTES,
    ) -> None:
        self.url = remote_url(repo)
        self.auth = auth or GitAuth()
        self.depth = depth
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.cache_dir = Path(cache_dir)
        self._lock = threading.RLock()
        self._revisions: dict[str, str] = {}  # ref -> last fetched commit
        self.last_error: str | None = None
        self.last_refresh: float = 0.0  # monotonic time the last refresh finished
        self._shallow_ok = True
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        if (self.cache_dir / "HEAD").exists():
            self._repo = git.Repo(self.cache_dir)
        else:
            self._repo = git.Repo.init(self.cache_dir, bare=True)
        # The remote URL lives in the cache's config without credentials (those come from env vars).
        with self._repo.config_writer() as cw:
            cw.set_value('remote "origin"', "url", self.url)
        for ref in self._repo.refs:
            if ref.path.startswith(_LOCAL_PREFIX):
                self._revisions[ref.path[len(_LOCAL_PREFIX) :]] = ref.commit.hexsha

    # --- remote --------------------------------------------------------------------------

    def _git(self, *args: str) -> str:
        env = self.auth.environment()
        out = self._repo.git.execute(
            ["git", *args], env=env, kill_after_timeout=self.timeout, with_extended_output=False
        )
        return str(out)

    def ls_remote(self) -> dict[str, str]:
        """Every branch and tag on the remote -> commit (peeled for annotated tags)."""
        out = self._git("ls-remote", "--heads", "--tags", "origin")
        refs: dict[str, str] = {}
        for line in out.splitlines():
            sha, _, name = line.partition("\t")
            if name.endswith("^{}"):
                refs[name[:-3]] = sha  # peeled annotated tag wins over the tag object
            else:
                refs.setdefault(name, sha)
        return refs

    @staticmethod
    def _candidates(ref: str) -> list[str]:
        if ref.startswith("refs/"):
            return [ref]
        return [f"refs/heads/{ref}", f"refs/tags/{ref}"]

    def refresh(self, refs: Iterable[str]) -> RefreshResult:
        """Resolve `refs` (branch or tag names) on the remote and fetch the ones that moved.

        Never raises for a remote failure: the previous commits stay and `error` explains.
        """
        wanted = sorted(set(refs))
        start = time.monotonic()
        result = RefreshResult()
        with self._lock:
            try:
                remote = self.ls_remote()
                fetch: dict[str, str] = {}
                missing: list[str] = []
                for ref in wanted:
                    full = next((c for c in self._candidates(ref) if c in remote), None)
                    if full is None:
                        missing.append(ref)
                        continue
                    sha = remote[full]
                    if self._revisions.get(ref) != sha or not self._has_commit(sha):
                        fetch[ref] = full
                if fetch:
                    specs = [f"+{full}:{_LOCAL_PREFIX}{ref}" for ref, full in fetch.items()]
                    base = ["fetch", "--no-tags", "--force", "--quiet"]
                    if self.depth and self._shallow_ok:
                        try:
                            self._git(*base, f"--depth={self.depth}", "origin", *specs)
                        except GitCommandError as exc:
                            # The dumb HTTP transport cannot fetch shallow: fall back to a full fetch.
                            if "shallow" not in (exc.stderr or ""):
                                raise
                            self._shallow_ok = False
                            self._git(*base, "origin", *specs)
                    else:
                        self._git(*base, "origin", *specs)
                    for ref in fetch:
                        sha = self._repo.commit(f"{_LOCAL_PREFIX}{ref}").hexsha
                        if self._revisions.get(ref) != sha:
                            result.changed.append(ref)
                        self._revisions[ref] = sha
                if missing:
                    result.error = f"{self.safe_url}: no branch or tag named {', '.join(missing)}"
            except GitCommandError as exc:
                stderr = (exc.stderr or "").strip().splitlines()
                detail = next((line for line in stderr if line.strip()), str(exc.status))
                verb = exc.command[1] if isinstance(exc.command, list) and len(exc.command) > 1 else ""
                detail = detail.strip().removeprefix("stderr: ").strip().strip("'").strip()
                result.error = _redact(f"{self.safe_url}: git {verb} failed: {detail}")
            except GitSourceError as exc:
                result.error = str(exc)
            result.revisions = {r: self._revisions[r] for r in wanted if r in self._revisions}
            self.last_error = result.error
            self.last_refresh = time.monotonic()
        result.duration = self.last_refresh - start
        return result

    @property
    def safe_url(self) -> str:
        return _redact(self.url)

    def _has_commit(self, sha: str) -> bool:
        try:
            self._repo.git.cat_file("-e", f"{sha}^{{commit}}")
            return True
        except GitCommandError:
            return False

    # --- local reads -----------------------------------------------------------------------

    def revision(self, ref: str) -> str | None:
        """Last fetched commit of `ref`, or None if it was never fetched."""
        with self._lock:
            return self._revisions.get(ref)

    def snapshot(self, rev: str) -> Snapshot:
        """The platform files at a fetched ref name or commit SHA, read from the object store."""
        with self._lock:
            name = rev if _SHA_RE.match(rev) else f"{_LOCAL_PREFIX}{rev}"
            try:
                if not self._has_commit(name):
                    raise ValueError(name)
                commit = self._repo.commit(name)
            except (BadName, ValueError) as exc:
                raise GitSourceError(f"{self.safe_url}: unknown revision {rev!r} (not fetched)") from exc
            files, oversized, refused = read_tree(commit, max_bytes=self.max_bytes)
            author = f"{commit.author.name} <{commit.author.email}>"
            return Snapshot(
                revision=commit.hexsha,
                files=files,
                oversized=oversized,
                refused=refused,
                author=author,
                message=str(commit.message).strip(),
            )

    def close(self) -> None:
        with self._lock:
            self._repo.close()


def read_tree(
    commit: git.Commit, subdir: str = "", *, max_bytes: int = MAX_SPEC_BYTES
) -> tuple[dict[str, bytes], dict[str, int], dict[str, str]]:
    """(files, oversized, refused) of the platform folders in a commit, read from the object store.

    Only `specs/`, `environments/` and `templates/` (under `subdir` for a platform folder inside
    a larger repository) are read, never the rest of the tree; files over `max_bytes` are
    listed unread. A symbolic link is followed when it leads to a file inside the platform
    folder, as the directory source does; otherwise it is refused with the reason.
    """
    root = commit.tree
    if subdir:
        try:
            root = commit.tree / subdir
        except KeyError:
            return {}, {}, {}
    files: dict[str, bytes] = {}
    oversized: dict[str, int] = {}
    refused: dict[str, str] = {}
    budget = MAX_REPOSITORY_BYTES
    for top in (*SPEC_DIRS, TEMPLATE_DIR):
        try:
            tree = root / top
        except KeyError:
            continue
        if tree.type != "tree":
            continue
        cut = len(str(root.path)) + 1 if subdir else 0
        for item in tree.traverse():
            if not isinstance(item, git.Blob):
                continue
            path = str(item.path)[cut:]
            if any(part.startswith(".") for part in path.split("/")[1:-1]):
                continue  # hidden folders are skipped, as the directory source does
            if top == TEMPLATE_DIR and not path.endswith(".j2"):
                continue
            if top != TEMPLATE_DIR and not path.endswith(YAML_SUFFIXES):
                continue
            if item.mode == _SYMLINK_MODE:
                target, reason = _follow(root, item, cut)
                if target is None:
                    refused[path] = reason
                    continue
                item = target
            if item.size > max_bytes:
                oversized[path] = item.size
                continue
            if item.size > budget:
                refused[path] = OVER_BUDGET
                continue
            budget -= item.size
            files[path] = item.data_stream.read()
    return files, oversized, refused


def _follow(root: git.Tree, link: git.Blob, cut: int = 0, hops: int = 8) -> tuple[git.Blob | None, str]:
    """The blob a symbolic link leads to inside `root`, or None and why not."""
    item: git.Blob = link
    for _ in range(hops):
        target = item.data_stream.read().decode("utf-8", "replace")
        joined = posixpath.normpath(posixpath.join(posixpath.dirname(str(item.path)[cut:]), target))
        if target.startswith("/") or joined == ".." or joined.startswith("../"):
            return None, "symbolic link leads outside the repository: not read"
        try:
            found = root / joined
        except KeyError:
            return None, "dangling symbolic link: its target does not exist"
        if not isinstance(found, git.Blob):
            return None, "a folder, not a regular file: not read"
        if found.mode != _SYMLINK_MODE:
            return found, ""
        item = found
    return None, "symbolic link loops: not read"
