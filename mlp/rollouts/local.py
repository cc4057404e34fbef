"""Wiring for the local runtime (`mlp up`): a driver over the runtime's own metrics and the repository.

Kept apart from `mlp.cli.up` so the CLI only adds one hook; when the engine's resolve
stage lands, the same driver feeds it the rollout position instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlp.rollouts.driver import RolloutDriver, RolloutMetrics
from mlp.rollouts.gitops import WriteBackConfig, revert_canary
from mlp.rollouts.machine import Rollout
from mlp.rollouts.providers import LocalProvider, PrometheusProvider, Provider
from mlp.rollouts.store import RolloutStore
from mlp.serving.runtime import Runtime
from mlp.specs.models import Analysis
from mlp.webhooks.hosting import GitHost


@dataclass
class HostConfig:
    repo: str | None = None  # owner/name (GitHub) or group/project (GitLab)
    token: str | None = None
    github_url: str | None = None
    gitlab_url: str | None = None
    remote: str = "origin"
    base: str = "main"


def local_driver(
    runtime: Runtime,
    state_dir: Path,
    repo_dir: Path,
    *,
    host: HostConfig | None = None,
    echo: Callable[[str], None] | None = None,
) -> RolloutDriver:
    local = LocalProvider(runtime)
    prometheus: dict[str, PrometheusProvider] = {}

    def provider(analysis: Analysis) -> Provider:
        if analysis.provider == "prometheus" and analysis.prometheus is not None:
            url = analysis.prometheus.url
            if url not in prometheus:
                prometheus[url] = PrometheusProvider(url)
            return prometheus[url]
        return local

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
        result = revert_canary(
            repo_dir, r, WriteBackConfig(remote=host.remote, base=host.base, host=git_host, repo=host.repo)
        )
        return {"revert_branch": result.branch, "revert_url": result.url, "revert_commit": result.commit}

    return RolloutDriver(
        RolloutStore(state_dir),
        provider,
        writeback=writeback,
        metrics=RolloutMetrics(runtime.metrics.registry),
        echo=echo,
    )
