"""`mlp features`: point-in-time training sets, materialization and online lookups.

Wiring only: load the repository's specs, resolve the views' sources and call `mlp.features`.
Errors are one located line on stderr, exit 2; progress goes to stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from mlp.cli._common import CONTEXT, fail


def _specs(repo: Path) -> Any:
    from mlp.sources.directory import read_directory
    from mlp.specs import load

    if not repo.is_dir():
        fail(f"{repo}: not a directory")
    result = load(read_directory(repo))
    if not result.ok:
        fail("the repository does not validate:\n" + "\n".join(str(d) for d in result.errors))
    return result.specs


def _views(specs: Any, names: tuple[str, ...], *, online_only: bool = False) -> list[Any]:
    if not names:
        views = [v for _, v in sorted(specs.feature_views.items()) if v.spec.online or not online_only]
        if not views:
            fail("no feature views declared" + (" with online: true" if online_only else ""))
        return views
    out = []
    for n in names:
        view = specs.feature_views.get(n)
        if view is None:
            fail(f"no FeatureView {n!r} (declared: {', '.join(sorted(specs.feature_views)) or 'none'})")
        if online_only and not view.spec.online:
            fail(f"FeatureView/{n} is not online (online: false)")
        out.append(view)
    return out


def _say(msg: str) -> None:
    click.echo(f"mlp features: {msg}", err=True)


def _emit(data: Any, output: str, text: str) -> None:
    if output == "json":
        click.echo(json.dumps(data, indent=1, default=str))
    elif output == "yaml":
        from ruamel.yaml import YAML

        YAML(typ="safe", pure=True).dump(json.loads(json.dumps(data, default=str)), sys.stdout)
    else:
        click.echo(text)


repo_opt = click.option(
    "--repo",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Platform repository (specs/, environments/).",
)
s3_opt = click.option(
    "--s3-endpoint-url", envvar="MLP_S3_ENDPOINT_URL", help="S3 endpoint (MinIO, moto) [env MLP_S3_ENDPOINT_URL]."
)


@click.group(context_settings=CONTEXT)
def features() -> None:
    """Feature store: training sets, materialization, online lookups.

    \b
    Examples:
      mlp features historical --view customer-stats --entities labels.parquet --out train.parquet
      mlp features materialize --env dev
      mlp features get customer-stats --entity 1001 --env dev
    """


@features.command("historical", context_settings=CONTEXT)
@repo_opt
@click.option("--view", "views", multiple=True, required=True, help="Feature view to join (repeat for several).")
@click.option(
    "--entities",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Entity rows: join keys + timestamp (.parquet, .csv, .jsonl).",
)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Output file.")
@click.option(
    "--file-format",
    "fmt",
    type=click.Choice(["parquet", "csv"]),
    help="Output file format [default: from --out's extension, else parquet]. (`-o` is the summary's format.)",
)
@click.option("-o", "--output", type=click.Choice(["text", "json", "yaml"]), default="text", show_default=True)
@click.option("--timestamp-column", default="event_timestamp", show_default=True, help="Entity rows' time column.")
@click.option(
    "--memory-limit", default="1.5GB", show_default=True, help="DuckDB memory limit; the rest spills to disk."
)
@s3_opt
def historical_cmd(
    repo: Path,
    views: tuple[str, ...],
    entities: Path,
    out: Path,
    fmt: str | None,
    output: str,
    timestamp_column: str,
    memory_limit: str,
    s3_endpoint_url: str | None,
) -> None:
    """Build a point-in-time correct training set.

    For each entity row, each view's latest values at or before the row's timestamp (and
    within the view's TTL; null otherwise). Lineage (view versions, source snapshot hashes)
    is written into the Parquet metadata (`mlp.lineage`) or beside a CSV.

    \b
    Example:
      mlp features historical --view customer-stats --entities labels.parquet --out train.parquet
      mlp features historical --view a --view b --entities labels.csv --out train.csv -o json
    """
    from mlp.features import FeatureError
    from mlp.features.historical import historical
    from mlp.features.sources import resolve

    specs = _specs(repo)
    try:
        sources = [resolve(v, specs.entities, repo, s3_endpoint_url=s3_endpoint_url) for v in _views(specs, views)]
        result = historical(
            sources,
            entities,
            out,
            repo=repo,
            fmt=fmt or ("csv" if out.name.lower().endswith(".csv") else "parquet"),
            ts_col=timestamp_column,
            memory_limit=memory_limit,
            progress=_say,
        )
    except FeatureError as exc:
        fail(str(exc))
    _emit(
        {"out": str(result.out), "rows": result.rows, "seconds": round(result.seconds, 3), "lineage": result.lineage},
        output,
        f"{result.out}: {result.rows} rows",
    )


@features.command("materialize", context_settings=CONTEXT)
@repo_opt
@click.option("--env", default="dev", show_default=True, help="Environment whose online store to load.")
@click.option("--view", "views", multiple=True, help="Feature view (repeat; default: every online view).")
@click.option("--since", help="Start of the event-time window (ISO 8601) [default: the view's watermark].")
@click.option("--until", help="End of the window, exclusive (ISO 8601) [default: now].")
@click.option("--store", help="Online store override: a SQLite file or redis://HOST:PORT/DB.")
@click.option("--batch-rows", default=10_000, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where S3 objects and converted Avro files are cached [default: REPO/.mlp/features/cache].",
)
@click.option("-o", "--output", type=click.Choice(["text", "json", "yaml"]), default="text", show_default=True)
@s3_opt
def materialize_cmd(
    repo: Path,
    env: str,
    views: tuple[str, ...],
    since: str | None,
    until: str | None,
    store: str | None,
    batch_rows: int,
    cache_dir: Path | None,
    output: str,
    s3_endpoint_url: str | None,
) -> None:
    """Load the latest feature values into the online store (incremental, idempotent).

    Without --since, each view starts where its last run ended; rerunning after an
    interruption converges to the same store.

    \b
    Example:
      mlp features materialize --env dev --view customer-stats
    """
    from mlp.features import FeatureError
    from mlp.features.online import materialize, open_store
    from mlp.features.service import store_for
    from mlp.features.sources import resolve

    specs = _specs(repo)
    target = store or store_for(repo, env, specs)
    selected = _views(specs, views, online_only=True)
    env_spec = specs.environments.get(env)
    mat = env_spec.spec.features.materialize if env_spec and env_spec.spec.features else None
    if not views and mat and mat.views:
        selected = [v for v in selected if v.metadata.name in mat.views]
    results = []
    try:
        online = open_store(target)
        for view in selected:
            src = resolve(view, specs.entities, repo, cache=cache_dir, s3_endpoint_url=s3_endpoint_url)
            done = materialize(src, online, repo=repo, since=since, until=until, batch_rows=batch_rows, progress=_say)
            results.append(done)
        online.close()
    except FeatureError as exc:
        fail(str(exc))
    except Exception as exc:  # the store itself (redis down, disk full): one line, exit 2
        fail(f"online store {target}: {type(exc).__name__}: {exc}")
    data = {
        r.view: {
            "rows": r.rows,
            "since": r.since.isoformat() if r.since else None,
            "until": r.until.isoformat(),
            "freshnessSeconds": None if r.freshness_seconds is None else round(r.freshness_seconds, 3),
        }
        for r in results
    }
    text = "\n".join(
        f"{r.view}: {r.rows} rows up to {r.until.isoformat()}"
        + ("" if r.freshness_seconds is None else f", newest value {r.freshness_seconds:.0f}s old")
        for r in results
    )
    _emit({"store": target, "views": data}, output, text)


@features.command("get", context_settings=CONTEXT)
@click.argument("view")
@repo_opt
@click.option("--env", default="dev", show_default=True, help="Environment whose online store to read.")
@click.option("--entity", "entities", multiple=True, required=True, help="Entity key value (repeat for several).")
@click.option("--store", help="Online store override: a SQLite file or redis://HOST:PORT/DB.")
@click.option("-o", "--output", type=click.Choice(["text", "json", "yaml"]), default="text", show_default=True)
def get_cmd(repo: Path, view: str, env: str, entities: tuple[str, ...], store: str | None, output: str) -> None:
    """Read feature values from the online store (as GET /v1/features/VIEW does).

    \b
    Example:
      mlp features get customer-stats --entity 1001 -o json
    """
    from mlp.features.online import open_store
    from mlp.features.service import FeatureService, LookupError_, store_for

    specs = _specs(repo)
    svc = FeatureService(repo, open_store(store or store_for(repo, env, specs)), env=env)
    svc.update(specs)
    try:
        data = svc.get(view, {"entity": list(entities)})
    except LookupError_ as exc:
        fail(str(exc))
    text = "\n".join(f"{r['entity']}: {json.dumps(r['values'])}" for r in data["results"])
    _emit(data, output, text)
    sys.exit(0 if all(r["values"] is not None for r in data["results"]) else 1)
