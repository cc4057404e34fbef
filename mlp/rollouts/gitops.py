"""Git stays the truth: after a rollback, propose the change that removes the canary; after a
promotion, the change that makes the canary the stable version.

`revert_canary` works in a temporary `git worktree` at the revision that declared the
canary (the working tree `mlp up` reads is never touched), deletes
`spec.deployments.<model>.canary` from the environment's file with a ruamel round trip
(comments, quoting, flow style and key order kept, so the diff is only the canary), commits
on `mlp/rollback/<env>/<model>-v<canary>`, pushes it, and opens a pull/merge request
through a `GitHost` when one is configured. A promotion does the same on
`mlp/promote/<env>/<model>-v<canary>`, also setting the deployment's `version` to the canary's.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlp.rollouts.machine import PROMOTED, Rollout
from mlp.webhooks.hosting import GitHost


class WriteBackError(Exception):
    pass


@dataclass
class Revert:
    branch: str
    commit: str
    file: str
    pushed: bool
    url: str | None = None
    number: int | None = None


@dataclass
class WriteBackConfig:
    remote: str = "origin"
    base: str = "main"
    host: GitHost | None = None
    repo: str | None = None  # owner/name on the host
    git_env: dict[str, str] = field(default_factory=dict)  # credentials for the push (the controller's source)


@dataclass
class HostConfig:
    """Where revert changes go: the repository on GitHub/GitLab, and the token to open them with."""

    repo: str | None = None  # owner/name (GitHub) or group/project (GitLab)
    token: str | None = None
    github_url: str | None = None
    gitlab_url: str | None = None
    remote: str = "origin"
    base: str = "main"


def make_writeback(
    repo_dir: Path, host: HostConfig | None = None, git_env: dict[str, str] | None = None
) -> Callable[[Rollout], dict[str, Any]]:
    """The driver's write-back hook: a revert (rollback) or promotion branch, and PR/MR, in `repo_dir`."""
    host = host or HostConfig()

    def writeback(r: Rollout) -> dict[str, Any]:
        git_host: GitHost | None = None
        if host.repo and host.token:
            if host.gitlab_url:
                from mlp.webhooks.gitlab import GitLabClient

                git_host = GitLabClient(host.token, host.gitlab_url)
            else:
                from mlp.webhooks.github import GitHubClient

                git_host = GitHubClient(host.token, host.github_url or "https://api.github.com")
        config = WriteBackConfig(
            remote=host.remote, base=host.base, host=git_host, repo=host.repo, git_env=dict(git_env or {})
        )
        result = revert_canary(repo_dir, r, config)
        return {"revert_branch": result.branch, "revert_url": result.url, "revert_commit": result.commit}

    return writeback


def branch_name(r: Rollout) -> str:
    kind = "promote" if r.phase == PROMOTED else "rollback"
    return f"mlp/{kind}/{r.env}/{r.model}-v{r.canary}"


def find_environment_file(root: Path, env: str) -> tuple[Path, int]:
    """The file under environments/ declaring Environment `env`, and the document's index in it."""
    from ruamel.yaml import YAML

    yaml = YAML(typ="safe")
    for path in sorted((root / "environments").rglob("*.y*ml")):
        try:
            docs = list(yaml.load_all(path.read_text()))
        except Exception:
            continue
        for i, doc in enumerate(docs):
            if (
                isinstance(doc, dict)
                and doc.get("kind") == "Environment"
                and (doc.get("metadata") or {}).get("name") == env
            ):
                return path, i
    raise WriteBackError(f"environments/: no file declares Environment {env!r}")


def remove_canary(text: str, index: int, model: str, *, promote: bool = False) -> str:
    """`text` without `spec.deployments.<model>.canary` in document `index`; everything else as it was.
    `promote`: the canary's version becomes the deployment's (stable) version."""
    from ruamel.yaml import YAML

    yaml = YAML()  # round trip
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    docs: list[Any] = list(yaml.load_all(text))
    try:
        dep = docs[index]["spec"]["deployments"][model]
    except (KeyError, TypeError, IndexError):
        raise WriteBackError(f"the environment does not deploy {model!r}") from None
    if "canary" not in dep:
        raise WriteBackError(f"deployment {model!r} declares no canary")
    if promote:
        dep["version"] = dep["canary"]["version"]
    del dep["canary"]
    out = io.StringIO()
    yaml.dump_all(docs, out)
    result = out.getvalue()
    if text.startswith("---") and not result.startswith("---"):
        result = "---\n" + result
    return result


def revert_canary(root: Path, r: Rollout, config: WriteBackConfig) -> Revert:
    import git

    try:
        repo = git.Repo(root, search_parent_directories=False)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise WriteBackError(f"{root}: not a Git repository; no revert branch opened") from None
    base_commit = r.revision if r.revision and _has_commit(repo, r.revision) else repo.head.commit.hexsha
    branch = branch_name(r)
    with tempfile.TemporaryDirectory(prefix="mlp-revert-") as tmp:
        wt = Path(tmp) / "wt"
        # a worktree also works from the controller's bare mirror, which has no files of its own
        repo.git.worktree("add", "--detach", str(wt), base_commit)
        try:
            path, index = find_environment_file(wt, r.env)
            rel = path.relative_to(wt).as_posix()
            work = git.Repo(wt)
            target = wt / rel
            before = target.read_text()
            promote = r.phase == PROMOTED
            target.write_text(remove_canary(before, index, r.model, promote=promote))
            work.index.add([rel])
            if promote:
                message = (
                    f"Promote {r.model} v{r.canary} to stable in {r.env}\n\nmlp promoted the canary: {r.message}\n"
                )
            else:
                message = (
                    f"Roll back the {r.model} canary v{r.canary} in {r.env}\n\n"
                    f"mlp rolled the canary back: {r.message}\n"
                )
            actor = git.Actor("mlp", "mlp@localhost")
            commit = work.index.commit(message, author=actor, committer=actor)
            repo.git.branch("-f", branch, commit.hexsha)
        finally:
            repo.git.worktree("remove", "--force", str(wt))
    pushed = False
    if config.remote in [rm.name for rm in repo.remotes]:
        with repo.git.custom_environment(**config.git_env):
            repo.git.push(config.remote, f"+refs/heads/{branch}:refs/heads/{branch}")
        pushed = True
    result = Revert(branch=branch, commit=commit.hexsha, file=rel, pushed=pushed)
    if config.host is not None and config.repo and pushed:
        if r.phase == PROMOTED:
            title = f"Promote {r.model} v{r.canary} to stable in {r.env}"
            body = (
                f"mlp promoted the canary of `{r.model}` (v{r.canary}, was stable v{r.stable}) in environment "
                f"`{r.env}`: {r.message}.\n\nMerging makes v{r.canary} the stable version in `{rel}` and removes "
                "the canary, so Git declares what runs."
            )
        else:
            title = f"Roll back {r.model} canary v{r.canary} in {r.env}"
            body = (
                f"mlp rolled back the canary of `{r.model}` (v{r.canary}, stable v{r.stable}) in environment "
                f"`{r.env}`.\n\n**Why:** {r.message}\n\nMerging removes the canary from `{rel}` so Git "
                "declares what runs. mlp will not retry this canary declaration."
            )
        cr = config.host.open_change_request(config.repo, head=branch, base=config.base, title=title, body=body)
        result.url, result.number = cr.url, cr.number
    return result


def _has_commit(repo: Any, sha: str) -> bool:
    try:
        repo.commit(sha)
        return True
    except Exception:
        return False
