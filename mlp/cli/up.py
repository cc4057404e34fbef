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

from mlp.cli._common import log_options, output_option
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
    ) -> None:
        self.repo = repo
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
        if snap.revision == self.revision and not retry:
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
            run = reconcile(snap, self.env, self.target, policy, loaded=result)
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


def _lock_state(state: Path) -> Any:
    """An exclusive lock on the state folder, held for the life of the process; None if taken."""
    import fcntl

    state.mkdir(parents=True, exist_ok=True)
    fh = open(state / ".lock", "w")  # noqa: SIM115 - held open on purpose until exit
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        return None
    return fh


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
@output_option("text", "json", help="json: print one JSON line with the URLs when ready.")
@log_options
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
    fmt: str,
) -> None:
    """Serve an environment's models on this machine (embedded runtime).

    \b
    Example:
      mlp up . --env dev --port 8080
      curl -s -d '{"instances": [[6.8, 2.8, 4.8, 1.4]]}' localhost:8080/v1/models/iris:predict
    """
    from mlp.serving.app import DataPlane
    from mlp.serving.server import bind, serve

    if not (repo / "environments").is_dir():
        click.echo(f"error: {repo}: not a platform repository (no environments/ folder)", err=True)
        sys.exit(2)
    state = state_dir or repo / ".mlp" / f"up-{env}"
    lock = _lock_state(state)
    if lock is None:
        click.echo(f"error: {state}: state folder in use by another mlp up (use --state-dir)", err=True)
        sys.exit(2)
    try:
        sock = bind(host, port)
    except OSError as exc:
        click.echo(f"error: cannot listen on {host}:{port}: {exc.strerror}", err=True)
        sys.exit(2)
    base = f"http://{host if ':' not in host else '[' + host + ']'}:{sock.getsockname()[1]}"

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
    loop = LocalLoop(repo, env, target, s3_endpoint_url=s3_endpoint_url)
    click.echo(f"mlp up: reading {repo} (environment {env})", err=True)
    try:
        loop.step(first=True)
    except UpError as exc:
        if not runtime.models:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        # last known good: keep serving what the state folder restored until the repository loads
        click.echo(f"mlp up: the repository does not load; serving the state restored from {state}:\n{exc}", err=True)
    app = DataPlane(runtime, max_body_bytes=int(max_body_mb * (1 << 20)), max_inflight=max_inflight)
    objs = sorted(runtime.objects(), key=lambda o: o["metadata"]["name"])
    pick = curl_model(objs)
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "url": base,
                    "metrics": f"{base}/metrics",
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
        if pick:
            click.echo("  try:")
            click.echo("    " + example_curl(base, pick))
        click.echo("  (Ctrl-C to stop; edits under environments/ and specs/ apply live)")
    sys.stdout.flush()
    watcher = threading.Thread(target=loop.run, args=(interval,), name="mlp-up-watch", daemon=True)
    watcher.start()
    try:
        serve(app, sock)
    except KeyboardInterrupt:
        pass  # uvicorn re-raises the Ctrl-C it handled; the shutdown was already clean
    finally:
        loop.stop()
        runtime.close()
        click.echo("mlp up: stopped", err=True)
