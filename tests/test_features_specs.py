"""Feature-store spec fields: what validates, what is refused; the CronJob render runs for real."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from featurerepo import moto_s3, redis_url, run_mlp, write_repo
from pydantic import ValidationError

from mlp.engine import desired
from mlp.sources.directory import read_directory
from mlp.specs import load
from mlp.specs.models import FeatureSource, ModelSpec, OnlineStore

__all__ = ["moto_s3", "redis_url"]


@pytest.mark.parametrize(
    "source",
    [
        {"kind": "parquet"},
        {"kind": "parquet", "path": "a.parquet", "uri": "s3://bucket/a"},
        {"kind": "csv", "path": "../outside.csv"},
        {"kind": "csv", "path": "/etc/passwd"},
        {"kind": "csv", "uri": "https://example.invalid/x.csv"},
        {"kind": "sql", "path": "a.parquet"},
        {"kind": "avro", "query": "SELECT 1"},
        {"kind": "bigquery", "uri": "s3://bucket/a"},
        {"kind": "csv", "path": "a.csv", "timestampField": "not a column"},
        {"kind": "postgresql", "query": "SELECT 1"},  # no connectionEnv
        {"kind": "postgresql", "connectionEnv": "PG_URL", "path": "a.parquet"},
        {"kind": "sql", "query": "SELECT 1", "connectionEnv": "PG_URL"},
        {"kind": "postgresql", "query": "SELECT 1", "connectionEnv": "postgresql://u:pw@db/x"},  # a literal, not a name
    ],
)
def test_bad_sources_are_refused(source: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        FeatureSource.model_validate(source)


def test_good_sources_validate() -> None:
    for src in (
        {"kind": "parquet", "path": "data/x.parquet"},
        {"kind": "avro", "uri": "s3://feature-bucket/events/"},
        {"kind": "jsonl", "path": "data/*.jsonl", "timestampField": "ts"},
        {"kind": "sql", "query": "SELECT * FROM read_parquet('data/x.parquet')"},
        {"kind": "postgresql", "query": "SELECT * FROM customer_stats", "connectionEnv": "FEATURES_PG_URL"},
    ):
        FeatureSource.model_validate(src)


def test_store_and_enrichment_fields_are_checked() -> None:
    with pytest.raises(ValidationError, match="credentials"):
        OnlineStore.model_validate({"kind": "redis", "url": "redis://user:pw@127.0.0.1:6379/0"})
    with pytest.raises(ValidationError):
        OnlineStore.model_validate({"kind": "redis", "path": "x.db"})
    with pytest.raises(ValidationError):
        OnlineStore.model_validate({"kind": "sqlite", "path": "../x.db"})
    base = {
        "framework": "sklearn",
        "signature": {"inputs": [{"name": "a", "type": "float"}], "outputs": [{"name": "y", "type": "int"}]},
        "versions": [{"version": 1, "uri": "s3://b/m", "digest": "sha256:" + "0" * 64}],
    }
    assert ModelSpec.model_validate(base).enrichFromFeatures is False  # off by default
    with pytest.raises(ValidationError, match="enrichFromFeatures needs features"):
        ModelSpec.model_validate({**base, "enrichFromFeatures": True})


def _diagnostics(repo: Path) -> list[str]:
    return [str(d) for d in load(read_directory(repo)).diagnostics]


def test_cross_references_of_feature_specs(tmp_path: Path) -> None:
    write_repo(
        tmp_path,
        [{"name": "offline", "path": "x.parquet", "online": False}],
        env_extra="  features:\n    materialize: {views: [offline, ghost]}\n",
    )
    found = _diagnostics(tmp_path)
    assert any("feature view 'ghost' does not exist" in d for d in found), found
    assert any("feature view 'offline' is not online" in d for d in found), found


K8S_ENV = """apiVersion: mlp.dev/v1
kind: Environment
metadata: {name: prod}
spec:
  target: {kind: kubernetes, namespace: ml-prod}
  features:
    onlineStore: {kind: %(store)s}
    materialize: {schedule: "*/10 * * * *"}
