"""Writes that go through Git: edit a spec on a new branch and open a pull request.

The API never changes what an environment runs by itself; a change to the declared
world is a commit on a branch `mlp-api/...` of the platform repository and a pull
request (GitHub) or merge request (GitLab) opened through `mlp.webhooks.hosting`,
which then meets the same checks and approvals as any other.

The spec file is edited in a temporary work folder of the base commit with ruamel's
round-trip mode, so the rest of the file (comments, order, other documents) is kept.
"""

from __future__ import annotations

import io
import secrets
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
        with self._lock, self.workspace.checkout(catalog.revision) as folder:
            root = folder / self.workspace.subdir if self.workspace.subdir else folder
            path = root / source.path
            self._append_version(path, source.doc, model, version)
            repo = self.workspace.repo
            try:
                work = type(repo)(folder)
                work.git.add(str(path))
                work.git.execute(
                    ["git", "-c", "user.name=mlp-api", "-c", "user.email=mlp-api@localhost", "commit", "-q", "-m",
                     f"{title}\n\nRequested through the mlp API by {author}."]
                )  # fmt: skip
                if self.workspace.remote:
                    work.git.execute(
                        ["git", "push", "-q", "origin", f"HEAD:refs/heads/{branch}"],
                        env=self.workspace.auth.environment(),
                    )
                else:
                    work.git.branch(branch, "HEAD")
            except GitCommandError as exc:
                raise ProposalError(f"cannot commit the change: {(exc.stderr or '').strip()[:200]}", 502) from None
        body = f"Opened through the mlp API by `{author}`: adds version {version['version']} to model `{model}`."
        return self.host.open_change_request(self.host_repo, branch, self.view.ref, title, body)

    @staticmethod
    def _append_version(path: Path, doc_index: int, model: str, version: dict[str, Any]) -> None:
        yaml = YAML()
        yaml.preserve_quotes = True
        docs = list(yaml.load_all(path.read_text(encoding="utf-8")))
        doc = docs[doc_index] if doc_index < len(docs) else None
        if not isinstance(doc, dict) or doc.get("metadata", {}).get("name") != model:
            raise ProposalError(f"{path.name}: cannot find model {model!r} in its file", 409)
        doc["spec"].setdefault("versions", []).append(version)
        out = io.StringIO()
        yaml.dump_all(docs, out)
        path.write_text(out.getvalue(), encoding="utf-8")
