"""`mlp monitor run|report`: drift and model-performance monitors over a model's payload log.

The monitor's configuration comes from the repository (`--repo`, `--env`) or from the JSON file
render puts in the monitor's ConfigMap on Kubernetes (`--config`). Wiring and printing only;
the work is in `mlp.monitors`.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from mlp.cli._common import CONTEXT, EXIT_CHANGES, EXIT_ERROR, EXIT_OK, fail


def _config_from_repo(repo: Path, env_name: str | None, name: str) -> tuple[dict[str, Any], Path | None]:
    from mlp.cli._common import environment, load_repo
    from mlp.render.core import monitors_for
    from mlp.render.monitoring import monitor_config

    _, result = load_repo(repo)
    specs = result.specs
    if name not in specs.monitors:
        known = ", ".join(sorted(specs.monitors)) or "none"
        fail(f"{repo}: no monitor {name!r} (declared: {known})")
    if env_name is None:
        fail(f"Monitor/{name}: name the environment with --env")
    env = environment(result, env_name)
    if all(m.metadata.name != name for m in monitors_for(specs, env)):
        fail(f"Monitor/{name}: does not watch environment {env_name!r} (its model is not deployed there)")
    mirror = None
    if env.spec.target.kind == "local" and env.spec.target.artifactMirror:
        mirror = (repo / env.spec.target.artifactMirror).resolve()
    return monitor_config(specs, specs.monitors[name], env), mirror


def _resolve(
    name: str,
    repo: Path,
    env: str | None,
    config_file: Path | None,
    state_dir: Path | None,
    payload_log: str | None,
) -> tuple[dict[str, Any], str, Path, Path | None]:
    mirror = None
    if config_file is not None:
        try:
            config = json.loads(config_file.read_text())
        except (OSError, ValueError) as exc:
            fail(f"{config_file}: cannot read the monitor configuration ({exc})")
        if not isinstance(config, dict) or config.get("monitor") != name:
            fail(
                f"{config_file}: configures monitor {config.get('monitor') if isinstance(config, dict) else None!r}, not {name!r}"
            )
        base = Path(".mlp") / "monitors" / name
    else:
        config, mirror = _config_from_repo(repo, env, name)
        base = repo / ".mlp" / f"monitor-{config['environment']}-{name}"
    log_root = payload_log or config.get("payloadLog")
    if not log_root:
        # `mlp up`'s default state folder for this environment
        log_root = str(repo / ".mlp" / f"up-{config['environment']}" / "payloads")
    return config, log_root, state_dir or base, mirror


def _runner(
    config: dict[str, Any],
    log_root: str,
    state: Path,
    mirror: Path | None,
    s3_endpoint_url: str | None,
    labels: str | None,
    metrics: Any = None,
) -> Any:
    from mlp.monitors.runner import MonitorRunner
    from mlp.serving.artifacts import ArtifactStore

    store = ArtifactStore(state / "cache", mirror=mirror, s3_endpoint_url=s3_endpoint_url)
    return MonitorRunner(
        config,
        log_root=log_root,
        state_dir=state,
        fetch=store.fetch,
        metrics=metrics,
        echo=lambda msg: click.echo(msg, err=True),
        s3_endpoint_url=s3_endpoint_url,
        labels=labels,
    )


def _where_options(f: Any) -> Any:
    f = click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Cursor, reports and alert state [default: REPO/.mlp/monitor-ENV-NAME].",
    )(f)
    f = click.option(
        "--payload-log",
        help="Payload log root: a folder or s3://bucket/prefix [default: spec.payloadLog, then mlp up's].",
    )(f)
    f = click.option(
        "--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), help="Rendered monitor.json."
    )(f)
    f = click.option("--env", "env", help="Environment whose deployment the monitor watches.")(f)
    f = click.option(
        "--repo", default=".", show_default=True, type=click.Path(file_okay=False, path_type=Path), help="Repository."
    )(f)
    return click.option(
        "--s3-endpoint-url", envvar="MLP_S3_ENDPOINT_URL", help="S3 endpoint (MinIO, moto) [env MLP_S3_ENDPOINT_URL]."
    )(f)


@click.group("monitor", context_settings=CONTEXT)
def monitor() -> None:
    """Drift and model-performance monitors (alibi-detect, BSL 1.1: pip install 'mlp[monitors]').

    \b
    Example:
      mlp monitor run iris-drift --env dev --once
      mlp monitor report iris-drift --env dev -o html --out drift.html
    """


@monitor.command("run", context_settings=CONTEXT)
@click.argument("name")
@_where_options
@click.option("--once", is_flag=True, help="Test every window complete now, then exit (1 if an alert is active).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), help="Serve Prometheus metrics on this port.")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="Address of the metrics server.")
@click.option("--interval", type=click.FloatRange(min=0.1), help="Check every N seconds instead of the cron schedule.")
@click.option("--labels", help="Labels file or folder (request_id, outcome) [default: the spec's, then feedback].")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def run(
    name: str,
    repo: Path,
    env: str | None,
    config_file: Path | None,
    payload_log: str | None,
    state_dir: Path | None,
    s3_endpoint_url: str | None,
    once: bool,
    metrics_port: int | None,
    metrics_host: str,
    interval: float | None,
    labels: str | None,
    output: str,
) -> None:
    """Watch a model's payload log for data drift and model drift.

    \b
    Examples:
      mlp monitor run iris-drift --env dev --once
      mlp monitor run iris-drift --config /etc/mlp/monitor.json --metrics-port 9102
    """
    from dataclasses import asdict

    from mlp.monitors.runner import MonitorError, MonitorMetrics
    from mlp.monitors.service import MonitorService

    config, log_root, state, mirror = _resolve(name, repo, env, config_file, state_dir, payload_log)
    metrics = MonitorMetrics()
    runner = _runner(config, log_root, state, mirror, s3_endpoint_url, labels, metrics)
    if metrics_port is not None:
        from prometheus_client import start_http_server

        try:
            server, _ = start_http_server(metrics_port, addr=metrics_host, registry=metrics.registry)
        except OSError as exc:
            fail(f"cannot serve metrics on {metrics_host}:{metrics_port}: {exc.strerror}")
        click.echo(f"monitor {name}: metrics on http://{metrics_host}:{server.server_port}/metrics", err=True)
    if once:
        try:
            runner.prepare()
        except MonitorError as exc:
            fail(f"Monitor/{name}: {exc}")
        reports = runner.check()
        if output == "json":
            click.echo(json.dumps({"windows": [asdict(r) for r in reports], "active": sorted(runner.alerter.active)}))
        sys.exit(EXIT_CHANGES if runner.alerter.active else EXIT_OK)
    service = MonitorService(echo=lambda msg: click.echo(msg, err=True))
    service.add(runner, config["schedule"], interval)
    click.echo(
        f"monitor {name}: watching {log_root} ({f'every {interval:g}s' if interval else config['schedule']})", err=True
    )
    with contextlib.suppress(KeyboardInterrupt):
        service.run()


@monitor.command("report", context_settings=CONTEXT)
@click.argument("name")
@_where_options
@click.option("-o", "--output", type=click.Choice(["text", "json", "html"]), default="text", show_default=True)
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), help="Write to a file, not stdout.")
@click.option("--last", default=20, show_default=True, type=click.IntRange(min=1), help="Windows to show.")
def report(
    name: str,
    repo: Path,
    env: str | None,
    config_file: Path | None,
    payload_log: str | None,
    state_dir: Path | None,
    s3_endpoint_url: str | None,
    output: str,
    out: Path | None,
    last: int,
) -> None:
    """Report a monitor's last windows: p-values per feature, metrics, active alerts.

    \b
    Examples:
      mlp monitor report iris-drift --env dev
      mlp monitor report iris-drift --env dev -o html --out drift.html
    """
    from mlp.monitors.report import as_html, as_text, load_reports

    config, _, state, mirror = _resolve(name, repo, env, config_file, state_dir, payload_log)
    reports = load_reports(state, last)
    if output == "json":
        text = json.dumps({"monitor": name, "windows": reports, "generated": time.time()}, indent=2) + "\n"
    elif output == "text":
        text = as_text(name, reports)
    else:
        reference = None
        drift = config.get("drift")
        if drift:
            from mlp.monitors.runner import MonitorError, _read_reference
            from mlp.serving.artifacts import ArtifactError, ArtifactStore

            try:
                path = ArtifactStore(state / "cache", mirror=mirror, s3_endpoint_url=s3_endpoint_url).fetch(
                    drift["reference"]["uri"], drift["reference"]["digest"]
                )
                reference = _read_reference(path)
            except (ArtifactError, MonitorError) as exc:
                fail(f"Monitor/{name}: reference {exc}")
        text = as_html(name, reports, reference, state)
    if out is not None:
        try:
            out.write_text(text)
        except OSError as exc:
            fail(f"{out}: {exc.strerror}", EXIT_ERROR)
        click.echo(f"wrote {out}", err=True)
    else:
        click.echo(text, nl=False)


@monitor.command("local", context_settings=CONTEXT)
@click.argument("repo", type=click.Path(file_okay=False, path_type=Path))
@click.option("--env", "env", required=True, help="The local environment whose monitors to run.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), required=True, help="mlp up's state.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=0, show_default=True)
@click.option("--metrics-host", default="127.0.0.1", show_default=True)
@click.option("--interval", type=click.FloatRange(min=0.1), help="Check every N seconds instead of the schedules.")
@click.option("--parent-pid", type=int, help="Exit when this process (mlp up) is gone.")
@click.option("--s3-endpoint-url", envvar="MLP_S3_ENDPOINT_URL", help="S3 endpoint [env MLP_S3_ENDPOINT_URL].")
def local(
    repo: Path,
    env: str,
    state_dir: Path,
    metrics_port: int,
    metrics_host: str,
    interval: float | None,
    parent_pid: int | None,
    s3_endpoint_url: str | None,
) -> None:
    """Run every monitor of a local environment on its schedule (what `mlp up` starts).

    \b
    Example:
      mlp monitor local . --env dev --state-dir .mlp/up-dev --metrics-port 9102
    """
    import os

    from prometheus_client import start_http_server

    monitors = LocalMonitors(repo, env, state_dir, s3_endpoint_url=s3_endpoint_url, interval=interval)
    try:
        start_http_server(metrics_port, addr=metrics_host, registry=monitors.metrics.registry)
    except OSError as exc:
        fail(f"cannot serve monitor metrics on {metrics_host}:{metrics_port}: {exc.strerror}")
    if parent_pid is not None:
        refresh = monitors.refresh

        def refresh_while_parent_lives() -> None:
            if os.getppid() != parent_pid:
                monitors.service.stop_soon()
                return
            refresh()

        monitors.service.before_tick = refresh_while_parent_lives
    with contextlib.suppress(KeyboardInterrupt):
        monitors.service.run()


class LocalMonitors:
    """`mlp up`'s monitors: the environment's Monitor specs, re-read when the repository changes.

    Each monitor keeps its state folder (`STATE/monitors/NAME`) across spec edits and restarts, so
    a changed spec rebuilds the runner without re-reading old payloads or re-firing alerts.
    """

    def __init__(
        self,
        repo: Path,
        env: str,
        state: Path,
        *,
        registry: Any = None,
        s3_endpoint_url: str | None = None,
        interval: float | None = None,
        echo: Any = None,
    ) -> None:
        from mlp.monitors.runner import MonitorMetrics
        from mlp.monitors.service import MonitorService

        self.repo, self.env, self.state = repo, env, state
        self.s3_endpoint_url = s3_endpoint_url
        self.interval = interval
        self.echo = echo or (lambda msg: click.echo(msg, err=True))
        self.metrics = MonitorMetrics(registry)
        self.service = MonitorService(echo=self.echo, before_tick=self.refresh)
        self.revision: str | None = None
        self.configs: dict[str, str] = {}

    def refresh(self) -> None:
        from mlp.render.core import monitors_for
        from mlp.render.monitoring import monitor_config
        from mlp.sources.directory import read_directory
        from mlp.specs import load

        snap = read_directory(self.repo)
        if snap.revision == self.revision:
            return
        self.revision = snap.revision
        result = load(snap)
        env = result.specs.environments.get(self.env) if result.ok else None
        if env is None:
            return  # the deployments loop reports why; monitors keep running as they were
        mirror = (self.repo / env.spec.target.artifactMirror).resolve() if env.spec.target.artifactMirror else None
        wanted: dict[str, dict[str, Any]] = {
            m.metadata.name: monitor_config(result.specs, m, env) for m in monitors_for(result.specs, env)
        }
        keep = []
        for item in self.service.items:
            name = item.runner.name
            if name in wanted and json.dumps(wanted[name], sort_keys=True) == self.configs.get(name):
                keep.append(item)
            else:
                self.configs.pop(name, None)
                if name not in wanted:
                    self.echo(f"monitor {name}: removed")
        self.service.items = keep
        running = {i.runner.name for i in keep}
        for name, config in sorted(wanted.items()):
            if name in running:
                continue
            log_root = str(self.state / "payloads")
            runner = _runner(
                config, log_root, self.state / "monitors" / name, mirror, self.s3_endpoint_url, None, self.metrics
            )
            runner.echo = self.echo
            self.service.add(runner, config["schedule"], self.interval)
            self.configs[name] = json.dumps(config, sort_keys=True)
            when = f"every {self.interval:g}s" if self.interval else f"on {config['schedule']}"
            self.echo(f"monitor {name}: watching model {config['model']} {when}")

    def start(self) -> None:
        self.service.start()  # its first tick loads the specs (before_tick)

    def stop(self) -> None:
        self.service.stop()