"""


def test_kubernetes_materialization_needs_redis_and_s3_sources(tmp_path: Path) -> None:
    model = (
        "apiVersion: mlp.dev/v1\nkind: Model\nmetadata: {name: m}\nspec:\n  framework: sklearn\n"
        "  features: stats\n  enrichFromFeatures: true\n"
        "  signature: {inputs: [{name: x, type: double}], outputs: [{name: y, type: int}]}\n"
        "  versions: [{version: 1, uri: 's3://b/m.joblib', digest: 'sha256:" + "0" * 64 + "'}]\n"
    )
    write_repo(tmp_path, [{"name": "stats", "path": "x.parquet"}], models=model)
    (tmp_path / "environments" / "prod.yaml").write_text(
        K8S_ENV % {"store": "sqlite"} + "  deployments:\n    m: {version: 1}\n"
    )
    (tmp_path / "environments" / "dev.yaml").write_text(
        "apiVersion: mlp.dev/v1\nkind: Environment\nmetadata: {name: dev}\nspec:\n  target: {kind: local}\n"
        "  features: {materialize: {image: 'mlp:x'}}\n  deployments:\n    m: {version: 1}\n"
    )
    found = _diagnostics(tmp_path)
    assert any("needs a redis online store" in d for d in found), found
    assert any("can only read s3:// sources" in d for d in found), found
    assert any("prod" in d and "enrichFromFeatures" in d for d in found), found
    assert any("image is for kubernetes targets" in d for d in found), found
    assert not any("dev.yaml" in d and "enrichFromFeatures" in d for d in found), found


@pytest.mark.timeout(180)
def test_the_rendered_cronjob_runs_a_real_materialization(tmp_path: Path, moto_s3: str, redis_url: str) -> None:
    import boto3
    import fastavro

    repo = write_repo(tmp_path / "platform", [{"name": "stats", "kind": "avro", "uri": "s3://feature-bucket/stats/"}])
    (repo / "environments" / "prod.yaml").write_text(
        (K8S_ENV % {"store": "redis"}).replace("{kind: redis}", f"{{kind: redis, url: '{redis_url}'}}")
    )
    assert [d for d in _diagnostics(repo) if "error" in d.lower()] == []
    schema = {
        "type": "record",
        "name": "Row",
        "fields": [
            {"name": "customer_id", "type": "long"},
            {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-micros"}},
            {"name": "x", "type": "double"},
        ],
    }
    s3 = boto3.client("s3", endpoint_url=moto_s3)
    s3.create_bucket(Bucket="feature-bucket")
    t0 = datetime.now(UTC) - timedelta(hours=1)
    for part in range(2):
        local = tmp_path / f"part-{part}.avro"
        with open(local, "wb") as fh:
            rows = [{"customer_id": k, "ts": t0 + timedelta(minutes=part), "x": float(10 * part + k)} for k in range(5)]
            fastavro.writer(fh, schema, rows)
        s3.upload_file(str(local), "feature-bucket", f"stats/part-{part}.avro")

    objs = desired(read_directory(repo), "prod")  # the engine: the feature-views plug-in renders these
    cron = next(o for o in objs if o["kind"] == "CronJob")
    cm = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == cron["metadata"]["name"])
    assert cron["spec"]["schedule"] == "*/10 * * * *" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[:2] == ["features", "materialize"]
    # lay the ConfigMap out as the pod's volume does, then run the container's command
    mounted = tmp_path / "etc-mlp-repo"
    for item in pod["volumes"][0]["configMap"]["items"]:
        (mounted / item["path"]).parent.mkdir(parents=True, exist_ok=True)
        (mounted / item["path"]).write_text(cm["data"][item["key"]])
    local_args = [
        str(mounted) if a == "/etc/mlp/repo" else str(tmp_path / "cache") if a == "/var/cache/mlp" else a for a in args
    ]
    res = run_mlp(*local_args, "--s3-endpoint-url", moto_s3, "-o", "json", timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["views"]["stats"]["rows"] == 5
    get = run_mlp("features", "get", "stats", "--repo", str(mounted), "--env", "prod", "--entity", "3", "-o", "json")
    assert get.returncode == 0, get.stderr
    assert json.loads(get.stdout)["results"][0]["values"] == {"x": 13.0}  # the later part wins


def test_the_example_repository_sources_match_their_views() -> None:
    root = Path(__file__).resolve().parents[1]
    assert (root / "data" / "features" / "iris-measurements.csv").is_file(), "the example repository's data/ is missing"
    res = run_mlp("validate", str(root), "--check-sources", "-o", "json", timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
