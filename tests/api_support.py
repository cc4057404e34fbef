"""Helpers for the API tests: a platform Git repository, a Kratos (stand-in or real), a running API.

With `MLP_TEST_KRATOS_URL` set (a real Kratos' public URL, and `MLP_TEST_KRATOS_ADMIN_URL`
its admin URL), sessions are made on that Kratos: an identity with a password through
the admin API, then a session token through the native login flow; "expired" there means
revoked through the admin API (a real Kratos cannot back-date a session).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from tests.standins.github_api import serve
from tests.standins.kratos import KratosStandIn

REPO_ROOT = Path(__file__).resolve().parents[1]


def make_platform_repo(dest: Path) -> Path:
    """A Git repository holding a copy of the example platform repository, one commit on `main`."""
    dest.mkdir(parents=True, exist_ok=True)
    for part in ("specs", "environments", "templates"):
        if (REPO_ROOT / part).exists():
            shutil.copytree(REPO_ROOT / part, dest / part)
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "initial platform")
    return dest


def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout


class Kratos:
    """Sessions on the stand-in, or on a real Kratos when MLP_TEST_KRATOS_URL is set."""

    def __init__(self) -> None:
        self.real_url = os.environ.get("MLP_TEST_KRATOS_URL")
        self.admin_url = os.environ.get("MLP_TEST_KRATOS_ADMIN_URL")
        self.standin: KratosStandIn | None = None
        self._stack = contextlib.ExitStack()
        self.url = ""

    def __enter__(self) -> Kratos:
        if self.real_url:
            self.url = self.real_url.rstrip("/")
        else:
            self.standin = KratosStandIn()
            self.url = self._stack.enter_context(serve(self.standin.app))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def session(self, email: str, *, username: str | None = None) -> tuple[str, str]:
        """(session token, identity id) of a new identity with `email`."""
        if self.standin is not None:
            token, identity = self.standin.add_session(email, username=username)
            return token, identity["id"]
        assert self.admin_url, "MLP_TEST_KRATOS_ADMIN_URL is needed to create identities on a real Kratos"
        password = secrets.token_urlsafe(16) + "Aa1!"
        traits: dict[str, Any] = {"email": email}
        created = httpx.post(
            f"{self.admin_url}/admin/identities",
            json={
                "schema_id": "default",
                "traits": traits,
                "credentials": {"password": {"config": {"password": password}}},
            },
        )
        created.raise_for_status()
        flow = httpx.get(f"{self.url}/self-service/login/api").json()
        login = httpx.post(
            f"{self.url}/self-service/login?flow={flow['id']}",
            json={"method": "password", "identifier": email, "password": password},
        )
        login.raise_for_status()
        return login.json()["session_token"], created.json()["id"]

    def expired_session(self, email: str) -> str:
        if self.standin is not None:
            token, _ = self.standin.add_session(email, expires_in=timedelta(seconds=-1))
            return token
        token, identity = self.session(email)
        for s in httpx.get(f"{self.admin_url}/admin/identities/{identity}/sessions").json():
            httpx.delete(f"{self.admin_url}/admin/sessions/{s['id']}")
        return token


TEAMS = """\
apiVersion: mlp.dev/v1
kind: Team
metadata: {name: ml-leads, description: Reviewers who approve production model changes.}
spec:
  members:
    - {user: alice, role: owner, email: alice@example.com}
    - {user: bob, role: maintainer, email: bob@example.com}
    - {user: carol, role: maintainer}
---
apiVersion: mlp.dev/v1
kind: Team
metadata: {name: data-science, description: Builds and trains the models.}
spec:
  members:
    - {user: dave, role: owner, email: dave@example.com}
    - {user: erin, role: member, email: erin@example.com}
    - {user: vic, role: viewer, email: vic@example.com}
---
apiVersion: mlp.dev/v1
kind: Team
metadata: {name: platform, description: Runs mlp.}
spec:
  platform: true
  members:
    - {user: root, role: admin, email: root@example.com}
"""


class ApiWorld:
    """A platform repository (teams with emails), a state folder, Kratos, a GitHub stand-in and the API, running."""

    def __init__(self, tmp: Path, **settings: Any) -> None:
        from mlp.api.app import ApiSettings, create_app
        from mlp.api.identity import TokenStore
        from mlp.api.proposals import Proposals
        from mlp.api.server import ApiThread
        from mlp.webhooks.github import GitHubClient
        from tests.standins.github_api import GitHubStandIn

        self.repo = make_platform_repo(tmp / "repo")
        (self.repo / "specs" / "teams" / "teams.yaml").write_text(TEAMS)
        git(self.repo, "commit", "-q", "-am", "teams with emails")
        self.state = tmp / "state"
        self._stack = contextlib.ExitStack()
        self.kratos = self._stack.enter_context(Kratos())
        self.github = GitHubStandIn({"gh-token": "mlp-bot"})
        self.github.add_repo("acme/platform", self.repo)
        github_url = self._stack.enter_context(serve(self.github.app))
        self.settings = ApiSettings(
            repo=str(self.repo), state_dir=self.state, kratos_url=self.kratos.url, refresh=0.0, **settings
        )
        self.app = create_app(self.settings)
        self.settings.proposals = Proposals(
            self.app.state.api.view, GitHubClient("gh-token", github_url), "acme/platform"
        )
        self.tokens = TokenStore(self.state)
        self.server = self._stack.enter_context(ApiThread(self.app))
        self.url = self.server.url
        self._tokens: dict[tuple[str, str], str] = {}

    def token(self, team: str, role: str) -> str:
        key = (team, role)
        if key not in self._tokens:
            self._tokens[key] = self.tokens.create(team, role, expires_in=3600)[0]
        return self._tokens[key]

    def client(self, token: str | None = None, **headers: str) -> httpx.Client:
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.Client(base_url=self.url, headers=headers, timeout=180)

    def close(self) -> None:
        self._stack.close()
        self.tokens.close()
