"""`mlp controller` (run the GitOps reconciler) and `mlp sync ENV` (ask it to reconcile now).

`mlp sync` talks to a running controller through its state folder: it inserts a row in
the state database that the controller polls every second (no port to know, works
across users of the same folder, and a webhook receiver in another process uses the
same call, `mlp.controller.store.request_sync`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from mlp.cli._common import context_option, fail, kubeconfig_option, log_options, output_option, state_dir_option
from mlp.cli._tls import check_tls_or_exit, tls_options
from mlp.cli.status import require_state
from mlp.specs.models import Environment
from mlp.targets.base import Target, TargetError

HEARTBEAT_FILE = "controller.heartbeat"
HEARTBEAT_EVERY = 1.0  # seconds between touches
HEARTBEAT_STALE = 10.0  # older than this: no controller is running
log = logging.getLogger("mlp.controller")


def _limits_chosen() -> bool:
    ctx = click.get_current_context()
    return any(
        ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)
        for name in ("kube_api_qps", "kube_api_burst")
    )


def _make_targets(
    kubeconfig: str | None,
    state_dir: Path,
    *,
    qps: float = 50.0,
    burst: int = 100,
    context: str | None = None,
    server_fairness: bool = False,
) -> Callable[[str, Environment], Target]:
    """Target per environment from its spec: kubernetes (kubeconfig or in-cluster) or the local runtime.

    Environments on the same cluster context share one target, so its client-side rate limit
    (`qps`, `burst`) holds for the controller as a whole.
    """
    cache: dict[tuple[str, str | None], Target] = {}
    scoped: dict[tuple[str, str | None, str | None], Target] = {}
    lock = threading.Lock()  # environments step in parallel: build each target once

    def factory(env: str, spec: Environment) -> Target:
        with lock:
            return build(env, spec)

    def build(env: str, spec: Environment) -> Target:
        t = spec.spec.target
        if t.kind != "kubernetes":
            # The embedded runtime serves models in the process that owns it: `mlp up` runs the
            # same reconcile loop for local environments; a separate controller cannot reach it.
            raise TargetError(
                f"environment {env!r} has a local target: it is served and reconciled by "
                f"`mlp up --env {env}`, not by `mlp controller` (use --env to skip it)"
            )
        from mlp.targets.kubernetes import KubernetesTarget

        cluster_context = context or t.context
        key = (t.kind, cluster_context)
        if key not in cache:
            cache[key] = KubernetesTarget.from_kubeconfig(
                kubeconfig, context=cluster_context, qps=qps, burst=burst, server_fairness=server_fairness
            )
        # One client and rate limit per cluster; each environment lists only its own namespace,
        # so the controller needs no cluster-wide read rights.
        skey = (*key, t.namespace)
        if skey not in scoped:
            base = cache[key]
            assert isinstance(base, KubernetesTarget)
            scoped[skey] = base.scoped(t.namespace)
        return scoped[skey]

    return factory


def _rollout_driver(
    source: Any,
    watch_dir: Path | None,
    state_dir: Path,
    metrics: Any,
    pr_repo: str | None,
    github_url: str | None,
    gitlab_url: str | None,
) -> Any:
    """Canary rollouts of kubernetes environments (mlp.rollouts.kube): Prometheus analysis, revert
    branches pushed from the repository the controller reads."""
    from mlp.rollouts.gitops import HostConfig
    from mlp.rollouts.kube import kube_driver

    names = ("MLP_GITLAB_TOKEN", "GITLAB_TOKEN") if gitlab_url else ("MLP_GITHUB_TOKEN", "GITHUB_TOKEN")
    token = next((os.environ[n] for n in names if os.environ.get(n)), None)
    host = HostConfig(repo=pr_repo, token=token, github_url=github_url, gitlab_url=gitlab_url)
    auth = getattr(source, "auth", None)
    repo_dir = getattr(source, "cache_dir", None) or watch_dir

    def echo(message: str) -> None:
        click.echo(f"{_stamp()} {message}", err=True)

    return kube_driver(
        state_dir,
        repo_dir,
        host=host,
        git_env=auth.environment() if auth is not None else None,
        registry=metrics.registry,
        echo=echo,
    )


def _limit_malloc_arenas() -> None:
    """Ask glibc for 2 malloc arenas instead of 8 per core (as MALLOC_ARENA_MAX=2 does).

    The controller's worker threads each get an arena by default; memory freed in one is not
    reused by another, which keeps a long-running process larger than its live data.
    """
    if not sys.platform.startswith("linux"):
        return
    import contextlib
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX


def _looks_remote(repo: str) -> bool:
    """A URL (https://, ssh://, file://) or scp-like `user@host:path`."""
    return "://" in repo or bool(re.match(r"^[\w.-]+@[\w.-]+:", repo))


def _check_start(
    repo: str | None, token_env: str | None, token_file: Path | None, ssh_key: Path | None, kubeconfig: str | None
) -> None:
    """Refuse to start (exit 2, one line) on what could never work, instead of retrying it forever."""
    if token_env and not os.environ.get(token_env):
        fail(f"--token-env {token_env}: the environment variable is not set (or empty)")
    if token_file is not None and not token_file.is_file():
        fail(f"--token-file {token_file}: no such file")
    if ssh_key is not None and not ssh_key.is_file():
        fail(f"--ssh-key {ssh_key}: no such file")
    if repo and not _looks_remote(repo):
        path = Path(repo)
        if not path.is_dir():
            fail(f"--repo {repo}: neither a Git URL nor a folder")
        if not ((path / ".git").exists() or ((path / "HEAD").is_file() and (path / "objects").is_dir())):
            fail(f"--repo {repo}: not a Git repository (use --watch for a plain folder)")
    if kubeconfig:
        files = [p for p in kubeconfig.split(os.pathsep) if p]
        if not any(Path(p).expanduser().is_file() for p in files):
            fail(f"kubeconfig {kubeconfig}: no such file")


def _heartbeat(state_dir: Path, stop: threading.Event, every: float = HEARTBEAT_EVERY) -> threading.Thread:
    """Touch STATE_DIR/controller.heartbeat while the controller runs: `mlp sync --wait` checks it."""
    path = state_dir / HEARTBEAT_FILE

    def beat() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                path.write_text(json.dumps({"pid": os.getpid(), "time": time.time()}))
            stop.wait(every)
        with contextlib.suppress(OSError):
            path.unlink()

    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    return thread


def controller_alive(state_dir: Path) -> bool:
    """A controller touched the heartbeat recently."""
    try:
        return time.time() - (state_dir / HEARTBEAT_FILE).stat().st_mtime < HEARTBEAT_STALE
    except OSError:
        return False


def _stamp() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--repo", help="Git URL (https://, ssh, git@host:path) or a local repository path.")
@click.option(
    "--watch",
    "watch_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Reconcile a local folder instead of Git and re-sync on every file change (development).",
)
@click.option(
    "--branch",
    default="main",
    show_default=True,
    help="Branch (or tag) holding the environment list; each environment may track its own (spec.branch).",
)
@click.option(
    "--interval",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds between fetches and full reconciles (self-heal happens within one interval).",
)
@click.option(
    "--metrics-port",
    type=int,
    default=9464,
    show_default=True,
    help="Port of the Prometheus /metrics endpoint on 127.0.0.1 (0: pick a free one; -1: none).",
)
@click.option("--metrics-host", default="127.0.0.1", show_default=True)
@state_dir_option(help="Status, audit log and Git cache; `mlp status --state-dir` reads it.")
@click.option("--env", "envs", multiple=True, help="Only these environments (repeatable). Default: all.")
@kubeconfig_option
@context_option
@log_options
@click.option("--token-env", help="Environment variable holding an HTTPS token for the remote.")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), help="File holding an HTTPS token.")
@click.option("--ssh-key", type=click.Path(dir_okay=False, path_type=Path), help="SSH private key for the remote.")
@click.option(
    "--ssh-known-hosts",
    type=click.Path(dir_okay=False, path_type=Path),
    help="known_hosts file to verify the SSH host against (default: accept a new host key once).",
)
@click.option(
    "--workers",
    type=int,
    default=4,
    show_default=True,
    help="Environments checked in parallel (rendering and applying go one at a time per cluster).",
)
@click.option(
    "--kube-api-qps",
    type=click.FloatRange(min=0, min_open=True),
    default=50.0,
    show_default=True,
    help="Requests per second to each Kubernetes API server, all environments together. Unless this or "
    "--kube-api-burst is given, the limit is lifted when the server has API Priority and Fairness on.",
)
@click.option(
    "--kube-api-burst",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Requests allowed at once above --kube-api-qps.",
)
@click.option(
    "--once",
    is_flag=True,
    help="Sync every environment once, as a manual sync (policy windows and automated: false do not "
    "block it), and exit: 0 when all are synced.",
)
@click.option(
    "--leader-elect",
    is_flag=True,
    help="Run as one of several replicas: only the holder of a coordination.k8s.io Lease writes; "
    "followers watch and serve metrics.",
)
@click.option(
    "--leader-elect-namespace",
    envvar="POD_NAMESPACE",
    default="mlp-system",
    show_default=True,
    help="Namespace of the Lease [env POD_NAMESPACE].",
)
@click.option("--leader-elect-name", default="mlp-controller", show_default=True, help="Name of the Lease.")
@click.option(
    "--leader-elect-id", envvar="POD_NAME", help="This replica's identity [env POD_NAME; default host name and pid]."
)
@click.option(
    "--leader-elect-lease-duration",
    type=float,
    default=15.0,
    show_default=True,
    help="Seconds a follower waits after the leader's last renewal before taking over.",
)
@click.option("--leader-elect-renew-deadline", type=float, default=10.0, show_default=True)
@click.option("--leader-elect-retry-period", type=float, default=2.0, show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="Print only changes and errors.")
@click.option(
    "--pr-repo",
    envvar="MLP_PR_REPO",
    help="owner/name on GitHub (or GitLab with --gitlab-url) to open a canary rollback's revert PR in "
    "[env MLP_PR_REPO; token from MLP_GITHUB_TOKEN / GITHUB_TOKEN or MLP_GITLAB_TOKEN / GITLAB_TOKEN].",
)
@click.option("--github-url", envvar="MLP_GITHUB_API_URL", help="GitHub API URL [env MLP_GITHUB_API_URL].")
@click.option("--gitlab-url", envvar="MLP_GITLAB_API_URL", help="GitLab API URL [env MLP_GITLAB_API_URL].")
@tls_options
def controller(
    repo: str | None,
    watch_dir: Path | None,
    branch: str,
    interval: float,
    metrics_port: int,
    metrics_host: str,
    state_dir: Path,
    envs: tuple[str, ...],
    kubeconfig: str | None,
    context: str | None,
    token_env: str | None,
    token_file: Path | None,
    ssh_key: Path | None,
    ssh_known_hosts: Path | None,
    workers: int,
    kube_api_qps: float,
    kube_api_burst: int,
    once: bool,
    leader_elect: bool,
    leader_elect_namespace: str,
    leader_elect_name: str,
    leader_elect_id: str | None,
    leader_elect_lease_duration: float,
    leader_elect_renew_deadline: float,
    leader_elect_retry_period: float,
    quiet: bool,
    pr_repo: str | None = None,
    github_url: str | None = None,
    gitlab_url: str | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> None:
    """Keep every environment in step with Git, continuously.

    Fetches the repository every --interval seconds (only refs that moved, shallow),
    reconciles each environment (validate, render, plan, apply) under its sync policy,
    records status and an audit log in --state-dir, and serves Prometheus metrics.
    SIGTERM (or Ctrl-C) finishes the steps in progress, then exits.

    \b
    Examples:
      mlp controller --repo https://github.com/acme/ml-platform.git --token-env GITHUB_TOKEN \\
          --interval 30 --state-dir /var/lib/mlp --kubeconfig ~/.kube/config
      mlp controller --repo . --env staging --interval 10 --metrics-port 9464
      mlp controller --watch . --env staging      # re-sync on every saved file
      mlp controller --repo https://github.com/acme/ml-platform.git --leader-elect   # two replicas, one writer
      mlp sync staging --state-dir /var/lib/mlp   # from another shell: reconcile now
    """
    from mlp.controller.controller import Controller, ControllerEvents
    from mlp.controller.metrics import ControllerMetrics, serve_metrics
    from mlp.controller.reconciler import Reconciler, StepResult
    from mlp.controller.store import StateStore

    check_tls_or_exit(tls_cert, tls_key)
    _limit_malloc_arenas()
    if bool(repo) == bool(watch_dir):
        click.echo("error: give exactly one of --repo URL|PATH or --watch DIR", err=True)
        sys.exit(2)
    if interval <= 0:
        click.echo("error: --interval must be positive", err=True)
        sys.exit(2)
    _check_start(repo, token_env, token_file, ssh_key, kubeconfig)
    state_dir.mkdir(parents=True, exist_ok=True)

    source: Any
    watcher = None
    if watch_dir is not None:
        from mlp.sources.watch import FolderSource

        if not watch_dir.is_dir():
            click.echo(f"error: {watch_dir}: not a directory", err=True)
            sys.exit(2)
        source = FolderSource(watch_dir)
    else:
        from mlp.sources.git import GitAuth, GitSource, GitSourceError

        assert repo is not None
        try:
            source = GitSource(
                repo,
                state_dir / "git-cache",
                auth=GitAuth(
                    token_env=token_env, token_file=token_file, ssh_key_file=ssh_key, ssh_known_hosts=ssh_known_hosts
                ),
            )
        except (GitSourceError, OSError) as exc:
            click.echo(f"error: {repo}: {exc}", err=True)
            sys.exit(2)

    store = StateStore(state_dir)
    metrics = ControllerMetrics()
    rollouts = _rollout_driver(source, watch_dir, state_dir, metrics, pr_repo, github_url, gitlab_url)
    reconciler = Reconciler(
        source,
        _make_targets(
            kubeconfig,
            state_dir,
            qps=kube_api_qps,
            burst=kube_api_burst,
            context=context,
            server_fairness=not _limits_chosen(),
        ),
        store,
        metrics=metrics,
        default_ref=branch,
        local_elsewhere=True,
        rollouts=rollouts,
    )

    json_logs = click.get_current_context().meta.get("mlp.log_format") == "json"

    def on_step(result: StepResult, reasons: set[str]) -> None:
        if quiet and result.outcome in ("synced",):
            return
        rev = (result.revision or "-")[:12]
        if json_logs:  # one event per line, fields a log pipeline can index
            level = logging.ERROR if result.outcome == "failed" else logging.INFO
            log.log(
                level,
                result.message or result.outcome,
                extra={
                    "environment": result.env,
                    "revision": result.revision,
                    "step": result.outcome,
                    "reasons": sorted(reasons),
                    "duration": round(result.duration, 3),
                    "changes": len(result.changes),
                },
            )
            return
        click.echo(
            f"{_stamp()} {result.env}: {result.outcome} {rev} ({', '.join(sorted(reasons))}, "
            f"{result.duration:.2f}s) {result.message}",
            err=True,
        )
        for change in result.changes[:20]:
            click.echo(f"    {change}", err=True)
        if len(result.changes) > 20:
            click.echo(f"    ... and {len(result.changes) - 20} more", err=True)

    def on_refresh(result: Any) -> None:
        if result.error and starting[0]:
            return  # the start-up check reports it in one line
        if result.error:
            keeping = "keeping the last fetched revision" if fetched_once[0] else "nothing fetched yet"
            if json_logs:
                log.warning(f"source: {result.error} ({keeping})", extra={"step": "fetch"})
            else:
                click.echo(f"{_stamp()} source: {result.error} ({keeping})", err=True)
        else:
            fetched_once[0] = True
            if result.changed and not quiet:
                if json_logs:
                    log.info("new commits", extra={"step": "fetch", "refs": list(result.changed)})
                else:
                    click.echo(f"{_stamp()} source: new commits on {', '.join(result.changed)}", err=True)

    fetched_once, starting = [False], [False]

    elector = None
    lost = False
    if leader_elect and not once:
        elector = _leader_elector(
            kubeconfig,
            context,
            leader_elect_namespace,
            leader_elect_name,
            leader_elect_id,
            (leader_elect_lease_duration, leader_elect_renew_deadline, leader_elect_retry_period),
        )

    ctl = Controller(
        source,
        reconciler,
        interval=interval,
        environments=envs or None,
        workers=workers,
        metrics=metrics,
        events=ControllerEvents(on_step=on_step, on_refresh=on_refresh),
        leader=elector.is_leader if elector is not None else None,
    )
    if elector is not None:
        metrics.leader.set(0)

        def on_started() -> None:
            metrics.leader.set(1)
            click.echo(f"{_stamp()} leader: {elector.identity} holds the lease; reconciling", err=True)

        def on_lost() -> None:
            # Another replica may already write: stop at once and exit non-zero, so the
            # orchestrator restarts this one as a follower (what client-go's users do).
            nonlocal lost
            lost = True
            metrics.leader.set(0)
            click.echo(f"{_stamp()} error: lost the leader lease; exiting", err=True)
            ctl.stop()

        elector.on_started, elector.on_lost = on_started, on_lost

    if once:
        ctl.refresh()
        names = ctl.environments()
        if not names:
            click.echo(f"error: no environments to reconcile ({source.last_error or 'none declared'})", err=True)
            sys.exit(1)
        outcomes = [reconciler.step(env, reasons={"manual"}) for env in names]
        for r in outcomes:
            on_step(r, {"once"})
        sys.exit(0 if outcomes and all(r.outcome in ("synced", "applied") for r in outcomes) else 1)

    if repo:
        # A source that cannot be fetched even once would leave the controller with nothing to keep.
        starting[0] = True
        ctl.refresh()
        starting[0] = False
        if not fetched_once[0]:
            fail(f"--repo {repo}: cannot fetch: {source.last_error or 'unknown error'}")

    with contextlib.suppress(Exception):  # a source that does not load yet says so in its own step
        ctl.environments()
    for name in sorted(reconciler.handled_elsewhere):
        click.echo(
            f"{_stamp()} {name}: local target: served and reconciled by `mlp up --env {name}`, not here", err=True
        )

    server = None
    if metrics_port >= 0:
        try:
            metrics_tls = None
            if tls_cert and tls_key:
                from mlp.api.server import tls_context

                metrics_tls = tls_context(tls_cert, tls_key)
            server, port = serve_metrics(metrics, metrics_port, metrics_host, ssl_context=metrics_tls)
        except OSError as exc:
            click.echo(f"error: metrics port {metrics_port}: {exc.strerror or exc}", err=True)
            sys.exit(2)
        click.echo(f"metrics: {'https' if tls_cert else 'http'}://{metrics_host}:{port}/metrics", err=True)
        (state_dir / "controller.json").write_text(json.dumps({"metricsPort": port, "pid": __import__("os").getpid()}))

    if watch_dir is not None:
        from mlp.sources.watch import Watcher

        watcher = Watcher(watch_dir, lambda: ctl.trigger(None, "watch")).start()

    def on_signal(signum: int, _frame: Any) -> None:
        click.echo(f"{_stamp()} {signal.Signals(signum).name}: finishing the current step, then exiting", err=True)
        ctl.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    where = repo if repo else f"{watch_dir} (watching)"
    click.echo(f"mlp controller: {where}, every {interval:g}s, state in {state_dir}", err=True)
    stop_heartbeat = threading.Event()
    beat = _heartbeat(state_dir, stop_heartbeat)
    if elector is not None:
        click.echo(f"{_stamp()} leader election: {elector.identity} campaigning for {elector._where()}", err=True)
        elector.start()
    try:
        ctl.run()
    finally:
        stop_heartbeat.set()
        beat.join(timeout=2)
        if elector is not None:
            elector.stop(release=not lost)
        if watcher is not None:
            watcher.stop()
        if server is not None:
            server.shutdown()
        store.close()
        if hasattr(source, "close"):
            source.close()
    click.echo(f"{_stamp()} stopped after {ctl.steps} steps", err=True)
    if lost:
        sys.exit(2)


def _leader_elector(
    kubeconfig: str | None,
    context: str | None,
    namespace: str,
    name: str,
    identity: str | None,
    timing: tuple[float, float, float],
) -> Any:
    import os
    import socket

    from mlp.controller.leader import LeaderElector, LeaseConfig
    from mlp.targets.base import TargetError
    from mlp.targets.kubernetes import KubernetesTarget

    try:
        config = LeaseConfig(name, namespace, *timing)
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    try:
        api = KubernetesTarget.from_environment(kubeconfig, context).api
    except TargetError as exc:
        click.echo(f"error: leader election: {exc}", err=True)
        sys.exit(2)
    return LeaderElector(api, identity or f"{socket.gethostname()}-{os.getpid()}", config)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("env")
@state_dir_option()
@click.option("--wait/--no-wait", default=False, help="Wait until the controller has reconciled ENV.")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds to wait with --wait.")
@output_option("text", "json")
def sync(env: str, state_dir: Path, wait: bool, timeout: float, fmt: str) -> None:
    """Ask a running controller to reconcile ENV now (after a fresh fetch).

    A manual sync applies even when the environment's automated sync is off or a sync
    window is closed. Use `all` for every environment.

    \b
    Examples:
      mlp sync staging --state-dir /var/lib/mlp
      mlp sync prod --state-dir /var/lib/mlp --wait -o json
    """
    from mlp.controller.store import StateStore, request_sync

    require_state(state_dir)
    if wait and not controller_alive(state_dir):
        fail(
            f"{state_dir}: no controller is running on this state folder (no recent {HEARTBEAT_FILE}); start `mlp controller`"
        )
    asked = time.time()
    request_sync(state_dir, "*" if env == "all" else env, "manual")
    if not wait:
        if fmt == "json":
            click.echo(json.dumps({"environment": env, "requested": True}))
        else:
            click.echo(f"sync of {env} requested", err=True)
        return
    store = StateStore(state_dir)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            names = store.environments() if env == "all" else [env]
            statuses = [store.load(n, details=False) for n in names]
            if names and all(s is not None and s.updated_at >= asked for s in statuses):
                done = [s for s in statuses if s is not None]
                if fmt == "json":
                    click.echo(json.dumps([s.to_json() for s in done], indent=2))
                else:
                    for s in done:
                        click.echo(f"{s.env}: {s.sync_status} {s.health} {(s.revision or '-')[:12]} {s.message}")
                sys.exit(0 if all(s.sync_status == "Synced" for s in done) else 1)
            time.sleep(0.2)
    finally:
        store.close()
    click.echo(f"error: {env}: the controller did not reconcile within {timeout:g}s (is it running?)", err=True)
    sys.exit(2)
