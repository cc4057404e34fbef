"""Writes that go through Git: edit a spec on a new branch and open a pull request.

The API never changes what an environment runs by itself; a change to the declared
world is a commit on a branch `mlp-api/...` of the platform repository and a pull
request (GitHub) or merge request (GitLab) opened through `mlp.webhooks.hosting`,
which then meets the same checks and approvals as any other.

The spec file is edited with ruamel's round-trip mode (the rest of the file, comments,
order and other documents, is kept) and committed in Git's object store on top of the
revision the API serves: no work folder, nothing to clean up.
"""

from __future__ import annotations

import io
import secrets
import tempfile
import threading
from pathlib import Path
from typing import Any

from git.exc import GitCommandError
from ruamel.yaml import YAML

from mlp.api.readers import RepoView
from mlp.webhooks.hosting import ChangeRequest, GitHost


class ProposalError(Exception):
    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


class Proposals:
    def __init__(self, view: RepoView, host: GitHost, host_repo: str) -> None:
        if view.workspace is None:
            raise ValueError("pull requests need the repository to be a Git repository")
        self.view = view
        self.workspace = view.workspace
        self.host = host
        self.host_repo = host_repo
        self._lock = threading.Lock()

    def add_model_version(self, model: str, version: dict[str, Any], author: str) -> ChangeRequest:
        catalog = self.view.catalog()
        source = catalog.specs.sources.get(("Model", model))
        if source is None:
            raise ProposalError(f"model {model!r} is not declared", 404)
        existing = catalog.specs.models[model].spec.version(int(version["version"]))
        if existing is not None:
            raise ProposalError(f"model {model!r} already has version {version['version']}")
        branch = f"mlp-api/{model}-v{version['version']}-{secrets.token_hex(3)}"
        title = f"Register {model} version {version['version']}"
        rel = f"{self.workspace.subdir}/{source.path}" if self.workspace.subdir else source.path
        message = f"{title}\n\nRequested through the mlp API by {author}."
        with self._lock:
            try:
                commit = self._commit(catalog.revision, rel, source.doc, model, version, message)
                repo = self.workspace.repo
                if self.workspace.remote:
                    repo.git.execute(
                        ["git", "push", "-q", "origin", f"{commit}:refs/heads/{branch}"],
                        env=self.workspace.auth.environment(),
                    )
                else:
                    repo.git.update_ref(f"refs/heads/{branch}", commit)
            except GitCommandError as exc:
                raise ProposalError(f"cannot commit the change: {(exc.stderr or '').strip()[:200]}", 502) from None
        body = f"Opened through the mlp API by `{author}`: adds version {version['version']} to model `{model}`."
        return self.host.open_change_request(self.host_repo, branch, self.view.ref, title, body)

    def _commit(self, base: str, path: str, doc_index: int, model: str, version: dict[str, Any], message: str) -> str:
        """A commit on top of `base` with the edited file, made in Git's object store (no work folder)."""
        repo = self.workspace.repo
        text = repo.git.show(f"{base}:{path}")
        edited = self._append_version(text, doc_index, model, version)
        with tempfile.TemporaryDirectory(prefix="mlp-api-") as tmp:
            blob_file = Path(tmp) / "blob"
            blob_file.write_text(edited, encoding="utf-8")
            blob = repo.git.hash_object("-w", str(blob_file))
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            repo.git.execute(["git", "read-tree", base], env=env)
            repo.git.execute(["git", "update-index", "--cacheinfo", f"100644,{blob},{path}"], env=env)
            tree = repo.git.execute(["git", "write-tree"], env=env)
        identity = {
            "GIT_AUTHOR_NAME": "mlp-api",
            "GIT_AUTHOR_EMAIL": "mlp-api@localhost",
            "GIT_COMMITTER_NAME": "mlp-api",
            "GIT_COMMITTER_EMAIL": "mlp-api@localhost",
        }
        return str(repo.git.execute(["git", "commit-tree", str(tree), "-p", base, "-m", message], env=identity))

    @staticmethod
    def _append_version(text: str, doc_index: int, model: str, version: dict[str, Any]) -> str:
        yaml = YAML()
        yaml.preserve_quotes = True
        docs = list(yaml.load_all(text))
        doc = docs[doc_index] if doc_index < len(docs) else None
        if not isinstance(doc, dict) or doc.get("metadata", {}).get("name") != model:
            raise ProposalError(f"cannot find model {model!r} in its file", 409)
        doc["spec"].setdefault("versions", []).append(version)
        out = io.StringIO()
        yaml.dump_all(docs, out)
        return out.getvalue()
