"""The feature store: sources, point-in-time training sets, materialization, online lookups.

- `sources`: a FeatureView's source (Parquet, CSV, JSON lines, Avro; local or S3; a DuckDB
  SQL query) as a DuckDB relation, its schema checked against the declared types, and a
  content hash of the snapshot read (lineage).
- `historical`: `mlp features historical`, point-in-time correct joins with DuckDB's ASOF JOIN.
- `online`: the online stores (SQLite, Redis), materialization into them, lookups.
- `service`: the HTTP side: `/v1/features/...` for `mlp up`'s data plane and a FastAPI
  router for `mlp server`, and request enrichment for models that declare it.
"""

from __future__ import annotations


class FeatureError(Exception):
    """A feature-store operation was refused; the message is one located line."""
