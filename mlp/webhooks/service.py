"""Wiring of the webhook receiver: secrets, Git host clients, workspace, trigger and audit.

`build_receiver` is what `mlp webhooks` runs and what the controller can mount in its
own ASGI app (`app.mount("/", receiver.app)`, passing `trigger=controller.trigger`).
Secrets and tokens come from environment variables or files, never the command line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mlp.sources.git import GitAuth
from mlp.webhooks.flow import AuditSink, ControllerAudit, PullRequestFlow, ReconcileTrigger, request_sync_trigger
from mlp.webhooks.github import GitHubClient
from mlp.webhooks.gitlab import GitLabClient
from mlp.webhooks.hosting import GitHost
from mlp.webhooks.prcheck import Workspace
from mlp.webhooks.receiver import DEFAULT_MAX_BODY, ReceiverConfig, WebhookReceiver
from mlp.webhooks.store import DeliveryStore

GITHUB_SECRET_ENV = "MLP_GITHUB_WEBHOOK_SECRET"
GITLAB_TOKEN_ENV = "MLP_GITLAB_WEBHOOK_TOKEN"
GITHUB_API_TOKEN_ENVS = ("MLP_GITHUB_TOKEN", "GITHUB_TOKEN")
GITLAB_API_TOKEN_ENVS = ("MLP_GITLAB_TOKEN", "GITLAB_TOKEN")


class ConfigError(Exception):
    """A secret or token could not be read; one line naming the file or variable."""


def read_secret(env_names: tuple[str, ...], file: Path | None) -> str | None:
    """A secret from a file (preferred, when given) or the first set environment variable."""
    if file is not None:
        try:
            value = file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{file}: cannot read secret file: {exc.strerror}") from exc
        if not value:
            raise ConfigError(f"{file}: secret file is empty")
        return value
    for name in env_names:
        if os.environ.get(name, "").strip():
            return os.environ[name].strip()
    return None


@dataclass
class ServiceConfig:
    repo: str
    state_dir: Path
    github_secret: str | None = None
    gitlab_token: str | None = None
    github_api_url: str | None = None
    github_api_token: str | None = None
    gitlab_api_url: str | None = None
    gitlab_api_token: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY
    workers: int = 2
    details_url: str | None = None
    git_auth: GitAuth | None = None  # credentials for cloning/fetching a private --repo URL


def build_receiver(
    config: ServiceConfig, *, trigger: ReconcileTrigger | None = None, audit: AuditSink | None = None
) -> WebhookReceiver:
    """A receiver whose events drive the PR flow; `trigger`/`audit` default to the controller's state folder."""
    hosts: dict[str, GitHost] = {}
    if config.github_api_token:
        hosts["github"] = GitHubClient(config.github_api_token, config.github_api_url or "https://api.github.com")
    if config.gitlab_api_token:
        hosts["gitlab"] = GitLabClient(config.gitlab_api_token, config.gitlab_api_url or "https://gitlab.com/api/v4")
    state = str(config.state_dir)
    workspace = Workspace(config.repo, config.state_dir / "webhooks", auth=config.git_auth)
    workspace.clean_leftovers()  # work folders a killed earlier version left behind
    flow = PullRequestFlow(
        workspace,
        hosts,
        trigger=trigger or request_sync_trigger(state),
        audit=audit or ControllerAudit(state),
        details_url=config.details_url,
    )
    return WebhookReceiver(
        ReceiverConfig(
            github_secret=config.github_secret.encode() if config.github_secret else None,
            gitlab_token=config.gitlab_token,
            max_body_bytes=config.max_body_bytes,
        ),
        flow.handle,
        DeliveryStore(config.state_dir / "webhooks" / "deliveries.db"),
        workers=config.workers,
    )
