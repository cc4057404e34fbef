"""`mlp rollout status|pause|resume|abort|promote ENV MODEL`: look at and steer a canary rollout;
`mlp rollout shadow-report ENV MODEL`: how a shadow version's answers compare with the served ones.

Reads and writes the rollout state in the same state folder `mlp up` and `mlp status`
use; the loop that drives the rollout picks the change up at its next tick (a pause
written while nothing runs holds when it starts).
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from mlp.cli.status import require_state

state_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".mlp/controller"),
    show_default=True,
    help="State folder of the controller or of `mlp up` (its --state-dir).",
)
output_option = click.option(
    "-o", "--output", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)


def _describe(r: Any) -> dict[str, Any]:
    data = r.to_json()
    data["step_of"] = f"{r.step + 1}/{len(r.steps)}"
    data["updated"] = datetime.fromtimestamp(r.updated_at, UTC).isoformat(timespec="seconds")
    return data


def _text(r: Any) -> str:
    lines = [
        f"{r.env}/{r.model}: {r.phase}  canary v{r.canary} at {r.weight}% (stable v{r.stable})",
        f"  step {r.step + 1}/{len(r.steps)} of {r.steps}" + (f", paused by {r.paused_by}" if r.paused_by else ""),
        f"  {r.message}",
    ]
    for c in (r.last_verdict or {}).get("checks", []):
        mark = {True: "ok", False: "FAIL", None: "..."}[c.get("ok")]
        lines.append(f"  [{mark}] {c['metric']}: {c['detail']}")
    if r.revert_branch:
        kind = "promotion" if r.phase == "Promoted" else "revert"
        lines.append(f"  {kind}: branch {r.revert_branch}" + (f", {r.revert_url}" if r.revert_url else ""))
    return "\n".join(lines)


def _run(env: str, model: str, state_dir: Path, fmt: str, verb: str) -> None:
    from mlp.rollouts import machine
    from mlp.rollouts.store import RolloutStore

    require_state(state_dir)
    store = RolloutStore(state_dir)
    try:
        current = store.get(env, model)
        if current is None:
            click.echo(f"error: {env}/{model}: no rollout in {state_dir} (is a canary declared and served?)", err=True)
            sys.exit(2)
        if verb != "status":
            now = time.time()
            changes = {
                "pause": lambda r: machine.pause(r),
                "resume": lambda r: machine.resume(r, now),
                "abort": lambda r: machine.abort(r),
                "promote": lambda r: machine.promote(r),
            }
            done: list[bool] = []

            def change(r: Any) -> Any:
                new, t = changes[verb](r)
                done.append(t is not None)
                return new, t

            current = store.update(env, model, change)
            assert current is not None
            if not done[-1]:
                click.echo(f"error: {env}/{model}: cannot {verb} a rollout that is {current.phase}", err=True)
                sys.exit(2)
    finally:
        store.close()
    click.echo(json.dumps(_describe(current), indent=2) if fmt == "json" else _text(current))
    if verb == "status" and current.phase == machine.ROLLED_BACK:
        sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def rollout() -> None:
    """Look at and steer canary rollouts.

    \b
    Examples:
      mlp rollout status dev iris --state-dir .mlp/up-dev
      mlp rollout pause prod churn -o json
    """


def _verb(name: str, doc: str) -> None:
    @rollout.command(name, help=doc)
    @click.argument("env")
    @click.argument("model")
    @state_option
    @output_option
    def cmd(env: str, model: str, state_dir: Path, fmt: str) -> None:
        _run(env, model, state_dir, fmt, name)


_verb(
    "status",
    "Show a rollout: phase, step, weight and the last analysis.\n\nExit 0, 1 when rolled back, 2 on error.\n\n"
    "\b\nExample:\n  mlp rollout status dev iris --state-dir .mlp/up-dev -o json",
)
_verb(
    "pause",
    "Hold a rollout at its step (across restarts) until resumed.\n\n\b\nExample:\n  mlp rollout pause prod churn",
)
_verb(
    "resume",
    "Resume a paused rollout; its step's interval starts again.\n\n\b\nExample:\n  mlp rollout resume prod churn",
)
_verb(
    "abort",
    "Roll the canary back now (0% traffic) and open the revert change.\n\n\b\nExample:\n  mlp rollout abort prod churn",
)
_verb(
    "promote",
    "Promote the canary now: it becomes the stable version.\n\n\b\nExample:\n  mlp rollout promote prod churn",
)


@rollout.command("shadow-report")
@click.argument("env")
@click.argument("model")
@click.option("--repo", default=".", type=click.Path(file_okay=False, path_type=Path), help="Platform repository.")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Serving state folder holding payloads/ [default: REPO/.mlp/up-ENV].",
)
@click.option("--metrics-url", help="The data plane's /metrics (mlp up's URL + /metrics), for latency percentiles.")
@click.option(
    "-o", "--output", "fmt", type=click.Choice(["text", "json", "markdown"]), default="text", show_default=True
)
def shadow_report(env: str, model: str, repo: Path, state_dir: Path | None, metrics_url: str | None, fmt: str) -> None:
    """Compare a shadow version's answers with the served ones: agreement, distribution shift, latency.

    Pairs the payload log's rows of the stable and the shadow version by request id (closed
    files only: the log rolls a file every 10 s). Exit 0 with a report, 1 when no request was
    answered by both yet, 2 on error.

    \b
    Examples:
      mlp rollout shadow-report dev iris
      mlp rollout shadow-report dev iris --metrics-url http://127.0.0.1:8080/metrics -o json
    """
    from mlp.cli._common import environment, fail, load_repo
    from mlp.rollouts.shadow import report

    _, result = load_repo(repo)
    dep = environment(result, env).spec.deployments.get(model)
    if dep is None or dep.shadow is None:
        fail(f"Environment/{env}: model {model!r} declares no shadow")
    outputs = result.specs.models[model].spec.signature.outputs
    column = outputs[0].name if len(outputs) == 1 else "prediction"
    text = None
    if metrics_url:
        import httpx

        try:
            text = httpx.get(metrics_url, timeout=10).raise_for_status().text
        except httpx.HTTPError as exc:
            fail(f"--metrics-url {metrics_url}: {exc}")
    state = state_dir or repo / ".mlp" / f"up-{env}"
    rep = report(state / "payloads", model, str(dep.version), str(dep.shadow.version), column, text)
    data = {"environment": env, **rep.to_json()}
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
    else:

        def num(v: float | None, f: str = ".4g") -> str:
            return "-" if v is None else format(v, f)

        rows = [
            ("rows answered", str(rep.primary_rows), str(rep.shadow_rows)),
            ("mean output", num(rep.mean_primary), num(rep.mean_shadow)),
        ]
        for key in ("p50", "p99"):
            rows.append(
                (
                    f"latency {key} (s)",
                    num(rep.latency.get(rep.primary, {}).get(key)),
                    num(rep.latency.get(rep.shadow, {}).get(key)),
                )
            )
        facts = [
            ("paired rows", str(rep.paired)),
            ("agreement", num(rep.agreement, ".2%")),
            ("distribution shift p-value", num(rep.shift_pvalue)),
        ]
        if fmt == "markdown":
            lines = [f"### Shadow `{model}` v{rep.shadow} in {env}", "", "| | served | shadow |", "|---|---|---|"]
            lines += [f"| {a} | v{rep.primary}: {b} | v{rep.shadow}: {c} |" for a, b, c in rows]
            lines += ["", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in facts]
            click.echo("\n".join(lines))
        else:
            click.echo(f"shadow {env}/{model}: v{rep.shadow} mirrored beside served v{rep.primary}")
            for a, b, c in rows:
                click.echo(f"  {a:<18} {b:<12} {c}")
            for k, v in facts:
                click.echo(f"  {k}: {v}")
    if rep.paired == 0:
        click.echo(f"{env}/{model}: no request answered by both versions yet", err=True)
        sys.exit(1)
