"""Shared CLI helpers: the options every command spells the same way, repository loading, target choice.

Conventions (kubectl, argocd and flux habits; tests/test_cli_conventions.py walks every command):
- `-o/--output FORMAT` is the output format (`--format` is accepted as its long alias); files get
  their own flag (`--output-file`, `--out`).
- Exit codes: `EXIT_OK` 0, `EXIT_CHANGES` 1 ("found something": invalid specs, a diff with changes,
  an environment not healthy), `EXIT_ERROR` 2 (bad input, unreachable cluster, refused plan). Every
  failure is one line on stderr (`error: ...`), located where the input has a location; never a traceback.
- Colour only on a terminal, never with `NO_COLOR` set (https://no-color.org).
- `MLP_STATE_DIR`, `MLP_KUBECONFIG`/`KUBECONFIG` stand in for `--state-dir`/`--kubeconfig`;
  `--context`, `--kube-api-qps` and `--kube-api-burst` go wherever a cluster is reached.
- Long-running commands take `--log-format text|json` and `--log-level`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from mlp.plan.core import PlanItem
    from mlp.sources.base import Snapshot
    from mlp.specs import LoadResult
    from mlp.specs.models import Environment
    from mlp.targets.base import Manifest, Target

EXIT_OK, EXIT_CHANGES, EXIT_ERROR = 0, 1, 2

CONTEXT = {"help_option_names": ["-h", "--help"]}

# Every format any command offers; a command offers the subset that applies to it.
FORMATS = ("text", "json", "yaml", "github", "gitlab", "markdown", "html")

STATE_DIR_ENV = "MLP_STATE_DIR"
KUBECONFIG_ENVS = ["MLP_KUBECONFIG", "KUBECONFIG"]
DEFAULT_QPS, DEFAULT_BURST = 50.0, 100  # as Argo CD's application controller
MAX_APPLY_CONCURRENCY = 32  # threads (and pooled connections) per apply; the rate limit is what bounds calls


def output_option(
    *choices: str, default: str = "text", help: str | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`-o/--output FORMAT` (alias `--format`), passed to the command as `fmt`."""
    unknown = set(choices) - set(FORMATS)
    assert not unknown, f"unknown output formats {unknown}"
    return click.option(
        "-o",
        "--output",
        "--format",
        "fmt",
        type=click.Choice(list(choices)),
        default=default,
        show_default=True,
        help=help or "Output format.",
    )


def use_color(flag: bool | None = None, stream: Any = None) -> bool:
    """Colour when asked (`--color`), else on a terminal; never when NO_COLOR is set and not empty."""
    if flag is not None:
        return flag
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    stream = stream if stream is not None else sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


