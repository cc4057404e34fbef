"""Git stays the truth: after a rollback, propose the change that removes the canary.

`revert_canary` works in a temporary `git worktree` at the revision that declared the
canary (the working tree `mlp up` reads is never touched), deletes
`spec.deployments.<model>.canary` from the environment's file with a ruamel round trip
(comments, quoting, flow style and key order kept, so the diff is only the canary), commits
on `mlp/rollback/<env>/<model>-v<canary>`, pushes it, and opens a pull/merge request
through a `GitHost` when one is configured.
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlp.rollouts.machine import Rollout
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


def branch_name(r: Rollout) -> str:
    return f"mlp/rollback/{r.env}/{r.model}-v{r.canary}"


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


def remove_canary(text: str, index: int, model: str) -> str:
    """`text` without `spec.deployments.<model>.canary` in document `index`; everything else as it was."""
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
    path, index = find_environment_file(root, r.env)
    rel = path.relative_to(root).as_posix()
    base_commit = r.revision if r.revision and _has_commit(repo, r.revision) else repo.head.commit.hexsha
    branch = branch_name(r)
    with tempfile.TemporaryDirectory(prefix="mlp-revert-") as tmp:
        wt = Path(tmp) / "wt"
        repo.git.worktree("add", "--detach", str(wt), base_commit)
        try:
            work = git.Repo(wt)
            target = wt / rel
            before = target.read_text()
            target.write_text(remove_canary(before, index, r.model))
            work.index.add([rel])
            message = (
                f"Roll back the {r.model} canary v{r.canary} in {r.env}\n\nmlp rolled the canary back: {r.message}\n"
            )
            actor = git.Actor("mlp", "mlp@localhost")
            commit = work.index.commit(message, author=actor, committer=actor)
            repo.git.branch("-f", branch, commit.hexsha)
        finally:
            repo.git.worktree("remove", "--force", str(wt))
    pushed = False
    if config.remote in [rm.name for rm in repo.remotes]:
        repo.git.push(config.remote, f"+refs/heads/{branch}:refs/heads/{branch}")
        pushed = True
    result = Revert(branch=branch, commit=commit.hexsha, file=rel, pushed=pushed)
    if config.host is not None and config.repo and pushed:
        cr = config.host.open_change_request(
            config.repo,
            head=branch,
            base=config.base,
            title=f"Roll back {r.model} canary v{r.canary} in {r.env}",
            body=(
                f"mlp rolled back the canary of `{r.model}` (v{r.canary}, stable v{r.stable}) in environment "
                f"`{r.env}`.\n\n**Why:** {r.message}\n\nMerging removes the canary from `{rel}` so Git "
                "declares what runs. mlp will not retry this canary declaration."
            ),
        )
        result.url, result.number = cr.url, cr.number
    return result


def _has_commit(repo: Any, sha: str) -> bool:
    try:
        repo.commit(sha)
        return True
    except Exception:
        return False
