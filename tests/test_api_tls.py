"""TLS on every listener, and secrets never in the logs of a full run.

Runs `mlp server`, `mlp webhooks` and `mlp controller` as real processes with a
self-signed certificate, talks HTTPS to each (plain HTTP is refused), sends requests
carrying every secret the test set (API token, Kratos session, Git host token, webhook
secret), some of them wrong on purpose, then greps everything the processes wrote.
"""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlp.api.identity import TokenStore
from tests.api_support import Kratos, make_platform_repo


def _certificate(folder: Path) -> tuple[Path, Path]:
    from datetime import UTC, datetime, timedelta
    from ipaddress import IPv4Address

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "tls.crt", folder / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class Process:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.handle = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlp.cli.main", *args], env=env, stdout=self.handle, stderr=subprocess.STDOUT
        )

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log.read_text(errors="replace"))
            if match:
                return match
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{pattern!r} not in {self.log.read_text(errors='replace')[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.handle.close()


@pytest.fixture
def kratos() -> Iterator[Kratos]:
    with Kratos() as k:
        yield k


def test_https_everywhere_and_no_secret_in_any_log(tmp_path: Path, kratos: Kratos) -> None:
    cert, key = _certificate(tmp_path)
    repo = make_platform_repo(tmp_path / "repo")
    state = tmp_path / "state"
    api_token, _ = TokenStore(state).create("data-science", "admin", expires_in=3600)
    session, _ = kratos.session("dave@example.com")
    github_token = "ghp_" + "S3cr3tGitHubT0ken" * 2
    webhook_secret = "whsec-" + "n0t-in-l0gs" * 3
    secrets = [api_token, api_token.split("_", 2)[2], session, github_token, webhook_secret]
    env = {
        **os.environ,
        "MLP_KRATOS_URL": kratos.url,
        "GITHUB_TOKEN": github_token,
        "MLP_GITHUB_WEBHOOK_SECRET": webhook_secret,
        "PYTHONUNBUFFERED": "1",
    }
    tls = ["--tls-cert", str(cert), "--tls-key", str(key)]
    procs = [
        Process(
            [
                "server",
                "--repo",
                str(repo),
                "--state-dir",
                str(state),
                "--port",
                "0",
                "--github-repo",
                "acme/platform",
                "--github-url",
                "http://127.0.0.1:9",
                *tls,
            ],
            env,
            tmp_path / "server.log",
        ),
        Process(
            ["webhooks", "--repo", str(repo), "--state-dir", str(state), "--port", "0", *tls],
            env,
            tmp_path / "webhooks.log",
        ),
        Process(
            [
                "controller",
                "--repo",
                str(repo),
                "--env",
                "dev",
                "--interval",
                "1",
                "--metrics-port",
                "0",
                "--state-dir",
                str(state / "ctl"),
                *tls,
            ],
            env,
            tmp_path / "controller.log",
        ),
    ]
    try:
        api = procs[0].wait_for(r"listening on (https://\S+):(\d+)/api/v1")
        hooks = procs[1].wait_for(r"listening on (https://\S+):(\d+)")
        metrics = procs[2].wait_for(r"metrics: (https://\S+):(\d+)/metrics")
        urls = [f"{m.group(1)}:{m.group(2)}" for m in (api, hooks, metrics)]
        with httpx.Client(verify=ssl.create_default_context(cafile=str(cert)), timeout=30) as client:
            r = client.get(f"{urls[0]}/api/v1/whoami", headers={"Authorization": f"Bearer {api_token}"})
            assert r.status_code == 200 and r.json()["teams"] == {"data-science": "admin"}
            who = client.get(f"{urls[0]}/api/v1/whoami", headers={"X-Session-Token": session})
            assert who.status_code == 200 and who.json()["identity"]["email"] == "dave@example.com"
            # wrong on purpose: the secrets must not come back in errors or logs either
            assert (
                client.get(f"{urls[0]}/api/v1/models", headers={"Authorization": f"Bearer {api_token}x"}).status_code
                == 401
            )
            assert client.get(f"{urls[0]}/api/v1/models", headers={"X-Session-Token": session + "x"}).status_code == 401
            body = {"version": 9, "uri": "s3://b/k", "digest": "sha256:" + "a" * 64}
            failed = client.post(
                f"{urls[0]}/api/v1/models/iris/versions", json=body, headers={"Authorization": f"Bearer {api_token}"}
            )
            assert failed.status_code == 502  # the Git host is down; its token is not in the error
            payload = json.dumps({"zen": "x", "hook_id": 1}).encode()
            signed = client.post(
                f"{urls[1]}/webhooks/github",
                content=payload,
                headers={
                    "X-GitHub-Event": "ping",
                    "X-GitHub-Delivery": "1",
                    "X-Hub-Signature-256": "sha256=" + "0" * 64,
                    "Content-Type": "application/json",
                },
            )
            assert signed.status_code == 401
            assert client.get(f"{urls[1]}/healthz").status_code == 200
            assert client.get(f"{urls[2]}/healthz").status_code == 200
            for url in urls:  # plain HTTP on a TLS listener gets no answer
                with pytest.raises(httpx.HTTPError):
                    httpx.get(url.replace("https://", "http://") + "/healthz", timeout=5).raise_for_status()
            for secret in secrets:
                assert secret not in failed.text
    finally:
        for p in procs:
            p.stop()
    logs = {p.log.name: p.log.read_text(errors="replace") for p in procs}
    for name, text in logs.items():
        for secret in secrets:
            assert secret not in text, f"{name} logged a secret"
    for path in state.rglob("*"):  # nor in any file written to the state folder (tokens are hashed)
        if path.is_file():
            data = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in data, f"{path} holds a secret"