def state_dir_option(
    default: Path | None = Path(".mlp/controller"),
    help: str = "State folder of the controller (its --state-dir).",
    envvar: str | None = STATE_DIR_ENV,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--state-dir DIR` [env MLP_STATE_DIR: the controller's state, which status, audit and sync read]."""
    return click.option(
        "--state-dir",
        "state_dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar=envvar,
        default=default,
        show_default=default is not None,
        help=f"{help} [env {envvar}]" if envvar else help,
    )


def kubeconfig_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--kubeconfig",
        "kubeconfig",
        envvar=KUBECONFIG_ENVS,
        type=click.Path(dir_okay=False),
        help="kubeconfig file [env MLP_KUBECONFIG, then KUBECONFIG, then ~/.kube/config, then in-cluster].",
    )(f)


def context_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--context", "context", help="kubeconfig context [default: the environment's, then the current one]."
    )(f)


def _store_meta(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    ctx.meta[f"mlp.{param.name}"] = value
    ctx.meta[f"mlp.{param.name}.chosen"] = param.name is not None and ctx.get_parameter_source(param.name) not in (
        None,
        click.core.ParameterSource.DEFAULT,
    )
    return value


def kube_api_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """`--kube-api-qps/--kube-api-burst`: the client-side rate limit to each API server.

    Not passed to the command: `make_target` (and `kube_api_limits()`) read them from the click context.
    """
    f = click.option(
        "--kube-api-burst",
        type=click.IntRange(min=1),
        default=DEFAULT_BURST,
        show_default=True,
        expose_value=False,
        callback=_store_meta,
        help="Requests allowed at once above --kube-api-qps (also the number of objects applied concurrently).",
    )(f)
    return click.option(
        "--kube-api-qps",
        type=click.FloatRange(min=0, min_open=True),
        default=DEFAULT_QPS,
        show_default=True,
        expose_value=False,
        callback=_store_meta,
        help="Requests per second to the Kubernetes API server. Unless this or --kube-api-burst is "
        "given, the limit is lifted when the server has API Priority and Fairness on (its flow control governs).",
    )(f)


def apply_concurrency(target: Any) -> int:
    """Objects applied at once: up to the burst on a cluster (its rate limit still holds), one locally."""
    return min(kube_api_limits()[1], MAX_APPLY_CONCURRENCY) if getattr(target, "name", "") == "kubernetes" else 1


def kube_api_limits_chosen() -> bool:
    """Whether the user set --kube-api-qps or --kube-api-burst (else mlp's defaults apply, and the
    client-side limit is lifted on a server with API Priority and Fairness)."""
    ctx = click.get_current_context(silent=True)
    meta = ctx.meta if ctx is not None else {}
    return bool(meta.get("mlp.kube_api_qps.chosen") or meta.get("mlp.kube_api_burst.chosen"))


def kube_api_limits() -> tuple[float, int]:
    ctx = click.get_current_context(silent=True)
    meta = ctx.meta if ctx is not None else {}
    return float(meta.get("mlp.kube_api_qps", DEFAULT_QPS)), int(meta.get("mlp.kube_api_burst", DEFAULT_BURST))


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any `extra=` fields (env, revision, step)."""

    _PLAIN = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        event.update({k: v for k, v in vars(record).items() if k not in self._PLAIN and not k.startswith("_")})
        if record.exc_info:
            event["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(event, default=str)


class TextLogFormatter(logging.Formatter):
    """`TIME LEVEL message key=value ...` with the `extra=` fields (env, revision, step) appended."""

    _PLAIN = JsonLogFormatter._PLAIN

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in self._PLAIN and not k.startswith("_"))
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"{stamp} {record.levelname.lower():<7} {record.getMessage()}"
        return f"{line} {extras}" if extras else line


def configure_logging(fmt: str = "text", level: str = "info") -> None:
    """Send the `mlp` loggers (and warnings) to stderr, one event per line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter() if fmt == "json" else TextLogFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)


def _apply_logging(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    ctx.meta[f"mlp.{param.name}"] = value
    if "mlp.log_format" in ctx.meta and "mlp.log_level" in ctx.meta:
        configure_logging(ctx.meta["mlp.log_format"], ctx.meta["mlp.log_level"])
    return value


def log_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """`--log-format text|json` and `--log-level` for long-running commands (logging set up before the command runs)."""
    f = click.option(
        "--log-level",
        type=click.Choice(["debug", "info", "warning", "error"]),
        default="info",
        show_default=True,
        envvar="MLP_LOG_LEVEL",
        expose_value=False,
        is_eager=True,
        callback=_apply_logging,
        help="Least severe log events shown [env MLP_LOG_LEVEL].",
    )(f)
    return click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        envvar="MLP_LOG_FORMAT",
        expose_value=False,
        is_eager=True,
        callback=_apply_logging,
        help="Log events on stderr, one per line: text, or json with environment, revision and step fields "
        "[env MLP_LOG_FORMAT].",
    )(f)


def summarize_done(done: list[Any], first: int = 5) -> str:
    """`303 objects (120 created, 183 configured): created A, configured B, ... and 298 more (-o json lists all)`."""
    if not done:
        return "nothing"
    counts: dict[str, int] = {}
    for change in done:
        counts[change.result] = counts.get(change.result, 0) + 1
    head = f"{plural(len(done), 'object')} ({', '.join(f'{n} {what}' for what, n in sorted(counts.items()))})"
    shown = ", ".join(f"{c.result} {c.ref}" for c in done[:first])
    more = f" and {len(done) - first} more (-o json lists them all)" if len(done) > first else ""
    return f"{head}: {shown}{more}"


def plural(n: int, word: str, many: str | None = None) -> str:
    """`1 error`, `2 errors`."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    from mlp.specs.diagnostics import printable

    click.echo(f"error: {printable(message)}", err=True)
    sys.exit(code)


def repo_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--repo",
        "repo",
        default=".",
        show_default=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="Platform repository folder (holds specs/, environments/, templates/).",
    )(f)


def env_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--env", "env", required=True, help="Environment name (environments/*.yaml).")(f)


def cluster_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = kube_api_options(f)
    f = context_option(f)
    f = kubeconfig_option(f)
    # the local runtime's state, not the controller's: MLP_STATE_DIR does not apply
    return state_dir_option(
        None, "local targets: runtime state folder [default: REPO/.mlp/up-ENV, as mlp up].", envvar=None
    )(f)


def load_repo(repo: Path) -> tuple[Snapshot, LoadResult]:
    """Read and validate a repository; on errors print each located diagnostic and exit 2."""
    from mlp.sources.directory import read_directory
    from mlp.specs import load

    if not repo.is_dir():
        fail(f"{repo}: not a directory")
    snapshot = read_directory(repo)
    if not snapshot.spec_files():
        fail(f"{repo}: not a platform repository (no specs under specs/ or environments/)")
    result = load(snapshot)
    if not result.ok:
        for diag in result.errors:
            click.echo(str(diag), err=True)
        fail(
            f"{plural(len(result.errors), 'error')} in the specs: nothing rendered, planned or applied "
            "(run `mlp validate` for the full report)"
        )
    return snapshot, result


def environment(result: LoadResult, name: str) -> Environment:
    env = result.specs.environments.get(name)
    if env is None:
        known = ", ".join(sorted(result.specs.environments)) or "none"
        fail(f"unknown environment {name!r} (declared: {known})")
    return env


def render_env(snapshot: Snapshot, result: LoadResult, env: str) -> list[Manifest]:
    """Render or exit 2 with the located template error."""
    from mlp.engine import desired
    from mlp.plan.core import PlanRefused
    from mlp.render import RenderError

    try:
        return desired(snapshot, env, loaded=result)
    except (RenderError, PlanRefused) as exc:
        fail(str(exc))


def make_target(
    env: Environment, *, repo: Path, kubeconfig: str | None, context: str | None, state_dir: Path | None
) -> Target:
    """The target an environment's spec names: kubernetes or the local runtime."""
    from mlp.targets.base import TargetError

    spec = env.spec.target
    if spec.kind == "kubernetes":
        try:
            from mlp.targets.kubernetes import KubernetesTarget
        except ImportError as exc:
            fail(f"the kubernetes target is not available ({exc}); install mlp[kubernetes]")
        try:
            # namespaced: list calls stay inside the environment's namespace (and its RBAC)
            qps, burst = kube_api_limits()
            return KubernetesTarget.from_environment(  # type: ignore[no-any-return]
                kubeconfig,
                context=context or spec.context,
                namespace=spec.namespace,
                qps=qps,
                burst=burst,
                server_fairness=not kube_api_limits_chosen(),
            )
        except TargetError as exc:
            fail(str(exc))
        except Exception as exc:  # kubeconfig parse errors come in many types; say it in one line
            fail(
                f"cannot load cluster configuration: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            )
    try:
        from mlp.serving.runtime import Runtime
        from mlp.targets.local import LocalTarget
    except ImportError as exc:
        fail(f"the local target is not available ({exc}); install mlp[serve]")
    runtime = Runtime(state_dir or repo / ".mlp" / f"up-{env.metadata.name}", payload_log=False)
    if spec.artifactMirror:  # as `mlp up` does: s3://bucket/key is read from MIRROR/bucket/key
        runtime.store.mirror = (repo / spec.artifactMirror).resolve()
    for problem in runtime.restore():
        click.echo(f"warning: could not restore {problem}", err=True)
    return LocalTarget(runtime)  # type: ignore[no-any-return]


_WRITTEN = re.compile(r"^\d+-[a-z0-9]+-[a-z0-9.-]+\.(yaml|json)$")


def write_manifest_folder(folder: Path, objs: list[dict[str, Any]], fmt: str = "yaml") -> list[str]:
    """Write one file per object (`NN-kind-name.EXT`, in apply order) and return the names.

    Files an earlier run wrote there and this one does not are removed, so a deleted object
    does not linger; anything else in the folder is left alone.
    """
    from mlp.render.yamlio import dump

    try:
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            if old.is_file() and _WRITTEN.match(old.name):
                old.unlink()
        width = max(2, len(str(len(objs))))
        names = []
        for index, obj in enumerate(objs, start=1):
            name = f"{index:0{width}d}-{obj['kind'].lower()}-{obj['metadata']['name']}.{fmt}"
            text = json.dumps(obj, indent=2, sort_keys=True) + "\n" if fmt == "json" else dump(obj)
            (folder / name).write_text(text, encoding="utf-8")
            names.append(name)
    except OSError as exc:
        fail(f"{folder}: cannot write: {exc.strerror or exc}")
    return names


def progress_printer(enabled: bool) -> Callable[[int, int, PlanItem, str], None] | None:
    """Per-object progress on stderr: `[2/5] apply InferenceService/ml-prod/iris ... configured`."""
    if not enabled:
        return None
    width = 0

    pending: PlanItem | None = None

    def show(index: int, total: int, item: PlanItem, what: str) -> None:
        nonlocal width, pending
        width = max(width, len(str(total)))
        prefix = f"[{index:>{width}}/{total}] {item.action.value} {item.ref}"
        if what in ("applying", "deleting"):
            click.echo(f"{prefix} ...", err=True, nl=False)
            pending = item
        elif pending is item:
            click.echo(f" {what}", err=True)
            pending = None
        else:  # concurrent apply reports only outcomes, one full line each
            click.echo(f"{prefix} ... {what}", err=True)

    return show


def lock_folder(folder: Path) -> Any:
    """An exclusive lock (`flock`) on `folder/.lock`, held while the returned file stays open; None if taken.

    The kernel drops the lock when the process dies, kill -9 included: no stale lock files."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    fh = open(folder / ".lock", "w")  # noqa: SIM115 - held open on purpose until exit
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        return None
    return fh
