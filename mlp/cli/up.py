"""`mlp up`: serve one local environment of a platform repository on this machine.

Wiring only: a directory source, the engine (`mlp.engine.reconcile`, as every other caller)
and the local target over the embedded runtime.
One process: uvicorn serves the data plane and `/metrics` in the main thread; a watcher
thread re-reads the repository every `--interval` seconds and converges the runtime
(load -> render -> plan -> apply/delete), so editing `environments/dev.yaml` swaps
versions live. A revision that does not load or render changes nothing (last good state
keeps serving); one model that fails to apply does not stop the others.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from mlp.cli._common import lock_folder, log_options, output_option
from mlp.cli._tls import check_tls_or_exit, tls_options, uvicorn_tls
from mlp.serving.artifacts import ArtifactStore
from mlp.serving.runtime import Runtime
from mlp.targets.local import LocalTarget


class UpError(Exception):
    """A located, one-line reason `mlp up` cannot serve the environment."""


class LocalLoop:
    """Converge one local environment from a repository folder, step by step."""

    def __init__(
        self,
        repo: Path,
        env: str,
        target: LocalTarget,
        *,
        echo: Any = None,
        retry_seconds: float = 10.0,
        s3_endpoint_url: str | None = None,
        rollouts: Any = None,
    ) -> None:
        self.repo = repo
        # mlp.rollouts.driver.RolloutDriver: moves canary weights between repository changes
        self.rollouts = rollouts
        self._last: tuple[Any, Any] | None = None  # (snapshot, loaded specs) last reconciled
        self.env = env
        self.target = target
        self.echo = echo or (lambda msg: click.echo(msg, err=True))
        self.retry_seconds = retry_seconds
        self.s3_endpoint_url = s3_endpoint_url
        self.revision: str | None = None
        self.failed_at: float | None = None
        self.last_error: str | None = None
        self._stop = threading.Event()

    def step(self, *, first: bool = False) -> bool:
        """One reconcile if the repository changed (or a failure is due a retry); True when all applied."""
        from mlp.sources.directory import read_directory

        snap = read_directory(self.repo)
        retry = self.failed_at is not None and time.monotonic() - self.failed_at > self.retry_seconds
        moved = self.rollouts is not None and self._last is not None and self.rollouts.tick(self.env)
        if snap.revision == self.revision and not retry:
            if moved and self._last is not None:
                # a canary moved: the same snapshot, re-resolved at the rollouts' new positions
                try:
                    return self._converge(*self._last)
                except UpError as exc:
                    self.last_error = str(exc)
                    return False
            return self.last_error is None
        self.revision = snap.revision
        try:
            result, mirror = self._load(snap)
        except UpError as exc:
            self.last_error = str(exc)
            self.failed_at = None  # nothing to retry until the files change
            if first:
                raise
            self.echo(f"mlp up: revision {snap.revision} refused, still serving the last good state:\n{exc}")
            return False
        self.target.runtime.store.mirror = mirror
        if self.rollouts is not None:
            envspec = result.specs.environments[self.env].spec
            self.rollouts.declare(self.env, snap.revision, envspec.deployments, envspec)
            self.rollouts.tick(self.env)
            self._last = (snap, result)
        try:
            return self._converge(snap, result)
        except UpError as exc:
            self.last_error = str(exc)
            self.failed_at = None
            if first:
                raise
            self.echo(f"mlp up: revision {snap.revision} refused, still serving the last good state:\n{exc}")
            return False

    def _load(self, snap: Any) -> tuple[Any, Path | None]:
        """The snapshot's specs, checked for what `mlp up` needs (a local target, a mirror inside the repo)."""
        from mlp.specs import load

        result = load(snap)
        if not result.ok:
            raise UpError(
                "\n".join(str(d) for d in result.diagnostics if getattr(d, "severity", "error") == "error")
                or "\n".join(str(d) for d in result.diagnostics)
            )
        env = result.specs.environments.get(self.env)
        if env is None:
            known = ", ".join(sorted(result.specs.environments)) or "none"
            raise UpError(f"environments/: no environment {self.env!r} (declared: {known})")
        target = env.spec.target
        if target.kind != "local":
            raise UpError(f"Environment/{self.env}: target kind is {target.kind!r}; mlp up serves local environments")
        mirror = None
        if target.artifactMirror:
            mirror = (self.repo / target.artifactMirror).resolve()
            try:
                mirror.relative_to(self.repo.resolve())
            except ValueError:
                raise UpError(f"Environment/{self.env}: artifactMirror leaves the repository") from None
        return result, mirror

    def _converge(self, snap: Any, result: Any) -> bool:
        from mlp.engine import Policy, reconcile
        from mlp.plan.core import PlanRefused
        from mlp.render import RenderError

        # the embedded runtime: prune what is no longer declared, and one model's refused
        # artifact does not hold back the others (what was serving keeps serving)
        policy = Policy(prune=True, allow_empty=True, keep_going=True)
        try:
            positions = self.rollouts.positions(self.env) if self.rollouts is not None else None
            run = reconcile(snap, self.env, self.target, policy, loaded=result, positions=positions)
        except (RenderError, PlanRefused, ValueError) as exc:
            raise UpError(str(exc)) from None
        changes = run.changes
        for change in changes.done if changes is not None else []:
            if change.result == "deleted":
                self.echo(f"mlp up: removed {change.ref}")
        errors = [f"{ref}: {exc}" for ref, exc in changes.failures] if changes is not None else []
        if errors:
            self.last_error = "\n".join(errors)
            self.failed_at = time.monotonic()
            self.echo("mlp up: not applied (what was serving keeps serving):\n  " + "\n  ".join(errors))
            return False
        self.last_error, self.failed_at = None, None
        return True

    def run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.step()
            except Exception as exc:  # the watcher must survive anything one step throws
                self.echo(f"mlp up: reconcile failed: {type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self._stop.set()


def _rollouts(
    runtime: Runtime,
    state: Path,
    repo: Path,
    env: str,
    event: Any,
    remote: str,
    pr_repo: str | None,
    github_url: str | None,
    gitlab_url: str | None,
) -> Any:
    """The rollout driver (mlp.rollouts): canaries walk their steps on the runtime's own metrics."""
    import os

    from mlp.rollouts.local import HostConfig, local_driver

    names = ("MLP_GITLAB_TOKEN", "GITLAB_TOKEN") if gitlab_url else ("MLP_GITHUB_TOKEN", "GITHUB_TOKEN")
    token = next((os.environ[n] for n in names if os.environ.get(n)), None)
    host = HostConfig(
        repo=pr_repo, token=token, github_url=github_url, gitlab_url=gitlab_url, remote=remote, base="main"
    )
    return local_driver(runtime, state, repo, host=host, echo=event)


def _width(dep: dict[str, Any]) -> int:
    width = 0
    for f in ((dep.get("spec") or {}).get("signature") or {}).get("inputs") or []:
        n = 1
        for d in f.get("shape") or [1]:
            n *= max(1, d)
        width += n
    return max(1, width)


def curl_model(objs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The deployment with the narrowest input: the friendliest one to paste a curl for."""
    return min(objs, key=lambda o: (_width(o), o["metadata"]["name"])) if objs else None


def example_curl(base: str, dep: dict[str, Any]) -> str:
    spec = dep.get("spec") or {}
    width = _width(dep)
    row = IRIS_ROW if width == 4 else [1.0] * width
    body = json.dumps({"instances": [row]})
    return f"curl -s -H 'content-type: application/json' -d {shlex.quote(body)} {base}/v1/models/{spec.get('model')}:predict"


IRIS_ROW = [6.8, 2.8, 4.8, 1.4]


def _start_monitors(
    repo: Path, env: str, state: Path, s3_endpoint_url: str | None, interval: float | None, host: str
) -> tuple[Any, str] | None:
    """The environment's monitors, in a child process (`mlp monitor local`) with its own metrics port.

    A child, not a thread: alibi-detect's import and the tests are seconds of CPU under the GIL,
    which would stall the data plane. The child exits when this process does.
    """
    import os
    import socket
    import subprocess

    with socket.socket() as s:  # a free port for the child's /metrics
        s.bind((host, 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "mlp.cli.main", "monitor", "local", str(repo), "--env", env]
    cmd += ["--state-dir", str(state), "--metrics-host", host, "--metrics-port", str(port)]
    cmd += ["--parent-pid", str(os.getpid())]
    if interval:
        cmd += ["--interval", str(interval)]
    if s3_endpoint_url:
        cmd += ["--s3-endpoint-url", s3_endpoint_url]
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    except OSError as exc:
        click.echo(f"mlp up: monitors not started: {exc}", err=True)
        return None
    return proc, f"http://{host if ':' not in host else '[' + host + ']'}:{port}/metrics"


def _stop_monitors(monitors: tuple[Any, str] | None) -> None:
    import subprocess

    if monitors is None:
        return
    proc = monitors[0]
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def _feature_service(repo: Path, env: str, runtime: Runtime, event: Any) -> Any:
    """Online features and request enrichment (mlp.features), when that extra is installed."""
    try:
        from mlp.features.service import FeatureService
    except ImportError:
        return None
    try:
        svc = FeatureService.for_environment(repo, env)
    except Exception as exc:  # a bad store must not stop the models from serving
        event(f"features: not served: {type(exc).__name__}: {exc}")
        return None
    runtime.metrics.registry.register(svc)
    return svc


@click.command("up")
@click.argument("repo", default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option("--env", "env", default="dev", show_default=True, help="Environment to serve (target kind local).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port (0 picks a free one).")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Runtime state: artifact cache, deployments, payload log [default: REPO/.mlp/up-ENV].",
)
@click.option("--interval", default=1.0, show_default=True, type=float, help="Seconds between repository checks.")
@click.option(
    "--s3-endpoint-url", envvar="MLP_S3_ENDPOINT_URL", help="S3 endpoint (MinIO, moto) [env MLP_S3_ENDPOINT_URL]."
)
@click.option("--max-body-mb", default=4.0, show_default=True, type=float, help="Largest request body accepted.")
@click.option(
    "--max-inflight",
    default=2048,
    show_default=True,
    type=click.IntRange(min=1),
    help="Concurrent inference requests before answering 503 + Retry-After.",
)
@click.option("--payload-log/--no-payload-log", default=True, show_default=True, help="Write sampled payloads.")
@click.option(
    "--monitor-interval",
    type=click.FloatRange(min=0.1),
    help="Run the environment's monitors every N seconds instead of on their cron schedules.",
)
@click.option(
    "--git-remote", default="origin", show_default=True, help="Remote a rollback's revert branch is pushed to."
)
@click.option(
    "--pr-repo",
    envvar="MLP_PR_REPO",
    help="owner/name on GitHub (or GitLab with --gitlab-url) to open a rollback's revert PR in [env MLP_PR_REPO].",
)
@click.option("--github-url", envvar="MLP_GITHUB_API_URL", help="GitHub API URL [env MLP_GITHUB_API_URL].")
@click.option("--gitlab-url", envvar="MLP_GITLAB_API_URL", help="GitLab API URL [env MLP_GITLAB_API_URL].")
@output_option("text", "json", help="json: print one JSON line with the URLs when ready.")
@log_options
@tls_options
def up(
    repo: Path,
    env: str,
    host: str,
    port: int,
    state_dir: Path | None,
    interval: float,
    s3_endpoint_url: str | None,
    max_body_mb: float,
    max_inflight: int,
    payload_log: bool,
    monitor_interval: float | None,
    git_remote: str,
    pr_repo: str | None,
    github_url: str | None,
    gitlab_url: str | None,
    fmt: str,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> None:
    """Serve an environment's models on this machine (embedded runtime).

    \b
    Example:
      mlp up . --env dev --port 8080
      curl -s -d '{"instances": [[6.8, 2.8, 4.8, 1.4]]}' localhost:8080/v1/models/iris:predict
    """
    from mlp.serving.app import DataPlane
    from mlp.serving.server import bind, serve

    check_tls_or_exit(tls_cert, tls_key)
    if not (repo / "environments").is_dir():
        click.echo(f"error: {repo}: not a platform repository (no environments/ folder)", err=True)
        sys.exit(2)
    state = state_dir or repo / ".mlp" / f"up-{env}"
    lock = lock_folder(state)
    if lock is None:
        click.echo(f"error: {state}: state folder in use by another mlp up (use --state-dir)", err=True)
        sys.exit(2)
    try:
        sock = bind(host, port)
    except OSError as exc:
        click.echo(f"error: cannot listen on {host}:{port}: {exc.strerror}", err=True)
        sys.exit(2)
    base = (
        f"{'https' if tls_cert else 'http'}://{host if ':' not in host else '[' + host + ']'}:{sock.getsockname()[1]}"
    )

    json_logs = click.get_current_context().meta.get("mlp.log_format") == "json"

    def event(msg: str) -> None:
        if json_logs:
            logging.getLogger("mlp.up").info(msg, extra={"environment": env})
        else:
            click.echo(f"mlp up: {msg}", err=True)

    runtime = Runtime(
        state,
        store=ArtifactStore(state / "cache", s3_endpoint_url=s3_endpoint_url),
        payload_log=payload_log,
        on_event=event,
    )
    target = LocalTarget(runtime)
    for line in runtime.restore():
        event(f"could not restore {line}")
    loop = LocalLoop(
        repo,
        env,
        target,
        s3_endpoint_url=s3_endpoint_url,
        rollouts=_rollouts(runtime, state, repo, env, event, git_remote, pr_repo, github_url, gitlab_url),
    )
    click.echo(f"mlp up: reading {repo} (environment {env})", err=True)
    try:
        loop.step(first=True)
    except UpError as exc:
        if not runtime.models:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        # last known good: keep serving what the state folder restored until the repository loads
        click.echo(f"mlp up: the repository does not load; serving the state restored from {state}:\n{exc}", err=True)
    monitors = _start_monitors(repo, env, state, s3_endpoint_url, monitor_interval, host) if payload_log else None
    features = _feature_service(repo, env, runtime, event)
    app = DataPlane(runtime, max_body_bytes=int(max_body_mb * (1 << 20)), max_inflight=max_inflight, features=features)
    objs = sorted(runtime.objects(), key=lambda o: o["metadata"]["name"])
    pick = curl_model(objs)
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "url": base,
                    "metrics": f"{base}/metrics",
                    "monitorMetrics": monitors[1] if monitors else None,
                    "features": f"{base}/v1/features" if features is not None else None,
                    "environment": env,
                    "revision": loop.revision,
                    "models": {
                        o["metadata"]["name"]: {
                            "v1": f"{base}/v1/models/{o['metadata']['name']}:predict",
                            "v2": f"{base}/v2/models/{o['metadata']['name']}/infer",
                        }
                        for o in objs
                    },
                    "curl": example_curl(base, pick) if pick else None,
                }
            ),
            nl=True,
        )
    else:
        click.echo(f"mlp up: environment {env} at revision {loop.revision}, serving on {base}")
        for o in objs:
            name = o["metadata"]["name"]
            click.echo(f"  {name:<16} POST {base}/v1/models/{name}:predict   (KServe v1)")
            click.echo(f"  {'':<16} POST {base}/v2/models/{name}/infer   (Open Inference Protocol v2)")
        click.echo(f"  {'metrics':<16} GET  {base}/metrics")
        if monitors:
            click.echo(f"  {'monitor metrics':<16} GET  {monitors[1]}")
        if features is not None and features.views:
            click.echo(f"  {'features':<16} GET  {base}/v1/features/VIEW?entity=KEY")
        if pick:
            click.echo("  try:")
            click.echo("    " + example_curl(base, pick))
        click.echo("  (Ctrl-C to stop; edits under environments/ and specs/ apply live)")
    sys.stdout.flush()
    watcher = threading.Thread(target=loop.run, args=(interval,), name="mlp-up-watch", daemon=True)
    watcher.start()
    if features is not None:
        threading.Thread(
            target=features.run_schedule, args=(max(interval, 1.0), event), name="mlp-up-features", daemon=True
        ).start()
    try:
        serve(app, sock, **uvicorn_tls(tls_cert, tls_key))
    except KeyboardInterrupt:
        pass  # uvicorn re-raises the Ctrl-C it handled; the shutdown was already clean
    finally:
        loop.stop()
        _stop_monitors(monitors)
        if features is not None:
            features.stop()
        runtime.close()
        click.echo("mlp up: stopped", err=True)
