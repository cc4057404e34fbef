"""`mlp validate --check-sources`: read every FeatureView's source schema and compare it with the spec.

Each problem is a `Diagnostic` located at the view's `spec.source` in its YAML file, whose
message names the data file, the column and the view.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlp.features import FeatureError
from mlp.features.sources import check_schema, connect, resolve
from mlp.specs.diagnostics import Diagnostic
from mlp.specs.yamlio import Locator


def check_sources(
    specs: Any, files: dict[str, bytes], repo: Path, *, s3_endpoint_url: str | None = None
) -> list[Diagnostic]:
    import duckdb

    locator = Locator(files)
    out: list[Diagnostic] = []
    for name, view in sorted(specs.feature_views.items()):
        ref = specs.sources[("FeatureView", name)]
        try:
            src = resolve(view, specs.entities, repo, s3_endpoint_url=s3_endpoint_url, hash_files=False)
            con = connect(repo, allow=(src.cache,) if src.cache else ())
            try:
                check_schema(con, src)
            finally:
                con.close()
        except (FeatureError, duckdb.Error) as exc:
            line, col = locator.locate(ref.path, ref.doc, ("spec", "source"))
            out.append(Diagnostic(ref.path, line, col, "FeatureView", name, str(exc), rule="source"))
    return out
