"""The tracking store on SQLite and on a real PostgreSQL; MLflow's filter grammar.

PostgreSQL comes from Debian's `postgresql` package (.ci/setup.d/30-postgresql.sh): the test
starts its own cluster in a temporary folder on a free port (as the `postgres` user when run
as root, since initdb refuses root) and skips, saying why, only when the binaries are absent.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgserver import postgresql

from mlp.tracking.errors import TrackingError
from mlp.tracking.filters import Clause, OrderBy, parse_filter, parse_order_by
from mlp.tracking.store import Batch, TrackingStore

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TrackingStore]:
    if request.param == "sqlite":
        s = TrackingStore(f"sqlite:///{tmp_path / 't.db'}")
        yield s
        s.close()
        return
    with postgresql(tmp_path) as url:
        s = TrackingStore(url)
        yield s
        s.close()


def test_runs_params_metrics_and_search(store: TrackingStore) -> None:
    exp = store.create_experiment("e")
    assert store.get_experiment_by_name("e")["experiment_id"] == exp
    with pytest.raises(TrackingError) as dup:
        store.create_experiment("e")
    assert dup.value.error_code == "RESOURCE_ALREADY_EXISTS"
    ids = []
    for i in range(5):
        run = store.create_run(exp, "u", 1000 + i, [("team", "a" if i % 2 else "b")], f"r{i}")
        rid = run["info"]["run_id"]
        ids.append(rid)
        store.log_batch(
            rid, Batch(metrics=[("acc", i / 10, 1, 0), ("acc", i / 10 + 0.01, 2, 1)], params=[("lr", str(i))])
        )
    # identical points are stored once; the latest value is the highest step
    store.log_batch(ids[0], Batch(metrics=[("acc", 0.0, 1, 0)]))
    assert len(store.get_metric_history(ids[0], "acc")[0]) == 2
    assert {m["key"]: m["value"] for m in store.get_run(ids[3])["data"]["metrics"]} == {"acc": 0.31}
    with pytest.raises(TrackingError, match="Changing param values is not allowed"):
        store.log_batch(ids[0], Batch(params=[("lr", "99")]))
    store.log_batch(ids[0], Batch(params=[("lr", "0")]))  # the same value again is fine

    def names(flt: str | None = None, order: list[str] | None = None) -> list[str]:
        return [r["info"]["run_name"] for r in store.search_runs([exp], flt, order_by=order)[0]]

    assert names() == ["r4", "r3", "r2", "r1", "r0"]
    assert names("metrics.acc > 0.2", ["metrics.acc ASC"]) == ["r2", "r3", "r4"]
    assert names("tags.team = 'a' and params.lr != '1'") == ["r3"]
    assert names("attributes.run_name LIKE 'r%' and metrics.acc <= 0.11", ["attributes.run_name DESC"]) == ["r1", "r0"]
    assert names("params.lr ILIKE '4'") == ["r4"]
    # LIKE is case-sensitive, ILIKE is not, on every backend (as in MLflow)
    assert names("attributes.run_name LIKE 'R%'") == []
    assert names("attributes.run_name ILIKE 'R%'") == ["r4", "r3", "r2", "r1", "r0"]
    store.delete_run(ids[4])
    assert names() == ["r3", "r2", "r1", "r0"]
    assert len(store.search_runs([exp], view_type="ALL")[0]) == 5
    page, token = store.search_runs([exp], max_results=3, order_by=["attributes.start_time ASC"])
    rest, end = store.search_runs([exp], max_results=3, order_by=["attributes.start_time ASC"], page_token=token)
    assert [r["info"]["run_name"] for r in page + rest] == ["r0", "r1", "r2", "r3"] and end is None
    with pytest.raises(TrackingError) as missing:
        store.get_run("nope")
    assert missing.value.error_code == "RESOURCE_DOES_NOT_EXIST" and missing.value.status == 404


def test_concurrent_writers_lose_nothing(store: TrackingStore) -> None:
    exp = store.create_experiment("c")
    runs = [store.create_run(exp, "u", 1, [], f"w{i}")["info"]["run_id"] for i in range(8)]

    def write(rid: str) -> None:
        for b in range(10):
            store.log_batch(rid, Batch(metrics=[("m", float(b * 100 + i), 1, b * 100 + i) for i in range(100)]))

    threads = [threading.Thread(target=write, args=(r,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for rid in runs:
        assert len(store.get_metric_history(rid, "m")[0]) == 1000


def test_filter_grammar() -> None:
    assert parse_filter("metrics.rmse < 1 and params.`max depth` = '3' AND tags.\"team\" LIKE 'g%'") == [
        Clause("metric", "rmse", "<", 1.0),
        Clause("param", "max depth", "=", "3"),
        Clause("tag", "team", "LIKE", "g%"),
    ]
    assert parse_filter("attributes.run_id IN ('a', 'b')") == [Clause("attribute", "run_id", "IN", ("a", "b"))]
    assert parse_filter("status = 'FINISHED'") == [Clause("attribute", "status", "=", "FINISHED")]
    assert parse_filter("  ") == []
    for bad in [
        "metrics.a >> 1",
        "metrics.a = 'x'",
        "params.a = 3",
        "metrics.a > 1 or metrics.b > 1",
        "foo.a = 'x'",
        "attributes.nope = 'x'",
        "metrics.a > 1 and",
        "attributes.run_name IN ('a')",
    ]:
        with pytest.raises(TrackingError):
            parse_filter(bad)
    assert parse_order_by(["metrics.acc DESC", "params.lr", "start_time ASC"]) == [
        OrderBy("metric", "acc", False),
        OrderBy("param", "lr", True),
        OrderBy("attribute", "start_time", True),
    ]
    with pytest.raises(TrackingError):
        parse_order_by(["metrics.acc SIDEWAYS"])
