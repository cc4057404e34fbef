"""Shared CLI helpers: load a repository into located errors, pick a target, print progress.

Exit codes used by render / diff / apply (and available to other commands):
`EXIT_OK` 0, `EXIT_CHANGES` 1 (diff found changes; validate found problems), `EXIT_ERROR`
2 (bad input, unreachable cluster, refused plan). Every failure is one line on stderr
(`error: ...`), located where the input has a location; never a traceback.
"""

from __future__ import annotations

import sys
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


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    click.echo(f"error: {message}", err=True)
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
    f = click.option("--context", "context", help="kubeconfig context [default: the environment's, then current].")(f)
    f = click.option(
        "--kubeconfig",
        "kubeconfig",
        envvar="KUBECONFIG",
        type=click.Path(dir_okay=False),
        help="kubeconfig file [env KUBECONFIG, then ~/.kube/config, then in-cluster].",
    )(f)
    return click.option(
        "--state-dir",
        "state_dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="local targets: runtime state folder [default: REPO/.mlp/up-ENV, as mlp up].",
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
            f"{len(result.errors)} errors in the specs: nothing rendered, planned or applied "
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
            return KubernetesTarget.from_environment(  # type: ignore[no-any-return]
                kubeconfig, context=context or spec.context, namespace=spec.namespace
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


def progress_printer(enabled: bool) -> Callable[[int, int, PlanItem, str], None] | None:
    """Per-object progress on stderr: `[2/5] apply InferenceService/ml-prod/iris ... configured`."""
    if not enabled:
        return None
    width = 0

    def show(index: int, total: int, item: PlanItem, what: str) -> None:
        nonlocal width
        width = max(width, len(str(total)))
        prefix = f"[{index:>{width}}/{total}] {item.action.value} {item.ref}"
        if what in ("applying", "deleting"):
            click.echo(f"{prefix} ...", err=True, nl=False)
        else:
            click.echo(f" {what}", err=True)

    return show
